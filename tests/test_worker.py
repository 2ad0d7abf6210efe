"""The worker process over real ZeroMQ sockets: sessions, the cached cascade, errors, lifecycle."""

from __future__ import annotations

import functools
import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
import zmq
from conftest import worker_env

from erdn_vs import protocol as P
from erdn_vs.client import ConfigError, ModelError, WorkerClient
from worker.model import load_model

H, W = 48, 64


def clip(n: int, dtype=np.float32, seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {i: rng.random((3, H, W), dtype=np.float32).astype(dtype) for i in range(n)}


def window_of(n: int, length: int, frames: int) -> tuple[int, ...]:
    r = frames // 2
    return tuple(min(max(n + k, 0), length - 1) for k in range(-r, r + 1))


@functools.cache
def _model(weights):
    return load_model(weights)


def reference(weights, window, planes) -> np.ndarray:
    """model(window) computed directly, in this process (one thread: the worker runs beside it)."""
    x = torch.from_numpy(np.stack([planes[i].astype(np.float32) for i in window]))[None]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return _model(weights)(x)[0].numpy()
    finally:
        torch.set_num_threads(threads)


def test_ping_and_stats(worker_endpoint):
    with WorkerClient(worker_endpoint, autostart=False) as client:
        pong = client.ping()
        assert pong["status"] == "ok" and pong["protocol"] == P.PROTOCOL_VERSION and pong["pid"] > 0
        stats = client.stats()
        for key in ("frames_served", "stage1_evals", "stage2_evals", "cache_hits", "cache_misses",
                    "bytes_received", "queue_depth", "stage1_seconds", "stage2_seconds", "sessions"):
            assert key in stats


def test_in_order_render_equals_model_with_two_evals_per_frame(worker_endpoint, tiny_weights):
    length = 8
    planes = clip(length, seed=21)  # contents no other test of this worker sends: its cache has none of them
    with WorkerClient(worker_endpoint, autostart=False) as client:
        before = client.stats()
        with client.open_session(frames=5, width=W, height=H, sample_type="float",
                                 weights=str(tiny_weights[5])) as session:
            outs = [session.process(n, window_of(n, length, 5), planes) for n in range(length)]
            sent = session.bytes_sent
        after = client.stats()
    for n, out in enumerate(outs):
        assert out.shape == (3, H, W) and out.dtype == np.float32
        ref = reference(tiny_weights[5], window_of(n, length, 5), planes)
        assert np.abs(out - ref).max() <= 1e-5
    s1 = after["stage1_evals"] - before["stage1_evals"]
    s2 = after["stage2_evals"] - before["stage2_evals"]
    # Unique triplets of the 8 edge-clamped windows: (0,0,0), (0,0,1), (0,1,2), ..., (5,6,7), (6,7,7), (7,7,7).
    assert (s1, s2) == (length + 2, length)
    assert after["frames_served"] - before["frames_served"] == length
    assert after["cache_hits"] - before["cache_hits"] == 3 * length - s1
    # Every source frame crosses the wire once.
    assert sent == length * 3 * H * W * 4
    assert after["bytes_received"] - before["bytes_received"] == sent


def test_cache_is_by_content_across_sessions(worker_endpoint, tiny_weights):
    """A reopened script (new session, same frames) is served from the cache; so is the same content at other
    indices; a changed frame is recomputed."""
    length = 6
    planes = clip(length, seed=22)
    weights = str(tiny_weights[5])

    def render(client, frames: dict[int, np.ndarray], order) -> tuple[list[np.ndarray], dict]:
        before = client.stats()
        with client.open_session(frames=5, width=W, height=H, sample_type="float", weights=weights) as session:
            outs = [session.process(n, window_of(n, len(frames), 5), frames) for n in order]
        after = client.stats()
        return outs, {k: after[k] - before[k] for k in ("stage1_evals", "stage2_evals", "output_cache_hits")}

    with WorkerClient(worker_endpoint, autostart=False) as client:
        first, cost = render(client, planes, range(length))
        assert cost == {"stage1_evals": length + 2, "stage2_evals": length, "output_cache_hits": 0}
        again, cost = render(client, planes, range(length))  # the vspreview reload: nothing runs
        assert cost == {"stage1_evals": 0, "stage2_evals": 0, "output_cache_hits": length}
        for a, b in zip(first, again, strict=True):
            assert np.array_equal(a, b)
        # The same frames as a clip that starts one frame later: interior windows are the same contents.
        shifted = {i: planes[i + 1] for i in range(length - 1)}
        outs, cost = render(client, shifted, [1])  # window (0,0,1,2,3) = frames (1,1,2,3,4) of planes
        assert cost == {"stage1_evals": 1, "stage2_evals": 1, "output_cache_hits": 0}  # only (1,1,2) is new
        assert np.abs(outs[0] - reference(weights, (1, 1, 2, 3, 4), planes)).max() <= 1e-5
        outs, cost = render(client, shifted, [2])  # window (0..4) = frames 1..5 of planes: frame 3's output
        assert cost == {"stage1_evals": 0, "stage2_evals": 0, "output_cache_hits": 1}
        assert np.array_equal(outs[0], first[3])
        # One changed pixel in frame 3: every window that holds it is recomputed, and matches the model.
        changed = dict(planes)
        changed[3] = planes[3].copy()
        changed[3][0, 0, 0] += 0.25
        outs, cost = render(client, changed, [3])
        assert cost == {"stage1_evals": 3, "stage2_evals": 1, "output_cache_hits": 0}
        assert np.abs(outs[0] - reference(weights, window_of(3, length, 5), changed)).max() <= 1e-5


def test_frame_digest_names_content_shape_and_type():
    from worker.session import frame_digest

    a = np.zeros((3, 4, 6), np.float32)
    assert frame_digest(a) == frame_digest(a.copy())
    assert frame_digest(a) != frame_digest(a.reshape(3, 6, 4))
    assert frame_digest(a) != frame_digest(a.astype(np.float16))
    b = a.copy()
    b[2, 3, 5] = 1e-7
    assert frame_digest(a) != frame_digest(b)
    assert frame_digest(b[:, ::2]) == frame_digest(np.ascontiguousarray(b[:, ::2]))


def test_frames3_and_half_samples(worker_endpoint, tiny_weights):
    planes = clip(4, np.float16, seed=1)
    with WorkerClient(worker_endpoint, autostart=False) as client:
        with client.open_session(frames=3, width=W, height=H, sample_type="half",
                                 weights=str(tiny_weights[3])) as session:
            for n in range(4):
                out = session.process(n, window_of(n, 4, 3), planes)
                ref = reference(tiny_weights[3], window_of(n, 4, 3), planes)
                assert np.abs(out - ref).max() <= 1e-5


def test_scene_cut_windows_are_cached_by_their_indices(worker_endpoint, tiny_weights):
    """A window with repeated indices (a scene cut) gets exactly model(window), never a neighbour's result."""
    planes = clip(6, seed=2)
    windows = [(0, 1, 2, 3, 4), (1, 2, 3, 3, 3), (1, 2, 3, 4, 5), (3, 3, 3, 4, 5)]
    with WorkerClient(worker_endpoint, autostart=False) as client:
        with client.open_session(frames=5, width=W, height=H, sample_type="float",
                                 weights=str(tiny_weights[5])) as session:
            for n, w in enumerate(windows):
                assert np.abs(session.process(n, w, planes) - reference(tiny_weights[5], w, planes)).max() <= 1e-5


def test_concurrent_threads_get_correct_frames(worker_endpoint, tiny_weights):
    length = 6
    planes = clip(length, seed=3)
    results: dict[int, np.ndarray] = {}
    errors: list[Exception] = []
    with WorkerClient(worker_endpoint, autostart=False) as client:
        session = client.open_session(frames=5, width=W, height=H, sample_type="float", weights=str(tiny_weights[5]))

        def render(ns):
            try:
                for n in ns:
                    results[n] = session.process(n, window_of(n, length, 5), planes)
            except Exception as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=render, args=(range(k, length, 3),)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        session.close()
    assert not errors
    for n in range(length):
        assert np.abs(results[n] - reference(tiny_weights[5], window_of(n, length, 5), planes)).max() <= 1e-5


def raw_request(endpoint: str, parts: list[bytes]) -> dict:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(parts)
        assert sock.poll(10_000), "the worker did not answer a bad message"
        return json.loads(sock.recv_multipart()[0])
    finally:
        sock.close()


def header(**fields) -> bytes:
    return json.dumps({"v": P.PROTOCOL_VERSION, "id": 5, **fields}).encode()


@pytest.mark.parametrize("parts, code", [
    ([b"garbage"], P.BAD_REQUEST),
    ([b"[1]"], P.BAD_REQUEST),
    ([json.dumps({"v": 0, "op": "open_session", "id": 1}).encode()], P.VERSION_MISMATCH),
    ([header(op="reboot")], P.BAD_REQUEST),
    ([header(op="ping"), b"extra"], P.BAD_REQUEST),
    ([header(op="process", session="nosuch", n=0, window=[0, 1, 2, 3, 4], buffers=[])], P.UNKNOWN_SESSION),
    ([header(op="open_session", frames=5, width=64, height=48, sample_type="float")], P.BAD_REQUEST),
    ([header(op="close_session", session="a/b")], P.BAD_REQUEST),
])
def test_bad_messages_get_error_replies_and_the_worker_goes_on(worker_endpoint, parts, code):
    reply = raw_request(worker_endpoint, parts)
    assert reply["status"] == "error" and reply["code"] == code and reply["message"]
    with WorkerClient(worker_endpoint, autostart=False) as client:
        assert client.ping()["status"] == "ok"


def test_process_with_wrong_buffer_size_is_refused(worker_endpoint, tiny_weights):
    with WorkerClient(worker_endpoint, autostart=False) as client:
        session = client.open_session(frames=5, width=W, height=H, sample_type="float", weights=str(tiny_weights[5]))
        desc = {"index": 0, "shape": [3, H, W], "dtype": "float32"}
        reply = raw_request(worker_endpoint, [header(op="process", session=session.id, n=0, window=[0, 0, 0, 1, 2],
                                                     buffers=[desc]), b"\0" * 100])
        assert reply["code"] == P.BAD_REQUEST and "bytes" in reply["message"]
        planes = clip(3)
        assert session.process(0, (0, 0, 0, 1, 2), planes).shape == (3, H, W)  # still serving
        session.close()


def test_open_session_errors_are_clear(worker_endpoint, tiny_weights, tmp_path):
    with WorkerClient(worker_endpoint, autostart=False) as client:
        with pytest.raises(ModelError, match="does not exist"):
            client.open_session(frames=5, width=W, height=H, sample_type="float", weights=str(tmp_path / "no.st"))
        with pytest.raises(ModelError, match="frames=3"):
            client.open_session(frames=5, width=W, height=H, sample_type="float", weights=str(tiny_weights[3]))
        junk = tmp_path / "junk.safetensors"
        junk.write_bytes(b"not weights")
        with pytest.raises(ModelError, match="not a safetensors"):
            client.open_session(frames=5, width=W, height=H, sample_type="float", weights=str(junk))
        if not torch.cuda.is_available():
            with pytest.raises(ConfigError, match="no CUDA"):
                client.open_session(frames=5, width=W, height=H, sample_type="float", weights=str(tiny_weights[5]),
                                    device="cuda")
        with pytest.raises(ConfigError, match="needs a CUDA"):
            client.open_session(frames=5, width=W, height=H, sample_type="float", weights=str(tiny_weights[5]),
                                device="cpu", precision="fp16")
        with pytest.raises(ValueError, match="sample_type"):
            client.open_session(frames=5, width=W, height=H, sample_type="int", weights=str(tiny_weights[5]))


@pytest.fixture(scope="module")
def small_worker(isolated_runtime_dir, tiny_weights, tmp_path_factory):
    """A worker with a model manifest and a cache of 0.1 MiB (two 64x48 float32 tensors)."""
    import shutil

    from conftest import new_endpoint, spawn_worker, stop_worker

    from worker.registry import file_sha256

    tmp_path = tmp_path_factory.mktemp("manifest")
    shutil.copy(tiny_weights[5], tmp_path / "good.safetensors")
    shutil.copy(tiny_weights[5], tmp_path / "bad.safetensors")
    digest = file_sha256(tmp_path / "good.safetensors")
    manifest = tmp_path / "plugin_manifest.yaml"
    manifest.write_text(
        "models:\n"
        f"  - {{name: good, file: good.safetensors, sha256: {digest}, preset: tiny, frames: 5}}\n"
        f"  - {{name: bad, file: bad.safetensors, sha256: '{'0' * 64}', preset: tiny, frames: 5}}\n"
    )
    endpoint = new_endpoint(isolated_runtime_dir, "small")
    proc = spawn_worker(endpoint, "--manifest", str(manifest), "--cache-mb", "0.1")
    yield endpoint
    stop_worker(proc)


def test_manifest_models_and_sha256(small_worker, tiny_weights):
    endpoint = small_worker
    planes = clip(3)
    with WorkerClient(endpoint, autostart=False) as client:
        with client.open_session(frames=5, width=W, height=H, sample_type="float", model="good") as session:
            out = session.process(0, (0, 0, 0, 1, 2), planes)
            assert np.abs(out - reference(tiny_weights[5], (0, 0, 0, 1, 2), planes)).max() <= 1e-5
        with pytest.raises(ModelError, match="sha256"):
            client.open_session(frames=5, width=W, height=H, sample_type="float", model="bad")
        with pytest.raises(ModelError, match="known models"):
            client.open_session(frames=5, width=W, height=H, sample_type="float", model="nosuch")
        with pytest.raises(ModelError, match="frames=5"):
            client.open_session(frames=3, width=W, height=H, sample_type="float", model="good")


def test_eviction_answers_need_frames_and_the_client_recovers(small_worker, tiny_weights):
    # 0.1 MiB holds two 64x48 float32 tensors: almost every request finds its frames evicted.
    endpoint = small_worker
    length = 6
    planes = clip(length, seed=4)
    with WorkerClient(endpoint, autostart=False) as client:
        with client.open_session(frames=5, width=W, height=H, sample_type="float",
                                 weights=str(tiny_weights[5])) as session:
            order = [0, 1, 2, 5, 0, 3]
            outs = [session.process(n, window_of(n, length, 5), planes) for n in order]
        stats = client.stats()
    assert stats["need_frames_replies"] > 0 and stats["cache_evictions"] > 0
    assert stats["cache_bytes"] <= 0.1 * 2**20
    for n, out in zip(order, outs, strict=True):
        assert np.abs(out - reference(tiny_weights[5], window_of(n, length, 5), planes)).max() <= 1e-5


def test_tiled_session_matches_untiled(worker_endpoint, tiny_weights):
    planes = clip(5, seed=5)
    window = (0, 1, 2, 3, 4)
    with WorkerClient(worker_endpoint, autostart=False) as client:
        kwargs = dict(frames=5, width=W, height=H, sample_type="float", weights=str(tiny_weights[5]))
        with client.open_session(**kwargs) as whole, client.open_session(**kwargs, tile=(40, 32), overlap=16) as tiled:
            assert tiled.info["tile"] == [40, 32]
            a = whole.process(2, window, planes)
            b = tiled.process(2, window, planes)
    diff = np.abs(a - b)
    # Tiles see less context than the whole frame, so they differ a little; the tiny random model has a wide
    # receptive field relative to 64x48 (measured here: max 0.009, mean 0.0006).
    assert 0 < diff.max() < 0.05 and diff.mean() < 0.005


def test_one_worker_per_endpoint_and_sigterm_shuts_down_cleanly(start_worker):
    endpoint, proc = start_worker()
    second = subprocess.run([sys.executable, "-m", "worker", "--endpoint", endpoint], env=worker_env(),
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 3 and f"pid {proc.pid}" in second.stderr
    with WorkerClient(endpoint, autostart=False) as client:
        assert client.ping()["pid"] == proc.pid
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert not P.ipc_path(endpoint).exists()
    assert proc.stdout.read() == b""  # nothing on stdout, ever


@pytest.mark.slow
def test_session_expiry_idle_timeout_and_cli_status_stop(start_worker, tiny_weights):
    endpoint, proc = start_worker("--idle-timeout", "2", "--session-timeout", "1")
    client = WorkerClient(endpoint, autostart=False)
    client.open_session(frames=5, width=W, height=H, sample_type="float", weights=str(tiny_weights[5]))
    client.close()  # a vanished client: its session is never closed
    status = subprocess.run([sys.executable, "-m", "worker", "status", "--endpoint", endpoint], env=worker_env(),
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and json.loads(status.stdout)["pid"] == proc.pid
    t0 = time.monotonic()
    assert proc.wait(timeout=20) == 0  # the session expires, then the worker exits by itself
    assert time.monotonic() - t0 < 15
    stopped = subprocess.run([sys.executable, "-m", "worker", "stop", "--endpoint", endpoint], env=worker_env(),
                             capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 1 and f"erdn worker --endpoint {endpoint}" in stopped.stderr


# ---------------------------------------------------------------- in-process parts (real model, real onnxruntime)


def test_tiling_blends_exactly_for_a_local_stage():
    """With a per-pixel stage, overlapping tiles blended by the feathered weights reproduce the whole frame."""
    from worker.tiling import plan_tile, run_tiled

    x = torch.rand(2, 3, 3, 40, 56)

    def stage(t):
        return t[:, 0] * 0.5 + t[:, 1] * t[:, 2]

    for tile, overlap in [((16, 24), 8), ((24, 16), 0), ((40, 56), 16), ((32, 16), 15)]:
        torch.testing.assert_close(run_tiled(stage, x, tile, overlap), stage(x), atol=1e-6, rtol=0)
    assert plan_tile((1088, 1920), None, 16, 4 * 1920 * 1088) is None
    th, tw = plan_tile((2160, 3840), None, 16, 1920 * 1088)
    assert th * tw <= 1920 * 1088 and th % 8 == 0 and tw % 8 == 0
    assert plan_tile((48, 64), (40, 32), 16, 10**9) == (32, 40)


def test_one_batch_computes_shared_stage1_once(tiny_weights):
    """Concurrent requests in one batch: each distinct triplet runs once, and results equal model(window)."""
    from worker.session import SessionManager

    manager = SessionManager(device="cpu", cache_bytes=1 << 26)
    info = manager.open(P.SessionSpec(5, W, H, "float", weights=str(tiny_weights[5])).to_header())
    planes = clip(6, seed=6)
    replies: dict[int, tuple] = {}
    items = []
    for n in (2, 3):  # windows (0..4) and (1..5) share the triplets (1,2,3) and (2,3,4)
        window = window_of(n, 6, 5)
        head = P.request("process", n, session=info["session"], n=n, window=list(window),
                         buffers=[P.frame_descriptor(i, planes[i]) for i in window])
        items.append((head, [memoryview(planes[i]) for i in window], lambda r, n=n: replies.__setitem__(n, r)))
    manager.process_batch(items)
    stats = manager.stats.snapshot()
    assert (stats["stage1_evals"], stats["stage2_evals"], stats["batches"]) == (4, 2, 1)
    assert (stats["cache_misses"], stats["cache_hits"], stats["forward_calls"]) == (4, 2, 2)
    for n in (2, 3):
        header, buffers = replies[n]
        assert header["status"] == "ok"
        out = buffers[0]
        assert np.abs(out - reference(tiny_weights[5], window_of(n, 6, 5), planes)).max() <= 1e-5

    # Two more clips of the same model and size, one request each. The first has the frames of the first
    # session: its window's output is found in the cache (by content), nothing runs. The other's three
    # triplets run in one stage-1 call.
    other = clip(5, seed=9)
    items = []
    for k in range(2):
        sid = manager.open(P.SessionSpec(5, W, H, "float", weights=str(tiny_weights[5])).to_header())["session"]
        src = planes if k == 0 else other
        head = P.request("process", 10 + k, session=sid, n=2, window=[0, 1, 2, 3, 4],
                         buffers=[P.frame_descriptor(i, src[i]) for i in range(5)])
        items.append((head, [memoryview(src[i]) for i in range(5)], lambda r, k=k: replies.__setitem__(10 + k, r)))
    manager.process_batch(items)
    stats = manager.stats.snapshot()
    assert (stats["stage1_evals"], stats["stage2_evals"], stats["forward_calls"]) == (4 + 3, 2 + 1, 2 + 2)
    assert stats["output_cache_hits"] == 1
    for k, src in enumerate((planes, other)):
        out = replies[10 + k][1][0]
        assert np.abs(out - reference(tiny_weights[5], (0, 1, 2, 3, 4), src)).max() <= 1e-5


def test_onnx_backend_matches_torch(tiny_weights):
    from worker.backends import OnnxBackend, TorchBackend
    from worker.registry import resolve

    weights = resolve(None, str(tiny_weights[5]))
    cpu = torch.device("cpu")
    onnx_backend, torch_backend = OnnxBackend(weights, cpu, "fp32"), TorchBackend(weights, cpu, "fp32")
    x = torch.rand(2, 3, 3, H, W)
    for stage in ("stage1", "stage2"):
        a, b = getattr(torch_backend, stage)(x), getattr(onnx_backend, stage)(x)
        assert a.shape == b.shape == (2, 3, H, W)
        assert (a - b).abs().max().item() <= 1e-5


@pytest.mark.slow
def test_onnx_worker_session_matches_model(start_worker, tiny_weights):
    """The whole path with --backend onnx (graphs exported once into the per-user cache, keyed by sha256)."""
    endpoint, _ = start_worker("--backend", "onnx")
    planes = clip(5, seed=7)
    with WorkerClient(endpoint, autostart=False, timeout=60) as client:
        with client.open_session(frames=5, width=W, height=H, sample_type="float",
                                 weights=str(tiny_weights[5])) as session:
            assert session.info["backend"] == "onnx"
            for n in range(3):
                out = session.process(n, window_of(n, 5, 5), planes)
                assert np.abs(out - reference(tiny_weights[5], window_of(n, 5, 5), planes)).max() <= 1e-5


def test_client_checks_its_arguments(worker_endpoint, tiny_weights):
    with WorkerClient(worker_endpoint, autostart=False) as client:
        with client.open_session(frames=5, width=W, height=H, sample_type="float",
                                 weights=str(tiny_weights[5])) as session:
            planes = clip(5)
            with pytest.raises(ValueError, match="5 source indices"):
                session.process(0, (0, 1, 2), planes)
            with pytest.raises(ValueError, match="no frame for source index 7"):
                session.process(0, (0, 1, 2, 3, 7), planes)
            with pytest.raises(ValueError, match="this session takes"):
                session.process(0, (0, 1, 2, 3, 4), {i: a.astype(np.float16) for i, a in planes.items()})


def test_a_busy_worker_is_waited_for_beyond_the_timeout(worker_endpoint, tiny_weights):
    """A request that computes longer than the client's timeout succeeds while the worker reports it is busy."""
    h, w = 96, 128
    rng = np.random.default_rng(8)
    planes = {i: rng.random((3, h, w), dtype=np.float32) for i in range(5)}
    with WorkerClient(worker_endpoint, autostart=False) as client:
        with client.open_session(frames=5, width=w, height=h, sample_type="float",
                                 weights=str(tiny_weights[5])) as session:
            # Four stage evaluations at 128x96 take about a second here; the client waits up to 20 timeouts
            # (6 s) while the worker says it is computing.
            client.timeout = 0.3
            out = session.process(2, (0, 1, 2, 3, 4), planes)
            client.timeout = 30
    assert out.shape == (3, h, w) and np.isfinite(out).all()


def test_random_messages_always_get_a_reply(worker_endpoint, tiny_weights):
    """Two hundred malformed or random messages: each is answered, and the worker still renders afterwards."""
    rng = np.random.default_rng(10)
    keys = ["v", "op", "id", "frames", "width", "height", "sample_type", "weights", "model", "tile", "overlap",
            "session", "n", "window", "buffers", "device", "precision"]
    values = [None, True, -1, 0, 1, 3, 5, 2**70, 1.5, "", "x", "float", "cpu", [], [1, 2], [0, 0, 0, 0, 0],
              {"index": 0}, [{"index": 0, "shape": [3, 4, 4], "dtype": "float32"}], "ping", "process",
              "open_session", "close_session", "stats"]  # never "shutdown": the worker is shared
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(worker_endpoint)
    try:
        for _ in range(200):
            kind = rng.integers(3)
            if kind == 0:
                parts = [rng.bytes(int(rng.integers(0, 64)))]
            else:
                head = {k: values[rng.integers(len(values))] for k in rng.choice(keys, int(rng.integers(0, 8)))}
                if kind == 2:
                    head.update(v=P.PROTOCOL_VERSION, id=int(rng.integers(0, 2**31)))
                parts = [json.dumps(head).encode()] + [rng.bytes(int(rng.integers(0, 300)))
                                                       for _ in range(int(rng.integers(0, 3)))]
            sock.send_multipart(parts)
            assert sock.poll(10_000), f"no reply to {parts[0][:80]!r}"
            reply = json.loads(sock.recv_multipart()[0])
            assert reply["status"] in ("ok", "error")
            if reply["status"] == "error":
                assert reply["code"] in P.ERROR_CODES and reply["code"] != P.INTERNAL and reply["message"]
    finally:
        sock.close()
    planes = clip(5)
    with WorkerClient(worker_endpoint, autostart=False) as client:
        with client.open_session(frames=5, width=W, height=H, sample_type="float",
                                 weights=str(tiny_weights[5])) as session:
            out = session.process(2, (0, 1, 2, 3, 4), planes)
    assert np.abs(out - reference(tiny_weights[5], (0, 1, 2, 3, 4), planes)).max() <= 1e-5


def test_frame_digest_from_a_known_content_digest_is_the_same_name():
    from worker.session import content_digest, frame_digest

    a = np.random.default_rng(0).random((3, 5, 7), dtype=np.float32)
    assert frame_digest(a, content_digest(memoryview(a).cast("B"))) == frame_digest(a)
    assert frame_digest(a.astype(np.float16)) != frame_digest(a.astype(np.float16), content_digest(a.data))


def test_reduced_resolution_model_pads_to_its_own_stride_whole_and_tiled(worker_endpoint, tmp_path):
    """A stem-2, 5-frame model (stride 16) in the real worker: frames off that stride are padded inside and
    cropped back, each output equal to the model's own forward, with stage-1 results reused across consecutive
    frames; a tiled session rounds its tiles to multiples of 16."""
    from worker.bench.harness import random_weights

    weights = random_weights("tiny_stem", 3, tmp_path / "stem.safetensors", frames=5)
    h, w, length = 37, 50, 6
    rng = np.random.default_rng(9)
    planes = {i: rng.random((3, h, w), dtype=np.float32) for i in range(length)}
    with WorkerClient(worker_endpoint, autostart=False) as client:
        kwargs = dict(frames=5, width=w, height=h, sample_type="float", weights=str(weights))
        before = client.stats()["stage1_evals"]
        with client.open_session(**kwargs) as whole:
            outs = {n: whole.process(n, window_of(n, length, 5), planes) for n in (2, 3)}
        evals = client.stats()["stage1_evals"] - before
        with client.open_session(**kwargs, tile=(40, 32), overlap=8) as tiled:
            assert tiled.info["tile"] == [48, 32]  # (W, H) rounded up to the model's stride of 16
            b = tiled.process(2, window_of(2, length, 5), planes)
    assert evals == 4  # triplets at 1, 2, 3, then only 4: the two outputs share two stage-1 results
    for n, a in outs.items():
        ref = reference(weights, window_of(n, length, 5), planes)
        assert np.abs(ref - planes[n]).max() > 0.01  # the random model does change the frame
        assert a.shape == (3, h, w) and np.abs(a - ref).max() <= 1e-5
    assert b.shape == (3, h, w) and np.isfinite(b).all() and np.abs(b - outs[2]).mean() < 0.01
