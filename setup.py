"""Build hook: the wheel carries the top-level plugin_manifest.yaml as erdn_vs/plugin_manifest.yaml.

Everything else about the package is in pyproject.toml. The repository root keeps the one manifest; this copies
it into the build (never into the source tree), and the sdist lists it among its sources, so a wheel built from
the sdist has it too. ``erdn_vs.manifest.manifest_path()`` reads the packaged copy when there is one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

MANIFEST = "plugin_manifest.yaml"


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # an editable install reads the checkout's own file
            target = Path(self.build_lib, "erdn_vs", MANIFEST)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(MANIFEST, target)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib, "erdn_vs", MANIFEST))]

    def get_source_files(self) -> list[str]:
        return [*super().get_source_files(), MANIFEST]


setup(cmdclass={"build_py": BuildPy})
