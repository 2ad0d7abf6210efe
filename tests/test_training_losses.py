"""The cascaded loss (paper Eq. 8-13) on hand-made tensors, and on the tiny model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from training.losses import CascadeLoss, LossWeights
from worker.model import CascadeOutput, StageOutput, build_model
from worker.model.blocks import GradientMap

B, H, W = 2, 8, 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def perfect_output(sharp: torch.Tensor) -> CascadeOutput:
    """What a perfect 5-frame cascade would return for the window's sharp frames."""
    g = GradientMap(3)
    aligned = lambda c: sharp[:, c : c + 1].expand(-1, 3, -1, -1, -1)  # noqa: E731  every slot shows the centre
    stages = [StageOutput(sharp[:, i + 1], g(sharp[:, i + 1]), aligned(i + 1)) for i in range(3)]
    stages.append(StageOutput(sharp[:, 2], g(sharp[:, 2]), aligned(2)))
    return CascadeOutput(sharp[:, 2], stages)


@pytest.fixture
def sharp() -> torch.Tensor:
    return torch.rand(B, 5, 3, H, W, generator=torch.Generator().manual_seed(0))


def test_zero_when_every_stage_matches_its_targets(sharp: torch.Tensor) -> None:
    total, terms = CascadeLoss()(perfect_output(sharp), sharp)
    assert total.item() == pytest.approx(0.0, abs=1e-7)
    assert terms["rec"] == terms["align"] == pytest.approx(0.0, abs=1e-7)


def test_reconstruction_and_alignment_terms_by_hand(sharp: torch.Tensor) -> None:
    out = perfect_output(sharp)
    shifted = [StageOutput(s.out + 0.1, s.grad, s.aligned - 0.2) for s in out.stages]
    loss = CascadeLoss(LossWeights(rec=1.0, grad=1.0, align=0.5))
    total, terms = loss(CascadeOutput(out.out, shifted), sharp)
    assert terms["rec"] == pytest.approx(4 * 0.1, rel=1e-5)  # four stage evaluations
    assert terms["align"] == pytest.approx(4 * 0.2, rel=1e-5)
    assert total.item() == pytest.approx(4 * (0.1 + 0.5 * 0.2), rel=1e-5)


def test_gradient_term_compares_with_the_sharp_frames_gradient_map(sharp: torch.Tensor) -> None:
    out = perfect_output(sharp)
    blurry = F.avg_pool2d(sharp[:, 2], 3, 1, 1)
    g = GradientMap(3)
    stages = list(out.stages)
    stages[3] = StageOutput(stages[3].out, g(blurry), stages[3].aligned)  # stage 2 recovers the blurry map
    _, terms = CascadeLoss()(CascadeOutput(out.out, stages), sharp)
    expected = F.l1_loss(g(blurry), g(sharp[:, 2])).item()
    assert expected > 0.01
    assert terms["grad"] == pytest.approx(expected, rel=1e-5)
    assert terms["rec"] == pytest.approx(0.0, abs=1e-7)


def test_each_stage_is_compared_with_its_own_triplet(sharp: torch.Tensor) -> None:
    out = perfect_output(sharp)
    stages = list(out.stages)
    # stage 2's alignment is judged against sharp t: unaligned frames (t-1, t, t+1) must cost
    stages[3] = StageOutput(stages[3].out, stages[3].grad, sharp[:, 1:4])
    _, terms = CascadeLoss()(CascadeOutput(out.out, stages), sharp)
    expected = F.l1_loss(sharp[:, 1:4], sharp[:, 2:3].expand(-1, 3, -1, -1, -1)).item()
    assert expected > 0.01
    assert terms["align"] == pytest.approx(expected, rel=1e-5)
    assert terms["stage2"] > 0 and terms["stage1_0"] == terms["stage1_1"] == terms["stage1_2"] == 0


def test_three_frame_model_has_one_stage_loss() -> None:
    sharp = torch.rand(1, 3, 3, H, W)
    g = GradientMap(3)
    centre3 = sharp[:, 1:2].expand(-1, 3, -1, -1, -1)
    out = CascadeOutput(sharp[:, 1], [StageOutput(sharp[:, 1], g(sharp[:, 1]), centre3)])
    total, terms = CascadeLoss()(out, sharp)
    assert total.item() == pytest.approx(0.0, abs=1e-7) and "stage1" in terms
    with pytest.raises(ValueError, match="3 or 5"):
        CascadeLoss()(out, torch.rand(1, 4, 3, H, W))


def test_a_few_steps_lower_the_loss_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = build_model("tiny", 5)
    sharp = torch.rand(1, 5, 3, 32, 32)
    blur = F.avg_pool2d(sharp.flatten(0, 1), 5, 1, 2).view_as(sharp)
    criterion = CascadeLoss()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(10):
        loss, _ = criterion(model.cascade(blur), sharp)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
