"""worker.cpu_runtime: freed memory is reused without page faults; OpenMP's wait policy is set only where it
can apply; a real worker applies both."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from worker import cpu_runtime

# A child that mallocs, touches and frees 64 MiB three times on a thread that is not the main thread (as the
# worker's compute thread does) and prints the page faults of each round.
_FAULTS = textwrap.dedent("""
    import ctypes, json, resource, sys, threading
    if sys.argv[1] == "configured":
        from worker.cpu_runtime import configure
        print(json.dumps(configure()))
    else:
        print("{}")
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    faults = []
    def rounds():
        for _ in range(3):
            before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            block = libc.malloc(64 << 20)
            ctypes.memset(block, 1, 64 << 20)  # every page is touched
            libc.free(block)
            faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
    t = threading.Thread(target=rounds)
    t.start()
    t.join()
    print(json.dumps(faults))
""")


def _faults(mode: str) -> tuple[dict, list[int]]:
    proc = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, timeout=120,
                          check=True)
    settings, faults = proc.stdout.strip().splitlines()
    return json.loads(settings), json.loads(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_memory_is_reused_without_page_faults() -> None:
    settings, configured = _faults("configured")
    assert settings == {"keep_freed_memory": True, "omp_wait_passive": True}
    _, plain = _faults("plain")
    # Plain glibc maps a block this big afresh each time and every page faults again (16384 of 4 KiB, or 32 where
    # the kernel backs it with 2 MiB pages). Configured, the second and third rounds reuse the first one's pages.
    assert min(plain[1:]) >= 32
    assert max(configured[1:]) <= min(plain[1:]) / 10


def test_wait_policy_is_set_only_before_torch_and_never_over_the_users(monkeypatch) -> None:
    monkeypatch.setenv("OMP_WAIT_POLICY", "")  # so that monkeypatch restores what was there (or nothing)
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setitem(sys.modules, "torch", sys.modules.get("torch") or object())
    assert cpu_runtime.wait_passively() is False  # torch already loaded OpenMP: too late
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.delitem(sys.modules, "torch")
    assert cpu_runtime.wait_passively() is True
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert cpu_runtime.wait_passively() is False
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.slow
def test_worker_logs_its_process_settings(start_worker, tmp_path) -> None:
    """A real worker applies both settings before it loads torch, and says so in its log."""
    log = tmp_path / "worker.log"
    endpoint, _ = start_worker(log=log)
    from erdn_vs.client import WorkerClient

    with WorkerClient(endpoint, autostart=False, timeout=60) as client:
        client.ping()
    text = log.read_text()
    assert "process settings: {'keep_freed_memory': True, 'omp_wait_passive': True}" in text, text[-2000:]
