"""``erdn deblur INPUT -o OUTPUT``: a video file through vspipe + the worker into ffmpeg.

The graph is an ordinary .vpy script (``--script`` prints it): the ``bs`` source plugin
reads INPUT, ``erdn_vs.deblur`` restores it, and a frame range is cut *after* deblurring,
so a chunk reads the neighbours it needs across its boundaries and chunks concatenate
to exactly the single-run output.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import source
from .manifest import choose_model, load_manifest

PROG = "erdn deblur"


class RenderError(Exception):
    """A problem the user can fix; the message says what to do."""


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
    frame keeps its own (``source.keep_timestamps``), so the output must be piped as Matroska.
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
        f"clip = core.bs.VideoSource({str(Path(input_path).resolve())!r})",
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
        lines[lines.index("import erdn_vs")] = "import erdn_vs.source"  # binds erdn_vs too
        lines.append(f"clip = erdn_vs.source.keep_timestamps(clip, {str(timecodes)!r})  # variable frame rate")
    if frame_range is not None:
        end = "" if frame_range.end is None else str(frame_range.end)
        lines.append(f"clip = clip[{frame_range.start}:{end}]  # after deblur: neighbours across the cut are read")
    lines.append("clip.set_output()")
    return "\n".join(lines) + "\n"


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


def _endpoints(text: str) -> list[str]:
    """One ``--endpoint`` value: one endpoint or several separated by commas (deblur checks each)."""
    return [part.strip() for part in text.split(",")]


def requests_args(args: argparse.Namespace) -> list[str]:
    """vspipe's frames in flight: with several workers, enough to cover a stripe on each of them."""
    endpoints = [e for group in args.endpoint or [] for e in group]
    if len(endpoints) < 2:
        return []
    stripe = next(p.default for p in load_manifest().functions["deblur"] if p.name == "stripe")
    return ["--requests", str(len(endpoints) * int(stripe))]


def script_for(args: argparse.Namespace, timecodes: Path | None = None) -> str:
    """The .vpy for parsed ``erdn deblur`` arguments (what --script prints and render() runs)."""
    endpoint = None if args.endpoint is None else [e for group in args.endpoint for e in group]
    cuts = read_scene_cuts(args.scene_cuts) if args.scene_cuts else None
    return build_script(args.input, model=args.model, weights=args.weights, window=args.window, device=args.device,
                        precision=args.precision, endpoint=endpoint, frame_range=args.frames, scene_cuts=cuts,
                        timecodes=timecodes)


def ffmpeg_exe() -> str:
    """The system ffmpeg, else the one inside the imageio-ffmpeg wheel."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:
        raise RenderError("no ffmpeg found: install ffmpeg or `pip install imageio-ffmpeg`") from None
    return imageio_ffmpeg.get_ffmpeg_exe()


def vspipe_exe() -> str:
    here = Path(sys.executable).with_name("vspipe")
    if here.exists():
        return str(here)
    found = shutil.which("vspipe")
    if not found:
        raise RenderError("vspipe not found: install the `vapoursynth` package in this environment")
    return found


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


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description="Deblur a video file with ERDN (vspipe + worker + ffmpeg).")
    p.add_argument("input", help="input video file (anything the bs source plugin reads)")
    p.add_argument("-o", "--output", help="output video file (its extension picks the container)")
    p.add_argument("--script", action="store_true", help="print the equivalent .vpy script and exit")
    p.add_argument("--model", help="model name from plugin_manifest.yaml (default: the first one listed there)")
    p.add_argument("--weights", help="weights file to use instead of a named model")
    p.add_argument("--window", type=int, choices=(3, 5), default=None,
                   help="temporal window: 3 or 5 frames (default: the model's own)")
    p.add_argument("--device", default="auto", help="worker device: auto, cpu, cuda, cuda:N")
    p.add_argument("--precision", default="auto", help="auto, fp32, fp16, bf16")
    p.add_argument("--endpoint", action="append", type=_endpoints,
                   help="worker endpoint (default: the per-user ipc socket); give it again, or separate endpoints "
                        "by commas, to spread the frames over several workers (one per GPU)")
    p.add_argument("--frames", type=FrameRange.parse, metavar="START:END",
                   help="render only output frames START..END-1 (chunks concatenate exactly)")
    p.add_argument("--codec", default="auto", help="ffmpeg video encoder (default libx264; ffv1 with --lossless)")
    p.add_argument("--crf", type=float, help="quality for x264/x265 (default 16)")
    p.add_argument("--preset", default="medium", help="x264/x265 speed preset")
    p.add_argument("--pix-fmt", help="output pixel format (default: the source's)")
    p.add_argument("--lossless", action="store_true", help="lossless intermediate (ffv1, or x264 -qp 0)")
    p.add_argument("--no-audio", action="store_true", help="do not copy the input's audio")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--scene-cuts", metavar="FILE",
                   help="text file listing the frames that start a new scene (e.g. from PySceneDetect): windows "
                        "never mix two scenes, and --ray cuts its chunks there")
    farm = p.add_argument_group("render farm (Ray; `pip install 'erdn-vs[cluster]'`)")
    farm.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                      help="render chunks on Ray: alone, a local Ray on this machine; `auto`, the cluster this "
                           "machine belongs to; or ray://HEAD:10001")
    farm.add_argument("--chunk-frames", type=int, default=1000, metavar="N",
                      help="frames per chunk, about (default 1000: minutes of one GPU)")
    farm.add_argument("--actors", type=int, metavar="N",
                      help="chunk renderers (default: one per GPU of the cluster, else one per CPU)")
    farm.add_argument("--ship-input", action="store_true",
                      help="send the input (and --weights) to the nodes through Ray's object store, "
                           "for nodes that share no filesystem")
    farm.add_argument("--chunk-dir", metavar="DIR",
                      help="where finished chunks are kept so a rerun resumes (default: .OUTPUT.chunks next to "
                           "the output)")
    farm.add_argument("--keep-chunks", action="store_true", help="keep the finished chunks after joining them")
    args = p.parse_args(argv)
    if not args.script and not args.output:
        p.error("the following arguments are required: -o/--output (or use --script)")
    return args


def check_paths(input_path: Path, output: Path) -> None:
    if not input_path.is_file():
        raise RenderError(f"cannot read input {input_path}: no such file")
    if not os.access(input_path, os.R_OK):
        raise RenderError(f"cannot read input {input_path}: permission denied")
    parent = output.resolve().parent
    if not parent.is_dir():
        raise RenderError(f"cannot write {output}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise RenderError(f"cannot write {output}: directory {parent} is not writable")
    if output.resolve() == input_path.resolve():
        raise RenderError("the output must not overwrite the input")


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


def audio_input_args(input_path: Path, frame_range: FrameRange | None, fps: float,
                     times: source.SourceInfo | None = None) -> list[str]:
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


def vspipe_error(text: str) -> str:
    """The line of vspipe's stderr that says what went wrong (VapourSynth puts a Python traceback before it)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for prefix in ("vapoursynth.Error: ", "Python exception: "):
        for line in reversed(lines):
            if line.startswith(prefix):
                return line[len(prefix):]
    own = [line for line in lines if line.startswith("Error")]  # vspipe's own, e.g. "Error: Failed to ..."
    return (own or lines or ["vspipe gave no message"])[-1]


def script_info(vpy: Path) -> dict[str, str | float]:
    """The output clip's format, as ``vspipe --info`` reports it (evaluates the script, renders nothing)."""
    r = subprocess.run([vspipe_exe(), "--info", str(vpy)], capture_output=True, text=True, timeout=600,
                       stdin=subprocess.DEVNULL)
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


def check_window(model: str | None, weights: str | None, window: int | None) -> None:
    """``--window`` against the model's own window, in the command line's terms, before anything starts.

    Raises RenderError naming both. Anything else wrong with the model or weights is left to ``deblur()``."""
    if window is None:
        return
    try:
        choice = choose_model(model, weights)
    except ValueError:
        return
    if choice.frames is not None and choice.frames != window:
        raise RenderError(f"--window {window} does not fit {choice.label}, a {choice.frames}-frame model: "
                          f"pass --window {choice.frames} or leave --window out")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        check_window(args.model, args.weights, args.window)
        if args.script:
            print(script_for(args), end="")
            return 0
        if args.ray is not None:
            from .farm.driver import render_on_ray  # imports Ray; only here

            out = render_on_ray(args)
        else:
            out = render(args)
    except (RenderError, source.SourceError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    print(f"{PROG}: wrote {out}", file=sys.stderr)
    return 0
