"""One trainer per run directory, and a damaged checkpoint's message names what really exists (issue 30, 15)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import REPO, worker_env

from erdn_vs.manifest import load_manifest
from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.train import claim_run_dir


def test_a_second_trainer_on_one_run_dir_is_refused_naming_the_first(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from training.train import claim_run_dir; "
         f"f = claim_run_dir(Path({str(tmp_path)!r})); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=REPO, env=worker_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CheckpointError) as e:
            claim_run_dir(tmp_path)
        assert str(e.value) == (f"another erdn train (pid {holder.pid}) is training in {tmp_path}; wait for it to "
                                "end, stop it, or give this run its own directory (--set run_dir=DIR)")
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    os.close(claim_run_dir(tmp_path))  # the lock went with the killed process


def test_a_damaged_checkpoint_names_the_earlier_one_or_says_there_is_none(tmp_path):
    last = save_checkpoint({"iteration": 300}, tmp_path / "last.ckpt")
    last.write_bytes(last.read_bytes()[:-10])  # truncated
    with pytest.raises(CheckpointError, match=r"no earlier checkpoint in .*: start the run afresh with --restart"):
        load_checkpoint(last)
    for it in (100, 200):
        save_checkpoint({"iteration": it}, tmp_path / f"it{it}.ckpt")
    with pytest.raises(CheckpointError, match=r"the latest earlier checkpoint beside it is it200\.ckpt: copy it to "
                                              r"last\.ckpt to resume from there"):
        load_checkpoint(last)


def erdn(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "erdn_vs.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=worker_env(), stdin=subprocess.DEVNULL)


@pytest.mark.slow  # imports torch in fresh processes
def test_frames_smaller_than_the_crop_are_one_line_before_training(tmp_path):
    data = tmp_path / "data"
    assert erdn("synth", str(data), "--clips", "1", "--test-clips", "0", "--frames", "6", "--size", "32x32",
                "--subframes", "3").returncode == 0
    r = erdn("train", "finetune", "--set", f"data.root={data}", f"run_dir={tmp_path / 'run'}", "data.crop=64",
             cwd=tmp_path)  # a shipped config by name, from outside the checkout
    assert r.returncode == 2
    assert r.stderr.strip() == ("erdn train: video clip_0000 has 32x32 frames, smaller than data.crop 64: lower the "
                                "crop (--set data.crop=32 fits every video) or give bigger frames")
    assert not (tmp_path / "run" / "last.ckpt").exists()


def test_shipped_configs_are_listed_and_found_by_name_from_anywhere(tmp_path):
    from training.config import ConfigError, load_config

    assert load_config("paper").name == load_config(REPO / "training" / "configs" / "paper.yaml").name
    assert load_config("paper.yaml").model.preset == "paper"
    with pytest.raises(ConfigError, match=r"config nope does not exist, here or among the shipped configs \(.*paper"):
        load_config("nope")
    r = erdn("train", "--list-configs", cwd=tmp_path)
    assert r.returncode == 0 and any(line.startswith("paper ") for line in r.stdout.splitlines())


def test_a_moved_run_dir_takes_every_output_of_the_run(tmp_path, capsys):
    from training.config import load_config
    from training.train import own_run_dir

    overrides = {"run_dir": str(tmp_path / "mine")}
    cfg = own_run_dir(load_config("lite_synth", overrides), overrides)
    assert cfg.run_dir == str(tmp_path / "mine") and cfg.weights_out == "" and cfg.checkpoint_copy == ""
    assert "this run does not write the config's weights_out (runs/lite_synth/" in capsys.readouterr().err
    overrides["weights_out"] = str(tmp_path / "w.safetensors")
    assert own_run_dir(load_config("lite_synth", overrides), overrides).weights_out == overrides["weights_out"]


@pytest.mark.slow  # imports torch in fresh processes
def test_model_names_are_taken_where_weights_paths_are(tmp_path):
    import torch

    from training.train import init_from
    from worker.model import build_model, load_model

    entry = load_manifest().models[0]
    model = build_model(entry.preset, entry.frames)
    init_from(model, entry.name)  # model.init_from: NAME
    shipped = load_model(entry.path, device="cpu")
    for (k, a), b in zip(model.state_dict().items(), shipped.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    data = tmp_path / "data"
    assert erdn("synth", str(data), "--clips", "1", "--test-clips", "1", "--frames", "5", "--size", "64x64",
                "--subframes", "3").returncode == 0
    r = erdn("eval", entry.name, str(data), "--max-windows", "1", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "PSNR" in r.stdout + r.stderr


@pytest.mark.slow  # imports torch in fresh processes
def test_the_finetune_recipe_runs_from_the_default_model(tmp_path):
    """docs/finetune.md's steps, cut to 2 iterations: the shipped `finetune` config by name, from outside the
    checkout, starts from the default model's weights."""
    data = tmp_path / "mine"
    assert erdn("synth", str(data), "--clips", "1", "--val-clips", "1", "--test-clips", "0", "--frames", "6",
                "--size", "96x96", "--subframes", "3").returncode == 0
    r = erdn("train", "finetune", "--set", f"data.root={data}", f"run_dir={tmp_path / 'ft'}", "iterations=2",
             "val_every=2", "checkpoint_every=2", "data.val_windows=1", "data.crop=64", "batch=1", "threads=1",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"started from the weights of {load_manifest().models[0].name}" in r.stderr
    assert (tmp_path / "ft" / "best.safetensors").is_file()
