"""The ERDN network: presets, building, saving and loading."""

from .erdn import ERDN, STRIDE, CascadeOutput, StageOutput, crop, pad_to_stride
from .presets import PRESETS, ERDNConfig, get_preset
from .weights import build_model, load_model, save_model

__all__ = [
    "ERDN",
    "STRIDE",
    "PRESETS",
    "CascadeOutput",
    "ERDNConfig",
    "StageOutput",
    "build_model",
    "crop",
    "get_preset",
    "load_model",
    "pad_to_stride",
    "save_model",
]
