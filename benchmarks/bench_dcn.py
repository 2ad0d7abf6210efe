"""Speed of worker.model.dcn.deform_conv2d against torchvision.ops.deform_conv2d on the CPU.

Both run side by side in one process on the same random inputs (forward only, no grad),
interleaved so that load from other processes hits both alike; the best of N runs counts.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_dcn.py [--threads 2] [--repeats 7]
"""

from __future__ import annotations

import argparse
import time

import torch
import torchvision

from worker.model.dcn import CPU_COLUMNS_BYTES, deform_conv2d


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--height", type=int, default=180)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--groups", type=int, default=8, help="offset groups")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument(
        "--budget-mib", type=float, default=None,
        help=f"columns budget per chunk (default: the function's, {CPU_COLUMNS_BYTES / 2**20:g} MiB on the CPU)",
    )
    p.add_argument("--channels-last", action="store_true", help="give both implementations NHWC inputs")
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c, h, w, g = args.channels, args.height, args.width, args.groups
    x = torch.randn(1, c, h, w)
    offset = torch.randn(1, 2 * g * 9, h, w) * 3
    mask = torch.rand(1, g * 9, h, w)
    weight = torch.randn(c, c, 3, 3) * 0.05
    bias = torch.randn(c)
    if args.channels_last:
        x, offset, mask = (t.contiguous(memory_format=torch.channels_last) for t in (x, offset, mask))
    budget = None if args.budget_mib is None else int(args.budget_mib * 2**20)

    def ours() -> torch.Tensor:
        return deform_conv2d(x, offset, weight, bias, padding=1, mask=mask, max_columns_bytes=budget)

    def theirs() -> torch.Tensor:
        return torchvision.ops.deform_conv2d(x, offset, weight, bias, padding=1, mask=mask)

    with torch.no_grad():
        diff = (ours() - theirs()).abs().max().item()
        best = {"erdn-vs grid_sample+matmul": float("inf"), "torchvision": float("inf")}
        for _ in range(args.repeats):
            for name, fn in zip(best, (ours, theirs), strict=True):
                t0 = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t0)

    budget_text = "default" if budget is None else f"{args.budget_mib:g} MiB"
    print(f"deform_conv2d forward, CPU, float32: {c} channels, {h}x{w}, 3x3, {g} offset groups, mask, "
          f"{args.threads} threads, budget {budget_text}, best of {args.repeats}")
    for name, t in best.items():
        print(f"  {name:28s} {t * 1000:8.1f} ms")
    ratio = best["torchvision"] / best["erdn-vs grid_sample+matmul"]
    print(f"  speed-up vs torchvision: {ratio:.2f}x   (max abs difference {diff:.2e})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
