"""The preset table: every width and depth of the ERDN network, in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

_BOOL_FIELDS = ("residual", "align_neighbours")
_CHOICES = {"block": ("res", "gated"), "upsample": ("transpose", "resize")}
_MAY_BE_ZERO = ("restore_middle_blocks",)


@dataclass(frozen=True)
class ERDNConfig:
    """Widths and depths of one ERDN stage (both stages of the cascade share them).

    The names follow the paper's parts: the alignment module (feature pyramid,
    equivalent-receptive-field offset blocks, deformable alignment, reconstruction
    of the aligned neighbours, and the centre encoder-decoder that pre-deblurs the
    reference), the restoration branch and the gradient branch of the fusion module.
    """

    align_feat: int = 64  # channels of the alignment pyramid
    deform_groups: int = 8  # offset groups of every modulated deformable conv
    extract_blocks: int = 5  # residual blocks before the pyramid
    reconstruct_blocks: int = 10  # residual blocks that rebuild aligned neighbours
    center_feat: int = 32  # width of the centre (pre-deblur) encoder-decoder
    center_blocks: int = 3
    restore_feat: int = 32  # width of the restoration branch (and the gradient branch)
    restore_blocks: int = 3
    kernel_size: int = 5  # kernel of both encoder-decoders
    gradient_in_blocks: int = 4  # residual blocks on the gradient input
    gradient_blocks: int = 2  # residual blocks per scale of the gradient branch
    # Add the input frame to each restored frame (centre, aligned neighbours, stage output), with
    # those outputs' last convs starting at zero: a fresh model is the identity. Not in the official
    # code (the paper preset keeps it off, so its checkpoints load); it lets small models trained
    # on little compute start from the blurry input instead of from noise.
    residual: bool = False
    # Space-to-depth factor of the stem: each frame enters as pixel_unshuffle(frame, stem), i.e. 3*stem^2
    # channels at 1/stem resolution, every part of the stage works there, and the outputs leave through
    # pixel_shuffle (with the residual to the input frame). 1 is the official network at full resolution;
    # 2 and 4 put the compute where BasicVSR++, EDVR and RVRT deblur (1/4 resolution, wide channels).
    stem: int = 1
    # Residual block of the encoder-decoders, gradient branch and alignment: "res" (conv-ReLU-conv, the
    # official code) or "gated" (LayerNorm, 1x1 expansion, depthwise conv, SimpleGate, then a gated 1x1
    # feed-forward; NAFNet's block without its global pooling, which would make tiles disagree).
    block: str = "res"
    # x2 upsampling of the encoder-decoders and gradient branch: "transpose" (3x3 transposed conv, the
    # official code; prone to checkerboard grids) or "resize" (bilinear x2, then a 3x3 conv: no grid by
    # construction).
    upsample: str = "transpose"
    # Extra blocks of the restoration encoder-decoder at its lowest scale (NAFNet's "middle" blocks).
    restore_middle_blocks: int = 0
    # False: no deformable alignment of the neighbours; they reach the stage only through the centre
    # encoder-decoder's input (early fusion). The control that asks whether alignment pays at a given compute.
    align_neighbours: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _BOOL_FIELDS:
                if not isinstance(value, bool):
                    raise ValueError(f"ERDNConfig.{f.name} must be true or false, got {value!r}")
            elif f.name in _CHOICES:
                if value not in _CHOICES[f.name]:
                    raise ValueError(f"ERDNConfig.{f.name} must be one of {_CHOICES[f.name]}, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int) or value < (0 if f.name in _MAY_BE_ZERO else 1):
                kind = "a non-negative" if f.name in _MAY_BE_ZERO else "a positive"
                raise ValueError(f"ERDNConfig.{f.name} must be {kind} integer, got {value!r}")
        if self.align_feat % self.deform_groups:
            raise ValueError("ERDNConfig.align_feat must be a multiple of deform_groups")
        if self.kernel_size % 2 == 0:
            raise ValueError("ERDNConfig.kernel_size must be odd")
        if self.stem not in (1, 2, 4):
            raise ValueError(f"ERDNConfig.stem must be 1, 2 or 4, got {self.stem!r}")

    @property
    def image_channels(self) -> int:
        """Channels of one frame inside the stage: 3 * stem^2 (pixel-unshuffled RGB)."""
        return 3 * self.stem * self.stem

    @property
    def stride(self) -> int:
        """H and W a stage takes must be multiples of this: the pyramid's 2^3 times the stem."""
        return 8 * self.stem

    def to_dict(self) -> dict[str, int | bool | str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ERDNConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown ERDN config keys: {sorted(unknown)}")
        return cls(**data)


# The lite preset, named so that deeper variants can be written as changes to it.
_LITE = ERDNConfig(
    align_feat=16,
    deform_groups=4,
    extract_blocks=1,
    reconstruct_blocks=2,
    center_feat=8,
    center_blocks=1,
    restore_feat=12,
    restore_blocks=1,
    kernel_size=3,
    gradient_in_blocks=1,
    gradient_blocks=1,
    residual=True,
)

# ERDN at 1/4 resolution (issue 29): frames enter pixel-unshuffled by 4 (48 channels at H/4 x W/4), every part
# of the stage works there with 32 channels in alignment and 32/64/128 in restoration, and the outputs leave
# through pixel_shuffle with the residual to the input frame. Upsampling inside is resize-convolution (no
# checkerboard by construction). 139k MAC/px per stage against lite's 364k, 6.5x faster on one CPU thread
# at 640x360 (bf16), and almost none of it at full resolution.
_QUARTER = ERDNConfig(
    align_feat=32,
    deform_groups=8,
    extract_blocks=2,
    reconstruct_blocks=2,
    center_feat=32,
    center_blocks=1,
    restore_feat=32,
    restore_blocks=2,
    kernel_size=3,
    gradient_in_blocks=1,
    gradient_blocks=1,
    residual=True,
    stem=4,
    upsample="resize",
)

PRESETS: dict[str, ERDNConfig] = {
    # The official code's widths and depths (TencentCloud/ERDN), so its checkpoints load.
    "paper": ERDNConfig(),
    # Same architecture, narrow and shallow: for CPUs and small GPUs.
    "lite": _LITE,
    # lite with the paper's depths in the fusion module (restoration and gradient branches), where the
    # restored frame is made: 1.19x lite's multiply-adds. Trained by growing a trained lite (training/grow.py).
    "lite_deep": replace(_LITE, restore_blocks=3, gradient_blocks=2),
    # The equal-compute trials of issue 29 (training/configs/trials_quarter/): the base and one change each.
    "quarter": _QUARTER,
    # Stride 2 instead of 4, narrower to stay nearer the same inference cost. Alignment stays at 16 channels:
    # with torch 2.14.1 on an AVX-512 BF16 EPYC, oneDNN's bf16 backward of the dilated ERF convs gave NaN or
    # crashed at 20 and 24 channels (channels-last), and was finite at 8, 12, 16, 32, 48 and 64.
    "half": replace(_QUARTER, stem=2, align_feat=16, deform_groups=4, extract_blocks=1, center_feat=16,
                    restore_feat=24, restore_blocks=1),
    # NAFNet-style normalised gated blocks everywhere a residual block was (trained at lr 1e-3).
    "quarter_gated": replace(_QUARTER, block="gated"),
    # Four more blocks at the restoration encoder-decoder's lowest scale (1/16 of the frame).
    "quarter_deep": replace(_QUARTER, restore_middle_blocks=4),
    # No deformable alignment: neighbours only enter the centre encoder-decoder (does alignment pay?).
    "quarter_early": replace(_QUARTER, align_neighbours=False),
    # For tests: tiny but every part present.
    "tiny": ERDNConfig(
        align_feat=8,
        deform_groups=2,
        extract_blocks=1,
        reconstruct_blocks=1,
        center_feat=4,
        center_blocks=1,
        restore_feat=4,
        restore_blocks=1,
        kernel_size=3,
        gradient_in_blocks=1,
        gradient_blocks=1,
    ),
}


# For tests: tiny, with every option of the reduced-resolution presets (stem 2, gated blocks, resize
# upsampling, middle blocks).
PRESETS["tiny_stem"] = replace(PRESETS["tiny"], stem=2, block="gated", upsample="resize", restore_middle_blocks=1,
                               residual=True)


def get_preset(name: str) -> ERDNConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
