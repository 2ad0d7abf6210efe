"""``erdn train CONFIG --set KEY=VALUE ...``: dotted overrides of a config, several per flag."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from training.config import ConfigError, load_config
from training.train import main


def write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def test_dotted_overrides_reach_top_level_and_sections(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "c.yaml", {"batch": 2, "data": {"crop": 96}, "optimizer": None}),
                      {"batch": 16, "data.crop": 192, "optimizer.lr": 2e-4, "loss.align": 0.5})
    assert (cfg.batch, cfg.data.crop, cfg.optimizer.lr, cfg.loss.align) == (16, 192, 2e-4, 0.5)


def test_override_through_a_value_is_one_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", {"batch": 2})
    with pytest.raises(ConfigError, match="override batch.size: batch is a value, not a section"):
        load_config(path, {"batch.size": 4})
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(path, {"data.crops": 4})


def test_several_overrides_after_one_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "c.yaml", {"batch": 2, "data": {"crop": 96}})
    assert main([str(path), "--print-config", "--set", "batch=16", "data.crop=192", "--set", "amp=false"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert (printed["batch"], printed["data"]["crop"], printed["amp"]) == (16, 192, False)
    assert main([str(path), "--print-config", "--set", "batch"]) == 2
    assert "--set takes KEY=VALUE" in capsys.readouterr().err
