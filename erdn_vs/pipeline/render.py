"""One plain render: ``erdn deblur INPUT -o OUTPUT`` on this machine (``erdn_vs.farm`` renders on Ray)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..filter import REPORT_ENV
from ..manifest import load_manifest
from . import scenes, source
from .encode import audio_args, encoder_args, metadata_args, pipe_into_ffmpeg
from .graph import pipe_formats, script_for, script_info
from .output import Claim, check_paths
from .tools import RenderError, ffmpeg_exe, vspipe_env

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


def scene_cuts(args: argparse.Namespace, src: source.SourceInfo) -> list[int]:
    """The frames that start a new scene: ``--scene-cuts none`` none, ``--scene-cuts FILE`` the file's,
    by default those ffmpeg's scdet finds in the frame range (``scenes.detect``)."""
    if args.scene_cuts and args.scene_cuts.lower() == "none":
        return []
    if args.scene_cuts:
        return scenes.read_scene_cuts(args.scene_cuts)
    start, end = (args.frames.start, args.frames.end) if args.frames else (0, None)
    return scenes.detect(src, start, end)


def note(text: str) -> None:
    """One line for the user on stderr, starting with the command's name."""
    sys.stderr.write(f"{PROG}: {text}\n")
    sys.stderr.flush()


class Sessions:
    """The worker sessions the render's vspipe opened (it reports them on stderr): said once, and closed
    here when the render is interrupted (vspipe, stopped, cannot close them itself)."""

    def __init__(self, quiet: bool) -> None:
        self.opened: list[dict] = []
        self.quiet = quiet
        self._lock = threading.Lock()

    def __call__(self, info: dict) -> None:
        with self._lock:
            self.opened.append(info)
            if len(self.opened) > 1 or self.quiet:
                return
        model = info.get("model") or Path(str(info.get("weights") or "the weights")).name
        sys.stderr.write(f"\r{PROG}: the worker at {info.get('endpoint')} runs {model} on {info.get('device')} in "
                         f"{info.get('precision')} ({info.get('backend')})\n")
        sys.stderr.flush()

    def close_all(self) -> None:
        """Close every reported session on its worker (best effort: a worker that is gone expires them)."""
        from ..client import WorkerClient, WorkerError

        for info in self.opened:
            try:
                with WorkerClient(info["endpoint"], autostart=False, timeout=2.0) as client:
                    client._request("close_session", timeout=2.0, start=False, session=info["session"])
            except (WorkerError, ValueError, KeyError, OSError):
                pass

    def warm_worker_line(self) -> str | None:
        """What the worker holds after the render and how to stop it, for a worker on this machine."""
        if not self.opened:
            return None
        from ..client import WorkerClient, WorkerError

        endpoint = self.opened[0]["endpoint"]
        try:
            with WorkerClient(endpoint, autostart=False, timeout=2.0) as client:
                stats = client.stats()
        except (WorkerError, ValueError, OSError):
            return None
        pid = stats.get("pid")
        rss = resident_bytes(pid) if isinstance(pid, int) else None
        held = f", holding {rss / 2**30:.1f} GiB of memory" if rss else ""
        idle = stats.get("idle_timeout")
        until = (f"for {idle:.0f} s after its last request" if isinstance(idle, int | float) and idle > 0
                 else "until it is stopped" if idle == 0 else "until its idle timeout")
        stop = "erdn worker stop" + ("" if endpoint == default_endpoint() else f" --endpoint {endpoint}")
        return f"the worker (pid {pid}) stays up{held}, {until}, so the next render starts warm; `{stop}` stops it now"


def default_endpoint() -> str | None:
    from .. import protocol

    try:
        return protocol.default_endpoint()
    except (ValueError, OSError):
        return None


def resident_bytes(pid: int) -> int | None:
    """A local process's resident memory (VmRSS) in bytes; None if it is not on this machine."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def render(args: argparse.Namespace) -> Path:
    """Render ``args`` (parsed ``erdn deblur`` options) here; returns the output path.

    Raises RenderError or SourceError with one line for anything the user can fix. Interrupted, it stops
    vspipe and ffmpeg, closes the worker sessions and removes the partial file before passing it on.
    """
    input_path = Path(args.input)
    output = Path(args.output)
    check_paths(input_path, output)
    sessions = Sessions(args.quiet)
    with Claim(output) as claim, tempfile.TemporaryDirectory(prefix="erdn-deblur-") as tmp:
        src = source.probe(input_path, Path(tmp))  # one line for no video stream, unreadable, interlaced
        if args.frames is not None and args.frames.start >= src.num_frames:
            raise RenderError(f"--frames {args.frames.start}:{'' if args.frames.end is None else args.frames.end} "
                              f"starts past the end: {input_path} has {src.num_frames} frames (0 to "
                              f"{src.num_frames - 1}); give a START below {src.num_frames}")
        vfr = src.variable_rate
        cuts = scene_cuts(args, src)
        vpy = Path(tmp) / "deblur.vpy"
        vpy.write_text(script_for(args, timecodes=src.timecodes if vfr else None, cuts=cuts))
        env = {**vspipe_env(Path(tmp)), REPORT_ENV: "1"}
        try:
            info = script_info(vpy, env)
        except RenderError as e:
            raise RenderError(f"rendering {input_path} failed: {e}") from None
        vs_format, video_in, timing = pipe_formats(info, vfr)
        audio = not args.no_audio and bool(src.audio())
        left = src.left_out()
        if left:
            note("not carried over: " + ", ".join(s.describe() for s in left))
        ff = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *video_in, "-i", "pipe:0"]
        kinds = {0: "video"}
        if audio:
            inputs, outputs = audio_args(src, args.frames, output.suffix)
            ff += [*inputs, "-map", "0:v:0", *outputs]
            kinds.update({1 + i: "audio" for i in range(len(src.audio()))})
        else:
            ff += ["-map", "0:v:0"]
        ff += metadata_args(src, args.pix_fmt)
        ff += encoder_args(args.codec, args.crf, args.pix_fmt, args.lossless, args.preset) + timing
        ff += [str(claim.partial)]  # no -shortest: a short audio track must never cost video frames
        try:
            pipe_into_ffmpeg(vpy, vs_format, ff, source=input_path, output=output, requests=requests_args(args),
                             env=env, on_progress=None if args.quiet else progress_line(), on_session=sessions,
                             stream_kinds=kinds)
        except BaseException:
            sessions.close_all()
            raise
        finally:
            if not args.quiet:
                sys.stderr.write("\n")
        claim.commit()
    if not args.endpoint and not args.quiet:
        line = sessions.warm_worker_line()
        if line:
            note(line)
    return output
