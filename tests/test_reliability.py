"""Reliability and security of the worker, the client and training (issue 7), with real processes.

Bad messages (fuzzed), a worker or a vspipe SIGKILLed mid-render, five vspipe processes at once,
resource limits, access (private ipc socket, CurveZMQ, no unpickling, sha256), and training runs
SIGKILLed and resumed. The long versions are scripts in tests/stress/.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq
from conftest import new_endpoint, spawn_worker, stop_worker, worker_env
from stress.fuzz import MUST_FAIL, GoodClient, rss_kib, run_fuzz

from erdn_vs import protocol as P
from erdn_vs.client import ConfigError, ModelError, WorkerBusy, WorkerClient, WorkerUnavailable
from worker.model import build_model, load_model, save_model

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "vpy" / "deblur_pattern.vpy"
VSPIPE = Path(sys.executable).parent / "vspipe"
W, H = 64, 48

needs_vspipe = pytest.mark.skipif(not VSPIPE.exists(), reason=f"vspipe not found next to {sys.executable}")


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """Tiny weights scaled so that the output depends on the input (see tests/test_vspipe.py)."""
    torch.manual_seed(21)
    model = build_model("tiny", frames=5)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(1.5)
    return save_model(model, tmp_path_factory.mktemp("rel") / "tiny5.safetensors")


def raw_ping(endpoint: str, op: str = "stats", timeout: float = 0.5) -> dict | None:
    """One request on a fresh socket with a short timeout: the reply, or None (dead or not yet started)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(endpoint)
        sock.send_multipart([json.dumps(P.request(op, 1)).encode()])
        if not sock.poll(int(timeout * 1000)):
            return None
        reply = json.loads(sock.recv_multipart()[0])
        return reply.get("stats", reply)
    finally:
        sock.close()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def vspipe_cmd(weights: Path, endpoint: str, **kwargs) -> list[str]:
    args = [str(VSPIPE)]
    for key, value in {"weights": weights, "endpoint": endpoint, **kwargs}.items():
        args += ["-a", f"{key}={value}"]
    return [*args, str(SCRIPT), "-"]


def render(weights: Path, endpoint: str, timeout: float = 900, **kwargs) -> bytes:  # a hang guard, not a bound
    result = subprocess.run(vspipe_cmd(weights, endpoint, **kwargs), capture_output=True, env=worker_env(),
                            timeout=timeout)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout


def frame_bytes(fmt: str, width: int = W, height: int = H) -> int:
    sizes = {"YUV420P8": 1.5, "RGB24": 3, "YUV444P16": 6, "RGBS": 12}
    return int(width * height * sizes[fmt])


# ---------------------------------------------------------------- bad messages


def test_a_thousand_fuzzed_messages_beside_a_good_client(start_worker, weights):
    """Every malformed message gets a clear error reply; a concurrent render stays bit-exact; RSS stays bounded."""
    endpoint, proc = start_worker("--cache-mb", "64", "--max-frame-pixels", str(1 << 20))
    good = GoodClient(endpoint, str(weights))
    model = load_model(weights)
    with torch.no_grad():  # the undisturbed render is the model itself
        for n, window in enumerate(good.windows):
            x = torch.from_numpy(np.stack([good.planes[i] for i in window]))[None]
            assert np.abs(model(x)[0].numpy() - good.expected[n]).max() <= 1e-5
    good.start()
    report = run_fuzz(endpoint, proc.pid, str(weights), count=1000, seed=7)
    good.stop.set()
    good.join(120)
    assert report.sent >= 1000
    assert not report.failures, report.failures[:5]
    assert set(report.kinds) >= MUST_FAIL | {"garbage", "wrong_types"}, report.kinds
    assert P.INTERNAL not in report.replies
    assert proc.poll() is None
    assert good.frames >= len(good.windows) and good.mismatches == 0 and not good.errors, good.errors
    growth_mib = (max(report.rss_kib) - report.rss_kib[0]) / 1024
    assert growth_mib < 64, f"worker RSS grew by {growth_mib:.1f} MiB during the fuzz: {report.rss_kib}"


def test_a_part_over_the_size_limit_drops_the_peer_not_the_worker(start_worker):
    endpoint, proc = start_worker("--max-frame-pixels", "4096")  # parts over max(48 KiB, 64 KiB) are refused
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart([json.dumps(P.request("ping", 1)).encode(), bytes(1 << 20)])
        assert not sock.poll(1000)  # dropped by ZeroMQ before it reaches the worker
    finally:
        sock.close()
    assert raw_ping(endpoint, "ping", timeout=5)["status"] == "ok" and proc.poll() is None


# ---------------------------------------------------------------- resource limits


def test_frame_and_session_limits_are_clear_errors(start_worker, weights):
    endpoint, _ = start_worker("--max-frame-pixels", str(W * H), "--max-sessions", "2")
    kwargs = dict(frames=5, sample_type="float", weights=str(weights))
    with WorkerClient(endpoint, autostart=False) as client:
        with pytest.raises(ConfigError, match=r"65x48 .* maximum of 3072 pixels \(--max-frame-pixels\)"):
            client.open_session(width=W + 1, height=H, **kwargs)
        with pytest.raises(ValueError, match="larger than the maximum"):  # beyond the protocol's own limit
            client.open_session(width=16384, height=16384, **kwargs)
        first = client.open_session(width=W, height=H, **kwargs)
        second = client.open_session(width=W, height=H, **kwargs)
        with pytest.raises(WorkerBusy, match="--max-sessions"):
            client.open_session(width=W, height=H, **kwargs)
        first.close()
        third = client.open_session(width=W, height=H, **kwargs)  # a closed session frees its slot
        assert client.stats()["sessions"] == 2
        second.close()
        third.close()


def test_a_full_queue_answers_overloaded_and_the_client_resends(start_worker, weights):
    endpoint, _ = start_worker("--max-queue", "2")
    rng = np.random.default_rng(3)
    planes = {i: rng.random((3, H, W), dtype=np.float32) for i in range(5)}
    window = [0, 1, 2, 3, 4]
    with WorkerClient(endpoint, autostart=False) as client:
        session = client.open_session(frames=5, width=W, height=H, sample_type="float", weights=str(weights))
        expected = session.process(2, tuple(window), planes)
        ctx = zmq.Context.instance()
        socks = [ctx.socket(zmq.DEALER) for _ in range(12)]
        head = json.dumps(P.request("process", 9, session=session.id, n=2, window=window,
                                    buffers=[P.frame_descriptor(i, planes[i]) for i in window])).encode()
        try:
            for s in socks:
                s.setsockopt(zmq.LINGER, 0)
                s.connect(endpoint)
            for s in socks:  # twelve requests at once
                s.send_multipart([head, *[planes[i].tobytes() for i in window]])
            codes = []
            for s in socks:
                assert s.poll(30_000)
                parts = s.recv_multipart()
                reply = json.loads(parts[0])
                codes.append(reply.get("code") or reply["status"])
                if reply["status"] == "ok":  # batched with its twins: equal up to float rounding of a batched conv
                    got = np.frombuffer(parts[1], np.float32).reshape(3, H, W)
                    assert np.abs(got - expected).max() <= 1e-5
        finally:
            for s in socks:
                s.close()
        assert codes.count("overloaded") >= 1 and codes.count("ok") >= 2, codes
        assert set(codes) <= {"ok", "overloaded"}
        stats = client.stats()
        assert stats["max_queue_depth"] <= 2 and stats["overloaded"] == codes.count("overloaded")
        # The client itself waits and resends when the worker says overloaded.
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            outs = list(pool.map(lambda _: session.process(2, tuple(window), planes), range(6)))
        assert all(np.abs(o - expected).max() <= 1e-5 for o in outs)
        assert client.stats()["max_queue_depth"] <= 2
        session.close()


# ---------------------------------------------------------------- killed processes


@needs_vspipe
@pytest.mark.slow
def test_worker_sigkilled_mid_render_restarts_and_the_output_is_identical(isolated_runtime_dir, weights):
    endpoint = new_endpoint(isolated_runtime_dir, "kill")
    length = 24
    try:
        undisturbed = render(weights, endpoint, length=length, autostart=1)  # autostarts the worker
        first = raw_ping(endpoint, timeout=5)
        served0 = first["frames_served"]
        proc = subprocess.Popen(vspipe_cmd(weights, endpoint, length=length, autostart=1), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=worker_env())
        wait_for(lambda: (raw_ping(endpoint) or {}).get("frames_served", 0) >= served0 + 4, 60, "4 frames")
        os.kill(first["pid"], signal.SIGKILL)
        killed = time.monotonic()
        # Recovery: a new worker process serves frames again.
        # A deadline, not a speed claim: 14 s here when idle; under the full suite beside two trainings it once
        # passed 90 s (a worker start imports torch on a starved CPU).
        again = wait_for(lambda: (s := raw_ping(endpoint)) and s["pid"] != first["pid"] and s["frames_served"] > 0
                         and s, 300, "the restarted worker to serve a frame")
        recovery = time.monotonic() - killed
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err.decode(errors="replace")
        assert out == undisturbed  # nothing lost, nothing duplicated, same pixels
        print(f"worker SIGKILL: recovered in {recovery:.1f} s (new pid {again['pid']})")
    finally:
        reply = raw_ping(endpoint, "shutdown", timeout=2)
        assert reply is None or reply["status"] == "ok"


@needs_vspipe
def test_worker_sigkilled_with_autostart_off_is_a_clear_error(start_worker, weights):
    endpoint, worker = start_worker()
    proc = subprocess.Popen(vspipe_cmd(weights, endpoint, length=200, autostart=0), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=worker_env(), start_new_session=True)
    try:
        wait_for(lambda: (raw_ping(endpoint) or {}).get("frames_served", 0) >= 3, 60, "3 frames")
        worker.kill()
        killed = time.monotonic()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    elapsed = time.monotonic() - killed
    text = err.decode(errors="replace")
    assert proc.returncode != 0
    assert "erdn_vs.deblur: frame " in text and endpoint in text and "autostart is off" in text, text[-2000:]
    print(f"vspipe failed {elapsed:.1f} s after the worker died")  # no hang: communicate's 60 s deadline above


@needs_vspipe
def test_vspipe_sigkilled_mid_render_frees_its_session(start_worker, weights):
    endpoint, worker = start_worker("--session-timeout", "2")
    assert (raw_ping(endpoint, timeout=5) or {})["sessions"] == 0
    # .venv/bin/vspipe is a Python wrapper around the vspipe binary: SIGKILL the whole process group.
    proc = subprocess.Popen(vspipe_cmd(weights, endpoint, length=400), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=worker_env(), start_new_session=True)
    try:
        wait_for(lambda: (s := raw_ping(endpoint) or {}) and s.get("frames_served", 0) >= 3 and s["cache_bytes"] > 0,
                 60, "the render to start")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = time.monotonic()
    wait_for(lambda: (raw_ping(endpoint) or {}).get("sessions") == 0, 30, "the session to expire")
    print(f"vspipe SIGKILL: session freed after {time.monotonic() - killed:.1f} s")
    # What it computed stays in the content-keyed cache, for a rerun of the script, within the cache's budget.
    s = raw_ping(endpoint) or {}
    assert 0 < s["cache_bytes"] <= 2048 * 2**20
    # The worker goes on serving others.
    assert len(render(weights, endpoint, length=4)) == 4 * frame_bytes("YUV420P8")
    assert worker.poll() is None


# ---------------------------------------------------------------- load


LOAD_CLIPS = [dict(fmt="YUV420P8", length=10), dict(fmt="RGB24", length=10, cut_next=4),
              dict(fmt="YUV444P16", length=8, width=56, height=40), dict(fmt="RGBS", length=8, width=48, height=32)]


@needs_vspipe
@pytest.mark.slow
def test_five_vspipes_at_once_match_their_solo_runs(start_worker, weights, tmp_path):
    cache_mb, max_queue = 1, 4  # a cache smaller than the five windows: evictions and resends under load
    endpoint, worker = start_worker("--cache-mb", str(cache_mb), "--max-queue", str(max_queue))
    solo = [render(weights, endpoint, **clip) for clip in LOAD_CLIPS]
    for clip, out in zip(LOAD_CLIPS, solo, strict=True):
        assert len(out) == clip["length"] * frame_bytes(clip["fmt"], clip.get("width", W), clip.get("height", H))
    before = raw_ping(endpoint, timeout=5)
    jobs = [*LOAD_CLIPS, LOAD_CLIPS[0]]  # four different clips, and the first one a second time
    outputs = [tmp_path / f"out{k}.raw" for k in range(len(jobs))]  # files, not pipes: nothing blocks on a full pipe
    procs = [subprocess.Popen(vspipe_cmd(weights, endpoint, **clip)[:-1] + [str(out)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env=worker_env())
             for clip, out in zip(jobs, outputs, strict=True)]
    samples = []
    deadline = time.monotonic() + 300
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        s = raw_ping(endpoint, timeout=2)
        if s:
            samples.append((s["queue_depth"], s["cache_bytes"], rss_kib(worker.pid)))
        time.sleep(0.1)
    errors = [p.communicate(timeout=600)[1] for p in procs]
    after = raw_ping(endpoint, timeout=5)
    for p, err in zip(procs, errors, strict=True):
        assert p.returncode == 0, err.decode(errors="replace")
    for k, (clip, out) in enumerate(zip(jobs, outputs, strict=True)):
        assert out.read_bytes() == solo[LOAD_CLIPS.index(clip)], f"vspipe {k} ({clip}) differs from its solo run"
    assert after["frames_served"] - before["frames_served"] == sum(c["length"] for c in jobs)
    assert after["max_queue_depth"] <= max_queue
    assert samples and max(s[0] for s in samples) <= max_queue
    assert max(s[1] for s in samples) <= cache_mb * 2**20 and after["cache_bytes"] <= cache_mb * 2**20
    print(f"load: {len(samples)} samples, max queue {after['max_queue_depth']}, max cache "
          f"{max(s[1] for s in samples)} B, RSS {min(s[2] for s in samples) // 1024}-"
          f"{max(s[2] for s in samples) // 1024} MiB, overloaded {after['overloaded']}, "
          f"need_frames {after['need_frames_replies'] - before['need_frames_replies']}")


# ---------------------------------------------------------------- access


def test_the_worker_socket_lives_in_a_private_directory(isolated_runtime_dir):
    endpoint = P.default_endpoint()
    proc = spawn_worker(endpoint)
    try:
        path = P.ipc_path(endpoint)
        directory = path.parent
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700 and directory.stat().st_uid == os.getuid()
        assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) & 0o077 == 0
        assert raw_ping(endpoint, "ping", timeout=5)["pid"] == proc.pid
    finally:
        stop_worker(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_non_loopback_tcp_needs_curve_keys(tmp_path, monkeypatch):
    env = {**worker_env(), "ERDN_KEYS_DIR": str(tmp_path / "nokeys")}
    for args, words in ((["--endpoint", "tcp://0.0.0.0:5599"], "erdn worker keys"),
                        (["--endpoint", "tcp://0.0.0.0:5599", "--curve"], "erdn worker keys")):
        result = subprocess.run([sys.executable, "-m", "worker", *args], env=env, capture_output=True, text=True,
                                timeout=60)
        assert result.returncode == 2 and words in result.stderr, result.stderr
    monkeypatch.setenv("ERDN_KEYS_DIR", str(tmp_path / "nokeys"))
    with pytest.raises(ValueError, match="erdn worker keys"):
        WorkerClient("tcp://192.0.2.1:5599")  # off loopback: CURVE, and this user has no keys


def test_curve_admits_only_the_authorized_key(tmp_path, monkeypatch, weights):
    keys = tmp_path / "keys"
    made = subprocess.run([sys.executable, "-m", "erdn_vs.cli", "worker", "keys", "--dir", str(keys)],
                          env=worker_env(), capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    assert {p.name for p in keys.iterdir()} >= {"server.key", "server.key_secret", "client.key",
                                                "client.key_secret", "authorized"}
    monkeypatch.setenv("ERDN_KEYS_DIR", str(keys))
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    # spawn_worker pings without keys, which a CURVE worker never answers: start it by hand
    proc = subprocess.Popen([sys.executable, "-m", "worker", "--endpoint", endpoint, "--curve", "--threads", "1"],
                            env=worker_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with WorkerClient(endpoint, autostart=False, curve=True) as client:
            wait_for(lambda: _try_ping(client), 60, "the CURVE worker")
            planes = {i: np.full((3, H, W), i / 8, np.float32) for i in range(5)}
            with client.open_session(frames=5, width=W, height=H, sample_type="float", weights=str(weights)) as s:
                assert s.process(2, (0, 1, 2, 3, 4), planes).shape == (3, H, W)
        # Without CURVE, with an unknown key pair, or with the right key but a wrong server key: nothing.
        assert raw_ping(endpoint, "ping", timeout=2) is None
        other = tmp_path / "other"
        subprocess.run([sys.executable, "-m", "erdn_vs.cli", "worker", "keys", "--dir", str(other)],
                       env=worker_env(), check=True, capture_output=True, timeout=60)
        shutil.copy(keys / "server.key", other / "server.key")  # knows the server, but is not authorized
        wrong_server = tmp_path / "wrong-server"
        shutil.copytree(keys, wrong_server)
        shutil.copy(other / "client.key", wrong_server / "server.key")  # authorized, but trusts another server
        for directory in (other, wrong_server):
            monkeypatch.setenv("ERDN_KEYS_DIR", str(directory))
            monkeypatch.setenv("ERDN_WORKER_CURVE", "1")  # CURVE on loopback, with the keys of $ERDN_KEYS_DIR
            with WorkerClient(endpoint, autostart=False, timeout=2) as client:
                assert client.curve_keys is not None
                with pytest.raises(WorkerUnavailable):
                    client.ping()
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert "Traceback" not in proc.stderr.read().decode(errors="replace")


def _try_ping(client: WorkerClient) -> bool:
    try:
        return client.ping()["status"] == "ok"
    except WorkerUnavailable:
        return False


PICKLE_PATTERNS = [
    (r"\bimport (cPickle|_pickle|dill|joblib|marshal|shelve)\b|\bfrom (c?pickle|dill|joblib|marshal|shelve) import",
     "import"),
    (r"\bpickle\.(?!UnpicklingError\b)\w+", "pickle used for more than its UnpicklingError"),
    (r"Unpickler|allow_pickle\s*=\s*True", "an unpickler or np.load(allow_pickle=True)"),
]


def test_no_code_unpickles():
    """No module unpickles (pickle is imported only for its exception), every torch.load passes weights_only=True."""
    offenders = []
    for root in ("erdn_vs", "worker", "training"):
        for path in (REPO / root).rglob("*.py"):
            text = path.read_text()
            for pattern, what in PICKLE_PATTERNS:
                if re.search(pattern, text):
                    offenders.append(f"{path.relative_to(REPO)}: {what}")
            for call in re.finditer(r"torch\.load\(", text):
                depth, end = 0, call.end() - 1
                for end in range(call.end() - 1, len(text)):
                    depth += {"(": 1, ")": -1}.get(text[end], 0)
                    if depth == 0:
                        break
                if "weights_only=True" not in text[call.start():end]:
                    offenders.append(f"{path.relative_to(REPO)}: torch.load without weights_only=True")
    assert not offenders, offenders


class _Boom:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payloads_are_refused_not_run(start_worker, tmp_path):
    from training.checkpoint import MAGIC, CheckpointError, load_checkpoint

    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Boom(marker))
    endpoint, _ = start_worker()
    # On the wire: as a header, and as a weights file a session names.
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart([payload])
        assert sock.poll(10_000)
        assert json.loads(sock.recv_multipart()[0])["code"] == P.BAD_REQUEST
    finally:
        sock.close()
    bad_weights = tmp_path / "evil.safetensors"
    torch.save({"x": _Boom(marker)}, bad_weights)
    with WorkerClient(endpoint, autostart=False) as client:
        with pytest.raises(ModelError, match="safetensors"):
            client.open_session(frames=5, width=W, height=H, sample_type="float", weights=str(bad_weights))
    # A training checkpoint with a valid header and checksum around a malicious pickle.
    ckpt = tmp_path / "evil.ckpt"
    inner = tmp_path / "inner.pt"
    torch.save({"state": _Boom(marker)}, inner)
    data = inner.read_bytes()
    ckpt.write_bytes(MAGIC + hashlib.sha256(data).digest() + data)
    with pytest.raises((CheckpointError, pickle.UnpicklingError)):
        load_checkpoint(ckpt)
    assert not marker.exists()


@needs_vspipe
def test_sha256_mismatch_is_refused_end_to_end(isolated_runtime_dir, weights, tmp_path):
    """A manifest model whose file changed after its sha256 was written: vspipe fails with one clear message."""
    shutil.copy(weights, tmp_path / "model.safetensors")
    digest = hashlib.sha256((tmp_path / "model.safetensors").read_bytes()).hexdigest()
    text = (REPO / "plugin_manifest.yaml").read_text()
    entry = (f"models:\n  - name: tampered\n    file: model.safetensors\n    sha256: '{digest}'\n    preset: tiny\n"
             "    frames: 5\n    training_data: test\n    quality: {}\n    licence: test\n")
    manifest = tmp_path / "plugin_manifest.yaml"
    manifest.write_text(re.sub(r"^models:.*$", entry, text, flags=re.M | re.S))
    with open(tmp_path / "model.safetensors", "r+b") as f:  # one flipped byte after the header
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    endpoint = new_endpoint(isolated_runtime_dir, "sha")
    proc = spawn_worker(endpoint, "--manifest", str(manifest))
    try:
        env = {**worker_env(), "ERDN_MANIFEST": str(manifest)}
        cmd = [str(VSPIPE), "-a", f"endpoint={endpoint}", "-a", "length=4", str(tmp_path / "m.vpy"), "-"]
        (tmp_path / "m.vpy").write_text(
            "import vapoursynth as vs\nimport erdn_vs\n"
            "src = vs.core.std.BlankClip(width=64, height=48, format=vs.YUV420P8, length=4)\n"
            "erdn_vs.deblur(src, model='tampered', endpoint=endpoint, autostart=False).set_output()\n")
        result = subprocess.run(cmd, capture_output=True, env=env, timeout=120)
    finally:
        stop_worker(proc)
    err = result.stderr.decode(errors="replace")
    assert result.returncode != 0
    assert "sha256" in err and "the manifest says" in err and "download it again" in err, err[-2000:]


# ---------------------------------------------------------------- training


def train_config(path: Path, dataset: Path, run_dir: Path, **top) -> Path:
    import yaml

    cfg = {"name": "rel", "run_dir": str(run_dir), "seed": 3, "batch": 1, "iterations": 40, "val_every": 1000,
           "checkpoint_every": 4, "log_every": 1, "threads": 1, "model": {"preset": "tiny", "frames": 5},
           "data": {"root": str(dataset), "crop": 24, "val_split": ""}, "optimizer": {"lr": 1.0e-3},
           "schedule": {"name": "step", "every": 10, "unit": "iteration", "gamma": 0.5}} | top
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    from training.synth import SynthOptions, synthesize

    out = tmp_path_factory.mktemp("relsynth")
    return synthesize(SynthOptions(out=str(out), clips=2, test_clips=1, frames=5, width=32, height=32, subframes=3,
                                   seed=4), progress=False)


def erdn_train(config: Path, *args: str, **popen) -> subprocess.Popen:
    env = {**worker_env(), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "erdn_vs.cli", "train", str(config), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def logged_iterations(run_dir: Path) -> list[int]:
    import csv

    if not (run_dir / "log.csv").is_file():
        return []
    with open(run_dir / "log.csv", newline="") as f:
        return [int(r["iteration"]) for r in csv.DictReader(f) if r.get("iteration", "").isdigit()]


@pytest.mark.slow
def test_training_sigkilled_resumes_within_one_checkpoint_interval(tmp_path, dataset):
    from safetensors.torch import load_file

    straight = erdn_train(train_config(tmp_path / "a.yaml", dataset, tmp_path / "a"))
    _, err = straight.communicate(timeout=600)
    assert straight.returncode == 0, err
    config = train_config(tmp_path / "b.yaml", dataset, tmp_path / "b")
    run = erdn_train(config)
    wait_for(lambda: max(logged_iterations(tmp_path / "b"), default=0) >= 14, 300, "iteration 14", 0.02)
    run.send_signal(signal.SIGKILL)
    run.communicate()
    killed_at = max(logged_iterations(tmp_path / "b"))
    resumed = erdn_train(config)
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    start = int(re.search(r"resumed .* at iteration (\d+)", err).group(1))
    lost = killed_at - start
    print(f"training SIGKILL at logged iteration {killed_at}: resumed at {start}, lost {lost} (interval 4)")
    assert 0 <= lost <= 4
    assert logged_iterations(tmp_path / "b") == list(range(1, 41))  # no iteration missing or repeated in the log
    a, b = load_file(tmp_path / "a" / "final.safetensors"), load_file(tmp_path / "b" / "final.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the same weights as uninterrupted


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, dataset) -> Path:
    """A 4-iteration run directory with its last.ckpt (made once per module)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert erdn_train(train_config(run_dir.parent / "c.yaml", dataset, run_dir, iterations=4)).wait(timeout=300) == 0
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "foreign"])
def test_a_damaged_checkpoint_is_reported_not_loaded(tmp_path, dataset, finished_run, damage):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    ckpt = run_dir / "last.ckpt"
    data = ckpt.read_bytes()
    ckpt.write_bytes({"truncate": data[: len(data) // 2], "flip": data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:],
                      "empty": b"", "foreign": b"PK\x03\x04" + data[4:]}[damage])
    rows = logged_iterations(run_dir)
    again = erdn_train(train_config(tmp_path / "c.yaml", dataset, run_dir, iterations=8))
    _, err = again.communicate(timeout=300)
    assert again.returncode == 2, err
    assert "erdn train:" in err and str(ckpt) in err and ("damaged" in err or "not an erdn" in err), err
    assert "Traceback" not in err
    assert logged_iterations(run_dir) == rows  # nothing ran from scratch behind the user's back
