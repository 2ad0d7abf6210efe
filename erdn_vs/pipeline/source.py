"""The input file of ``erdn deblur``: what it holds, checked before anything renders, and its timing.

``probe`` opens the file with the ``bs`` source plugin (bestsource) in this process, the way the
rendered script will, and turns what users really feed it into one line each: a file with no video
stream, a file bestsource cannot read, an interlaced video. It also asks bestsource for every
frame's timestamp (a timecodes v2 file, written from bestsource's index without decoding).

Variable frame rate: a VapourSynth clip has one frame rate, or none (0/1) and a duration per frame.
bestsource gives a VFR file's frames their durations but the clip a nominal rate, and the last frame
no duration, so a y4m pipe (one rate) would play every frame at that rate. ``keep_timestamps`` makes
the clip VFR with each frame's duration taken from the file's own timestamps; vspipe's Matroska
output carries them to ffmpeg, so every output frame keeps its input timestamp and the audio copied
from the input stays in sync.

Imports VapourSynth, never torch.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import vapoursynth as vs

from ..formats import FIELD_ORDER
from .tools import ffmpeg_exe

# Containers round timestamps (Matroska to 1 ms); a frame this close to n/fps is on the constant-rate grid.
GRID_TOLERANCE = Fraction(1, 1000)


class SourceError(ValueError):
    """The input file cannot be deblurred as it is; the message says why and what to do."""


@dataclass(frozen=True)
class Stream:
    """One stream of the input as ffmpeg lists it. ``index``: its number in the file."""

    index: int
    kind: str  # "video", "audio", "subtitle", "data", "attachment"
    codec: str
    cover: bool = False  # a video stream that is one attached picture (cover art), not video

    def describe(self) -> str:
        return f"stream {self.index} ({'cover picture' if self.cover else self.kind}, {self.codec})"


# One line of ffmpeg's listing: "  Stream #0:1[0x2](eng): Audio: aac (LC) (mp4a / 0x6134706D), 48000 Hz, ..."
_STREAM_LINE = re.compile(r"^\s*Stream #\d+:(\d+)\S*: (\w+): ([^\s,]+)(.*)$")


def list_streams(path: Path) -> list[Stream]:
    """The streams of ``path`` as ``ffmpeg -i`` lists them (empty if ffmpeg cannot open it)."""
    try:
        listing = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, timeout=60,
                                 stdin=subprocess.DEVNULL).stderr.decode(errors="replace")
    except (OSError, subprocess.SubprocessError):
        return []
    streams = []
    for line in listing.splitlines():
        m = _STREAM_LINE.match(line)
        if m:
            streams.append(Stream(int(m.group(1)), m.group(2).lower(), m.group(3), "(attached pic)" in m.group(4)))
    return streams


#: Frame properties that describe the picture, carried from the source to the output container.
TAGS = ("_SARNum", "_SARDen", "_Range", "_ColorRange", "_Matrix", "_Primaries", "_Transfer", "_ChromaLocation",
        "_FieldBased")


@dataclass(frozen=True)
class SourceInfo:
    """What ``probe`` found. ``times``: each frame's start in seconds, the first at 0.

    ``video_start``: seconds from the start of the file (its earliest stream, as ffmpeg places the streams)
    to the first video frame; audio that starts before the video makes it positive.
    ``tags``: frame 0's picture description (``TAGS``), as bestsource sets it from the file.
    """

    path: Path
    num_frames: int
    fps: Fraction  # the rate bestsource reports (nominal for a VFR file)
    times: tuple[Fraction, ...]
    timecodes: Path  # the same timestamps as a timecodes v2 file (milliseconds), for the rendered script
    streams: tuple[Stream, ...] = ()
    video_start: float = 0.0
    tags: tuple[tuple[str, int], ...] = ()
    family: str = "YUV"  # the clip's colour family: "YUV", "RGB" or "GRAY"

    @property
    def variable_rate(self) -> bool:
        """True when some frame's timestamp is off the grid of ``fps`` (or the file has no rate)."""
        if self.fps <= 0:
            return True
        tolerance = min(GRID_TOLERANCE, 1 / (2 * self.fps))
        return any(abs(t - n / self.fps) > tolerance for n, t in enumerate(self.times))

    def time_of(self, n: int) -> Fraction:
        """Start of frame ``n`` in seconds; ``n == num_frames`` is the end of the last frame."""
        if n < self.num_frames:
            return self.times[n]
        return self.times[-1] + last_duration(self.times, self.fps)

    def at(self, n: int) -> float:
        """When frame ``n`` starts on the output's timeline: its own timestamp in a variable-frame-rate file,
        else n / rate exactly (the timecodes are rounded to 1 ms)."""
        return float(self.time_of(min(n, self.num_frames))) if self.variable_rate else float(n / self.fps)

    def frame_at(self, seconds: float) -> int:
        """The frame whose start is nearest ``seconds`` (on the same timeline as ``at``)."""
        if not self.variable_rate:
            return max(0, min(self.num_frames - 1, round(seconds * self.fps)))
        return min(range(self.num_frames), key=lambda n: abs(float(self.times[n]) - seconds))

    def audio(self) -> list[Stream]:
        return [s for s in self.streams if s.kind == "audio"]

    def left_out(self) -> list[Stream]:
        """Streams the output will not carry, whatever the options: all but the first video stream and the
        audio (subtitles, data, attachments, cover pictures, further video streams)."""
        video = [s for s in self.streams if s.kind == "video" and not s.cover]
        return [s for s in self.streams if s is not video[0] and s.kind != "audio"] if video else []


def probe(path: Path, workdir: Path) -> SourceInfo:
    """Open ``path`` as ``erdn deblur`` will; raise SourceError with one line for what it cannot take.

    Writes the timecodes file into ``workdir``.
    """
    core = vs.core
    if not hasattr(core, "bs"):
        raise SourceError("the bs source plugin is missing: `pip install vapoursynth-bestsource` "
                          "(or `pip install -e .[video]`)")
    streams = list_streams(path)
    if streams and not any(s.kind == "video" and not s.cover for s in streams):
        raise SourceError(_no_video(path, streams))
    timecodes = workdir / "timecodes.txt"
    try:
        clip = core.bs.VideoSource(source_arg(path), timecodes=str(timecodes))
        first = clip.get_frame(0).props
        field_based = first.get("_FieldBased", 0)
    except vs.Error as e:
        raise SourceError(_unreadable(path, str(e), streams)) from None
    if field_based in FIELD_ORDER:
        raise SourceError(
            f"{path} is interlaced (_FieldBased={field_based}, {FIELD_ORDER[field_based]}) and ERDN restores "
            f"progressive frames: deinterlace it first (e.g. `ffmpeg -i {path} -vf bwdif=mode=send_frame -c:a copy "
            "progressive.mkv`, or QTGMC in a script from `erdn deblur --script`); if it is really progressive and "
            "the tag is wrong, use `erdn deblur --script` and add clip = core.std.SetFieldBased(clip, 0)")
    times = read_timecodes(timecodes)
    if len(times) != clip.num_frames:
        raise SourceError(f"bestsource reported {clip.num_frames} frames of {path} but {len(times)} timestamps; "
                          "remux the file (`ffmpeg -i IN -c copy OUT.mkv`) and try again")
    fps = Fraction(clip.fps.numerator, clip.fps.denominator) if clip.fps.denominator else Fraction(0)
    tags = tuple((k, int(first[k])) for k in TAGS if k in first and isinstance(first[k], int))
    family = {vs.RGB: "RGB", vs.GRAY: "GRAY"}.get(clip.format.color_family, "YUV")
    return SourceInfo(path, clip.num_frames, fps, times, timecodes, tuple(streams), video_start(path), tags, family)


def source_arg(path: Path) -> str | bytes:
    """``path`` as bestsource takes it: a str, or bytes when the name is not valid UTF-8 (VapourSynth
    passes strings as UTF-8, and bestsource opens bytes as they are)."""
    text = str(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return os.fsencode(text)


def video_start(path: Path) -> float:
    """Seconds from the file's start to its first video frame, on ffmpeg's timeline (where ffmpeg puts
    the source's audio when it reads the file); 0 when it cannot tell."""
    try:
        r = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostats", "-i", str(path), "-map", "0:v:0",
                            "-frames:v", "1", "-vf", "showinfo", "-f", "null", "-"],
                           capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return 0.0
    m = re.search(rb"pts_time:(-?[\d.]+)", r.stderr)
    return float(m.group(1)) if m else 0.0


def _no_video(path: Path, streams: list[Stream]) -> str:
    kinds = ["cover picture" if s.cover else s.kind for s in streams]
    held = ", ".join(f"{kinds.count(k)} {k} stream{'s' if kinds.count(k) > 1 else ''}" for k in dict.fromkeys(kinds))
    return f"{path} has no video stream (it holds {held}); give a video file"


def _unreadable(path: Path, error: str, streams: list[Stream]) -> str:
    """One line for a file bestsource refused: no video stream, or not a video at all."""
    if streams and not any(s.kind == "video" and not s.cover for s in streams):
        return _no_video(path, streams)
    reason = error.strip().splitlines()[-1] if error.strip() else "unknown error"
    return f"cannot read {path} as video ({reason}); check that it is a complete video file ffmpeg can play"


def read_timecodes(path: Path) -> tuple[Fraction, ...]:
    """A timecodes v2 file (one start time in milliseconds per line) -> start times in seconds, first at 0."""
    values = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            values.append(Fraction(line) / 1000)
    return tuple(t - values[0] for t in values) if values else ()


def last_duration(times: Sequence[Fraction], fps: Fraction) -> Fraction:
    """The last frame's duration, which no timestamp gives: the one before it, else 1/fps."""
    if len(times) > 1:
        return times[-1] - times[-2]
    return 1 / fps if fps > 0 else Fraction(1, 25)


def keep_timestamps(clip: vs.VideoNode, timecodes: str | Path) -> vs.VideoNode:
    """``clip`` as a variable-frame-rate clip whose frame n lasts until the timestamp of frame n+1.

    ``timecodes``: a timecodes v2 file with one line per frame of ``clip`` (``probe`` writes it).
    The result has fps 0/1 (VapourSynth's VFR) and ``_DurationNum``/``_DurationDen`` on every frame,
    which is what vspipe's Matroska output writes as timestamps.
    """
    times = read_timecodes(Path(timecodes))
    if len(times) != clip.num_frames:
        raise vs.Error(f"erdn_vs.pipeline.source.keep_timestamps: {timecodes} has {len(times)} timestamps for "
                       f"{clip.num_frames} frames; give the file written for this clip")
    fps = Fraction(clip.fps.numerator, clip.fps.denominator) if clip.fps.denominator else Fraction(0)
    durations = [b - a for a, b in zip(times, times[1:], strict=False)] + [last_duration(times, fps)]
    if any(d <= 0 for d in durations):
        raise vs.Error(f"erdn_vs.pipeline.source.keep_timestamps: {timecodes} has timestamps that do not increase; "
                       "remux the file (`ffmpeg -i IN -c copy OUT.mkv`) and try again")

    def set_duration(n: int, f: vs.VideoFrame) -> vs.VideoFrame:
        out = f.copy()
        out.props["_DurationNum"] = durations[n].numerator
        out.props["_DurationDen"] = durations[n].denominator
        return out

    vfr = vs.core.std.BlankClip(clip, fpsnum=0, fpsden=1, keep=True)
    return vs.core.std.ModifyFrame(vfr, clip, set_duration)
