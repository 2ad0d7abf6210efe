"""Gradient guided fusion: the gradient branch and its SFT modulation of the restoration branch."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .blocks import conv_relu, residual_block, up_relu


class GradientBranch(nn.Module):
    """Recovers the sharp gradient map from the reference's gradient map.

    At each of three scales it concatenates the restoration branch's encoder feature
    and, from its own decoder features, predicts the SFT scale (alpha) and shift (beta)
    that modulate that encoder feature: ``alpha * F + beta``.
    """

    def __init__(self, feat: int, in_blocks: int, blocks: int, *, image_ch: int = 3, block: str = "res",
                 upsample: str = "transpose") -> None:
        """``image_ch``: channels of the gradient map in and out (3 * stem^2, ERDNConfig.image_channels)."""
        super().__init__()

        def res(ch: int, n: int = blocks) -> list[nn.Module]:
            return [residual_block(block, ch, 3) for _ in range(n)]

        self.in_layer = nn.Sequential(conv_relu(image_ch, feat, 3), *res(feat, in_blocks))
        self.in_block = nn.Sequential(*res(2 * feat), nn.Conv2d(2 * feat, feat, 3, padding=1))
        self.down1 = conv_relu(feat, 2 * feat, 3, stride=2)
        self.encoder1 = nn.Sequential(*res(4 * feat), nn.Conv2d(4 * feat, 2 * feat, 3, padding=1))
        self.down2 = conv_relu(2 * feat, 4 * feat, 3, stride=2)
        self.encoder2 = nn.Sequential(*res(8 * feat), nn.Conv2d(8 * feat, 4 * feat, 3, padding=1))
        self.decoder2 = nn.Sequential(*res(4 * feat))
        self.up2 = up_relu(4 * feat, 2 * feat, upsample)
        self.decoder1 = nn.Sequential(*res(2 * feat))
        self.up1 = up_relu(2 * feat, feat, upsample)
        self.out_block = nn.Sequential(*res(feat))
        self.to_gradient = nn.Conv2d(feat, image_ch, 3, padding=1)

        def condition(ch: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(ch, ch, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(ch, ch, 3, padding=1)
            )

        self.sft_scale = nn.ModuleList(condition(feat * 2**i) for i in range(3))
        self.sft_shift = nn.ModuleList(condition(feat * 2**i) for i in range(3))

    def forward(self, grad: Tensor, feats: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        """Returns the three modulated restoration features and the recovered gradient map."""
        e0 = self.in_block(torch.cat([self.in_layer(grad), feats[0]], dim=1))
        e1 = self.encoder1(torch.cat([self.down1(e0), feats[1]], dim=1))
        e2 = self.encoder2(torch.cat([self.down2(e1), feats[2]], dim=1))
        d2 = self.decoder2(e2)
        d1 = self.decoder1(self.up2(d2) + e1)
        d0 = self.out_block(self.up1(d1) + e0)
        modulated = [
            (f * scale(g)).add_(shift(g))  # in place on the fresh product: one big allocation less
            for f, g, scale, shift in zip(feats, (d0, d1, d2), self.sft_scale, self.sft_shift, strict=True)
        ]
        return modulated, self.to_gradient(d0)
