"""Any length, constant resources (issue 28), with real processes: vspipe, the worker, ffmpeg, Ray.

The soak tests render thousands of frames at 32x32 and read every process's open file descriptors and
resident memory from /proc while it runs (``benchmarks/proc_watch.py``). Each asserts that, after a
warm-up, no process gains more than FD_SLACK descriptors or its stated MiB of memory, and they run
under an open-file limit of NOFILE, so a leak of even one socket per frame fails within a few hundred
frames. The vspipe test renders with one lane (batch=1), where VapourSynth's own memory is flat, so its
bound is tight; with deblur's default two lanes (``erdn deblur``, the farm) VapourSynth R81 itself holds
up to ~90 MiB more at 32x32 for the first ~20,000 frames (measured with a native std.Expr in place of
the deblur callback: the same), so vspipe's bound there is VS_LANES_MIB.

The clips' content repeats every PERIOD frames, so the worker's content-keyed cache answers most
windows and a clip's length costs transport (every frame still crosses the wire once), not model
time; the model runs on the first period.

Beside them: the client's sockets stay few whatever the threads do, a timed-out socket is closed,
loaded models are evicted past --models-mb (never one in use), and a session ends with its client
(its process killed, or its heartbeats stopped).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq
from conftest import new_endpoint, spawn_worker, stop_worker, worker_env

from erdn_vs.client import WorkerBusy, WorkerClient, WorkerUnavailable
from worker.model import build_model, save_model

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
from proc_watch import Watch, usage  # noqa: E402

VSPIPE = Path(sys.executable).parent / "vspipe"
SOAK_VPY = REPO / "tests" / "vpy" / "soak.vpy"
PATTERN_VPY = REPO / "tests" / "vpy" / "deblur_pattern.vpy"
NOFILE = 256  # open-file limit of every soaked process: a leak of 2 fds per frame fails by frame ~120
PERIOD = 48  # frames after which the soak clips' content repeats
WARMUP = 1000  # frames before the flat phase starts (300 for the farm's 1,100-frame chunks)
FD_SLACK = 4  # open fds a process may gain after warm-up
RSS_SLACK_MIB = {"vspipe": 8, "worker": 16, "ffmpeg": 8}  # resident memory a process may gain after warm-up
VS_LANES_MIB = 96  # vspipe's bound with deblur's two lanes (see above)
SIZE = 32

needs_vspipe = pytest.mark.skipif(not VSPIPE.exists(), reason=f"vspipe not found next to {sys.executable}")


def lower_nofile() -> None:
    """preexec_fn: the child (and everything it starts) may hold at most NOFILE open files."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))


def ffmpeg_exe() -> str:
    import shutil

    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def repeating_video(path: Path, frames: int) -> Path:
    """A lossless (FFV1) SIZExSIZE file whose frames repeat every PERIOD: decoded, each period is identical."""
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={SIZE}x{SIZE}:rate=24,loop=loop=-1:size={PERIOD}", "-frames:v", str(frames),
                    "-c:v", "ffv1", str(path)], check=True, capture_output=True, timeout=300)
    return path


def count_frames(path: Path) -> int:
    out = subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(path), "-map", "0:v:0",
                          "-c", "copy", "-f", "framecrc", "-"], check=True, capture_output=True, timeout=300).stdout
    return sum(1 for line in out.decode().splitlines() if line and not line.startswith("#"))


class Progress:
    """Frames the worker at ``endpoint()`` has served (its stats), or None until one answers."""

    def __init__(self, endpoint) -> None:
        self._endpoint = endpoint
        self._clients: dict[str, WorkerClient] = {}

    def __call__(self) -> int | None:
        endpoint = self._endpoint()
        if endpoint is None:
            return None
        client = self._clients.get(endpoint)
        if client is None:
            client = self._clients[endpoint] = WorkerClient(endpoint, autostart=False, timeout=2)
        try:
            return int(client.stats()["frames_served"])
        except WorkerUnavailable:
            return None

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


def run_watched(cmd: list[str], log: Path, progress: Progress) -> tuple[int, Watch]:
    """Run ``cmd`` under the lowered open-file limit, its stderr to ``log``, watching its process tree;
    returns its exit status and the watch."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=worker_env(), preexec_fn=lower_nofile)
        with Watch(Watch.tree(lambda: [proc.pid]), progress) as watch:
            rc = proc.wait(timeout=900)  # a hang guard, not a bound
    return rc, watch


def assert_flat(watch: Watch, bounds: dict[str, int], warmup: int, min_frames: int) -> None:
    """Every process of a role in ``bounds`` (role -> MiB) was seen past its warm-up for ``min_frames``
    frames, and after it gained at most FD_SLACK fds and its role's MiB of resident memory.

    ``min_frames`` is half of what follows the warm-up: on a loaded machine the last sample before a process
    ends can come long before its last frame (a chunk's ffmpeg was seen for 690 of 800 frames under load).
    The open-file limit catches a leak whatever the sampling sees."""
    assert not watch.errors, watch.errors
    grown = watch.growth(warmup)
    for g in grown:
        print(g.describe())
    assert set(bounds) <= {g.role for g in grown}, f"not every process got past its warm-up: {grown}"
    for g in grown:
        if g.role not in bounds:
            continue
        assert g.frames >= min_frames and g.samples >= 5, g.describe()
        assert g.fd_growth <= FD_SLACK, g.describe()
        assert g.rss_growth_kib <= bounds[g.role] * 1024, g.describe()


def shutdown(endpoint: str) -> None:
    with WorkerClient(endpoint, autostart=False, timeout=5) as client:
        try:
            client.shutdown()
        except WorkerUnavailable:
            pass


# ---------------------------------------------------------------- soak: vspipe, erdn deblur, the farm


@needs_vspipe
@pytest.mark.slow
def test_soak_vspipe_5000_frames_with_an_autostarted_worker(isolated_runtime_dir, tiny_weights, tmp_path):
    length = 5000
    endpoint = new_endpoint(isolated_runtime_dir, "soak")
    out, log = tmp_path / "out.raw", tmp_path / "vspipe.log"
    cmd = [str(VSPIPE), "-a", f"weights={tiny_weights[5]}", "-a", f"endpoint={endpoint}", "-a", f"length={length}",
           "-a", f"period={PERIOD}", "-a", f"width={SIZE}", "-a", f"height={SIZE}", "-a", "batch=1", str(SOAK_VPY),
           str(out)]
    progress = Progress(lambda: endpoint)
    try:
        rc, watch = run_watched(cmd, log, progress)
        text = log.read_text(errors="replace")
        assert rc == 0, text[-3000:]
        assert out.stat().st_size == length * SIZE * SIZE * 3 // 2  # YUV420P8
        assert_flat(watch, {"vspipe": RSS_SLACK_MIB["vspipe"], "worker": RSS_SLACK_MIB["worker"]}, WARMUP,
                    min_frames=2000)
    finally:
        progress.close()
        shutdown(endpoint)


@needs_vspipe
@pytest.mark.slow
def test_soak_erdn_deblur_3000_frame_file(isolated_runtime_dir, tiny_weights, tmp_path):
    length = 3000
    src = repeating_video(tmp_path / "long.mkv", length)
    out, log = tmp_path / "out.mkv", tmp_path / "deblur.log"
    endpoint = new_endpoint(isolated_runtime_dir, "soakcli")
    cmd = [sys.executable, "-m", "erdn_vs.cli", "deblur", str(src), "-o", str(out), "--weights", str(tiny_weights[5]),
           "--endpoint", endpoint, "--lossless"]
    progress = Progress(lambda: endpoint)
    try:
        rc, watch = run_watched(cmd, log, progress)
        assert rc == 0, log.read_text(errors="replace")[-3000:]
        assert count_frames(out) == length
        assert_flat(watch, {**RSS_SLACK_MIB, "vspipe": VS_LANES_MIB}, WARMUP, min_frames=1000)
    finally:
        progress.close()
        shutdown(endpoint)


@needs_vspipe
@pytest.mark.slow
def test_soak_farm_chunks_longer_than_1024_frames(tiny_weights, tmp_path):
    """Two chunks of 1,100 frames on one actor: its vspipe, ffmpeg and worker get NOFILE as soon as seen."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    length, chunk = 2200, 1100
    src = repeating_video(tmp_path / "film.mkv", length)
    out, log = tmp_path / "out.mkv", tmp_path / "farm.log"
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 2})
    me = os.getpid()

    def farm_worker() -> str | None:
        from proc_watch import descendants, endpoint_of, role

        return next((endpoint_of(pid) for pid in descendants([me]) if role(pid) == "worker"), None)

    progress = Progress(farm_worker)
    try:
        cmd = [sys.executable, "-m", "erdn_vs.cli", "deblur", str(src), "-o", str(out), "--weights",
               str(tiny_weights[5]), "--lossless", "--ray", cluster.address, "--chunk-frames", str(chunk),
               "--actors", "1"]
        with open(log, "wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=worker_env())
            with Watch(Watch.tree(lambda: [me]), progress, nofile=NOFILE) as watch:
                rc = proc.wait(timeout=900)
        assert rc == 0, log.read_text(errors="replace")[-3000:]
        assert count_frames(out) == length
        vspipes = {pid for s in watch.samples for pid, (r, _) in s.procs.items() if r == "vspipe"}
        assert len(vspipes) == 2  # one per chunk, both watched
        assert all(watch.limits[pid] == NOFILE for pid in vspipes)  # and both ran under the lowered limit
        assert_flat(watch, {**RSS_SLACK_MIB, "vspipe": VS_LANES_MIB}, 300, min_frames=(chunk - 300) // 2)
    finally:
        progress.close()
        cluster.shutdown()


# ---------------------------------------------------------------- the client's sockets


def test_client_sockets_stay_few_whatever_the_threads(start_worker, tiny_weights):
    """Like VapourSynth, every request comes from a thread that ends after it: the client keeps its few sockets."""
    endpoint, _ = start_worker()
    rng = np.random.default_rng(0)
    frames = {i: rng.random((3, SIZE, SIZE), dtype=np.float32) for i in range(40)}
    with WorkerClient(endpoint, autostart=False) as client:
        session = client.open_session(frames=5, width=SIZE, height=SIZE, sample_type="float",
                                      weights=str(tiny_weights[5]))

        def render(n: int) -> None:
            window = tuple(min(max(n + d, 0), 39) for d in range(-2, 3))
            session.process(n, window, frames)

        base = None
        for rnd in range(8):
            threads = [threading.Thread(target=render, args=(n,)) for n in range(rnd * 5, rnd * 5 + 5)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            fds = usage(os.getpid()).fds
            base = fds if rnd == 1 else base
            if rnd > 1:
                assert fds <= base + 2, f"round {rnd}: {fds} open fds, {base} after round 1"
        assert client._pool.made <= 5  # at most one per request in flight, then reused
        assert client.open_sockets() <= 6
        session.close()


def test_a_timed_out_socket_is_closed_not_kept(mute_peer):
    """A peer that never answers: each timed-out request closes its socket, so the fds stay where they were."""
    endpoint, _ = mute_peer
    with WorkerClient(endpoint, autostart=False, timeout=0.2) as client:
        client._ready = True  # the mute peer would fail the first ping: go straight to the request
        before = None
        for k in range(6):
            client._ready = True
            with pytest.raises(WorkerUnavailable, match="did not answer a 'stats' request"):
                client._request("stats")
            time.sleep(0.1)  # ZeroMQ closes a socket's fds in its own thread
            before = before or usage(os.getpid()).fds
            assert usage(os.getpid()).fds <= before + 1, f"after {k + 1} timeouts"
        assert client._ping_reply() is None  # an unanswered ping closes its socket too
        assert client.open_sockets() == 0


# ---------------------------------------------------------------- bounded model memory


def test_loaded_models_are_evicted_past_models_mb_never_one_in_use(start_worker, tmp_path):
    paths = []
    for k in range(10):
        torch.manual_seed(100 + k)
        paths.append(save_model(build_model("tiny", frames=5), tmp_path / f"tiny{k}.safetensors"))
    size = sum(p.numel() * p.element_size() for p in build_model("tiny", frames=5).state_dict().values())
    budget_mb = 2.5 * size / 2**20  # two models fit, a third does not
    endpoint, proc = start_worker("--models-mb", f"{budget_mb:.4f}")
    frame = np.random.default_rng(1).random((3, SIZE, SIZE), dtype=np.float32)
    kwargs = dict(frames=5, width=SIZE, height=SIZE, sample_type="float")

    def render_one(client: WorkerClient, path: Path, k: int) -> None:
        with client.open_session(weights=str(path), **kwargs) as s:
            s.process(0, (0, 0, 0, 0, 0), {0: frame + k / 100})

    rss = []
    with WorkerClient(endpoint, autostart=False) as client:
        for k, path in enumerate(paths):
            render_one(client, path, k)
            st = client.stats()
            assert st["models_resident"] <= 2 and st["models_bytes"] <= budget_mb * 2**20, st
            rss.append(usage(proc.pid).rss_kib)
        st = client.stats()
        assert (st["models_loaded"], st["models_evicted"], st["models_resident"]) == (10, 8, 2)
        print(f"worker RSS after each of 10 models (MiB): {[round(r / 1024, 1) for r in rss]}")
        # Unbounded, each tiny model costs the worker ~2.9 MiB (+26 MiB over ten); bounded, the last seven ~1.
        assert rss[-1] - rss[2] <= 8 * 1024, rss
        # A model in use stays, however many others come and go.
        held = client.open_session(weights=str(paths[0]), **kwargs)
        loaded = client.stats()["models_loaded"]
        for k, path in enumerate(paths[1:], 1):
            render_one(client, path, 20 + k)
            held.process(k, (k,) * 5, {k: frame + k / 50})
        st = client.stats()
        assert st["models_resident"] == 2 and st["models_loaded"] == loaded + 9, st
        again = client.open_session(weights=str(paths[0]), **kwargs)
        assert client.stats()["models_loaded"] == loaded + 9  # model 0 was never evicted: no reload
        again.close()
        held.close()


# ---------------------------------------------------------------- sessions end with their client


def render_pattern(endpoint: str, weights: Path, length: int, **popen) -> subprocess.Popen:
    cmd = [str(VSPIPE), "-a", f"weights={weights}", "-a", f"endpoint={endpoint}", "-a", f"length={length}", "-a",
           f"width={SIZE}", "-a", f"height={SIZE}", "-a", "autostart=0", str(PATTERN_VPY), "-"]
    return subprocess.Popen(cmd, env=worker_env(), **popen)


def stats(endpoint: str) -> dict:
    with WorkerClient(endpoint, autostart=False, timeout=5) as client:
        return client.stats()


@needs_vspipe
@pytest.mark.slow
def test_killed_vspipes_never_cost_the_next_renders_a_session(start_worker, tiny_weights):
    """--max-sessions 2, two renders SIGKILLed mid-way, then two new renders at once: both are served. Leases
    and the idle timeout are 10 minutes here, so only the client's process ending can free the sessions."""
    endpoint, worker = start_worker("--max-sessions", "2", "--session-timeout", "600", "--session-lease", "600")
    killed = [render_pattern(endpoint, tiny_weights[5], 2000, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True) for _ in range(2)]
    try:
        deadline = time.monotonic() + 120
        while not ((s := stats(endpoint))["sessions"] == 2 and s["frames_served"] >= 10):
            assert time.monotonic() < deadline, f"the two renders did not start: {s}"
            time.sleep(0.2)
    finally:
        for p in killed:  # .venv/bin/vspipe wraps the vspipe binary: kill the whole group
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    length = 30
    fresh = [render_pattern(endpoint, tiny_weights[5], length, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    for p in fresh:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode(errors="replace")[-2000:]
        assert len(out) == length * SIZE * SIZE * 3 // 2
    s = stats(endpoint)
    assert s["sessions_expired"] >= 2 and s["sessions"] == 0, s
    assert worker.poll() is None


CHILD_CLIENT = """
import sys, time
from erdn_vs.client import WorkerClient
c = WorkerClient(sys.argv[1], autostart=False)
s = c.open_session(frames=5, width=32, height=32, sample_type="float", weights=sys.argv[2])
print(s.id, s.lease, flush=True)
time.sleep(600)
"""


def test_a_session_ends_when_its_heartbeats_stop(isolated_runtime_dir, tiny_weights):
    """Over tcp the worker cannot see the client's process: the lease decides. A live, idle client keeps its
    session through several leases; a SIGKILLed one loses it, and the next client waits for that, not refused."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    lease = 1.0
    proc = spawn_worker(endpoint, "--max-sessions", "1", "--session-lease", str(lease), "--session-timeout", "600")
    kwargs = dict(frames=5, width=SIZE, height=SIZE, sample_type="float", weights=str(tiny_weights[5]))
    frame = np.random.default_rng(2).random((3, SIZE, SIZE), dtype=np.float32)
    try:
        with WorkerClient(endpoint, autostart=False) as client:
            session = client.open_session(**kwargs)
            assert session.lease == lease
            first = session.id
            time.sleep(4 * lease)  # idle, but its heartbeats go on
            session.process(0, (0,) * 5, {0: frame})
            assert session.id == first and client.stats()["sessions_expired"] == 0
            # The worker is full of live sessions: a second client waits one lease, then is refused.
            with WorkerClient(endpoint, autostart=False) as other, pytest.raises(WorkerBusy, match="--max-sessions"):
                other.open_session(**kwargs)
            session.close()
        child = subprocess.Popen([sys.executable, "-c", CHILD_CLIENT, endpoint, str(tiny_weights[5])],
                                 stdout=subprocess.PIPE, env=worker_env())
        sid, granted = child.stdout.readline().split()
        assert float(granted) == lease
        child.kill()
        child.wait()
        child.stdout.close()
        with WorkerClient(endpoint, autostart=False) as client:
            session = client.open_session(**kwargs)  # busy at first; the dead client's lease runs out meanwhile
            st = client.stats()
            assert [x["session"] for x in st["session_list"]] == [session.id] and sid != session.id
            assert st["sessions_expired"] == 1
            session.close()
    finally:
        stop_worker(proc)


def test_heartbeats_and_busy_hints_on_the_wire(start_worker, tiny_weights):
    """The protocol's optional fields: a ping's ``sessions`` (malformed is a clear error), a lease on open."""
    endpoint, _ = start_worker("--session-lease", "7")
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)

    def ask(op: str, **fields) -> dict:
        sock.send_multipart([json.dumps({"v": 1, "op": op, "id": 1, **fields}).encode()])
        assert sock.poll(30000)
        return json.loads(sock.recv_multipart()[0])

    try:
        opened = ask("open_session", frames=5, width=SIZE, height=SIZE, sample_type="float",
                     weights=str(tiny_weights[5]), heartbeat=True)
        assert opened["status"] == "ok" and opened["lease"] == 7
        assert ask("ping", sessions=[opened["session"], "abc123"])["heartbeats"] == 1  # unknown ids are ignored
        bad = ask("ping", sessions="not-a-list")
        assert bad["status"] == "error" and bad["code"] == "bad_request" and "'sessions'" in bad["message"]
        plain = ask("open_session", frames=5, width=SIZE, height=SIZE, sample_type="float",
                    weights=str(tiny_weights[5]))
        assert plain["status"] == "ok" and plain["lease"] is None  # an older client: no lease, the idle timeout
    finally:
        sock.close()
