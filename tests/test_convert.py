"""``erdn convert``: official ERDN checkpoints to erdn-vs weights.

The official code is not part of this repository. Its exact key names and shapes are
(tests/data/official_erdn_keys.txt); small official-style checkpoints are made here
from our tiny model through an inverse rename table written independently below.
"""

import re
from pathlib import Path

import pytest
import torch

from erdn_vs.cli import main as erdn_main
from worker.convert import ConversionError, convert_file, convert_state_dict, official_to_ours, unwrap
from worker.model import PRESETS, ERDNConfig, build_model, load_model
from worker.model.weights import read_metadata

OFFICIAL_KEYS = Path(__file__).parent / "data" / "official_erdn_keys.txt"

# ours (within a stage part) -> official, the inverse of worker.convert's table.
_STAGE_INV = {"align": "flow_net", "restore": "recons_net", "gradient": "grad_net"}
_ENC_DEC_INV = [
    (r"in_block\.(.+)", r"inBlock.\1"),
    (r"encoder1\.(.+)", r"encoder_first.\1"),
    (r"encoder2\.(.+)", r"encoder_second.\1"),
    (r"decoder2\.(.+)", r"decoder_second.\1"),
    (r"decoder1\.(.+)", r"decoder_first.\1"),
    (r"out_block\.(.+)", r"outBlock.\1"),
]
_PART_INV = {
    "align": [
        (r"conv_first\.(.+)", r"conv_first.\1"),
        (r"extract\.(.+)", r"feature_extraction.\1"),
        (r"down\.(\d)\.(\d)\.(.+)", lambda m: f"conv_l{int(m[1]) + 2}_{int(m[2]) + 1}.{m[3]}"),
        (r"center_to_pyramid\.(\d)\.(.+)", lambda m: f"conv_l{int(m[1]) + 1}_t.{m[2]}"),
        (
            r"pyramid_align\.offset_erf\.(\d)\.paths\.(.+)",
            lambda m: f"pcd_align.offset_conv1.l{int(m[1]) + 1}.rfblock.{m[2]}",
        ),
        (
            r"pyramid_align\.offset_erf\.(\d)\.fuse\.(.+)",
            lambda m: f"pcd_align.offset_conv1.l{int(m[1]) + 1}.last_layer.{m[2]}",
        ),
        (r"pyramid_align\.offset_fuse\.(\d)\.(.+)", lambda m: f"pcd_align.offset_conv2.l{int(m[1]) + 1}.{m[2]}"),
        (r"pyramid_align\.dcn\.(\d)\.(.+)", lambda m: f"pcd_align.dcn_pack.l{int(m[1]) + 1}.{m[2]}"),
        (r"pyramid_align\.feat_fuse\.(\d)\.(.+)", lambda m: f"pcd_align.feat_conv.l{int(m[1]) + 1}.{m[2]}"),
        (r"pyramid_align\.cascade_offset([12])\.(.+)", r"pcd_align.cas_offset_conv\1.\2"),
        (r"pyramid_align\.cascade_dcn\.(.+)", r"pcd_align.cas_dcnpack.\1"),
        (r"reconstruct\.(.+)", r"reconstruction.\1"),
        (r"conv_last\.(.+)", r"conv_last.\1"),
        *((r"center\." + a, "center_net." + b) for a, b in _ENC_DEC_INV),
    ],
    "restore": _ENC_DEC_INV,
    "gradient": [
        (r"in_layer\.0\.0\.(.+)", r"in_layer.0.\1"),
        (r"in_layer\.(\d+)\.(.+)", lambda m: f"in_layer.{int(m[1]) + 1}.{m[2]}"),
        (r"in_block\.(.+)", r"inBlock.\1"),
        (r"down1\.(.+)", r"down_first.\1"),
        (r"down2\.(.+)", r"down_second.\1"),
        (r"encoder1\.(.+)", r"encoder_first.\1"),
        (r"encoder2\.(.+)", r"encoder_second.\1"),
        (r"decoder2\.(.+)", r"decoder_second.\1"),
        (r"up2\.(.+)", r"decoder_second_up.\1"),
        (r"decoder1\.(.+)", r"decoder_first.\1"),
        (r"up1\.(.+)", r"decoder_first_up.\1"),
        (r"out_block\.(.+)", r"outBlock.\1"),
        (r"to_gradient\.(.+)", r"recons_output.\1"),
        (r"sft_scale\.(.+)", r"condition_scale.\1"),
        (r"sft_shift\.(.+)", r"condition_shift.\1"),
    ],
}


def ours_to_official(key: str) -> str:
    stage, part, rest = key.split(".", 2)
    top = _STAGE_INV[part] + ("_new" if stage == "stage2" else "")
    for pattern, repl in _PART_INV[part]:
        m = re.fullmatch(pattern, rest)
        if m:
            return f"{top}." + (repl(m) if callable(repl) else m.expand(repl))
    raise AssertionError(f"no inverse rule for {key}")


def official_state_dict(model) -> dict[str, torch.Tensor]:
    """What the official ERDN's state_dict() would hold for ``model``'s weights."""
    state = {ours_to_official(k): v.clone() for k, v in model.state_dict().items()}
    f = model.cfg.align_feat
    for top in ("flow_net", "flow_net_new") if model.frames == 5 else ("flow_net",):
        for i in (1, 2):  # registered but unused by the official forward
            state[f"{top}.conv_l4_c_{i}.weight"] = torch.randn(f, f, 3, 3)
            state[f"{top}.conv_l4_c_{i}.bias"] = torch.randn(f)
    state["get_grad.weight_h"] = torch.tensor([[0.0, 0, 0], [-1, 0, 1], [0, 0, 0]]).view(1, 1, 3, 3)
    state["get_grad.weight_v"] = torch.tensor([[0.0, -1, 0], [0, 0, 0], [0, 1, 0]]).view(1, 1, 3, 3)
    return state


def random_tiny(frames: int, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("tiny", frames=frames)
    with torch.no_grad():
        for p in model.parameters():  # every weight distinct, offsets included
            p.copy_(torch.randn_like(p) * 0.1)
    return model.eval()


def assert_same_weights(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def read_official_keys() -> dict[str, tuple[int, ...]]:
    keys = {}
    for line in OFFICIAL_KEYS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape = line.split()
            keys[name] = tuple(int(s) for s in shape.split(","))
    return keys


def test_every_official_paper_key_maps_onto_the_paper_model():
    official = read_official_keys()
    with torch.device("meta"):
        ours = build_model("paper", frames=5).state_dict()
    mapped = {}
    dropped = []
    for key, shape in official.items():
        new = official_to_ours(key)
        if new is None:
            dropped.append(key)
            continue
        assert new not in mapped, f"{key} and {mapped[new][0]} both map to {new}"
        mapped[new] = (key, shape)
    assert sorted(dropped) == sorted(
        [f"{top}.conv_l4_c_{i}.{p}" for top in ("flow_net", "flow_net_new") for i in (1, 2) for p in ("weight", "bias")]
        + ["get_grad.weight_h", "get_grad.weight_v"]
    )
    assert mapped.keys() == ours.keys()
    for new, (key, shape) in mapped.items():
        assert tuple(ours[new].shape) == shape, (key, new)
    # Parameter counts: the official module = ours + the dropped tensors.
    official_total = sum(torch.Size(s).numel() for s in official.values())
    ours_total = sum(v.numel() for v in ours.values())
    assert official_total == 46_195_738
    assert official_total == ours_total + 2 * 2 * (64 * 64 * 9 + 64) + 2 * 9


def test_inverse_table_agrees_with_the_official_key_list():
    """The test's own inverse table is right: paper keys go back to the real official names."""
    official = read_official_keys()
    with torch.device("meta"):
        ours = build_model("paper", frames=5).state_dict()
    assert {ours_to_official(k) for k in ours} == {k for k in official if official_to_ours(k) is not None}


@pytest.mark.parametrize("frames", [3, 5])
def test_conversion_restores_the_model_exactly(frames):
    model = random_tiny(frames)
    converted = convert_state_dict(official_state_dict(model))
    assert converted.frames == frames and converted.preset == "tiny"
    assert_same_weights(model, converted)
    x = torch.rand(1, frames, 3, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model(x), atol=0, rtol=0)


def test_frames3_from_a_two_stage_checkpoint():
    """Official 'single' phase training still saves the (untrained) second stage."""
    model = random_tiny(5)
    converted = convert_state_dict(official_state_dict(model), frames=3)
    assert converted.frames == 3 and converted.stage2 is None
    assert_same_weights(model.stage1, converted.stage1)
    stage1_only = {k: v for k, v in official_state_dict(model).items() if "_new." not in k}
    with pytest.raises(ConversionError, match="second stage"):
        convert_state_dict(stage1_only, frames=5)


def test_custom_widths_give_a_custom_config():
    cfg = ERDNConfig(**{**PRESETS["tiny"].to_dict(), "extract_blocks": 2, "restore_feat": 6, "gradient_blocks": 2})
    torch.manual_seed(4)
    model = build_model(cfg, frames=3)
    converted = convert_state_dict(official_state_dict(model))
    assert converted.cfg == cfg and converted.preset == "custom"
    assert_same_weights(model, converted)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"module." + k: v for k, v in s.items()},
        lambda s: {"state_dict": s, "epoch": 12},
        lambda s: {"state_dict": {"module." + k: v for k, v in s.items()}},
        lambda s: {"params": s},
    ],
    ids=["plain", "module-prefix", "state_dict", "state_dict+module", "params"],
)
def test_wrapped_checkpoints_convert_through_files(tmp_path, wrap):
    model = random_tiny(5, seed=1)
    src = tmp_path / "ERDN_official.pth"
    torch.save(wrap(official_state_dict(model)), src)
    out = convert_file(src, tmp_path / "w.safetensors")
    loaded = load_model(out)
    assert_same_weights(model, loaded)
    meta = read_metadata(out)
    assert meta["frames"] == 5 and meta["preset"] == "tiny"
    assert meta["metadata"]["source"] == "official ERDN checkpoint"
    assert meta["metadata"]["original"] == "ERDN_official.pth"


def test_missing_key_is_named():
    state = official_state_dict(random_tiny(5))
    del state["grad_net_new.recons_output.weight"]
    with pytest.raises(ConversionError, match=r"missing.*stage2\.gradient\.to_gradient\.weight"):
        convert_state_dict(state)


def test_misshaped_key_is_named():
    state = official_state_dict(random_tiny(3))
    state["recons_net.outBlock.0.conv1.weight"] = torch.zeros(4, 4, 5, 5)
    with pytest.raises(
        ConversionError, match=r"recons_net\.outBlock\.0\.conv1\.weight.*\(4, 4, 5, 5\).*\(4, 4, 3, 3\)"
    ):
        convert_state_dict(state)


def test_unexpected_keys_are_refused():
    state = official_state_dict(random_tiny(3))
    state["flow_net.something_new.weight"] = torch.zeros(1)
    with pytest.raises(ConversionError, match=r"unexpected key 'flow_net\.something_new\.weight'"):
        convert_state_dict(state)
    state = official_state_dict(random_tiny(3))
    state["get_grad.weight_h"] = torch.ones(1, 1, 3, 3)
    with pytest.raises(ConversionError, match="get_grad.weight_h"):
        convert_state_dict(state)


def test_unwrap_refuses_non_state_dicts():
    with pytest.raises(ConversionError, match="no state_dict"):
        unwrap([1, 2, 3])
    with pytest.raises(ConversionError, match="non-tensor"):
        unwrap({"a.weight": torch.zeros(1), "epoch": 3})


def test_cli_converts_and_reports_errors(tmp_path, capsys):
    src = tmp_path / "official.pth"
    torch.save({"state_dict": official_state_dict(random_tiny(3, seed=2))}, src)
    out = tmp_path / "converted.safetensors"
    assert erdn_main(["convert", str(src), str(out)]) == 0
    assert "frames=3" in capsys.readouterr().out
    assert load_model(out).frames == 3

    # A pickle with arbitrary objects is refused by weights_only loading: one clear line, no traceback.
    evil = tmp_path / "objects.pth"
    torch.save({"state_dict": official_state_dict(random_tiny(3)), "extra": Path("x")}, evil)
    assert erdn_main(["convert", str(evil), str(tmp_path / "no.safetensors")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("erdn convert: ") and "weights_only" in err and "Traceback" not in err
    assert not (tmp_path / "no.safetensors").exists()

    assert erdn_main(["convert", str(tmp_path / "absent.pth"), str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------- wrappers training code adds


def as_module(state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """An nn.Module whose state_dict() is ``state``, so that real wrappers (AveragedModel,
    DataParallel, torch.compile) can be put around the official network's keys."""
    root = torch.nn.Module()
    for key, tensor in state.items():
        *path, name = key.split(".")
        module = root
        for part in path:
            if part not in module._modules:
                module.add_module(part, torch.nn.Module())
            module = module._modules[part]
        module.register_parameter(name, torch.nn.Parameter(tensor.clone(), requires_grad=False))
    return root


WRAPPERS = {  # name -> (wrap the official module, what the message must say was stripped)
    "AveragedModel": (lambda m: torch.optim.swa_utils.AveragedModel(m).state_dict(), ["n_averaged", "'module.'"]),
    "DataParallel": (lambda m: torch.nn.DataParallel(m).state_dict(), ["'module.'"]),
    "torch.compile": (lambda m: torch.compile(m).state_dict(), ["'_orig_mod.'"]),
    "AveragedModel(torch.compile)": (
        lambda m: torch.optim.swa_utils.AveragedModel(torch.compile(m)).state_dict(),
        ["n_averaged", "'module.'", "'_orig_mod.'"],
    ),
    "DataParallel in a state_dict entry": (
        lambda m: {"state_dict": torch.nn.DataParallel(m).state_dict(), "epoch": 3, "optimizer": {"lr": [1e-4]}},
        ["'state_dict'", "'module.'"],
    ),
}


@pytest.mark.parametrize("name", sorted(WRAPPERS))
def test_wrappers_of_real_training_code_are_stripped_and_named(tmp_path, capsys, name):
    """An EMA checkpoint (AveragedModel: 'module.' keys plus n_averaged) and the like convert, and say how."""
    model = random_tiny(5, seed=4)
    wrap, said = WRAPPERS[name]
    src = tmp_path / "ema.pth"
    torch.save(wrap(as_module(official_state_dict(model))), src)
    out = tmp_path / "w.safetensors"
    assert erdn_main(["convert", str(src), str(out)]) == 0
    assert_same_weights(model, load_model(out))
    printed = capsys.readouterr().out
    assert all(s in printed for s in said), printed
    assert read_metadata(out)["metadata"]["unwrapped"]


def test_ema_weights_are_taken_before_the_raw_ones_and_key_picks_another(tmp_path, capsys):
    raw, ema = random_tiny(3, seed=5), random_tiny(3, seed=6)
    for entries in ({"params": "raw", "params_ema": "ema"}, {"state_dict": "raw", "state_dict_ema": "ema"}):
        src = tmp_path / "two.pth"
        torch.save({k: official_state_dict(raw if v == "raw" else ema) for k, v in entries.items()}, src)
        ema_entry, raw_entry = (k for k, v in sorted(entries.items(), key=lambda kv: kv[1] != "ema"))
        assert erdn_main(["convert", str(src), str(tmp_path / "e.safetensors")]) == 0
        assert_same_weights(ema, load_model(tmp_path / "e.safetensors"))
        printed = capsys.readouterr().out
        assert f"'{ema_entry}'" in printed and f"--key {raw_entry}" in printed
        assert erdn_main(["convert", str(src), str(tmp_path / "r.safetensors"), "--key", raw_entry]) == 0
        assert_same_weights(raw, load_model(tmp_path / "r.safetensors"))
    assert erdn_main(["convert", str(src), str(tmp_path / "x.safetensors"), "--key", "nope"]) == 1
    assert "no entry 'nope'" in capsys.readouterr().err


def test_an_ema_wrappers_averaged_copy_is_taken(tmp_path, capsys):
    """EMA modules that hold the averaged copy as ``self.ema_model`` beside the live model and counters."""
    live, ema = random_tiny(3, seed=7), random_tiny(3, seed=8)
    state = {"ema_model." + k: v for k, v in official_state_dict(ema).items()}
    state |= {"online_model." + k: v for k, v in official_state_dict(live).items()}
    state |= {"step": torch.tensor(1000), "initted": torch.tensor(True)}
    torch.save(state, tmp_path / "e.pth")
    assert erdn_main(["convert", str(tmp_path / "e.pth"), str(tmp_path / "e.safetensors")]) == 0
    assert_same_weights(ema, load_model(tmp_path / "e.safetensors"))
    assert "'ema_model.'" in capsys.readouterr().out


def test_an_unknown_prefix_is_named_with_the_key_it_hides(tmp_path, capsys):
    state = {"wrapper." + k: v for k, v in official_state_dict(random_tiny(3)).items()}
    torch.save(state, tmp_path / "p.pth")
    assert erdn_main(["convert", str(tmp_path / "p.pth"), str(tmp_path / "p.safetensors")]) == 1
    err = capsys.readouterr().err
    assert "'wrapper.'" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
