"""benchmarks/artefacts.py: each artefact measure sees the artefact it is named for, and not its absence."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import artefacts  # noqa: E402


def frames(n: int = 4, h: int = 32, w: int = 48, seed: int = 0) -> np.ndarray:
    """Smooth random frames (N, H, W, 3) in [0.2, 0.8]: content with little energy near Nyquist."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((n, h // 8, w // 8, 3))
    return (0.2 + 0.6 * coarse.repeat(8, axis=1).repeat(8, axis=2)).astype(np.float32)


def test_nyquist_ratio_sees_a_checkerboard_and_not_a_smooth_change():
    x = frames()
    smooth = artefacts.nyquist_ratio(x * 0.9 + 0.05, x)
    yy, xx = np.mgrid[0:32, 0:48]
    grid = (((yy + xx) % 2) * 2 - 1)[None, :, :, None] * 0.01
    gridded = artefacts.nyquist_ratio(x + grid, x)
    assert smooth < 3 and gridded > 100


def test_shimmer_ratio_is_one_for_the_identity_and_grows_with_flicker():
    x = frames(6)
    rng = np.random.default_rng(1)
    x = x + rng.normal(0, 0.5 / 255, x.shape).astype(np.float32)  # codec-like noise in static areas
    assert artefacts.shimmer_ratio(x, x) == pytest.approx(1.0)
    flicker = x + rng.normal(0, 2 / 255, x.shape).astype(np.float32)
    assert artefacts.shimmer_ratio(flicker, x) > 2


def test_pan_window_blurs_in_linear_light_around_a_sharp_middle():
    still = frames(1, 16, 120)[0]
    blurry, sharp = artefacts.pan_window(still, 3)
    margin = artefacts.PAN_PX + artefacts.BLUR_STEPS // 2
    assert blurry.shape == (3, 16, 120 - 2 * margin, 3) and sharp.shape == blurry.shape[1:]
    np.testing.assert_array_equal(sharp, np.round(still[:, margin:-margin] * 255) / 255)
    # the centre frame is the mean of the 9 one-pixel steps around the sharp frame's position, in linear light
    from training.data.images import linear_to_srgb, srgb_to_linear

    lin = srgb_to_linear(still)
    w = sharp.shape[1]
    expect = linear_to_srgb(np.mean([lin[:, margin + u : margin + u + w] for u in range(-4, 5)], axis=0))
    np.testing.assert_allclose(blurry[1], np.round(expect * 255) / 255, atol=1e-6)
    assert artefacts.psnr(blurry[1], sharp) < artefacts.psnr(sharp, sharp)


def test_pictures_are_written_for_any_frame_size(tmp_path):
    x = frames(3, 40, 120)
    artefacts.save_pictures(tmp_path, "m", "clip", (x[0], x[1], x[2]), (x[0], x[1]))
    from PIL import Image

    pan, change = Image.open(tmp_path / "m_clip_pan.png"), Image.open(tmp_path / "m_clip_change.png")
    assert pan.size[0] == 3 * 120 + 2 * 4 and pan.size[1] > 2 * 40
    assert change.size == (3 * 120 + 2 * 4, 40 + 16)
