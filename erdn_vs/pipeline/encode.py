"""The ffmpeg side of a render: encoder options, the source's audio, and vspipe piped into ffmpeg."""

from __future__ import annotations

import re
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

from .graph import FrameRange, vspipe_error
from .source import SourceInfo
from .tools import RenderError, vspipe_exe


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


def audio_input_args(input_path: Path, frame_range: FrameRange | None, fps: float,
                     times: SourceInfo | None = None) -> list[str]:
    """ffmpeg's second input (the source, for its audio), cut to the frame range if there is one.

    ``times``: a variable-frame-rate source's timestamps, which place the cut instead of ``fps``.
    """
    if frame_range is None:
        return ["-i", str(input_path)]

    def at(n: int) -> float:
        return float(times.time_of(min(n, times.num_frames))) if times is not None else n / fps

    opts = ["-ss", f"{at(frame_range.start):.6f}"]
    if frame_range.end is not None:
        opts += ["-t", f"{at(frame_range.end) - at(frame_range.start):.6f}"]
    return opts + ["-i", str(input_path)]


_PROGRESS = re.compile(rb"Frame:\s*(\d+)/(\d+)")


def _follow_progress(stream, on_progress: Callable[[int, int], None] | None, log: list[bytes]) -> None:
    """Read vspipe's stderr: keep the text for errors, pass its progress (done, total) to ``on_progress``."""
    buf = b""
    while chunk := stream.read1(4096):  # a Popen pipe: returns what is there, b"" at EOF
        buf += chunk
        parts = re.split(rb"[\r\n]", buf)
        buf = parts.pop()
        for part in parts:
            m = _PROGRESS.search(part)
            if not m:
                if part.strip():
                    log.append(part)
            elif on_progress is not None:
                on_progress(int(m.group(1)), int(m.group(2)))
    if buf.strip():
        log.append(buf)


def pipe_into_ffmpeg(vpy: Path, vs_format: list[str], ffmpeg_cmd: list[str], *, source: Path, output: Path,
                     requests: list[str] | None = None,
                     on_progress: Callable[[int, int], None] | None = None) -> None:
    """Run ``vspipe`` on ``vpy`` into ``ffmpeg_cmd`` (which reads the frames from pipe:0).

    ``vs_format``: vspipe's output options (``video_input_args``). Raises RenderError naming
    ``source`` when vspipe fails (with its message) or ``output`` when ffmpeg fails; the caller
    removes what ffmpeg wrote. Interrupted (KeyboardInterrupt, a signal), it kills both.
    """
    vs_cmd = [vspipe_exe(), *vs_format, "-p", *(requests or []), str(vpy), "-"]
    vs_log: list[bytes] = []
    vs = subprocess.Popen(vs_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    enc = subprocess.Popen(ffmpeg_cmd, stdin=vs.stdout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    vs.stdout.close()  # ffmpeg owns the pipe now
    reader = threading.Thread(target=_follow_progress, args=(vs.stderr, on_progress, vs_log), daemon=True)
    reader.start()
    try:
        enc_err = enc.communicate()[1]
        vs_rc = vs.wait()
    except BaseException:
        vs.kill()
        enc.kill()
        raise
    reader.join(timeout=5)
    vs_text = b"\n".join(vs_log).decode(errors="replace")
    # When ffmpeg cannot start (a bad encoder or container), vspipe then fails on the closed pipe: say ffmpeg's error.
    script_failed = any(m in vs_text for m in ("vapoursynth.Error", "Python exception"))
    if vs_rc != 0 and (enc.returncode == 0 or script_failed):
        raise RenderError(f"rendering {source} failed (vspipe exit {vs_rc}): {vspipe_error(vs_text)}")
    if enc.returncode != 0:
        lines = [line.strip() for line in enc_err.decode(errors="replace").splitlines() if line.strip()]
        raise RenderError(f"encoding to {output} failed (ffmpeg exit {enc.returncode}): "
                          + ("; ".join(lines[-3:]) or "no message")  # its first lines say why, the last what
                          + "; check the output's extension (it picks the container), --codec and --pix-fmt")


