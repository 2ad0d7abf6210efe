"""The CUDA path on a GPU (``pytest -m gpu``): precisions against the CPU, tiling at 1080p and 4K, vspipe to a
CUDA worker, training with autocast, DDP. Skipped where there is no CUDA.

``benchmarks/gpu_session.sh`` runs these on a lent GPU machine. With ``ERDN_GPU_DRY_RUN=1`` the same checks
run on the CPU at tiny sizes (the session's ``--dry-run``, which tests/test_gpu_session.py runs in the
default suite), so they cannot rot between lendings. With ``ERDN_GPU_REPORT=PATH`` each test adds what it
measured (differences, PSNR, seconds) to that JSON file, which the session's report includes.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import spawn_worker, stop_worker, worker_env

from worker.backends import TorchBackend, resolve_precision
from worker.bench.clip import pattern_frame
from worker.bench.harness import random_weights
from worker.registry import ResolvedWeights, default_weights
from worker.tiling import plan_tile, run_tiled

REPO = Path(__file__).resolve().parent.parent
DRY = os.environ.get("ERDN_GPU_DRY_RUN") == "1"
DEVICE = torch.device("cuda:0" if torch.cuda.is_available() and not DRY else "cpu")  # an index: set_device needs one
SHIPPED = default_weights().path

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE.type != "cuda" and not DRY,
                       reason="needs a CUDA GPU (ERDN_GPU_DRY_RUN=1 runs the same checks on the CPU at tiny sizes)"),
    *([pytest.mark.usefixtures("one_torch_thread")] if DRY else []),  # the dry run's CPU is small and shared
]

# (preset, width, height) of the precision check: lite with the shipped weights, paper with random ones
PRECISION_CASES = [("tiny", 48, 32)] if DRY else [("lite", 640, 360), ("paper", 256, 256)]
# (width, height, tile asked for or None: the worker's automatic plan under max_pixels)
TILING_CASES = ([(96, 64, (48, 32), 0), (128, 72, None, 2400)] if DRY
                else [(1920, 1080, (960, 540), 0), (3840, 2160, None, 1920 * 1088)])
OVERLAP = 16  # the worker's default
VSPIPE_SIZE = (64, 48, 6) if DRY else (640, 360, 8)  # width, height, frames
MIN_PSNR = {"fp32": 40.0, "fp16": 35.0, "bf16": 30.0}  # against fp32 on the CPU, on outputs clamped to [0, 1]


def report(key: str, value: object) -> None:
    """Add ``value`` under ``key`` to the JSON file named by $ERDN_GPU_REPORT (if set)."""
    path = os.environ.get("ERDN_GPU_REPORT")
    if not path:
        return
    path = Path(path)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = value
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def weights_for(preset: str, tmp: Path) -> Path:
    """The shipped weights for lite; fixed-seed random ones (deformable offsets non-zero) otherwise."""
    return SHIPPED if preset == "lite" else random_weights(preset, 0, tmp / f"{preset}.safetensors")


def backend(weights: Path, precision: str, device: torch.device = DEVICE) -> TorchBackend:
    """The worker's torch backend. The worker refuses fp16/bf16 on the CPU; the dry run autocasts there anyway."""
    if precision == "auto":
        precision = resolve_precision(precision, device)
    return TorchBackend(ResolvedWeights(weights, "", None, None), device, precision)


def window(width: int, height: int) -> torch.Tensor:
    """Five frames (5, 3, H, W) of a moving texture, float32 on the CPU."""
    return torch.from_numpy(np.stack([pattern_frame(n, width, height) for n in range(5)]))


def cascade(b: TorchBackend, win: torch.Tensor, tile: tuple[int, int] | None = None) -> np.ndarray:
    """The worker's computation of one output frame: stage 1 on the three triplets, stage 2 on their outputs,
    each tiled and blended when ``tile`` (h, w) is given. (3, H, W) float32, clamped to [0, 1]."""
    x = win.to(b.device)
    triplets = torch.stack([x[i : i + 3] for i in range(3)])

    def stage(fn, t: torch.Tensor) -> torch.Tensor:
        return fn(t) if tile is None else run_tiled(fn, t, tile, OVERLAP)

    s1 = stage(b.stage1, triplets)
    return stage(b.stage2, s1[None])[0].clamp(0, 1).cpu().numpy()


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, float | None]:
    """Max abs difference and PSNR (dB, peak 1; None when identical)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return {"max_abs_diff": float(np.abs(a - b).max()), "psnr_db": None if mse == 0 else 10 * math.log10(1 / mse)}


def psnr_at_least(d: dict, floor: float) -> bool:
    return d["psnr_db"] is None or d["psnr_db"] >= floor


@pytest.mark.parametrize("preset, width, height", PRECISION_CASES, ids=[c[0] for c in PRECISION_CASES])
def test_precisions_against_fp32_on_the_cpu(tmp_path: Path, preset: str, width: int, height: int) -> None:
    weights = weights_for(preset, tmp_path)
    win = window(width, height)
    reference = cascade(backend(weights, "fp32", torch.device("cpu")), win)
    found = {"size": f"{width}x{height}", "device": str(DEVICE), "weights": weights.name,
             "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}
    for precision in ("fp32", "fp16", "bf16"):
        found[precision] = compare(cascade(backend(weights, precision), win), reference)
    report(f"precision_{preset}", found)
    for precision, floor in MIN_PSNR.items():
        assert psnr_at_least(found[precision], floor), (precision, found[precision])
    assert np.abs(reference - win[2].numpy()).max() > 0.01  # the network changed the frame: not the identity


@pytest.mark.parametrize("width, height, tile, max_pixels", TILING_CASES, ids=[f"{c[0]}x{c[1]}" for c in TILING_CASES])
def test_tiled_matches_the_whole_frame(tmp_path: Path, width: int, height: int, tile, max_pixels: int) -> None:
    weights = weights_for("tiny" if DRY else "lite", tmp_path)
    b = backend(weights, "auto")
    tile_hw = plan_tile((height, width), tile, OVERLAP, max_pixels)
    assert tile_hw is not None and tile_hw != (height, width)
    win = window(width, height)
    t0 = time.perf_counter()
    whole = cascade(b, win)
    whole_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tiled = cascade(b, win, tile_hw)
    tiled_s = time.perf_counter() - t0
    found = compare(tiled, whole) | {"tile_hw": list(tile_hw), "overlap": OVERLAP, "precision": b.precision,
                                     "whole_s": whole_s, "tiled_s": tiled_s}
    report(f"tiling_{width}x{height}", found)
    assert psnr_at_least(found, 40.0), found


# ----------------------------------------------------------------------------- vspipe to a CUDA worker


def _render(weights: Path, endpoint: str, width: int, height: int, length: int) -> bytes:
    from test_vspipe import SCRIPT

    from erdn_vs.pipeline.tools import vspipe_exe

    args = {"weights": weights, "endpoint": endpoint, "fmt": "RGB24", "length": length, "width": width,
            "height": height, "autostart": 0}
    cmd = [vspipe_exe(), *[x for k, v in args.items() for x in ("-a", f"{k}={v}")], str(SCRIPT), "-"]
    result = subprocess.run(cmd, capture_output=True, env=worker_env(), timeout=300)
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr[-3000:]
    assert "erdn-test: torch in sys.modules: False" in stderr  # the VapourSynth process never imported torch
    return result.stdout


def _direct(weights: Path, width: int, height: int, length: int, precision: str, device: torch.device) -> list:
    """The model applied directly to each window, on the same RGB conversion, back to RGB24 planes."""
    import vapoursynth as vs
    from test_vspipe import spec_window, vpy_clips

    from erdn_vs import formats

    core = vs.core
    src = vpy_clips.pattern_clip(vs.RGB24, length, width, height)
    colour = formats.colour_of(src)
    rgb = formats.to_rgb(src, colour)
    inputs = [formats.frame_to_array(rgb.get_frame(i)).astype(np.float32) for i in range(length)]
    b = backend(weights, precision, device)
    outs = [cascade(b, torch.from_numpy(np.stack([inputs[i] for i in spec_window(n, length, 5, -1)])))
            for n in range(length)]
    blank = core.std.BlankClip(rgb, format=vs.RGBS, keep=True)

    def put(n: int, f):  # noqa: ANN202 - a VapourSynth frame
        out = f.copy()
        formats.write_array(out, outs[n])
        return out

    back = formats.from_rgb(core.std.ModifyFrame(blank, blank, put), src, colour)
    return [[np.asarray(back.get_frame(n)[p]).copy() for p in range(3)] for n in range(length)]


def test_vspipe_to_a_cuda_worker_is_deterministic_and_the_model(isolated_runtime_dir, tmp_path: Path) -> None:
    import vapoursynth as vs
    from conftest import new_endpoint
    from test_vspipe import max_code_difference, sensitive_tiny, split_frames

    width, height, length = VSPIPE_SIZE
    weights = sensitive_tiny(11, tmp_path / "tiny5.safetensors") if DRY else SHIPPED
    renders, seconds = [], []
    for _ in range(2):  # a fresh worker each time: the second render computes again instead of reading a cache
        endpoint = new_endpoint(isolated_runtime_dir, "gpu")
        proc = spawn_worker(endpoint, "--device", str(DEVICE), "--idle-timeout", "300")
        try:
            t0 = time.perf_counter()
            renders.append(_render(weights, endpoint, width, height, length))
            seconds.append(time.perf_counter() - t0)
        finally:
            stop_worker(proc)
    got = split_frames(renders[0], vs.RGB24, width, height)
    assert len(got) == length
    precision = resolve_precision("auto", DEVICE)
    found = {"size": f"{width}x{height}", "frames": length, "device": str(DEVICE), "precision": precision,
             "identical_renders": renders[0] == renders[1], "render_s": seconds,
             "max_code_diff_vs_direct": max_code_difference(got, _direct(weights, width, height, length, precision,
                                                                         DEVICE))}
    if DEVICE.type == "cuda":
        cpu = _direct(weights, width, height, length, "fp32", torch.device("cpu"))
        found["max_code_diff_vs_cpu_fp32"] = max_code_difference(got, cpu)
    report("vspipe", found)
    assert found["identical_renders"], found
    assert found["max_code_diff_vs_direct"] <= 1, found


# ----------------------------------------------------------------------------- training


def test_training_steps_with_autocast(tmp_path: Path) -> None:
    from training.synth import SynthOptions, synthesize
    from training.train import main

    data = synthesize(SynthOptions(out=str(tmp_path / "data"), clips=2, test_clips=1, frames=6, width=64, height=64,
                                   subframes=3, seed=5), progress=False)
    iterations = 3 if DRY else 6
    # threads: synthesize() just set torch's threads to 2, which a busy 2-core CPU runs many times slower than 1
    cfg = {"name": "gpu_steps", "run_dir": str(tmp_path / "run"), "seed": 1, "batch": 2 if DRY else 8,
           "threads": 1 if DRY else 0,
           "iterations": iterations, "val_every": iterations, "checkpoint_every": iterations, "log_every": 1,
           "amp": True, "model": {"preset": "tiny" if DRY else "lite", "frames": 5},
           "data": {"root": str(data), "crop": 32 if DRY else 64, "val_windows": 2}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    assert main([str(tmp_path / "c.yaml")]) == 0
    seconds = time.perf_counter() - t0
    import csv

    with open(tmp_path / "run" / "log.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["total"]]
    losses = [float(r["total"]) for r in rows]
    report("training", {"device": str(DEVICE), "amp_bf16": DEVICE.type == "cuda", "iterations": iterations,
                        "batch": cfg["batch"], "crop": cfg["data"]["crop"], "losses": losses, "seconds": seconds})
    assert len(losses) == iterations and all(math.isfinite(v) for v in losses)


def _torchrun(tmp_path: Path, backend_name: str, preset: str, size: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "ddp_steps.py"), backend_name, preset, str(DEVICE), str(size)]
    try:
        return subprocess.run(cmd, capture_output=True, env=worker_env(), timeout=90 if DEVICE.type == "cuda" else 240,
                              cwd=tmp_path)
    except subprocess.TimeoutExpired as e:  # a collective that never completes: record it, try the next backend
        return subprocess.CompletedProcess(cmd, -9, e.stdout or b"", (e.stderr or b"") + b"\ntimed out")


def _result(proc: subprocess.CompletedProcess) -> dict:
    lines = [line for line in proc.stdout.decode(errors="replace").splitlines() if line.startswith("{")]
    return json.loads(lines[-1]) if proc.returncode == 0 and lines else {}


def test_ddp_two_processes_on_one_device(tmp_path: Path) -> None:
    """NCCL where it allows two ranks on one GPU (recent NCCL refuses: 'Duplicate GPU detected'); gloo on the
    same GPU's tensors otherwise, and on the CPU in the dry run. Both ranks must end with the same weights."""
    preset, size = ("tiny", 16) if DRY else ("lite", 64)
    found: dict = {"device": str(DEVICE)}
    tried = ["nccl", "gloo"] if DEVICE.type == "cuda" else ["gloo"]
    for name in tried:
        proc = _torchrun(tmp_path, name, preset, size)
        result = _result(proc)
        if result:
            found[name] = result
            break
        found[name] = {"error": proc.stderr.decode(errors="replace")[-1500:]}
    report("ddp", found)
    ran = [found[n] for n in tried if "params_equal" in found[n]]
    assert ran, found
    assert ran[0]["params_equal"] and ran[0]["world"] == 2, found
    assert all(math.isfinite(v) for v in ran[0]["losses"]), found
