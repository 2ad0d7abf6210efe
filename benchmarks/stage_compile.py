"""What torch.compile and CUDA graphs add to one ERDN stage evaluation (an optional step of gpu_session.sh).

    python benchmarks/stage_compile.py --preset lite --size 1920x1080 --device cuda --precision fp16 --json out.json

Stage 1 and stage 2 of fixed-seed random weights (speed, not quality) on one random triplet, run as the
worker runs them (inference mode, autocast in fp16/bf16): ``eager``; ``compile``, each stage through
``torch.compile`` (under no_grad: it cannot trace inference-mode tensors); ``cudagraph``, each stage
captured once as a CUDA graph and replayed. Medians of ``--repeats`` after the set-up, which is timed
apart (compilation, capture). Every timing waits for the GPU (torch.cuda.synchronize). A mode that fails
is reported with its error; the others still run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

MODES = ("eager", "compile", "cudagraph")
AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stage_fn(stage, device: torch.device, precision: str, mode: str) -> Callable:
    dtype = AUTOCAST.get(precision)
    # torch.compile cannot trace inference-mode tensors: no_grad there. While a CUDA graph is captured,
    # autocast's weight cache must be off (cached casts would not outlive the capture).
    grad_off = torch.no_grad if mode == "compile" else torch.inference_mode

    def run(x: torch.Tensor) -> torch.Tensor:
        with grad_off(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None,
                                        cache_enabled=mode != "cudagraph"):
            return stage(x).out

    return run


def _graphed(fn: Callable, x: torch.Tensor) -> Callable:
    """``fn`` captured as a CUDA graph on a static copy of ``x``; calling it copies the input in and replays."""
    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):  # warm-up outside the graph (allocator, cuDNN algorithm choice)
            fn(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = fn(static_x)

    def replay(t: torch.Tensor) -> torch.Tensor:
        static_x.copy_(t)
        graph.replay()
        return static_out

    return replay


def measure(model, x: torch.Tensor, mode: str, precision: str, repeats: int, compile_backend: str) -> dict:
    """Set-up seconds, median seconds of each stage, and the two stage outputs (for the comparison)."""
    device = x.device
    stages = {1: model.run_stage1, 2: model.run_stage2}
    t0 = time.perf_counter()
    fns = {}
    for i, stage in stages.items():
        fn = _stage_fn(stage, device, precision, mode)
        if mode == "compile":
            fn = torch.compile(fn, backend=compile_backend)
        elif mode == "cudagraph":
            if device.type != "cuda":
                raise RuntimeError("CUDA graphs need --device cuda")
            fn = _graphed(fn, x)
        fn(x)  # compile / first run
        fns[i] = fn
    _sync(device)
    setup_s = time.perf_counter() - t0
    times: dict[int, list[float]] = {1: [], 2: []}
    outs = {}
    for _ in range(repeats):
        for i, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            outs[i] = fn(x)
            _sync(device)
            times[i].append(time.perf_counter() - t0)
    return {"setup_s": setup_s, "stage1_s": statistics.median(times[1]), "stage2_s": statistics.median(times[2]),
            "outs": {i: o.float().clone() for i, o in outs.items()}}


def write(path: Path | None, report: dict) -> None:
    if path is not None:
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(path)


def main(argv: list[str]) -> int:
    from worker.bench.harness import random_weights
    from worker.model import load_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="lite")
    p.add_argument("--size", default="1920x1080", help="WIDTHxHEIGHT (default 1920x1080)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--precision", default="fp16", choices=["fp32", "fp16", "bf16"])
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {','.join(MODES)}")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    modes = [m for m in a.modes.split(",") if m]
    if not modes or set(modes) - set(MODES):
        p.error(f"--modes takes {','.join(MODES)}")
    w, h = (int(v) for v in a.size.lower().split("x"))
    device = torch.device(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        model = load_model(random_weights(a.preset, 0, Path(tmp) / "w.safetensors"), device).eval()
    stride = model.stride
    hp, wp = -(-h // stride) * stride, -(-w // stride) * stride
    x = torch.rand(1, 3, 3, hp, wp, generator=torch.Generator().manual_seed(0)).to(device)
    report: dict = {"preset": a.preset, "size": f"{w}x{h}", "device": str(device), "precision": a.precision,
                    "compile_backend": a.compile_backend, "repeats": a.repeats, "torch": torch.__version__,
                    "modes": {}}
    eager = None
    for mode in ["eager", *[m for m in modes if m != "eager"]]:
        try:
            r = measure(model, x, mode, a.precision, a.repeats, a.compile_backend)
        except Exception as e:  # a mode that cannot run here is a finding, not the end of the others
            report["modes"][mode] = {"error": f"{type(e).__name__}: {str(e)[:500]}"}
            print(f"stage_compile: {mode}: {type(e).__name__}: {e}", file=sys.stderr)
            write(a.json, report)
            continue
        outs = r.pop("outs")
        r["fps"] = 1.0 / (r["stage1_s"] + r["stage2_s"])
        if eager is None:
            eager = (r, outs)
        else:
            r["speedup_vs_eager"] = r["fps"] / eager[0]["fps"]
            r["max_abs_diff_vs_eager"] = max(float((outs[i] - eager[1][i]).abs().max()) for i in outs)
        report["modes"][mode] = r
        print(f"stage_compile: {mode}: set-up {r['setup_s']:.1f} s, stage 1 {r['stage1_s'] * 1e3:.1f} ms, "
              f"stage 2 {r['stage2_s'] * 1e3:.1f} ms, {r['fps']:.2f} frames/s", file=sys.stderr)
        write(a.json, report)  # after each mode: a run stopped for time keeps what it measured
    return 0 if all("error" not in r for r in report["modes"].values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
