"""erdn synth --workers: clips rendered in several processes are the same files as in one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from training.synth import SynthOptions, synthesize


@pytest.mark.slow
def test_several_processes_write_the_same_files(tmp_path: Path) -> None:
    def make(name: str, workers: int) -> dict[str, bytes]:
        root = synthesize(SynthOptions(out=str(tmp_path / name), clips=3, test_clips=1, frames=3, width=40, height=32,
                                       subframes=3, seed=7), progress=False, workers=workers)
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    one, two = make("one", 1), make("two", 2)
    assert len([k for k in one if k.endswith(".png")]) == 4 * 3 * 2  # clips x frames x (blur, sharp)
    assert one.keys() == two.keys()
    assert [k for k in one if one[k] != two[k]] == ["erdn_synth.json", "erdn_synth.yaml"]  # they name the folder
    assert json.loads(one["erdn_synth.json"])["clips"] == json.loads(two["erdn_synth.json"])["clips"]
