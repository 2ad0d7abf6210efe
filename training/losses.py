"""The cascaded objective of ERDN (paper Eq. 8-13).

For each stage: L_stage = L_rec + L_grad + lambda * L_align, where
- L_rec is L1 (or, by choice, Charbonnier) between the restored frame and the sharp centre frame,
- L_grad is L1 between the stage's recovered gradient map and the gradient map (Eq. 6)
  of the sharp centre frame,
- L_align is L1 between each of the alignment module's three restored frames and the sharp
  reference (centre) frame: the module aligns the neighbours *onto the reference* (its offsets
  are predicted from neighbour and reference features together, and the sharpness mask
  compares the aligned frames with the centre), so a neighbour that is rebuilt well is the
  reference's content, not its own frame's.
With 5 frames, stage 1 runs on the triplets centred at t-1, t, t+1 (each against its own
centre's sharp frame) and stage 2 on their outputs (against sharp t).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.model import CascadeOutput, StageOutput
from worker.model.blocks import GradientMap


@dataclass(frozen=True)
class LossWeights:
    rec: float = 1.0
    grad: float = 1.0
    align: float = 1.0  # lambda of Eq. 10
    pixel: str = "l1"  # the distance of every term: "l1" or "charbonnier"


def charbonnier(x: Tensor, y: Tensor, eps: float = 1e-3) -> Tensor:
    """Mean of sqrt((x - y)^2 + eps^2): L1 with a smooth minimum (EDVR, BasicVSR; eps as in BasicSR)."""
    return torch.sqrt((x - y).square() + eps * eps).mean()


class CascadeLoss(nn.Module):
    """Sum of every stage's loss; ``forward`` returns the total and its named terms (detached)."""

    def __init__(self, weights: LossWeights | None = None) -> None:
        super().__init__()
        self.weights = weights or LossWeights()
        self.gradient_map = GradientMap(3)
        if self.weights.pixel not in ("l1", "charbonnier"):
            raise ValueError(f"loss pixel must be l1 or charbonnier, got {self.weights.pixel!r}")
        self.distance = F.l1_loss if self.weights.pixel == "l1" else charbonnier

    def stage_loss(self, stage: StageOutput, sharp_triplet: Tensor) -> dict[str, Tensor]:
        """Terms of one stage; ``sharp_triplet`` (B, 3, 3, H, W) is the sharp (prev, centre, next)."""
        centre = sharp_triplet[:, 1]
        return {
            "rec": self.distance(stage.out, centre),
            "grad": self.distance(stage.grad, self.gradient_map(centre)),
            "align": self.distance(stage.aligned, centre.unsqueeze(1).expand_as(stage.aligned)),
        }

    def forward(self, output: CascadeOutput, sharp: Tensor) -> tuple[Tensor, dict[str, float]]:
        """``sharp`` is the window's sharp frames (B, T, 3, H, W), T = 3 or 5."""
        t = sharp.shape[1]
        if t == 3:
            targets = [sharp]
        elif t == 5:
            # stage 1 on triplets centred at t-1, t, t+1, then stage 2 (centred at t)
            targets = [sharp[:, 0:3], sharp[:, 1:4], sharp[:, 2:5], sharp[:, 1:4]]
        else:
            raise ValueError(f"the cascaded loss takes 3 or 5 sharp frames, got {t}")
        if len(targets) != len(output.stages):
            raise ValueError(f"{len(output.stages)} stage outputs for a {t}-frame window")
        w = self.weights
        total = sharp.new_zeros(())
        terms: dict[str, float] = {}
        for i, (stage, target) in enumerate(zip(output.stages, targets, strict=True)):
            parts = self.stage_loss(stage, target)
            stage_total = w.rec * parts["rec"] + w.grad * parts["grad"] + w.align * parts["align"]
            total = total + stage_total
            name = "stage2" if (t == 5 and i == 3) else f"stage1_{i}" if t == 5 else "stage1"
            terms[name] = float(stage_total.detach())
            for k, v in parts.items():
                terms[k] = terms.get(k, 0.0) + float(v.detach())
        terms["total"] = float(total.detach())
        return total, terms
