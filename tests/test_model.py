"""The ERDN network: sizes, shapes, the stage API, padding, and weights files."""

import json

import pytest
import torch

from worker.model import (
    PRESETS,
    STRIDE,
    build_model,
    crop,
    load_model,
    pad_to_stride,
    save_model,
)
from worker.model.weights import WeightsError, read_metadata

# The official code registers two 64->64 3x3 convs (conv_l4_c_1/2) per stage that its forward
# never calls, and the two fixed gradient kernels (18 values, one copy shared by both stages)
# as parameters. Counted with the official module on CPU: stage 1 (with the kernels)
# 23,097,878, stage 2 23,097,860, in all 46,195,738.
OFFICIAL_DEAD_PARAMS_PER_STAGE = 2 * (64 * 64 * 9 + 64)
OFFICIAL_GRADIENT_KERNELS = 18


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_paper_preset_matches_official_parameter_count():
    model = build_model("paper", frames=5)
    per_stage = n_params(model.stage1)
    assert n_params(model.stage2) == per_stage
    official_per_stage = per_stage + OFFICIAL_DEAD_PARAMS_PER_STAGE
    assert official_per_stage + OFFICIAL_GRADIENT_KERNELS == 23_097_878
    assert 2 * official_per_stage + OFFICIAL_GRADIENT_KERNELS == 46_195_738
    assert per_stage == 23_024_004


def test_frames3_has_one_stage():
    model = build_model("tiny", frames=3)
    assert model.stage2 is None
    assert n_params(model) == n_params(model.stage1)


@pytest.mark.parametrize("frames", [3, 5])
def test_forward_shape_and_any_size(frames):
    torch.manual_seed(0)
    model = build_model("tiny", frames=frames).eval()
    x = torch.rand(2, frames, 3, 37, 50)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 3, 37, 50)
    assert torch.isfinite(y).all()


def test_cascade_equals_stages_called_by_hand():
    torch.manual_seed(1)
    model = build_model("tiny", frames=5).eval()
    x = torch.rand(1, 5, 3, 32, 40)
    with torch.no_grad():
        full = model.cascade(x)
        s1 = [model.run_stage1(x[:, i : i + 3]) for i in range(3)]
        s2 = model.run_stage2(torch.stack([s.out for s in s1], dim=1))
    torch.testing.assert_close(full.out, s2.out, atol=1e-5, rtol=0)
    for a, b in zip(full.stages[:3], s1, strict=True):
        torch.testing.assert_close(a.out, b.out, atol=1e-5, rtol=0)
        assert a.aligned.shape == (1, 3, 3, 32, 40)
        assert a.grad.shape == (1, 3, 32, 40)
    assert len(full.stages) == 4


def test_batch_items_are_independent():
    torch.manual_seed(2)
    model = build_model("tiny", frames=5).eval()
    x = torch.rand(3, 5, 3, 24, 24)
    with torch.no_grad():
        together = model(x)
        alone = model(x[1:2])
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=0)


def test_training_keeps_the_batch_whole_and_matches_inference():
    # On the CPU inference splits a batch into single images; a training step (autograd on) runs it whole.
    from worker.model.blocks import one_image_at_a_time

    torch.manual_seed(3)
    model = build_model("tiny", frames=5)
    x = torch.rand(2, 5, 3, 24, 24)
    assert one_image_at_a_time(x) is False
    trained_way = model.cascade(x)
    with torch.no_grad():
        assert one_image_at_a_time(x) is True
        inferred_way = model.cascade(x)
    for a, b in zip(trained_way.stages, inferred_way.stages, strict=True):
        for name in ("out", "grad", "aligned"):
            torch.testing.assert_close(getattr(a, name).detach(), getattr(b, name), atol=1e-5, rtol=0)


def test_stage_rejects_sizes_off_the_stride():
    model = build_model("tiny", frames=5)
    with pytest.raises(ValueError, match="divisible by 8"):
        model.run_stage1(torch.rand(1, 3, 3, 30, 32))
    with pytest.raises(ValueError, match=r"\(B, 5, 3, H, W\)"):
        model.cascade(torch.rand(1, 3, 3, 32, 32))


def test_pad_to_stride_round_trip():
    x = torch.rand(2, 5, 3, 21, 34)
    padded, hw = pad_to_stride(x)
    assert padded.shape[-2:] == (24, 40)
    assert padded.shape[-2] % STRIDE == 0 and padded.shape[-1] % STRIDE == 0
    torch.testing.assert_close(crop(padded, hw), x)
    # reflect padding: row 21 mirrors row 19
    torch.testing.assert_close(padded[..., 21, :34], x[..., 19, :])
    same, _ = pad_to_stride(torch.rand(1, 3, 16, 16))
    assert same.shape == (1, 3, 16, 16)


def test_tiny_preset_is_cheap():
    """The tests' preset stays cheap, counted in floating-point operations rather than timed (a wall-clock
    bound failed on a loaded machine: 1.03 s against 1.0). Counted: convolutions and matmuls, 2 per multiply-add."""
    from torch.utils.flop_counter import FlopCounterMode

    flops = {}
    for preset in ("tiny", "lite"):
        with torch.device("meta"):  # shapes only: counting needs no arithmetic
            model = build_model(preset, frames=5).eval()
            x = torch.rand(1, 5, 3, 64, 64)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        flops[preset] = counter.get_total_flops()
    assert flops["tiny"] < 3e9, flops  # 2.55e9 for the full cascade on a 64x64 window
    assert flops["tiny"] * 4 < flops["lite"], flops


def test_lite_has_far_fewer_parameters_than_paper():
    assert n_params(build_model("lite")) * 10 < n_params(build_model("paper"))
    assert set(PRESETS) >= {"paper", "lite", "tiny"}


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(3)
    model = build_model("tiny", frames=5).eval()
    path = save_model(model, tmp_path / "w.safetensors", data="unit-test", iterations=7)
    loaded = load_model(path)
    assert loaded.frames == 5 and loaded.preset == "tiny"
    assert loaded.metadata == {"data": "unit-test", "iterations": 7}
    x = torch.rand(1, 5, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x), loaded(x), atol=0, rtol=0)
    meta = read_metadata(path)
    assert meta["config"] == PRESETS["tiny"]


def test_load_rejects_bad_files(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(WeightsError, match="does not exist"):
        load_model(missing)
    pickle_like = tmp_path / "official.pth"
    pickle_like.write_bytes(b"\x80\x04\x95not a safetensors file")
    with pytest.raises(WeightsError, match="erdn convert"):
        load_model(pickle_like)
    good = save_model(build_model("tiny", frames=3), tmp_path / "ok.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(WeightsError):
        load_model(truncated)


def test_load_rejects_foreign_safetensors(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata={"something": json.dumps(1)})
    with pytest.raises(WeightsError, match="not ERDN weights"):
        load_model(path)


def test_residual_preset_starts_as_the_identity():
    """lite adds each input to its restored frame, with zeroed last convs: a fresh model returns its input."""
    torch.manual_seed(4)
    model = build_model("lite", frames=5).eval()
    assert model.cfg.residual and not PRESETS["paper"].residual
    x = torch.rand(1, 5, 3, 16, 24)
    with torch.no_grad():
        full = model.cascade(x)
    torch.testing.assert_close(full.out, x[:, 2], atol=1e-6, rtol=0)
    torch.testing.assert_close(full.stages[1].aligned, x[:, 1:4], atol=1e-6, rtol=0)


# ---------------------------------------------------------------- reduced internal resolution (issue 29)

REDUCED = ["quarter", "half", "quarter_gated", "quarter_deep", "quarter_early", "tiny_stem"]


@pytest.mark.parametrize("name", REDUCED)
def test_reduced_resolution_presets_start_as_the_identity_at_any_size(name):
    """Frames enter pixel-unshuffled and leave pixel-shuffled with the residual: a fresh model is the identity,
    on a size off the stride (padded inside) as on one on it."""
    torch.manual_seed(5)
    model = build_model(name, frames=3).eval()
    assert model.stride == 8 * model.cfg.stem and model.cfg.stem > 1
    for h, w in [(model.stride, 2 * model.stride), (37, 50)]:
        x = torch.rand(1, 3, 3, h, w)
        with torch.no_grad():
            y = model(x)
        torch.testing.assert_close(y, x[:, 1], atol=1e-6, rtol=0)


def test_reduced_resolution_stage_learns_and_returns_full_resolution_outputs():
    """One Adam step moves a stem-2 model off the identity; every output keeps full resolution, and the stage
    refuses sizes that are multiples of the full-resolution STRIDE but not of its own."""
    torch.manual_seed(6)
    model = build_model("tiny_stem", frames=5)
    x = torch.rand(2, 5, 3, 32, 48)
    out = model.cascade(x)
    assert out.out.shape == (2, 3, 32, 48)
    for s in out.stages:
        assert s.grad.shape == (2, 3, 32, 48) and s.aligned.shape == (2, 3, 3, 32, 48)
    out.out.sub(x[:, 2] * 0.5).abs().mean().backward()
    torch.optim.Adam(model.parameters(), lr=1e-2).step()
    with torch.no_grad():
        assert not torch.allclose(model.cascade(x).out, x[:, 2], atol=1e-4)
    with pytest.raises(ValueError, match="divisible by 16"):
        model.run_stage1(torch.rand(1, 3, 3, STRIDE, 2 * STRIDE))


def test_stem_1_keeps_the_official_layout():
    """The options of the reduced presets change nothing where they are off: lite's parameter names are the
    same as before they existed (its weights files load) and paper's count still matches the official code."""
    names = {n for n, _ in build_model("lite", frames=3).named_parameters()}
    assert not any("middle" in n or "norm" in n for n in names)
    assert "stage1.restore.decoder2.1.0.weight" in names  # the transposed conv's slot is unchanged
    assert PRESETS["lite"].stride == STRIDE


def test_gated_block_is_the_identity_at_init_and_normalises_per_pixel():
    from worker.model.blocks import GatedBlock, LayerNorm2d

    torch.manual_seed(7)
    x = torch.randn(2, 8, 5, 6)
    torch.testing.assert_close(GatedBlock(8)(x), x)
    ln = LayerNorm2d(8)
    expect = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (8,), eps=1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), expect, atol=1e-5, rtol=1e-5)


def test_resize_upsampling_has_no_checkerboard():
    """A resize-convolution maps a constant map to a constant map (away from the border); the transposed
    conv does not: its kernel overlaps unevenly, the cause of grid artefacts."""
    from worker.model.blocks import up_relu

    torch.manual_seed(8)
    x = torch.ones(1, 4, 8, 8)
    for mode, flat in [("resize", True), ("transpose", False)]:
        y = up_relu(4, 4, mode)[:-1](x)[..., 2:-2, 2:-2]  # without the ReLU
        spread = (y.amax(dim=(2, 3)) - y.amin(dim=(2, 3))).max()
        assert (spread < 1e-5) == flat, (mode, float(spread))


@pytest.mark.parametrize("bad", [{"stem": 3}, {"block": "nafnet"}, {"upsample": "nearest"},
                                 {"restore_middle_blocks": -1}, {"align_neighbours": 1}])
def test_reduced_options_are_checked(bad):
    from dataclasses import replace

    with pytest.raises(ValueError, match=next(iter(bad))):
        replace(PRESETS["quarter"], **bad)


def test_early_fusion_preset_has_no_alignment_and_costs_less():
    model = build_model("quarter_early", frames=3)
    names = {n for n, _ in model.named_parameters()}
    assert not any("pyramid_align" in n or "conv_first" in n for n in names)
    assert n_params(model) < n_params(build_model("quarter", frames=3))
