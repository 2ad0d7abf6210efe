"""Training checkpoints: written atomically, checksummed, read without unpickling.

A checkpoint file is ``MAGIC`` + the SHA-256 of the payload (32 bytes) + the payload,
which is ``torch.save`` of a dict holding only tensors, numbers, strings, lists and
dicts, so ``torch.load(weights_only=True)`` reads it. A truncated or corrupt file fails
the checksum and is reported, never half-loaded.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import torch

MAGIC = b"ERDN-CKPT-1\n"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.partial")  # unique: never another writer's file
    with open(tmp, "wb") as f:
        f.write(MAGIC)
        f.write(hashlib.sha256(payload).digest())
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``, verifying its checksum."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    data = path.read_bytes()
    if not data.startswith(MAGIC):
        raise CheckpointError(
            f"{path} is not an erdn training checkpoint (bad header); it may be truncated or another file"
        )
    digest, payload = data[len(MAGIC) : len(MAGIC) + 32], data[len(MAGIC) + 32 :]
    if len(digest) != 32 or hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"{path} is damaged (checksum mismatch: truncated or corrupt); {_fallback(path)}")
    return torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")


def _fallback(path: Path) -> str:
    """What the user can do about a damaged ``path``, from what really lies beside it."""
    earlier = sorted((p for p in path.parent.glob("it*.ckpt") if p != path and p.stem[2:].isdigit()),
                     key=lambda p: int(p.stem[2:]))
    if earlier:
        return (f"the latest earlier checkpoint beside it is {earlier[-1].name}: copy it to {path.name} to resume "
                "from there, or start the run afresh with --restart")
    return f"there is no earlier checkpoint in {path.parent}: start the run afresh with --restart"


def compact_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` as a kept copy small enough for git and a lent GPU's 64 MiB: weights and EMA in bfloat16, and
    no optimizer moments (marked ``"compact": True``).

    A 7M-parameter run's checkpoint is 115 MB in full and 29 MB compact. Resuming casts the weights back to
    fp32 (a 2^-9 relative rounding, about a tenth of one Adam step at lr 1e-3) and restarts Adam's moments
    under a short warm-up of the rate (``erdn train`` does both).
    """
    optimizer = dict(state["optimizer"], state={})
    return dict(_floats_to_bf16({k: v for k, v in state.items() if k != "optimizer"}), optimizer=optimizer,
                compact=True)


def _floats_to_bf16(state: Any) -> Any:
    if isinstance(state, torch.Tensor):
        return state.to(torch.bfloat16) if state.is_floating_point() else state
    if isinstance(state, dict):
        return {k: _floats_to_bf16(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_floats_to_bf16(v) for v in state)
    return state


def rng_state() -> dict[str, Any]:
    """Torch's CPU (and CUDA) generator states as tensors."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
