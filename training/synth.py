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

Recipes: ``--recipe v2`` (the default) and ``v1`` (= v2 with ``--shake 0``) remake older data
byte for byte. ``--recipe v3`` turns on everything that makes the data look like what users
deblur: every scikit-image photograph and texture plus procedural textures, photographs held
out for val/test, zooms, sprites at several depths (parallax) and speeds, several exposure
lengths, clipped highlights, Poisson-Gaussian sensor noise in linear light, JPEG/H.264.
Any option given explicitly overrides the recipe's value.

Output (the paired-folder layout the loaders read)::

    OUT/train/clip_0000/blur/00000.png   OUT/train/clip_0000/sharp/00000.png   ...
    OUT/val/clip_0064/...                (validation split: choose checkpoints here)
    OUT/test/clip_0072/...               (held-out split: report only)
    OUT/erdn_synth.yaml                  (every option used, for reproducibility)
    OUT/erdn_synth.json                  (the same, the command line, photographs per split, every clip's draw)
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from training import camera, photos, textures
from training.data.images import linear_to_srgb, list_images, read_rgb, srgb_to_linear, to_uint8, write_rgb
from training.photos import Still


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
    # recipe v3 (each off by default, so older commands remake their data byte for byte)
    recipe: str = "v2"
    val_clips: int = 0
    images: str = "photos"  # photos | all | eval | none (see training/photos.py)
    holdout: float = 0.0  # share of photographs only val/test see
    procedural: float = 0.0  # chance that a background or sprite is a procedural texture
    subframe_choices: tuple[int, ...] = ()  # exposure lengths drawn per clip; motion per sub-frame as at `subframes`
    zoom: float = 0.0  # sigma of the zoom rate, log-scale per frame (0: the gentle v2 zoom)
    parallax: bool = False  # sprites at depths 0.35-1 (background 1) move with the camera by 1/depth
    tint_grey: bool = False  # grey photographs get a random colour cast
    highlights: float = 0.0  # chance that a clip is over-exposed (scene above white; clipped after averaging)
    camera_noise: float = 0.0  # largest ISO gain of RSBlur's Poisson-Gaussian noise (0: none)
    h264: int = 0  # largest H.264 CRF for the blurry clip (0: none); with --jpeg, each clip gets one of the two


#: What each --recipe sets when the option is not given (v1 and v2 remake older datasets byte for byte).
RECIPES: dict[str, dict[str, object]] = {
    "v1": {"shake": 0.0},
    "v2": {},
    "v3": {
        "images": "all", "holdout": 0.25, "procedural": 0.3, "subframe_choices": (5, 9, 15), "zoom": 0.02,
        "parallax": True, "tint_grey": True, "sprites": 4, "highlights": 0.3, "camera_noise": 8.0, "noise": 0.0,
        "jpeg": 60, "h264": 32,
    },
}


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


def load_stills(opts: SynthOptions) -> list[Still]:
    """The photographs to render from (``--images`` set plus ``--stills`` folders), in linear light.

    Photographs reserved for evaluation are refused unless ``--images eval`` asks for them.
    """
    paths = photos.image_paths(opts.images if opts.default_stills else "none", opts.stills)
    if opts.images != "eval":
        try:
            photos.check_not_reserved(paths)
        except photos.ReservedPhotoError as e:
            raise SystemExit(str(e)) from None
    if len(paths) < 2 and not (paths and opts.procedural > 0):
        raise SystemExit("erdn synth: need at least two still photographs (background + sprites); add --stills DIR")
    return photos.load(paths)


def split_stills(stills: list[Still], opts: SynthOptions) -> dict[str, list[Still]]:
    """Which photographs each split renders from: val and test use only the held-out ones (``--holdout``)."""
    if opts.images == "eval":  # an evaluation set: no train split, nothing held out of it
        return {"test": stills}
    held = photos.held_out_names([s.name for s in stills], opts.holdout)
    train = [s for s in stills if s.name not in held]
    other = [s for s in stills if s.name in held] or train
    if not train:
        raise SystemExit(f"erdn synth: --holdout {opts.holdout} leaves no photograph for training")
    return {"train": train, "val": other, "test": other}


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


def procedural_still(rng: np.random.Generator, opts: SynthOptions) -> Still:
    """A fresh procedural texture (training/textures.py), big enough to pan over."""
    kind, srgb = textures.texture(rng, max(512, 2 * max(opts.width, opts.height)))
    return Still(f"procedural:{kind}", srgb_to_linear(srgb), grey=False)


def pick_source(
    rng: np.random.Generator, photo: Still, opts: SynthOptions, bright: tuple[float, float] | None
) -> Still:
    """The photograph, or (``--procedural``) a procedural texture instead; grey ones tinted, over-exposed if asked."""
    if opts.procedural > 0 and rng.random() < opts.procedural:
        photo = procedural_still(rng, opts)
    pixels = photo.pixels
    if opts.tint_grey and photo.grey:
        tint = rng.uniform(0.5, 1.0, 3).astype(np.float32)
        pixels = pixels * (tint / tint.max())
    if bright is not None:
        pixels = camera.over_expose(pixels, *bright)
    return Still(photo.name, pixels, photo.grey)


def render_still_clip(
    rng: np.random.Generator,
    stills: list[Still],
    opts: SynthOptions,
    subframes: int | None = None,
    record: dict | None = None,
) -> np.ndarray:
    """All sub-frames of one clip, (frames * subframes, H, W, 3) in linear light (above 1 where over-exposed).

    ``subframes`` (default ``opts.subframes``) is this clip's exposure length: the motion per
    sub-frame stays that of ``opts.subframes``, so more sub-frames is a longer exposure and more
    motion between frames (like averaging more frames of a high-frame-rate camera). ``record``,
    when given, receives what was drawn (sources, depths, highlights).
    """
    h, w = opts.height, opts.width
    s = subframes or opts.subframes
    # sub-frame times in output-frame units: frame k covers [k - 1/2, k + 1/2), middle sub-frame at k
    times = (np.arange(opts.frames)[:, None] + (np.arange(s)[None, :] - (s - 1) / 2) / s).reshape(-1)
    if s != opts.subframes:
        times = times * (s / opts.subframes)
    record = {} if record is None else record
    order = rng.permutation(len(stills))
    bright = None
    if opts.highlights > 0 and rng.random() < opts.highlights:
        bright = (float(rng.uniform(1.0, 1.6)), float(rng.uniform(0.25, 1.75)))  # scene gain, boost of near-white
    record["highlights"] = bright
    bg = stills[order[0]]
    if opts.procedural > 0 or opts.tint_grey or bright is not None:
        bg = pick_source(rng, bg, opts, bright)
    record["background"] = bg.name
    bg = bg.pixels
    # camera: the view covers part of the photo; it pans, rotates a little and zooms a little
    base_scale = rng.uniform(0.7, 1.3) * max(h / bg.shape[0], w / bg.shape[1], 0.35)
    start = np.array([rng.uniform(0.3, 0.7) * bg.shape[1], rng.uniform(0.3, 0.7) * bg.shape[0]])
    speed = rng.uniform(1.0, 8.0) * opts.motion / base_scale  # source pixels per frame
    centre = start + smooth_path(rng, times, speed, wobble=0.8 * opts.motion / base_scale)
    angle = math.radians(rng.uniform(-10, 10)) + times * math.radians(rng.normal(0.0, 0.4 * opts.motion))
    zoom_sigma = opts.zoom if opts.zoom > 0 else 0.006  # log-scale per frame
    scale = base_scale * np.exp(times * rng.normal(0.0, zoom_sigma * opts.motion))
    if opts.shake > 0:
        # a hand-held shot: the pan slows (a fraction of the steady-pan speed) and shake dominates
        pan = rng.uniform(0.0, 0.5)
        centre = start + (centre - start) * pan
        centre = centre + hand_shake(rng, times, SHAKE_PX * opts.shake * opts.motion / base_scale)
    frames = warp(bg, sample_grid((h, w), bg.shape[:2], centre, angle, scale), "reflection")

    n_sprites = int(rng.integers(1, opts.sprites + 1)) if opts.sprites > 0 else 0
    # parallax: each sprite at a depth (background at 1); nearer ones are drawn last and move more with the camera
    depths = np.sort(rng.uniform(0.35, 1.0, n_sprites))[::-1] if opts.parallax else np.ones(n_sprites)
    camera_shift = -(centre - centre[:1]) * scale[:, None]  # where the camera moves a background point, output px
    record["sprites"] = []
    for i in range(n_sprites):
        photo = stills[order[(1 + i % (len(stills) - 1)) if len(stills) > 1 else 0]]
        if opts.parallax:
            side = int(min(0.6, rng.uniform(0.1, 0.25) / depths[i]) * min(h, w))
        else:
            side = int(rng.uniform(0.2, 0.45) * min(h, w))
        is_light = bright is not None and rng.random() < 0.3
        if is_light:  # a small light source, far brighter than white: it streaks when it moves
            side = max(4, int(rng.uniform(0.02, 0.06) * min(h, w)))
            colour = rng.uniform(0.6, 1.0, 3) * rng.uniform(2.0, 8.0)
            crop = side
            rgb = np.broadcast_to(colour.astype(np.float32), (crop, crop, 3))
            name = "light"
        else:
            if opts.procedural > 0 or opts.tint_grey or bright is not None:
                photo = pick_source(rng, photo, opts, bright)
            src_scale = rng.uniform(0.6, 1.5)
            crop = max(8, min(int(side / src_scale), *photo.pixels.shape[:2]))
            y0 = int(rng.integers(0, photo.pixels.shape[0] - crop + 1))
            x0 = int(rng.integers(0, photo.pixels.shape[1] - crop + 1))
            rgb = photo.pixels[y0 : y0 + crop, x0 : x0 + crop]
            name = photo.name
        rgba = np.concatenate([rgb, sprite_mask(rng, crop)[..., None]], axis=2)
        sprite_speed = (rng.uniform(0.0, 12.0) if opts.parallax else rng.uniform(2.0, 12.0)) * opts.motion
        pos = np.array([rng.uniform(0.15, 0.85) * w, rng.uniform(0.15, 0.85) * h])
        pos = pos + smooth_path(rng, times, sprite_speed, wobble=opts.motion)
        if opts.parallax:
            pos = pos + camera_shift / depths[i]
        record["sprites"].append({"source": name, "depth": round(float(depths[i]), 3),
                                  "speed": round(float(sprite_speed), 2)})
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

    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        fw, fh = meta["size"]
        fps = float(meta.get("fps") or 0)
        if 0 < fps < MIN_VIDEO_FPS:
            print(f"erdn synth: warning: --video {path} is {fps:g} fps; averaging {opts.subframes} of its frames "
                  "makes ghosted double exposures, not motion blur, wherever things move more than a pixel or "
                  f"two between frames: use footage shot at {MIN_VIDEO_FPS:g} fps or more (GOPRO used 240)",
                  file=sys.stderr)
        frames = [np.frombuffer(buf, np.uint8).reshape(fh, fw, 3).copy() for buf in reader]
    except (OSError, RuntimeError) as e:  # imageio-ffmpeg puts ffmpeg's whole stderr in the message
        said = [line for line in str(e).splitlines() if line.strip()]
        raise SystemExit(f"erdn synth: cannot read --video {path} as a video ({said[-1] if said else e}); "
                         "give a video file ffmpeg can play or a folder of frames") from None
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


def write_clip(
    folder: Path,
    subframes: np.ndarray,
    opts: SynthOptions,
    rng: np.random.Generator,
    s: int | None = None,
    record: dict | None = None,
) -> None:
    """Expose, degrade and write one clip's frames; ``s`` sub-frames per frame (default ``opts.subframes``)."""
    s = s or opts.subframes
    record = {} if record is None else record
    noise = float(rng.uniform(0.0, opts.noise)) if opts.noise > 0 else 0.0
    jpeg = int(rng.integers(opts.jpeg, 96)) if opts.jpeg > 0 else 0
    iso = 0.0
    if opts.camera_noise > 0:  # log-uniform ISO gain over RSBlur's camera
        lo = min(0.5, opts.camera_noise)
        iso = float(math.exp(rng.uniform(math.log(lo), math.log(opts.camera_noise))))
    crf = 0
    if opts.h264 > 0 and (jpeg == 0 or rng.random() < 0.5):  # with --jpeg too: one of the two per clip
        crf, jpeg = int(rng.integers(min(18, opts.h264), opts.h264 + 1)), 0
    record.update(subframes=s, sensor_noise_gain=round(iso, 3), jpeg_quality=jpeg, h264_crf=crf,
                  srgb_noise_sigma=round(noise, 4))
    blurry_frames = []
    for k in range(subframes.shape[0] // s):
        if iso > 0:
            # the sensor clips the exposure at white, then adds shot and read noise, then the camera response
            linear = np.clip(subframes[k * s : (k + 1) * s].mean(axis=0), 0.0, 1.0)
            blurry = linear_to_srgb(camera.sensor_noise(linear, rng, iso))
            sharp = linear_to_srgb(subframes[k * s + s // 2])
        else:
            blurry, sharp = expose(subframes[k * s : (k + 1) * s])
        blurry_frames.append(degrade(blurry, rng, noise, jpeg))
        write_rgb(folder / "sharp" / f"{k:05d}.png", to_uint8(sharp))
    if crf > 0:
        blurry_frames = list(camera.h264(np.stack(blurry_frames), crf))
    for k, img in enumerate(blurry_frames):
        write_rgb(folder / "blur" / f"{k:05d}.png", img)


def split_of(i: int, total: int, opts: SynthOptions) -> str:
    """Clips are numbered train first, then val, then test (the last ``test_clips``)."""
    if i >= total - opts.test_clips:
        return "test"
    return "val" if i >= total - opts.test_clips - opts.val_clips else "train"


def make_clip(i: int, total: int, opts: SynthOptions, pools: dict[str, list[Still]], sources: list) -> dict:
    """Render clip ``i`` (``sources[i]`` with --video, else from photographs) and write it; returns its record.
    Its randomness depends only on the seed and ``i``: clips can be made in any order, in any process."""
    rng = np.random.default_rng([opts.seed, i])
    split = split_of(i, total, opts)
    s = int(rng.choice(opts.subframe_choices)) if opts.subframe_choices and not opts.video else opts.subframes
    record: dict = {"clip": f"clip_{i:04d}", "split": split}
    clip = sources[i] if opts.video else render_still_clip(rng, pools[split], opts, s, record)
    write_clip(Path(opts.out) / split / f"clip_{i:04d}", clip, opts, rng, s, record)
    return record


_process: dict = {}  # in a --workers process: the options and the photographs, loaded once


def _init_clip_process(opts: SynthOptions) -> None:
    import torch

    torch.set_num_threads(1)
    _process.update(opts=opts, pools=split_stills(load_stills(opts), opts))


def _clip_in_process(job: tuple[int, int]) -> dict:
    return make_clip(*job, _process["opts"], _process["pools"], [])


def synthesize(opts: SynthOptions, progress: bool = True, command: list[str] | None = None, workers: int = 1) -> Path:
    """Write the dataset described by ``opts``; returns its root. ``command`` is recorded in erdn_synth.json.
    ``workers`` > 1 renders clips from photographs in that many processes; the files are the same."""
    import torch
    import yaml

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    pools: dict[str, list[Still]] = {}
    if opts.video:
        if opts.subframe_choices:
            raise SystemExit("erdn synth: --video takes one --subframes value (a list is for rendered stills)")
        sources = video_clips(opts)
        total = len(sources)
    else:
        pools = split_stills(load_stills(opts), opts)
        total = opts.clips + opts.val_clips + opts.test_clips
    if opts.images == "eval" and (opts.clips or opts.val_clips):
        raise SystemExit("erdn synth: --images eval makes an evaluation set of reserved photographs, never training "
                         "data: use --clips 0 --val-clips 0 --test-clips N")
    if opts.images == "eval" and total < 1:
        raise SystemExit("erdn synth: --images eval needs --test-clips N (N >= 1)")
    if opts.images != "eval" and opts.test_clips + opts.val_clips >= total:
        raise SystemExit(
            f"erdn synth: --test-clips {opts.test_clips} with --val-clips {opts.val_clips} leaves no training clip "
            f"out of {total}"
        )

    def make_all(clips) -> list[dict]:  # noqa: ANN001 - an iterable of records
        if progress:
            from tqdm import tqdm

            clips = tqdm(clips, total=total, desc="erdn synth", unit="clip", file=sys.stderr)
        return list(clips)

    if workers > 1 and not opts.video:
        with multiprocessing.get_context("spawn").Pool(workers, _init_clip_process, (opts,)) as pool:
            records = make_all(pool.imap(_clip_in_process, [(i, total) for i in range(total)]))
    else:
        records = make_all(make_clip(i, total, opts, pools, sources if opts.video else []) for i in range(total))
    options = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(opts).items()}
    info = options | {"layout": "paired", "clips_written": total}
    (out / "erdn_synth.yaml").write_text(yaml.safe_dump(info, sort_keys=True))
    summary = {
        "generator": "erdn synth",
        "command": ["erdn", "synth", *command] if command is not None else None,
        "options": options,
        "photographs": {split: sorted({s.name for s in pool}) for split, pool in pools.items()},
        "clips": records,
    }
    (out / "erdn_synth.json").write_text(json.dumps(summary, indent=1) + "\n")
    return out


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 256x256 (WIDTHxHEIGHT), got {text!r}") from None
    if w < 16 or h < 16:
        raise argparse.ArgumentTypeError("size must be at least 16x16")
    return w, h


def parse_subframes(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--subframes takes a count or a list like 5,9,15, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("--subframes must be at least 1")
    return values


def options_from_args(a: argparse.Namespace) -> SynthOptions:
    """SynthOptions from parsed arguments: options left unset take the recipe's value, then the v2 default."""
    recipe = RECIPES[a.recipe]
    defaults = SynthOptions(out="")

    def pick(name: str, given: object) -> object:
        return given if given is not None else recipe.get(name, getattr(defaults, name))

    subframes = a.subframes
    if subframes is None:  # a video's sub-frames are its own frames: one count, not the recipe's list
        choices = () if a.video else tuple(recipe.get("subframe_choices", ()))
        subframes = choices or (defaults.subframes,)
    choices = tuple(sorted(set(subframes))) if len(subframes) > 1 else ()
    return SynthOptions(
        out=a.out,
        clips=a.clips,
        test_clips=a.test_clips,
        frames=a.frames,
        width=a.size[0],
        height=a.size[1],
        subframes=choices[len(choices) // 2] if choices else subframes[0],  # the middle one sets motion per sub-frame
        motion=a.motion,
        shake=pick("shake", a.shake),
        sprites=pick("sprites", a.sprites),
        noise=pick("noise", a.noise),
        jpeg=pick("jpeg", a.jpeg),
        seed=a.seed,
        stills=tuple(a.stills),
        default_stills=not a.no_default_stills,
        video=a.video,
        recipe=a.recipe,
        val_clips=a.val_clips,
        images=pick("images", a.images),
        holdout=pick("holdout", a.holdout),
        procedural=pick("procedural", a.procedural),
        subframe_choices=choices,
        zoom=pick("zoom", a.zoom),
        parallax=pick("parallax", a.parallax),
        tint_grey=bool(recipe.get("tint_grey", False)),
        highlights=pick("highlights", a.highlights),
        camera_noise=pick("camera_noise", a.camera_noise),
        h264=pick("h264", a.h264),
    )


#: What a dataset folder holds (``synthesize`` writes nothing else): all that --overwrite may remove.
DATASET_ENTRIES = {"train", "val", "test", "erdn_synth.json", "erdn_synth.yaml"}


def prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` (stale clips of an earlier run would mix with the new ones, unseen by the
    dataset checks) unless ``overwrite``, which clears it first. Only a folder that holds nothing but a
    dataset is cleared. Raises SystemExit with one line naming the folder and what to do."""
    if not out.exists():
        return
    if not out.is_dir():
        raise SystemExit(f"erdn synth: {out} is a file, not a folder; give a folder for the dataset")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if not overwrite:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise SystemExit(f"erdn synth: {out} is not empty ({shown}); pass --overwrite to clear it first, or give "
                         "a new folder (the clips of two runs must not mix)")
    foreign = [e for e in entries if e not in DATASET_ENTRIES]
    if foreign:
        raise SystemExit(f"erdn synth: --overwrite clears only a dataset folder, and {out} also holds "
                         f"{', '.join(foreign[:4])}; remove the folder yourself or give a new one")
    for name in entries:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


#: Below this frame rate, averaging consecutive frames shows each position apart: ghosts, not blur.
#: GOPRO was shot at 240 fps; 120 fps is the least the usual recipes use.
MIN_VIDEO_FPS = 120.0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="erdn synth", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("out", help="output folder (paired layout: OUT/train|val|test/<clip>/blur|sharp)")
    p.add_argument("--recipe", choices=sorted(RECIPES), default="v2",
                   help="defaults for the options below: v1 (steady pans), v2 (hand-held; default), v3 (all of "
                        "the realism options). Options given explicitly override it")
    p.add_argument("--video", help="your own sharp high-frame-rate video file or frame folder (else: stills)")
    p.add_argument("--stills", action="append", default=[], help="folder of photographs to add (repeatable)")
    p.add_argument("--images", choices=photos.IMAGE_SETS,
                   help="built-in photographs: photos (9 of scikit-image's; v1/v2), all (every scikit-image "
                        "photograph and texture; v3), eval (scikit-learn's and matplotlib's, reserved for "
                        "evaluation sets), none")
    p.add_argument("--no-default-stills", action="store_true", help="no built-in photographs (= --images none)")
    p.add_argument("--clips", type=int, default=48, help="training clips rendered from stills (default 48)")
    p.add_argument("--val-clips", type=int, default=0, help="clips for the validation split, OUT/val (default 0)")
    p.add_argument("--test-clips", type=int, default=8, help="clips held out as the test split (default 8)")
    p.add_argument("--holdout", type=float,
                   help="share of the photographs that only val/test use, never train (v3: 0.25)")
    p.add_argument("--frames", type=int, default=16, help="output frames per clip (default 16)")
    p.add_argument("--size", type=parse_size, default=(256, 256), help="WIDTHxHEIGHT (default 256x256)")
    p.add_argument("--subframes", type=parse_subframes,
                   help="sharp sub-frames averaged per blurry frame: one count (default 9), or a list such as "
                        "5,9,15 (v3) to draw an exposure length per clip")
    p.add_argument("--motion", type=float, default=1.0, help="motion strength multiplier (default 1.0)")
    p.add_argument("--shake", type=float,
                   help="hand-shake strength: blur that varies from frame to frame (default 1.0; 0: steady pans)")
    p.add_argument("--zoom", type=float, help="zoom speed: sigma of the log-scale change per frame (v3: 0.02)")
    p.add_argument("--sprites", type=int, help="at most this many moving foreground objects (default 3; v3: 4)")
    p.add_argument("--parallax", action=argparse.BooleanOptionalAction,
                   help="sprites at several depths move with the camera by 1/depth, at several speeds (v3: on)")
    p.add_argument("--procedural", type=float,
                   help="chance that a background or sprite is a procedural texture (v3: 0.3)")
    p.add_argument("--highlights", type=float,
                   help="chance that a clip is over-exposed: bright parts above white, clipped after the "
                        "exposure, plus small lights that streak (v3: 0.3)")
    p.add_argument("--camera-noise", type=float,
                   help="largest ISO gain of Poisson-Gaussian sensor noise in linear light, times RSBlur's "
                        "camera (0: none; v3: 8)")
    p.add_argument("--noise", type=float,
                   help="max Gaussian noise sigma on blurry sRGB frames, 0-1 units (default 0.01; v3: 0)")
    p.add_argument("--jpeg", type=int, help="min JPEG quality of blurry frames (0: no JPEG; v3: 60)")
    p.add_argument("--h264", type=int, help="max H.264 CRF (18..CRF) of the blurry clip (0: none; v3: 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1,
                   help="processes rendering clips from photographs at once (default 1; the same files)")
    p.add_argument("--overwrite", action="store_true",
                   help="clear OUT first when it already holds a dataset (without it, a non-empty OUT is refused, "
                        "so that two runs never mix)")
    a = p.parse_args(argv)
    opts = options_from_args(a)
    if a.frames < 1 or a.clips < (0 if opts.images == "eval" else 1):
        p.error("--frames and --clips must be at least 1 (--clips 0 with --images eval)")
    if opts.test_clips < 0 or opts.val_clips < 0 or opts.noise < 0 or opts.motion < 0 or opts.shake < 0:
        p.error("--test-clips, --val-clips, --noise, --motion and --shake must be >= 0")
    if not 0 <= opts.jpeg <= 95 or not 0 <= opts.h264 <= 51:
        p.error("--jpeg must be in 0..95 and --h264 in 0..51")
    if not (0 <= opts.holdout < 1 and 0 <= opts.procedural <= 1 and 0 <= opts.highlights <= 1):
        p.error("--holdout must be in [0, 1), --procedural and --highlights in [0, 1]")
    if opts.zoom < 0 or opts.camera_noise < 0 or opts.sprites < 0:
        p.error("--zoom, --camera-noise and --sprites must be >= 0")
    prepare_out(Path(opts.out), a.overwrite)
    root = synthesize(opts, command=argv, workers=max(1, a.workers))
    splits = "train, val and test splits" if opts.val_clips else "train and test splits"
    if opts.images == "eval":
        splits = "an evaluation set: test split only, from reserved photographs"
    print(f"erdn synth: wrote {root} ({splits}, paired layout; erdn_synth.json records how)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
