"""Building, saving and loading ERDN models. Weights are safetensors: nothing is unpickled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .erdn import ERDN
from .presets import ERDNConfig, get_preset

FORMAT = "erdn-vs/1"


class WeightsError(ValueError):
    """A weights file that cannot be used; the message says why and what to do."""


def build_model(preset: str | ERDNConfig = "lite", frames: int = 5) -> ERDN:
    """A freshly initialised ERDN of a named preset (or an explicit config)."""
    if isinstance(preset, ERDNConfig):
        return ERDN(preset, frames, "custom")
    return ERDN(get_preset(preset), frames, preset)


def save_model(model: ERDN, path: str | Path, **metadata: Any) -> Path:
    """Write ``model`` as safetensors with its preset, frames and config, plus ``metadata``.

    Metadata values must be JSON-serialisable (training data, iterations, PSNR, ...).
    """
    from safetensors.torch import save_file

    path = Path(path)
    meta = {
        "format": FORMAT,
        "preset": model.preset,
        "frames": str(model.frames),
        "config": json.dumps(model.cfg.to_dict(), sort_keys=True),
        "metadata": json.dumps(metadata, sort_keys=True, default=str),
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The header of a weights file: preset, frames, config and the free-form metadata."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(
            f"{path} is not a safetensors weights file ({e}); an official ERDN .pt/.pth checkpoint "
            f"must first be converted with `erdn convert {path} OUT.safetensors`"
        ) from None
    if raw.get("format") != FORMAT:
        raise WeightsError(f"{path} is a safetensors file but not ERDN weights written by erdn-vs (no '{FORMAT}' tag)")
    try:
        return {
            "preset": raw["preset"],
            "frames": int(raw["frames"]),
            "config": ERDNConfig.from_dict(json.loads(raw["config"])),
            "metadata": json.loads(raw.get("metadata", "{}")),
        }
    except (KeyError, ValueError, TypeError) as e:
        raise WeightsError(f"{path}: damaged ERDN header ({e})") from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> ERDN:
    """Load a model saved by ``save_model``; returns it in eval mode on ``device``."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    model = ERDN(meta["config"], meta["frames"], meta["preset"])
    try:
        state = load_file(str(path), device="cpu")
    except Exception as e:  # truncated or corrupt tensor data
        raise WeightsError(f"{path}: cannot read tensors ({e}); the file is damaged") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shape = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or bad_shape:
        raise WeightsError(
            f"{path}: tensors do not match its header (missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shape {bad_shape[:3]})"
        )
    model.load_state_dict(state)
    model.metadata = meta["metadata"]
    return model.to(device).eval()
