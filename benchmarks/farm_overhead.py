"""What ``erdn deblur --ray`` costs against plain ``erdn deblur``: wall time, stage evaluations per frame.

The same clip, model and encoder settings. Every run starts cold, as a user's first command does:
plain ``erdn deblur`` on a worker this script starts (its start and model load are in the time),
the farm on an embedded Ray it starts itself. The runs go one after another in one process; the
CPU is shared, so this shows the farm's overhead, not a speed-up.

The fixed cost of a chunk (vspipe and ffmpeg start, script evaluation, opening and seeking the
source, the frame count, the transfer) is measured apart, where the model costs next to nothing:
one actor renders the clip with random ``tiny`` weights as 1 chunk and as chunks of 4 frames;
the difference divided by the extra chunks is the cost of one chunk.

    .venv/bin/python benchmarks/farm_overhead.py [--width 256 --height 144 --frames 48 --model erdn-lite-synth]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from erdn_vs.client import WorkerClient, WorkerUnavailable  # noqa: E402
from erdn_vs.pipeline.tools import ffmpeg_exe  # noqa: E402


def make_clip(path: Path, width: int, height: int, frames: int) -> None:
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={width}x{height}:rate=24", "-f", "lavfi", "-i", "sine=frequency=440",
                    "-frames:v", str(frames), "-t", f"{frames / 24:.4f}", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    "-c:a", "aac", str(path)], check=True)


def deblur(args: list[str], env: dict[str, str]) -> tuple[float, str]:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "erdn_vs.cli", "deblur", *args, "--quiet"], capture_output=True,
                       text=True, env=env)
    seconds = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit(f"erdn deblur {' '.join(args)} failed:\n{r.stderr}")
    return seconds, r.stderr


def plain(clip: Path, out: Path, model: str, threads: int, env: dict[str, str], tmp: Path) -> dict:
    """Plain erdn deblur on a fresh worker (started here, so its start and model load count)."""
    endpoint = f"ipc://{tmp}/plain-{threads}.sock"
    t0 = time.monotonic()
    worker = subprocess.Popen([sys.executable, "-m", "worker", "--endpoint", endpoint, "--threads", str(threads)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        with WorkerClient(endpoint, autostart=False, timeout=5) as client:
            while True:
                try:
                    client.ping()
                    break
                except WorkerUnavailable:
                    time.sleep(0.2)
            _, _ = deblur([str(clip), "-o", str(out), "--model", model, "--endpoint", endpoint], env)
            seconds = time.monotonic() - t0
            stats = client.stats()
    finally:
        worker.terminate()
        worker.wait()
    return {"seconds": seconds, "evals": stats["stage_evals_per_frame"], "detail": ""}


def farm(clip: Path, out: Path, model: list[str], actors: int, chunk: int, env: dict[str, str]) -> dict:
    seconds, err = deblur([str(clip), "-o", str(out), *model, "--ray", "--actors", str(actors),
                           "--chunk-frames", str(chunk)], env)
    summary = [line for line in err.splitlines() if "chunks (" in line][-1]
    evals = float(re.search(r"([\d.]+) stage evaluations per frame", summary).group(1))
    detail = re.sub(r"^.*?: \d+ chunks \(\d+ resumed\), \d+ frames in [\d.]+ s ", "", summary)
    return {"seconds": seconds, "evals": evals, "detail": detail}


def tiny_weights(path: Path) -> Path:
    import torch

    from worker.model import build_model, save_model

    torch.manual_seed(0)
    return save_model(build_model("tiny", frames=5), path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=144)
    p.add_argument("--frames", type=int, default=48)
    p.add_argument("--model", default="erdn-lite-synth")
    p.add_argument("--chunk", type=int, default=12, help="chunk size for the several-chunk runs")
    p.add_argument("--chunk-cost-only", action="store_true", help="measure only the fixed cost of a chunk")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="erdn-farm-bench-", dir="/tmp") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "run").mkdir(mode=0o700)
        env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp / "run"), PYTHONPATH=str(REPO))
        env.pop("ERDN_WORKER_ENDPOINT", None)
        clip = tmp / "clip.mp4"
        make_clip(clip, args.width, args.height, args.frames)
        n, c = args.frames, args.chunk
        model = ["--model", args.model]
        runs = [
            ("plain erdn deblur, worker --threads 1", lambda o: plain(clip, o, args.model, 1, env, tmp)),
            ("plain erdn deblur, worker --threads 2", lambda o: plain(clip, o, args.model, 2, env, tmp)),
            ("--ray, 1 actor, 1 chunk", lambda o: farm(clip, o, model, 1, n, env)),
            (f"--ray, 1 actor, {-(-n // c)} chunks", lambda o: farm(clip, o, model, 1, c, env)),
            (f"--ray, 2 actors, {-(-n // c)} chunks", lambda o: farm(clip, o, model, 2, c, env)),
        ]
        print(f"{args.model} at {args.width}x{args.height}, {n} frames, x264; {os.cpu_count()} CPUs (shared)")
        print(f"{'run':40s} {'wall s':>7s} {'fps':>6s} {'evals/frame':>11s}  farm summary")
        results = {}
        for name, run in [] if args.chunk_cost_only else runs:
            r = run(tmp / f"out-{len(results)}.mkv")
            results[name] = r
            print(f"{name:40s} {r['seconds']:7.1f} {n / r['seconds']:6.2f} {r['evals']:11.2f}  {r['detail']}",
                  flush=True)
        tiny = ["--weights", str(tiny_weights(tmp / "tiny.safetensors"))]
        one = farm(clip, tmp / "tiny-1.mkv", tiny, 1, n, env)
        several = farm(clip, tmp / "tiny-n.mkv", tiny, 1, 4, env)
        extra = -(-n // 4) - 1
        print(f"fixed cost of a chunk, random tiny weights, 1 actor: 1 chunk {one['seconds']:.1f} s, "
              f"{extra + 1} chunks {several['seconds']:.1f} s: {(several['seconds'] - one['seconds']) / extra:.2f} s "
              "per extra chunk")
    return 0


if __name__ == "__main__":
    sys.exit(main())
