"""An idle worker gives its memory back (``--idle-release``): caches dropped, freed heap returned to the kernel."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import worker_env
from test_worker import reference

from erdn_vs import protocol as P
from erdn_vs.client import WorkerClient

SIZE = 256  # 256x256 float frames: 768 KiB each in the frame cache
FILL = 200  # frames sent only to be cached: 150 MiB, far above what the worker's heap holds besides them
MIN_DROP_MIB = 100  # the resident memory the release must give back, at least
GRACE_S = 1.0


def rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` in MiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def window(n: int, length: int) -> tuple[int, int, int]:
    return tuple(min(max(n + k, 0), length - 1) for k in (-1, 0, 1))  # type: ignore[return-value]


def wait_for(client: WorkerClient, predicate, seconds: float = 60.0) -> dict:
    """Poll the worker's stats until ``predicate(stats)``; a generous deadline, not a timing assertion."""
    deadline = time.monotonic() + seconds
    while True:
        stats = client.stats()
        if predicate(stats) or time.monotonic() > deadline:
            return stats
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmRSS from /proc")
def test_idle_worker_releases_cache_memory_and_then_serves_as_before(start_worker, tiny_weights, tmp_path):
    log = tmp_path / "worker.log"
    endpoint, proc = start_worker("--idle-release", str(GRACE_S), "--cache-mb", "512", log=log)
    rng = np.random.default_rng(7)
    planes = {i: rng.random((3, SIZE, SIZE), dtype=np.float32) for i in range(3)}
    weights = tiny_weights[3]
    with WorkerClient(endpoint, autostart=False, timeout=120) as client:
        with client.open_session(frames=3, width=SIZE, height=SIZE, sample_type="float",
                                 weights=str(weights)) as session:
            for n in range(3):  # real work: the model's activations pass through the heap too
                session.process(n, window(n, 3), planes)
            # Fill the frame cache without computing: a window whose last frame was never sent is answered
            # need_frames, after the frames the request carries are cached (the client sends no such request).
            fill = rng.random((FILL, 3, SIZE, SIZE), dtype=np.float32)
            for k in range(0, FILL, 2):
                arrays = [fill[k], fill[k + 1]]
                reply, _ = client._request("process", arrays, session=session.id, n=0, window=[k, k + 1, 10**6],
                                           buffers=[P.frame_descriptor(k + i, a) for i, a in enumerate(arrays)])
                assert reply["status"] == "need_frames"
            full = client.stats()
            rss_full = rss_mib(proc.pid)
        assert full["cache_bytes"] > 100 * 2**20 and full["idle_releases"] == 0
        after = wait_for(client, lambda s: s["idle_releases"] >= 1)
        assert after["idle_releases"] == 1, "the idle worker never released its caches"
        time.sleep(3 * GRACE_S)
        assert client.stats()["idle_releases"] == 1  # once per idle spell, and logged once
        assert log.read_text().count("MiB of cache") == 1
        assert after["cache_bytes"] == 0 and after["models_resident"] == 1  # the one model used: kept
        rss_idle = rss_mib(proc.pid)
        assert rss_full - rss_idle >= MIN_DROP_MIB, (rss_full, rss_idle, full["cache_bytes"] / 2**20)
        # A new session works as before: the same frames are computed again (the cache is empty) and exactly.
        with client.open_session(frames=3, width=SIZE, height=SIZE, sample_type="float",
                                 weights=str(weights)) as session:
            outs = {n: session.process(n, window(n, 3), planes) for n in (0, 1, 2)}
        again = client.stats()
    assert again["stage1_evals"] - after["stage1_evals"] == 3 and again["models_loaded"] == after["models_loaded"]
    for n, out in outs.items():
        assert np.abs(out - reference(weights, window(n, 3), planes)).max() <= 1e-5


def test_idle_release_flag_refuses_a_negative_value():
    out = subprocess.run([sys.executable, "-m", "worker", "--idle-release", "-1"], capture_output=True, text=True,
                         env=worker_env(), timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "erdn worker: --idle-release must be 0 (never) or a number of seconds, got -1"]


def test_release_keeps_only_the_most_recently_used_model(tiny_weights):
    """In-process: two models loaded, both sessions closed; the release empties the cache and keeps the last one."""
    from worker.session import SessionManager

    manager = SessionManager(device="cpu", cache_bytes=1 << 26)
    for frames in (5, 3):
        sid = manager.open(P.SessionSpec(frames, 64, 48, "float", weights=str(tiny_weights[frames])).to_header())
        manager.cache.put(("f", "cpu", bytes([frames])), torch.zeros(3, 48, 64))
        manager.close(sid["session"])
    assert len(manager._backends) == 2 and manager.cache.bytes > 0
    done = manager.release_idle()
    assert (done["models_evicted"], done["models_kept"], done["cache_items"]) == (1, 1, 2)
    assert manager.cache.bytes == 0 and len(manager.cache) == 0
    manager.open(P.SessionSpec(3, 64, 48, "float", weights=str(tiny_weights[3])).to_header())
    stats = manager.stats.snapshot()  # the frames=3 model was the one kept: no reload
    assert stats["models_loaded"] == 2 and stats["idle_releases"] == 1 and stats["models_resident"] == 1
