"""The .vpy script that ``erdn deblur`` renders, and what vspipe says about it.

The graph is an ordinary VapourSynth script (``erdn deblur --script`` prints it): the ``bs`` source
plugin reads the input, scene starts are marked, ``erdn_vs.deblur`` restores it, and a frame range
is cut *after* deblurring, so a chunk reads the neighbours it needs across its boundaries and
chunks concatenate to exactly the single-run output.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .source import source_arg
from .tools import RenderError, vspipe_exe


@dataclass(frozen=True)
class FrameRange:
    start: int
    end: int | None  # exclusive; None = to the end

    @classmethod
    def parse(cls, text: str) -> FrameRange:
        m = re.fullmatch(r"\s*(\d*)\s*:\s*(\d*)\s*", text)
        if not m:
            raise argparse.ArgumentTypeError(f"frame range must look like START:END (0:1000, 500:), got {text!r}")
        start = int(m.group(1)) if m.group(1) else 0
        end = int(m.group(2)) if m.group(2) else None
        if end is not None and end <= start:
            raise argparse.ArgumentTypeError(f"frame range {text!r} is empty: END must be greater than START")
        return cls(start, end)


def build_script(
    input_path: str | Path,
    *,
    model: str | None = None,
    weights: str | None = None,
    window: int | None = None,
    device: str = "auto",
    precision: str = "auto",
    endpoint: str | list[str] | None = None,
    frame_range: FrameRange | None = None,
    timecodes: str | Path | None = None,
    scene_cuts: list[int] | None = None,
    autostart: bool = True,
) -> str:
    """The .vpy text that ``erdn deblur`` renders; users can take it into their own scripts.

    ``window``: 3 or 5 frames; None leaves it to the model (``deblur``'s default).
    ``endpoint``: one worker, or a list of several (deblur spreads the frames over them).
    ``timecodes``: a variable-frame-rate source's timestamps (``source.probe`` writes them); every
    frame keeps its own (``erdn_vs.pipeline.source.keep_timestamps``), so the output must be piped as Matroska.
    ``scene_cuts``: source frames that start a new scene; they get ``_SceneChangePrev=1``, so
    no temporal window mixes two scenes (bs.VideoSource sets no scene-change flags itself).
    """
    args = [] if window is None else [f"frames={window}"]
    if model is not None:
        args.append(f"model={model!r}")
    if weights is not None:
        args.append(f"weights={str(Path(weights).resolve())!r}")
    if device != "auto":
        args.append(f"device={device!r}")
    if precision != "auto":
        args.append(f"precision={precision!r}")
    if isinstance(endpoint, list) and len(endpoint) == 1:
        endpoint = endpoint[0]
    if endpoint is not None:
        args.append(f"endpoint={endpoint!r}")
    if not autostart:
        args.append("autostart=False")
    lines = [
        "import vapoursynth as vs",
        "import erdn_vs",
        "",
        "core = vs.core",
        f"clip = core.bs.VideoSource({source_arg(Path(input_path).resolve())!r})",
        f"clip = erdn_vs.deblur(clip, {', '.join(args)})",
    ]
    if scene_cuts:
        lines[-1:-1] = [
            f"SCENE_STARTS = frozenset({sorted(set(scene_cuts))!r})  # frames that start a new scene",
            "",
            "",
            "def mark_scene_start(n, f):",
            "    if n not in SCENE_STARTS:",
            "        return f",
            "    out = f.copy()",
            "    out.props['_SceneChangePrev'] = 1",
            "    return out",
            "",
            "",
            "clip = core.std.ModifyFrame(clip, clip, mark_scene_start)",
        ]
    if isinstance(endpoint, list):  # several workers: deblur runs `batch` (2) callbacks per worker at once
        lines.insert(4, f"core.num_threads = max(core.num_threads, {2 * len(endpoint)})")
    if timecodes is not None:
        lines[lines.index("import erdn_vs")] = "import erdn_vs.pipeline.source"  # binds erdn_vs too
        lines.append(f"clip = erdn_vs.pipeline.source.keep_timestamps(clip, {str(timecodes)!r})  # variable frame rate")
    if frame_range is not None:
        end = "" if frame_range.end is None else str(frame_range.end)
        lines.append(f"clip = clip[{frame_range.start}:{end}]  # after deblur: neighbours across the cut are read")
    lines.append("clip.set_output()")
    return "\n".join(lines) + "\n"


def script_for(args: argparse.Namespace, timecodes: Path | None = None, cuts: list[int] | None = None) -> str:
    """The .vpy for parsed ``erdn deblur`` arguments (what --script prints and render() runs).

    ``cuts``: the frames that start a new scene (``scenes``: detected, or from --scene-cuts FILE)."""
    endpoint = None if args.endpoint is None else [e for group in args.endpoint for e in group]
    return build_script(args.input, model=args.model, weights=args.weights, window=args.window, device=args.device,
                        precision=args.precision, endpoint=endpoint, frame_range=args.frames, scene_cuts=cuts,
                        timecodes=timecodes)


def vspipe_error(text: str) -> str:
    """The line of vspipe's stderr that says what went wrong (VapourSynth puts a Python traceback before it)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for prefix in ("vapoursynth.Error: ", "Python exception: "):
        for line in reversed(lines):
            if line.startswith(prefix):
                return line[len(prefix):]
    own = [line for line in lines if line.startswith("Error")]  # vspipe's own, e.g. "Error: Failed to ..."
    return (own or lines or ["vspipe gave no message"])[-1]


def script_info(vpy: Path, env: dict[str, str] | None = None) -> dict[str, str | float]:
    """The output clip's format, as ``vspipe --info`` reports it (evaluates the script, renders nothing).

    ``env``: vspipe's environment (``tools.vspipe_env``). Raises RenderError with the script's error."""
    r = subprocess.run([vspipe_exe(), "--info", str(vpy)], capture_output=True, text=True, timeout=600,
                       stdin=subprocess.DEVNULL, env=env, errors="replace")
    if r.returncode != 0:
        raise RenderError(f"the script could not be evaluated: {vspipe_error(r.stderr or r.stdout)}")
    info: dict[str, str | float] = {}
    for line in r.stdout.splitlines():
        key, _, value = line.partition(":")
        info[key.strip()] = value.strip()
    num, _, den = str(info.get("FPS", "0/0")).split(" ")[0].partition("/")
    info["fps"] = int(num) / int(den) if num.isdigit() and den.isdigit() and int(den) else 0.0
    return info


_RGB_PIX_FMT = {("Integer", "8"): "gbrp", ("Integer", "10"): "gbrp10le", ("Integer", "12"): "gbrp12le",
                ("Integer", "16"): "gbrp16le", ("Float", "32"): "gbrpf32le"}


def pipe_formats(info: dict[str, str | float], vfr: bool) -> tuple[list[str], list[str], list[str]]:
    """(vspipe output options, ffmpeg input options, ffmpeg output options) for the clip ``info`` describes.

    ``vfr``: the script keeps a variable-frame-rate source's timestamps (``timecodes=``).
    """
    vs_format, video_in = video_input_args(info)
    if vfr:  # vspipe's Matroska carries every frame's duration; y4m has one rate for all
        # each frame's own timestamp, in the time base it came with (not rounded to a nominal rate)
        return ["-c", "mkv"], ["-f", "matroska"], ["-fps_mode", "passthrough", "-enc_time_base:v", "demux"]
    return vs_format, video_in, []


def video_input_args(info: dict[str, str | float]) -> tuple[list[str], list[str]]:
    """(vspipe output options, ffmpeg input options): y4m for YUV/GRAY; raw planar RGB (G, B, R planes) for RGB."""
    if info.get("Color Family") != "RGB":
        return ["-c", "y4m"], ["-f", "yuv4mpegpipe"]
    pix_fmt = _RGB_PIX_FMT.get((str(info.get("Sample Type")), str(info.get("Bits"))))
    if pix_fmt is None or not info["fps"]:
        raise RenderError(f"cannot encode an {info.get('Format Name')} clip at {info.get('FPS')} fps: "
                          "convert it to RGB24/RGB48/RGBS or YUV first")
    return [], ["-f", "rawvideo", "-pix_fmt", pix_fmt, "-s", f"{info['Width']}x{info['Height']}",
                "-r", str(info["FPS"]).split(" ")[0]]


