"""The client: unreachable workers fail fast and clearly; autostart starts exactly one worker."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
from conftest import new_endpoint

from erdn_vs import protocol as P
from erdn_vs.client import WorkerClient, WorkerUnavailable


def test_autostart_off_fails_fast_and_says_what_to_do(isolated_runtime_dir):
    endpoint = new_endpoint(isolated_runtime_dir, "nobody")
    t0 = time.monotonic()
    with WorkerClient(endpoint, autostart=False, timeout=30) as client, pytest.raises(WorkerUnavailable) as e:
        client.open_session(frames=5, width=64, height=48, sample_type="float", weights="w.safetensors")
    assert time.monotonic() - t0 < 5
    assert endpoint in str(e.value) and f"erdn worker --endpoint {endpoint}" in str(e.value)


def test_a_mute_peer_times_out(mute_peer):
    """Something bound at the endpoint that never answers: a bounded wait, then a clear error."""
    endpoint, mute = mute_peer
    t0 = time.monotonic()
    with WorkerClient(endpoint, autostart=False, timeout=1) as client, pytest.raises(WorkerUnavailable):
        client.ping()
    assert time.monotonic() - t0 < 5
    assert mute.poll(0)  # the ping did arrive


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (our own exited child) counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_autostart_starts_one_worker_and_restarts_a_dead_one(isolated_runtime_dir, tiny_weights):
    endpoint = new_endpoint(isolated_runtime_dir, "auto")
    args = ["--threads", "1", "--idle-timeout", "30"]
    clients = [WorkerClient(endpoint, worker_args=args, timeout=30) for _ in range(3)]
    log = P.log_path()
    serving_before = log.read_text().count(f"serving {endpoint}") if log.exists() else 0
    pids: list[int] = []
    errors: list[Exception] = []

    def ask(client: WorkerClient) -> None:
        try:
            pids.append(client.ping()["pid"])
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(c,)) for c in clients for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    try:
        assert not errors, errors
        assert len(pids) == 6 and len(set(pids)) == 1
        assert log.read_text().count(f"serving {endpoint}") - serving_before == 1  # exactly one worker served
        first = pids[0]

        # The worker dies under an open session: the next request starts a new one and reopens the session.
        planes = {i: np.random.default_rng(i).random((3, 48, 64), dtype=np.float32) for i in range(3)}
        session = clients[0].open_session(frames=5, width=64, height=48, sample_type="float",
                                          weights=str(tiny_weights[5]))
        a = session.process(0, (0, 0, 0, 1, 2), planes)
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pid_alive(first) and time.monotonic() < deadline:
            time.sleep(0.05)
        b = session.process(0, (0, 0, 0, 1, 2), planes)
        second = clients[0].ping()["pid"]
        assert second != first
        np.testing.assert_allclose(a, b, atol=1e-6)
        session.close()
    finally:
        for c in clients:
            try:
                c.shutdown()
                break
            except WorkerUnavailable:
                pass
        for c in clients:
            c.close()


def test_client_side_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys, erdn_vs.client, erdn_vs.protocol, worker.cli; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    from conftest import worker_env

    assert subprocess.run([sys.executable, "-c", code], env=worker_env(), timeout=60).returncode == 0


def test_worker_log_is_rotated_past_its_limit(tmp_path):
    from erdn_vs.client import rotate_log

    log = tmp_path / "worker.log"
    rotate_log(log, max_bytes=10)  # no log yet: nothing to do
    log.write_bytes(b"x" * 10)
    rotate_log(log, max_bytes=10)
    assert log.read_bytes() == b"x" * 10  # at the limit: kept
    log.write_bytes(b"y" * 11)
    rotate_log(log, max_bytes=10)
    assert not log.exists() and (tmp_path / "worker.log.1").read_bytes() == b"y" * 11
    log.write_bytes(b"z" * 12)
    rotate_log(log, max_bytes=10)  # the older rotated log is dropped
    assert (tmp_path / "worker.log.1").read_bytes() == b"z" * 12
