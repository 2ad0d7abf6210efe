"""`erdn deblur` on real encoded video files: the real vspipe, a real worker, the real ffmpeg."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from erdn_vs import render

W, H, N = 64, 48, 10
VSPIPE = Path(sys.executable).parent / "vspipe"
pytestmark = pytest.mark.skipif(not VSPIPE.exists(), reason=f"vspipe not found next to {sys.executable}")


def ffmpeg(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([render.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args],
                          check=True, capture_output=True, **kw)


@pytest.fixture(scope="module")
def source_video(tmp_path_factory) -> Path:
    """A real H.264 file with AAC audio, made with ffmpeg's test sources."""
    path = tmp_path_factory.mktemp("render") / "input.mp4"
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=24", "-f", "lavfi", "-i", "sine=frequency=440",
           "-frames:v", str(N), "-t", f"{N / 24:.4f}", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac",
           str(path))
    return path


def decode(path: Path) -> np.ndarray:
    """All frames as (n, H*W*3/2) yuv420p bytes."""
    raw = ffmpeg("-i", str(path), "-f", "rawvideo", "-pix_fmt", "yuv420p", "pipe:1").stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, W * H * 3 // 2)


def streams(path: Path) -> str:
    r = subprocess.run([render.ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True)
    return r.stderr


def run_deblur(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "erdn_vs.cli", "deblur", *args], capture_output=True, text=True,
                          timeout=300)


def test_deblur_a_real_video(source_video, tiny_weights, worker_endpoint, tmp_path):
    out = tmp_path / "restored.mkv"
    r = run_deblur(str(source_video), "-o", str(out), "--weights", str(tiny_weights[5]),
                   "--endpoint", worker_endpoint)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""  # nothing on stdout: a pipeline may own it
    frames = decode(out)
    assert frames.shape == (N, W * H * 3 // 2)
    info = streams(out)
    assert f"{W}x{H}" in info and "h264" in info
    assert "Audio: aac" in info  # audio copied from the input
    assert "frame" in r.stderr and "fps" in r.stderr  # the progress line
    assert not list(tmp_path.glob(".*partial*"))


def test_chunks_concatenate_to_the_single_run(source_video, tiny_weights, worker_endpoint, tmp_path):
    common = ["--weights", str(tiny_weights[5]), "--endpoint", worker_endpoint, "--lossless", "--no-audio"]
    whole = tmp_path / "whole.mkv"
    assert run_deblur(str(source_video), "-o", str(whole), *common).returncode == 0
    parts = []
    for i, rng in enumerate(("0:4", "4:7", "7:")):
        part = tmp_path / f"part{i}.mkv"
        r = run_deblur(str(source_video), "-o", str(part), "--frames", rng, *common)
        assert r.returncode == 0, r.stderr
        parts.append(decode(part))
    assert [len(p) for p in parts] == [4, 3, 3]
    np.testing.assert_array_equal(np.concatenate(parts), decode(whole))


def test_frame_range_is_applied_after_deblurring():
    script = render.build_script("in.mp4", weights="w.safetensors", frame_range=render.FrameRange.parse("5:9"))
    lines = script.splitlines()
    assert lines.index("clip.set_output()") > [i for i, s in enumerate(lines) if "clip[5:9]" in s][0]
    assert [i for i, s in enumerate(lines) if "erdn_vs.deblur" in s][0] < [
        i for i, s in enumerate(lines) if "clip[5:9]" in s][0]


def test_script_flag_prints_a_runnable_vpy(source_video, tiny_weights):
    r = run_deblur(str(source_video), "--script", "--weights", str(tiny_weights[5]), "--window", "5")
    assert r.returncode == 0, r.stderr
    compile(r.stdout, "deblur.vpy", "exec")
    assert "core.bs.VideoSource(" in r.stdout and "erdn_vs.deblur(clip, frames=5" in r.stdout
    assert str(tiny_weights[5].resolve()) in r.stdout


def test_unreadable_input_is_a_clear_error(tmp_path):
    r = run_deblur(str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "out.mkv"))
    assert r.returncode == 1
    assert "cannot read input" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out.mkv").exists()


def test_unwritable_output_is_a_clear_error(source_video, tmp_path):
    r = run_deblur(str(source_video), "-o", str(tmp_path / "no" / "such" / "dir" / "out.mkv"))
    assert r.returncode == 1
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_failed_render_leaves_no_output(tiny_weights, worker_endpoint, tmp_path):
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video\n")
    out = tmp_path / "out.mkv"
    r = run_deblur(str(not_video), "-o", str(out), "--weights", str(tiny_weights[5]), "--endpoint", worker_endpoint)
    assert r.returncode == 1
    assert "rendering" in r.stderr and "failed" in r.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("bad", ["5", "9:3", "a:b"])
def test_bad_frame_range_is_refused(bad):
    with pytest.raises(SystemExit):
        render.parse_args(["in.mp4", "-o", "out.mkv", "--frames", bad])
