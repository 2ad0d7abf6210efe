"""`erdn worker stop` and `status` work across protocol versions (issue 30, 11): after an upgrade, the new
client's advice (`erdn worker stop`) must be able to stop the old worker, and an old client a new one."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from conftest import new_endpoint, worker_env

# A worker as the released version 1 was: every request of another version refused, stop included.
OLD_WORKER = ("import sys; import erdn_vs.protocol as P; P.PROTOCOL_VERSION = {version}; P.ANY_VERSION_OPS = (); "
              "from worker.cli import main; sys.exit(main(['--endpoint', {endpoint!r}, '--threads', '1']))")
CLIENT = ("import sys; import erdn_vs.protocol as P; P.PROTOCOL_VERSION = {version}; "
          "from worker.cli import main; sys.exit(main([{command!r}, '--endpoint', {endpoint!r}, '--timeout', '5']))")


def erdn_worker(command: str, endpoint: str, version: int | None = None) -> subprocess.CompletedProcess:
    if version is None:
        args = [sys.executable, "-m", "erdn_vs.cli", "worker", command, "--endpoint", endpoint, "--timeout", "5"]
    else:
        args = [sys.executable, "-c", CLIENT.format(version=version, command=command, endpoint=endpoint)]
    return subprocess.run(args, capture_output=True, text=True, timeout=120, env=worker_env())


def start(code: str, endpoint: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env=worker_env(), text=True)
    deadline = time.monotonic() + 120
    while erdn_worker("status", endpoint).returncode != 0:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.5)
    return proc


def test_a_new_client_stops_a_worker_of_an_older_version(isolated_runtime_dir):
    endpoint = new_endpoint(isolated_runtime_dir, "old")
    old = start(OLD_WORKER.format(version=0, endpoint=endpoint), endpoint)
    try:
        status = erdn_worker("status", endpoint)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["endpoint"] == endpoint
        stop = erdn_worker("stop", endpoint)
        assert stop.returncode == 0, stop.stderr
        assert old.wait(timeout=60) == 0
    finally:
        old.kill()


def test_an_old_client_stops_a_worker_of_this_version(isolated_runtime_dir):
    endpoint = new_endpoint(isolated_runtime_dir, "new")
    worker = subprocess.Popen([sys.executable, "-m", "worker", "--endpoint", endpoint, "--threads", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=worker_env())
    try:
        deadline = time.monotonic() + 120
        while erdn_worker("status", endpoint).returncode != 0:
            assert worker.poll() is None and time.monotonic() < deadline
            time.sleep(0.5)
        stop = erdn_worker("stop", endpoint, version=7)  # a client that speaks another version, stop as its only word
        assert stop.returncode == 0, stop.stderr
        assert worker.wait(timeout=60) == 0
    finally:
        worker.kill()
