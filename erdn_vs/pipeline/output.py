"""The output file of a render: checked before anything starts, written under a partial name, renamed at the end."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from ..pidlock import LockHeld, hold_pid_lock
from .tools import RenderError


def check_paths(input_path: Path, output: Path) -> None:
    if not input_path.is_file():
        raise RenderError(f"cannot read input {input_path}: no such file")
    if not os.access(input_path, os.R_OK):
        raise RenderError(f"cannot read input {input_path}: permission denied")
    parent = output.resolve().parent
    if not parent.is_dir():
        raise RenderError(f"cannot write {output}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise RenderError(f"cannot write {output}: directory {parent} is not writable")
    if output.resolve() == input_path.resolve():
        raise RenderError("the output must not overwrite the input")


class Claim:
    """The right to write ``output``, held from the start of a render to its end (a context manager).

    - A lock file beside the output (``.NAME.lock``, holding the owner's pid) is locked with ``flock``: a
      second render to the same output is refused at once with one line naming the first one's pid, so
      two runs never write one file (the lock goes with the process, even when it is killed).
    - ffmpeg writes to ``partial``, a hidden name unique to this run in the output's directory (same
      filesystem: the final rename is atomic); ``commit`` renames it to ``output``.
    - Leaving with an exception (an error, Ctrl-C, a signal) removes the partial file.
    """

    def __init__(self, output: Path) -> None:
        self.output = output
        self.lock_path = output.with_name(f".{output.name}.lock")
        self.partial = output.with_name(f".{output.stem}.{os.getpid()}-{secrets.token_hex(3)}.partial{output.suffix}")
        self._fd: int | None = None

    def __enter__(self) -> Claim:
        while True:
            try:
                fd = hold_pid_lock(self.lock_path)
            except LockHeld as held:
                raise RenderError(f"another erdn deblur (pid {held.pid}) is writing {self.output}: wait until it "
                                  "ends, or pass another -o") from None
            try:  # the previous owner may have removed the file between our open and our lock: lock the new one
                same = os.stat(self.lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._fd = fd
        return self

    def commit(self) -> None:
        """Give the finished partial file the output's name (replacing an older file of that name)."""
        os.replace(self.partial, self.output)

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is not None:
            self.partial.unlink(missing_ok=True)
        if self._fd is not None:
            self.lock_path.unlink(missing_ok=True)  # while still locked: a waiting run then makes a new one
            os.close(self._fd)
            self._fd = None
