"""Modulated deformable convolution (DCNv2) built from grid_sample and one matmul.

Same signature and offset/mask layout as ``torchvision.ops.deform_conv2d``; runs on
CPU and CUDA without compiling anything and exports to ONNX, either as the standard
``DeformConv`` op or as this decomposition (``GridSample`` + ``MatMul``).

The decomposition samples every kernel tap of every input channel into a "columns"
tensor (C * kh * kw, Ho, Wo) and multiplies it by the flattened weight. At 1080p with
64 channels that tensor alone is several GB, so output rows are processed in chunks
whose columns stay under a byte budget.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Default upper bound, in bytes, on the sampled columns of one chunk of output rows.
COLUMNS_BUDGET_BYTES = 256 * 2**20
#: Default chunk on the CPU. Columns that stay near the last-level cache between the
#: sampling and the matmul made a 64-channel 180x320 layer 1.3-1.6x faster than one big
#: chunk on a 32 MiB-L3 2-core machine; much smaller chunks lose again to per-op overhead.
CPU_COLUMNS_BYTES = 32 * 2**20

#: How ModulatedDeformConvPack is written into an ONNX graph by default.
ONNX_DCN_MODES = ("deformconv", "gridsample")


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _exporting() -> bool:
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.jit.is_scripting()


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
    max_columns_bytes: int | None = None,
) -> Tensor:
    """Deformable convolution with ``torchvision.ops.deform_conv2d``'s arguments and layout.

    ``offset`` is (B, 2 * G * kh * kw, Ho, Wo) holding (dy, dx) pairs per offset group
    ``G`` and kernel tap; ``mask`` (optional, DCNv2) is (B, G * kh * kw, Ho, Wo). Samples
    outside the input read zeros, as in torchvision. Output rows are computed in chunks
    so that the sampled columns of one chunk stay under ``max_columns_bytes`` (default
    ``COLUMNS_BUDGET_BYTES``, or the cache-sized ``CPU_COLUMNS_BYTES`` on the CPU); the
    result does not depend on the chunking. While tracing
    or exporting to ONNX everything is one chunk, so the graph keeps dynamic H and W.

    Half-precision inputs are sampled in float32: a float16 sampling grid cannot address
    pixels of wide frames (its step near 1.0 is about one pixel at 1920 wide).
    """
    _check_shapes(input, offset, weight, bias, mask)
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    b, _, _, _ = input.shape
    _, _, kh, kw = weight.shape
    ho, wo = offset.shape[2], offset.shape[3]
    exp_ho, exp_wo = _out_size(input, weight, (sh, sw), (ph, pw), (dh, dw))
    if not _exporting() and (ho, wo) != (exp_ho, exp_wo):
        raise ValueError(
            f"deform_conv2d: offset is {ho}x{wo} but the convolution's output is {exp_ho}x{exp_wo} "
            f"(input {tuple(input.shape[-2:])}, kernel {kh}x{kw}, stride {(sh, sw)}, padding {(ph, pw)}, "
            f"dilation {(dh, dw)})"
        )
    geometry = (sh, sw, ph, pw, dh, dw)
    if _exporting():
        return _deform_conv_rows(input, offset, weight, bias, mask, geometry, None)

    if max_columns_bytes is not None:
        budget = int(max_columns_bytes)
    else:
        budget = CPU_COLUMNS_BYTES if input.device.type == "cpu" else COLUMNS_BUDGET_BYTES
    elem = 4 if input.dtype in (torch.float16, torch.bfloat16) else input.element_size()
    bytes_per_row = b * input.shape[1] * kh * kw * wo * elem
    rows = max(1, min(ho, budget // max(bytes_per_row, 1)))
    if rows >= ho:
        return _deform_conv_rows(input, offset, weight, bias, mask, geometry, None)
    chunks = [
        _deform_conv_rows(input, offset, weight, bias, mask, geometry, (r0, min(r0 + rows, ho)))
        for r0 in range(0, ho, rows)
    ]
    return torch.cat(chunks, dim=2)


def _out_size(
    input: Tensor,
    weight: Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int]:
    h, w = input.shape[-2:]
    kh, kw = weight.shape[-2:]
    ho = (h + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return ho, wo


def _check_shapes(
    input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None, mask: Tensor | None
) -> None:
    if input.dim() != 4 or offset.dim() != 4 or weight.dim() != 4:
        raise ValueError(
            f"deform_conv2d: input, offset and weight must be 4-D, got {tuple(input.shape)}, "
            f"{tuple(offset.shape)}, {tuple(weight.shape)}"
        )
    if _exporting():
        return
    b, c = input.shape[:2]
    out_ch, c_per_wgroup, kh, kw = weight.shape
    k = kh * kw
    if c % c_per_wgroup or out_ch % (c // c_per_wgroup):
        raise ValueError(
            f"deform_conv2d: weight {tuple(weight.shape)} does not fit {c} input channels "
            "(in and out channels must divide into the weight groups)"
        )
    if offset.shape[0] != b or offset.shape[1] % (2 * k) or offset.shape[1] == 0:
        raise ValueError(
            f"deform_conv2d: offset must be (B={b}, 2 * groups * {kh} * {kw}, Ho, Wo), "
            f"got {tuple(offset.shape)}"
        )
    groups = offset.shape[1] // (2 * k)
    if c % groups:
        raise ValueError(f"deform_conv2d: {c} input channels do not divide into {groups} offset groups")
    if mask is not None and tuple(mask.shape) != (b, groups * k, *offset.shape[2:]):
        raise ValueError(
            f"deform_conv2d: mask must be {(b, groups * k, *offset.shape[2:])} for this offset, "
            f"got {tuple(mask.shape)}"
        )
    if bias is not None and tuple(bias.shape) != (out_ch,):
        raise ValueError(f"deform_conv2d: bias must be ({out_ch},), got {tuple(bias.shape)}")


def _deform_conv_rows(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    mask: Tensor | None,
    geometry: tuple[int, int, int, int, int, int],
    row_range: tuple[int, int] | None,
) -> Tensor:
    """Output rows ``row_range`` = (first, end), or all of them when None."""
    sh, sw, ph, pw, dh, dw = geometry
    b, c, h, w = input.shape
    out_ch, c_per_wgroup, kh, kw = weight.shape
    k = kh * kw
    groups = offset.shape[1] // (2 * k)
    wo = offset.shape[3]
    r0 = 0
    if row_range is not None:
        r0, r1 = row_range
        offset = offset[:, :, r0:r1]
        mask = None if mask is None else mask[:, :, r0:r1]
    rows = offset.shape[2]

    sample_dtype = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
    dev = input.device
    # Normalised grid_sample coordinates with align_corners=False: pixel p -> (2p + 1) / size - 1.
    # Base positions of each kernel tap at each output pixel, before the learned offset.
    ys = torch.arange(rows, device=dev, dtype=sample_dtype) * sh + (r0 * sh - ph)
    xs = torch.arange(wo, device=dev, dtype=sample_dtype) * sw - pw
    ky = torch.arange(kh, device=dev, dtype=sample_dtype) * dh
    kx = torch.arange(kw, device=dev, dtype=sample_dtype) * dw
    base_y = (ky.view(kh, 1, 1, 1) + ys.view(1, 1, rows, 1)).expand(kh, kw, rows, 1).reshape(k, rows, 1)
    base_x = (kx.view(1, kw, 1, 1) + xs.view(1, 1, 1, wo)).expand(kh, kw, 1, wo).reshape(k, 1, wo)
    base_y = (base_y * 2 + 1) / h - 1
    base_x = (base_x * 2 + 1) / w - 1

    off = offset.to(sample_dtype).view(b, groups, k, 2, rows, wo)
    gy = off[:, :, :, 0] * (2.0 / h) + base_y  # (b, g, k, rows, wo)
    gx = off[:, :, :, 1] * (2.0 / w) + base_x
    grid = torch.stack((gx, gy), dim=-1).view(b * groups, k * rows, wo, 2)
    sampled = F.grid_sample(
        input.to(sample_dtype).reshape(b * groups, c // groups, h, w),
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # (b*g, c/g, k*rows, wo)
    sampled = sampled.view(b, groups, c // groups, k, rows, wo)
    if mask is not None:
        m = mask.to(sample_dtype).view(b, groups, 1, k, rows, wo)
        # In place saves a pass over memory; autograd needs the unmasked samples kept.
        sampled = sampled * m if torch.is_grad_enabled() or _exporting() else sampled.mul_(m)
    wgroups = c // c_per_wgroup
    cols = sampled.to(input.dtype).reshape(b, wgroups, c_per_wgroup * k, rows * wo)
    out = torch.matmul(weight.reshape(wgroups, out_ch // wgroups, c_per_wgroup * k), cols)
    out = out.reshape(b, out_ch, rows, wo)
    if bias is not None:
        out = out + bias.view(1, out_ch, 1, 1)
    return out


class _DeformConvOp(torch.autograd.Function):
    """Runs the decomposition in torch; written into ONNX as the standard ``DeformConv`` op (opset 19)."""

    @staticmethod
    def forward(ctx, input, offset, weight, bias, mask, stride, padding, dilation):  # type: ignore[override]
        return deform_conv2d(
            input, offset, weight, bias, stride=stride, padding=padding, dilation=dilation, mask=mask
        )

    @staticmethod
    def symbolic(g, input, offset, weight, bias, mask, stride, padding, dilation):  # noqa: D102
        from torch.onnx import symbolic_helper

        w_shape = symbolic_helper._get_tensor_sizes(weight)
        in_ch = symbolic_helper._get_tensor_dim_size(input, 1)
        off_ch = symbolic_helper._get_tensor_dim_size(offset, 1)
        out_ch, c_per_wgroup, kh, kw = w_shape
        return g.op(
            "DeformConv",
            input,
            weight,
            offset,
            bias,
            mask,
            dilations_i=list(dilation),
            group_i=in_ch // c_per_wgroup,
            kernel_shape_i=[kh, kw],
            offset_group_i=off_ch // (2 * kh * kw),
            pads_i=[padding[0], padding[1], padding[0], padding[1]],
            strides_i=list(stride),
        )


def deform_conv2d_onnx_op(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor,
    mask: Tensor,
    *,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
) -> Tensor:
    """``deform_conv2d`` that the TorchScript ONNX exporter writes as one ``DeformConv`` node.

    Needs bias and mask, and known channel counts at export time (they are, in ERDN).
    """
    geometry = (tuple(stride), tuple(padding), tuple(dilation))
    return _DeformConvOp.apply(input, offset, weight, bias, mask, *geometry)


class ModulatedDeformConvPack(nn.Module):
    """DCNv2 whose offsets and masks are predicted from a second feature map.

    As in EDVR/ERDN alignment: ``forward(x, feat)`` samples ``x`` at offsets predicted
    from ``feat``. The offset convolution starts at zero, so a fresh layer is a plain conv.

    ``onnx_op`` says how an ONNX export writes this layer: ``"deformconv"`` (the standard
    op) or ``"gridsample"`` (the decomposition, for runtimes without DeformConv).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, deform_groups: int = 8) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.padding = kernel_size // 2
        self.deform_groups = deform_groups
        self.onnx_op = "deformconv"
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
        if torch.onnx.is_in_onnx_export() and self.onnx_op == "deformconv":
            p = (self.padding, self.padding)
            return deform_conv2d_onnx_op(x, offset, self.weight, self.bias, mask, padding=p)
        return deform_conv2d(x, offset, self.weight, self.bias, padding=self.padding, mask=mask)
