"""The bench's private world: a temp dir, fresh weights, the environment of every child, and the worker.

Everything lives under one temp dir (the ipc socket, the worker's runtime dir and log, the
ONNX files, the rendered frames) and goes away at the end; the worker is stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .clip import pattern_frame

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Seconds a stopping worker may take to exit: a hang guard (30 s was too short at load average 10 on 2 cores).
STOP_TIMEOUT = 180.0


def random_weights(preset: str, seed: int, path: Path, frames: int = 5) -> Path:
    """A model of ``preset`` with a ``frames`` window (3 or 5) and fixed-seed random weights, saved to ``path``.

    The initialisation zeroes the offset convolutions and the last convolution of each branch,
    so a fresh model returns its centre frame untouched and samples with zero offsets. Those get
    small random values too: the deformable convolutions then sample where offsets point, as
    trained ones do, and output differences between runtimes measure something.
    """
    import torch

    from worker.model import build_model, save_model

    torch.manual_seed(seed)
    model = build_model(preset, frames=frames)
    with torch.no_grad():
        for p in model.parameters():
            if not p.any():
                scale = 0.3 / p[0].numel() ** 0.5 if p.dim() > 1 else 0.1
                p.copy_(torch.randn_like(p) * scale)
    return save_model(model, path)


class BenchError(RuntimeError):
    """A bench step that could not run; the message says which and why."""


def child_env(root: Path, threads: int) -> dict[str, str]:
    """Environment of vspipe, the worker and the measuring children: private runtime and cache dirs,
    this checkout importable, and ``threads`` intra-op threads for any torch or OpenMP runtime (0: the
    environment's own setting, as a user has it)."""
    env = dict(os.environ)
    env.pop("ERDN_WORKER_ENDPOINT", None)
    env["XDG_RUNTIME_DIR"] = str(root / "run")
    env["XDG_CACHE_HOME"] = str(root / "cache")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)  # an autostarted worker takes its torch threads from here
    return env


@dataclass
class Bench:
    """One preset at one frame size: the weights, the clip, the worker and measurements sections share."""

    root: Path
    env: dict[str, str]
    endpoint: str
    vspipe: str
    deblur_vpy: Path
    vsmlrt_vpy: Path
    preset: str
    window: int  # the model's temporal window: 3 (one stage) or 5 (the two-stage cascade)
    width: int
    height: int
    length: int  # frames rendered through the worker
    compare_frames: int  # frames rendered by the stateless baselines (forward, vs-mlrt)
    repeats: int
    threads: int  # intra-op threads of the worker and the measuring processes (0: their defaults)
    default_threads: int  # torch's default intra-op threads here (what 0 gives)
    backend: str  # the worker's --backend (torch or onnx)
    vs_threads: int  # VapourSynth's core.num_threads (0: its default)
    batch: int  # erdn_vs.deblur's batch (requests in flight)
    device: str
    weights: Path
    onnx_dir: Path
    precision: str = "auto"  # the torch backend's: auto, fp32, fp16, bf16 (sessions, the forward, throughput)
    # Baselines measured interleaved with our own runs, so that load from other processes hits both alike:
    pair_forward: bool = False  # the full-cascade forward between the worker's frames
    pair_vsmlrt: bool = False  # vs-mlrt's frames rendered half before, half after deblur's
    official: Any = None  # the official ERDN (worker.bench.official), run beside our forward when given
    memo: dict = field(default_factory=dict)  # measurements that several sections use
    _worker: subprocess.Popen | None = None
    _frames: list[np.ndarray] | None = None

    @property
    def threads_label(self) -> str:
        if self.threads == 0:
            return f"default threads ({self.default_threads})"
        return f"{self.threads} thread{'s' if self.threads > 1 else ''}"

    @property
    def precision_label(self) -> str:
        """The precision as asked, and what the worker resolves it to on this machine: 'auto (bf16)'."""
        import torch

        from worker.backends import resolve_precision

        device = torch.device(self.device if self.device.startswith("cuda") else "cpu")
        resolved = resolve_precision(self.precision, device, self.backend)
        return self.precision if resolved == self.precision else f"{self.precision} ({resolved})"

    @property
    def measure_threads(self) -> int:
        """Intra-op threads of the baselines this process runs (the default when not pinned)."""
        return self.threads or self.default_threads

    @property
    def stages_per_window(self) -> int:
        """Stage evaluations of the full forward for one output frame: 1 (3 frames) or 4 (5 frames)."""
        return 1 if self.window == 3 else 4

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"

    def frames(self) -> list[np.ndarray]:
        if self._frames is None:
            self._frames = [pattern_frame(n, self.width, self.height) for n in range(self.length)]
        return self._frames

    def script_args(self, *, autostart: bool, length: int | None = None) -> dict[str, object]:
        return {"width": self.width, "height": self.height, "length": length or self.length,
                "weights": self.weights, "endpoint": self.endpoint, "autostart": int(autostart),
                "window": self.window, "batch": self.batch, "vs_threads": self.vs_threads,
                "onnx": self.onnx_dir / "window.onnx", "precision": self.precision}

    # ------------------------------------------------------------ the worker

    def client(self, timeout: float = 600.0):
        from erdn_vs.client import WorkerClient

        return WorkerClient(self.endpoint, autostart=False, timeout=timeout)

    def worker_pid(self) -> int | None:
        """The pid of the worker serving the endpoint, or None when none answers."""
        from erdn_vs.client import WorkerError

        try:
            with self.client(timeout=2.0) as c:
                return int(c.ping()["pid"])
        except WorkerError:
            return None

    def stats(self) -> dict:
        with self.client(timeout=10.0) as c:
            return c.stats()

    def start_worker(self) -> None:
        """Start ``python -m worker`` on the private endpoint with the bench's threads, if none serves it."""
        if self.worker_pid() is not None:
            return
        log = open(self.root / "worker.log", "ab")  # noqa: SIM115 (the child holds it)
        self._worker = subprocess.Popen(
            [sys.executable, "-m", "worker", "--endpoint", self.endpoint, "--threads", str(self.threads),  # 0: default
             "--device", self.device, "--backend", self.backend, "--idle-timeout", "1800"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=self.env)
        log.close()
        deadline = time.monotonic() + 120
        while self.worker_pid() is None:
            if self._worker.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the worker did not start; see {self.root / 'worker.log'}")
            time.sleep(0.2)

    def load_model(self) -> None:
        """Open and close a session, so the worker holds the model before a timed run."""
        with self.client() as c:
            c.open_session(frames=self.window, width=self.width, height=self.height, sample_type="float",
                           weights=str(self.weights), precision=self.precision).close()

    def fresh_worker(self) -> None:
        """A worker with the model loaded and an empty cache. The worker caches results by frame content across
        sessions, so a timed render after another render of the same frames would measure that cache instead."""
        self.stop_worker()
        self.start_worker()
        self.load_model()

    def stop_worker(self) -> None:
        """Stop whatever worker serves the endpoint (ours or an autostarted one) and wait until it is gone."""
        from erdn_vs.client import WorkerError

        pid = self.worker_pid()
        if pid is not None:
            try:
                with self.client(timeout=5.0) as c:
                    c.shutdown()
            except WorkerError:
                pass
            deadline = time.monotonic() + STOP_TIMEOUT
            while _alive(pid) and time.monotonic() < deadline:
                if self._worker is not None and self._worker.pid == pid:
                    self._worker.poll()  # reap our own child
                time.sleep(0.05)
            if _alive(pid):
                raise BenchError(f"the worker (pid {pid}) did not stop within {STOP_TIMEOUT:g} s")
        if self._worker is not None:
            if self._worker.poll() is None:
                self._worker.terminate()
            self._worker.wait(timeout=STOP_TIMEOUT)
            self._worker = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Our own exited child stays a zombie until reaped; /proc tells the two apart.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
