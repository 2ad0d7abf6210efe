"""The programs the file pipeline runs (ffmpeg, vspipe) and the error it reports to users."""

from __future__ import annotations

import shutil
import sys
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
