"""Shared fixtures: an isolated per-user runtime dir, tiny weights files, real worker processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Most tests compare the worker's output with the fp32 model to 1e-5, so every worker they start computes
# precision="auto" in fp32 even on a CPU with native bf16, where users get bf16. The bf16 default itself is
# tested in test_cpu_precision.py, which removes this for its own workers.
os.environ["ERDN_CPU_PRECISION"] = "fp32"


@pytest.fixture(scope="session", autouse=True)
def isolated_runtime_dir():
    """Sockets, locks, logs and caches of this test run live in a temp dir, away from a real worker."""
    root = Path(tempfile.mkdtemp(prefix="erdn-t-", dir="/tmp"))  # short: ipc paths have a length limit
    (root / "run").mkdir(mode=0o700)
    saved = {k: os.environ.get(k) for k in ("XDG_RUNTIME_DIR", "XDG_CACHE_HOME", "ERDN_WORKER_ENDPOINT")}
    os.environ["XDG_RUNTIME_DIR"] = str(root / "run")
    os.environ["XDG_CACHE_HOME"] = str(root / "cache")
    os.environ.pop("ERDN_WORKER_ENDPOINT", None)
    yield root
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def one_torch_thread():
    """The CPU is shared: two OpenMP threads on a loaded 2-core machine run many times slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> dict[int, Path]:
    """Random-init ``tiny`` weights files for frames=5 and frames=3: {frames: path}."""
    import torch

    from worker.model import build_model, save_model

    out = tmp_path_factory.mktemp("weights")
    paths = {}
    for frames in (5, 3):
        torch.manual_seed(frames)
        paths[frames] = save_model(build_model("tiny", frames=frames), out / f"tiny{frames}.safetensors")
    return paths


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def new_endpoint(isolated: Path, name: str) -> str:
    return f"ipc://{isolated / 'run'}/{name}-{os.getpid()}-{time.monotonic_ns() % 10**6}.sock"


def spawn_worker(endpoint: str, *args: str, log: Path | None = None) -> subprocess.Popen:
    """Start ``python -m worker`` (1 torch thread) and wait until it answers ping."""
    from erdn_vs.client import WorkerClient, WorkerUnavailable

    stderr = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "worker", "--endpoint", endpoint, "--threads", "1", *args],
                            stdout=subprocess.PIPE, stderr=stderr, env=worker_env())
    deadline = time.monotonic() + 60
    with WorkerClient(endpoint, autostart=False, timeout=5) as client:
        while True:
            try:
                client.ping()
                return proc
            except WorkerUnavailable:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(f"test worker did not start (exit code {proc.poll()})") from None


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout:
        proc.stdout.close()


@pytest.fixture
def start_worker(isolated_runtime_dir):
    """Factory: ``start_worker(*args) -> (endpoint, proc)``; every worker is stopped after the test."""
    procs = []

    def start(*args: str, log: Path | None = None) -> tuple[str, subprocess.Popen]:
        endpoint = new_endpoint(isolated_runtime_dir, "w")
        proc = spawn_worker(endpoint, *args, log=log)
        procs.append(proc)
        return endpoint, proc

    yield start
    for proc in procs:
        stop_worker(proc)


@pytest.fixture(scope="module")
def worker_endpoint(isolated_runtime_dir):
    """One real worker process shared by a test module."""
    endpoint = new_endpoint(isolated_runtime_dir, "shared")
    proc = spawn_worker(endpoint, "--idle-timeout", "120")
    yield endpoint
    stop_worker(proc)


@pytest.fixture
def mute_peer(isolated_runtime_dir):
    """A ZeroMQ ROUTER bound at a fresh endpoint that never answers: (endpoint, that socket, to see what came)."""
    import zmq

    endpoint = new_endpoint(isolated_runtime_dir, "mute")
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(endpoint)
    yield endpoint, sock
    sock.close(linger=0)
    ctx.term()
