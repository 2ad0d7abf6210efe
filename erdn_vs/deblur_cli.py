"""``erdn deblur INPUT -o OUTPUT``: the command line of the file pipeline.

It parses the options and hands them to the plain render (``pipeline.render``) or, with ``--ray``,
to the render farm (``farm.driver``). Neither of those imports this module.
"""

from __future__ import annotations

import argparse
import signal
import sys

from .manifest import choose_model
from .pipeline import source
from .pipeline.graph import FrameRange, script_for
from .pipeline.tools import RenderError

PROG = "erdn deblur"


def _endpoints(text: str) -> list[str]:
    """One ``--endpoint`` value: one endpoint or several separated by commas (deblur checks each)."""
    return [part.strip() for part in text.split(",")]


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
    p.add_argument("--scene-cuts", metavar="FILE|none",
                   help="scene cuts are found by default (ffmpeg's scdet), so that no window mixes two shots and "
                        "--ray cuts its chunks there; FILE lists the frames that start a new scene instead (e.g. "
                        "from PySceneDetect), `none` turns them off")
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


class Interrupted(BaseException):
    """SIGTERM or SIGHUP arrived (SIGINT is KeyboardInterrupt): unwinds the render like Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupt(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        check_window(args.model, args.weights, args.window)
        if args.script:
            print(script_text(args), end="")
            return 0
        if args.ray is not None:
            from .farm.driver import render_on_ray  # imports Ray; only here

            out = render_on_ray(args)
        else:
            from .pipeline.render import render

            out = render(args)
    except (RenderError, source.SourceError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted) as e:
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        print(f"{PROG}: stopped by {signal.Signals(signum).name}: vspipe and ffmpeg stopped, the worker session "
              f"closed, no partial output left", file=sys.stderr)
        return 128 + signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"{PROG}: wrote {out}", file=sys.stderr)
    return 0


def script_text(args: argparse.Namespace) -> str:
    """What --script prints: the render's script, with the scene cuts found in the input (or given)."""
    import tempfile
    from pathlib import Path

    from .pipeline.render import scene_cuts

    with tempfile.TemporaryDirectory(prefix="erdn-script-") as tmp:
        src = source.probe(Path(args.input), Path(tmp))
        return script_for(args, cuts=scene_cuts(args, src))
