"""``make gpu-wheels``: the wheels a lent GPU machine lacks, downloaded into gpu_wheels/ (ignored by git) to carry.

That machine (one H200, no network) has Python 3.12 with torch, numpy, safetensors, pyyaml, scikit-image,
onnx, onnxruntime (CPU), opencv, tensorboard, tqdm and pytest, but not VapourSynth or pyzmq. What it runs
travels with the working tree, 64 MiB in all: the tracked and untracked-not-ignored files plus the carried
folders. Required wheels always come; optional ones, in order, only while the total stays under --budget-mib.
Versions are the ones installed here (what the tests ran with), for CPython 3.12 on manylinux x86_64.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TRAVEL_LIMIT_MIB = 64
REQUIRED = ["vapoursynth", "pyzmq"]
# (requirement, why): imageio-ffmpeg is pinned to 0.6.0 (29 MB; 0.8.1 is 68 MB, more than may travel)
OPTIONAL = [
    ("imageio-ffmpeg==0.6.0", "erdn synth's H.264 degradation (--recipe v3); without it the session adds --h264 0"),
    ("vapoursynth-bestsource", "reads video files (erdn deblur); no step of the session needs it"),
]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_26_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def travelling_bytes() -> tuple[int, list[tuple[int, str]]]:
    """Bytes of what a device run sends besides carried folders: tracked and untracked-not-ignored files."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    sizes = []
    for name in filter(None, names):
        path = REPO / name
        if path.is_file() and not path.is_symlink():
            sizes.append((path.stat().st_size, name))
    return sum(s for s, _ in sizes), sorted(sizes, reverse=True)


def pinned(name: str) -> str:
    if "==" in name:
        return name
    try:
        return f"{name}=={version(name)}"
    except PackageNotFoundError:
        return name


def download(requirement: str, into: Path) -> Path:
    """One wheel (no dependencies) for CPython 3.12 on manylinux x86_64; returns its path."""
    into.mkdir(parents=True, exist_ok=True)
    before = set(into.glob("*.whl"))
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *[x for p in PLATFORMS for x in ("--platform", p)], "-d", str(into),
           requirement]
    subprocess.run(cmd, check=True)
    new = set(into.glob("*.whl")) - before
    if len(new) != 1:
        raise SystemExit(f"gpu_wheels: pip download {requirement} gave {sorted(p.name for p in new)}")
    return new.pop()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dest", type=Path, default=REPO / "gpu_wheels")
    p.add_argument("--budget-mib", type=float, default=52.0,
                   help="optional wheels only while everything that travels stays under this (default 52 of 64)")
    a = p.parse_args(argv)
    budget = a.budget_mib * 2**20
    if a.dest.exists():
        shutil.rmtree(a.dest)
    a.dest.mkdir(parents=True)
    tree, largest = travelling_bytes()
    total = tree
    print(f"working tree that travels: {mib(tree)}; largest: "
          + ", ".join(f"{name} {mib(size)}" for size, name in largest[:3]))
    for name in REQUIRED:
        wheel = download(pinned(name), a.dest)
        total += wheel.stat().st_size
        print(f"  + {wheel.name} {mib(wheel.stat().st_size)}")
    with tempfile.TemporaryDirectory() as tmp:
        for requirement, why in OPTIONAL:
            wheel = download(pinned(requirement), Path(tmp))
            size = wheel.stat().st_size
            if total + size <= budget:
                shutil.move(str(wheel), a.dest / wheel.name)
                total += size
                print(f"  + {wheel.name} {mib(size)} ({why})")
            else:
                print(f"  - left out {wheel.name} {mib(size)}: the total would be {mib(total + size)}, over the "
                      f"{a.budget_mib:g} MiB budget ({why})")
    print(f"total that travels with carry [\"gpu_wheels\"]: {mib(total)} of the {TRAVEL_LIMIT_MIB} MiB limit")
    if total > TRAVEL_LIMIT_MIB * 2**20:
        print("gpu_wheels: over the limit: the device run will refuse the working tree", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
