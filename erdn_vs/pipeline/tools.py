"""The programs the file pipeline runs (ffmpeg, vspipe) and the error it reports to users."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tomllib
from pathlib import Path


class RenderError(Exception):
    """A problem the user can fix; the message says what to do."""


def ffmpeg_exe() -> str:
    """The system ffmpeg, else the one inside the imageio-ffmpeg wheel. Raises RenderError if neither exists."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:
        raise RenderError("no ffmpeg found: install ffmpeg or `pip install imageio-ffmpeg`") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def vspipe_exe() -> str:
    """The vspipe of this environment (next to its Python), else the first on PATH. Raises RenderError."""
    here = Path(sys.executable).with_name("vspipe")
    if here.exists():
        return str(here)
    found = shutil.which("vspipe")
    if not found:
        raise RenderError("vspipe not found: install the `vapoursynth` package in this environment")
    return found


def vspipe_env(workdir: Path) -> dict[str, str]:
    """The environment vspipe runs in: this one, plus a VapourSynth configuration of its own in ``workdir``
    when the user's cannot be found (no HOME, as under systemd or cron, or `vapoursynth config` never run).

    vspipe finds this Python through ``$XDG_CONFIG_HOME/vapoursynth/vapoursynth.toml`` (else ``~/.config``),
    which ``vapoursynth config`` writes; the file written here holds the same entry.
    """
    env = dict(os.environ)
    try:
        from vapoursynth import _utils as vsutils  # the module `vapoursynth config` runs

        key = vsutils._mangle_vsscript_key(vsutils.get_vsscript())
        home = os.environ.get("XDG_CONFIG_HOME") or (os.environ.get("HOME") and str(Path.home() / ".config"))
        if home:
            try:
                with open(Path(home) / "vapoursynth" / "vapoursynth.toml", "rb") as f:
                    if key in tomllib.load(f):
                        return env
            except (OSError, tomllib.TOMLDecodeError):
                pass
        library = vsutils._find_python_symbol_path()
        if library is None:
            return env
        own = workdir / "vsconfig" / "vapoursynth"
        own.mkdir(parents=True, exist_ok=True)
        entry = [sys.executable, str(library), int(os.stat(sys.executable).st_mtime)]
        (own / "vapoursynth.toml").write_text(
            f"{json.dumps(key)} = [{json.dumps(entry[0])}, {json.dumps(entry[1])}, {json.dumps(str(entry[2]))}]\n")
        env["XDG_CONFIG_HOME"] = str(own.parent)
    except (ImportError, AttributeError, OSError):  # another VapourSynth layout: leave it to the user's config
        pass
    return env


# (what ffmpeg says, what it means for the user) for the failures users meet; checked in this order.
_FFMPEG_CAUSES: tuple[tuple[str, str], ...] = (
    ("No space left on device", "the disk is full: free some space, or write the output to another disk"),
    ("Disk quota exceeded", "the disk quota is used up: free some space, or write the output elsewhere"),
    ("Permission denied", "the output cannot be written there: check the directory's permissions"),
    ("codec not currently supported in container",
     "{stream} cannot go into this container: use an .mkv output (Matroska takes almost any codec){audio_fix}"),
    ("Could not find tag for codec",
     "{stream} cannot go into this container: use an .mkv output (Matroska takes almost any codec){audio_fix}"),
    ("Unknown encoder", "no such encoder: pick another --codec (`ffmpeg -encoders` lists them)"),
    ("Encoder not found", "no such encoder: pick another --codec (`ffmpeg -encoders` lists them)"),
    ("Unable to choose an output format", "the output's extension names no container: use .mkv, .mp4 or .mov"),
    ("Invalid argument", "ffmpeg refused an option: check the output's extension, --codec and --pix-fmt"),
    ("Incompatible pixel format", "the encoder does not take this pixel format: pick another --pix-fmt"),
)
_STREAM = re.compile(r"stream #(?:\d+:)?(\d+)", re.IGNORECASE)
_CONTEXT = re.compile(r"^\[[^\]]+ @ 0x[0-9a-f]+\] ")  # "[mp4 @ 0x5610...] ": which part of ffmpeg spoke
_NOISE = ("Conversion failed!", "Error while filtering", "Nothing was written",
          "Terminating thread", "Error closing file", "[out#", "Task finished", "Last message repeated",
          "Error sending frames to consumers", "Error muxing a packet")


def ffmpeg_cause(stderr: str, kinds: dict[int, str] | None = None) -> str:
    """One line from ffmpeg's stderr: the lines that say why it failed, the stream they name, and a fix.

    ``kinds``: output stream index -> "video"/"audio"/"subtitle", to name the stream a message is about.
    """
    lines = [_CONTEXT.sub("", line.strip()) for line in stderr.splitlines() if line.strip()]
    telling = [line for line in lines if not any(n in line for n in _NOISE)] or lines
    why = "; ".join(dict.fromkeys(telling[:4])) or "no message"
    for needle, fix in _FFMPEG_CAUSES:
        line = next((x for x in lines if needle.lower() in x.lower()), None)
        if line is None:
            continue
        m = _STREAM.search(line)
        kind = (kinds or {}).get(int(m.group(1))) if m else None
        stream = f"the {kind} stream (output stream {m.group(1)})" if kind else "a stream"
        audio_fix = ", or leave the audio out with --no-audio" if kind in (None, "audio") else ""
        if line not in why:
            why = f"{line}; {why}"
        return f"{why}; {fix.format(stream=stream, audio_fix=audio_fix)}"
    return f"{why}; check the output's extension (it picks the container), --codec and --pix-fmt"
