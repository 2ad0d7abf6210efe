"""Training iterations per core-hour on this CPU, side by side: fp32 against bf16 and torch.compile.

Every variant runs the real training step (``training.train.train_step``: the cascade, the cascaded loss,
Adam) in its own fresh process on the same fixed batch, one after another and interleaved over
``--repeats`` rounds. A core-hour is counted as the process's own CPU time (user + system, every thread),
so a busy shared machine slows the wall clock but not the figure. Printed: CPU seconds and wall seconds per
iteration (medians over rounds), iterations per core-hour, and the ratio to today's fp32 path.

    python benchmarks/bench_train.py                     # lite, frames 5 and 3, every variant
    python benchmarks/bench_train.py --frames 3 --variants fp32,autocast --iters 10

Variants:
- ``fp32``: the fp32 path, one thread (what training ran before).
- ``autocast``: ``torch.autocast("cpu", torch.bfloat16)`` around the forward.
- ``autocast-mmap``: ``autocast`` with glibc's default malloc, which unmaps big freed blocks (every other
  variant keeps freed memory in the heap, as ``erdn train`` does: ``worker.cpu_runtime.keep_freed_memory``).
- ``autocast-split``: ``autocast`` with the batch split into single images, as CPU inference runs it (training
  steps used to run that way too; ``worker.model.blocks.one_image_at_a_time``).
- ``compile``: ``torch.compile`` of the forward (compile time reported apart, not in s/it).
- ``fp32-2t`` / ``autocast-2t``: one run on two threads, against one run per core (the 1-thread variants).
- ``fp32-ddp`` / ``autocast-ddp``: one run on two cores as ``erdn train --nproc 2`` runs it: two single-thread
  processes under torchrun (DistributedDataParallel, gloo), each on half the batch; its CPU time is both
  processes'.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("fp32", "autocast", "autocast-mmap", "autocast-split", "compile", "fp32-2t", "autocast-2t", "fp32-ddp",
            "autocast-ddp")


def child(preset: str, frames: int, variant: str, batch: int, crop: int, warmup: int, iters: int) -> dict:
    """Time ``iters`` training steps after ``warmup`` in this process; returns seconds per iteration."""
    from worker.cpu_runtime import keep_freed_memory

    if not variant.endswith("-mmap"):
        keep_freed_memory()  # as erdn train does
    import torch

    from training.losses import CascadeLoss
    from training.train import CascadeForward, quiet_1x1_stride_warnings, train_step
    from worker.model import build_model

    threads = 2 if variant.endswith("-2t") else 1
    torch.set_num_threads(threads)
    rank, world = 0, 1
    if variant.endswith("-ddp"):
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    if variant.endswith("-split"):
        import worker.model.align
        import worker.model.erdn
        from worker.model.blocks import cpu_eager

        worker.model.erdn.one_image_at_a_time = worker.model.align.one_image_at_a_time = cpu_eager
    torch.manual_seed(0)
    model = build_model(preset, frames)
    model.train()
    net = CascadeForward(model)
    if world > 1:
        quiet_1x1_stride_warnings()  # as erdn train does
        net = torch.nn.parallel.DistributedDataParallel(net)
    compile_seconds = 0.0
    if variant == "compile":
        net = torch.compile(net)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    criterion = CascadeLoss()
    g = torch.Generator().manual_seed(1)
    sharp = torch.rand(batch, frames, 3, crop, crop, generator=g)
    blur = (sharp + 0.05 * torch.randn(sharp.shape, generator=g)).clamp(0, 1)
    blur, sharp = blur[rank::world], sharp[rank::world]  # data-parallel: each process its share of the batch
    mode = variant.removesuffix("-2t").removesuffix("-mmap").removesuffix("-split").removesuffix("-ddp")
    cpu_mode = "autocast" if mode == "autocast" else "off"
    losses = []
    for i in range(warmup + iters):
        if i == warmup:
            start, cpu_start = time.perf_counter(), time.process_time()
        t = time.perf_counter()
        terms = train_step(net, criterion, optimizer, blur, sharp, amp=False, cpu_mode=cpu_mode, grad_clip=1.0)
        if variant == "compile" and i == 0:
            compile_seconds = time.perf_counter() - t
        losses.append(terms["total"])
    cpu = (time.process_time() - cpu_start) / iters
    wall = (time.perf_counter() - start) / iters
    if world > 1:  # every process's CPU time; the loss of the whole batch (the mean of equal shares)
        import torch.distributed as dist

        shared = torch.tensor([cpu, *losses], dtype=torch.float64)
        dist.all_reduce(shared)
        cpu, losses = float(shared[0]), [float(v) / world for v in shared[1:]]
        dist.destroy_process_group()
        threads = world
    return {"cpu_per_it": cpu, "wall_per_it": wall, "threads": threads, "compile_seconds": compile_seconds,
            "losses": losses}


def run_child(args: argparse.Namespace, frames: int, variant: str) -> subprocess.Popen:
    ddp = variant.endswith("-ddp")
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"] if ddp else []
    cmd = [sys.executable, *launcher, __file__, "--child", variant, "--preset", args.preset, "--frames", str(frames),
           "--batch", str(args.batch), "--crop", str(args.crop), "--warmup", str(args.warmup),
           "--iters", str(args.iters)]
    env = {"OMP_NUM_THREADS": "2" if variant.endswith("-2t") else "1"}
    return subprocess.Popen(cmd, cwd=ROOT, env=os.environ | env, stdout=subprocess.PIPE, text=True)


def measure(args: argparse.Namespace, frames: int, variant: str) -> dict:
    """One measurement in a fresh child process."""
    p = run_child(args, frames, variant)
    stdout, _ = p.communicate()
    if p.returncode != 0:
        return {"error": f"exit {p.returncode}"}
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="lite")
    p.add_argument("--frames", default="5,3", help="comma-separated (default 5,3)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated from {','.join(VARIANTS)}")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--crop", type=int, default=96)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=8)
    p.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the median is reported")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        result = child(args.preset, int(args.frames), args.child, args.batch, args.crop, args.warmup, args.iters)
        if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 reports for both
            print(json.dumps(result))
        return 0
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {','.join(VARIANTS)}")
    results: dict[str, dict[str, list[dict]]] = {}
    for frames in (int(f) for f in args.frames.split(",")):
        per = results.setdefault(str(frames), {v: [] for v in variants})
        for r in range(args.repeats):
            for v in variants:
                per[v].append(measure(args, frames, v))
                print(f"frames {frames} round {r + 1}: {v} done", file=sys.stderr)
    print(f"{args.preset}, batch {args.batch}, crop {args.crop}, {args.iters} timed iterations after "
          f"{args.warmup}, median of {args.repeats} interleaved rounds")
    summary = {}
    for frames, per in results.items():
        fp32 = [m["cpu_per_it"] for m in per.get("fp32", []) if "cpu_per_it" in m]
        base = statistics.median(fp32) if fp32 else None
        print(f"\nframes {frames}\n{'variant':<14}{'CPU s/it':>9}{'wall s/it':>10}{'it/core-hour':>14}{'vs fp32':>9}"
              "  loss (last it)")
        for v, ms in per.items():
            ok = [m for m in ms if "cpu_per_it" in m]
            if not ok:
                print(f"{v:<14} failed: {ms[0].get('error')}")
                continue
            cpu = statistics.median(m["cpu_per_it"] for m in ok)
            wall = statistics.median(m["wall_per_it"] for m in ok)
            ratio = base / cpu if base else None  # fp32 not among the variants run
            extra = f"  compile {statistics.median(m['compile_seconds'] for m in ok):.0f} s" if v == "compile" else ""
            shown = f"{ratio:>8.2f}x" if ratio is not None else f"{'-':>9}"
            print(f"{v:<14}{cpu:>9.3f}{wall:>10.3f}{3600 / cpu:>14.0f}{shown}  {ok[0]['losses'][-1]:.5f}{extra}")
            summary[f"{frames}/{v}"] = {"cpu_per_it": cpu, "wall_per_it": wall, "it_per_core_hour": 3600 / cpu,
                                        "vs_fp32": ratio}
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
