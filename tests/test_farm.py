"""``erdn deblur --ray``: chunks on real Ray actors, each with a real worker, vspipe and ffmpeg.

The reference is the single-machine ``erdn deblur`` of the same file with the same options: the
farm's output must decode to the same frames, at the same timestamps, with the same audio.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from erdn_vs.farm.plan import Chunk, plan_chunks
from erdn_vs.farm.store import ChunkStore, count_frames
from erdn_vs.pipeline import graph, scenes, tools

VSPIPE = Path(sys.executable).parent / "vspipe"
pytestmark = pytest.mark.skipif(not VSPIPE.exists(), reason=f"vspipe not found next to {sys.executable}")

N = 24  # frames of the test clip
CUTS = (7, 19)  # scene starts: with --chunk-frames 6 the chunks are 0-6 | 7-12 | 13-18 | 19-23
CHUNK_FRAMES = "6"
EXPECTED_CHUNKS = [(0, 7), (7, 13), (13, 19), (19, 24)]


def ffmpeg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tools.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args],
                          check=True, capture_output=True)


def rows(path: Path, *args: str) -> list[list[str]]:
    """ffmpeg's per-frame/per-packet checksum rows (framemd5/framecrc), without the header."""
    out = ffmpeg("-i", str(path), *args, "-").stdout.decode()
    return [[f.strip() for f in line.split(",")] for line in out.splitlines() if line and not line.startswith("#")]


def fingerprint(path: Path) -> dict[str, list]:
    """Decoded video frames (timestamp, duration, md5), the video packets' container timestamps,
    and the audio packets (timestamps, sizes, crc)."""
    return {
        "frames": [r[2:] for r in rows(path, "-map", "0:v:0", "-f", "framemd5")],
        "video_pts": [r[2] for r in rows(path, "-map", "0:v:0", "-c", "copy", "-f", "framecrc")],
        "audio": [r[1:] for r in rows(path, "-map", "0:a:0", "-c", "copy", "-f", "framecrc")],
    }


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, Path]:
    """A real H.264 + AAC file of N frames, and a scene-cuts file for it."""
    d = tmp_path_factory.mktemp("farm")
    path = d / "film.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=24", "-f", "lavfi", "-i", "sine=frequency=440",
           "-frames:v", str(N), "-t", f"{N / 24:.4f}", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
           str(path))
    cuts = d / "cuts.txt"
    cuts.write_text("# scene starts\n" + "\n".join(map(str, CUTS)) + "\n")
    return path, cuts


def deblur_cmd(src: Path, out: Path, weights: Path, cuts: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "erdn_vs.cli", "deblur", str(src), "-o", str(out), "--weights", str(weights),
            "--lossless", "--scene-cuts", str(cuts), *extra]


@pytest.fixture(scope="module")
def single(clip, tiny_weights, worker_endpoint, tmp_path_factory) -> dict[str, list]:
    """The single-machine render everything here is compared with."""
    src, cuts = clip
    out = tmp_path_factory.mktemp("single") / "single.mkv"
    r = subprocess.run(deblur_cmd(src, out, tiny_weights[5], cuts, "--endpoint", worker_endpoint), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    fp = fingerprint(out)
    assert len(fp["frames"]) == N and fp["audio"]
    assert len({row[-1] for row in fp["frames"]}) > N // 2  # the frames differ: equal outputs mean something
    return fp


@pytest.fixture(scope="module")
def ray_cluster():
    """One Ray cluster (2 CPU slots) shared by this module's tests; the CLI connects to its address."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 2})
    yield cluster
    cluster.shutdown()


def farm_dirs(chunk_dir: Path, timeout: float = 300) -> tuple[Path, Path]:
    """(the render's chunk store, its scratch directory on this node), once the driver made them."""
    deadline = time.monotonic() + timeout
    while not (chunk_dir.is_dir() and any(chunk_dir.iterdir())):
        assert time.monotonic() < deadline, "the driver made no chunk store"
        time.sleep(0.2)
    store = next(chunk_dir.iterdir())
    return store, Path(tempfile.gettempdir()) / f"erdn-farm-{os.getuid()}" / store.name


def wait_for(what: str, find, proc: subprocess.Popen, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not (found := find()):
        assert proc.poll() is None, f"the driver ended before {what}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()


# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(("start", "end", "size", "cuts", "expected"), [
    (0, 24, 6, CUTS, EXPECTED_CHUNKS),  # boundaries move onto cuts 7 and 19; 13 is a plain boundary
    (0, 24, 6, (), [(0, 6), (6, 12), (12, 18), (18, 24)]),
    (0, 7, 6, (), [(0, 7)]),  # a 1-frame tail joins the last chunk (up to 1.25 x the size)
    (0, 8, 6, (), [(0, 6), (6, 8)]),
    (5, 17, 4, (9,), [(5, 9), (9, 13), (13, 17)]),  # --frames 5:17
    (0, 3, 1000, (1,), [(0, 3)]),
])
def test_plan_cuts_at_scene_changes_near_the_target(start, end, size, cuts, expected):
    chunks = plan_chunks(start, end, size, cuts)
    assert [(c.start, c.end) for c in chunks] == expected
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_plan_refuses_empty_ranges_and_sizes():
    with pytest.raises(ValueError, match="at least 1"):
        plan_chunks(0, 10, 0)
    with pytest.raises(ValueError, match="no frames"):
        plan_chunks(5, 5, 10)


class _FlakyRay:
    """Stands in for the ray module: init fails ``failures`` times the way a busy Ray client server does."""

    def __init__(self, failures: int) -> None:
        self.failures, self.inits, self.shutdowns = failures, 0, 0

    def init(self, **kwargs) -> None:
        self.inits += 1
        if self.inits <= self.failures:
            raise ConnectionAbortedError("Initialization failure from server:\nTraceback ...")

    def shutdown(self) -> None:
        self.shutdowns += 1


def test_ray_client_connection_is_retried_when_the_server_was_not_ready(monkeypatch):
    from erdn_vs.farm import driver

    monkeypatch.setattr(driver.time, "sleep", lambda s: None)
    ray = _FlakyRay(failures=driver.CLIENT_CONNECT_TRIES - 1)
    driver._connect(ray, "ray://127.0.0.1:10001")
    assert (ray.inits, ray.shutdowns) == (driver.CLIENT_CONNECT_TRIES, driver.CLIENT_CONNECT_TRIES - 1)
    ray = _FlakyRay(failures=driver.CLIENT_CONNECT_TRIES)
    with pytest.raises(tools.RenderError, match=r"^cannot start or reach the Ray cluster at 'ray://127.0.0.1:10001': "
                       r"Initialization failure from server:; start one"):
        driver._connect(ray, "ray://127.0.0.1:10001")
    ray = _FlakyRay(failures=1)  # not a Ray client address: nothing to retry
    with pytest.raises(tools.RenderError, match="cannot start or reach the Ray cluster at '10.0.0.1:6379'"):
        driver._connect(ray, "10.0.0.1:6379")
    assert ray.inits == 1


def test_store_keeps_a_chunk_only_with_all_its_frames(tmp_path):
    video = tmp_path / "three.nut"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=32x32:rate=24", "-frames:v", "3", "-c:v", "ffv1", str(video))
    store = ChunkStore(tmp_path / "chunks", "k", {"what": "test"})
    short = Chunk(0, 0, 4)
    with pytest.raises(tools.RenderError, match="3 frames instead of 4"):
        store.put(short, video.read_bytes())
    assert not store.done(short) and not list(store.dir.glob("chunk-*")) and not list(store.dir.glob(".*partial"))
    right = Chunk(1, 4, 7)
    assert count_frames(store.put(right, video.read_bytes())) == 3 and store.done(right)


def test_scene_cuts_mark_the_source_frames(clip):
    import vapoursynth as vs

    src, cuts = clip
    script = graph.build_script(src, weights="unused.safetensors", scene_cuts=scenes.read_scene_cuts(cuts))
    lines = [line for line in script.splitlines() if "erdn_vs.deblur(" not in line and "set_output" not in line]
    scope: dict = {}
    exec("\n".join(lines), scope)  # the script's own source and marking, up to the deblur call
    marked = [n for n in range(N) if scope["clip"].get_frame(n).props.get("_SceneChangePrev", 0)]
    assert marked == list(CUTS)
    assert isinstance(scope["clip"], vs.VideoNode)


def test_bad_scene_cuts_file_is_one_line(clip, tmp_path):
    src, _ = clip
    bad = tmp_path / "cuts.txt"
    bad.write_text("12 twelve\n")
    r = subprocess.run([sys.executable, "-m", "erdn_vs.cli", "deblur", str(src), "-o", str(tmp_path / "o.mkv"),
                        "--scene-cuts", str(bad), "--ray"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "'twelve' is not a frame number" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_without_ray_the_message_says_how_to_install_it(clip, tmp_path):
    src, _ = clip
    code = ("import sys; sys.modules['ray'] = None; from erdn_vs.cli import main; "
            f"sys.exit(main(['deblur', {str(src)!r}, '-o', {str(tmp_path / 'o.mkv')!r}, '--ray']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip() == "erdn deblur: --ray needs Ray: `pip install 'erdn-vs[cluster]'` (or `pip install ray`)"


def test_erdn_vs_never_imports_ray():
    code = ("import sys, erdn_vs, erdn_vs.deblur_cli, erdn_vs.pipeline.render, erdn_vs.filter, erdn_vs.farm, "
            "erdn_vs.farm.plan, erdn_vs.farm.store; print('ray' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


# --------------------------------------------------------------------------- on Ray


@pytest.mark.slow
def test_local_ray_render_equals_the_single_render(clip, tiny_weights, single, tmp_path):
    """`--ray` alone: an embedded Ray on this machine (2 CPUs: 2 actors), 4 chunks, 2 cut at scene changes."""
    src, cuts = clip
    out = tmp_path / "farm.mkv"
    r = subprocess.run(deblur_cmd(src, out, tiny_weights[5], cuts, "--ray", "--chunk-frames", CHUNK_FRAMES),
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
    assert fingerprint(out) == single
    summary = r.stderr.strip().splitlines()[-2]
    assert "4 chunks (0 resumed), 24 frames" in summary and "on 2 actors" in summary
    assert "model loaded 2x" in summary  # once per actor, not once per chunk
    assert re.search(r"frame \d+/24 .* fps .* chunks \d running, 0 retried", r.stderr)  # the progress line
    assert not list(tmp_path.glob(".*")), "chunks and partial files are cleaned up"


@pytest.mark.slow
def test_a_killed_actor_is_restarted_and_its_chunk_retried(ray_cluster, clip, tiny_weights, single, tmp_path):
    src, cuts = clip
    out, chunk_dir = tmp_path / "farm.mkv", tmp_path / "chunks"
    proc = subprocess.Popen(deblur_cmd(src, out, tiny_weights[5], cuts, "--ray", ray_cluster.address,
                                       "--chunk-frames", CHUNK_FRAMES, "--chunk-dir", str(chunk_dir)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, scratch = farm_dirs(chunk_dir)
        # An actor is mid-chunk once ffmpeg has opened the chunk's file on the node.
        encoding = wait_for("a chunk being encoded", lambda: list(scratch.glob("actor*/chunk-*/chunk-*.mkv")), proc)
        actor_dir = encoding[0].parent.parent
        log = (actor_dir / "worker.log").read_text()
        actor_pid = int(re.findall(r"actor \d+ \(pid (\d+)\)", log)[-1])
        worker_pid = int(re.findall(r"erdn worker pid (\d+) serving", log)[-1])
        os.kill(actor_pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "was lost" in err and "retries the chunk" in err and f"worker log {actor_dir / 'worker.log'}" in err
    assert re.search(r"chunks \d running, 1 retried", err)
    assert not alive(worker_pid)  # the killed actor's worker went with it
    assert fingerprint(out) == single


@pytest.mark.slow
def test_a_killed_driver_resumes_without_rendering_finished_chunks_again(ray_cluster, clip, tiny_weights, single,
                                                                        tmp_path):
    src, cuts = clip
    out, chunk_dir = tmp_path / "farm.mkv", tmp_path / "chunks"
    cmd = deblur_cmd(src, out, tiny_weights[5], cuts, "--ray", ray_cluster.address, "--chunk-frames", CHUNK_FRAMES,
                     "--chunk-dir", str(chunk_dir), "--actors", "1", "--keep-chunks")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        store, scratch = farm_dirs(chunk_dir)
        wait_for("a finished chunk", lambda: list(store.glob("chunk-*.mkv")), proc)
        workers = [int(p) for p in re.findall(r"erdn worker pid (\d+) serving",
                                              (scratch / "actor0" / "worker.log").read_text())]
        proc.kill()  # SIGKILL: no clean-up of any kind
        proc.wait()
    finally:
        proc.kill()
    finished = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in store.glob("chunk-*.mkv")}
    assert 1 <= len(finished) < len(EXPECTED_CHUNKS)
    deadline = time.monotonic() + 60
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(alive(w) for w in workers), "the dead driver's actors took their workers with them"

    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"resuming: {len(finished)} of {len(EXPECTED_CHUNKS)} chunks are already rendered" in r.stderr
    assert f"{len(EXPECTED_CHUNKS)} chunks ({len(finished)} resumed)" in r.stderr
    for name, (inode, mtime) in finished.items():  # the finished chunks were not rendered again
        st = (store / name).stat()
        assert (st.st_ino, st.st_mtime_ns) == (inode, mtime), name
    assert fingerprint(out) == single


@pytest.mark.slow
def test_two_nodes_with_the_input_shipped_through_the_object_store(clip, tiny_weights, single, tmp_path,
                                                                    monkeypatch):
    """`ray.cluster_utils.Cluster`: two Ray nodes on this machine, one CPU slot each, reached as a Ray
    client (ray://, as from a machine outside the cluster), --ship-input."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    # The head's client server gives the process it starts per client 30 s to come up; a loaded 2-core CI
    # machine can take longer ("Initialization failure from server"). The head reads this when it starts.
    monkeypatch.setenv("RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S", "300")

    src, cuts = clip
    out = tmp_path / "farm.mkv"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 1, "ray_client_server_port": port})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        r = subprocess.run(deblur_cmd(src, out, tiny_weights[5], cuts, "--ray", f"ray://127.0.0.1:{port}",
                                      "--ship-input", "--chunk-frames", CHUNK_FRAMES),
                           capture_output=True, text=True, timeout=600)
    finally:
        cluster.shutdown()
    assert r.returncode == 0, r.stderr
    assert "on 2 actors, 2 nodes" in r.stderr
    assert fingerprint(out) == single


@pytest.mark.slow
def test_a_variable_frame_rate_file_keeps_every_timestamp(ray_cluster, tiny_weights, worker_endpoint, tmp_path):
    """6 frames at 1/25 s then 6 at 1/10 s, in chunks of 3 that straddle the change of rate; `--ray auto`
    finds the cluster as Ray does (here through RAY_ADDRESS)."""
    src = tmp_path / "vfr.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=64x48:rate=25", "-f", "lavfi", "-i",
           "aevalsrc='if(gte(t,0.44),0.5*sin(2*PI*440*t),0)':d=0.75:s=44100", "-frames:v", "12",
           "-vf", "settb=1/1000,setpts='if(lt(N,6),N*40,240+(N-6)*100)'", "-fps_mode", "passthrough",
           "-enc_time_base:v", "1/1000", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(src))
    common = [sys.executable, "-m", "erdn_vs.cli", "deblur", str(src), "--weights", str(tiny_weights[5]), "--lossless"]
    r = subprocess.run([*common, "-o", str(tmp_path / "single.mkv"), "--endpoint", worker_endpoint],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*common, "-o", str(tmp_path / "farm.mkv"), "--ray", "auto", "--chunk-frames", "3"],
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, RAY_ADDRESS=ray_cluster.address))
    assert r.returncode == 0, r.stderr
    single, farm = fingerprint(tmp_path / "single.mkv"), fingerprint(tmp_path / "farm.mkv")
    assert farm["video_pts"] == single["video_pts"] == ["0", "40", "80", "120", "160", "200", "240", "340", "440",
                                                        "540", "640", "740"]
    assert [f[-1] for f in farm["frames"]] == [f[-1] for f in single["frames"]]  # the same pictures
    assert farm["audio"] == single["audio"]


@pytest.mark.slow
def test_a_killed_worker_takes_its_actor_down_and_the_chunk_is_retried(ray_cluster, clip, tiny_weights, single,
                                                                        tmp_path):
    src, cuts = clip
    out, chunk_dir = tmp_path / "farm.mkv", tmp_path / "chunks"
    proc = subprocess.Popen(deblur_cmd(src, out, tiny_weights[5], cuts, "--ray", ray_cluster.address,
                                       "--chunk-frames", CHUNK_FRAMES, "--chunk-dir", str(chunk_dir), "--actors", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _, scratch = farm_dirs(chunk_dir)
        wait_for("a chunk being encoded", lambda: list(scratch.glob("actor0/chunk-*/chunk-*.mkv")), proc)
        log = (scratch / "actor0" / "worker.log").read_text()
        os.kill(int(re.findall(r"erdn worker pid (\d+) serving", log)[-1]), signal.SIGKILL)
        _, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "was lost" in err and re.search(r"chunks \d running, 1 retried", err)
    assert fingerprint(out) == single


@pytest.mark.slow
def test_a_failing_chunk_names_the_chunk_the_node_and_the_worker_log(ray_cluster, clip, tiny_weights, tmp_path):
    """Weights whose header reads (the driver's probe passes) but whose tensors are cut short: the worker refuses."""
    src, cuts = clip
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(tiny_weights[5].read_bytes()[:-4096])
    out, chunk_dir = tmp_path / "farm.mkv", tmp_path / "chunks"
    r = subprocess.run(deblur_cmd(src, out, broken, cuts, "--ray", ray_cluster.address, "--chunk-frames",
                                  CHUNK_FRAMES, "--chunk-dir", str(chunk_dir)), capture_output=True, text=True,
                       timeout=600)
    shutil.rmtree(farm_dirs(chunk_dir, timeout=0)[1], ignore_errors=True)  # the worker logs the message names
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    named = r"erdn deblur: chunk \d \(frames \d+-\d+\) failed on node \S+ \(worker log /\S+/worker\.log there\)"
    assert re.match(named, last), r.stderr
    assert "broken.safetensors" in last and "Traceback" not in r.stderr
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))
