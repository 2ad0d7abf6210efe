"""Where the worker listens by default, and what an unreachable worker's error names.

A unix socket path holds about 100 bytes. A long $XDG_RUNTIME_DIR must not break the default
endpoint: the client falls back to the temp dir, creates nothing under the long directory, and
where no default can work says where the path came from and what to set instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from conftest import new_endpoint

from erdn_vs import protocol as P
from erdn_vs.client import WorkerClient, WorkerUnavailable


def long_dir(root: Path, name: str, length: int = 132) -> Path:
    """A real directory whose path is ``length`` characters long."""
    path = root / name
    path = Path(str(path) + "x" * (length - len(str(path))))
    path.mkdir(mode=0o700)
    assert len(str(path)) == length
    return path


@pytest.fixture
def short_tmp(monkeypatch):
    """$TMPDIR as a short directory of this test (so the fallback never touches the real /tmp/erdn-vs-UID)."""
    tmp = Path(tempfile.mkdtemp(prefix="e-", dir="/tmp"))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile caches gettempdir()
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


def test_a_long_xdg_runtime_dir_falls_back_to_the_temp_dir(tmp_path, short_tmp, monkeypatch):
    xdg = long_dir(tmp_path, "xdg-")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    endpoint = P.default_endpoint()
    assert endpoint == f"ipc://{short_tmp}/erdn-vs-{os.getuid()}/worker.sock"
    assert P.check_endpoint(endpoint) == endpoint
    assert P.log_path().parent == short_tmp / f"erdn-vs-{os.getuid()}"
    assert list(xdg.iterdir()) == []  # nothing was made under the directory that cannot hold the socket


def test_where_no_default_can_work_the_error_says_where_it_came_from_and_what_to_set(tmp_path, monkeypatch):
    xdg = long_dir(tmp_path, "xdg-")
    tmp = long_dir(tmp_path, "tmp-", 140)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    with pytest.raises(ValueError) as e:
        P.default_endpoint()
    message = str(e.value)
    assert "\n" not in message
    assert f"{xdg}/erdn-vs/worker.sock" in message and "$XDG_RUNTIME_DIR" in message
    assert "$TMPDIR" in message
    assert "ERDN_WORKER_ENDPOINT=ipc:///tmp/" in message and "tcp://127.0.0.1:" in message
    assert list(xdg.iterdir()) == [] and list(tmp.iterdir()) == []


def test_a_long_endpoint_from_the_environment_is_named_as_such(monkeypatch):
    monkeypatch.setenv(P.ENDPOINT_ENV, "ipc:///tmp/" + "d" * 120 + "/w.sock")
    with pytest.raises(ValueError) as e:
        P.default_endpoint()
    assert "$ERDN_WORKER_ENDPOINT" in str(e.value) and "tcp://127.0.0.1:" in str(e.value)


def test_a_long_typed_endpoint_says_what_to_use_instead():
    with pytest.raises(ValueError) as e:
        P.check_endpoint("ipc:///tmp/" + "d" * 150 + ".sock")
    assert "tcp://127.0.0.1:" in str(e.value) and "ipc:///tmp/" in str(e.value)


def test_deblur_reports_an_impossible_default_endpoint_when_the_script_is_evaluated(monkeypatch, tmp_path):
    import vapoursynth as vs

    import erdn_vs

    xdg = long_dir(tmp_path, "xdg-")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    monkeypatch.setenv("TMPDIR", str(long_dir(tmp_path, "tmp-", 140)))
    monkeypatch.setattr(tempfile, "tempdir", None)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    clip = vs.core.std.BlankClip(format=vs.YUV420P8, width=32, height=24, length=3)
    with pytest.raises(vs.Error, match=r"^erdn_vs\.deblur: .*XDG_RUNTIME_DIR.*ERDN_WORKER_ENDPOINT"):
        erdn_vs.deblur(clip, weights=str(weights))  # at script time, not at the first frame


def test_a_hand_started_endpoint_error_names_no_autostart_log(isolated_runtime_dir):
    endpoint = new_endpoint(isolated_runtime_dir, "byhand")
    with WorkerClient(endpoint, autostart=False, timeout=5) as client, pytest.raises(WorkerUnavailable) as e:
        client.ping()
    message = str(e.value)
    assert f"erdn worker --endpoint {endpoint}" in message and "autostart is off" in message
    assert "worker.log" not in message and str(P.runtime_dir()) not in message


@pytest.mark.slow
def test_autostart_on_the_fallback_endpoint_serves(tmp_path, short_tmp, monkeypatch):
    """The real thing: with a long $XDG_RUNTIME_DIR, the default endpoint gets a worker that answers."""
    xdg = long_dir(tmp_path, "xdg-")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    with WorkerClient(autostart=True, timeout=30, worker_args=["--threads", "1", "--idle-timeout", "20"]) as client:
        assert client.endpoint == f"ipc://{short_tmp}/erdn-vs-{os.getuid()}/worker.sock"
        client.ping()
        started = client._started  # the worker this client started: stop it, and wait for it
        assert started is not None
        client.shutdown()
    started.wait(timeout=30)
    assert list(xdg.iterdir()) == []
    assert (short_tmp / f"erdn-vs-{os.getuid()}" / "worker.log").exists()


def test_with_no_default_socket_a_custom_endpoint_still_has_its_files(tmp_path, monkeypatch):
    """Lock, pid and log files need no short path: where no default socket fits, they go to the first dir."""
    xdg = long_dir(tmp_path, "xdg-")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    monkeypatch.setenv("TMPDIR", str(long_dir(tmp_path, "tmp-", 140)))
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert P.log_path() == xdg / "erdn-vs" / "worker.log"
