"""The two .vpy scripts the bench renders with the real vspipe, and how it runs them (torch-free).

Both render the same synthetic RGBS clip (worker.bench.clip): one through ``erdn_vs.deblur``,
one through vs-mlrt's onnxruntime filter (``core.ort.Model``) on the exported window.onnx,
with the window's neighbours as shifted clips (edges repeat the end frames, as deblur does).
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_HEADER = """\
import vapoursynth as vs
from worker.bench.clip import pattern_clip

core = vs.core
g = globals()
if int(g.get("vs_threads", "0")) > 0:
    core.num_threads = int(g["vs_threads"])
clip = pattern_clip(int(g["width"]), int(g["height"]), int(g["length"]))
"""

DEBLUR_SCRIPT = _HEADER + """\
import erdn_vs  # noqa: E402

out = erdn_vs.deblur(clip, weights=g["weights"], endpoint=g["endpoint"], frames=int(g["window"]),
                     autostart=bool(int(g["autostart"])), batch=int(g["batch"]), precision=g.get("precision", "auto"),
                     timeout=600.0)
out.set_output()
"""

VSMLRT_SCRIPT = _HEADER + """\


def shifted(c, k):  # frame n shows c[clamp(n + k)]
    return c[0] * -k + c[:k] if k < 0 else c[k:] + c[-1] * k if k > 0 else c


radius = int(g["window"]) // 2
out = core.ort.Model([shifted(clip, k) for k in range(-radius, radius + 1)], network_path=g["onnx"], provider="CPU")
out.set_output()
"""

_OUTPUT_LINE = re.compile(r"Output (\d+) frames in ([\d.]+) seconds \(([\d.]+) fps\)")


class VspipeError(RuntimeError):
    pass


@dataclass
class VspipeRun:
    wall_s: float  # the whole vspipe process: start, script evaluation, rendering, exit
    fps: float  # vspipe's own timing: frames over the time from the first request to the last frame
    frames: int
    log: str


def write_scripts(directory: Path) -> tuple[Path, Path]:
    """deblur.vpy and vsmlrt.vpy in ``directory``."""
    deblur, vsmlrt = directory / "deblur.vpy", directory / "vsmlrt.vpy"
    deblur.write_text(DEBLUR_SCRIPT)
    vsmlrt.write_text(VSMLRT_SCRIPT)
    return deblur, vsmlrt


def run_vspipe(vspipe: str, script: Path, args: dict[str, object], out: Path | str, env: dict[str, str],
               start: int | None = None, end: int | None = None, timeout: float = 3600) -> VspipeRun:
    """Render ``script`` (frames start..end) to ``out`` and return vspipe's own timing."""
    cmd = [vspipe, "-p", str(script), str(out)]
    for key, value in args.items():
        cmd += ["-a", f"{key}={value}"]
    if start is not None:
        cmd += ["--start", str(start)]
    if end is not None:
        cmd += ["--end", str(end)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=timeout)
    wall = time.perf_counter() - t0
    log = proc.stderr.decode(errors="replace")
    match = _OUTPUT_LINE.search(log.replace("\r", "\n"))
    if proc.returncode != 0 or match is None:
        raise VspipeError(f"vspipe {script.name} failed (exit code {proc.returncode}): {log[-2000:]}")
    frames, seconds, fps = int(match.group(1)), float(match.group(2)), float(match.group(3))
    # vspipe prints both with two decimals: take whichever is the more precise.
    if seconds > 0 and seconds > fps:
        fps = frames / seconds
    return VspipeRun(wall_s=wall, fps=fps, frames=frames, log=log)


def read_rgbs(path: Path, frames: int, width: int, height: int) -> np.ndarray:
    """vspipe's raw RGBS output (planar float32, no headers) as (N, 3, H, W)."""
    data = np.fromfile(path, dtype="<f4")
    expected = frames * 3 * height * width
    if data.size != expected:
        raise VspipeError(f"{path} holds {data.size} samples, expected {expected}")
    return data.reshape(frames, 3, height, width)
