"""The ZeroMQ client of the worker, used by the VapourSynth filter (pyzmq + numpy, never torch).

A client holds a fixed, small set of sockets, whatever the clip's length and however many
threads call it: a pool of at most MAX_SOCKETS DEALER sockets for requests (one per request in
flight, reused after), and one for pings and heartbeats. A socket whose request timed out is
closed, not reused (its late reply must not answer the next request). Request ids go on every
message and every receive has a timeout. While a session is open, a daemon thread sends
heartbeats, so the worker frees the session soon after this process dies or forgets it. When
the worker does not answer, the client can start it detached (autostart) so that it outlives
the script and serves the next reload.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import itertools
import os
import subprocess
import sys
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from . import protocol as P

PING_TIMEOUT = 2.0  # a live worker answers ping from its I/O thread at once, even while computing
START_TIMEOUT = 30.0  # autostart: how long to wait for a freshly started worker to answer
CLOSE_TIMEOUT = 2.0
LIVENESS_INTERVAL = 3.0  # while waiting for a reply, ping the worker this often to notice its death early
MAX_PROCESS_ATTEMPTS = 6  # resends after need_frames / session reopen before giving up
MAX_BUSY_EXTENSIONS = 20  # a process request may wait this many timeouts while the worker is computing
ENDPOINT_IN_USE = 3  # the worker's exit code when another worker holds the endpoint
LOG_MAX_BYTES = 10 * 2**20  # an autostarted worker's log is rotated past this size
OVERLOAD_BACKOFF = (0.02, 0.5)  # first and longest wait before resending a request the worker had no room for
MAX_SOCKETS = 16  # request sockets per client (deblur's ``batch`` is at most 16); more requests wait for one
BEATS_PER_LEASE = 5  # heartbeats sent within one lease, so a few lost ones never cost a live session
MAX_BUSY_RETRY_S = 60.0  # the longest wait a busy worker may ask for (sessions of dead clients to expire)
SENT_MEMORY = 256  # source indices a session remembers having sent (the worker asks again for any it lacks)


class WorkerError(Exception):
    """Base of every client error; ``str(e)`` names the endpoint and says what to do.

    ``retry_after``: seconds after which the worker expects the same request to succeed (a ``busy``
    worker whose sessions look dead), else None."""

    retry_after: float | None = None


class WorkerUnavailable(WorkerError):
    """The worker is unreachable, could not be started, or stopped answering."""


class WorkerBusy(WorkerError):
    """The worker refused a new session (too many open)."""


class ModelError(WorkerError):
    """The model or weights file cannot be used (missing, damaged, sha256 mismatch, wrong frames)."""


class ConfigError(WorkerError):
    """A session option the worker cannot honour (device, precision, backend, tile)."""


class ProtocolMismatch(WorkerError):
    """A malformed request or a worker of another protocol version."""


class _SessionLost(WorkerError):
    """The worker no longer knows the session (expired or restarted): reopen it."""


class _Overloaded(WorkerError):
    """The worker's queue is full: wait a little and resend."""


_ERRORS: dict[str, type[WorkerError]] = {
    P.BAD_REQUEST: ProtocolMismatch,
    P.VERSION_MISMATCH: ProtocolMismatch,
    P.UNKNOWN_SESSION: _SessionLost,
    P.MODEL_ERROR: ModelError,
    P.CONFIG_ERROR: ConfigError,
    P.BUSY: WorkerBusy,
    P.SHUTTING_DOWN: WorkerUnavailable,
    P.OVERLOADED: _Overloaded,
    P.INTERNAL: WorkerError,
}


class _NoReply(Exception):
    def __init__(self, dead: bool = False) -> None:
        super().__init__()
        self.dead = dead  # a ping just went unanswered too, or another worker process answers now


def rotate_log(path: Path, max_bytes: int = LOG_MAX_BYTES) -> None:
    """Before a worker is autostarted: a log over ``max_bytes`` becomes ``NAME.1`` (the one before is dropped),
    so autostarted workers' logs never grow without bound."""
    try:
        if path.stat().st_size > max_bytes:
            os.replace(path, path.with_name(path.name + ".1"))
    except FileNotFoundError:
        pass


def worker_command(endpoint: str, worker_args: list[str] | None = None) -> list[str]:
    """The command that starts a worker for ``endpoint`` with this Python."""
    exe = sys.executable
    if not exe or not Path(exe).name.startswith("python"):  # embedded interpreters: find the real one
        exe = str(Path(sys.prefix) / "bin" / "python3")
    return [exe, "-m", "worker", "--endpoint", endpoint, *(worker_args or [])]


def _child_env() -> dict[str, str]:
    """The environment of an autostarted worker: make sure it can import the ``worker`` package."""
    env = dict(os.environ)
    spec = importlib.util.find_spec("worker")
    if spec is not None and spec.submodule_search_locations:
        root = str(Path(next(iter(spec.submodule_search_locations))).resolve().parent)
        parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        if root not in parts:
            env["PYTHONPATH"] = os.pathsep.join([root, *parts])
    return env


class _SocketPool:
    """The request sockets of one client: at most ``size``, each made when first needed and reused after.

    A socket whose exchange did not end with its reply (a timeout, an error, an interrupt) is closed, never
    reused. After ``close`` idle sockets close at once and busy ones when their exchange ends; ``on_empty``
    runs once when the last one has closed."""

    def __init__(self, make: Callable[[], zmq.Socket], size: int, on_empty: Callable[[], None]) -> None:
        self._make = make
        self._slots = threading.BoundedSemaphore(size)
        self._lock = threading.Lock()
        self._idle: list[zmq.Socket] = []
        self._busy = 0
        self._closed = False
        self._on_empty = on_empty
        self.made = 0  # sockets made so far (a test reads it: it stays small whatever the clip's length)

    @contextlib.contextmanager
    def socket(self) -> Iterator[zmq.Socket]:
        """A socket for one exchange; the caller ends the exchange normally only once it has the reply."""
        with self._slots:
            with self._lock:
                if self._closed:
                    raise WorkerError("the worker client is closed; make a new WorkerClient")
                sock = self._idle.pop() if self._idle else None
                self._busy += 1
            reusable = False
            try:
                if sock is None:
                    sock = self._make()
                    self.made += 1
                yield sock
                reusable = True
            finally:
                with self._lock:
                    self._busy -= 1
                    keep = reusable and sock is not None and not self._closed
                    if keep:
                        self._idle.append(sock)
                    last = self._closed and self._busy == 0
                if sock is not None and not keep:
                    sock.close(linger=0)
                if last:
                    self._on_empty()

    def close(self) -> bool:
        """Close the idle sockets; True when none is busy (else the last one to finish calls ``on_empty``)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            done = self._busy == 0
        for sock in idle:
            sock.close(linger=0)
        return done


def _heartbeat_loop(ref: weakref.ref, stop: threading.Event) -> None:
    """Tell the worker that this client's leased sessions are alive, until ``stop`` or the client is gone."""
    while True:
        client = ref()
        if client is None:
            return
        ids, interval = client._leased_sessions()
        if ids:
            try:
                client._ping_reply(sessions=ids)
            except Exception:  # noqa: BLE001 (a heartbeat never ends a render; the requests report a dead worker)
                pass
        del client  # hold no reference while waiting: the client may be freed meanwhile
        if stop.wait(interval):
            return


class WorkerClient:
    """Talks to one worker endpoint. Thread-safe: requests share a small pool of DEALER sockets.

    ``curve`` (default: on for a tcp:// host other than loopback, or when $ERDN_WORKER_CURVE=1) uses
    CurveZMQ with this user's client key pair and the worker's public key (``erdn worker keys``).
    """

    def __init__(self, endpoint: str | None = None, *, autostart: bool = True, timeout: float = 30.0,
                 worker_args: list[str] | None = None, curve: bool | None = None) -> None:
        from . import keys

        endpoint = endpoint or P.default_endpoint()
        if curve is None:
            curve = keys.curve_forced() or (isinstance(endpoint, str) and endpoint.startswith("tcp://")
                                            and not P.is_loopback(endpoint))
        self.endpoint = P.check_endpoint(endpoint, curve=curve)
        self.curve_keys = keys.client_keys() if curve else None  # KeysError (a ValueError) says what to do
        self.autostart = autostart
        self.timeout = float(timeout)
        self.worker_args = list(worker_args or [])
        if curve and "--curve" not in self.worker_args:
            self.worker_args.append("--curve")
        self._worker_pid: int | None = None  # the worker process that last answered a ping
        self._ctx = zmq.Context()
        self._pool = _SocketPool(self._new_socket, MAX_SOCKETS, self._term)
        self._ping_sock: zmq.Socket | None = None  # pings and heartbeats, one at a time (``_ping_lock``)
        self._ping_lock = threading.Lock()
        self._closed = False
        self._terminated = False
        self._sessions: weakref.WeakSet[Session] = weakref.WeakSet()  # open sessions that have a lease
        self._sessions_lock = threading.Lock()
        self._heartbeat: threading.Thread | None = None
        self._stop_heartbeat = threading.Event()
        self._ids = itertools.count(1)
        self._ids_lock = threading.Lock()
        self._ready = False
        self._ready_lock = threading.Lock()
        self._started: subprocess.Popen | None = None

    # ------------------------------------------------------------ public API

    def ping(self) -> dict:
        return self._request("ping")[0]

    def stats(self) -> dict:
        return self._request("stats")[0]["stats"]

    def shutdown(self) -> None:
        """Ask the worker to stop (it finishes the requests it has)."""
        self._request("shutdown", timeout=PING_TIMEOUT, start=False)

    def open_session(self, *, frames: int, width: int, height: int, sample_type: str,
                     model: str | None = None, weights: str | None = None,
                     device: str = "auto", precision: str = "auto", tile: tuple[int, int] | None = None,
                     overlap: int = 16) -> Session:
        if weights is not None:  # the worker runs elsewhere: a relative path means relative to this process
            weights = os.path.abspath(os.path.expanduser(str(weights)))
        spec = P.SessionSpec(frames, width, height, sample_type, model, weights, device, precision,
                             tuple(tile) if tile is not None else None, overlap)
        try:  # the same checks the worker makes, so mistakes surface here with a clear message
            P.SessionSpec.from_header(spec.to_header())
        except P.ProtocolError as e:
            raise ValueError(f"open_session: {e.message}") from None
        return Session(self, spec)

    def close(self) -> None:
        """Close every socket of this client and stop its heartbeats (sessions should be closed first:
        the worker frees the others when their lease runs out). A request still in flight in another
        thread ends first; its socket closes when it does. Calling it again does nothing."""
        with self._sessions_lock:
            if self._closed:
                return
            self._closed = True
            heartbeat = self._heartbeat
        self._stop_heartbeat.set()
        if heartbeat is not None and heartbeat is not threading.current_thread():
            heartbeat.join(timeout=PING_TIMEOUT + 1)
        with self._ping_lock:
            if self._ping_sock is not None:
                self._ping_sock.close(linger=0)
                self._ping_sock = None
        if self._pool.close():
            self._term()

    def _term(self) -> None:
        with self._ping_lock:
            if self._terminated:
                return
            self._terminated = True
        self._ctx.term()

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ transport

    def _next_id(self) -> int:
        with self._ids_lock:
            return next(self._ids)

    def _new_socket(self) -> zmq.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if self.curve_keys is not None:
            sock.curve_secretkey = self.curve_keys.secret
            sock.curve_publickey = self.curve_keys.public
            sock.curve_serverkey = self.curve_keys.server_public
        sock.connect(self.endpoint)
        return sock

    def open_sockets(self) -> int:
        """Sockets this client has made and not closed yet: the request pool's and the ping socket."""
        with self._pool._lock:
            pooled = len(self._pool._idle) + self._pool._busy
        return pooled + (self._ping_sock is not None)

    def _exchange(self, header: dict, buffers: list, timeout: float, busy_wait: bool = False) -> tuple[dict, list]:
        """Send one request and wait for its reply (matched by id); raises _NoReply on timeout.

        The socket goes back to the pool only after its reply came: one that timed out is closed (lazy pirate)."""
        with self._pool.socket() as sock:
            return self._exchange_on(sock, header, buffers, timeout, busy_wait)

    def _exchange_on(self, sock: zmq.Socket, header: dict, buffers: list, timeout: float,
                     busy_wait: bool) -> tuple[dict, list]:
        sock.send_multipart(P.encode(header, buffers), copy=False)
        sent_to = self._worker_pid
        now = time.monotonic()
        deadline = now + timeout
        next_check = now + LIVENESS_INTERVAL
        extensions = 0
        while True:
            now = time.monotonic()
            if now >= next_check:  # a long wait: make sure the worker is still there (it may have died)
                pong = self._ping_reply()
                # Another process answers: the worker died and was restarted, and our request died with it.
                if pong is None or (sent_to is not None and pong.get("pid") != sent_to):
                    raise _NoReply(dead=True)
                next_check = time.monotonic() + LIVENESS_INTERVAL
            if now >= deadline and not sock.poll(0):
                if busy_wait and extensions < MAX_BUSY_EXTENSIONS and (self._working() or sock.poll(100)):
                    extensions += 1
                    deadline = time.monotonic() + timeout
                    continue
                raise _NoReply()
            if not sock.poll(int((min(deadline, next_check) - now) * 1000) + 1):
                continue
            frames = sock.recv_multipart(copy=False)
            try:
                reply = P.decode_header(frames[0].buffer)
            except P.ProtocolError:
                continue
            if reply.get("id") != header["id"]:
                continue  # a late reply to a request that timed out earlier
            return reply, [f.buffer for f in frames[1:]]

    def _alive(self) -> bool:
        return self._ping_reply() is not None

    def _working(self) -> bool:
        """Alive and computing or holding queued requests (a long wait is then worth continuing)."""
        reply = self._ping_reply()
        return reply is not None and bool(reply.get("busy") or reply.get("queue_depth"))

    def _ping_reply(self, **fields: Any) -> dict | None:
        """Ping on the client's ping socket (a request socket may be waiting for its reply); None when no
        reply comes within PING_TIMEOUT. ``fields`` go into the request (``sessions``: a heartbeat).
        A ping that timed out closes its socket; the next ping makes a new one."""
        with self._ping_lock:
            if self._closed:
                return None
            sock, self._ping_sock = self._ping_sock or self._new_socket(), None
            try:
                rid = self._next_id()
                sock.send_multipart(P.encode(P.request("ping", rid, **fields)))
                deadline = time.monotonic() + PING_TIMEOUT
                while (remaining := deadline - time.monotonic()) > 0:
                    if not sock.poll(int(remaining * 1000) + 1):
                        continue
                    try:
                        reply = P.decode_header(sock.recv_multipart()[0])
                    except P.ProtocolError:
                        continue
                    if reply.get("id") == rid:
                        if type(reply.get("pid")) is int:
                            self._worker_pid = reply["pid"]
                        self._ping_sock, sock = sock, None  # answered: keep it for the next ping
                        return reply
                return None
            finally:
                if sock is not None:
                    sock.close(linger=0)

    # ------------------------------------------------------------ heartbeats

    def _lease(self, session: Session) -> None:
        """Keep ``session`` alive on the worker with heartbeats (it has a lease) until it closes."""
        with self._sessions_lock:
            if self._closed:
                return
            self._sessions.add(session)
            if self._heartbeat is None:
                self._heartbeat = threading.Thread(target=_heartbeat_loop, args=(weakref.ref(self),
                                                   self._stop_heartbeat), name="erdn-heartbeat", daemon=True)
                self._heartbeat.start()

    def _unlease(self, session: Session) -> None:
        with self._sessions_lock:
            self._sessions.discard(session)

    def _leased_sessions(self) -> tuple[list[str], float]:
        """(ids of the open leased sessions, seconds until the next heartbeat)."""
        with self._sessions_lock:
            sessions = list(self._sessions)
        ids = [sid for s in sessions if (sid := s.id) is not None]
        leases = [s.lease for s in sessions if s.lease]
        interval = min(leases) / BEATS_PER_LEASE if leases else 1.0
        return ids[:P.MAX_HEARTBEAT_SESSIONS], max(0.05, interval)

    def _unavailable(self, what: str, autostarted: bool | None = None) -> WorkerUnavailable:
        """The error for an unreachable worker; it names the autostart log only for a worker autostarted here
        (``autostarted``, default: this client started one), since a worker started by hand logs elsewhere."""
        autostarted = self._started is not None if autostarted is None else autostarted
        start = f"erdn worker --endpoint {self.endpoint}"
        if autostarted:
            advice = f"Its log is {P.log_path()}; or start it yourself with `{start}` and watch its output"
        elif self.autostart:
            advice = f"Start it with `{start}`, or check the one you started (`erdn worker status --endpoint " \
                     f"{self.endpoint}`)"
        else:
            advice = f"Start it with `{start}` (or pass autostart=True to let the client start it)"
        return WorkerUnavailable(f"erdn worker at {self.endpoint} {what}. {advice}")

    def _ensure_worker(self, known_dead: bool = False) -> None:
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            if known_dead or not self._alive():
                if not self.autostart:
                    raise self._unavailable(f"did not answer within {PING_TIMEOUT:g} s (autostart is off)")
                self._start_worker()
            self._ready = True

    def _start_worker(self) -> None:
        """Start one detached worker; a lock file makes concurrent clients (threads or processes) start one."""
        key = hashlib.sha1(self.endpoint.encode()).hexdigest()[:12]
        lock_path = P.runtime_dir() / f"autostart-{key}.lock"
        with open(lock_path, "w") as lock:
            deadline = time.monotonic() + START_TIMEOUT
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise self._unavailable("is being started by another process that did not finish",
                                                autostarted=True) from None
                    time.sleep(0.05)
            try:
                if self._alive():  # another process started it while we waited for the lock
                    return
                cmd = worker_command(self.endpoint, self.worker_args)
                rotate_log(P.log_path())
                with open(P.log_path(), "ab") as log:
                    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                            start_new_session=True, env=_child_env(), close_fds=True, cwd="/")
                self._started = proc
                while time.monotonic() < deadline:
                    if proc.poll() not in (None, ENDPOINT_IN_USE):  # in use: another worker is starting
                        raise self._unavailable(
                            f"could not be started: `{' '.join(cmd)}` exited with code {proc.returncode}")
                    if self._alive():
                        return
                    time.sleep(0.1)
                raise self._unavailable(f"was started (`{' '.join(cmd)}`) but did not answer within "
                                        f"{START_TIMEOUT:g} s")
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _request(self, op: str, arrays: list | None = None, *, timeout: float | None = None, start: bool = True,
                 busy_wait: bool = False, **fields: Any) -> tuple[dict, list]:
        """One request -> its ok reply (header, buffers). Error replies raise the mapped WorkerError."""
        timeout = self.timeout if timeout is None else timeout
        dead = False
        restarts = 0
        overloaded_until = None
        backoff = OVERLOAD_BACKOFF[0]
        other_version = None  # a worker of another protocol version, for P.ANY_VERSION_OPS
        while True:
            if self._closed:  # never autostart a worker for a client that is done
                raise WorkerError(f"the client of the erdn worker at {self.endpoint} is closed; make a new "
                                  "WorkerClient")
            if start:
                self._ensure_worker(known_dead=dead)
            header = P.request(op, self._next_id(), **fields)
            if other_version is not None:
                header["v"] = other_version
            try:
                reply, bufs = self._exchange(header, arrays or [], timeout, busy_wait)
            except _NoReply as e:
                self._ready = False
                if restarts == 0 and start and self.autostart and (e.dead or not self._alive()):
                    restarts, dead = 1, True
                    continue  # the worker died: start a new one (or find the one another thread started), resend
                if e.dead and not self.autostart:
                    raise self._unavailable(f"stopped answering while a {op!r} request was pending "
                                            "(autostart is off)") from None
                raise self._unavailable(f"did not answer a {op!r} request within {timeout:g} s") from None
            dead = False
            status = reply.get("status")
            if status == "error":
                cls = _ERRORS.get(reply.get("code"), WorkerError)
                theirs = reply.get("v")
                if (cls is ProtocolMismatch and op in P.ANY_VERSION_OPS and other_version is None
                        and type(theirs) is int and theirs != P.PROTOCOL_VERSION):
                    other_version = theirs  # an older worker: say it in its version, which it understands
                    continue
                if cls is _Overloaded:  # its queue is full: wait and resend, for up to one timeout
                    now = time.monotonic()
                    overloaded_until = overloaded_until or now + timeout
                    if now < overloaded_until:
                        time.sleep(backoff)
                        backoff = min(2 * backoff, OVERLOAD_BACKOFF[1])
                        continue
                error = cls(f"erdn worker at {self.endpoint}: {reply.get('message', 'unknown error')}")
                retry_after = reply.get("retry_after")
                if type(retry_after) in (int, float) and 0 <= retry_after <= MAX_BUSY_RETRY_S:
                    error.retry_after = float(retry_after)
                raise error
            return reply, bufs


class Session:
    """One clip on the worker: a model, a frame size and caches of frames and stage-1 results.

    What it keeps does not grow with the clip: it remembers the last SENT_MEMORY source indices it
    sent (the worker asks again for a frame it lacks). While open, its client's heartbeats keep it
    alive on the worker (``lease``: seconds the worker waits for one, None for an older worker)."""

    def __init__(self, client: WorkerClient, spec: P.SessionSpec) -> None:
        self._client = client
        self.spec = spec
        self._lock = threading.Lock()
        self._reopen_lock = threading.Lock()
        self._sent: OrderedDict[int, None] = OrderedDict()
        self.id: str | None = None
        self.lease: float | None = None
        self.info: dict = {}
        self.bytes_sent = 0
        self._open()

    def _open(self) -> None:
        # Loading a model (or exporting its ONNX graphs once) can take longer than one timeout: wait while busy.
        # A full worker whose sessions may belong to dead clients says by when those will have expired: wait
        # that long once, then ask again (a second refusal means every session is alive).
        waited = False
        while True:
            try:
                reply, _ = self._client._request("open_session", busy_wait=True, heartbeat=True,
                                                 **self.spec.to_header())
                break
            except WorkerBusy as e:
                if e.retry_after is None or waited:
                    raise
                waited = True
                time.sleep(e.retry_after)
        lease = reply.get("lease")
        with self._lock:
            self.id = reply["session"]
            self.lease = float(lease) if type(lease) in (int, float) and lease > 0 else None
            self.info = reply
            self._sent = OrderedDict()
        if self.lease is not None:
            self._client._lease(self)

    def _mark_sent(self, indices: list[int]) -> None:
        """Remember ``indices`` as sent (most recent last), forgetting the oldest past SENT_MEMORY."""
        for i in indices:
            self._sent[i] = None
            self._sent.move_to_end(i)
        while len(self._sent) > SENT_MEMORY:
            self._sent.popitem(last=False)

    def process(self, n: int, window: tuple[int, ...], planes: dict[int, np.ndarray]) -> np.ndarray:
        """Restore output frame ``n`` from source frames ``window`` -> (3, H, W) float32.

        ``planes`` maps source index -> (3, H, W) array of the session's sample type and holds at
        least every index of ``window``. Only frames the worker does not have yet are sent.
        """
        spec = self.spec
        window = tuple(int(i) for i in window)
        if len(window) != spec.frames:
            raise ValueError(f"Session.process: window must have {spec.frames} source indices, got {window}")
        dtype = P.SAMPLE_TYPES[spec.sample_type]
        shape = (3, spec.height, spec.width)
        for i in set(window):
            a = planes.get(i)
            if a is None:
                raise ValueError(f"Session.process: planes has no frame for source index {i} of window {window}")
            if a.shape != shape or a.dtype != dtype:
                raise ValueError(f"Session.process: frame {i} is {a.dtype} {a.shape}; this session takes "
                                 f"{dtype} {shape}")
        send_all = need_frames_seen = False
        for _ in range(MAX_PROCESS_ATTEMPTS):
            with self._lock:
                session_id = self.id
                to_send = [i for i in dict.fromkeys(window) if send_all or i not in self._sent]
                self._mark_sent(list(dict.fromkeys(window)))
            arrays = [np.ascontiguousarray(planes[i]) for i in to_send]
            try:
                reply, bufs = self._client._request(
                    "process", arrays, busy_wait=True, session=session_id, n=int(n), window=list(window),
                    buffers=[P.frame_descriptor(i, a) for i, a in zip(to_send, arrays, strict=True)])
            except _SessionLost:
                with self._reopen_lock:
                    if self.id == session_id:  # one thread reopens; the others just retry
                        self._open()
                continue
            except WorkerError:
                with self._lock:
                    for i in to_send:  # unknown whether they arrived
                        self._sent.pop(i, None)
                raise
            with self._lock:
                self.bytes_sent += sum(a.nbytes for a in arrays)
            if reply["status"] == "need_frames":
                # Resend what was evicted; if that happens twice (a cache smaller than one window), send it all.
                send_all = bool(need_frames_seen)
                need_frames_seen = True
                with self._lock:
                    for i in reply.get("indices", []):
                        self._sent.pop(i, None)
                continue
            out = np.frombuffer(bufs[0], dtype=np.float32)
            if out.size != 3 * spec.height * spec.width:
                raise ProtocolMismatch(f"erdn worker at {self._client.endpoint} returned {out.size} samples, "
                                       f"expected {3 * spec.height * spec.width}; restart the worker")
            return out.reshape(shape).copy()
        raise WorkerError(f"erdn worker at {self._client.endpoint} kept asking for frames of window {window}; "
                          "its cache is too small for this clip: restart it with a larger --cache-mb")

    def close(self) -> None:
        """Free the session's caches on the worker (a vanished client's sessions expire by themselves)."""
        if self.id is None:
            return
        session_id, self.id = self.id, None
        self._client._unlease(self)
        try:
            self._client._request("close_session", timeout=CLOSE_TIMEOUT, start=False, session=session_id)
        except WorkerError:
            pass

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
