"""One plain render: ``erdn deblur INPUT -o OUTPUT`` on this machine (``erdn_vs.farm`` renders on Ray)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..manifest import load_manifest
from . import source
from .encode import audio_input_args, encoder_args, pipe_into_ffmpeg
from .graph import pipe_formats, script_for, script_info
from .output import check_paths
from .tools import RenderError, ffmpeg_exe

PROG = "erdn deblur"


def requests_args(args: argparse.Namespace) -> list[str]:
    """vspipe's frames in flight: with several workers, enough to cover a stripe on each of them."""
    endpoints = [e for group in args.endpoint or [] for e in group]
    if len(endpoints) < 2:
        return []
    stripe = next(p.default for p in load_manifest().functions["deblur"] if p.name == "stripe")
    return ["--requests", str(len(endpoints) * int(stripe))]


def progress_line() -> Callable[[int, int], None]:
    """``on_progress`` for one render: a ``frame done/total  fps  ETA`` line rewritten on stderr."""
    start = time.monotonic()

    def show(done: int, total: int) -> None:
        elapsed = time.monotonic() - start
        fps = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / fps if fps > 0 else float("nan")
        sys.stderr.write(f"\r{PROG}: frame {done}/{total}  {fps:.2f} fps  ETA {eta:6.0f} s ")
        sys.stderr.flush()

    return show


def render(args: argparse.Namespace) -> Path:
    input_path = Path(args.input)
    output = Path(args.output)
    check_paths(input_path, output)
    partial = output.with_name(f".{output.stem}.partial{output.suffix}")
    with tempfile.TemporaryDirectory(prefix="erdn-deblur-") as tmp:
        src = source.probe(input_path, Path(tmp))  # one line for no video stream, unreadable, interlaced
        if args.frames is not None and args.frames.start >= src.num_frames:
            raise RenderError(f"--frames {args.frames.start}:{'' if args.frames.end is None else args.frames.end} "
                              f"starts past the end: {input_path} has {src.num_frames} frames (0 to "
                              f"{src.num_frames - 1}); give a START below {src.num_frames}")
        vfr = src.variable_rate
        vpy = Path(tmp) / "deblur.vpy"
        vpy.write_text(script_for(args, timecodes=src.timecodes if vfr else None))
        try:
            info = script_info(vpy)
        except RenderError as e:
            raise RenderError(f"rendering {input_path} failed: {e}") from None
        vs_format, video_in, timing = pipe_formats(info, vfr)
        copy_audio = not args.no_audio
        ff = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *video_in, "-i", "pipe:0"]
        if copy_audio:
            ff += audio_input_args(input_path, args.frames, info["fps"], times=src if vfr else None)
            ff += ["-map", "0:v:0", "-map", "1:a?", "-c:a", "copy"]
        else:
            ff += ["-map", "0:v:0"]
        ff += encoder_args(args.codec, args.crf, args.pix_fmt, args.lossless, args.preset) + timing
        ff += [str(partial)]  # no -shortest: a short audio track must never cost video frames
        try:
            pipe_into_ffmpeg(vpy, vs_format, ff, source=input_path, output=output, requests=requests_args(args),
                             on_progress=None if args.quiet else progress_line())
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            if not args.quiet:
                sys.stderr.write("\n")
    partial.replace(output)
    return output


