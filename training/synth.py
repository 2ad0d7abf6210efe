"""``erdn synth``: paired blurry/sharp training clips, made the way GOPRO, DVD and HFR were.

Each output frame is the average of several consecutive sharp sub-frames in linear light
(sRGB -> linear, mean, -> sRGB); its sharp target is the middle sub-frame. Sub-frames come
either from the user's own sharp high-frame-rate video (or frame folder), or are rendered
from still photographs moved by a random camera trajectory (a pan with small rotation and
zoom, plus hand shake) with independently moving foreground sprites cut out of other photos.

Hand shake matters for video deblurring: its velocity swings through zero every few
frames, so within one clip some frames are nearly sharp and their neighbours smeared, as
in hand-held footage (DVD, GOPRO). That is the detail a multi-frame model can borrow from
its neighbours; with a steady pan (``--shake 0``) every frame is blurred alike.

Output (the paired-folder layout the loaders read)::

    OUT/train/clip_0000/blur/00000.png   OUT/train/clip_0000/sharp/00000.png   ...
    OUT/test/clip_0048/...               (held-out split)
    OUT/erdn_synth.yaml                  (every option used, for reproducibility)
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from training.data.images import linear_to_srgb, list_images, read_rgb, srgb_to_linear, to_uint8, write_rgb

#: The colour photographs of decent size inside scikit-image's wheel.
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "rocket.jpg",
)


@dataclass
class SynthOptions:
    out: str
    clips: int = 48
    test_clips: int = 8
    frames: int = 16
    width: int = 256
    height: int = 256
    subframes: int = 9
    motion: float = 1.0
    shake: float = 1.0
    sprites: int = 3
    noise: float = 0.01
    jpeg: int = 0
    seed: int = 0
    stills: tuple[str, ...] = ()
    default_stills: bool = True
    video: str | None = None


# ----------------------------------------------------------------------------- exposure


def expose(subframes_linear: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(S, H, W, 3) linear-light sub-frames -> (blurry, sharp) sRGB floats in [0, 1].

    The blurry frame is the mean of the sub-frames in linear light; the sharp one is the
    middle sub-frame (index S // 2).
    """
    blurry = linear_to_srgb(subframes_linear.mean(axis=0))
    sharp = linear_to_srgb(subframes_linear[subframes_linear.shape[0] // 2])
    return blurry, sharp


def degrade(blurry: np.ndarray, rng: np.random.Generator, noise: float, jpeg: int) -> np.ndarray:
    """Sensor noise (Gaussian, sigma in [0, 1] units) and JPEG compression on the blurry frame."""
    if noise > 0:
        blurry = blurry + rng.normal(0.0, noise, blurry.shape).astype(np.float32)
    img = to_uint8(blurry)
    if jpeg > 0:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=int(jpeg))
        img = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return img


# ----------------------------------------------------------------------------- rendering stills

#: Largest hand-shake amplitude, in output pixels at motion 1 and shake 1.
SHAKE_PX = 8.0


def load_stills(opts: SynthOptions) -> list[np.ndarray]:
    """The photographs to render from, as linear-light float32 (H, W, 3)."""
    paths: list[Path] = []
    if opts.default_stills:
        import skimage

        data = Path(skimage.__file__).parent / "data"
        paths += [data / name for name in SKIMAGE_PHOTOS if (data / name).is_file()]
    for folder in opts.stills:
        found = list_images(folder) if Path(folder).is_dir() else []
        if not found:
            raise SystemExit(f"erdn synth: --stills {folder} holds no images (png, jpg, ...)")
        paths += found
    if len(paths) < 2:
        raise SystemExit("erdn synth: need at least two still photographs (background + sprites); add --stills DIR")
    return [srgb_to_linear(read_rgb(p).astype(np.float32) / 255.0) for p in paths]


def smooth_path(rng: np.random.Generator, times: np.ndarray, speed: float, wobble: float) -> np.ndarray:
    """A smooth 2-D trajectory (len(times), 2): constant velocity, gentle acceleration, low-frequency wobble."""
    angle = rng.uniform(0, 2 * math.pi)
    v = speed * np.array([math.cos(angle), math.sin(angle)])
    a = rng.normal(0.0, 0.08 * speed, 2)
    pos = times[:, None] * v + 0.5 * (times[:, None] ** 2) * a / max(times.max(), 1.0)
    for _ in range(2):
        freq = rng.uniform(0.05, 0.25)
        phase = rng.uniform(0, 2 * math.pi, 2)
        pos = pos + wobble * np.sin(2 * math.pi * freq * times[:, None] + phase)
    return pos


def hand_shake(rng: np.random.Generator, times: np.ndarray, amplitude: float) -> np.ndarray:
    """Hand-held camera shake (len(times), 2): a back-and-forth tremor along one random
    direction, 0.06-0.2 cycles per frame (2-6 Hz at 30 fps), with a weaker tremor across it.

    Speed peaks mid-swing and nearly stops at each turn, so blur varies from frame to frame.
    """
    theta = rng.uniform(0, math.pi)
    along = np.array([math.cos(theta), math.sin(theta)])
    across = np.array([-along[1], along[0]])
    freq = rng.uniform(0.06, 0.2, 2)
    phase = rng.uniform(0, 2 * math.pi, 2)
    amp = amplitude * rng.uniform(0.5, 1.0) * np.array([1.0, rng.uniform(0.1, 0.3)])
    return (
        amp[0] * np.sin(2 * math.pi * freq[0] * times + phase[0])[:, None] * along
        + amp[1] * np.sin(2 * math.pi * freq[1] * times + phase[1])[:, None] * across
    )


def sample_grid(
    out_hw: tuple[int, int], src_hw: tuple[int, int], centre: np.ndarray, angle: np.ndarray, scale: np.ndarray
) -> np.ndarray:
    """grid_sample grids (N, H, W, 2) mapping output pixels to source pixels.

    Output pixel p maps to ``centre + R(angle) (p - c_out) / scale`` in source pixel units.
    """
    h, w = out_hw
    sh, sw = src_hw
    ys, xs = np.meshgrid(np.arange(h) - (h - 1) / 2, np.arange(w) - (w - 1) / 2, indexing="ij")
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    sc = scale[:, None, None]
    sx = centre[:, 0, None, None] + (cos * xs - sin * ys) / sc
    sy = centre[:, 1, None, None] + (sin * xs + cos * ys) / sc
    # pixel centres -> normalised coordinates (align_corners=False)
    grid = np.stack([(2 * sx + 1) / sw - 1, (2 * sy + 1) / sh - 1], axis=-1)
    return grid.astype(np.float32)


def warp(src: np.ndarray, grid: np.ndarray, padding: str) -> np.ndarray:
    """Bilinear warp of one (H, W, C) image by N grids -> (N, h, w, C)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(src.transpose(2, 0, 1)))[None]
    g = torch.from_numpy(grid)
    out = F.grid_sample(t.expand(g.shape[0], -1, -1, -1), g, "bilinear", padding, align_corners=False)
    return out.permute(0, 2, 3, 1).numpy()


def sprite_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A soft-edged blob (superellipse with random aspect) of side ``size``, values in [0, 1]."""
    ys, xs = np.meshgrid(np.linspace(-1, 1, size), np.linspace(-1, 1, size), indexing="ij")
    ax, ay = rng.uniform(0.6, 1.0, 2)
    p = rng.uniform(1.5, 4.0)
    r = (np.abs(xs / ax) ** p + np.abs(ys / ay) ** p) ** (1 / p)
    edge = 2.0 / size  # about one pixel of anti-aliased edge
    return np.clip((1.0 - r) / edge, 0.0, 1.0).astype(np.float32)


def render_still_clip(rng: np.random.Generator, stills: list[np.ndarray], opts: SynthOptions) -> np.ndarray:
    """All sub-frames of one clip, (frames * subframes, H, W, 3) in linear light."""
    h, w, s = opts.height, opts.width, opts.subframes
    # sub-frame times in output-frame units: frame k covers [k - 1/2, k + 1/2), middle sub-frame at k
    times = (np.arange(opts.frames)[:, None] + (np.arange(s)[None, :] - (s - 1) / 2) / s).reshape(-1)
    order = rng.permutation(len(stills))
    bg = stills[order[0]]
    # camera: the view covers part of the photo; it pans, rotates a little and zooms a little
    base_scale = rng.uniform(0.7, 1.3) * max(h / bg.shape[0], w / bg.shape[1], 0.35)
    start = np.array([rng.uniform(0.3, 0.7) * bg.shape[1], rng.uniform(0.3, 0.7) * bg.shape[0]])
    speed = rng.uniform(1.0, 8.0) * opts.motion / base_scale  # source pixels per frame
    centre = start + smooth_path(rng, times, speed, wobble=0.8 * opts.motion / base_scale)
    angle = math.radians(rng.uniform(-10, 10)) + times * math.radians(rng.normal(0.0, 0.4 * opts.motion))
    scale = base_scale * np.exp(times * rng.normal(0.0, 0.006 * opts.motion))
    if opts.shake > 0:
        # a hand-held shot: the pan slows (a fraction of the steady-pan speed) and shake dominates
        pan = rng.uniform(0.0, 0.5)
        centre = start + (centre - start) * pan
        centre = centre + hand_shake(rng, times, SHAKE_PX * opts.shake * opts.motion / base_scale)
    frames = warp(bg, sample_grid((h, w), bg.shape[:2], centre, angle, scale), "reflection")

    n_sprites = int(rng.integers(1, opts.sprites + 1)) if opts.sprites > 0 else 0
    for i in range(n_sprites):
        photo = stills[order[1 + i % (len(stills) - 1)]]
        side = int(rng.uniform(0.2, 0.45) * min(h, w))
        src_scale = rng.uniform(0.6, 1.5)
        crop = max(8, min(int(side / src_scale), *photo.shape[:2]))
        y0 = int(rng.integers(0, photo.shape[0] - crop + 1))
        x0 = int(rng.integers(0, photo.shape[1] - crop + 1))
        rgba = np.concatenate([photo[y0 : y0 + crop, x0 : x0 + crop], sprite_mask(rng, crop)[..., None]], axis=2)
        sprite_speed = rng.uniform(2.0, 12.0) * opts.motion
        pos = np.array([rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h])
        pos = pos + smooth_path(rng, times, sprite_speed, wobble=opts.motion)
        # the sprite's pixels: invert its placement (centre at pos, rotated, scaled by side / crop)
        spin = rng.uniform(-math.pi, math.pi) + times * math.radians(rng.normal(0.0, 2.0 * opts.motion))
        rel = pos - np.array([(w - 1) / 2, (h - 1) / 2])
        cos, sin = np.cos(-spin), np.sin(-spin)
        k = crop / side
        # source centre = crop centre - R(-spin) * rel * k, so output pixel `pos` lands on the crop centre
        c_src = np.stack(
            [
                (crop - 1) / 2 - k * (cos * rel[:, 0] - sin * rel[:, 1]),
                (crop - 1) / 2 - k * (sin * rel[:, 0] + cos * rel[:, 1]),
            ],
            axis=1,
        )
        layer = warp(rgba, sample_grid((h, w), (crop, crop), c_src, -spin, np.full(len(times), 1 / k)), "zeros")
        alpha = layer[..., 3:4]
        frames = frames * (1 - alpha) + layer[..., :3] * alpha
    return frames.astype(np.float32)


# ----------------------------------------------------------------------------- user's own video


def read_video_frames(source: str, opts: SynthOptions) -> list[np.ndarray]:
    """Sharp high-frame-rate frames from a video file (imageio-ffmpeg) or a frame folder, as uint8 (H, W, 3)."""
    path = Path(source)
    if path.is_dir():
        files = list_images(path)
        if not files:
            raise SystemExit(f"erdn synth: --video {path} is a folder with no images")
        return [read_rgb(p) for p in files]
    if not path.is_file():
        raise SystemExit(f"erdn synth: --video {path} does not exist (give a video file or a folder of frames)")
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    fw, fh = meta["size"]
    frames = [np.frombuffer(buf, np.uint8).reshape(fh, fw, 3).copy() for buf in reader]
    if not frames:
        raise SystemExit(f"erdn synth: could not decode any frame from {path}")
    return frames


def fit_frame(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Scale (area-averaging) to cover h x w, then centre-crop; uint8 in, float [0, 1] sRGB out."""
    import torch
    import torch.nn.functional as F

    ih, iw = img.shape[:2]
    scale = max(h / ih, w / iw)
    t = torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32) / 255.0)[None]
    if abs(scale - 1.0) > 1e-6:
        size = (max(h, round(ih * scale)), max(w, round(iw * scale)))
        t = F.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
    y0 = (t.shape[2] - h) // 2
    x0 = (t.shape[3] - w) // 2
    return t[0, :, y0 : y0 + h, x0 : x0 + w].permute(1, 2, 0).clamp(0, 1).numpy()


def video_clips(opts: SynthOptions) -> list[np.ndarray]:
    """Groups of ``frames * subframes`` consecutive linear-light frames of the user's video."""
    raw = read_video_frames(opts.video, opts)
    per_clip = opts.frames * opts.subframes
    n = len(raw) // per_clip
    if n == 0:
        raise SystemExit(
            f"erdn synth: {opts.video} has {len(raw)} frames; one clip needs frames * subframes = {per_clip}. "
            "Lower --frames or --subframes."
        )
    return [
        srgb_to_linear(
            np.stack([fit_frame(f, opts.height, opts.width) for f in raw[i * per_clip : (i + 1) * per_clip]])
        )
        for i in range(n)
    ]


# ----------------------------------------------------------------------------- writing


def write_clip(folder: Path, subframes: np.ndarray, opts: SynthOptions, rng: np.random.Generator) -> None:
    s = opts.subframes
    noise = float(rng.uniform(0.0, opts.noise)) if opts.noise > 0 else 0.0
    jpeg = int(rng.integers(opts.jpeg, 96)) if opts.jpeg > 0 else 0
    for k in range(subframes.shape[0] // s):
        blurry, sharp = expose(subframes[k * s : (k + 1) * s])
        write_rgb(folder / "blur" / f"{k:05d}.png", degrade(blurry, rng, noise, jpeg))
        write_rgb(folder / "sharp" / f"{k:05d}.png", to_uint8(sharp))


def synthesize(opts: SynthOptions, progress: bool = True) -> Path:
    """Write the dataset described by ``opts``; returns its root."""
    import torch
    import yaml

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    if opts.video:
        sources = video_clips(opts)
        total = len(sources)
    else:
        stills = load_stills(opts)
        total = opts.clips + opts.test_clips
    if opts.test_clips >= total:
        raise SystemExit(f"erdn synth: --test-clips {opts.test_clips} leaves no training clip out of {total}")
    bar = range(total)
    if progress:
        from tqdm import tqdm

        bar = tqdm(bar, desc="erdn synth", unit="clip", file=sys.stderr)
    for i in bar:
        rng = np.random.default_rng([opts.seed, i])
        split = "test" if i >= total - opts.test_clips else "train"
        clip = sources[i] if opts.video else render_still_clip(rng, stills, opts)
        write_clip(out / split / f"clip_{i:04d}", clip, opts, rng)
    info = asdict(opts) | {"stills": list(opts.stills), "layout": "paired", "clips_written": total}
    (out / "erdn_synth.yaml").write_text(yaml.safe_dump(info, sort_keys=True))
    return out


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 256x256 (WIDTHxHEIGHT), got {text!r}") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError("size must be at least 16x16")
    return w, h


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="erdn synth", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("out", help="output folder (paired layout: OUT/train|test/<clip>/blur|sharp)")
    p.add_argument("--video", help="your own sharp high-frame-rate video file or frame folder (else: stills)")
    p.add_argument("--stills", action="append", default=[], help="folder of photographs to add (repeatable)")
    p.add_argument("--no-default-stills", action="store_true", help="do not use scikit-image's photographs")
    p.add_argument("--clips", type=int, default=48, help="training clips rendered from stills (default 48)")
    p.add_argument("--test-clips", type=int, default=8, help="clips held out as the test split (default 8)")
    p.add_argument("--frames", type=int, default=16, help="output frames per clip (default 16)")
    p.add_argument("--size", type=parse_size, default=(256, 256), help="WIDTHxHEIGHT (default 256x256)")
    p.add_argument("--subframes", type=int, default=9, help="sharp sub-frames averaged per blurry frame (default 9)")
    p.add_argument("--motion", type=float, default=1.0, help="motion strength multiplier (default 1.0)")
    p.add_argument("--shake", type=float, default=1.0,
                   help="hand-shake strength: blur that varies from frame to frame (default 1.0; 0: steady pans)")
    p.add_argument("--sprites", type=int, default=3, help="at most this many moving foreground objects (default 3)")
    p.add_argument("--noise", type=float, default=0.01, help="max Gaussian noise sigma on blurry frames, 0-1 units")
    p.add_argument("--jpeg", type=int, default=0, help="min JPEG quality of blurry frames (0: no JPEG)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    for name in ("clips", "frames", "subframes"):
        if getattr(a, name) < 1:
            p.error(f"--{name} must be at least 1")
    if a.test_clips < 0 or a.noise < 0 or a.motion < 0 or a.shake < 0 or not 0 <= a.jpeg <= 95:
        p.error("--test-clips, --noise, --motion and --shake must be >= 0, --jpeg in 0..95")
    opts = SynthOptions(
        out=a.out,
        clips=a.clips,
        test_clips=a.test_clips,
        frames=a.frames,
        width=a.size[0],
        height=a.size[1],
        subframes=a.subframes,
        motion=a.motion,
        shake=a.shake,
        sprites=a.sprites,
        noise=a.noise,
        jpeg=a.jpeg,
        seed=a.seed,
        stills=tuple(a.stills),
        default_stills=not a.no_default_stills,
        video=a.video,
    )
    root = synthesize(opts)
    print(f"erdn synth: wrote {root} (train and test splits, paired layout)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
