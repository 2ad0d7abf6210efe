"""Dual pyramid alignment module.

Neighbour frames go through a 4-level feature pyramid; the reference frame's pyramid
comes from the encoder of a small encoder-decoder that also pre-deblurs it. Offsets are
predicted at each level by an equivalent-receptive-field block and refined coarse to
fine; a final cascading deformable conv aligns at full resolution. The aligned neighbour
features are rebuilt into frames, so the module returns three restored frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import channels_last, one_image_at_a_time, residual_block
from .dcn import ModulatedDeformConvPack
from .encoder_decoder import EncoderDecoder
from .presets import ERDNConfig

LEVELS = 4


def _lrelu(x: Tensor) -> Tensor:
    return F.leaky_relu(x, 0.1)


def _lrelu_(x: Tensor) -> Tensor:
    """In place: only on a fresh conv output, which no backward needs."""
    return F.leaky_relu(x, 0.1, inplace=True)


class ERFBlock(nn.Module):
    """Equivalent-receptive-field (dilated spatial pyramid) block.

    ``branches`` parallel paths see growing receptive fields: a 1x1+3x3 path, then
    paths of a 3x3 conv, (dilation - 3) / 4 5x5 convs and a 3x3 conv of dilation
    3, 7, 15, ... so that each path's receptive field equals its dilated kernel's.
    Their outputs are concatenated and fused by a 1x1 conv.
    """

    def __init__(self, branches: int, feat: int) -> None:
        super().__init__()
        # Every LeakyReLU follows a conv, so it can work in place.
        paths = [
            nn.Sequential(
                nn.Conv2d(2 * feat, feat, 1),
                nn.LeakyReLU(0.1, True),
                nn.Conv2d(feat, feat, 3, 1, 1),
                nn.LeakyReLU(0.1, True),
            )
        ]
        for i in range(branches - 1):
            dilation = 2 ** (i + 2) - 1
            layers: list[nn.Module] = [nn.Conv2d(2 * feat, feat, 3, 1, 1), nn.LeakyReLU(0.1, True)]
            for _ in range(-(-(dilation - 3) // 4)):  # ceil((d - 3) / 4) 5x5 convs
                layers += [nn.Conv2d(feat, feat, 5, 1, 2), nn.LeakyReLU(0.1, True)]
            layers += [nn.Conv2d(feat, feat, 3, 1, dilation, dilation=dilation), nn.LeakyReLU(0.1, True)]
            paths.append(nn.Sequential(*layers))
        self.paths = nn.ModuleList(paths)
        self.fuse = nn.Conv2d(branches * feat, feat, 1) if branches > 1 else None

    def forward(self, x: Tensor) -> Tensor:
        if self.fuse is None:
            return self.paths[0](x)
        return self.fuse(torch.cat([p(x) for p in self.paths], dim=1))


class PyramidAlignment(nn.Module):
    """Coarse-to-fine deformable alignment of a neighbour pyramid onto the reference pyramid."""

    def __init__(self, feat: int, deform_groups: int) -> None:
        super().__init__()
        # Index 0 is full resolution; level l (1-based) gets LEVELS - l + 1 ERF branches.
        self.offset_erf = nn.ModuleList(ERFBlock(LEVELS - i, feat) for i in range(LEVELS))
        self.offset_fuse = nn.ModuleList(nn.Conv2d(2 * feat, feat, 3, 1, 1) for _ in range(LEVELS - 1))
        self.dcn = nn.ModuleList(ModulatedDeformConvPack(feat, feat, 3, deform_groups) for _ in range(LEVELS))
        self.feat_fuse = nn.ModuleList(nn.Conv2d(2 * feat, feat, 3, 1, 1) for _ in range(LEVELS - 1))
        self.cascade_offset1 = nn.Conv2d(2 * feat, feat, 3, 1, 1)
        self.cascade_offset2 = nn.Conv2d(feat, feat, 3, 1, 1)
        self.cascade_dcn = ModulatedDeformConvPack(feat, feat, 3, deform_groups)

    def forward(self, nbr: list[Tensor], ref: list[Tensor]) -> Tensor:
        up_offset = up_feat = None
        feat = nbr[0]
        for i in reversed(range(LEVELS)):
            offset = _lrelu(self.offset_erf[i](torch.cat([nbr[i], ref[i]], dim=1)))
            if up_offset is not None:
                offset = _lrelu_(self.offset_fuse[i](torch.cat([offset, up_offset], dim=1)))
            feat = channels_last(self.dcn[i](nbr[i], offset))
            if up_feat is not None:
                feat = self.feat_fuse[i](torch.cat([feat, up_feat], dim=1))
            if i > 0:
                feat = _lrelu(feat)
                up_offset = _upsample2(offset).mul_(2)
                up_feat = _upsample2(feat)
        offset = _lrelu_(self.cascade_offset2(_lrelu_(self.cascade_offset1(torch.cat([feat, ref[0]], dim=1)))))
        return channels_last(_lrelu(self.cascade_dcn(feat, offset)))


def _upsample2(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)


class AlignmentModule(nn.Module):
    """Takes a triplet (B, 3, C, H, W); returns the aligned, restored triplet (B, 3, C, H, W).

    C is ERDNConfig.image_channels (3, or 3 * stem^2 for pixel-unshuffled frames). Slots 0 and 2
    are the neighbours rebuilt from their aligned features; slot 1 is the reference pre-deblurred
    by the centre encoder-decoder. With ``align_neighbours`` off there is no deformable alignment:
    the neighbours reach the stage only through the centre encoder-decoder's input (early fusion),
    and every slot is the pre-deblurred centre.
    """

    def __init__(self, cfg: ERDNConfig) -> None:
        super().__init__()
        f = cfg.align_feat
        img = cfg.image_channels
        self.align_neighbours = cfg.align_neighbours
        if cfg.align_neighbours:
            self.conv_first = nn.Conv2d(img, f, 3, 1, 1)
            self.extract = nn.Sequential(
                *(residual_block(cfg.block, f, scaled=True) for _ in range(cfg.extract_blocks))
            )
            # Levels 2..4 of the pyramid: a stride-2 conv then a 3x3 conv each.
            self.down = nn.ModuleList(
                nn.ModuleList([nn.Conv2d(f, f, 3, 2, 1), nn.Conv2d(f, f, 3, 1, 1)]) for _ in range(LEVELS - 1)
            )
        self.center = EncoderDecoder(3 * img, cfg.center_feat, cfg.center_blocks, cfg.kernel_size, img,
                                     block=cfg.block, upsample=cfg.upsample)
        if cfg.align_neighbours:
            c = cfg.center_feat
            # 1x1 convs that bring the centre encoder's features to the pyramid's width.
            self.center_to_pyramid = nn.ModuleList(
                [nn.Conv2d(c, f, 1), nn.Conv2d(2 * c, f, 1), nn.Conv2d(4 * c, f, 1)]
            )
            self.pyramid_align = PyramidAlignment(f, cfg.deform_groups)
            self.reconstruct = nn.Sequential(
                *(residual_block(cfg.block, f, scaled=True) for _ in range(cfg.reconstruct_blocks))
            )
            self.conv_last = nn.Conv2d(f, img, 3, 1, 1)
        self.residual = cfg.residual
        if cfg.residual:
            lasts = [self.center.out_block[-1]] + ([self.conv_last] if cfg.align_neighbours else [])
            for last in lasts:
                nn.init.zeros_(last.weight)
                nn.init.zeros_(last.bias)

    def _down(self, level: int, x: Tensor) -> Tensor:
        conv_stride, conv = self.down[level]
        return _lrelu_(conv(_lrelu_(conv_stride(x))))

    def _rebuild_neighbours(self, nbr: Tensor, ref_l: list[Tensor]) -> Tensor:
        """Pyramid of the neighbour frames ``nbr``, aligned onto the reference pyramid and rebuilt into frames."""
        nbr_l = [self.extract(_lrelu_(self.conv_first(channels_last(nbr))))]
        for level in range(LEVELS - 1):
            nbr_l.append(self._down(level, nbr_l[-1]))
        rebuilt = self.conv_last(self.reconstruct(self.pyramid_align(nbr_l, ref_l)))
        return rebuilt + nbr if self.residual else rebuilt

    def forward(self, x: Tensor) -> Tensor:
        b, t, c, h, w = x.shape
        # Reference pyramid from the centre encoder, which also pre-deblurs the reference.
        enc = self.center.encode(channels_last(x.reshape(b, t * c, h, w)))
        center = self.center.decode(enc)
        if self.residual:
            center = center + x[:, 1]
        if not self.align_neighbours:
            return torch.stack([center, center, center], dim=1)
        ref_l = [proj(e) for proj, e in zip(self.center_to_pyramid, enc, strict=True)]
        ref_l.append(self._down(LEVELS - 2, ref_l[-1]))

        if one_image_at_a_time(x):  # one neighbour at a time
            before, after = (self._rebuild_neighbours(x[:, slot], ref_l) for slot in (0, 2))
        else:  # both neighbours as one batch: slot 0 then slot 2
            nbr = torch.cat([x[:, 0], x[:, 2]], dim=0)
            rebuilt = self._rebuild_neighbours(nbr, [torch.cat([r, r], dim=0) for r in ref_l])
            before, after = rebuilt[:b], rebuilt[b:]
        return torch.stack([before, center, after], dim=1)
