"""Open file descriptors and resident memory of a render's processes, sampled from /proc (Linux).

A render is vspipe (the VapourSynth side, where the worker client lives), the worker, and with
``erdn deblur`` ffmpeg. ``Watch`` finds them among the descendants of some root processes (or by
pid), samples ``/proc/PID/fd`` and ``VmRSS`` every ``interval`` seconds in a thread, together with a
frame count, and answers two questions: the peaks (``peaks``), and whether each process stayed flat
after a warm-up (``growth``). ``benchmarks/long_run.py`` and ``tests/test_soak.py`` use it.
"""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROLES = ("vspipe", "ffmpeg", "worker")


@dataclass(frozen=True)
class Usage:
    """One process at one moment: open file descriptors and resident memory (KiB)."""

    fds: int
    rss_kib: int


def usage(pid: int) -> Usage | None:
    """``pid``'s open fds and VmRSS, or None when it is gone (or a zombie, which has no VmRSS)."""
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return Usage(fds, int(line.split()[1]))
    except OSError:
        pass
    return None


def _parents() -> dict[int, int]:
    """pid -> parent pid, for every process in /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        out[int(entry)] = int(stat.rpartition(")")[2].split()[1])
    return out


def descendants(roots: list[int]) -> list[int]:
    """Every living process below ``roots`` (not the roots themselves)."""
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def role(pid: int) -> str | None:
    """'vspipe' (the binary, not its Python wrapper), 'ffmpeg', 'worker' (``python -m worker`` serving), or None."""
    try:
        exe = Path(os.readlink(f"/proc/{pid}/exe")).name
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if exe == "vspipe":
        return "vspipe"
    if exe.startswith("ffmpeg"):
        return "ffmpeg"
    if b"worker" in argv and b"-m" in argv and b"--endpoint" in argv and b"status" not in argv:
        return "worker"
    return None


def endpoint_of(pid: int) -> str | None:
    """The ``--endpoint`` a worker process was started with."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return None
    return argv[argv.index("--endpoint") + 1] if "--endpoint" in argv[:-1] else None


@dataclass
class Sample:
    t: float  # seconds since the watch started
    frames: int  # the progress callback's frame count
    procs: dict[int, tuple[str, Usage]] = field(default_factory=dict)  # pid -> (role, usage)


@dataclass(frozen=True)
class Growth:
    """How much one process grew after its warm-up: ``fds``/``rss_kib`` at the warm-up sample, the largest
    increase over them after it, and over how many frames (``frames``) and samples that was seen."""

    pid: int
    role: str
    fds: int
    rss_kib: int
    fd_growth: int
    rss_growth_kib: int
    frames: int
    samples: int

    def describe(self) -> str:
        return (f"{self.role} pid {self.pid}: {self.fds} fds, {self.rss_kib / 1024:.1f} MiB after warm-up; over the "
                f"next {self.frames} frames ({self.samples} samples) at most +{self.fd_growth} fds, "
                f"+{self.rss_growth_kib / 1024:.1f} MiB")


class Watch:
    """Samples the processes of a render every ``interval`` seconds until ``stop``.

    ``find``: the pids to watch now, as {pid: role} (``tree`` finds them below root pids).
    ``progress``: frames rendered so far, or None when not known yet.
    ``nofile``: lower each watched process's open-file limit to this as soon as it is seen (``prlimit``),
    so that a leak fails fast even where the process was started by someone else (a Ray actor).
    """

    def __init__(self, find: Callable[[], dict[int, str]], progress: Callable[[], int | None],
                 interval: float = 0.25, nofile: int | None = None) -> None:
        self._find = find
        self._progress = progress
        self.interval = interval
        self.nofile = nofile
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self.limits: dict[int, int] = {}  # pid -> its open-file limit as read back after lowering it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="proc-watch", daemon=True)
        self._t0 = time.monotonic()

    @staticmethod
    def tree(roots: Callable[[], list[int]], extra: Callable[[], dict[int, str]] | None = None
             ) -> Callable[[], dict[int, str]]:
        """A ``find`` for the processes with a role below ``roots()`` (and ``extra()``'s)."""
        def find() -> dict[int, str]:
            found = {pid: r for pid in descendants(roots()) if (r := role(pid)) is not None}
            return {**found, **(extra() if extra else {})}
        return find

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sample()
            except Exception as e:  # noqa: BLE001 (a sampling error is reported with the results, not lost)
                self.errors.append(f"{type(e).__name__}: {e}")
            self._stop.wait(self.interval)

    def sample(self) -> Sample | None:
        frames = self._progress()
        if frames is None:
            return None
        s = Sample(time.monotonic() - self._t0, frames)
        for pid, r in self._find().items():
            if self.nofile is not None and pid not in self.limits:
                try:
                    hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)[1]
                    soft = self.nofile if hard == resource.RLIM_INFINITY else min(self.nofile, hard)
                    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
                    self.limits[pid] = resource.prlimit(pid, resource.RLIMIT_NOFILE)[0]
                except OSError:  # gone already
                    self.limits[pid] = -1
            u = usage(pid)
            if u is not None:
                s.procs[pid] = (r, u)
        self.samples.append(s)
        return s

    def peaks(self) -> dict[str, Usage]:
        """Per role, the most fds and the most resident memory any of its processes had (not always at once)."""
        out: dict[str, Usage] = {}
        for s in self.samples:
            for r, u in s.procs.values():
                p = out.get(r, Usage(0, 0))
                out[r] = Usage(max(p.fds, u.fds), max(p.rss_kib, u.rss_kib))
        return out

    def growth(self, warmup_frames: int) -> list[Growth]:
        """For each process: its usage at the first sample ``warmup_frames`` frames after it was first seen,
        and the largest increase over that in the samples after. A process that never got that far is left out."""
        first_seen: dict[int, int] = {}
        base: dict[int, tuple[str, Usage, int]] = {}
        worst: dict[int, tuple[int, int, int, int]] = {}  # pid -> (fd growth, rss growth, last frames, samples)
        for s in self.samples:
            for pid, (r, u) in s.procs.items():
                first_seen.setdefault(pid, s.frames)
                if pid not in base:
                    if s.frames >= first_seen[pid] + warmup_frames:
                        base[pid] = (r, u, s.frames)
                        worst[pid] = (0, 0, s.frames, 0)
                    continue
                fd, rss, _, n = worst[pid]
                b = base[pid][1]
                worst[pid] = (max(fd, u.fds - b.fds), max(rss, u.rss_kib - b.rss_kib), s.frames, n + 1)
        return [Growth(pid, r, u.fds, u.rss_kib, worst[pid][0], worst[pid][1], worst[pid][2] - at, worst[pid][3])
                for pid, (r, u, at) in base.items()]
