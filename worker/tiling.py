"""Overlapping tiles with feathered blending, so a large frame runs in bounded memory.

One ERDN stage maps a triplet (B, 3, 3, H, W) to a frame (B, 3, H, W). ``run_tiled`` cuts
every frame of the triplet at the same positions (the three frames of a tile cover the same
region), runs the stage per tile, and blends the tile outputs with weights that ramp
linearly across the overlap, so seams fade instead of cutting.

The worker tiles each stage separately and caches full-frame (blended) stage-1 results:
stage 2 then sees a seamless input, and the stage-1 cache keeps working across output frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .model import STRIDE


def _round_up(x: int, m: int) -> int:
    return -(-x // m) * m


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``tile`` covering ``size`` with at least ``overlap`` shared."""
    if tile >= size:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, size - tile, step))
    starts.append(size - tile)  # the last tile ends at the border
    return starts


def plan_tile(frame_hw: tuple[int, int], tile_wh: tuple[int, int] | None, overlap: int,
              max_pixels: int, stride: int = STRIDE) -> tuple[int, int] | None:
    """The (h, w) tile size for a padded frame, or None when the frame runs whole.

    ``tile_wh`` is what the session asked for; without it the frame is tiled only when it has
    more than ``max_pixels`` pixels, in the fewest near-equal tiles that fit. Sizes are multiples
    of ``stride`` (the model's requirement, ``model.stride``) and at most the frame.
    """
    h, w = frame_hw
    if tile_wh is not None:
        th, tw = min(h, _round_up(tile_wh[1], stride)), min(w, _round_up(tile_wh[0], stride))
        return None if (th, tw) == (h, w) else (th, tw)
    if h * w <= max_pixels:
        return None
    for n in range(2, 4096):
        ny = max(1, round(math.sqrt(n * h / w)))
        nx = max(1, math.ceil(n / ny))
        th = min(h, _round_up(math.ceil(h / ny) + overlap, stride))
        tw = min(w, _round_up(math.ceil(w / nx) + overlap, stride))
        if th * tw <= max_pixels:
            return th, tw
    return stride * 4, stride * 4


def _ramp(length: int, overlap: int, ramp_start: bool, ramp_end: bool, device: torch.device) -> Tensor:
    weight = torch.ones(length, device=device)
    if overlap > 0:
        ramp = torch.arange(1, overlap + 1, device=device, dtype=torch.float32) / (overlap + 1)
        n = min(overlap, length)
        if ramp_start:
            weight[:n] = torch.minimum(weight[:n], ramp[:n])
        if ramp_end:
            weight[-n:] = torch.minimum(weight[-n:], ramp[:n].flip(0))
    return weight


def run_tiled(stage: Callable[[Tensor], Tensor], triplets: Tensor, tile_hw: tuple[int, int], overlap: int) -> Tensor:
    """Run ``stage`` on (B, 3, 3, H, W) in tiles of ``tile_hw`` overlapping by ``overlap``; blend to (B, 3, H, W)."""
    b, _, _, h, w = triplets.shape
    th, tw = tile_hw
    ys, xs = tile_starts(h, th, overlap), tile_starts(w, tw, overlap)
    out = torch.zeros(b, 3, h, w, device=triplets.device, dtype=torch.float32)
    total = torch.zeros(1, 1, h, w, device=triplets.device, dtype=torch.float32)
    for y in ys:
        wy = _ramp(th, overlap, y > 0, y + th < h, triplets.device)
        for x in xs:
            wx = _ramp(tw, overlap, x > 0, x + tw < w, triplets.device)
            weight = (wy[:, None] * wx[None, :])[None, None]
            piece = stage(triplets[..., y : y + th, x : x + tw]).float()
            out[..., y : y + th, x : x + tw] += piece * weight
            total[..., y : y + th, x : x + tw] += weight
    return out / total
