"""The preset table: every width and depth of the ERDN network, in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace


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

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "residual":
                if not isinstance(value, bool):
                    raise ValueError(f"ERDNConfig.residual must be true or false, got {value!r}")
            elif isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ERDNConfig.{f.name} must be a positive integer, got {value!r}")
        if self.align_feat % self.deform_groups:
            raise ValueError("ERDNConfig.align_feat must be a multiple of deform_groups")
        if self.kernel_size % 2 == 0:
            raise ValueError("ERDNConfig.kernel_size must be odd")

    def to_dict(self) -> dict[str, int | bool]:
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

PRESETS: dict[str, ERDNConfig] = {
    # The official code's widths and depths (TencentCloud/ERDN), so its checkpoints load.
    "paper": ERDNConfig(),
    # Same architecture, narrow and shallow: for CPUs and small GPUs.
    "lite": _LITE,
    # lite with the paper's depths in the fusion module (restoration and gradient branches), where the
    # restored frame is made: 1.19x lite's multiply-adds. Trained by growing a trained lite (training/grow.py).
    "lite_deep": replace(_LITE, restore_blocks=3, gradient_blocks=2),
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


def get_preset(name: str) -> ERDNConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
