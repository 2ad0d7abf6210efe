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
class SourceInfo:
    """What ``probe`` found. ``times``: each frame's start in seconds, the first at 0."""

    path: Path
    num_frames: int
    fps: Fraction  # the rate bestsource reports (nominal for a VFR file)
    times: tuple[Fraction, ...]
    timecodes: Path  # the same timestamps as a timecodes v2 file (milliseconds), for the rendered script

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


def probe(path: Path, workdir: Path) -> SourceInfo:
    """Open ``path`` as ``erdn deblur`` will; raise SourceError with one line for what it cannot take.

    Writes the timecodes file into ``workdir``.
    """
    core = vs.core
    if not hasattr(core, "bs"):
        raise SourceError("the bs source plugin is missing: `pip install vapoursynth-bestsource` "
                          "(or `pip install -e .[video]`)")
    timecodes = workdir / "timecodes.txt"
    try:
        clip = core.bs.VideoSource(str(path), timecodes=str(timecodes))
        first = clip.get_frame(0).props
        field_based = first.get("_FieldBased", 0)
    except vs.Error as e:
        raise SourceError(_unreadable(path, str(e))) from None
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
    return SourceInfo(path, clip.num_frames, fps, times, timecodes)


def _unreadable(path: Path, error: str) -> str:
    """One line for a file bestsource refused: no video stream, or not a video at all."""
    try:
        listing = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True,
                                 timeout=60, stdin=subprocess.DEVNULL).stderr
    except (OSError, subprocess.SubprocessError):
        listing = ""
    kinds = re.findall(r"Stream #\d+:\d+\S*: (\w+):", listing)
    if kinds and "Video" not in kinds:
        held = ", ".join(f"{kinds.count(k)} {k.lower()} stream{'s' if kinds.count(k) > 1 else ''}"
                         for k in dict.fromkeys(kinds))
        return f"{path} has no video stream (it holds {held}); give a video file"
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
