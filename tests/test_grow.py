"""Function-preserving deepening (training/grow.py): a trained network grows into a deeper preset unchanged."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from training.grow import DEPTH_FIELDS, GrowError, can_grow, grow_into
from worker.model import build_model, save_model
from worker.model.presets import PRESETS


def _trained_like(preset: str, frames: int, seed: int) -> torch.nn.Module:
    """A model whose every weight is non-zero (a fresh residual model starts with zero output convs)."""
    torch.manual_seed(seed)
    model = build_model(preset, frames)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def test_lite_grows_into_lite_deep_computing_the_same() -> None:
    assert can_grow(PRESETS["lite"], PRESETS["lite_deep"]) is None
    small = _trained_like("lite", 3, seed=0)
    deep = build_model("lite_deep", 3).eval()
    grow_into(deep.stage1, small.stage1)
    x = torch.rand(1, 3, 3, 64, 64)
    with torch.no_grad():
        want, got = small(x), deep(x)
    assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()
    # the extra blocks are really there, start as the identity and will learn (conv1 is not zero)
    extra = deep.stage1.restore.encoder1[2]
    assert torch.count_nonzero(extra.conv2.weight) == 0 and torch.count_nonzero(extra.conv1.weight) > 0
    assert sum(p.numel() for p in deep.parameters()) > sum(p.numel() for p in small.parameters())


def test_every_depth_grows() -> None:
    base = PRESETS["tiny"]
    deeper = dataclasses.replace(base, **{f: getattr(base, f) + 1 for f in DEPTH_FIELDS})
    small = _trained_like("tiny", 3, seed=1)
    deep = build_model(deeper, 3).eval()
    grow_into(deep.stage1, small.stage1)
    x = torch.rand(1, 3, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(deep(x), small(x), atol=1e-5)


def test_what_cannot_grow_is_named() -> None:
    assert "align_feat differs (source 8, target 16)" in can_grow(PRESETS["tiny"], PRESETS["lite"])
    assert "restore_blocks would shrink from 3 to 1" in can_grow(PRESETS["lite_deep"], PRESETS["lite"])
    with pytest.raises(GrowError, match=r"^stage1\.restore\.in_block: 2 trained layers have no place in the target$"):
        grow_into(build_model("lite", 3).stage1, build_model("lite_deep", 3).stage1, "stage1")


def test_init_from_grows_a_3_frame_lite_into_a_5_frame_lite_deep(tmp_path: Path) -> None:
    from training.train import init_from
    from worker.model.weights import WeightsError

    small = _trained_like("lite", 3, seed=2)
    path = save_model(small, tmp_path / "lite3.safetensors")
    deep = build_model("lite_deep", 5).eval()
    init_from(deep, str(path))
    for stage in (deep.stage1, deep.stage2):  # the 3-frame stage, grown, in both stages of the cascade
        assert torch.equal(stage.restore.out_block[0].conv1.weight, small.stage1.restore.out_block[0].conv1.weight)
    grown3 = build_model("lite_deep", 3).eval()
    init_from(grown3, str(path))
    x = torch.rand(1, 3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(grown3(x), small(x), atol=1e-5)
    with pytest.raises(WeightsError, match="cannot grow into it: align_feat differs"):
        init_from(build_model("tiny", 3), str(path))


def test_init_from_grows_a_5_frame_lite_into_a_5_frame_lite_deep(tmp_path: Path) -> None:
    """Each stage of a trained cascade grows into the same stage of the deeper one: the output is unchanged."""
    from training.train import init_from

    small = _trained_like("lite", 5, seed=4)
    deep = build_model("lite_deep", 5).eval()
    init_from(deep, str(save_model(small, tmp_path / "lite5.safetensors")))
    x = torch.rand(1, 5, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(deep(x), small(x), atol=1e-5)
