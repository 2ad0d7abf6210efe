"""Procedural textures for ``erdn synth``: cheap numpy scenes with the edges photographs lack.

Each generator returns an sRGB image, float32 (side, side, 3) in [0, 1], drawn from ``rng`` alone
(so a seed remakes it). Kinds: coloured 1/f noise (natural-image spectrum), stripes, a rotated
checkerboard, random shapes (discs, boxes, triangles) and text-like glyph rows. Edges are
anti-aliased over about one pixel, so a texture is sharp but not aliased.
"""

from __future__ import annotations

import math

import numpy as np

KINDS = ("noise", "stripes", "checker", "shapes", "glyphs")


def palette(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random sRGB colours (n, 3), spread in brightness so edges have contrast."""
    light = np.sort(rng.uniform(0.05, 0.95, n))
    rng.shuffle(light)
    hue = rng.uniform(0.0, 1.0, (n, 3))
    sat = rng.uniform(0.0, 0.8, (n, 1))
    return np.clip(light[:, None] * (1 - sat + sat * 2 * hue), 0.0, 1.0).astype(np.float32)


def _coords(side: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.meshgrid(np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32), indexing="ij")
    c, s = math.cos(angle), math.sin(angle)
    return c * xs + s * ys, -s * xs + c * ys


def _mix(weight: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * (1 - weight[..., None]) + b * weight[..., None]).astype(np.float32)


def noise(rng: np.random.Generator, side: int) -> np.ndarray:
    """1/f^beta noise (beta 1.5-3; natural images are near 2), mapped through a 3-colour ramp."""
    beta = rng.uniform(1.5, 3.0)
    fy = np.fft.fftfreq(side)[:, None]
    fx = np.fft.rfftfreq(side)[None, :]
    amp = np.maximum(np.hypot(fx, fy), 1.0 / side) ** (-beta / 2)  # power ~ 1/f^beta
    spec = amp * np.exp(2j * math.pi * rng.uniform(0, 1, amp.shape))
    spec[0, 0] = 0.0
    field = np.fft.irfft2(spec, s=(side, side))
    lo_q, hi_q = np.percentile(field, [1, 99])
    field = np.clip((field - lo_q) / max(float(hi_q - lo_q), 1e-12), 0, 1)
    cols = palette(rng, 3)
    lo = _mix(np.clip(field * 2, 0, 1), cols[0][None, None], cols[1][None, None])
    return _mix(np.clip(field * 2 - 1, 0, 1), lo, cols[2][None, None])


def stripes(rng: np.random.Generator, side: int) -> np.ndarray:
    """One or two sets of square-ish stripes at random angles and periods (4-40 px)."""
    cols = palette(rng, 3)
    img = np.broadcast_to(cols[0], (side, side, 3)).astype(np.float32)
    for k in range(int(rng.integers(1, 3))):
        u, _ = _coords(side, rng.uniform(0, math.pi))
        period = rng.uniform(4, 40)
        wave = np.sin(2 * math.pi * u / period + rng.uniform(0, 2 * math.pi))
        sharpness = rng.uniform(1.0, period / 2)  # 1: sinusoid; large: hard edges about a pixel wide
        weight = np.clip(0.5 + 0.5 * wave * sharpness, 0, 1) * (1.0 if k == 0 else rng.uniform(0.4, 0.8))
        img = _mix(weight, img, cols[1 + k][None, None])
    return img


def checker(rng: np.random.Generator, side: int) -> np.ndarray:
    """A rotated checkerboard, cells 6-48 px."""
    cols = palette(rng, 2)
    u, v = _coords(side, rng.uniform(0, math.pi / 2))
    cell = rng.uniform(6, 48)
    su = np.clip(cell / 2 * np.sin(math.pi * u / cell), -0.5, 0.5)  # +-0.5 inside a cell, ramps at edges
    sv = np.clip(cell / 2 * np.sin(math.pi * v / cell), -0.5, 0.5)
    return _mix(0.5 + 2 * su * sv, cols[0][None, None], cols[1][None, None])


def shapes(rng: np.random.Generator, side: int) -> np.ndarray:
    """30-150 discs, boxes and triangles of random colours over a random-colour background."""
    img = np.broadcast_to(palette(rng, 1)[0], (side, side, 3)).astype(np.float32).copy()
    ys, xs = np.meshgrid(np.arange(side, dtype=np.float32), np.arange(side, dtype=np.float32), indexing="ij")
    for _ in range(int(rng.integers(30, 151))):
        cx, cy = rng.uniform(0, side, 2)
        r = side * rng.uniform(0.01, 0.12)
        y0, y1 = max(0, int(cy - 1.5 * r) - 1), min(side, int(cy + 1.5 * r) + 2)
        x0, x1 = max(0, int(cx - 1.5 * r) - 1), min(side, int(cx + 1.5 * r) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        px, py = xs[y0:y1, x0:x1] - cx, ys[y0:y1, x0:x1] - cy
        kind = int(rng.integers(0, 3))
        if kind == 0:  # disc: signed distance to the circle
            inside = r - np.hypot(px, py)
        else:
            a = rng.uniform(0, math.pi)
            u, v = math.cos(a) * px + math.sin(a) * py, -math.sin(a) * px + math.cos(a) * py
            if kind == 1:  # box
                inside = np.minimum(r * rng.uniform(0.3, 1.0) - np.abs(u), r - np.abs(v))
            else:  # triangle: three half-planes
                inside = np.min([r * 0.5 - (math.cos(t) * u + math.sin(t) * v)
                                 for t in (a, a + 2 * math.pi / 3, a + 4 * math.pi / 3)], axis=0)
        alpha = np.clip(inside + 0.5, 0, 1)
        img[y0:y1, x0:x1] = _mix(alpha, img[y0:y1, x0:x1], palette(rng, 1)[0][None, None])
    return img


def glyphs(rng: np.random.Generator, side: int) -> np.ndarray:
    """Rows of text-like glyphs: each a few random strokes in a cell, ink on paper."""
    paper, ink = palette(rng, 2)
    if paper.mean() < ink.mean():
        paper, ink = ink, paper
    height = int(rng.integers(8, 33))  # glyph cell height in px
    width = max(4, int(height * rng.uniform(0.5, 0.8)))
    pen = max(1.0, height * rng.uniform(0.08, 0.15))
    ink_map = np.zeros((side, side), np.float32)
    ys, xs = np.meshgrid(np.arange(height, dtype=np.float32), np.arange(width, dtype=np.float32), indexing="ij")
    for top in range(0, side - height, int(height * rng.uniform(1.3, 1.8))):
        left = int(rng.integers(0, width))
        while left + width <= side:
            if rng.random() < 0.15:  # a space between words
                left += width
                continue
            cell = np.zeros((height, width), np.float32)
            for _ in range(int(rng.integers(1, 4))):  # strokes: segments between random points of the cell
                p0 = rng.uniform((1, 1), (width - 1, height - 1))
                p1 = rng.uniform((1, 1), (width - 1, height - 1))
                d = p1 - p0
                t = np.clip(((xs - p0[0]) * d[0] + (ys - p0[1]) * d[1]) / max(float(d @ d), 1e-6), 0, 1)
                dist = np.hypot(xs - p0[0] - t * d[0], ys - p0[1] - t * d[1])
                cell = np.maximum(cell, np.clip(pen / 2 - dist + 0.5, 0, 1))
            ink_map[top : top + height, left : left + width] = cell
            left += width + int(rng.integers(0, 3))
    return _mix(ink_map, np.broadcast_to(paper, (side, side, 3)), ink[None, None])


GENERATORS = {"noise": noise, "stripes": stripes, "checker": checker, "shapes": shapes, "glyphs": glyphs}


def texture(rng: np.random.Generator, side: int, kind: str | None = None) -> tuple[str, np.ndarray]:
    """A random procedural texture (kind drawn from ``KINDS`` unless given): (kind, sRGB float32 (side, side, 3))."""
    kind = kind or KINDS[int(rng.integers(0, len(KINDS)))]
    return kind, np.ascontiguousarray(np.clip(GENERATORS[kind](rng, side), 0.0, 1.0), dtype=np.float32)
