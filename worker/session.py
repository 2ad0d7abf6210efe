"""Sessions, their caches, and the cached two-stage cascade (the worker's compute side).

A session is one clip: a model, a frame size, a sample type. Every frame a session receives
is named by a digest of its bytes; the session only remembers which digest each source index
had. One cache, shared by all sessions and bounded in bytes, holds by content:
- the frames (reflect-padded to the model's stride once, on the model's device),
- stage-1 results, keyed by the model and the digests of their triplet,
- final outputs, keyed by the model and the digests of their window.
For output frame n with window (w0..w4), stage 1 runs on (w0,w1,w2), (w1,w2,w3), (w2,w3,w4)
unless cached, then stage 2 on their outputs; rendering in order, each stage-1 result serves
three output frames, so a frame costs about 2 stage evaluations instead of 4. Because the keys
are contents after edge and scene-cut substitution, a cached result is exactly what the model
computes on that window, whichever session computed it: a reloaded script (vspreview, a second
vspipe run) or a second clip with the same frames is answered from the cache.

Nothing here grows with a clip's length or with the number of clips served: a session remembers
the digests of its last SESSION_DIGESTS source indices (the client sends again a frame that was
forgotten); loaded models past ``models_bytes`` are evicted least recently used first, never one
an open session uses; and a session ends when its client does: its process exits (ipc: the
worker knows the client's pid), it stops sending heartbeats for a lease, or it sends no request
for ``session_timeout``.

All of this runs on the worker's single compute thread; only ``Stats`` and ``Heartbeats`` are shared.
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from erdn_vs import protocol as P

from .backends import Backend, BackendError, load_backend, resolve_device, resolve_precision
from .config import DEFAULT_MAX_PIXELS
from .model import pad_to_stride
from .model.weights import WeightsError
from .registry import ModelNotFound, resolve
from .tiling import plan_tile, run_tiled

log = logging.getLogger("erdn.worker")

Reply = tuple[dict, list]  # header, buffers

SESSION_DIGESTS = 1024  # source indices a session remembers (a client sends at most 256 it believes known)
DOUBTFUL_LEASE_FRACTION = 0.5  # a session whose live client has been quiet for this part of its lease looks dead


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, field 22 of /proc/PID/stat), or None when it
    is gone, a zombie, or there is no /proc (then its pid tells the worker nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after the command name, which may hold spaces
    if len(fields) < 20 or fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


class Heartbeats:
    """When each leased session's client last said it is alive: the I/O thread writes (``beat``, from
    ``ping`` with ``sessions``), the compute thread reads. Only sessions the manager opened are kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}

    def start(self, session_id: str) -> None:
        with self._lock:
            self._last[session_id] = time.monotonic()

    def forget(self, session_id: str) -> None:
        with self._lock:
            self._last.pop(session_id, None)

    def beat(self, session_ids: list[str]) -> int:
        """Mark these sessions alive now; returns how many of them are known."""
        now = time.monotonic()
        with self._lock:
            known = [sid for sid in session_ids if sid in self._last]
            for sid in known:
                self._last[sid] = now
        return len(known)

    def last(self, session_id: str) -> float:
        with self._lock:
            return self._last.get(session_id, 0.0)


def content_digest(buffer: Any) -> bytes:
    """BLAKE2b-128 of a buffer's bytes. About 0.5 GB/s here (50 ms for a 1080p float32 frame), so the
    server's I/O thread computes it as requests arrive, beside the compute thread's work."""
    return hashlib.blake2b(buffer, digest_size=16).digest()


def frame_digest(array: np.ndarray, content: bytes | None = None) -> bytes:
    """A frame's name in the cache: its shape, sample type and bytes. ``content`` is
    ``content_digest`` of its bytes when already known."""
    if content is None:
        content = content_digest(np.ascontiguousarray(array).data)
    return hashlib.blake2b(f"{array.dtype.str}{array.shape}".encode() + content, digest_size=16).digest()


def _frame_key(session: WorkerSession, digest: bytes) -> tuple:
    """A received frame's cache key: padded on the session's device, so one copy per device and content."""
    return ("f", str(session.backend.device), digest)


class ByteLRU:
    """Tensors by key, least recently used evicted first once their bytes exceed the budget."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget = budget_bytes
        self.bytes = 0
        self.evictions = 0
        self._items: OrderedDict[tuple, Tensor] = OrderedDict()

    def get(self, key: tuple) -> Tensor | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: tuple, value: Tensor) -> None:
        size = value.element_size() * value.nelement()
        if size > self.budget:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old.element_size() * old.nelement()
        self._items[key] = value
        self.bytes += size
        while self.bytes > self.budget:
            _, dropped = self._items.popitem(last=False)
            self.bytes -= dropped.element_size() * dropped.nelement()
            self.evictions += 1

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> int:
        """Drop every entry; returns the bytes they held."""
        freed = self.bytes
        self._items.clear()
        self.bytes = 0
        return freed


@dataclass
class Stats:
    """Counters the I/O thread reads for the ``stats`` op (guarded by ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    started: float = field(default_factory=time.time)
    frames_served: int = 0
    stage1_evals: int = 0
    stage2_evals: int = 0
    stage1_seconds: float = 0.0
    stage2_seconds: float = 0.0
    cache_hits: int = 0  # stage-1 results found in the cache
    cache_misses: int = 0
    output_cache_hits: int = 0  # whole output frames found in the cache (no stage evaluated)
    need_frames_replies: int = 0
    bytes_received: int = 0
    batches: int = 0
    forward_calls: int = 0  # stage evaluations are batched into this many backend calls
    batched_requests: int = 0
    errors: int = 0
    queue_depth: int = 0
    queue_bytes: int = 0  # frame bytes of the queued requests
    max_queue_depth: int = 0  # the deepest the queue has been
    overloaded: int = 0  # requests refused because the queue was full
    sessions: dict[str, dict] = field(default_factory=dict)
    cache_bytes: int = 0
    cache_evictions: int = 0
    models_loaded: int = 0  # weights loaded onto a device (once per model, device and precision, until evicted)
    model_load_seconds: float = 0.0
    models_resident: int = 0  # models loaded now
    models_bytes: int = 0  # their parameters' bytes
    models_evicted: int = 0  # models dropped to keep models_bytes within --models-mb
    sessions_expired: int = 0  # sessions dropped because their client ended (or went quiet)
    idle_releases: int = 0  # times the idle worker dropped its caches and gave freed memory back (--idle-release)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            out = {k: v for k, v in vars(self).items() if k not in ("lock", "sessions", "started")}
            out["uptime_s"] = round(time.time() - self.started, 3)
            out["sessions"] = len(self.sessions)
            out["session_list"] = list(self.sessions.values())
            served = max(1, self.frames_served)
            out["stage_evals_per_frame"] = round((self.stage1_evals + self.stage2_evals) / served, 4)
            return out

    def add(self, **deltas: float) -> None:
        with self.lock:
            for k, v in deltas.items():
                setattr(self, k, getattr(self, k) + v)


@dataclass
class WorkerSession:
    id: str
    spec: P.SessionSpec
    backend: Backend
    tile: tuple[int, int] | None  # (h, w) in padded pixels, or None for whole frames
    padded_hw: tuple[int, int]
    model_key: tuple  # what, besides the input contents, decides a result: model, device, precision, tiling
    # source index -> digest of the frame received, the last SESSION_DIGESTS used
    digests: OrderedDict[int, bytes] = field(default_factory=OrderedDict)
    last_used: float = field(default_factory=time.monotonic)
    frames_served: int = 0
    lease: float | None = None  # seconds without a heartbeat after which the session ends (None: no heartbeats)
    client_pid: int | None = None  # the client's process (ipc only), checked with client_start
    client_start: int | None = None

    def describe(self) -> dict[str, Any]:
        s = self.spec
        return {"session": self.id, "frames": s.frames, "width": s.width, "height": s.height,
                "sample_type": s.sample_type, "model": s.model, "weights": s.weights,
                "backend": self.backend.name, "device": str(self.backend.device),
                "precision": self.backend.precision,
                "tile": [self.tile[1], self.tile[0]] if self.tile else None,  # (w, h), as sessions ask for it
                "frames_served": self.frames_served, "lease": self.lease, "client_pid": self.client_pid}

    def remember(self, index: int, digest: bytes) -> None:
        """Note the digest of source frame ``index``, forgetting the least recently used past SESSION_DIGESTS."""
        self.digests[index] = digest
        self.digests.move_to_end(index)
        while len(self.digests) > SESSION_DIGESTS:
            self.digests.popitem(last=False)


@dataclass
class _Job:
    """One process request inside a batch."""

    session: WorkerSession
    request: P.ProcessRequest
    reply: Callable[[Reply], None]
    triplets: list[tuple[bytes, bytes, bytes]]  # the digests of each stage-1 input
    output_key: tuple
    frames: dict[bytes, Tensor]
    stage1: dict[tuple[bytes, bytes, bytes], Tensor]
    output: Tensor | None = None  # found in the cache


def model_bytes(backend: Backend, weights: Path) -> int:
    """What a loaded model holds: its parameters' and buffers' bytes (torch), else its weights file's size."""
    model = getattr(backend, "model", None)
    if isinstance(model, torch.nn.Module):
        return sum(t.numel() * t.element_size() for t in itertools.chain(model.parameters(), model.buffers()))
    return weights.stat().st_size


class SessionManager:
    """Opens and closes sessions and runs batches of process requests through the cached cascade."""

    def __init__(self, *, backend: str = "torch", device: str = "auto", cache_bytes: int = 1 << 30,
                 max_sessions: int = 16, session_timeout: float = 600.0, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_batch: int = 8, manifest: str | None = None, stats: Stats | None = None,
                 max_frame_pixels: int = P.MAX_PIXELS, models_bytes: int = 1 << 30, session_lease: float = 10.0,
                 heartbeats: Heartbeats | None = None) -> None:
        """``models_bytes``: parameter bytes the loaded models may hold together; past it the least recently
        used model no session uses is evicted. ``session_lease``: seconds a session whose client sends
        heartbeats lives without one (0: no leases). ``heartbeats``: shared with the I/O thread."""
        self.manifest = Path(manifest) if manifest else None
        self.backend_kind = backend
        self.default_device = device
        self.cache = ByteLRU(cache_bytes)
        self.max_sessions = max_sessions
        self.session_timeout = session_timeout
        self.max_pixels = max_pixels
        self.max_batch = max_batch
        self.max_frame_pixels = max_frame_pixels
        self.stats = stats or Stats()
        self.sessions: dict[str, WorkerSession] = {}
        self.models_bytes = models_bytes
        self.session_lease = session_lease
        self.heartbeats = heartbeats or Heartbeats()
        self._track_pids = Path("/proc/self/stat").exists()
        # (backend kind, weights sha256, device, precision) -> backend, least recently used first
        self._backends: OrderedDict[tuple, Backend] = OrderedDict()
        self._backend_bytes: dict[tuple, int] = {}

    # ------------------------------------------------------------ sessions

    def open(self, header: dict, client_pid: int | None = None) -> dict:
        """Open a session for the clip ``header`` describes; ``client_pid``: the client's process, where the
        transport tells it (ipc). Raises ProtocolError: bad_request, model_error, config_error, or busy (with
        ``retry_after`` when some open sessions look dead and will have expired by then)."""
        spec = P.SessionSpec.from_header(header)
        if spec.width * spec.height > self.max_frame_pixels:
            raise P.ProtocolError(P.CONFIG_ERROR, f"{spec.width}x{spec.height} frames are larger than this worker's "
                                  f"maximum of {self.max_frame_pixels} pixels (--max-frame-pixels); resize the clip "
                                  "or restart the worker with a larger --max-frame-pixels")
        self.expire()
        if len(self.sessions) >= self.max_sessions:
            raise P.ProtocolError(P.BUSY, f"this worker already has {len(self.sessions)} open sessions (its "
                                  "--max-sessions); close finished clips or restart it with a larger --max-sessions",
                                  **self._retry_hint())
        try:
            weights = resolve(spec.model, spec.weights, self.manifest)
            device = resolve_device(spec.device, self.default_device)
            precision = resolve_precision(spec.precision, device, self.backend_kind)
        except ModelNotFound as e:
            raise P.ProtocolError(P.MODEL_ERROR, str(e)) from None
        except BackendError as e:
            raise P.ProtocolError(P.CONFIG_ERROR, str(e)) from None
        if weights.frames is not None and weights.frames != spec.frames:
            raise P.ProtocolError(P.MODEL_ERROR, f"model {weights.name!r} takes frames={weights.frames}, "
                                  f"the session asked for frames={spec.frames}")
        key = (self.backend_kind, weights.sha256, str(device), precision)
        backend = self._backends.get(key)
        if backend is not None:
            self._backends.move_to_end(key)
        else:
            t0 = time.perf_counter()
            try:
                backend = load_backend(self.backend_kind, weights, device, precision)
            except WeightsError as e:
                raise P.ProtocolError(P.MODEL_ERROR, str(e)) from None
            except BackendError as e:
                raise P.ProtocolError(P.CONFIG_ERROR, str(e)) from None
            seconds = time.perf_counter() - t0
            log.info("loaded %s on %s (%s, %s) in %.2f s", weights.path, device, self.backend_kind, precision, seconds)
            self.stats.add(models_loaded=1, model_load_seconds=seconds)
            self._backends[key] = backend
            self._backend_bytes[key] = model_bytes(backend, weights.path)
        if backend.frames != spec.frames:
            self._evict_models()
            raise P.ProtocolError(P.MODEL_ERROR, f"{weights.path} is a frames={backend.frames} model; open the "
                                  f"session with frames={backend.frames}")
        stride = backend.stride  # the model's own: 8 at full resolution, 32 for a stem-4 preset
        padded_hw = (-(-spec.height // stride) * stride, -(-spec.width // stride) * stride)
        tile = plan_tile(padded_hw, spec.tile, spec.overlap, self.max_pixels, stride)
        model_key = (*key, tile, spec.overlap if tile else 0)
        session = WorkerSession(secrets.token_hex(8), spec, backend, tile, padded_hw, model_key)
        if header.get("heartbeat") is True and self.session_lease > 0:
            session.lease = self.session_lease
            self.heartbeats.start(session.id)
        if client_pid is not None and self._track_pids:
            start = process_start(client_pid)
            if start is not None:
                session.client_pid, session.client_start = client_pid, start
        self.sessions[session.id] = session
        self._evict_models()
        self.publish_sessions()
        log.info("opened session %s: %s", session.id, session.describe())
        return session.describe()

    def close(self, session_id: str) -> bool:
        # Cached contents stay (bounded by the cache budget): a reopened script finds them.
        session = self.sessions.pop(session_id, None)
        self.heartbeats.forget(session_id)
        if session is not None:
            self._evict_models()
        self.publish_sessions()
        return session is not None

    def _end_reason(self, session: WorkerSession, now: float) -> str | None:
        """Why ``session`` is over (its client ended or went quiet), or None while it is alive."""
        if session.client_pid is not None and process_start(session.client_pid) != session.client_start:
            return f"its client (pid {session.client_pid}) exited"
        if session.lease is not None:
            quiet = now - max(self.heartbeats.last(session.id), session.last_used)
            if quiet > session.lease:
                return f"its client sent no heartbeat for {quiet:.1f} s (lease {session.lease:g} s)"
        if now - session.last_used > self.session_timeout:
            return f"it had no request for {self.session_timeout:.0f} s (--session-timeout)"
        return None

    def expire(self) -> None:
        """Drop the sessions whose client ended: its process exited, it missed its heartbeat lease, or it sent
        no request for ``session_timeout`` seconds."""
        now = time.monotonic()
        for session in list(self.sessions.values()):
            reason = self._end_reason(session, now)
            if reason is not None:
                log.info("session %s ended: %s", session.id, reason)
                self.stats.add(sessions_expired=1)
                self.close(session.id)

    def _retry_hint(self) -> dict[str, float]:
        """For a busy reply: ``retry_after``, the seconds after which every session that may belong to a dead
        client has expired (its lease ran out), or {} when every session's client is known to be alive. A
        leased session counts unless its client's process is tracked (ipc), alive and recently heard from."""
        now = time.monotonic()

        def quiet(s: WorkerSession) -> float:
            return now - max(self.heartbeats.last(s.id), s.last_used)

        doubtful = [s for s in self.sessions.values() if s.lease is not None
                    and (s.client_pid is None or quiet(s) > s.lease * DOUBTFUL_LEASE_FRACTION)]
        if not doubtful:
            return {}
        return {"retry_after": round(max(0.0, *(s.lease - quiet(s) for s in doubtful)) + 0.25, 3)}

    def _evict_models(self) -> None:
        """Evict loaded models, least recently used first, while their bytes exceed ``models_bytes``; a model
        an open session uses always stays (so the bound can be exceeded by the models in use)."""
        in_use = {s.model_key[:4] for s in self.sessions.values()}
        total = sum(self._backend_bytes.values())
        evicted = []
        for key in list(self._backends):
            if total <= self.models_bytes:
                break
            if key in in_use:
                continue
            self._backends.pop(key)
            total -= self._backend_bytes.pop(key)
            evicted.append(key)
        if evicted:
            gc.collect()  # free the modules' tensors now, not at some later collection
            if torch.cuda.is_available() and any(k[2].startswith("cuda") for k in evicted):
                torch.cuda.empty_cache()
            for key in evicted:
                log.info("evicted model %s on %s (%s, %s): loaded models past --models-mb", key[1][:12], key[2],
                         key[0], key[3])
            self.stats.add(models_evicted=len(evicted))

    def release_idle(self) -> dict[str, Any]:
        """With no session open: drop the caches and every loaded model but the most recently used, collect
        garbage and give the freed heap back to the kernel. Returns what was released (bytes, counts) for the
        log. The next session recomputes what it needs; its model is reloaded only if it was not the last used."""
        from .cpu_runtime import return_freed_memory

        cache_bytes, cache_items = self.cache.bytes, len(self.cache)
        self.cache.clear()
        evicted = list(self._backends)[:-1]  # least recently used first: keep the last
        for key in evicted:
            self._backends.pop(key)
            self._backend_bytes.pop(key)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        trimmed = return_freed_memory()
        self.stats.add(idle_releases=1, models_evicted=len(evicted))
        self.publish_sessions()
        return {"cache_bytes": cache_bytes, "cache_items": cache_items, "models_evicted": len(evicted),
                "models_kept": len(self._backends), "trimmed": trimmed}

    def publish_sessions(self) -> None:
        with self.stats.lock:
            self.stats.sessions = {s.id: s.describe() for s in self.sessions.values()}
            self.stats.cache_bytes = self.cache.bytes
            self.stats.cache_evictions = self.cache.evictions
            self.stats.models_resident = len(self._backends)
            self.stats.models_bytes = sum(self._backend_bytes.values())

    def get(self, session_id: str) -> WorkerSession:
        session = self.sessions.get(session_id)
        if session is None:
            raise P.ProtocolError(P.UNKNOWN_SESSION, f"session {session_id} is not open on this worker (it expired "
                                  "or the worker restarted); reopen it")
        session.last_used = time.monotonic()
        return session

    # ------------------------------------------------------------ processing

    def _store(self, session: WorkerSession, index: int, array: np.ndarray,
               content: bytes | None) -> tuple[bytes, Tensor]:
        """Name a received frame by its content; pad it to the stride once, on the model's device, and cache it."""
        digest = frame_digest(array, content)
        session.remember(index, digest)
        key = _frame_key(session, digest)
        t = self.cache.get(key)
        if t is None:
            t = pad_to_stride(torch.from_numpy(np.array(array, copy=True)).to(session.backend.device),
                              session.backend.stride)[0]
            self.cache.put(key, t)
        return digest, t

    def _prepare(self, session: WorkerSession, req: P.ProcessRequest, reply: Callable[[Reply], None],
                 received: dict[bytes, Tensor]) -> _Job | None:
        """Take what the window needs from this request and the cache, or ask the client for what is missing."""
        digests = session.digests
        unknown = sorted({i for i in req.window if i not in digests})
        if unknown:  # never sent in this session
            self.stats.add(need_frames_replies=1)
            reply((P.reply_need_frames(None, unknown), []))
            return None
        for i in dict.fromkeys(req.window):
            digests.move_to_end(i)  # in use: the last to be forgotten
        w = [digests[i] for i in req.window]
        model = session.model_key
        triplets = [tuple(w[0:3])] if len(w) == 3 else [tuple(w[i:i + 3]) for i in range(3)]
        output_key = ("out", model, tuple(w))
        output = self.cache.get(output_key)
        if output is not None:
            return _Job(session, req, reply, triplets, output_key, {}, {}, output)
        frames = dict(received)  # kept even if a small cache has evicted them already
        stage1: dict[tuple[bytes, bytes, bytes], Tensor] = {}
        missing: set[int] = set()
        for key in triplets:
            cached = self.cache.get(("s1", model, key))
            if cached is not None:
                stage1[key] = cached
                continue
            for digest in key:
                if digest not in frames:
                    t = self.cache.get(_frame_key(session, digest))
                    if t is None:  # evicted: the client sends it again
                        missing.update(i for i in req.window if digests[i] == digest)
                    else:
                        frames[digest] = t
        if missing:
            self.stats.add(need_frames_replies=1)
            reply((P.reply_need_frames(None, sorted(missing)), []))
            return None
        return _Job(session, req, reply, triplets, output_key, frames, stage1)

    def _run_stage(self, session: WorkerSession, which: int, triplets: Tensor) -> Tensor:
        backend = session.backend
        fn = backend.stage1 if which == 1 else backend.stage2
        t0 = time.perf_counter()
        if session.tile is not None:
            out = run_tiled(fn, triplets, session.tile, session.spec.overlap)
        else:
            out = fn(triplets)
        if out.device.type == "cuda":
            torch.cuda.synchronize(out.device)
        seconds = time.perf_counter() - t0
        if which == 1:
            self.stats.add(stage1_evals=triplets.shape[0], stage1_seconds=seconds, forward_calls=1)
        else:
            self.stats.add(stage2_evals=triplets.shape[0], stage2_seconds=seconds, forward_calls=1)
        return out

    def _groups(self, items: list, session_of: Callable[[Any], WorkerSession]) -> list[list]:
        """Split work into forward calls: same backend, frame size and tiling together; each call holds at most
        max_pixels (per tile) and max_batch items."""
        by_shape: dict[tuple, list] = {}
        for item in items:
            s = session_of(item)
            by_shape.setdefault((id(s.backend), s.padded_hw, s.tile, s.spec.overlap if s.tile else 0), []).append(item)
        groups = []
        for (_, padded_hw, tile, _), members in by_shape.items():
            h, w = tile or padded_hw
            per_call = max(1, min(self.max_batch, self.max_pixels // (h * w)))
            groups += [members[i:i + per_call] for i in range(0, len(members), per_call)]
        return groups

    def process_batch(self, items: list[tuple]) -> None:
        """Run process requests together: shared stage-1 work is computed once, same-shape work in one batch.

        An item is (header, buffers, reply), or (header, buffers, reply, contents) with ``content_digest`` of
        each buffer, computed as the request arrived."""
        parsed = []
        for header, buffers, reply, *known in items:
            try:
                session = self.get(P.session_id_of(header))
                req = P.parse_process(header, buffers, session.spec)
            except P.ProtocolError as e:
                self.stats.add(errors=1)
                reply((P.reply_error(None, e.code, e.message), []))
                continue
            self.stats.add(bytes_received=sum(a.nbytes for a in req.frames.values()))
            # Store every request's frames before any request looks for its window: threads that share
            # frames send each one once, and their requests may arrive in any order within a batch.
            contents = dict(zip((d["index"] for d in header["buffers"]), known[0], strict=True)) if known else {}
            received = dict(self._store(session, i, a, contents.get(i)) for i, a in req.frames.items())
            parsed.append((session, req, reply, received))
        jobs: list[_Job] = []
        for session, req, reply, received in parsed:
            job = self._prepare(session, req, reply, received)
            if job is not None:
                jobs.append(job)
        if not jobs:
            self.publish_sessions()  # frames may have been cached all the same
            return
        self.stats.add(batches=1, batched_requests=len(jobs))
        done = [job for job in jobs if job.output is not None]
        self.stats.add(output_cache_hits=len(done))
        jobs = [job for job in jobs if job.output is None]
        # Stage 1: every triplet not cached, once per (model, contents). Sessions that share a model, a frame
        # size and tiling (several clips, several vspipe processes) run in the same forward calls.
        todo: dict[tuple[tuple, tuple], list[_Job]] = {}
        for job in jobs:
            for key in job.triplets:
                if key in job.stage1:
                    self.stats.add(cache_hits=1)
                else:
                    todo.setdefault((job.session.model_key, key), []).append(job)
        # A triplet computed once serves every request of the batch that needs it: one miss, the rest hits.
        self.stats.add(cache_misses=len(todo), cache_hits=sum(len(v) - 1 for v in todo.values()))
        for group in self._groups(list(todo), lambda item: todo[item][0].session):
            session = todo[group[0]][0].session
            x = torch.stack([torch.stack([todo[item][0].frames[d] for d in item[1]]) for item in group]).float()
            out = self._run_stage(session, 1, x)
            for item, y in zip(group, out, strict=True):
                y = y.clone()
                model, key = item
                self.cache.put(("s1", model, key), y)
                for job in todo[item]:
                    job.stage1[key] = y
        # Stage 2 (frames=5) on the three stage-1 outputs; frames=3 takes the stage-1 output.
        results: dict[int, Tensor] = {}
        stage2 = [j for j, job in enumerate(jobs) if job.session.spec.frames == 5]
        for j, job in enumerate(jobs):
            if job.session.spec.frames == 3:
                results[j] = job.stage1[job.triplets[0]]
        for group in self._groups(stage2, lambda j: jobs[j].session):
            x = torch.stack([torch.stack([jobs[j].stage1[k] for k in jobs[j].triplets]) for j in group])
            out = self._run_stage(jobs[group[0]].session, 2, x)
            for j, y in zip(group, out, strict=True):
                results[j] = y
        for j, job in enumerate(jobs):
            spec = job.session.spec
            job.output = results[j][:, : spec.height, : spec.width].float().cpu().contiguous()
            self.cache.put(job.output_key, job.output)
        jobs += done
        outputs = [job.output.numpy() for job in jobs]
        for job in jobs:
            job.session.frames_served += 1
        self.stats.add(frames_served=len(jobs))  # before replying, so a client's next stats call sees it
        self.publish_sessions()
        for job, frame in zip(jobs, outputs, strict=True):
            job.reply((P.reply_ok(None, shape=list(frame.shape), dtype="float32", n=job.request.n), [frame]))
