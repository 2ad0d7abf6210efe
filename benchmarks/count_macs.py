"""Parameters and multiply-adds per preset: ``python benchmarks/count_macs.py [--size 640x360]``.

Multiply-adds are counted with forward hooks on every convolution (transposed ones included)
and every modulated deformable convolution (its sampling is not counted, its matmul is), for
one output frame of the full cascade (4 stage evaluations for frames=5, no stage-1 reuse).
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from worker.model import PRESETS, build_model
from worker.model.dcn import ModulatedDeformConvPack


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def conv_hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        k = m.kernel_size[0] * m.kernel_size[1]
        if isinstance(m, nn.ConvTranspose2d):
            total += inputs[0].numel() * m.out_channels * k
        else:
            total += out.numel() * (m.in_channels // m.groups) * k

    def dcn_hook(m: ModulatedDeformConvPack, inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.weight.shape[1] * m.kernel_size**2

    handles = []
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, ModulatedDeformConvPack):
            handles.append(m.register_forward_hook(dcn_hook))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", default="640x360", help="WIDTHxHEIGHT (default 640x360)")
    args = p.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    # Count on a small window and scale: every layer's cost is proportional to the pixel count.
    sw, sh = 64, 64
    print(f"{'preset':8s} {'params (frames=5)':>18s} {'params/stage':>13s} {'GMAC per ' + args.size + ' frame':>22s}")
    base = None
    for name in PRESETS:
        model = build_model(name, frames=5).eval()
        params = sum(t.numel() for t in model.parameters())
        per_stage = sum(t.numel() for t in model.stage1.parameters())
        macs = count_macs(model, torch.rand(1, 5, 3, sh, sw)) * (w * h) / (sw * sh)
        base = base or macs
        print(f"{name:8s} {params:18,d} {per_stage:13,d} {macs / 1e9:16,.1f} ({base / macs:4.1f}x fewer than paper)")


if __name__ == "__main__":
    main()
