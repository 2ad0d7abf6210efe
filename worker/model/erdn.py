"""One ERDN stage and the two-stage cascade."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .align import LEVELS, AlignmentModule
from .blocks import GradientMap, channels_last, luckiness, one_image_at_a_time
from .encoder_decoder import EncoderDecoder
from .fusion import GradientBranch
from .presets import ERDNConfig

#: H and W seen by a full-resolution stage (stem 1) must be multiples of this (the pyramid's total stride);
#: a model's own requirement is ``model.stride`` (ERDNConfig.stride: this times the stem).
STRIDE = 2 ** (LEVELS - 1)


class StageOutput(NamedTuple):
    out: Tensor  # restored reference frame (B, 3, H, W)
    grad: Tensor  # recovered gradient map of the reference (B, 3, H, W)
    aligned: Tensor  # the alignment module's restored triplet (B, 3, 3, H, W)


class CascadeOutput(NamedTuple):
    out: Tensor  # final restored centre frame (B, 3, H, W)
    stages: list[StageOutput]  # frames=5: the three stage-1 outputs (t-1, t, t+1), then stage 2


class Stage(nn.Module):
    """Alignment module + gradient guided fusion on a triplet (B, 3, 3, H, W).

    With ``cfg.stem`` s > 1 every frame (and the reference's gradient map) enters pixel-unshuffled,
    (3 s^2, H/s, W/s), the whole stage works at 1/s resolution, and its outputs leave pixel-shuffled
    back to (3, H, W): the layout of BasicVSR++'s and EDVR's deblurring models, where the compute sits.
    """

    def __init__(self, cfg: ERDNConfig) -> None:
        super().__init__()
        img = cfg.image_channels
        self.stem = cfg.stem
        self.stride = cfg.stride
        self.align = AlignmentModule(cfg)
        # Input: the three aligned frames and the luckiness mask, all at the stage's resolution.
        self.restore = EncoderDecoder(3 * img + cfg.stem**2, cfg.restore_feat, cfg.restore_blocks, cfg.kernel_size,
                                      img, block=cfg.block, upsample=cfg.upsample,
                                      middle_blocks=cfg.restore_middle_blocks)
        self.gradient = GradientBranch(cfg.restore_feat, cfg.gradient_in_blocks, cfg.gradient_blocks,
                                       image_ch=img, block=cfg.block, upsample=cfg.upsample)
        self.gradient_map = GradientMap(3)
        self.residual = cfg.residual
        if cfg.residual:
            zero_last_conv(self.restore.out_block)

    def forward(self, triplet: Tensor) -> StageOutput:
        check_stage_input(triplet, self.stride)
        if one_image_at_a_time(triplet) and triplet.shape[0] > 1:
            parts = [self._forward(triplet[i : i + 1]) for i in range(triplet.shape[0])]
            return StageOutput(*(torch.cat(outs, dim=0) for outs in zip(*parts, strict=True)))
        return self._forward(triplet)

    def _forward(self, triplet: Tensor) -> StageOutput:
        s = self.stem
        grad_in = channels_last(_unshuffle(self.gradient_map(triplet[:, 1]), s))
        aligned_low = self.align(_unshuffle(triplet, s))
        aligned = _shuffle(aligned_low, s)
        b, t, c, h, w = aligned_low.shape
        # The luckiness mask compares full-resolution frames, as in the official code, then joins the stage's grid.
        luck = _unshuffle(luckiness(aligned), s)
        feats = self.restore.encode(channels_last(torch.cat([aligned_low.reshape(b, t * c, h, w), luck], dim=1)))
        modulated, grad = self.gradient(grad_in, feats)
        out = _shuffle(self.restore.decode(modulated), s)
        if self.residual:
            out = out + triplet[:, 1]
        # The NHWC layout stays inside the stage: callers get plain contiguous tensors.
        return StageOutput(out.contiguous(), _shuffle(grad, s).contiguous(), aligned.contiguous())


def _unshuffle(x: Tensor, s: int) -> Tensor:
    """pixel_unshuffle over the last three dims of (..., C, H, W); the identity for s = 1."""
    return _per_image(F.pixel_unshuffle, x, s)


def _shuffle(x: Tensor, s: int) -> Tensor:
    """pixel_shuffle over the last three dims of (..., C * s^2, H, W); the identity for s = 1."""
    return _per_image(F.pixel_shuffle, x, s)


def _per_image(op, x: Tensor, s: int) -> Tensor:  # noqa: ANN001 - F.pixel_shuffle or F.pixel_unshuffle
    if s == 1:
        return x
    y = op(x.reshape(-1, *x.shape[-3:]), s)
    return y.reshape(*x.shape[:-3], *y.shape[-3:])


def zero_last_conv(module: nn.Module) -> None:
    """Start a residual output at zero, so the block begins as the identity."""
    last = [m for m in module.modules() if isinstance(m, nn.Conv2d)][-1]
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)


def check_stage_input(x: Tensor, stride: int = STRIDE) -> None:
    if x.dim() != 5 or x.shape[1] != 3 or x.shape[2] != 3:
        raise ValueError(f"an ERDN stage takes (B, 3, 3, H, W) triplets, got {tuple(x.shape)}")
    if x.shape[-2] % stride or x.shape[-1] % stride:
        raise ValueError(
            f"an ERDN stage needs H and W divisible by {stride}, got {tuple(x.shape[-2:])}; pad with pad_to_stride()"
        )


def pad_to_stride(x: Tensor, stride: int = STRIDE) -> tuple[Tensor, tuple[int, int]]:
    """Reflect-pad the last two dims of ``x`` up to multiples of ``stride``.

    Returns the padded tensor and the original (H, W); ``crop(y, hw)`` undoes it.
    Padding is on the bottom and right only, so pixel (0, 0) stays at (0, 0).
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph == 0 and pw == 0:
        return x, (h, w)
    if ph >= h or pw >= w:  # reflect needs pad < size; tiny frames fall back to replicate
        mode = "replicate"
    else:
        mode = "reflect"
    lead = x.shape[:-3]
    flat = x.reshape(-1, *x.shape[-3:])
    padded = F.pad(flat, (0, pw, 0, ph), mode=mode)
    return padded.reshape(*lead, *padded.shape[-3:]), (h, w)


def crop(x: Tensor, hw: tuple[int, int]) -> Tensor:
    return x[..., : hw[0], : hw[1]]


class ERDN(nn.Module):
    """The ERDN cascade. ``frames=3``: one stage; ``frames=5``: stage 1 on the triplets
    centred at t-1, t, t+1, stage 2 on their three outputs (separate weights).

    ``forward`` takes (B, T, 3, H, W) floats in [0, 1] of any H, W and returns the
    restored centre frame (B, 3, H, W).
    """

    def __init__(self, cfg: ERDNConfig, frames: int = 5, preset: str = "custom") -> None:
        super().__init__()
        if frames not in (3, 5):
            raise ValueError(f"ERDN frames must be 3 or 5, got {frames!r}")
        self.cfg = cfg
        self.stride = cfg.stride  # H and W of every stage input are multiples of this
        self.frames = frames
        self.preset = preset
        self.stage1 = Stage(cfg)
        self.stage2 = Stage(cfg) if frames == 5 else None

    def run_stage1(self, triplets: Tensor) -> StageOutput:
        """Stage 1 on triplets (B, 3, 3, H, W), H and W multiples of ``self.stride``."""
        return self.stage1(triplets)

    def run_stage2(self, stage1_outs: Tensor) -> StageOutput:
        """Stage 2 on the three stage-1 outputs (B, 3, 3, H, W) centred at t-1, t, t+1."""
        if self.stage2 is None:
            raise ValueError("this ERDN model has frames=3: it has no stage 2")
        return self.stage2(stage1_outs)

    def cascade(self, x: Tensor) -> CascadeOutput:
        """Every stage's outputs on a window (B, T, 3, H, W), H and W multiples of ``self.stride`` (for training)."""
        if x.dim() != 5 or x.shape[1] != self.frames or x.shape[2] != 3:
            raise ValueError(f"ERDN(frames={self.frames}) takes (B, {self.frames}, 3, H, W), got {tuple(x.shape)}")
        if self.frames == 3:
            s1 = self.run_stage1(x)
            return CascadeOutput(s1.out, [s1])
        b = x.shape[0]
        # The three triplets run as one batch of 3B.
        triplets = torch.cat([x[:, i : i + 3] for i in range(3)], dim=0)
        s1 = self.run_stage1(triplets)
        per_triplet = [StageOutput(*(t[i * b : (i + 1) * b] for t in s1)) for i in range(3)]
        s2 = self.run_stage2(torch.stack([s.out for s in per_triplet], dim=1))
        return CascadeOutput(s2.out, [*per_triplet, s2])

    def forward(self, x: Tensor) -> Tensor:
        padded, hw = pad_to_stride(x, self.stride)
        return crop(self.cascade(padded).out, hw)
