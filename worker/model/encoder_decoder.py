"""The three-scale encoder-decoder used twice per stage.

Once inside the alignment module, to pre-deblur the reference frame from the raw
triplet; once as the restoration branch of the fusion module, whose encoder features
the gradient branch modulates (SFT) before they are decoded.
"""

from __future__ import annotations

from torch import Tensor, nn

from .blocks import conv_relu, residual_block, up_relu


class EncoderDecoder(nn.Module):
    """Three scales (feat, 2*feat, 4*feat channels at 1, 1/2 and 1/4 of its input's resolution).

    ``block`` and ``upsample`` are ERDNConfig.block and .upsample; ``middle_blocks`` more blocks run
    at the lowest scale, between the encoder and the decoder.
    """

    def __init__(self, in_ch: int, feat: int, blocks: int, kernel_size: int, out_ch: int = 3, *,
                 block: str = "res", upsample: str = "transpose", middle_blocks: int = 0) -> None:
        super().__init__()
        k = kernel_size

        def res(ch: int, n: int = blocks) -> list[nn.Module]:
            return [residual_block(block, ch, k) for _ in range(n)]

        self.in_block = nn.Sequential(conv_relu(in_ch, feat, k), *res(feat))
        self.encoder1 = nn.Sequential(conv_relu(feat, 2 * feat, k, stride=2), *res(2 * feat))
        self.encoder2 = nn.Sequential(conv_relu(2 * feat, 4 * feat, k, stride=2), *res(4 * feat))
        # Absent (not an empty Sequential) when unused, so the official checkpoints' keys stay as they are.
        self.middle = nn.Sequential(*res(4 * feat, middle_blocks)) if middle_blocks else None
        self.decoder2 = nn.Sequential(*res(4 * feat), up_relu(4 * feat, 2 * feat, upsample))
        self.decoder1 = nn.Sequential(*res(2 * feat), up_relu(2 * feat, feat, upsample))
        self.out_block = nn.Sequential(*res(feat), nn.Conv2d(feat, out_ch, k, padding=k // 2))

    def encode(self, x: Tensor) -> list[Tensor]:
        """Features at full, 1/2 and 1/4 resolution."""
        f0 = self.in_block(x)
        f1 = self.encoder1(f0)
        f2 = self.encoder2(f1)
        return [f0, f1, f2]

    def decode(self, feats: list[Tensor]) -> Tensor:
        f0, f1, f2 = feats
        if self.middle is not None:
            f2 = self.middle(f2)
        return self.out_block(self.decoder1(self.decoder2(f2) + f1) + f0)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))
