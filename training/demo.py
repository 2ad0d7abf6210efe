"""``erdn demo``: the whole product on a built-in sample, as the README's first command.

Makes a short blurry clip with its sharp ground truth (synthetic and deterministic: the
same generator as ``erdn synth``, seeded apart from the training data), encodes it
losslessly, deblurs it with ``erdn deblur`` (the real path: vspipe, erdn_vs.deblur, the
worker), then measures the restored frames against the sharp ones and writes to the
output folder: the restored video, a comparison PNG and a short report.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from training.metrics import psnr, ssim
from training.synth import SynthOptions, expose, load_stills, parse_size, render_still_clip

PROG = "erdn demo"
DEMO_SEED = 20221023  # never used by the training configs


def make_sample(width: int, height: int, frames: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(blurry, sharp) uint8 clips of shape (frames, H, W, 3)."""
    opts = SynthOptions(out="", frames=frames, width=width, height=height, subframes=9, motion=1.0, sprites=2,
                        noise=0.0, seed=seed)
    rng = np.random.default_rng([seed, 0])
    sub = render_still_clip(rng, load_stills(opts), opts)
    pairs = [expose(sub[k * opts.subframes : (k + 1) * opts.subframes]) for k in range(frames)]
    to8 = lambda x: np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)  # noqa: E731
    return np.stack([to8(b) for b, _ in pairs]), np.stack([to8(s) for _, s in pairs])


def write_lossless(path: Path, frames: np.ndarray, fps: int = 24) -> None:
    """RGB frames -> FFV1 in Matroska, planar RGB, so nothing is lost to chroma subsampling."""
    from erdn_vs.render import ffmpeg_exe

    n, h, w, _ = frames.shape
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:0", "-c:v", "ffv1", "-level", "3", "-pix_fmt", "gbrp",
           str(path)]
    subprocess.run(cmd, input=frames.tobytes(), check=True)


def read_rgb_video(path: Path, width: int, height: int) -> np.ndarray:
    from erdn_vs.render import ffmpeg_exe

    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(path), "-f", "rawvideo",
           "-pix_fmt", "rgb24", "pipe:1"]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def comparison_png(path: Path, blurry: np.ndarray, restored: np.ndarray, sharp: np.ndarray) -> None:
    """blurry | restored | sharp on top; below, the same 2x-zoomed crop of each (the most detailed region)."""
    from PIL import Image

    h, w, _ = sharp.shape
    side = max(16, min(h, w) // 3)
    gray = sharp.astype(np.float32).mean(axis=2)
    detail = np.abs(np.diff(gray, axis=0))[:, :-1] + np.abs(np.diff(gray, axis=1))[:-1, :]
    best, best_yx = -1.0, (0, 0)
    for y in range(0, h - side, max(1, side // 4)):
        for x in range(0, w - side, max(1, side // 4)):
            score = float(detail[y : y + side - 1, x : x + side - 1].sum())
            if score > best:
                best, best_yx = score, (y, x)
    y, x = best_yx
    gap = 4
    top = np.full((h, 3 * w + 2 * gap, 3), 255, np.uint8)
    zoom = 2 * side
    bottom = np.full((zoom, 3 * w + 2 * gap, 3), 255, np.uint8)
    for i, img in enumerate((blurry, restored, sharp)):
        top[:, i * (w + gap) : i * (w + gap) + w] = img
        crop = Image.fromarray(img[y : y + side, x : x + side]).resize((zoom, zoom), Image.NEAREST)
        z = min(zoom, w)
        bottom[:, i * (w + gap) : i * (w + gap) + z] = np.asarray(crop)[:, :z]
    for i in range(3):  # mark the crop on the top row
        x0 = i * (w + gap) + x
        top[y, x0 : x0 + side] = top[y + side - 1, x0 : x0 + side] = (255, 0, 0)
        top[y : y + side, x0] = top[y : y + side, x0 + side - 1] = (255, 0, 0)
    Image.fromarray(np.concatenate([top, np.full((gap, top.shape[1], 3), 255, np.uint8), bottom])).save(path)


def describe_model(model: str | None, weights: str | None) -> str:
    """What the report calls the model: a shipped one by name and status, or a file, clearly labelled."""
    if weights:
        return f"weights file {weights} (not a shipped model)"
    from erdn_vs.manifest import load_manifest

    manifest = load_manifest()
    entry = manifest.model(model) if model else (manifest.models[0] if manifest.models else None)
    if entry is None:
        return "none: the manifest lists no model"
    status = entry.quality.get("status")
    return f"{entry.name} ({entry.preset}, {entry.frames} frames{', ' + str(status) if status else ''})"


def measure(frames: np.ndarray, sharp: np.ndarray) -> tuple[float, float]:
    return (float(np.mean([psnr(a, b) for a, b in zip(frames, sharp, strict=True)])),
            float(np.mean([ssim(a, b) for a, b in zip(frames, sharp, strict=True)])))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out/)")
    p.add_argument("--size", type=parse_size, default=(256, 160), help="WIDTHxHEIGHT of the sample (default 256x160)")
    p.add_argument("--frames", type=int, default=16, help="frames in the sample clip (default 16)")
    p.add_argument("--model", help="model name from plugin_manifest.yaml (default: the shipped model)")
    p.add_argument("--weights", help="a weights file instead of a named model (clearly labelled in the report)")
    p.add_argument("--device", default="auto", help="worker device: auto (CUDA when present), cpu, cuda:N")
    p.add_argument("--endpoint", help="worker endpoint (default: the per-user ipc socket)")
    args = p.parse_args(argv)

    from erdn_vs import render

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    w, h = args.size
    print(f"{PROG}: making a {args.frames}-frame {w}x{h} blurry sample clip (synthetic, seed {DEMO_SEED})",
          file=sys.stderr)
    blurry, sharp = make_sample(w, h, args.frames, DEMO_SEED)
    sample = out / "sample_blurry.mkv"
    write_lossless(sample, blurry)
    write_lossless(out / "sample_sharp.mkv", sharp)

    restored_path = out / "restored.mkv"
    deblur_args = [str(sample), "-o", str(restored_path), "--lossless", "--pix-fmt", "gbrp", "--no-audio",
                   "--device", args.device]
    for flag in ("model", "weights", "endpoint"):
        if getattr(args, flag):
            deblur_args += [f"--{flag}", getattr(args, flag)]
    print(f"{PROG}: erdn deblur {' '.join(deblur_args)}", file=sys.stderr)
    t0 = time.perf_counter()
    if render.main(deblur_args) != 0:
        print(f"{PROG}: deblurring failed (see above)", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - t0
    restored = read_rgb_video(restored_path, w, h)
    if restored.shape != blurry.shape:
        print(f"{PROG}: restored video has {restored.shape[0]} frames of {restored.shape[1:3]}, expected "
              f"{blurry.shape[0]} of {blurry.shape[1:3]}", file=sys.stderr)
        return 1
    # A viewable copy for any player.
    subprocess.run([render.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(restored_path),
                    "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p", str(out / "restored.mp4")], check=True)

    mid = args.frames // 2
    comparison_png(out / "comparison.png", blurry[mid], restored[mid], sharp[mid])
    b_psnr, b_ssim = measure(blurry, sharp)
    r_psnr, r_ssim = measure(restored, sharp)
    model_label = describe_model(args.model, args.weights)
    stats = {"frames": args.frames, "size": f"{w}x{h}", "model": model_label,
             "blurry": {"psnr": round(b_psnr, 3), "ssim": round(b_ssim, 4)},
             "restored": {"psnr": round(r_psnr, 3), "ssim": round(r_ssim, 4)},
             "seconds": round(seconds, 2), "frames_per_second": round(args.frames / seconds, 3)}
    (out / "report.json").write_text(json.dumps(stats, indent=2) + "\n")
    report = "\n".join([
        "# erdn-vs demo",
        "",
        f"Sample: {args.frames} frames, {w}x{h}, synthetic motion blur (seed {DEMO_SEED}).",
        f"Model: {model_label}. Device: {args.device}.",
        "",
        "| | PSNR (dB) | SSIM |",
        "|---|---|---|",
        f"| blurry input | {b_psnr:.2f} | {b_ssim:.4f} |",
        f"| restored | {r_psnr:.2f} | {r_ssim:.4f} |",
        "",
        f"Throughput: {args.frames} frames in {seconds:.1f} s end to end through vspipe and the worker "
        f"({args.frames / seconds:.2f} frames/s, worker start-up included when it was not running).",
        "",
        "PSNR/SSIM as the official ERDN inference script computes them (8-bit, 4-pixel border cropped).",
        "",
    ])
    (out / "report.md").write_text(report)
    print(report, file=sys.stderr)
    print(f"{PROG}: wrote {restored_path} (lossless), {out / 'restored.mp4'}, {out / 'comparison.png'}, "
          f"{out / 'report.md'}", file=sys.stderr)
    return 0
