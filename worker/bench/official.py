"""The official ERDN implementation (TencentCloud/ERDN) as a baseline for the `paper` preset.

The official code is not part of this repository: the user points ``erdn bench --official PATH`` at a
checkout of it. As published it needs a compiled CUDA extension for its deformable convolution and
moves a mean-filter kernel to CUDA. This module runs those files unchanged on the CPU: it puts in
``sys.modules`` the one DCN module they import (``dcn.modules.modulated_deform_conv``), written here on
``torchvision.ops.deform_conv2d`` (the reference our own DCN is tested against), and passes
``device='cpu'`` to the mean filter. Random weights go into the official model and, through
``worker.convert``, into ours, so both compute the same function.
"""

from __future__ import annotations

import contextlib
import functools
import io
import sys
import types
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.modules.utils import _pair

SHIM = "dcn.modules.modulated_deform_conv"


def _deform_conv(x, offset, mask, weight, bias, stride, padding, dilation, groups, deformable_groups, im2col_step):
    """The official extension's call signature, on torchvision (offset groups follow from the offset's shape)."""
    from torchvision.ops import deform_conv2d

    if groups != 1:
        raise ValueError("the official ERDN uses groups=1 deformable convolutions")
    return deform_conv2d(x, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask)


class _DeformConvPack(nn.Module):
    """Parameters named as in the official extension's ModulatedDeformConvPack (weight, bias, conv_offset)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride, padding, dilation=1, groups=1,
                 deformable_groups=1, im2col_step=64, bias=True, lr_mult=0.1) -> None:
        super().__init__()
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.groups, self.deformable_groups, self.im2col_step = groups, deformable_groups, im2col_step
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = nn.Conv2d(in_channels, deformable_groups * 3 * taps, self.kernel_size, self.stride,
                                     self.padding, bias=True)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)


def _install_dcn_shim() -> None:
    if SHIM in sys.modules:
        return
    module = types.ModuleType(SHIM)
    module.ModulatedDeformConvPack = _DeformConvPack
    module._ModulatedDeformConv = _deform_conv
    for name in ("dcn", "dcn.modules"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules[SHIM] = module


class OfficialError(RuntimeError):
    """The official code could not be loaded from the given path; the message says why."""


def load_official(path: Path, seed: int) -> nn.Module:
    """The official two-stage ERDN from the checkout at ``path``, with fixed-seed random weights.

    Its initialisation zeroes the offset convolutions; they get small random values so the deformable
    convolutions sample away from the grid, as trained ones do.
    """
    path = Path(path).expanduser().resolve()
    if not (path / "model" / "erdn.py").is_file() or not (path / "utils" / "utils.py").is_file():
        raise OfficialError(f"{path} is not a checkout of TencentCloud/ERDN (no model/erdn.py and utils/utils.py); "
                            "clone it and pass its root to --official")
    clash = [name for name in ("model", "utils") if name in sys.modules]
    if clash:
        raise OfficialError(f"modules named {clash} are already imported in this process; the official code uses "
                            "those top-level names")
    _install_dcn_shim()
    sys.path.insert(0, str(path))
    try:
        from model.erdn import ERDN  # the official code
        from utils import utils as official_utils
    except ImportError as e:
        raise OfficialError(f"importing the official ERDN from {path} failed: {e}") from None
    official_utils.calc_meanFilter = functools.partial(official_utils.calc_meanFilter, device="cpu")
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints while building
        model = ERDN(device="cpu", phase="double")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "conv_offset" in name:
                p.copy_(torch.randn_like(p) * (0.3 / p[0].numel() ** 0.5 if p.dim() > 1 else 2.0))
    return model.eval()


def save_as_ours(official: nn.Module, out: Path) -> Path:
    """The official model's weights converted (worker.convert) into a `paper` weights file of ours."""
    from worker.convert import convert_state_dict
    from worker.model import save_model

    return save_model(convert_state_dict(official.state_dict()), out)


def forward_runner(official: nn.Module):
    """``run(window)``: the official forward on one (5, 3, H, W) float32 window -> (3, H, W)."""

    def run(window: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return official(torch.from_numpy(window)[None])[0][0].numpy()

    return run
