"""Modulated deformable convolution (DCNv2) built from grid_sample and one matmul.

Same signature and offset/mask layout as ``torchvision.ops.deform_conv2d``; runs on
CPU and CUDA without compiling anything and exports to ONNX.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: Tensor | None = None,
) -> Tensor:
    """Deformable convolution, torchvision layout: offset (B, 2*G*kh*kw, Ho, Wo) as (dy, dx) pairs."""
    b, c, h, w = input.shape
    out_ch, c_per_group, kh, kw = weight.shape
    if c_per_group != c:
        raise ValueError("deform_conv2d: grouped weights are not supported")
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    k = kh * kw
    groups = offset.shape[1] // (2 * k)
    ho, wo = offset.shape[2], offset.shape[3]
    cg = c // groups

    dtype = input.dtype
    # Base sampling positions of each kernel tap for each output pixel.
    ys = torch.arange(ho, device=input.device, dtype=dtype) * sh - ph
    xs = torch.arange(wo, device=input.device, dtype=dtype) * sw - pw
    ky = torch.arange(kh, device=input.device, dtype=dtype).repeat_interleave(kw) * dh
    kx = torch.arange(kw, device=input.device, dtype=dtype).repeat(kh) * dw
    base_y = ky.view(k, 1, 1) + ys.view(1, ho, 1)  # (k, ho, 1)
    base_x = kx.view(k, 1, 1) + xs.view(1, 1, wo)  # (k, 1, wo)

    off = offset.view(b, groups, k, 2, ho, wo)
    py = off[:, :, :, 0] + base_y  # (b, g, k, ho, wo)
    px = off[:, :, :, 1] + base_x
    # align_corners=True maps -1..1 onto pixel centres 0..size-1.
    gy = py * (2.0 / max(h - 1, 1)) - 1.0
    gx = px * (2.0 / max(w - 1, 1)) - 1.0
    grid = torch.stack((gx, gy), dim=-1).view(b * groups, k * ho, wo, 2)
    sampled = F.grid_sample(
        input.reshape(b * groups, cg, h, w), grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )  # (b*g, cg, k*ho, wo)
    sampled = sampled.view(b, groups, cg, k, ho, wo)
    if mask is not None:
        sampled = sampled * mask.view(b, groups, 1, k, ho, wo)
    cols = sampled.reshape(b, c * k, ho * wo)
    out = torch.matmul(weight.reshape(out_ch, c * k), cols).view(b, out_ch, ho, wo)
    if bias is not None:
        out = out + bias.view(1, out_ch, 1, 1)
    return out


class ModulatedDeformConvPack(nn.Module):
    """DCNv2 whose offsets and masks are predicted from a second feature map.

    As in EDVR/ERDN alignment: ``forward(x, feat)`` samples ``x`` at offsets predicted
    from ``feat``. The offset convolution starts at zero, so a fresh layer is a plain conv.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, deform_groups: int = 8) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.padding = kernel_size // 2
        self.deform_groups = deform_groups
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(out_ch))
        self.conv_offset = nn.Conv2d(
            in_ch, deform_groups * 3 * kernel_size * kernel_size, kernel_size, padding=self.padding
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        bound = 1 / math.sqrt(self.weight[0].numel())
        nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor, feat: Tensor) -> Tensor:
        out = self.conv_offset(feat)
        n = 2 * self.deform_groups * self.kernel_size * self.kernel_size
        offset, mask = out[:, :n], torch.sigmoid(out[:, n:])
        return deform_conv2d(x, offset, self.weight, self.bias, padding=self.padding, mask=mask)
