"""Where one ERDN stage spends its time on the CPU, in torch and in onnxruntime, at 1 and 2 threads.

One stage-1 evaluation of one triplet, the worker's unit of work, runs in torch (the worker's torch
backend: ``ERDN.run_stage1``) under ``torch.profiler`` and in onnxruntime (the worker's onnx backend:
the exported ``stage1.onnx``) with its profiling on, interleaved, ``--repeats`` times per thread
count. Per operator it prints the best (least loaded) of the repeats, at each thread count, and
how much the second thread bought (time at 1 thread / time at 2 threads: 2.0 is perfect scaling).
The stage's own wall time is the best of the same repeats. On a shared CPU other processes move
every figure; the best of several runs is the closest to the machine's own speed. The process runs
with the worker's own settings (``worker.cpu_runtime``) unless ``--plain-process``.

    PYTHONPATH=. .venv/bin/python benchmarks/profile_stage.py --preset lite --size 640x360
    PYTHONPATH=. .venv/bin/python benchmarks/profile_stage.py --preset paper --size 320x184 --repeats 2

``lite`` uses the shipped weights; other presets fixed-seed random weights (speed only).
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from worker.cpu_runtime import configure
from worker.registry import default_weights


def torch_profile(model, x) -> tuple[float, dict[str, float]]:
    """Wall seconds of one stage-1 evaluation and self seconds per aten operator (torch.profiler)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        model.run_stage1(x)
        wall = time.perf_counter() - t0
    ops = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    return wall, ops


def ort_profile(session, feed: dict) -> tuple[float, dict[str, float]]:
    """Wall seconds of one stage-1 run and kernel seconds per ONNX operator type (onnxruntime profiling)."""
    t0 = time.perf_counter()
    session.run(None, feed)
    wall = time.perf_counter() - t0
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    last = runs[-1]
    ops: dict[str, float] = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last["ts"]:
            ops[e["args"]["op_name"]] += e["dur"] / 1e6
    return wall, dict(ops)


def ort_session(path: Path, threads: int, prefix: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = str(prefix)
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def best(runs: list[dict[str, float]]) -> dict[str, float]:
    keys = set().union(*runs)
    return {k: min(r[k] for r in runs if k in r) for k in keys}


def table(title: str, per_threads: dict[int, tuple[float, dict[str, float]]], top: int) -> str:
    threads = sorted(per_threads)
    first = per_threads[threads[0]][1]
    total1 = sum(first.values())
    names = sorted(first, key=first.get, reverse=True)[:top]
    head = " | ".join(f"{t} thread{'s' if t > 1 else ''}" for t in threads)
    lines = [f"### {title}", "", f"| operator | share | {head} | 2nd thread bought |",
             "|---|---|" + "---|" * len(threads) + "---|"]
    for name in names:
        # An operator absent at some thread count: torch chose another kernel there.
        cells = " | ".join(f"{per_threads[t][1][name]:.3f} s" if name in per_threads[t][1] else "-" for t in threads)
        last = per_threads[threads[-1]][1].get(name)
        gain = f"{first[name] / last:.2f}x" if len(threads) > 1 and last else "-"
        lines.append(f"| {name} | {100 * first[name] / total1:.0f}% | {cells} | {gain} |")
    walls = " | ".join(f"{per_threads[t][0]:.3f} s" for t in threads)
    gain = per_threads[threads[0]][0] / per_threads[threads[-1]][0] if len(threads) > 1 else 1.0
    lines.append(f"| **stage wall time** | | {walls} | {gain:.2f}x |" if len(threads) > 1 else
                 f"| **stage wall time** | | {walls} | - |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="lite")
    p.add_argument("--size", default="640x360", help="WxH, multiples of 8")
    p.add_argument("--threads", default="1,2", help="thread counts, comma-separated")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--top", type=int, default=12, help="operators shown per table")
    p.add_argument("--weights", type=Path, default=None, help="default: the shipped weights for lite, else random")
    p.add_argument("--plain-process", action="store_true",
                   help="without the worker's process settings (worker.cpu_runtime: allocator, passive waiting)")
    args = p.parse_args()
    if not args.plain_process:
        configure()
    import torch  # after configure(): OpenMP reads its wait policy when torch loads it

    from worker.bench.harness import random_weights
    from worker.export import export_model
    from worker.model import load_model

    w, h = (int(v) for v in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="erdn-profile-"))
    weights = args.weights
    if weights is None:  # the shipped default for lite (trained weights), fixed-seed random weights otherwise
        weights = default_weights().path if args.preset == "lite" else random_weights(args.preset, 0, tmp / "w.st")
    model = load_model(weights).eval()
    export_model(model, tmp, weights_path=weights, window=False)
    x = torch.rand(1, 3, 3, h, w, generator=torch.Generator().manual_seed(0))
    feed = {"in": np.ascontiguousarray(x.reshape(1, 9, h, w).numpy())}
    results: dict[str, dict[int, tuple[float, dict[str, float]]]] = {"torch": {}, "onnxruntime": {}}
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            model.run_stage1(x)  # warm-up
        walls: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
        ops: dict[str, list[dict[str, float]]] = {"torch": [], "onnxruntime": []}
        for r in range(args.repeats):
            session = ort_session(tmp / "stage1.onnx", threads, tmp / f"ort-{threads}-{r}")
            session.run(None, feed)  # warm-up
            for name, (wall, per_op) in (("torch", torch_profile(model, x)),
                                         ("onnxruntime", ort_profile(session, feed))):
                walls[name].append(wall)
                ops[name].append(per_op)
        for name in results:
            results[name][threads] = (min(walls[name]), best(ops[name]))
    print(f"{args.preset} stage 1 at {w}x{h}, best of {args.repeats} ({weights.name})\n")
    print(table("torch (self time per aten operator)", results["torch"], args.top) + "\n")
    print(table("onnxruntime (kernel time per ONNX operator)", results["onnxruntime"], args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
