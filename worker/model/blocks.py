"""Small building blocks shared by the ERDN modules."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def cpu_eager(x: Tensor) -> bool:
    """True when ``x`` runs eagerly on the CPU (not on a GPU, not traced or exported).

    There the network keeps tensors in NHWC and, for inference, works on one image at a
    time (``one_image_at_a_time``): the convs reach the CPU's peak at batch 1 already, and
    smaller working sets stay in cache (a 1x5x3x256x256 window: 1.26x less CPU time than
    one batch of triplets and neighbours).
    """
    traced = torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.jit.is_scripting()
    return x.device.type == "cpu" and not traced


def one_image_at_a_time(x: Tensor) -> bool:
    """True where the network splits a batch into single images: eager inference on the CPU (``cpu_eager``).

    Training steps (autograd on) keep the batch whole: at 96x96 crops, batch 2, a lite step took 1.14x (3 frames)
    and 1.20x (5 frames) less CPU time that way (benchmarks/bench_train.py), and was level at 192x192; the
    per-image split pays for big frames, where it keeps the working set in cache.
    """
    return cpu_eager(x) and not torch.is_grad_enabled()


def channels_last(x: Tensor) -> Tensor:
    """``x`` in NHWC memory layout on the CPU; the same values.

    oneDNN runs this network's convolutions faster on NHWC than on NCHW (1.1x-1.9x on
    an AVX-512 CPU, most for the dilated ones) and a conv's output keeps its input's
    layout, so converting the few entry points keeps whole branches in NHWC. Other
    devices and ONNX export/tracing see ``x`` unchanged.
    """
    return x.contiguous(memory_format=torch.channels_last) if cpu_eager(x) else x


class ResBlock(nn.Module):
    """conv-ReLU-conv plus identity (the encoder-decoders' block)."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, padding=pad)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=pad)

    def forward(self, x: Tensor) -> Tensor:
        # In place on fresh conv outputs (conv backward does not need them): fewer big allocations.
        return self.conv2(F.relu(self.conv1(x), inplace=True)).add_(x)


class ScaledResBlock(nn.Module):
    """The alignment module's residual block: small (x0.1 Kaiming) initial weights."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight)
            with torch.no_grad():
                conv.weight.mul_(0.1)
            nn.init.zeros_(conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        # In place on fresh conv outputs (conv backward does not need them): fewer big allocations.
        return self.conv2(F.relu(self.conv1(x), inplace=True)).add_(x)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel of (B, C, H, W), with a learned per-channel scale and shift.

    Written with plain mean/var so that it traces to ONNX and stays per-pixel: tiles of a frame agree.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        mu = x.mean(1, keepdim=True)
        centred = x - mu
        var = centred.square().mean(1, keepdim=True)
        return centred * torch.rsqrt(var + self.eps) * self.weight + self.bias


class GatedBlock(nn.Module):
    """NAFNet's block without simplified channel attention (its global pooling breaks tiling).

    x + beta * conv1x1(gate(dwconv_k(conv1x1_2c(LN(x))))), then y + gamma * conv1x1(gate(conv1x1_2c(LN(y)))),
    where gate(a | b) = a * b splits the channels in halves. beta and gamma start at zero: a fresh block is
    the identity, which lets plain Adam train it at lr 1e-3 (NAFNet, Chen et al. 2022).
    """

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        c = channels
        self.norm1 = LayerNorm2d(c)
        self.expand1 = nn.Conv2d(c, 2 * c, 1)
        self.depthwise = nn.Conv2d(2 * c, 2 * c, kernel_size, padding=kernel_size // 2, groups=2 * c)
        self.project1 = nn.Conv2d(c, c, 1)
        self.norm2 = LayerNorm2d(c)
        self.expand2 = nn.Conv2d(c, 2 * c, 1)
        self.project2 = nn.Conv2d(c, c, 1)
        self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))

    @staticmethod
    def _gate(x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        return a * b

    def forward(self, x: Tensor) -> Tensor:
        y = x + self.beta * self.project1(self._gate(self.depthwise(self.expand1(self.norm1(x)))))
        return y + self.gamma * self.project2(self._gate(self.expand2(self.norm2(y))))


def residual_block(kind: str, channels: int, kernel_size: int = 3, scaled: bool = False) -> nn.Module:
    """One residual block of the given ``kind`` ("res" or "gated", ERDNConfig.block).

    ``scaled`` picks the alignment module's x0.1-initialised ResBlock for "res".
    """
    if kind == "gated":
        return GatedBlock(channels, kernel_size)
    if kind != "res":
        raise ValueError(f"unknown block kind {kind!r}; choose res or gated")
    return ScaledResBlock(channels) if scaled else ResBlock(channels, kernel_size)


def conv_relu(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2), nn.ReLU(inplace=True))


def up_relu(in_ch: int, out_ch: int, mode: str = "transpose") -> nn.Sequential:
    """x2 upsampling and ReLU (ERDNConfig.upsample).

    "transpose": a 3x3 transposed conv with output_padding 1 (the official code). Its kernel overlaps
    unevenly on the output grid, the cause of checkerboard artefacts (Odena et al., Distill 2016).
    "resize": bilinear x2, then a 3x3 conv: every output pixel sees the same kernel, so no grid.
    """
    if mode == "transpose":
        up: list[nn.Module] = [nn.ConvTranspose2d(in_ch, out_ch, 3, 2, 1, output_padding=1)]
    elif mode == "resize":
        up = [nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False), nn.Conv2d(in_ch, out_ch, 3, 1, 1)]
    else:
        raise ValueError(f"unknown upsample mode {mode!r}; choose transpose or resize")
    return nn.Sequential(*up, nn.ReLU(inplace=True))


class GradientMap(nn.Module):
    """Per-channel gradient magnitude sqrt(dx^2 + dy^2 + 1e-6) with central differences (Eq. 6)."""

    def __init__(self, channels: int = 3) -> None:
        super().__init__()
        kernel = torch.zeros(2, 1, 3, 3)
        kernel[0, 0, 2, 1], kernel[0, 0, 0, 1] = 1.0, -1.0  # vertical
        kernel[1, 0, 1, 2], kernel[1, 0, 1, 0] = 1.0, -1.0  # horizontal
        self.channels = channels
        self.register_buffer("kernel", kernel.repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        d = F.conv2d(x, self.kernel.to(x.dtype), padding=1, groups=self.channels)
        d = d.view(x.shape[0], self.channels, 2, x.shape[2], x.shape[3])
        return torch.sqrt((d * d).sum(dim=2) + 1e-6)


def luckiness(frames: Tensor, delta: float = 0.5, kernel_size: int = 5) -> Tensor:
    """Sharpness mask of the official code: exp(-||mean5(f_i) - mean5(f_c)|| / delta).

    ``frames`` is (B, T, C, H, W); returns (B, 1, H, W) in (0, 1]. No gradient flows
    through it, as in the official code.
    """
    b, t, c, h, w = frames.shape
    blurred = F.avg_pool2d(
        frames.detach().reshape(b * t, c, h, w), kernel_size, 1, kernel_size // 2, count_include_pad=True
    ).view(b, t, c, h, w)
    diff = blurred - blurred[:, t // 2 : t // 2 + 1]
    dist = torch.sqrt((diff * diff).sum(dim=(1, 2)).unsqueeze(1) / (delta * delta))
    return torch.exp(-dist)
