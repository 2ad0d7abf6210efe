"""The ffmpeg side of a render: encoder options, the source's audio, and vspipe piped into ffmpeg."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from ..filter import REPORT_PREFIX
from .graph import FrameRange, vspipe_error
from .source import SourceInfo
from .tools import RenderError, ffmpeg_cause, vspipe_exe


def encoder_args(codec: str, crf: float | None, pix_fmt: str | None, lossless: bool, preset: str) -> list[str]:
    if lossless:
        codec = "ffv1" if codec in ("auto", "ffv1") else codec
    if codec == "auto":
        codec = "libx264"
    out = ["-c:v", codec]
    if codec in ("libx264", "libx265"):
        out += ["-preset", preset]
        out += ["-qp", "0"] if lossless else ["-crf", str(16 if crf is None else crf)]
    elif codec == "ffv1":
        out += ["-level", "3"]
    elif crf is not None:
        out += ["-crf", str(crf)]
    if pix_fmt:
        out += ["-pix_fmt", pix_fmt]
    return out


#: Containers whose chunks (``--frames``) get FLAC audio: lossless and cut to the sample, so chunks join exactly.
#: WebM takes only Opus and Vorbis: its chunks get Opus (joined, one Opus pre-skip of 312 samples extra).
CHUNK_AUDIO = {".webm": ["-c:a", "libopus", "-b:a", "192k"]}
FLAC = ["-c:a", "flac", "-sample_fmt", "s32"]


def audio_args(src: SourceInfo, frame_range: FrameRange | None, suffix: str) -> tuple[list[str], list[str]]:
    """(ffmpeg input options, output options) for the source's audio streams, on the video's timeline.

    The source is ffmpeg's second input, shifted by ``-itsoffset`` so that its first video frame is at 0,
    as the piped frames are: audio that starts before or after the video keeps its place. A whole file's
    audio is copied. A frame range's audio is decoded and cut to the sample at the range's start and end
    times (``src.at``), and encoded losslessly (``CHUNK_AUDIO``): the chunks of a file join to its audio.
    """
    shift = ["-itsoffset", f"{-src.video_start:.6f}"] if src.video_start else []
    inputs = [*shift, "-i", str(src.path)]
    if frame_range is None:
        return inputs, ["-map", "1:a?", "-c:a", "copy"]
    start = src.at(frame_range.start)
    trim = f"atrim=start={start:.6f}"
    if frame_range.end is not None and frame_range.end < src.num_frames:
        trim += f":end={src.at(frame_range.end):.6f}"
    # FLAC blocks of one size: a joined file is decoded with its first chunk's STREAMINFO (largest block)
    return inputs, ["-map", "1:a?", "-af", f"{trim},asetpts=PTS-{start:.6f}/TB,asetnsamples=n=4608:p=0",
                    *CHUNK_AUDIO.get(suffix.lower(), FLAC)]


# ffmpeg's names for VapourSynth's _ChromaLocation (0 left ... 5 bottom).
_CHROMA_LOCATIONS = ("left", "center", "topleft", "top", "bottomleft", "bottom")


def metadata_args(src: SourceInfo, pix_fmt: str | None) -> list[str]:
    """ffmpeg output options that tag the output as the source is tagged: pixel aspect ratio, colour range,
    matrix, primaries, transfer, chroma location and field order (from frame 0's properties).

    The pipe (y4m, raw RGB) carries none of them. ``setparams`` only labels the frames, and ``setsar``
    only sets the ratio: no pixel changes. With a ``pix_fmt`` of another colour family (RGB out of YUV),
    only what still holds (aspect ratio, primaries, transfer, field order) is kept.
    """
    tags = dict(src.tags)
    family = src.family
    if pix_fmt:
        out = "RGB" if pix_fmt.startswith(("gbr", "rgb", "bgr")) else "GRAY" if pix_fmt.startswith("gray") else "YUV"
        same = out == family
    else:
        same = True
    params = []
    if tags.get("_FieldBased") == 0:
        params.append("field_mode=prog")
    if same:
        if "_Range" in tags and tags["_Range"] in (0, 1):
            params.append(f"range={'pc' if tags['_Range'] == 1 else 'tv'}")
        elif "_ColorRange" in tags and tags["_ColorRange"] in (0, 1):
            params.append(f"range={'pc' if tags['_ColorRange'] == 0 else 'tv'}")
        if family == "YUV" and tags.get("_Matrix", 2) not in (2, 0):
            params.append(f"colorspace={tags['_Matrix']}")
        if family == "YUV" and 0 <= tags.get("_ChromaLocation", -1) < len(_CHROMA_LOCATIONS):
            params.append(f"chroma_location={_CHROMA_LOCATIONS[tags['_ChromaLocation']]}")
    for key, name in (("_Primaries", "color_primaries"), ("_Transfer", "color_trc")):
        if tags.get(key, 2) != 2:
            params.append(f"{name}={tags[key]}")
    filters = [f"setparams={':'.join(params)}"] if params else []
    num, den = tags.get("_SARNum", 0), tags.get("_SARDen", 0)
    if num > 0 and den > 0:
        filters.append(f"setsar={num}/{den}")
    return ["-vf", ",".join(filters)] if filters else []


_PROGRESS = re.compile(rb"Frame:\s*(\d+)/(\d+)")


def _follow_progress(stream, on_progress: Callable[[int, int], None] | None, log: list[bytes],
                     on_session: Callable[[dict], None] | None = None) -> None:
    """Read vspipe's stderr: keep the text for errors, pass its progress (done, total) to ``on_progress``
    and the worker sessions the script opened (``filter.REPORT_PREFIX`` lines) to ``on_session``."""
    prefix = REPORT_PREFIX.encode()
    buf = b""
    while chunk := stream.read1(4096):  # a Popen pipe: returns what is there, b"" at EOF
        buf += chunk
        parts = re.split(rb"[\r\n]", buf)
        buf = parts.pop()
        for part in parts:
            m = _PROGRESS.search(part)
            if part.startswith(prefix):
                try:
                    info = json.loads(part[len(prefix):])
                except ValueError:
                    continue
                if on_session is not None:
                    on_session(info)
            elif not m:
                if part.strip():
                    log.append(part)
            elif on_progress is not None:
                on_progress(int(m.group(1)), int(m.group(2)))
    if buf.strip():
        log.append(buf)


def _stop(proc: subprocess.Popen) -> None:
    """Ask a child to stop (SIGTERM), then make it (SIGKILL) if it has not within 5 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pipe_into_ffmpeg(vpy: Path, vs_format: list[str], ffmpeg_cmd: list[str], *, source: Path, output: Path,
                     requests: list[str] | None = None, env: dict[str, str] | None = None,
                     on_progress: Callable[[int, int], None] | None = None,
                     on_session: Callable[[dict], None] | None = None,
                     stream_kinds: dict[int, str] | None = None) -> None:
    """Run ``vspipe`` on ``vpy`` into ``ffmpeg_cmd`` (which reads the frames from pipe:0).

    ``vs_format``: vspipe's output options (``video_input_args``); ``env``: vspipe's environment
    (``tools.vspipe_env``; ``on_session`` needs ``filter.REPORT_ENV`` set in it). ``stream_kinds``: the
    output's stream index -> kind, so that an ffmpeg error names the stream it is about.
    Raises RenderError naming ``source`` when vspipe fails (with its message) or ``output`` when ffmpeg
    fails (with the lines that say why and a fix); the caller removes what ffmpeg wrote. Interrupted
    (KeyboardInterrupt, a signal's exception), it stops both before passing the interrupt on.
    """
    vs_cmd = [vspipe_exe(), *vs_format, "-p", *(requests or []), str(vpy), "-"]
    vs_log: list[bytes] = []
    vs = subprocess.Popen(vs_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env)
    try:
        enc = subprocess.Popen(ffmpeg_cmd, stdin=vs.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    except BaseException:
        _stop(vs)
        raise
    vs.stdout.close()  # ffmpeg owns the pipe now
    reader = threading.Thread(target=_follow_progress, args=(vs.stderr, on_progress, vs_log, on_session),
                              daemon=True)
    reader.start()
    try:
        enc_err = enc.communicate()[1]
        vs_rc = vs.wait()
    except BaseException:
        _stop(vs)
        _stop(enc)
        raise
    reader.join(timeout=5)
    vs_text = b"\n".join(vs_log).decode(errors="replace")
    # When ffmpeg cannot start (a bad encoder or container), vspipe then fails on the closed pipe: say ffmpeg's error.
    script_failed = any(m in vs_text for m in ("vapoursynth.Error", "Python exception"))
    if vs_rc != 0 and (enc.returncode == 0 or script_failed):
        raise RenderError(f"rendering {source} failed (vspipe exit {vs_rc}): {vspipe_error(vs_text)}")
    if enc.returncode != 0:
        raise RenderError(f"encoding to {output} failed (ffmpeg exit {enc.returncode}): "
                          + ffmpeg_cause(enc_err.decode(errors="replace"), stream_kinds))
