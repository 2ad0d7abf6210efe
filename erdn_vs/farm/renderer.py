"""The Ray actor that renders chunks: one per GPU (or CPU slot), holding a warm ``erdn worker``.

The actor starts ``python -m worker`` on a node-local ipc endpoint and keeps it for its whole
life, so the model loads once per actor, not once per chunk. A chunk is the ordinary ``erdn
deblur`` graph cut to the chunk's frames (``pipeline.graph.build_script``), piped by vspipe into ffmpeg
(``pipeline.encode.pipe_into_ffmpeg``) into a file on the node; the file's bytes go back to the driver
through Ray's object store. The worker dies with the actor (``PR_SET_PDEATHSIG``); if the worker
dies first, the actor exits too, so that Ray restarts both and retries the chunk.

This module runs inside Ray worker processes; the VapourSynth graph runs in vspipe, a child.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..pipeline import encode, graph
from ..pipeline.tools import RenderError, ffmpeg_exe
from .plan import Chunk
from .store import count_frames

WORKER_START_S = 180.0  # a cold worker imports torch; on a loaded machine that takes a while
WORKER_DIED_EXIT = 75  # the actor's exit status when its worker died: Ray restarts the actor


class ChunkFailed(Exception):
    """A chunk could not be rendered; the message names the chunk, the node and the worker log."""


@dataclass(frozen=True)
class ChunkJob:
    """What every chunk of one render shares: the graph's options and the encoder's.

    ``input`` and ``weights`` are paths as the nodes see them, unless shipped (see ``Shipped``).
    ``info``: the graph's output format as ``pipeline.graph.script_info`` reports it (the driver's probe).
    ``timecodes``: a variable-frame-rate input's timestamps (timecodes v2 text), else None.
    ``suffix``: the chunks' container (the output's: ``store.chunk_suffix``).
    """

    input: str
    model: str | None
    weights: str | None
    window: int | None
    device: str
    precision: str
    scene_cuts: tuple[int, ...]
    info: dict[str, Any]
    encoder: tuple[str, ...]
    timecodes: str | None = None
    suffix: str = ".mkv"


@dataclass(frozen=True)
class Shipped:
    """Files sent through the object store (``--ship-input``): name -> (ObjectRef, file name).

    Nested in this object, the refs reach the actor as references (Ray resolves only top-level
    arguments), so the bytes are not copied on every call; the actor fetches a file once per node
    and keeps it under ``key``.
    """

    key: str
    files: dict[str, tuple[Any, str]]


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the thread that started it dies (Linux)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def node_dir(run: str) -> Path:
    """This user's scratch directory for one render on this node (short: ipc paths are limited)."""
    return Path(tempfile.gettempdir()) / f"erdn-farm-{os.getuid()}" / run


class ChunkRenderer:
    """The actor's body; ``driver`` makes it a Ray actor with the resources of one GPU or CPU slot.

    ``slot``: this actor's number (its scratch directory and worker log keep it across restarts).
    ``threads``: torch threads for the worker (0: torch's default, for a GPU actor).
    """

    def __init__(self, slot: int, run: str, threads: int) -> None:
        import ray

        self.slot = slot
        self.run = run
        self.threads = threads
        self.node = ray.util.get_node_ip_address()
        self.node_id = ray.get_runtime_context().get_node_id()
        self.incarnation = secrets.token_hex(4)  # new after every restart: the driver counts retries by it
        self.dir = node_dir(run) / f"actor{slot}"
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.log = self.dir / "worker.log"
        self.endpoint = ""
        self._worker: subprocess.Popen | None = None
        self.worker_start_s = 0.0  # from starting the worker until it answered
        self._lock = threading.Lock()
        self._progress: tuple[int | None, int] = (None, 0)  # (chunk index, frames done)

    # ---------------------------------------------------------------- queried by the driver

    def describe(self) -> dict[str, Any]:
        return {"slot": self.slot, "node": self.node, "node_id": self.node_id, "pid": os.getpid(),
                "log": str(self.log), "incarnation": self.incarnation}

    def progress(self) -> tuple[str, int | None, int]:
        """(incarnation, chunk being rendered or None, its frames done so far)."""
        return (self.incarnation, *self._progress)

    def stats(self) -> dict[str, Any]:
        """The worker's counters (stage evaluations, model loads) and its start time; {} before the first chunk."""
        if self._worker is None or self._worker.poll() is not None:
            return {}
        from ..client import WorkerClient

        with WorkerClient(self.endpoint, autostart=False, timeout=10) as client:
            return {**client.stats(), "worker_start_s": self.worker_start_s}

    def shutdown(self) -> None:
        """Stop the worker and delete this render's scratch files on this node (the driver calls this
        once every chunk is in; after a failure they stay, with the worker log the message names)."""
        worker, self._worker = self._worker, None
        if worker is not None and worker.poll() is None:
            worker.terminate()
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
        shutil.rmtree(node_dir(self.run), ignore_errors=True)

    # ---------------------------------------------------------------- the work

    def render(self, chunk: Chunk, start_s: float, job: ChunkJob, shipped: Shipped | None = None) -> dict[str, Any]:
        """Render ``chunk``, its first frame at ``start_s`` seconds on the output's timeline.

        Returns {"data": encoded bytes, "frames", "seconds", "node", "node_id", "incarnation"}.

        Raises ChunkFailed naming the chunk, this node and the worker log.
        """
        t0 = time.monotonic()
        self._progress = (chunk.index, 0)
        try:
            self._ensure_worker()
            source = self._fetch(shipped, "input") or job.input
            weights = self._fetch(shipped, "weights") or job.weights
            timecodes = self._timecodes(job.timecodes)
        except (OSError, RuntimeError) as e:
            raise self._failed(chunk, str(e)) from None
        script = graph.build_script(
            source, model=job.model, weights=weights, window=job.window, device=job.device,
            precision=job.precision, endpoint=self.endpoint, frame_range=graph.FrameRange(chunk.start, chunk.end),
            scene_cuts=list(job.scene_cuts), timecodes=timecodes, autostart=False)
        work = self.dir / chunk.name
        shutil.rmtree(work, ignore_errors=True)  # what an earlier, killed attempt left
        work.mkdir()
        vpy, out = work / "chunk.vpy", work / f"{chunk.name}{job.suffix}"
        vpy.write_text(script)
        try:
            vs_format, video_in, timing = graph.pipe_formats(job.info, timecodes is not None)
            # The frames come in at their place on the output's timeline (-itsoffset, exact in the input's
            # time base), so Matroska rounds each timestamp once, as the single render does.
            ff = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", *video_in,
                  "-itsoffset", f"{start_s:.6f}", "-i", "pipe:0", "-map", "0:v:0", *job.encoder,
                  *(timing or ["-fps_mode", "passthrough"]), str(out)]
            encode.pipe_into_ffmpeg(vpy, vs_format, ff, source=Path(source), output=out,
                                    on_progress=lambda done, _total: self._set_done(chunk.index, done))
            frames = count_frames(out)
        except RenderError as e:
            if self._worker is not None and self._worker.poll() is not None:
                self._worker_died(chunk)
            raise self._failed(chunk, str(e)) from None
        if frames != chunk.frames:
            raise self._failed(chunk, f"the encoded chunk holds {frames} frames, not {chunk.frames}")
        data = out.read_bytes()
        shutil.rmtree(work, ignore_errors=True)
        self._progress = (None, 0)
        return {"data": data, "frames": frames, "seconds": time.monotonic() - t0, "node": self.node,
                "node_id": self.node_id, "incarnation": self.incarnation}

    # ---------------------------------------------------------------- helpers

    def _set_done(self, index: int, done: int) -> None:
        self._progress = (index, done)

    def _failed(self, chunk: Chunk, why: str) -> ChunkFailed:
        return ChunkFailed(f"{chunk.describe()} failed on node {self.node} (worker log {self.log} there): {why}")

    def _worker_died(self, chunk: Chunk) -> None:
        """The worker is gone mid-chunk (killed, out of memory): take the actor down with it, so
        Ray restarts the actor (and a fresh worker) and retries the chunk."""
        with open(self.log, "a") as f:
            f.write(f"erdn farm: the worker died during {chunk.describe()} (exit {self._worker.returncode}); "
                    "the actor exits so that Ray restarts it and retries the chunk\n")
        os._exit(WORKER_DIED_EXIT)

    def _ensure_worker(self) -> None:
        """Start the worker if it is not running, and wait until it answers."""
        with self._lock:
            if self._worker is not None and self._worker.poll() is None:
                return
            from ..client import WorkerClient, WorkerUnavailable

            self.endpoint = f"ipc://{self.dir}/w-{secrets.token_hex(4)}.sock"
            cmd = [sys.executable, "-m", "worker", "--endpoint", self.endpoint, "--idle-timeout", "0"]
            if self.threads:
                cmd += ["--threads", str(self.threads)]
            with open(self.log, "ab") as log:
                log.write(f"erdn farm: actor {self.slot} (pid {os.getpid()}) starts a worker on {self.endpoint}\n"
                          .encode())
                log.flush()
                self._worker = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                                preexec_fn=_die_with_parent)
            started = time.monotonic()
            deadline = started + WORKER_START_S
            with WorkerClient(self.endpoint, autostart=False, timeout=5) as client:
                while True:
                    try:
                        client.ping()
                        self.worker_start_s = time.monotonic() - started
                        return
                    except WorkerUnavailable:
                        if self._worker.poll() is not None:
                            raise RuntimeError(f"the worker exited at start (code {self._worker.returncode})") \
                                from None
                        if time.monotonic() > deadline:
                            self._worker.kill()
                            raise RuntimeError(f"the worker did not answer within {WORKER_START_S:.0f} s") from None

    def _timecodes(self, text: str | None) -> Path | None:
        """A node-local file with a VFR input's timecodes, for the chunk scripts."""
        if text is None:
            return None
        path = self.dir / "timecodes.txt"
        if not path.is_file() or path.read_text() != text:
            path.write_text(text)
        return path

    def _fetch(self, shipped: Shipped | None, name: str) -> str | None:
        """The node-local copy of a shipped file, fetched from the object store once per node."""
        if shipped is None or name not in shipped.files:
            return None
        import ray

        ref, filename = shipped.files[name]
        local = node_dir(self.run) / "shipped" / shipped.key / filename
        if local.is_file():
            return str(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f".{local.name}.{secrets.token_hex(4)}.partial")
        data = ray.get(ref)  # a read-only view of the object store's copy: no second copy in memory
        with open(partial, "wb") as f:
            f.write(memoryview(data))
        os.replace(partial, local)  # several actors on a node may race: each rename is whole
        return str(local)
