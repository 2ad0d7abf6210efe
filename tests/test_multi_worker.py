"""Several workers behind one ``erdn_vs.deblur(endpoint=...)``: the frame assignment, the lanes that
put frames back in order, and the real vspipe rendering through two real worker processes."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import vapoursynth as vs
from conftest import new_endpoint, spawn_worker, stop_worker
from test_vspipe import VSPIPE, sensitive_tiny, spec_window, split_frames, stats, vspipe

import erdn_vs.client
from erdn_vs import spread
from erdn_vs.deblur_cli import parse_args
from erdn_vs.filter import deblur
from erdn_vs.pipeline.graph import build_script, script_for

VPY = Path(__file__).resolve().parent / "vpy"
sys.path.insert(0, str(VPY))
import vpy_clips  # noqa: E402

core = vs.core
W, H = 64, 48

# ------------------------------------------------------------------ the assignment (pure Python)


def simulate(length: int, workers: int, stripe: int, batch: int) -> tuple[list[int], dict[int, int]]:
    """What the filter's graph does, frame numbers only: (frame at each output position, worker of each frame)."""
    plan = spread.layout(length, workers, stripe, batch)
    per_lane = plan.padded_length(length) // plan.cycle * len(plan.lanes[0].offsets)
    lanes = [[lane.frame(i, plan.cycle) for i in range(per_lane)] for lane in plan.lanes]
    interleaved = [lanes[i % len(lanes)][i // len(lanes)] for i in range(per_lane * len(lanes))]  # std.Interleave
    restored = [interleaved[(j // plan.cycle) * plan.block + plan.order[j % plan.cycle]]  # std.SelectEvery
                for j in range(plan.padded_length(length))][:length]
    owner = {}
    for lane, frames in zip(plan.lanes, lanes, strict=True):
        for i, n in enumerate(frames):
            if i % len(lane.offsets) < lane.slots:  # the repeated filler slots are never requested
                assert n not in owner, f"frame {n} is in two lanes"
                owner[n] = lane.worker
    return restored, owner


@pytest.mark.parametrize(("workers", "stripe", "batch"),
                         [(2, 1, 1), (2, 3, 2), (2, 4, 2), (3, 5, 2), (2, 8, 3), (4, 2, 4), (2, 2, 16)])
def test_every_frame_comes_back_at_its_place_from_its_worker(workers, stripe, batch):
    for length in range(1, 3 * workers * stripe + 2):  # lengths that are and are not whole cycles
        restored, owner = simulate(length, workers, stripe, batch)
        assert restored == list(range(length)), (length, restored)
        for n in range(length):
            assert owner[n] == spread.worker_of(n, workers, stripe) == (n // stripe) % workers
    plan = spread.layout(100, workers, stripe, batch)
    lanes_per_worker = [sum(lane.worker == k for lane in plan.lanes) for k in range(workers)]
    assert lanes_per_worker == [min(batch, stripe)] * workers


def test_stripes_of_consecutive_frames_round_robin():
    assert [spread.worker_of(n, 2, 4) for n in range(12)] == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]
    assert [spread.worker_of(n, 3, 2) for n in range(8)] == [0, 0, 1, 1, 2, 2, 0, 0]


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_one_worker_keeps_the_original_lanes(batch):
    for length in (1, 3, 10):
        plan = spread.layout(length, 1, 8, batch)
        parts = min(batch, length)
        # The filter's lanes before several workers: frame n in lane n % batch.
        assert plan.cycle == parts and plan.order == tuple(range(parts))
        assert [lane.offsets for lane in plan.lanes] == [(i,) for i in range(parts)]
        assert simulate(length, 1, 8, batch)[0] == list(range(length))


def test_split_endpoints():
    a, b = "ipc:///tmp/a.sock", "tcp://127.0.0.1:5599"
    assert spread.split_endpoints(None) is None
    assert spread.split_endpoints(a) == [a]
    assert spread.split_endpoints(f"{a}, {b}") == [a, b]
    assert spread.split_endpoints([a, b]) == spread.split_endpoints((a, b)) == [a, b]


# ------------------------------------------------------------------ bad values: one clear error at script time


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("w") / "w.safetensors"
    path.write_bytes(b"not read at script time")
    return str(path)


@pytest.mark.parametrize(("endpoint", "message"), [
    ("ipc:///tmp/a.sock,ipc:///tmp/a.sock", "endpoint 'ipc:///tmp/a.sock' is named twice"),
    (["ipc:///tmp/a.sock", " ipc:///tmp/a.sock"], "endpoint 'ipc:///tmp/a.sock' is named twice"),
    ([], "endpoint is an empty list"),
    ("", "has an empty entry"),
    ("ipc:///tmp/a.sock,,ipc:///tmp/b.sock", "has an empty entry"),
    ("ipc:///tmp/a.sock,localhost:5555", "endpoint 'localhost:5555' is not valid"),
    (["ipc:///tmp/a.sock", "tcp://127.0.0.1"], "endpoint 'tcp://127.0.0.1' is not valid"),
    (["ipc:///tmp/a.sock", 5], "endpoint entries must be strings, got 5"),
    (["ipc:///tmp/a.sock,ipc:///tmp/b.sock"], "put each endpoint in its own list entry"),
    (5, "endpoint must be a string, a list of strings or None"),
])
def test_bad_endpoints_are_one_clear_error(weights_file, endpoint, message):
    clip = core.std.BlankClip(width=64, height=48, format=vs.YUV420P8, length=4)
    with pytest.raises(vs.Error) as e:
        deblur(clip, weights=weights_file, endpoint=endpoint)
    assert str(e.value).startswith("erdn_vs.deblur: ")
    assert message in str(e.value)


def test_bad_stripe(weights_file):
    clip = core.std.BlankClip(width=64, height=48, format=vs.YUV420P8, length=4)
    with pytest.raises(vs.Error, match=r"^erdn_vs.deblur: stripe is 0; use a value in \[1, 4096\]"):
        deblur(clip, weights=weights_file, endpoint="ipc:///tmp/a.sock,ipc:///tmp/b.sock", stripe=0)


def test_erdn_deblur_endpoint_option_takes_several(tmp_path):
    video = tmp_path / "in.mkv"
    args = parse_args([str(video), "--script", "--endpoint", "ipc:///tmp/a.sock,ipc:///tmp/b.sock",
                       "--endpoint", "tcp://127.0.0.1:5599"])
    assert "endpoint=['ipc:///tmp/a.sock', 'ipc:///tmp/b.sock', 'tcp://127.0.0.1:5599']" in script_for(args)
    one = script_for(parse_args([str(video), "--script", "--endpoint", "ipc:///tmp/a.sock"]))
    assert "endpoint='ipc:///tmp/a.sock'" in one
    assert one == build_script(video, endpoint="ipc:///tmp/a.sock")


# ------------------------------------------------------------------ the graph in-process, with stand-in workers


class FakeWorkers:
    """Stand-in clients that record which endpoint restored which frame (identity on the centre frame)."""

    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.frames: dict[str | None, list[int]] = {}
        self.in_flight: dict[str | None, int] = {}
        self.busy_together = 0  # most endpoints with a request in flight at the same moment
        self.delay = 0.0
        self.overlap = 0  # hold requests until this many endpoints have been busy together (once)

    def client(self, endpoint=None, *, autostart=True, timeout=30.0, worker_args=None):
        rec = self

        class Session:
            def process(self, n, window, planes):
                with rec.lock:
                    rec.frames.setdefault(endpoint, []).append(n)
                    rec.in_flight[endpoint] = rec.in_flight.get(endpoint, 0) + 1
                    rec.busy_together = max(rec.busy_together, sum(v > 0 for v in rec.in_flight.values()))
                    rec.lock.notify_all()
                    # However slowly a loaded machine schedules the other requests: they are waited for, not raced.
                    rec.lock.wait_for(lambda: rec.busy_together >= rec.overlap, timeout=60)
                time.sleep(rec.delay)
                with rec.lock:
                    rec.in_flight[endpoint] -= 1
                return planes[window[len(window) // 2]].astype(np.float32)

            def close(self):
                pass

        class Client:
            def open_session(self, **kwargs):
                return Session()

            def close(self):
                pass

        return Client()


@pytest.fixture
def fake_workers(monkeypatch):
    rec = FakeWorkers()
    monkeypatch.setattr(erdn_vs.client, "WorkerClient", rec.client)
    return rec


@pytest.mark.parametrize(("length", "stripe", "batch"), [(11, 2, 2), (7, 3, 1), (5, 8, 2), (13, 4, 3)])
def test_graph_sends_each_frame_to_its_worker_and_keeps_the_order(fake_workers, weights_file, length, stripe, batch):
    endpoints = ["ipc:///x/a.sock", "ipc:///x/b.sock"]
    src = vpy_clips.pattern_clip(vs.RGB24, length, 32, 24)
    out = deblur(src, weights=weights_file, endpoint=endpoints, stripe=stripe, batch=batch)
    assert out.num_frames == length
    for n in range(length):
        got, want = out.get_frame(n), src.get_frame(n)
        assert got.props["Stamp"] == n
        for p in range(3):  # the identity stand-in: frame n's own pixels, so the order is right
            np.testing.assert_array_equal(np.asarray(got[p]), np.asarray(want[p]))
    for k, endpoint in enumerate(endpoints):
        expected = [n for n in range(length) if (n // stripe) % 2 == k]
        assert sorted(fake_workers.frames.get(endpoint, [])) == expected


def test_requests_in_flight_on_both_workers_at_once(fake_workers, weights_file):
    if core.num_threads < 2:
        pytest.skip(f"VapourSynth has {core.num_threads} thread(s)")
    fake_workers.overlap, fake_workers.delay = 2, 0.2
    out = deblur(vpy_clips.pattern_clip(vs.YUV420P8, 8, 32, 24), weights=weights_file,
                 endpoint="ipc:///x/a.sock,ipc:///x/b.sock", stripe=2, batch=1)
    for future in [out.get_frame_async(n) for n in range(8)]:
        future.result()
    assert fake_workers.busy_together == 2
    assert sorted(fake_workers.frames["ipc:///x/a.sock"]) == [0, 1, 4, 5]


# ------------------------------------------------------------------ end to end: real vspipe, two real workers

SCRIPT = """\
import sys
sys.path.insert(0, {vpy!r})
import vpy_clips
vpy_clips.forbid_torch()
import vapoursynth as vs
import erdn_vs
g = globals()
src = vpy_clips.pattern_clip(vs.YUV420P8, int(g["length"]), {w}, {h})
out = erdn_vs.deblur(src, weights=g["weights"], endpoint=g["endpoint"], stripe=int(g["stripe"]),
                     autostart=bool(int(g["autostart"])), timeout=30)
out.set_output()
vpy_clips.report_modules()
"""


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("multi") / "deblur_multi.vpy"
    path.write_text(SCRIPT.format(vpy=str(VPY), w=W, h=H))
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return sensitive_tiny(21, tmp_path_factory.mktemp("multi-w") / "tiny5.safetensors")


@pytest.fixture(scope="module")
def workers(isolated_runtime_dir):
    """Three real workers: a reference and two to spread over. Separate processes, because a worker
    keeps results by content across sessions and would answer a second render of the same clip from
    its cache."""
    endpoints = [new_endpoint(isolated_runtime_dir, name) for name in ("ref", "gpu0", "gpu1")]
    procs = []
    try:
        for endpoint in endpoints:
            procs.append(spawn_worker(endpoint, "--idle-timeout", "300"))
        yield endpoints
    finally:
        for proc in procs:
            stop_worker(proc)


def render(script: Path, weights: Path, endpoint: str, length: int, stripe: int, autostart: int = 1,
           timeout: float = 120) -> tuple[int, bytes, str]:
    args = ["-r", "4"]
    for key, value in (("weights", weights), ("endpoint", endpoint), ("length", length), ("stripe", stripe),
                       ("autostart", autostart)):
        args += ["-a", f"{key}={value}"]
    result = vspipe(*args, str(script), "-", timeout=timeout)
    return result.returncode, result.stdout, result.stderr.decode(errors="replace")


def triplets(frames: list[int], length: int) -> set[tuple[int, ...]]:
    """The distinct stage-1 triplets of these output frames' windows (what one session computes once)."""
    return {w[i : i + 3] for n in frames for w in [spec_window(n, length, 5, -1)] for i in range(3)}


@pytest.mark.slow  # about 15 s with starting the three workers
@pytest.mark.skipif(not VSPIPE.exists(), reason=f"vspipe not found next to {sys.executable}")
def test_two_workers_render_the_same_bytes_as_one(script, weights, workers):
    length, stripe = 12, 3  # four stripes: frames 0-2 and 6-8 on gpu0, 3-5 and 9-11 on gpu1
    ref, a, b = workers
    before = [stats(e) for e in workers]
    rc, one, err = render(script, weights, ref, length, stripe)
    assert rc == 0, err
    rc, two, err = render(script, weights, f"{a},{b}", length, stripe)
    assert rc == 0, err
    after = [stats(e) for e in workers]
    assert "erdn-test: torch in sys.modules: False" in err

    assert two == one
    frames = split_frames(two, vs.YUV420P8, W, H)
    assert len(frames) == length
    assert len({f[0].tobytes() for f in frames}) == length  # a real, input-dependent output, not a constant

    def delta(s1: dict, s0: dict, key: str) -> int:
        return s1[key] - s0[key]

    # One worker: every frame, each distinct triplet once (length + 2 with the clip edges).
    assert delta(after[0], before[0], "frames_served") == length
    single_stage1 = delta(after[0], before[0], "stage1_evals")
    assert single_stage1 == len(triplets(list(range(length)), length)) == length + 2
    # Two workers: each served its stripes, and together every frame once.
    served = [delta(after[k], before[k], "frames_served") for k in (1, 2)]
    assert served == [6, 6] and sum(served) == length
    stage1 = [delta(after[k], before[k], "stage1_evals") for k in (1, 2)]
    stage2 = [delta(after[k], before[k], "stage2_evals") for k in (1, 2)]
    assert stage2 == served
    for k in range(2):
        mine = [n for n in range(length) if spread.worker_of(n, 2, stripe) == k]
        assert stage1[k] == len(triplets(mine, length))
    # The bound: a stripe [s, e) needs the triplets centred s-1..e; two consecutive stripes share two of
    # them, which the worker that does not hold the neighbouring stripe computes again. So splitting
    # into 4 stripes costs at most 2 extra stage-1 evaluations per stripe edge: 14 + 2 * 3 = 20 here
    # (2 + 2/stripe evaluations per frame on long clips instead of 2).
    edges = length // stripe - 1
    assert sum(stage1) <= single_stage1 + 2 * edges
    assert sum(stage1) == 20


@pytest.mark.skipif(not VSPIPE.exists(), reason=f"vspipe not found next to {sys.executable}")
def test_one_unreachable_worker_is_a_clear_error(script, weights, workers, isolated_runtime_dir):
    dead = new_endpoint(isolated_runtime_dir, "nobody")
    started = time.monotonic()
    rc, _, err = render(script, weights, f"{workers[1]},{dead}", 8, 2, autostart=0, timeout=60)
    elapsed = time.monotonic() - started
    assert rc != 0
    assert f"erdn worker at {dead} did not answer" in err and f"`erdn worker --endpoint {dead}`" in err
    assert f"erdn worker at {workers[1]}" not in err  # the live one is not blamed
    assert elapsed < 30, f"took {elapsed:.1f} s"



def test_erdn_deblur_keeps_every_worker_busy() -> None:
    """`erdn deblur` with several endpoints: vspipe requests a stripe per worker, VapourSynth runs their lanes."""
    import argparse

    from erdn_vs.pipeline.graph import build_script
    from erdn_vs.pipeline.render import requests_args

    two = ["ipc:///tmp/a.sock", "ipc:///tmp/b.sock"]
    assert requests_args(argparse.Namespace(endpoint=[two])) == ["--requests", "16"]  # 2 workers x stripe 8
    assert requests_args(argparse.Namespace(endpoint=[two[:1]])) == []
    assert requests_args(argparse.Namespace(endpoint=None)) == []
    assert "core.num_threads = max(core.num_threads, 4)" in build_script("/x.mkv", endpoint=two)
    assert "num_threads" not in build_script("/x.mkv", endpoint=two[:1])
