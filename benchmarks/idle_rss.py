"""The worker's resident memory over time after a render: how much it keeps while idle.

Starts ``python -m worker`` on its own endpoint (``--idle-timeout 300``, plus any ``--worker-arg``), renders
``--frames`` frames of a ``--width`` x ``--height`` float clip with the default model through the client (as
vspipe does), closes the session, then prints VmRSS (MiB) every ``--every`` seconds for ``--seconds``.

    .venv/bin/python benchmarks/idle_rss.py --frames 4 --seconds 90
    .venv/bin/python benchmarks/idle_rss.py --frames 4 --seconds 90 --worker-arg=--idle-release=0
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` in MiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=4)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=360)
    p.add_argument("--seconds", type=float, default=90.0)
    p.add_argument("--model", default="erdn-lite-synth", help="manifest model name (default: the default model)")
    p.add_argument("--every", type=float, default=5.0)
    p.add_argument("--worker-arg", action="append", default=[], help="extra `erdn worker` argument (repeatable)")
    args = p.parse_args()
    from erdn_vs.client import WorkerClient, WorkerUnavailable

    run = Path(tempfile.mkdtemp(prefix="erdn-rss-", dir="/tmp"))
    endpoint = f"ipc://{run}/w.sock"
    env = dict(os.environ, PYTHONPATH=str(REPO), XDG_RUNTIME_DIR=str(run))
    proc = subprocess.Popen([sys.executable, "-m", "worker", "--endpoint", endpoint, "--idle-timeout", "300",
                             *args.worker_arg], env=env, stdout=subprocess.DEVNULL, stderr=open(run / "log", "w"))  # noqa: SIM115
    try:
        with WorkerClient(endpoint, autostart=False, timeout=600) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    client.ping()
                    break
                except WorkerUnavailable:
                    if time.monotonic() > deadline:
                        raise
            print(f"worker pid {proc.pid}: {rss_mib(proc.pid):.1f} MiB before the render", flush=True)
            rng = np.random.default_rng(0)
            n = args.frames
            planes = {i: rng.random((3, args.height, args.width), dtype=np.float32) for i in range(n)}
            t0 = time.monotonic()
            with client.open_session(frames=5, width=args.width, height=args.height, sample_type="float",
                                     model=args.model) as s:
                for i in range(n):
                    s.process(i, tuple(min(max(i + k, 0), n - 1) for k in range(-2, 3)), planes)
            print(f"rendered {n} frames {args.width}x{args.height} in {time.monotonic() - t0:.1f} s; "
                  f"session closed; cache {client.stats()['cache_bytes'] / 2**20:.1f} MiB", flush=True)
        start = time.monotonic()
        while (t := time.monotonic() - start) <= args.seconds + 0.01:
            print(f"t={t:5.1f} s  VmRSS {rss_mib(proc.pid):7.1f} MiB", flush=True)
            time.sleep(max(0.0, args.every - (time.monotonic() - start - t)))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    print("worker log:\n" + (run / "log").read_text()[-1500:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
