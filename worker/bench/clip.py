"""The bench's synthetic clip: the same frames in a .vpy (VapourSynth) and in the bench process (numpy).

Torch-free: the .vpy scripts that vspipe runs import this module.
"""

from __future__ import annotations

import numpy as np


def pattern_frame(n: int, width: int, height: int) -> np.ndarray:
    """Frame ``n`` as a (3, H, W) float32 RGB array in [0, 1]: a texture that moves, plus fixed-seed noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = 3.0 * n
    rgb = np.empty((3, height, width), np.float32)
    for c in range(3):
        rgb[c] = 0.5 + 0.35 * np.sin((xx + phase + 7 * c) / 9.0) * np.cos((yy - 0.5 * phase) / 13.0)
    rgb += np.random.default_rng(n).normal(0.0, 0.05, rgb.shape).astype(np.float32)
    return np.clip(rgb, 0.0, 1.0)


def pattern_clip(width: int, height: int, length: int):
    """An RGBS clip whose frame n is ``pattern_frame(n, width, height)``."""
    import vapoursynth as vs

    base = vs.core.std.BlankClip(width=width, height=height, format=vs.RGBS, length=length)

    def fill(n: int, f: vs.VideoFrame) -> vs.VideoFrame:
        out = f.copy()
        rgb = pattern_frame(n, width, height)
        for p in range(3):
            np.asarray(out[p])[:] = rgb[p]
        return out

    return vs.core.std.ModifyFrame(base, base, fill)
