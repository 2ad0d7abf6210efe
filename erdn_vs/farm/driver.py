"""``erdn deblur --ray``: the driver. It plans the chunks, runs them on Ray actors, joins them.

1. Probe the graph here (``vspipe --info``): length, frame rate, format. Bad input fails now, once.
2. Plan chunks (``plan``); skip those the chunk store already holds (a rerun resumes).
3. Connect to Ray: a local instance (``--ray``), this machine's cluster (``auto``) or an address.
4. One ``ChunkRenderer`` actor per GPU, else per CPU; each takes the next chunk when it finishes
   one. Ray restarts a lost actor and retries its chunk (``RETRIES`` times); the progress line
   counts those retries. A chunk that fails for another reason stops the render with its message.
5. Each chunk's bytes come back through the object store into the store (frame count checked).
6. Join: ffmpeg's concat demuxer copies the chunks' video (no re-encoding) and the source's audio.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import subprocess
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any, NoReturn

from ..manifest import load_manifest
from ..pipeline import encode, graph, source
from ..pipeline.graph import FrameRange
from ..pipeline.output import Claim, check_paths
from ..pipeline.render import scene_cuts
from ..pipeline.tools import RenderError, ffmpeg_cause, ffmpeg_exe, vspipe_env
from .plan import Chunk, plan_chunks
from .renderer import ChunkFailed, ChunkJob, ChunkRenderer, Shipped
from .store import ChunkStore, chunk_suffix, count_frames, file_identity, run_key

PROG = "erdn deblur --ray"
RETRIES = 3  # Ray restarts a lost actor, and retries the chunk it held, this many times
POLL_S = 1.0  # how often the progress line is refreshed
ACTOR_START_S = 600.0  # actors not placed by then (no free GPU/CPU anywhere) are given up


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RenderError("--ray needs Ray: `pip install 'erdn-vs[cluster]'` (or `pip install ray`)") from None
    return ray


def _note(text: str) -> None:
    sys.stderr.write(f"\r{PROG}: {text}\n")
    sys.stderr.flush()


def render_on_ray(args: argparse.Namespace) -> Path:
    """Render ``args`` (parsed ``erdn deblur`` options) on Ray; returns the output path.

    Raises RenderError with one message for anything the user can fix, and for a chunk that
    failed (naming the chunk, the node and the worker log there).
    """
    ray = _import_ray()
    if args.endpoint:
        raise RenderError("--endpoint does not go with --ray: every Ray actor starts its own worker")
    if args.chunk_frames < 1:
        raise RenderError(f"--chunk-frames must be at least 1, got {args.chunk_frames}")
    if args.actors is not None and args.actors < 1:
        raise RenderError(f"--actors must be at least 1, got {args.actors}")
    input_path, output = Path(args.input), Path(args.output)
    check_paths(input_path, output)
    with Claim(output) as claim:
        return _render_on_ray(ray, args, input_path, output, claim)


def _render_on_ray(ray: Any, args: argparse.Namespace, input_path: Path, output: Path, claim: Claim) -> Path:
    info, src, timecodes = _probe(args, input_path)
    cuts = scene_cuts(args, src)
    length = int(info["Frames"])
    start = args.frames.start if args.frames else 0
    end = min(length, args.frames.end or length) if args.frames else length
    if start >= length:
        raise RenderError(f"--frames starts at {start}, but {input_path} has {length} frames")
    chunks = plan_chunks(start, end, args.chunk_frames, cuts)
    encoder = encode.metadata_args(src, args.pix_fmt) + encode.encoder_args(args.codec, args.crf, args.pix_fmt,
                                                                           args.lossless, args.preset)
    job = ChunkJob(input=str(input_path.resolve()), model=args.model,
                   weights=str(Path(args.weights).resolve()) if args.weights else None, window=args.window,
                   device=args.device, precision=args.precision, scene_cuts=tuple(cuts),
                   info={k: info[k] for k in ("Width", "Height", "Color Family", "Sample Type", "Bits", "FPS",
                                              "Format Name", "fps") if k in info},
                   encoder=tuple(encoder), timecodes=timecodes, suffix=chunk_suffix(output))
    identity = _identity(args, job, chunks)
    key = run_key(identity)
    root = Path(args.chunk_dir) if args.chunk_dir else output.resolve().parent / f".{output.name}.chunks"
    try:
        store = ChunkStore(root, key, identity, job.suffix)
    except OSError as e:
        raise RenderError(f"cannot keep chunks in {root}: {e}; pass --chunk-dir DIR on a writable disk") from None
    todo = [c for c in chunks if not store.done(c)]
    resumed = len(chunks) - len(todo)
    if resumed:
        _note(f"resuming: {resumed} of {len(chunks)} chunks are already rendered in {store.dir}")
    t0 = time.monotonic()
    summary: dict[str, Any] = {}
    if todo:
        _connect(ray, args.ray)
        try:
            shipped = _ship(ray, key, job, input_path) if args.ship_input else None
            farm = _Farm(ray, store, job, shipped, args.actors, key, src=src, first=start, total=end - start,
                         done=sum(c.frames for c in chunks) - sum(c.frames for c in todo), quiet=args.quiet)
            summary = farm.run(todo)
        finally:
            ray.shutdown()
    t_join = time.monotonic()
    join(store, chunks, input_path, claim, frame_range=args.frames if args.frames else None, src=src,
         audio=not args.no_audio)
    joined = time.monotonic()
    if not args.keep_chunks:
        store.remove()
    _note(_summary(len(chunks), resumed, end - start, joined - t0, joined - t_join, summary))
    return output


def _probe(args: argparse.Namespace, input_path: Path) -> tuple[dict[str, Any], source.SourceInfo, str | None]:
    """(the whole graph's format, the input's frames and timestamps, a VFR input's timecodes text),
    evaluated here once as ``erdn deblur`` does: bad input fails before any chunk."""
    with tempfile.TemporaryDirectory(prefix="erdn-farm-") as tmp:
        src = source.probe(input_path, Path(tmp))
        script = graph.build_script(input_path, model=args.model, weights=args.weights, window=args.window,
                                     device=args.device, precision=args.precision,
                                     timecodes=src.timecodes if src.variable_rate else None)
        vpy = Path(tmp) / "deblur.vpy"
        vpy.write_text(script)
        try:
            info = graph.script_info(vpy, vspipe_env(Path(tmp)))
        except RenderError as e:
            raise RenderError(f"rendering {input_path} failed: {e}") from None
        graph.pipe_formats(info, src.variable_rate)  # a format ffmpeg cannot take fails here, not in every chunk
        timecodes = src.timecodes.read_text() if src.variable_rate else None  # the file goes with tmp
    return info, src, timecodes


def _identity(args: argparse.Namespace, job: ChunkJob, chunks: list[Chunk]) -> dict[str, Any]:
    """Everything that changes the chunks' bytes: their store is named by it."""
    model = None
    if not args.weights:
        manifest = load_manifest()
        entry = manifest.model(args.model or manifest.models[0].name)
        model = {"name": entry.name, "sha256": entry.sha256}
    return {
        "input": file_identity(job.input),
        "model": model,
        "weights": file_identity(job.weights) if job.weights else None,
        "window": job.window, "device": job.device, "precision": job.precision,
        "scene_cuts": list(job.scene_cuts), "encoder": list(job.encoder), "format": job.info,
        "container": job.suffix,
        "chunks": [[c.start, c.end] for c in chunks],
        "erdn_vs": importlib.metadata.version("erdn-vs"),
    }


#: Tries of a Ray client (ray://) connection the server refused while starting its per-client process.
CLIENT_CONNECT_TRIES = 3


def _connect(ray: Any, address: str) -> None:
    for attempt in range(1, CLIENT_CONNECT_TRIES + 1):
        try:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False,
                     **({"include_dashboard": False} if address == "local" else {}))
            return
        except ConnectionAbortedError as e:
            # A Ray client server answers "Initialization failure from server" when the process it starts
            # for each client is not ready within its 30 s (RAY_CLIENT_SERVER_CHECK_CHANNEL_TIMEOUT_S on
            # the head), as on a busy head node; a new connection usually finds it up.
            if attempt == CLIENT_CONNECT_TRIES or not address.startswith("ray://"):
                _refuse(address, e)
            ray.shutdown()  # drop the half-made client connection before the next try
            time.sleep(2.0 * attempt)
        except Exception as e:  # noqa: BLE001 (Ray raises ConnectionError, RuntimeError, ValueError...)
            _refuse(address, e)


def _refuse(address: str, e: Exception) -> NoReturn:
    where = "a local Ray instance" if address == "local" else f"the Ray cluster at {address!r}"
    raise RenderError(f"cannot start or reach {where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                      "start one with `ray start --head`, or use --ray alone for a local one") from None


def _ship(ray: Any, key: str, job: ChunkJob, input_path: Path) -> Shipped:
    """Put the input (and a weights file) into the object store, once; actors fetch them once per node."""
    import numpy as np

    files = {"input": (ray.put(np.memmap(input_path, mode="r")), input_path.name)}
    if job.weights:
        files["weights"] = (ray.put(np.memmap(job.weights, mode="r")), Path(job.weights).name)
    return Shipped(key=key, files=files)


class _Farm:
    """The actors and the chunk queue of one render."""

    def __init__(self, ray: Any, store: ChunkStore, job: ChunkJob, shipped: Shipped | None, actors: int | None,
                 key: str, *, src: source.SourceInfo, first: int, total: int, done: int, quiet: bool) -> None:
        self.ray, self.store, self.job, self.shipped = ray, store, job, shipped
        self.src, self.first = src, first  # the output's timeline starts at frame ``first``
        self.requested = actors
        self.key = key
        self.total, self.done, self.quiet = total, done, quiet
        self.rendered = 0  # frames rendered by this run (the frame rate counts only these)
        self.retried = 0
        self.nodes: set[str] = set()  # Ray node ids that rendered a chunk

    def run(self, todo: list[Chunk]) -> dict[str, Any]:
        ray = self.ray
        t0 = time.monotonic()
        handles, info = self._start_actors(min(len(todo), self._slots()))
        actor_start = time.monotonic() - t0
        try:
            self._schedule(todo, handles, info)
            stats = [s for s in ray.get([h.stats.remote() for h in handles], timeout=60) if s]
            ray.get([h.shutdown.remote() for h in handles], timeout=60)
        finally:
            for h in handles:
                ray.kill(h)
        return {"actors": len(handles), "nodes": len(self.nodes), "actor_start_s": actor_start, "stats": stats}

    def _slots(self) -> int:
        free = self.ray.available_resources()
        self.gpus = int(free.get("GPU", 0))
        slots = self.gpus or max(1, int(free.get("CPU", 1)))
        if self.requested is not None:
            if self.requested > slots:
                _note(f"--actors {self.requested}: the cluster has {slots} free "
                      f"{'GPUs' if self.gpus else 'CPUs'}; starting {slots}")
            slots = min(slots, self.requested)
        return slots

    def _start_actors(self, n: int) -> tuple[list[Any], list[dict[str, Any]]]:
        ray = self.ray
        options = {"max_restarts": RETRIES, "max_task_retries": RETRIES, "max_concurrency": 2, "num_cpus": 1}
        if self.gpus:
            options["num_gpus"] = 1
        cls = ray.remote(ChunkRenderer)
        handles = [cls.options(**options).remote(slot, self.key, 0 if self.gpus else 1) for slot in range(n)]
        refs = {h.describe.remote(): h for h in handles}
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=ACTOR_START_S)
        placed = [refs[r] for r in ready]
        for r in pending:  # no free GPU/CPU for it anywhere: let it go rather than wait forever
            ray.kill(refs[r])
        if not placed:
            raise RenderError(f"Ray placed no chunk renderer within {ACTOR_START_S:.0f} s: the cluster has no free "
                              f"{'GPU' if self.gpus else 'CPU'}; free one or lower --actors")
        info = ray.get([r for r in ready])
        return placed, info

    def _schedule(self, todo: list[Chunk], handles: list[Any], info: list[dict[str, Any]]) -> None:
        ray = self.ray
        queue = deque(todo)
        idle = deque(range(len(handles)))
        running: dict[Any, tuple[int, Chunk]] = {}  # render ref -> (actor, chunk)
        polls: dict[int, Any] = {}  # actor -> its outstanding progress ref
        partial = [0] * len(handles)  # frames done of each actor's current chunk
        incarnation = [i["incarnation"] for i in info]
        start = time.monotonic()
        try:
            while queue or running:
                while idle and queue:
                    a = idle.popleft()
                    chunk = queue.popleft()
                    start_s = _at(chunk.start, self.src) - _at(self.first, self.src)
                    running[handles[a].render.remote(chunk, start_s, self.job, self.shipped)] = (a, chunk)
                    partial[a] = 0
                ready, _ = ray.wait(list(running), num_returns=len(running), timeout=POLL_S)
                for ref in ready:
                    a, chunk = running.pop(ref)
                    result = self._result(ref, chunk, info[a])
                    if result["incarnation"] != incarnation[a]:
                        self._lost(chunk, info[a], incarnation, a, result["incarnation"])
                    self.store.put(chunk, result["data"])
                    self.nodes.add(result["node_id"])
                    self.done += chunk.frames
                    self.rendered += chunk.frames
                    partial[a] = 0
                    idle.append(a)
                busy = {a: chunk for a, chunk in running.values()}
                for a in busy:
                    polls.setdefault(a, handles[a].progress.remote())
                answered, _ = ray.wait(list(polls.values()), num_returns=len(polls), timeout=0)
                for a in [a for a, ref in polls.items() if ref in answered]:
                    try:
                        inc, index, frames = ray.get(polls.pop(a))
                    except ray.exceptions.RayError:
                        continue  # the actor is restarting; the next poll sees its new incarnation
                    if inc != incarnation[a] and a in busy:
                        self._lost(busy[a], info[a], incarnation, a, inc)
                    partial[a] = frames if a in busy and index == busy[a].index else 0
                self._show(start, len(running), sum(partial))
        finally:
            if not self.quiet:
                sys.stderr.write("\n")

    def _lost(self, chunk: Chunk, actor: dict[str, Any], incarnation: list[str], a: int, new: str) -> None:
        incarnation[a] = new
        self.retried += 1
        _note(f"{chunk.describe()}: its actor on node {actor['node']} was lost (worker log {actor['log']} there); "
              "Ray restarted it and retries the chunk")

    def _result(self, ref: Any, chunk: Chunk, actor: dict[str, Any]) -> dict[str, Any]:
        ray = self.ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, ChunkFailed):
                raise RenderError(str(e.cause)) from None
            raise RenderError(f"{chunk.describe()} failed on node {actor['node']} "
                              f"(worker log {actor['log']} there): {e.cause!r}") from None
        except ray.exceptions.RayError as e:  # the actor died more than RETRIES times, or its node is gone
            raise RenderError(f"{chunk.describe()} failed: its actor on node {actor['node']} was lost "
                              f"{RETRIES + 1} times (worker log {actor['log']} there): "
                              f"{str(e).strip().splitlines()[0]}") from None

    def _show(self, start: float, running: int, partial: int) -> None:
        if self.quiet:
            return
        elapsed = time.monotonic() - start
        rendered = self.rendered + partial
        fps = rendered / elapsed if elapsed > 0 else 0.0
        done = self.done + partial
        eta = f"{(self.total - done) / fps:6.0f} s" if fps > 0 else "     ? s"
        sys.stderr.write(f"\r{PROG}: frame {done}/{self.total}  {fps:.2f} fps  ETA {eta}  "
                         f"chunks {running} running, {self.retried} retried ")
        sys.stderr.flush()


def _concat_entry(path: Path, start: float, end: float) -> str:
    """One chunk in an ffconcat list. Its frames already sit at their place on the timeline; ``inpoint``
    (where it starts) and ``duration`` tell the concat demuxer so, instead of leaving it to guess."""
    return "file '" + str(path).replace("'", "'\\''") + f"'\ninpoint {start:.6f}\nduration {end - start:.6f}\n"


def _at(n: int, src: source.SourceInfo) -> float:
    """When frame ``n`` starts: its own timestamp in a variable-frame-rate input, else n / rate exactly
    (the timecodes are rounded to 1 ms)."""
    return float(src.time_of(n)) if src.variable_rate else float(n / src.fps)


def join(store: ChunkStore, chunks: list[Chunk], input_path: Path, claim: Claim, *,
         frame_range: FrameRange | None, src: source.SourceInfo, audio: bool) -> None:
    """Concatenate the chunks' video without re-encoding, with the source's audio, into ``claim.output``.

    Written under the claim's partial name and renamed once it holds every frame. Raises RenderError.
    """
    output, partial = claim.output, claim.partial
    total = sum(c.frames for c in chunks)
    listing = store.dir / "join.ffconcat"
    origin = _at(frame_range.start if frame_range else 0, src)  # where the output's timeline starts
    listing.write_text("ffconcat version 1.0\n" + "".join(
        _concat_entry(store.path(c), _at(c.start, src) - origin, _at(c.end, src) - origin) for c in chunks))
    ff = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0",
          "-i", str(listing)]
    if audio:
        inputs, outputs = encode.audio_args(src, frame_range, output.suffix)
        ff += [*inputs, "-map", "0:v:0", *outputs]
    else:
        ff += ["-map", "0:v:0"]
    ff += ["-c:v", "copy", str(partial)]
    r = subprocess.run(ff, capture_output=True, stdin=subprocess.DEVNULL, timeout=None)
    if r.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RenderError(f"joining the chunks into {output} failed (ffmpeg exit {r.returncode}): "
                          f"{ffmpeg_cause(r.stderr.decode(errors='replace'))}; the chunks stay in {store.dir}")
    frames = count_frames(partial)
    if frames != total:
        partial.unlink(missing_ok=True)
        raise RenderError(f"the joined video holds {frames} frames, not {total}; the chunks stay in {store.dir}")
    claim.commit()


def _summary(chunks: int, resumed: int, frames: int, seconds: float, join_s: float, farm: dict[str, Any]) -> str:
    text = f"{chunks} chunks ({resumed} resumed), {frames} frames in {seconds:.1f} s"
    if farm:
        stats = farm["stats"]
        served = sum(s.get("frames_served", 0) for s in stats)
        evals = sum(s.get("stage1_evals", 0) + s.get("stage2_evals", 0) for s in stats)
        loads = sum(s.get("models_loaded", 0) for s in stats)
        load_s = sum(s.get("model_load_seconds", 0.0) for s in stats)
        text += f" on {farm['actors']} actors, {farm['nodes']} nodes (actors started in {farm['actor_start_s']:.1f} s)"
        if served:
            text += f"; {evals / served:.2f} stage evaluations per frame"
        if stats:
            text += f"; worker start {max(s.get('worker_start_s', 0.0) for s in stats):.1f} s"
        if loads:
            text += f", model loaded {loads}x ({load_s / loads:.2f} s each)"
    return text + f"; join {join_s:.2f} s"
