"""A film's frame count through ``erdn deblur``: do file descriptors, memory and speed stay flat? (issue 28)

One hour at 24 fps is 86,400 frames. A 1080p hour cannot render on a CPU, so the frame count runs at
32x32 with random ``tiny`` weights: what grows with a clip's length (sockets, sessions, per-frame
state, caches) grows the same at any frame size. The input is a lossless file made by ffmpeg
(testsrc2 with temporal noise); with ``--period P`` its content repeats every P frames, so the worker's content-keyed
cache answers every window after the first P and the run measures the pipeline (vspipe, the
client, the wire, the worker's bookkeeping, ffmpeg) over the full length in minutes; with
``--period 0`` every frame differs and the model runs on every window.

The render is the user's command, ``python -m erdn_vs.cli deblur IN -o OUT.mkv --weights W`` with its
defaults (libx264, deblur's two lanes), and a worker it autostarts on a private endpoint. Every
``--interval`` seconds the script reads each process's open fds and VmRSS from /proc
(``proc_watch.py``) and the worker's frames served, then reports per process the peak and the
values after the first thousand frames and at the end, and the frames per second over the first
and the last ``--fps-window`` frames.

    nice -n 10 .venv/bin/python benchmarks/long_run.py [--frames 86400] [--period 48] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from proc_watch import Sample, Usage, Watch  # noqa: E402

from erdn_vs.client import WorkerClient, WorkerUnavailable  # noqa: E402


def ffmpeg_exe() -> str:
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def make_input(path: Path, frames: int, size: int, period: int) -> None:
    """``frames`` frames of testsrc2 at ``size``x``size`` with temporal noise (testsrc2 alone repeats at small
    sizes), FFV1: lossless, so each period decodes identically and without a period no two frames are equal."""
    loop = f",loop=loop=-1:size={period}" if period else ""
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={size}x{size}:rate=24,noise=alls=12:allf=t{loop}", "-frames:v", str(frames),
                    "-c:v", "ffv1", str(path)], check=True)


def tiny_weights(path: Path) -> Path:
    import torch

    from worker.model import build_model, save_model

    torch.manual_seed(0)
    return save_model(build_model("tiny", frames=5), path)


def fps_between(samples: list[Sample], start: int, end: int) -> float | None:
    """Frames per second from the first sample at or past ``start`` frames to the last at or before ``end``."""
    a = next((s for s in samples if s.frames >= start), None)
    b = next((s for s in reversed(samples) if s.frames <= end), None)
    if a is None or b is None or b.t <= a.t:
        return None
    return (b.frames - a.frames) / (b.t - a.t)


def at_frames(samples: list[Sample], frames: int | None) -> dict[str, Usage]:
    """Per role, the usage in the first sample at or past ``frames`` frames (None: the last sample that saw the
    processes), summed over a role's processes."""
    seen = [s for s in samples if s.procs]
    s = seen[-1] if frames is None and seen else next((s for s in seen if s.frames >= (frames or 0)), None)
    out: dict[str, Usage] = {}
    for r, u in (s.procs.values() if s else []):
        p = out.get(r, Usage(0, 0))
        out[r] = Usage(p.fds + u.fds, p.rss_kib + u.rss_kib)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=86_400, help="frames to render (default 86400: 1 h at 24 fps)")
    p.add_argument("--size", type=int, default=32, help="frame width and height (default 32)")
    p.add_argument("--period", type=int, default=48,
                   help="content repeats every PERIOD frames (0: every frame differs, the model runs on each)")
    p.add_argument("--weights", help="weights file (default: random tiny weights)")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    p.add_argument("--fps-window", type=int, default=2000, help="frames over which start and end fps are measured")
    p.add_argument("--timeout", type=float, default=6 * 3600, help="stop the render after this many seconds")
    p.add_argument("--json", help="also write the figures and every sample here")
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="erdn-long-") as tmp:
        tmp = Path(tmp)
        run = tmp / "run"
        run.mkdir(mode=0o700)
        env = {**os.environ, "XDG_RUNTIME_DIR": str(run), "PYTHONPATH": str(REPO)}
        endpoint = f"ipc://{run}/long.sock"
        t0 = time.monotonic()
        src = tmp / "in.mkv"
        make_input(src, args.frames, args.size, args.period)
        weights = Path(args.weights) if args.weights else tiny_weights(tmp / "tiny5.safetensors")
        print(f"input: {args.frames} frames at {args.size}x{args.size}, period {args.period or 'none'} "
              f"({time.monotonic() - t0:.0f} s to make)", file=sys.stderr)
        out, log = tmp / "out.mkv", tmp / "deblur.log"
        cmd = [sys.executable, "-m", "erdn_vs.cli", "deblur", str(src), "-o", str(out), "--weights", str(weights),
               "--endpoint", endpoint, "--quiet"]
        client = WorkerClient(endpoint, autostart=False, timeout=5)

        def progress() -> int | None:
            try:
                return int(client.stats()["frames_served"])
            except WorkerUnavailable:
                return None

        started = time.monotonic()
        with open(log, "wb") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env, start_new_session=True)
            with Watch(Watch.tree(lambda: [proc.pid]), progress, interval=args.interval) as watch:
                last_report = time.monotonic()
                while proc.poll() is None:
                    time.sleep(1)
                    if time.monotonic() - started > args.timeout:
                        os.killpg(proc.pid, 9)
                        break
                    if time.monotonic() - last_report > 60 and watch.samples:
                        s = watch.samples[-1]
                        print(f"{s.t:7.0f} s  frame {s.frames}  " + "  ".join(
                            f"{r} {u.fds} fds {u.rss_kib / 1024:.0f} MiB" for r, u in s.procs.values()),
                            file=sys.stderr)
                        last_report = time.monotonic()
        wall = time.monotonic() - started
        try:
            stats = client.stats()
            client.shutdown()
        except WorkerUnavailable:
            stats = {}
        client.close()
        rc = proc.returncode
        text = log.read_text(errors="replace")
        frames = watch.samples[-1].frames if watch.samples else 0
        samples = watch.samples
        window = args.fps_window
        first = samples[0].frames if samples else 0
        figures = {
            "frames_asked": args.frames, "frames_served": stats.get("frames_served", frames), "exit_code": rc,
            "size": args.size, "period": args.period, "wall_s": round(wall, 1),
            "fps_start": fps_between(samples, first, first + window),
            "fps_end": fps_between(samples, frames - window, frames),
            "peak": {r: vars(u) for r, u in watch.peaks().items()},
            "after_1000_frames": {r: vars(u) for r, u in at_frames(samples, 1000).items()},
            "at_end": {r: vars(u) for r, u in at_frames(samples, None).items()},
            "at_end_frames": next((s.frames for s in reversed(samples) if s.procs), None),
            "worker": {k: stats.get(k) for k in ("stage1_evals", "stage2_evals", "output_cache_hits", "cache_bytes",
                                                 "sessions_expired", "models_resident")},
            "sampling_errors": watch.errors,
        }
        print(json.dumps(figures, indent=2))
        print("\n| process | fds after 1,000 frames | fds at the end | peak fds | RSS after 1,000 frames (MiB) | "
              "RSS at the end | peak RSS |\n|---|---|---|---|---|---|---|")
        for r in ("vspipe", "ffmpeg", "worker"):
            a, e, pk = (figures[k].get(r, {}) for k in ("after_1000_frames", "at_end", "peak"))
            print(f"| {r} | {a.get('fds')} | {e.get('fds')} | {pk.get('fds')} | "
                  f"{a.get('rss_kib', 0) / 1024:.1f} | {e.get('rss_kib', 0) / 1024:.1f} | "
                  f"{pk.get('rss_kib', 0) / 1024:.1f} |")
        print(f"\nfps over the first {window} frames: {figures['fps_start'] or 0:.1f}; over the last {window}: "
              f"{figures['fps_end'] or 0:.1f}; {figures['frames_served']} frames in {wall:.0f} s; exit {rc}")
        if args.json:
            Path(args.json).write_text(json.dumps(
                {**figures, "samples": [{"t": round(s.t, 2), "frames": s.frames,
                                         "procs": {str(pid): [r, u.fds, u.rss_kib] for pid, (r, u) in s.procs.items()}}
                                        for s in samples]}))
        if rc != 0:
            print(f"the render failed: {text[-2000:]}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
