"""`erdn deblur` on real encoded video files: the real vspipe, a real worker, the real ffmpeg."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from erdn_vs import deblur_cli
from erdn_vs.pipeline import graph, tools

W, H, N = 64, 48, 10
VSPIPE = Path(sys.executable).parent / "vspipe"
pytestmark = pytest.mark.skipif(not VSPIPE.exists(), reason=f"vspipe not found next to {sys.executable}")


def ffmpeg(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([tools.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args],
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
    r = subprocess.run([tools.ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True)
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
    script = graph.build_script("in.mp4", weights="w.safetensors", frame_range=graph.FrameRange.parse("5:9"))
    lines = script.splitlines()
    assert "frames=" not in script  # no --window: deblur takes the model's own
    assert lines.index("clip.set_output()") > [i for i, s in enumerate(lines) if "clip[5:9]" in s][0]
    assert [i for i, s in enumerate(lines) if "erdn_vs.deblur" in s][0] < [
        i for i, s in enumerate(lines) if "clip[5:9]" in s][0]


def test_script_flag_prints_a_runnable_vpy(source_video, tiny_weights):
    r = run_deblur(str(source_video), "--script", "--weights", str(tiny_weights[5]), "--window", "5")
    assert r.returncode == 0, r.stderr
    compile(r.stdout, "deblur.vpy", "exec")
    assert "core.bs.VideoSource(" in r.stdout and "erdn_vs.deblur(clip, frames=5" in r.stdout
    assert str(tiny_weights[5].resolve()) in r.stdout


def test_a_window_the_model_does_not_take_is_one_line_in_cli_terms(source_video, tiny_weights, tmp_path):
    """Refused before anything starts, for a weights file and for the default model (the manifest's first)."""
    from erdn_vs.manifest import load_manifest

    default = load_manifest().models[0]
    for model_args, name, frames in (
        (["--weights", str(tiny_weights[5])], str(tiny_weights[5]), 5),
        ([], f"model {default.name!r}", default.frames),
    ):
        r = run_deblur(str(source_video), "-o", str(tmp_path / "out.mkv"), *model_args, "--window", str(8 - frames))
        assert r.returncode == 1
        assert r.stderr.strip() == (f"erdn deblur: --window {8 - frames} does not fit {name}, a {frames}-frame "
                                    f"model: pass --window {frames} or leave --window out")
    assert not list(tmp_path.iterdir())


def test_unreadable_input_is_a_clear_error(tmp_path):
    r = run_deblur(str(tmp_path / "missing.mp4"), "-o", str(tmp_path / "out.mkv"))
    assert r.returncode == 1
    assert "cannot read input" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out.mkv").exists()


def test_unwritable_output_is_a_clear_error(source_video, tmp_path):
    r = run_deblur(str(source_video), "-o", str(tmp_path / "no" / "such" / "dir" / "out.mkv"))
    assert r.returncode == 1
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_failed_render_leaves_no_output(source_video, worker_endpoint, tmp_path):
    damaged = tmp_path / "damaged.safetensors"  # passes the script; the worker refuses it at the first frame
    damaged.write_bytes(b"not a weights file")
    out = tmp_path / "out.mkv"
    r = run_deblur(str(source_video), "-o", str(out), "--weights", str(damaged), "--endpoint", worker_endpoint)
    assert r.returncode == 1
    assert "rendering" in r.stderr and "failed" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()
    assert not list(tmp_path.glob(".*partial*"))


@pytest.mark.parametrize("bad", ["5", "9:3", "a:b"])
def test_bad_frame_range_is_refused(bad):
    with pytest.raises(SystemExit):
        deblur_cli.parse_args(["in.mp4", "-o", "out.mkv", "--frames", bad])


# ---------------------------------------------------------------- files as users have them

VFR_TIMES_MS = [0, 40, 80, 120, 160, 200, 240, 340, 440, 540, 640, 740]  # 6 frames at 1/25 s, then 6 at 1/10 s


def frame_times_ms(path: Path) -> list[int]:
    """Each decoded video frame's presentation time in ms, as ffmpeg's showinfo filter prints it."""
    r = subprocess.run([tools.ffmpeg_exe(), "-hide_banner", "-i", str(path), "-map", "0:v:0", "-vf", "showinfo",
                        "-f", "null", "-"], capture_output=True, text=True, check=True)
    return [round(float(t) * 1000) for t in re.findall(r"pts_time:([\d.]+)", r.stderr)]


def audio_seconds(path: Path) -> float:
    """How long the audio stream runs, from decoding it (the last `time=` ffmpeg reports)."""
    r = subprocess.run([tools.ffmpeg_exe(), "-hide_banner", "-i", str(path), "-map", "0:a:0", "-f", "null", "-"],
                       capture_output=True, text=True, check=True)
    h, m, s = re.findall(r"time=(\d+):(\d+):([\d.]+)", r.stderr)[-1]
    return int(h) * 3600 + int(m) * 60 + float(s)


BEEP_AT = 0.44  # the test audio is silent until the source's frame 8 starts, then a 440 Hz tone


def beep_ms(path: Path) -> int:
    """When the beep starts on the file's timeline: the audio stream's start plus the first loud sample."""
    r = subprocess.run([tools.ffmpeg_exe(), "-hide_banner", "-i", str(path), "-map", "0:a:0", "-af", "ashowinfo",
                        "-f", "s16le", "-ac", "1", "-ar", "44100", "pipe:1"], capture_output=True, check=True)
    first = float(re.findall(rb"pts_time:(-?[\d.]+)", r.stderr)[0])
    loud = np.flatnonzero(np.abs(np.frombuffer(r.stdout, np.int16)) > 3000)
    return round((first + loud[0] / 44100) * 1000)


@pytest.fixture(scope="module")
def vfr_video(tmp_path_factory) -> Path:
    """A real variable-frame-rate Matroska file: 12 frames (6 at 1/25 s, 6 at 1/10 s) and 0.75 s of audio."""
    path = tmp_path_factory.mktemp("vfr") / "vfr.mkv"
    pts = "if(lt(N,6),N*40,240+(N-6)*100)"  # in ms
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=25", "-f", "lavfi", "-i",
           f"aevalsrc='if(gte(t,{BEEP_AT}),0.5*sin(2*PI*440*t),0)':d=0.75:s=44100",
           "-frames:v", "12", "-vf", f"settb=1/1000,setpts='{pts}'", "-fps_mode", "passthrough",
           "-enc_time_base:v", "1/1000", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", str(path))
    assert frame_times_ms(path) == VFR_TIMES_MS  # the input really is what the test is about
    return path


@pytest.mark.slow
def test_variable_frame_rate_keeps_every_timestamp_and_the_audio(vfr_video, tiny_weights, worker_endpoint, tmp_path):
    out = tmp_path / "restored.mkv"
    r = run_deblur(str(vfr_video), "-o", str(out), "--weights", str(tiny_weights[5]), "--endpoint", worker_endpoint)
    assert r.returncode == 0, r.stderr
    assert frame_times_ms(out) == VFR_TIMES_MS
    assert audio_seconds(out) == pytest.approx(audio_seconds(vfr_video), abs=0.03)  # all 0.75 s of it
    assert abs(beep_ms(out) - beep_ms(vfr_video)) <= 5  # in sync: the beep still starts with frame 8


@pytest.mark.slow
def test_a_chunk_of_a_variable_frame_rate_file_keeps_its_timestamps(vfr_video, tiny_weights, worker_endpoint,
                                                                     tmp_path):
    out = tmp_path / "part.mkv"
    r = run_deblur(str(vfr_video), "-o", str(out), "--frames", "4:9", "--weights", str(tiny_weights[5]),
                   "--endpoint", worker_endpoint)
    assert r.returncode == 0, r.stderr
    times = frame_times_ms(out)
    assert [t - times[0] for t in times] == [t - VFR_TIMES_MS[4] for t in VFR_TIMES_MS[4:9]]
    # The audio is cut where the chunk starts in time (0.16 s), not at 4 frames of a nominal rate: the beep
    # starts with the chunk's frame 4 (the source's frame 8). ffmpeg copies whole audio packets from before the
    # cut and shifts the video to match, so the chunk's first frame need not be at 0.
    assert abs(beep_ms(out) - times[4]) <= 30  # AAC packets are 23 ms


def test_a_file_with_no_video_stream_is_one_line(tmp_path):
    audio = tmp_path / "voice.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=0.5", "-c:a", "aac", str(audio))
    out = tmp_path / "out.mkv"
    r = run_deblur(str(audio), "-o", str(out))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"erdn deblur: {audio} has no video stream (it holds 1 audio stream); "
                                             "give a video file"]
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_an_interlaced_file_is_one_line_saying_deinterlace(tmp_path):
    interlaced = tmp_path / "tv.mkv"
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=25", "-frames:v", "4", "-vf", "setfield=tff",
           "-flags", "+ilme+ildct", "-field_order", "tt", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(interlaced))
    out = tmp_path / "out.mkv"
    r = run_deblur(str(interlaced), "-o", str(out))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith(f"erdn deblur: {interlaced} is interlaced (_FieldBased=2, top field first)")
    assert "bwdif" in lines[0] and "SetFieldBased(clip, 0)" in lines[0]
    assert not out.exists()


def test_a_file_that_is_not_video_is_one_line(tmp_path):
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is not a video\n")
    r = run_deblur(str(not_video), "-o", str(tmp_path / "out.mkv"))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"erdn deblur: cannot read {not_video} as video"), r.stderr
