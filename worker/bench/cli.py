"""``erdn bench``: argument parsing, the loop over presets and sizes, the table and the JSON file."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

SECTIONS = ("throughput", "start", "pipeline", "cache", "vsmlrt")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
PROG = "erdn bench"


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a size looks like 640x360, got {text!r}") from None
    if w < 8 or h < 8:
        raise argparse.ArgumentTypeError(f"size {text!r}: width and height must be at least 8")
    return w, h


def _threads(text: str) -> int:
    """``default`` (0: the runtimes' own defaults, what a user gets) or a positive thread count."""
    if text == "default":
        return 0
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"threads are a positive number or 'default', got {text!r}")
    return value


def _list(kind, allowed: tuple[str, ...] | None = None):
    def parse(text: str) -> list:
        items = [kind(v.strip()) for v in text.split(",") if v.strip()]
        if not items:
            raise argparse.ArgumentTypeError("give at least one value")
        bad = [v for v in items if allowed is not None and v not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(allowed or ())}")
        return items
    return parse


def _default_entry() -> dict:
    """The manifest's first model entry (what ``deblur()`` runs when given no model); {} where there is none.

    Read from the manifest entry alone: the bench uses random weights, so the file itself need not be there."""
    from worker.registry import ModelNotFound, default_manifest, manifest_models

    try:
        return next(iter(manifest_models(default_manifest()).values()), {})
    except ModelNotFound:
        return {}


def default_window() -> int:
    """The temporal window (3 or 5) of the manifest's default model; 5 where the manifest does not say."""
    return int(_default_entry().get("frames") or 5)


def default_preset() -> str:
    """The preset of the manifest's default model; lite where the manifest does not say."""
    return str(_default_entry().get("preset") or "lite")


def parser() -> argparse.ArgumentParser:
    from worker.model import PRESETS

    p = argparse.ArgumentParser(
        prog=PROG,
        description="Measure speed side by side with random fixed-seed weights (speed, not quality): model "
        "throughput, cold/warm start, vspipe over the worker against the worker alone, the stage-1 cache, and "
        "vs-mlrt on the same weights. Prints raw figures and ratios against the targets.")
    p.add_argument("--preset", type=_list(str, tuple(PRESETS)), default=None,
                   help="preset(s), comma-separated (default: the default model's, as deblur() runs it; paper is "
                   "slow on a CPU: use a small size)")
    p.add_argument("--sizes", type=_list(_size), default=None,
                   help="WxH list (default 640x360,1280x720, plus 1920x1080 with CUDA)")
    p.add_argument("--window", type=int, choices=(3, 5), default=None,
                   help="the model's temporal window: 3 (one stage) or 5 (the two-stage cascade); default: the "
                   "default model's, as deblur() runs it")
    p.add_argument("--frames", type=int, default=10, help="clip length rendered through the worker (default 10)")
    p.add_argument("--compare-frames", type=int, default=3,
                   help="frames rendered by the stateless baselines, forward and vs-mlrt (default 3)")
    p.add_argument("--only", type=_list(str, SECTIONS), default=list(SECTIONS),
                   help=f"sections to run, comma-separated: {','.join(SECTIONS)}")
    p.add_argument("--backends", type=_list(str, ("torch", "onnx")), default=["torch", "onnx"],
                   help="backends of the throughput section (default torch,onnx)")
    p.add_argument("--repeats", type=int, default=3, help="repetitions (medians) of stage timings and starts")
    p.add_argument("--threads", type=_list(_threads), default=[1, 0],
                   help="intra-op threads of torch and onnxruntime in the worker and the measuring processes, "
                   "comma-separated; each setting runs every section: 'default' is what a user gets (the worker's "
                   "defaults; the bench sets no OMP_NUM_THREADS), a number pins it (default 1,default)")
    p.add_argument("--worker-backend", choices=["torch", "onnx"], default="torch",
                   help="the worker's --backend in the pipeline, cache and vs-mlrt sections (default torch)")
    p.add_argument("--vs-threads", type=int, default=0, help="VapourSynth core.num_threads (0: its default)")
    p.add_argument("--batch", type=int, default=2, help="erdn_vs.deblur batch: requests in flight (default 2)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--precision", type=_list(str, PRECISIONS), default=["auto"],
                   help="precision(s) of the torch backend, comma-separated: auto (the worker's default: fp16 on CUDA; "
                   "on the CPU bf16 where it has native bf16, else fp32), fp32, fp16, bf16 (autocast, as the "
                   "worker runs them; fp16 needs --device cuda)")
    p.add_argument("--official", type=Path, default=None, metavar="PATH",
                   help="paper preset: a checkout of the official ERDN code (github.com/TencentCloud/ERDN, used "
                   "unchanged, on the CPU); the cache section then runs its forward side by side with our "
                   "sequential render, on the same weights, and reports the ratio against the paper target")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    p.add_argument("--workdir", type=Path, default=Path("/tmp"),
                   help="where the bench makes its temp dir (weights, ONNX, sockets, rendered frames; removed at "
                   "the end); keep it short: ipc socket paths have a length limit (default /tmp)")
    p.add_argument("--json", type=Path, default=None, metavar="OUT", help="also write every figure as JSON")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    for name in ("frames", "compare_frames", "repeats", "batch"):
        if getattr(args, name) < 1:
            print(f"{PROG}: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return 2
    if args.preset is None:
        args.preset = ["paper"] if args.official is not None else [default_preset()]
    if args.official is not None and args.preset != ["paper"]:
        print(f"{PROG}: --official compares the paper preset: pass --preset paper", file=sys.stderr)
        return 2
    if args.window is None:  # the official ERDN is a 5-frame cascade; else what deblur() runs by default
        args.window = 5 if args.official is not None else default_window()
    if args.official is not None and args.window != 5:
        print(f"{PROG}: --official runs the official 5-frame ERDN: pass --window 5", file=sys.stderr)
        return 2
    if args.frames < 3:
        print(f"{PROG}: --frames must be at least 3 (a window needs a clip to slide over)", file=sys.stderr)
        return 2
    from worker.cpu_runtime import configure

    configure()  # the worker's own process settings, also for the baselines this process runs
    import torch

    default_threads = torch.get_num_threads()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(f"{PROG}: --device {args.device}: no CUDA GPU here; use --device cpu", file=sys.stderr)
        return 2
    if not args.device.startswith("cuda") and "fp16" in args.precision:
        print(f"{PROG}: --precision fp16 needs --device cuda; use fp32 or bf16 on the CPU", file=sys.stderr)
        return 2
    sizes = args.sizes or [(640, 360), (1280, 720)] + ([(1920, 1080)] if args.device.startswith("cuda") else [])
    from erdn_vs.pipeline.tools import RenderError, vspipe_exe

    from .harness import BenchError
    from .official import OfficialError
    from .vspipe import VspipeError

    try:
        vspipe = vspipe_exe()
    except RenderError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="erdn-bench-", dir=args.workdir))
    saved_env = {k: os.environ.get(k) for k in ("XDG_RUNTIME_DIR", "XDG_CACHE_HOME")}
    try:
        sections = run_all(args, sizes, root, vspipe, default_threads)
    except (BenchError, VspipeError, OfficialError, RuntimeError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    finally:
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(root, ignore_errors=True)
    header = [f"erdn bench: presets {','.join(args.preset)} ({args.window}-frame window), "
              f"sizes {','.join(f'{w}x{h}' for w, h in sizes)}, "
              f"{args.frames} frames (baselines {args.compare_frames}), "
              f"threads {','.join(str(t or 'default') for t in args.threads)} (default: {default_threads}), "
              f"worker backend {args.worker_backend}, VapourSynth threads {args.vs_threads or 'default'}, "
              f"batch {args.batch}, device {args.device}, precision {','.join(args.precision)}, "
              f"{os.cpu_count()} CPUs, torch {torch.__version__}; random weights (seed {args.seed}): speed, "
              "not quality"]
    from .report import format_table

    print(format_table(sections, header))
    if args.json is not None:
        report = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                  "sizes": [f"{w}x{h}" for w, h in sizes], "sections": [s.to_dict() for s in sections]}
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def run_all(args: argparse.Namespace, sizes: list[tuple[int, int]], root: Path, vspipe: str,
            default_threads: int) -> list:

    from worker.export import export_weights

    from . import sections as S
    from .harness import Bench, child_env, random_weights
    from .vspipe import write_scripts

    (root / "run").mkdir(mode=0o700)
    env = child_env(root, 0)
    os.environ["XDG_RUNTIME_DIR"] = env["XDG_RUNTIME_DIR"]  # this process's client: locks and log in there too
    os.environ["XDG_CACHE_HOME"] = env["XDG_CACHE_HOME"]
    deblur_vpy, vsmlrt_vpy = write_scripts(root)
    out = []
    for preset in args.preset:
        official = None
        if args.official is not None:  # the official model's random weights, converted: both compute the same
            from .official import load_official, save_as_ours

            official = load_official(args.official, args.seed)
            weights = save_as_ours(official, root / f"{preset}.safetensors")
        else:
            weights = random_weights(preset, args.seed, root / f"{preset}.safetensors", frames=args.window)
        onnx_dir = root / f"onnx-{preset}"
        if ("vsmlrt" in args.only or ("throughput" in args.only and "onnx" in args.backends)
                or ("cache" in args.only and args.worker_backend == "onnx")):
            t0 = time.perf_counter()
            export_weights(weights, onnx_dir)
            print(f"{PROG}: exported {preset} to ONNX in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        for (w, h), precision, threads in itertools.product(sizes, args.precision, args.threads):
            b = Bench(root=root, env=child_env(root, threads), endpoint=f"ipc://{root}/run/bench.sock",
                      vspipe=vspipe, deblur_vpy=deblur_vpy, vsmlrt_vpy=vsmlrt_vpy, preset=preset, window=args.window,
                      width=w, height=h, length=args.frames, compare_frames=args.compare_frames, repeats=args.repeats,
                      threads=threads, default_threads=default_threads, backend=args.worker_backend,
                      vs_threads=args.vs_threads, batch=args.batch, device=args.device, precision=precision,
                      weights=weights, onnx_dir=onnx_dir, pair_forward="cache" in args.only,
                      pair_vsmlrt="vsmlrt" in args.only, official=official)
            try:
                for key in SECTIONS:
                    if key not in args.only:
                        continue
                    t0 = time.perf_counter()
                    if key == "throughput":
                        section = S.throughput(b, args.backends)
                    else:
                        section = getattr(S, key)(b)
                    section.meta = {"preset": preset, "size": f"{w}x{h}", "precision": precision,
                                    "device": args.device, "threads": b.threads_label}
                    print(f"{PROG}: {preset} {w}x{h} {precision} {b.threads_label} {key} done in "
                          f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
                    out.append(section)
            finally:
                b.stop_worker()
    return out
