"""End to end: the real vspipe renders tests/vpy/deblur_pattern.vpy through a real worker process.

The reference for every output frame is the model applied directly (torch, in this process) to
the window the spec prescribes, on the same RGB conversion, converted back the same way.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import vapoursynth as vs
from conftest import new_endpoint, spawn_worker, stop_worker, worker_env

from erdn_vs import formats
from erdn_vs.client import WorkerClient
from worker.model import build_model, load_model, save_model

REPO = Path(__file__).resolve().parent.parent
VPY = REPO / "tests" / "vpy"
SCRIPT = VPY / "deblur_pattern.vpy"
VSPIPE = Path(sys.executable).parent / "vspipe"
sys.path.insert(0, str(VPY))
import vpy_clips  # noqa: E402

core = vs.core
W, H, LENGTH = 64, 48, 8
pytestmark = pytest.mark.skipif(not VSPIPE.exists(), reason=f"vspipe not found next to {sys.executable}")


def sensitive_tiny(seed: int, path: Path) -> Path:
    """Random ``tiny`` weights, scaled by 1.5 so the output varies with the input.

    At plain initialisation the tiny network's output is nearly constant (within +-0.2, mostly
    clamped to 0) whatever the input. Scaled, it spans the range; it still depends mostly on the
    centre frame, so tests/test_filter.py checks the exact windows and frames sent to the session.
    """
    torch.manual_seed(seed)
    model = build_model("tiny", frames=5)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(1.5)
    return save_model(model, path)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return sensitive_tiny(11, tmp_path_factory.mktemp("vspipe") / "tiny5.safetensors")


@pytest.fixture(scope="module")
def worker(isolated_runtime_dir, tmp_path_factory):
    """A real worker on a private ipc endpoint: (endpoint, log path)."""
    log = tmp_path_factory.mktemp("worker-log") / "worker.log"
    endpoint = new_endpoint(isolated_runtime_dir, "vspipe")
    proc = spawn_worker(endpoint, "--idle-timeout", "300", log=log)
    yield endpoint, log
    stop_worker(proc)


def stats(endpoint: str) -> dict:
    with WorkerClient(endpoint, autostart=False, timeout=10) as client:
        return client.stats()


def vspipe(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(VSPIPE), *args], capture_output=True, env=worker_env(), timeout=timeout)


def script_args(**kwargs) -> list[str]:
    out = []
    for key, value in kwargs.items():
        out += ["-a", f"{key}={value}"]
    return out


def render(weights: Path, endpoint: str, **kwargs) -> tuple[bytes, str]:
    """Render the script to stdout (raw planar frames); returns (video bytes, stderr)."""
    result = vspipe(*script_args(weights=weights, endpoint=endpoint, **kwargs), str(SCRIPT), "-")
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr
    assert "erdn-test: torch in sys.modules: False" in stderr
    assert "torch import attempted" not in stderr and "torch was already imported" not in stderr
    return result.stdout, stderr


def split_frames(data: bytes, fmt: int, width: int, height: int) -> list[list[np.ndarray]]:
    """vspipe's raw output: each frame's planes one after the other (RGB in G, B, R order) -> [R, G, B] / [Y, U, V]."""
    info = core.get_video_format(fmt)
    dtype = {(vs.INTEGER, 1): np.uint8, (vs.INTEGER, 2): np.uint16,
             (vs.FLOAT, 2): np.float16, (vs.FLOAT, 4): np.float32}[(info.sample_type, info.bytes_per_sample)]
    shapes = [(height, width)] + [(height >> info.subsampling_h, width >> info.subsampling_w)] * 2
    if info.color_family == vs.RGB:
        shapes = [(height, width)] * 3
    frame_bytes = sum(h * w for h, w in shapes) * info.bytes_per_sample
    assert len(data) % frame_bytes == 0, f"{len(data)} bytes is not a whole number of {frame_bytes}-byte frames"
    frames, pos = [], 0
    while pos < len(data):
        planes = []
        for h, w in shapes:
            n = h * w * info.bytes_per_sample
            planes.append(np.frombuffer(data[pos : pos + n], dtype=dtype).reshape(h, w))
            pos += n
        frames.append([planes[2], planes[0], planes[1]] if info.color_family == vs.RGB else planes)
    return frames


def spec_window(n: int, length: int, frames: int, cut_next: int) -> tuple[int, ...]:
    """The window the spec prescribes: n-r..n+r clamped into n's scene (and the clip)."""
    first, last = 0, length - 1
    if cut_next >= 0:
        if n <= cut_next:
            last = cut_next
        else:
            first = cut_next + 1
    r = frames // 2
    return tuple(min(max(n + d, first), last) for d in range(-r, r + 1))


def reference(weights: Path, fmt: int, windows: list[tuple[int, ...]], cut_next: int = -1,
              width: int = W, height: int = H) -> list[list[np.ndarray]]:
    """The model on each window, on the same RGB conversion, back in the source format."""
    src = vpy_clips.pattern_clip(fmt, len(windows), width, height, cut_next)
    colour = formats.colour_of(src)
    rgb = formats.to_rgb(src, colour)
    inputs = [formats.frame_to_array(rgb.get_frame(i)) for i in range(len(windows))]
    torch.set_num_threads(1)  # the machine is shared; more threads only contend
    model = load_model(weights)
    with torch.no_grad():
        outs = [model(torch.from_numpy(np.stack([inputs[i] for i in w]).astype(np.float32))[None])[0].numpy()
                for w in windows]
    blank = core.std.BlankClip(rgb, format=vs.RGBS, keep=True)

    def put(n: int, f: vs.VideoFrame) -> vs.VideoFrame:
        out = f.copy()
        formats.write_array(out, outs[n])
        return out

    back = formats.from_rgb(core.std.ModifyFrame(blank, blank, put), src, colour)
    return [[np.asarray(back.get_frame(n)[p]).copy() for p in range(3)] for n in range(len(windows))]


def max_code_difference(got: list[list[np.ndarray]], want: list[list[np.ndarray]]) -> float:
    assert len(got) == len(want)
    return max(float(np.abs(g.astype(np.float64) - w.astype(np.float64)).max())
               for fg, fw in zip(got, want, strict=True) for g, w in zip(fg, fw, strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", [vs.RGB24, vs.YUV420P8], ids=lambda f: f.name)
def test_output_is_the_model_on_each_window(worker, weights, fmt):
    endpoint, _ = worker
    data, _ = render(weights, endpoint, fmt=fmt.name, length=LENGTH)
    got = split_frames(data, fmt, W, H)
    assert len(got) == LENGTH
    want = reference(weights, fmt, [spec_window(n, LENGTH, 5, -1) for n in range(LENGTH)])
    assert max_code_difference(got, want) <= 1
    # The filter is not the identity: the output differs from the source.
    src = vpy_clips.pattern_clip(fmt, LENGTH, W, H)
    assert max_code_difference(got, [[np.asarray(src.get_frame(n)[p]) for p in range(3)]
                                     for n in range(LENGTH)]) > 5


def test_about_two_stage_evaluations_per_frame_and_none_on_a_rerun(worker, weights):
    endpoint, _ = worker
    # A frame width no other test renders: the worker's cache (by content, across sessions) holds none of it.
    clip = {"fmt": "YUV420P8", "length": LENGTH, "width": 56}

    def counted_render() -> tuple[bytes, dict]:
        before = stats(endpoint)
        data, _ = render(weights, endpoint, **clip)
        after = stats(endpoint)
        return data, {k: after[k] - before[k] for k in
                      ("frames_served", "stage1_evals", "stage2_evals", "output_cache_hits")}

    first, cost = counted_render()
    # Stage 1 runs once per distinct triplet of the windows, stage 2 once per frame.
    triplets = {w[i : i + 3] for n in range(LENGTH) for w in [spec_window(n, LENGTH, 5, -1)] for i in range(3)}
    assert cost["frames_served"] == LENGTH
    assert cost["stage2_evals"] == LENGTH
    assert cost["stage1_evals"] == len(triplets) == 10  # 8 frames: 6 inner triplets + 2 at each edge
    assert (cost["stage1_evals"] + cost["stage2_evals"]) / LENGTH == pytest.approx(2.25)  # -> 2; 4 without cache
    # The same script again (a new vspipe process, a new session): every frame comes from the cache.
    again, cost = counted_render()
    assert again == first
    assert cost == {"frames_served": LENGTH, "stage1_evals": 0, "stage2_evals": 0, "output_cache_hits": LENGTH}


@pytest.mark.parametrize("fmt", [vs.YUV420P8, vs.YUV420P10, vs.YUV444P16, vs.RGB24, vs.RGBS],
                         ids=lambda f: f.name)
def test_formats_round_trip_size_format_and_props(worker, weights, fmt):
    endpoint, _ = worker
    info = vspipe("--info", *script_args(weights=weights, endpoint=endpoint, fmt=fmt.name, length=4), str(SCRIPT))
    text = info.stdout.decode()
    assert info.returncode == 0, info.stderr.decode()
    for line in (f"Width: {W}", f"Height: {H}", "Frames: 4", "FPS: 24/1", f"Format Name: {fmt.name}"):
        assert line in text
    data, stderr = render(weights, endpoint, fmt=fmt.name, length=4, check_props=1)
    assert len(split_frames(data, fmt, W, H)) == 4  # also: nothing but video on stdout
    assert sorted(stderr.count(f"erdn-test: props ok {n}\n") for n in range(4)) == [1, 1, 1, 1]


@pytest.mark.slow
def test_scene_cut_and_edges(worker, weights):
    endpoint, _ = worker
    cut, width, height = 3, 62, 46  # frames 0-3 and 4-7 are two scenes; a size the model must pad
    computed: set[tuple[int, ...]] = set()  # the worker's cache is by content: the second pass reuses the first
    for scene_change, cut_in_windows in ((1, cut), (0, -1)):  # scene_change=0 ignores the props
        before = stats(endpoint)
        data, _ = render(weights, endpoint, fmt="RGB24", length=LENGTH, cut_next=cut, width=width, height=height,
                         scene_change=scene_change)
        after = stats(endpoint)
        windows = [spec_window(n, LENGTH, 5, cut_in_windows) for n in range(LENGTH)]
        got = split_frames(data, vs.RGB24, width, height)
        assert max_code_difference(got, reference(weights, vs.RGB24, windows, cut, width, height)) <= 1
        # The worker ran stage 1 once per distinct source triplet of exactly these windows (12 with the cut,
        # 10 without, of which only the 2 that cross the cut are new), which the random tiny model alone
        # could not tell apart.
        triplets = {w[i : i + 3] for w in windows for i in range(3)}
        assert len(triplets) == (12 if scene_change else 10)
        assert after["stage1_evals"] - before["stage1_evals"] == len(triplets - computed) == (12 if scene_change else 2)
        computed |= triplets
    assert spec_window(3, LENGTH, 5, cut) == (1, 2, 3, 3, 3) and spec_window(4, LENGTH, 5, cut) == (4, 4, 4, 5, 6)


def test_second_run_reuses_the_warm_worker(worker, tmp_path):
    endpoint, log = worker
    own = sensitive_tiny(12, tmp_path / "reuse.safetensors")  # weights no other test loaded
    pid = stats(endpoint)["pid"]
    first, _ = render(own, endpoint, fmt="YUV420P8", length=4)
    second, _ = render(own, endpoint, fmt="YUV420P8", length=4)
    assert first == second
    assert stats(endpoint)["pid"] == pid
    loads = [line for line in log.read_text().splitlines() if "loaded" in line and str(own) in line]
    assert len(loads) == 1, loads


def test_worker_not_running_autostart_off(isolated_runtime_dir, weights):
    endpoint = new_endpoint(isolated_runtime_dir, "nobody")
    started = time.monotonic()
    result = vspipe(*script_args(weights=weights, endpoint=endpoint, autostart=0), str(SCRIPT), "-", timeout=60)
    elapsed = time.monotonic() - started
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode != 0
    assert result.stdout == b""
    assert "erdn_vs.deblur: frame " in stderr and endpoint in stderr and "`erdn worker" in stderr
    assert elapsed < 30, f"took {elapsed:.1f} s"
