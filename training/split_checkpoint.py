"""A training checkpoint as several smaller files, and back into one that ``erdn train`` resumes exactly.

A lent GPU machine returns at most 8 files of 16 MiB each, and a ``lite`` run's ``last.ckpt`` is about
22 MB (the weights and Adam's two moments), 29 MB with an EMA of the weights. Splitting writes every
copy of the network's weights in the checkpoint (``model``, and ``ema`` when the run keeps one) as
ERDN weights, usable as they are by ``erdn eval`` and ``erdn_vs.deblur(weights=...)``, and the rest
(optimizer state, RNG state, counters) as a checkpoint of its own that records each weights file's
SHA-256. Joining checks those digests and writes the original checkpoint again, tensor for tensor::

    python -m training.split_checkpoint split runs/x/last.ckpt out/it1200
        -> out/it1200.model.safetensors  out/it1200.ema.safetensors  out/it1200.state.ckpt
    python -m training.split_checkpoint join out/it1200 runs/x/last.ckpt
    erdn train CONFIG        # resumes runs/x/last.ckpt (run_dir: runs/x)

Nothing is unpickled: weights are safetensors, the state file is read with ``weights_only=True``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

STATE_SUFFIX = ".state.ckpt"
SPLIT_KEY = "split"  # in the state file: the checkpoint's key order and how each weights file was written


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _weights_prefix(value: Any, names: set[str]) -> str | None:
    """"" or "module." when ``value`` is a flat dict of tensors holding every network tensor under that
    prefix (a plain state_dict, or torch's AveragedModel, which adds "module." and ``n_averaged``); else None."""
    if not isinstance(value, dict) or not value or not all(isinstance(v, torch.Tensor) for v in value.values()):
        return None
    for prefix in ("", "module."):
        if all(prefix + n in value for n in names):
            return prefix
    return None


def split_checkpoint(ckpt: str | Path, prefix: str | Path) -> list[Path]:
    """Write ``PREFIX.<key>.safetensors`` for each copy of the weights in ``ckpt`` and ``PREFIX.state.ckpt``
    for the rest; returns the paths, state file last. Raises CheckpointError for a damaged checkpoint."""
    from worker.model import build_model, save_model

    state = load_checkpoint(ckpt)
    for key in ("model", "preset", "frames", "iteration"):
        if key not in state:
            raise CheckpointError(f"{ckpt} has no {key!r}: not an erdn training checkpoint")
    model = build_model(state["preset"], int(state["frames"]))
    names = set(model.state_dict())
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    rest: dict[str, Any] = {}
    split: dict[str, Any] = {}
    written = []
    for key, value in state.items():
        strip = _weights_prefix(value, names)
        if strip is None:
            rest[key] = value
            continue
        model.load_state_dict({n: value[strip + n] for n in names})
        path = save_model(model, prefix.with_name(f"{prefix.name}.{key}.safetensors"),
                          iterations=int(state["iteration"]), checkpoint_key=key)
        extras = {k: v for k, v in value.items() if not k.startswith(strip) or k[len(strip):] not in names}
        split[key] = {"file": path.name, "sha256": _sha256(path), "prefix": strip, "order": list(value),
                      "extras": extras}
        written.append(path)
    rest[SPLIT_KEY] = {"order": list(state), "weights": split}
    written.append(save_checkpoint(rest, prefix.with_name(prefix.name + STATE_SUFFIX)))
    return written


def join_checkpoint(prefix: str | Path, out: str | Path) -> Path:
    """Rebuild the checkpoint that ``split_checkpoint`` split into ``PREFIX.*``; write it to ``out``
    (e.g. ``RUN_DIR/last.ckpt``). Raises CheckpointError when a file is missing, damaged or from another split."""
    from worker.model import load_model
    from worker.model.weights import WeightsError

    prefix = Path(prefix)
    state = load_checkpoint(prefix.with_name(prefix.name + STATE_SUFFIX))
    split = state.pop(SPLIT_KEY, None)
    if not isinstance(split, dict):
        raise CheckpointError(f"{prefix}{STATE_SUFFIX} is a checkpoint but not the state part of a split one")
    for key, part in split["weights"].items():
        path = prefix.parent / part["file"]
        if not path.is_file():
            raise CheckpointError(f"{path} is missing: copy every {prefix.name}.* file of the split together")
        if _sha256(path) != part["sha256"]:
            raise CheckpointError(f"{path} is not the weights file this state was split with (SHA-256 differs); "
                                  f"use the files of one split, all with the prefix {prefix.name}")
        try:
            tensors = load_model(path).state_dict()
        except WeightsError as e:
            raise CheckpointError(str(e)) from None
        merged = {part["prefix"] + n: t for n, t in tensors.items()} | part["extras"]
        state[key] = {k: merged[k] for k in part["order"]}
    return save_checkpoint({k: state[k] for k in split["order"]}, out)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m training.split_checkpoint", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("split", help="CKPT PREFIX: write PREFIX.<key>.safetensors and PREFIX.state.ckpt")
    s.add_argument("ckpt")
    s.add_argument("prefix")
    j = sub.add_parser("join", help="PREFIX OUT: rebuild the checkpoint (e.g. RUN_DIR/last.ckpt)")
    j.add_argument("prefix")
    j.add_argument("out")
    a = p.parse_args(argv)
    try:
        if a.command == "split":
            for path in split_checkpoint(a.ckpt, a.prefix):
                print(f"{path}  {path.stat().st_size / 2**20:.1f} MiB")
        else:
            print(join_checkpoint(a.prefix, a.out))
    except CheckpointError as e:
        print(f"split_checkpoint: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
