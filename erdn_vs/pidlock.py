"""An exclusive lock on a small file that names the process holding it.

One worker per endpoint, one trainer per run directory, one render per output file: each takes ``flock`` on
a file and writes its pid there, so the one refused can say who holds it. The kernel drops the lock when the
holder's process ends, even when it is killed, so a stale file never blocks anyone. Standard library only:
both the VapourSynth side and the worker import it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class LockHeld(Exception):
    """Another process holds the lock; ``pid`` is what it wrote there ("?" when nothing yet)."""

    def __init__(self, pid: str) -> None:
        super().__init__(pid)
        self.pid = pid


def hold_pid_lock(path: Path) -> int:
    """Lock ``path`` (created when missing) without waiting and write this process's pid into it.

    Returns the open file descriptor: the lock lasts until it is closed or the process ends.
    Raises LockHeld when another process holds it.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise LockHeld(pid) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
