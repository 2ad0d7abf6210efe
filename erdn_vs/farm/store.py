"""Finished chunks on the driver's disk, so that a rerun of the same command resumes.

The directory is named by a key over everything that changes the pictures (the input file, the
model or weights file, every deblur and encoder option, the chunk plan): a rerun with the same
command finds its chunks; one with other settings starts afresh beside them. A chunk's file gets
its final name only once it holds all its frames (written to a ``.partial`` name, flushed,
counted, renamed), so whatever a rerun finds under a final name is finished.

Chunks are files of the output's own container (``chunk_suffix``), each written at its place on the
output's timeline: their timestamps are rounded once, in the output's time base, exactly as the
single render's are. (Chunks that start at 0 would be rounded within the chunk and again at its
start, and Matroska's 1 ms rounding would add up across chunks; a container with an exact time base
such as NUT keeps no colour tags.)
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ..pipeline.tools import RenderError, ffmpeg_exe
from .plan import Chunk


def chunk_suffix(output: Path) -> str:
    """The chunks' file extension: the output's container, Matroska if it names none."""
    return output.suffix.lower() or ".mkv"


def file_identity(path: str | Path) -> dict[str, Any]:
    """What names a file's contents cheaply: absolute path, size, modification time (ns)."""
    p = Path(path).resolve()
    st = p.stat()
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def run_key(identity: dict[str, Any]) -> str:
    """16 hex digits over ``identity`` (JSON, sorted keys)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def count_frames(path: str | Path) -> int:
    """Video frames in a file, counted from its packets (no decoding). Raises RenderError if ffmpeg cannot read it."""
    r = subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(path), "-map", "0:v:0",
                        "-c", "copy", "-f", "framecrc", "-"],
                       capture_output=True, timeout=600, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise RenderError(f"cannot read {path}: {r.stderr.decode(errors='replace').strip()}")
    return sum(1 for line in r.stdout.splitlines() if line and not line.startswith(b"#"))


class ChunkStore:
    """``root/key/chunk-00012.mkv``: the finished chunks of one render, ``suffix`` their container."""

    def __init__(self, root: Path, key: str, identity: dict[str, Any], suffix: str = ".mkv") -> None:
        self.root = root
        self.suffix = suffix
        self.dir = root / key
        self.dir.mkdir(parents=True, exist_ok=True)
        plan = self.dir / "settings.json"  # for people looking in: what these chunks are
        if not plan.exists():
            plan.write_text(json.dumps(identity, indent=1, sort_keys=True) + "\n")

    def path(self, chunk: Chunk) -> Path:
        return self.dir / f"{chunk.name}{self.suffix}"

    def done(self, chunk: Chunk) -> bool:
        return self.path(chunk).is_file()

    def put(self, chunk: Chunk, data: bytes) -> Path:
        """Write a chunk's encoded bytes; it counts only if it holds ``chunk.frames`` frames.

        Raises RenderError (naming the chunk) when the count differs; nothing then keeps the final name.
        """
        final = self.path(chunk)
        partial = final.with_name(f".{final.name}.partial")
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            frames = count_frames(partial)
        except RenderError as e:
            partial.unlink(missing_ok=True)
            raise RenderError(f"{chunk.describe()} came back unreadable: {e}") from None
        if frames != chunk.frames:
            partial.unlink(missing_ok=True)
            raise RenderError(f"{chunk.describe()} came back with {frames} frames instead of {chunk.frames}")
        os.replace(partial, final)
        return final

    def remove(self) -> None:
        """Delete this render's chunks (after they are joined), and ``root`` if nothing else is in it."""
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            self.root.rmdir()
        except OSError:
            pass  # other renders' chunks (other settings) stay
