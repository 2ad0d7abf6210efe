"""training.split_checkpoint: a checkpoint split into files under 16 MiB, joined back tensor for tensor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from training.checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint
from training.split_checkpoint import join_checkpoint, main, split_checkpoint
from worker.model import build_model, load_model

RETURN_LIMIT = 16 * 2**20  # the most a lent GPU machine sends back per file


def training_checkpoint(path: Path, preset: str, ema: bool) -> Path:
    """A checkpoint shaped as erdn train writes it: weights, Adam after a step, EMA, RNG and counters."""
    torch.manual_seed(0)
    model = build_model(preset, 5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    opt.step()
    state = {"model": {k: v.clone() for k, v in model.state_dict().items()}, "optimizer": opt.state_dict(),
             "rng": rng_state(), "iteration": 1200, "best_psnr": 30.5, "best_iteration": 1100, "preset": preset,
             "frames": 5, "train_seconds": 99.5}
    if ema:
        averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.999), use_buffers=True)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)
        averaged.update_parameters(model)  # the first update copies; the second averages
        averaged.update_parameters(model)
        state["ema"] = averaged.state_dict()
    return save_checkpoint(state, path)


def assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


@pytest.mark.parametrize("ema", [False, True], ids=["plain", "ema"])
def test_split_then_join_gives_back_the_same_checkpoint(tmp_path: Path, ema: bool) -> None:
    ckpt = training_checkpoint(tmp_path / "last.ckpt", "tiny", ema)
    files = split_checkpoint(ckpt, tmp_path / "out" / "train_it1200")
    names = sorted(p.name for p in files)
    assert names == sorted(["train_it1200.model.safetensors", "train_it1200.state.ckpt"]
                           + (["train_it1200.ema.safetensors"] if ema else []))
    # each weights file is ERDN weights as they are: the EMA copy is the averaged network, not the raw one
    original = load_checkpoint(ckpt)
    model = load_model(tmp_path / "out" / "train_it1200.model.safetensors")
    assert model.metadata["iterations"] == 1200
    assert all(torch.equal(t, original["model"][k]) for k, t in model.state_dict().items())
    if ema:
        averaged = load_model(tmp_path / "out" / "train_it1200.ema.safetensors").state_dict()
        assert all(torch.equal(t, original["ema"]["module." + k]) for k, t in averaged.items())
        assert not all(torch.equal(t, original["model"][k]) for k, t in averaged.items())
    joined = join_checkpoint(tmp_path / "out" / "train_it1200", tmp_path / "run" / "last.ckpt")
    assert_same(load_checkpoint(joined), original)


def test_a_lite_checkpoint_with_ema_comes_back_in_files_under_16_mib(tmp_path: Path) -> None:
    ckpt = training_checkpoint(tmp_path / "last.ckpt", "lite", ema=True)
    assert ckpt.stat().st_size > RETURN_LIMIT  # why it is split at all
    files = split_checkpoint(ckpt, tmp_path / "it1")
    assert len(files) == 3
    assert all(p.stat().st_size < RETURN_LIMIT for p in files), [(p.name, p.stat().st_size) for p in files]


def test_join_refuses_missing_or_mixed_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = training_checkpoint(tmp_path / "last.ckpt", "tiny", ema=False)
    split_checkpoint(ckpt, tmp_path / "a")
    other = training_checkpoint(tmp_path / "other.ckpt", "tiny", ema=False)
    with torch.no_grad():  # another run's weights under the same name
        state = load_checkpoint(other)
        state["model"] = {k: v + 1 for k, v in state["model"].items()}
        save_checkpoint(state, other)
    split_checkpoint(other, tmp_path / "b")
    (tmp_path / "b.model.safetensors").replace(tmp_path / "a.model.safetensors")
    with pytest.raises(CheckpointError, match="not the weights file this state was split with"):
        join_checkpoint(tmp_path / "a", tmp_path / "x.ckpt")
    (tmp_path / "a.model.safetensors").unlink()
    assert main(["join", str(tmp_path / "a"), str(tmp_path / "x.ckpt")]) == 2
    assert "a.model.safetensors is missing" in capsys.readouterr().err
    assert main(["join", str(tmp_path / "nope"), str(tmp_path / "x.ckpt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x.ckpt").exists()
