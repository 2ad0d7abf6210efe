"""bf16 on the CPU: how far it moves the output from fp32 on trained weights, and what it buys in speed.

Every frame of every clip of a dataset split (use clips the weights never saw: ``erdn synth --images eval`` or
the test split of the training data) is restored the way the worker does it: stage 1 once per triplet, stage 2
on three stage-1 outputs (a 3-frame model: stage 1 alone), in fp32 and in each bf16 mode. The report gives, per
mode, the PSNR of its output against the fp32 output (float pixels in [0, 1], all frames pooled, and the worst
frame), the largest difference of one pixel value (in 8-bit code values), and the PSNR of fp32 and of the mode
against the sharp frames (the usual 8-bit metric). Speed: wall seconds of one stage-1 evaluation at
``--speed-size`` on ``--threads``, best of ``--repeats``, each mode timed right after fp32. These figures decide
whether ``precision="auto"`` may pick bf16 on the CPU (``worker.backends.resolve_precision``).

The bf16 mode is ``torch.autocast("cpu", torch.bfloat16)``, as the worker runs it. (oneDNN's own
``torch.backends.mkldnn.conv.fp32_precision = "bf16"`` was measured here too: output identical to fp32,
no faster; removed.)

    PYTHONPATH=. .venv/bin/python benchmarks/cpu_bf16.py DATASET [--split test] [--weights W]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from worker.cpu_runtime import configure
from worker.registry import default_weights

MODES = ("fp32", "autocast")


@contextlib.contextmanager
def precision(mode: str) -> Iterator[None]:
    import torch

    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
        yield


def restore_clip(model, frames, mode: str) -> list[np.ndarray]:
    """Every frame of one clip (T, 3, H, W) float in [0, 1], the worker's way; (3, H, W) float32 outputs."""
    import torch

    from erdn_vs import windows
    from worker.model import crop, pad_to_stride

    padded, hw = pad_to_stride(frames)
    stage1: dict[tuple[int, ...], torch.Tensor] = {}
    outputs = []
    with torch.inference_mode(), precision(mode):
        for n in range(len(frames)):
            w = windows.temporal_window(n, len(frames), model.frames, windows.no_cuts)
            triplets = [tuple(w[i:i + 3]) for i in range(len(w) - 2)]  # one (3 frames) or three (5 frames)
            for key in triplets:
                if key not in stage1:
                    stage1[key] = model.run_stage1(padded[list(key)][None]).out.float()
            if model.frames == 3:
                y = stage1[triplets[0]]
            else:
                y = model.run_stage2(torch.stack([stage1[k][0] for k in triplets])[None]).out.float()
            outputs.append(crop(y, hw)[0].clamp(0, 1).numpy())
    return outputs


def float_psnr(se: float, count: int) -> float:
    return math.inf if se == 0 else 10 * math.log10(count / se)


def stage_seconds(model, size: tuple[int, int], mode: str, repeats: int) -> float:
    import torch

    w, h = size
    x = torch.rand(1, 3, 3, h, w, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), precision(mode):
        model.run_stage1(x)
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.run_stage1(x)
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", type=Path, help="a dataset folder (erdn synth's layout)")
    p.add_argument("--split", default="test")
    p.add_argument("--weights", type=Path, default=None, help="default: the shipped default model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--speed-size", default="640x360")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    configure()
    import torch

    from training.data.images import read_rgb, to_uint8
    from training.data.layouts import find_videos
    from training.metrics import psnr
    from worker.backends import cpu_has_native_bf16
    from worker.model import load_model

    torch.set_num_threads(args.threads)
    args.weights = args.weights or default_weights().path
    model = load_model(args.weights).eval()
    videos = find_videos(args.dataset, args.split)
    se = {m: 0.0 for m in MODES[1:]}
    worst = {m: math.inf for m in MODES[1:]}
    largest = {m: 0.0 for m in MODES[1:]}  # largest difference of one pixel value, in 8-bit code values
    gt_psnr: dict[str, list[float]] = {m: [] for m in MODES}
    count = 0
    for video in videos:
        frames = torch.from_numpy(np.stack([read_rgb(f) for f in video.blur])).permute(0, 3, 1, 2).float() / 255
        sharp = [read_rgb(f) for f in video.sharp]
        out = {m: restore_clip(model, frames, m) for m in MODES}
        for m in MODES:
            gt_psnr[m] += [psnr(to_uint8(o.transpose(1, 2, 0)), s) for o, s in zip(out[m], sharp, strict=True)]
        for m in MODES[1:]:
            for a, b in zip(out[m], out["fp32"], strict=True):
                e = float(np.sum((a.astype(np.float64) - b) ** 2))
                se[m] += e
                worst[m] = min(worst[m], float_psnr(e, a.size))
                largest[m] = max(largest[m], 255 * float(np.abs(a - b).max()))
        count += sum(o.size for o in out["fp32"])
        print(f"{video.name}: {len(video)} frames", flush=True)
    w, h = (int(v) for v in args.speed_size.split("x"))
    speed = {}
    for m in MODES[1:]:
        base = stage_seconds(model, (w, h), "fp32", args.repeats)
        speed[m] = (base, stage_seconds(model, (w, h), m, args.repeats))
    frames_total = len(gt_psnr["fp32"])
    print(f"\n{args.weights.name} on {args.dataset} ({args.split}: {len(videos)} clips, {frames_total} frames); "
          f"native bf16 on this CPU: {cpu_has_native_bf16()}; {args.threads} thread(s)\n")
    print(f"| mode | PSNR vs fp32, pooled | worst frame | largest difference | PSNR vs sharp | "
          f"stage 1 at {args.speed_size} | vs fp32 |")
    print("|---|---|---|---|---|---|---|")
    print(f"| fp32 | | | | {np.mean(gt_psnr['fp32']):.3f} dB | | |")
    for m in MODES[1:]:
        base, t = speed[m]
        print(f"| {m} | {float_psnr(se[m], count):.2f} dB | {worst[m]:.2f} dB | {largest[m]:.2f}/255 | "
              f"{np.mean(gt_psnr[m]):.3f} dB | "
              f"{t:.3f} s (fp32 {base:.3f} s) | {base / t:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
