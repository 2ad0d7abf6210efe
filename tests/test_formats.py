"""Colour conversion and clip checks of the VapourSynth side (in-process VapourSynth, no worker)."""

from __future__ import annotations

import numpy as np
import pytest
import vapoursynth as vs

from erdn_vs import formats
from erdn_vs.filter import _shifted

core = vs.core


def yuv_clip(fmt: int, y: int, u: int, v: int, width: int = 64, height: int = 48, **props) -> vs.VideoNode:
    clip = core.std.BlankClip(width=width, height=height, format=fmt, length=2, color=[y, u, v])
    return core.std.SetFrameProps(clip, **props) if props else clip


def rgb_of(clip: vs.VideoNode) -> np.ndarray:
    colour = formats.colour_of(clip)
    return formats.frame_to_array(formats.to_rgb(clip, colour).get_frame(0)).astype(np.float64)


def ycbcr_to_rgb(y: float, cb: float, cr: float, kr: float, kb: float) -> np.ndarray:
    """Reference for full-range normalised Y in [0, 1], Cb/Cr in [-0.5, 0.5]."""
    kg = 1 - kr - kb
    r = y + 2 * (1 - kr) * cr
    b = y + 2 * (1 - kb) * cb
    g = (y - kr * r - kb * b) / kg
    return np.array([r, g, b])


@pytest.mark.parametrize(
    ("fmt", "work"),
    [
        (vs.YUV420P8, vs.RGBH), (vs.YUV420P10, vs.RGBH), (vs.YUV422P12, vs.RGBS), (vs.YUV444P16, vs.RGBS),
        (vs.RGB24, vs.RGBH), (vs.RGB30, vs.RGBH), (vs.RGB48, vs.RGBS), (vs.RGBH, vs.RGBH), (vs.RGBS, vs.RGBS),
        (vs.YUV444PH, vs.RGBH), (vs.YUV444PS, vs.RGBS),
    ],
    ids=lambda f: f.name,
)
def test_work_format(fmt, work):
    assert formats.work_format(core.get_video_format(fmt)) == work
    assert formats.sample_type(work) == ("half" if work == vs.RGBH else "float")


@pytest.mark.parametrize("fmt", [vs.GRAY8, vs.GRAY10, vs.GRAY16])
def test_gray_goes_in_as_three_equal_planes_and_comes_back_gray(fmt):
    """Issue 30: a black-and-white clip is restored as RGB with equal planes, and returned as GRAY, unchanged
    by the round trip (limited range, like the Y of YUV, unless tagged full)."""
    bits = core.get_video_format(fmt).bits_per_sample
    clip = core.std.BlankClip(format=fmt, width=16, height=8, length=1, color=[100 << (bits - 8)])
    formats.check_clip(clip)
    colour = formats.colour_of(clip)
    rgb = formats.to_rgb(clip, colour)
    planes = [np.asarray(rgb.get_frame(0)[p]) for p in range(3)]
    np.testing.assert_array_equal(planes[0], planes[1])
    np.testing.assert_array_equal(planes[0], planes[2])
    assert float(planes[0][0, 0]) == pytest.approx((100 - 16) / 219, abs=1e-3)
    back = formats.from_rgb(rgb, clip, colour)
    assert back.format.id == clip.format.id
    np.testing.assert_array_equal(np.asarray(back.get_frame(0)[0]), np.asarray(clip.get_frame(0)[0]))


def test_rejects_variable_format_and_size():
    a = core.std.BlankClip(format=vs.YUV420P8, width=64, height=48, length=2)
    b = core.std.BlankClip(format=vs.YUV444P8, width=64, height=48, length=2)
    c = core.std.BlankClip(format=vs.YUV420P8, width=32, height=48, length=2)
    with pytest.raises(ValueError, match="variable format"):
        formats.check_clip(core.std.Splice([a, b], mismatch=True))
    with pytest.raises(ValueError, match="variable frame size"):
        formats.check_clip(core.std.Splice([a, c], mismatch=True))
    with pytest.raises(ValueError, match="VideoNode"):
        formats.check_clip("clip.mkv")
    formats.check_clip(a)  # accepted


@pytest.mark.parametrize(
    ("size", "matrix"),
    [((64, 48), 6), ((720, 480), 6), ((720, 576), 5), ((1280, 720), 1), ((1920, 1080), 1), ((3840, 2160), 9)],
)
def test_default_matrix_by_size(size, matrix):
    fmt = core.get_video_format(vs.YUV420P8)
    colour = formats.colour_from_props({}, fmt, *size)
    assert colour.matrix == matrix
    assert colour.full_range is False  # YUV defaults to limited


def test_props_override_defaults():
    fmt = core.get_video_format(vs.YUV420P10)
    c = formats.colour_from_props({"_Matrix": 1, "_Range": 1, "_ChromaLocation": 2}, fmt, 64, 48)
    assert (c.matrix, c.full_range, c.chromaloc) == (1, True, 2)
    # "unspecified" counts as absent; the old _ColorRange uses 0 = full.
    c = formats.colour_from_props({"_Matrix": 2, "_ColorRange": 0}, fmt, 64, 48)
    assert (c.matrix, c.full_range) == (6, True)
    rgb = formats.colour_from_props({}, core.get_video_format(vs.RGB24), 64, 48)
    assert (rgb.matrix, rgb.full_range, rgb.chromaloc) == (None, True, None)
    # BT.2020 constant luminance needs a transfer; it is passed through unchanged.
    cl = formats.colour_from_props({"_Matrix": 10}, fmt, 64, 48)
    assert cl.transfer == 14 and cl.resize_args("out")["transfer"] == 14


def test_limited_range_601_default_matches_formula():
    # 64x48 YUV without props: SMPTE 170M (BT.601 coefficients), limited range.
    y, u, v = 120, 90, 170
    got = rgb_of(yuv_clip(vs.YUV444P8, y, u, v))[:, 10, 10]
    want = ycbcr_to_rgb((y - 16) / 219, (u - 128) / 224, (v - 128) / 224, 0.299, 0.114)
    np.testing.assert_allclose(got, want, atol=2e-3)  # RGBH rounding


def test_clip_matrix_and_range_props_are_used():
    y, u, v = 120, 90, 170
    got = rgb_of(yuv_clip(vs.YUV444P8, y, u, v, _Matrix=1, _Range=1))[:, 10, 10]
    want = ycbcr_to_rgb(y / 255, (u - 128) / 255, (v - 128) / 255, 0.2126, 0.0722)
    np.testing.assert_allclose(got, want, atol=2e-3)


@pytest.mark.parametrize("fmt", [vs.YUV444P8, vs.YUV444P10, vs.RGB24, vs.RGB48, vs.RGBS, vs.YUV444PS],
                         ids=lambda f: f.name)
def test_round_trip_without_subsampling_is_lossless(fmt):
    clip = core.std.BlankClip(width=32, height=16, format=fmt, length=1)
    info = clip.format

    def noise(n, f):
        out = f.copy()
        rng = np.random.default_rng(n)  # the same frame every time it is requested
        for p in range(info.num_planes):
            a = np.asarray(out[p])
            if info.sample_type == vs.INTEGER:
                lo, hi = (16, 235) if info.color_family == vs.YUV else (0, 255)
                scale = 1 << (info.bits_per_sample - 8)
                a[:] = rng.integers(lo * scale, hi * scale + 1, a.shape)
            else:
                lo = -0.4 if (info.color_family == vs.YUV and p > 0) else 0.0
                a[:] = rng.uniform(lo, lo + 0.8, a.shape)
        return out

    clip = core.std.ModifyFrame(clip, clip, noise)
    src = [np.asarray(p).copy() for p in [clip.get_frame(0)[i] for i in range(3)]]
    colour = formats.colour_of(clip)
    rgbs = core.resize.Bicubic(formats.to_rgb(clip, colour), format=vs.RGBS)
    back = formats.from_rgb(rgbs, clip, colour).get_frame(0)
    for p in range(3):
        got = np.asarray(back[p]).astype(np.float64)
        if info.sample_type == vs.INTEGER:
            # 8/10-bit sources go through float16, which holds every 10-bit code.
            tol = 1 if info.bits_per_sample <= 10 else 2
            assert np.abs(got - src[p]).max() <= tol
        else:
            np.testing.assert_allclose(got, src[p], atol=1e-5)


def test_write_array_clamps_to_unit_range():
    frame = core.std.BlankClip(width=4, height=2, format=vs.RGBS, length=1).get_frame(0).copy()
    values = np.linspace(-0.5, 1.5, 3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4)
    formats.write_array(frame, values)
    got = formats.frame_to_array(frame)
    np.testing.assert_array_equal(got, np.clip(values, 0, 1))
    assert got.dtype == np.float32 and got.shape == (3, 2, 4)


@pytest.mark.parametrize("length", [1, 2, 3, 7])
@pytest.mark.parametrize("offset", [-2, -1, 0, 1, 2])
def test_shifted_clip_gives_clamped_neighbour(length, offset):
    base = core.std.BlankClip(width=8, height=8, format=vs.GRAY8, length=length)
    stamped = core.std.FrameEval(base, lambda n: core.std.SetFrameProps(base, Stamp=n))
    shifted = _shifted(stamped, offset)
    assert shifted.num_frames == length
    got = [shifted.get_frame(n).props["Stamp"] for n in range(length)]
    assert got == [min(max(n + offset, 0), length - 1) for n in range(length)]
