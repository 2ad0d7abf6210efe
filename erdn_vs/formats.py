"""Colour conversion between a user's clip and the RGB the model sees, and frames <-> numpy arrays.

The model works on RGB in [0, 1]. A source of at most 10 bits (or half float) goes to RGBH
(float16 holds every 10-bit code exactly), anything deeper to RGBS.

The clip's own _Matrix/_Range (or the older _ColorRange)/_ChromaLocation describe it. On the
way in, core.resize uses each frame's properties and falls back to the arguments given here
when a property is absent or "unspecified". The way back has no input properties to read, so
it uses frame 0's description: a clip whose colour description changes mid-stream comes back
with frame 0's. Defaults: BT.2020 above 1920x1080, BT.709 for HD, BT.470BG for 576-line PAL,
SMPTE 170M for other SD; limited range for YUV, full for RGB. Transfer and primaries are left
alone (passed only to the matrices that need them: BT.2020 CL, chromaticity-derived, ICtCp).

Restored samples are clamped to [0, 1] in RGB, then converted back with dither_type="none"
(plain rounding), so the result is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import vapoursynth as vs

# ITU-T H.273 codes, as VapourSynth's _Matrix/_Transfer/_Primaries use them.
MATRIX_RGB, MATRIX_709, MATRIX_UNSPECIFIED, MATRIX_470BG, MATRIX_170M, MATRIX_2020NCL = 0, 1, 2, 5, 6, 9
UNSPECIFIED = 2
MATRICES_NEEDING_TRANSFER = (10, 12, 13, 14)  # 2020 CL, chromaticity-derived NCL/CL, ICtCp
# _Range (VapourSynth R74+): 0 limited, 1 full. The deprecated _ColorRange: 0 full, 1 limited.
RANGE_LIMITED, RANGE_FULL = 0, 1


@dataclass(frozen=True)
class Colour:
    """How a clip's samples map to RGB; ``matrix`` is None for RGB clips."""

    matrix: int | None
    full_range: bool
    chromaloc: int | None  # _ChromaLocation of subsampled YUV; None = resize's default (left)
    transfer: int | None = None  # only for MATRICES_NEEDING_TRANSFER
    primaries: int | None = None

    def resize_args(self, direction: str) -> dict:
        """Keyword arguments of core.resize for ``direction`` "in" (to RGB) or "out" (back to the source)."""
        suffix = "_in" if direction == "in" else ""
        args: dict = {f"range{suffix}_s": "full" if self.full_range else "limited"}
        if self.matrix is not None:
            args[f"matrix{suffix}"] = self.matrix
        if self.chromaloc is not None:
            args[f"chromaloc{suffix}"] = self.chromaloc
        if self.transfer is not None:  # in = out: no transfer conversion, zimg just needs to know it
            args.update(transfer_in=self.transfer, transfer=self.transfer)
        if self.primaries is not None:
            args.update(primaries_in=self.primaries, primaries=self.primaries)
        return args


def check_clip(clip: object) -> None:
    """Raise ValueError (saying what to do) for anything deblur cannot take."""
    if not isinstance(clip, vs.VideoNode):
        raise ValueError(f"clip must be a vapoursynth.VideoNode, got {type(clip).__name__}")
    fmt = clip.format
    if fmt is None or fmt.id == vs.NONE:
        raise ValueError("clip has a variable format; convert it to one format first "
                         "(e.g. core.resize.Bicubic(clip, format=vs.YUV420P10))")
    if clip.width == 0 or clip.height == 0:
        raise ValueError("clip has a variable frame size; resize it to one size first "
                         "(e.g. core.resize.Bicubic(clip, 1920, 1080))")
    if fmt.color_family not in (vs.RGB, vs.YUV, vs.GRAY):
        raise ValueError(f"clip is {fmt.name}; give an RGB, YUV or GRAY clip")
    if fmt.sample_type == vs.INTEGER and not 8 <= fmt.bits_per_sample <= 16:
        raise ValueError(f"clip is {fmt.name}; integer clips of 8 to 16 bits are supported")
    if fmt.sample_type == vs.FLOAT and fmt.bits_per_sample not in (16, 32):
        raise ValueError(f"clip is {fmt.name}; half (16-bit) and single (32-bit) float clips are supported")


FIELD_ORDER = {1: "bottom field first", 2: "top field first"}  # _FieldBased codes
DEINTERLACE_HINT = (
    "ERDN restores progressive frames: deinterlace first (e.g. havsfunc.QTGMC(clip, TFF=True), or "
    "core.bwdif.Bwdif(clip, field=1)), or, if the clip is really progressive and the tag is wrong, "
    "clear it with core.std.SetFieldBased(clip, 0)"
)


def check_progressive(props: dict, what: str = "clip") -> None:
    """Raise ValueError (saying what to do) when a frame's ``_FieldBased`` marks it interlaced.

    Refused rather than restored: core.resize converts chroma per field on the way in but the way
    back has no field information, and the model's motion handling assumes whole frames.
    """
    field_based = props.get("_FieldBased", 0)
    if field_based in FIELD_ORDER:
        raise ValueError(f"{what} is interlaced (_FieldBased={field_based}, {FIELD_ORDER[field_based]}); "
                         + DEINTERLACE_HINT)


def work_format(fmt: vs.VideoFormat) -> int:
    """RGBH for sources of at most 10 bits or half float, RGBS otherwise."""
    if fmt.bits_per_sample <= 10 or (fmt.sample_type == vs.FLOAT and fmt.bits_per_sample == 16):
        return vs.RGBH
    return vs.RGBS


def sample_type(work: int) -> str:
    """The protocol's name for the samples of a work format."""
    return "half" if work == vs.RGBH else "float"


def default_matrix(width: int, height: int) -> int:
    if width > 1920 or height > 1080:
        return MATRIX_2020NCL
    if width > 1024 or height > 576:
        return MATRIX_709
    if height in (576, 288):
        return MATRIX_470BG
    return MATRIX_170M


def _code(props: dict, key: str) -> int | None:
    value = props.get(key)
    return int(value) if isinstance(value, int) and value != UNSPECIFIED else None


def colour_from_props(props: dict, fmt: vs.VideoFormat, width: int, height: int) -> Colour:
    """A Colour from one frame's properties, filling in the defaults for what is absent.

    GRAY is a luma plane: limited range unless tagged full, like the Y of YUV; it has no matrix."""
    is_yuv = fmt.color_family == vs.YUV
    is_gray = fmt.color_family == vs.GRAY
    matrix = None
    if is_yuv:
        matrix = _code(props, "_Matrix")
        if matrix in (None, MATRIX_RGB):
            matrix = default_matrix(width, height)
    if "_Range" in props and props["_Range"] in (RANGE_LIMITED, RANGE_FULL):
        full = props["_Range"] == RANGE_FULL
    elif "_ColorRange" in props and props["_ColorRange"] in (0, 1):
        full = props["_ColorRange"] == 0
    else:
        full = not (is_yuv or is_gray)
    chromaloc = None
    if is_yuv and (fmt.subsampling_w or fmt.subsampling_h):
        chromaloc = props.get("_ChromaLocation")
        if not isinstance(chromaloc, int) or not 0 <= chromaloc <= 5:
            chromaloc = None
    transfer = primaries = None
    if matrix in MATRICES_NEEDING_TRANSFER:
        transfer = _code(props, "_Transfer") or 14  # BT.2020 10-bit
        primaries = _code(props, "_Primaries") or 9  # BT.2020
    return Colour(matrix, full, chromaloc, transfer, primaries)


def colour_of(clip: vs.VideoNode) -> Colour:
    """The Colour of a clip, from frame 0's properties (one frame is requested at script time)."""
    return colour_from_props(dict(clip.get_frame(0).props), clip.format, clip.width, clip.height)


def to_rgb(clip: vs.VideoNode, colour: Colour) -> vs.VideoNode:
    """The clip as RGBH or RGBS (see ``work_format``). A GRAY clip becomes three equal planes."""
    work = work_format(clip.format)
    if clip.format.color_family == vs.GRAY:
        gray = vs.core.resize.Bicubic(clip, format=vs.GRAYH if work == vs.RGBH else vs.GRAYS,
                                      **colour.resize_args("in"), range_s="full")
        return vs.core.std.ShufflePlanes(gray, [0, 0, 0], vs.RGB)
    return vs.core.resize.Bicubic(clip, format=work, **colour.resize_args("in"))


def from_rgb(rgb: vs.VideoNode, like: vs.VideoNode, colour: Colour) -> vs.VideoNode:
    """Restored RGB back to ``like``'s format with the same colour description; no dithering.

    For a GRAY ``like``, the mean of the three restored planes (the model may tint them apart a little)."""
    if like.format.color_family == vs.GRAY:
        planes = [vs.core.std.ShufflePlanes(rgb, p, vs.GRAY) for p in range(3)]
        gray = vs.core.std.Expr(planes, "x y + z + 3 /")
        args = colour.resize_args("out")
        return vs.core.resize.Bicubic(gray, format=like.format.id, dither_type="none", range_in_s="full", **args)
    return vs.core.resize.Bicubic(rgb, format=like.format.id, dither_type="none", **colour.resize_args("out"))


def frame_to_array(frame: vs.VideoFrame) -> np.ndarray:
    """An RGB frame as a contiguous (3, H, W) array of its sample type (float16 or float32)."""
    return np.stack([np.asarray(frame[p]) for p in range(3)])


def write_array(frame: vs.VideoFrame, rgb: np.ndarray) -> None:
    """Write a (3, H, W) float array into a writable RGBS frame, clamped to [0, 1]."""
    for p in range(3):
        np.clip(rgb[p], 0.0, 1.0, out=np.asarray(frame[p]), casting="same_kind")
