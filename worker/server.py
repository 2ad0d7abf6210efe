"""The worker process: one ROUTER socket, an I/O thread and a compute thread.

The I/O thread (the main thread) owns the ROUTER socket: it answers ping, stats and shutdown
at once, even while a long computation runs, and queues everything else for the compute
thread. The compute thread owns the sessions and the model; it collects process requests
that arrive within a short window into one batch, and hands its replies back over an
inproc socket (ZeroMQ sockets are not thread-safe). Nothing goes to stdout.

A session ends with its client: the I/O thread records the heartbeats that come with ``ping``
(``Heartbeats``), and on an ipc endpoint it reads the client's pid from the connection (the kernel's
SO_PEERCRED, which libzmq puts in each message's Peer-Address), so the compute thread can drop the
session as soon as that process exits.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import signal
import threading
import time
from typing import Any

import zmq

from erdn_vs import protocol as P
from erdn_vs.pidlock import LockHeld, hold_pid_lock

from .config import WorkerConfig

log = logging.getLogger("erdn.worker")

REPLY_ENDPOINT = "inproc://erdn-replies"


class EndpointInUse(RuntimeError):
    pass


def _hold_endpoint_lock(endpoint: str) -> int:
    """One worker per endpoint: a second one exits instead of stealing the ipc socket file."""
    key = hashlib.sha1(endpoint.encode()).hexdigest()[:12]
    try:  # held for the process lifetime
        return hold_pid_lock(P.runtime_dir() / f"worker-{key}.pid")
    except LockHeld as held:
        raise EndpointInUse(f"another erdn worker (pid {held.pid}) already serves {endpoint}; "
                            f"stop it with `erdn worker stop --endpoint {endpoint}`") from None


def peer_pid(address: str | None) -> int | None:
    """The client's pid from an ipc message's Peer-Address (``HOST:UID:GID:PID``); None when it has none
    (tcp, or a client in a pid namespace this worker cannot see)."""
    parts = (address or "").rsplit(":", 3)
    if len(parts) == 4 and parts[3].isdigit() and int(parts[3]) > 0:
        return int(parts[3])
    return None


def _rss_mib() -> float:
    """This process's resident memory (VmRSS) in MiB; 0 where /proc does not tell it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Server:
    def __init__(self, config: WorkerConfig) -> None:
        from .session import Heartbeats, Stats

        self.config = config
        self.stats = Stats()
        self.heartbeats = Heartbeats()
        self._ipc = config.endpoint.startswith("ipc://")
        self.ctx = zmq.Context()
        self.jobs: queue.Queue = queue.Queue()
        self.stop = threading.Event()
        self.last_activity = time.monotonic()
        self.ready = threading.Event()
        self.load_error: str | None = None
        self.busy = False  # the compute thread is inside a batch
        self._lock_fd: int | None = None

    # ------------------------------------------------------------ main (I/O) thread

    def serve(self) -> int:
        config = self.config
        self._lock_fd = _hold_endpoint_lock(config.endpoint)
        router = self.ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        # A part bigger than the largest frame a session may have drops the peer, not the worker.
        router.setsockopt(zmq.MAXMSGSIZE, max(3 * config.max_frame_pixels * 4, P.MAX_HEADER_BYTES) + 1)
        router.setsockopt(zmq.ROUTER_MANDATORY, 0)
        authenticator = self._setup_curve(router) if config.curve else None
        path = P.ipc_path(config.endpoint)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            old_umask = os.umask(0o077)  # the socket file: this user only
        try:
            router.bind(config.endpoint)
        finally:
            if path is not None:
                os.umask(old_umask)
        replies = self.ctx.socket(zmq.PULL)
        replies.bind(REPLY_ENDPOINT)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        compute = threading.Thread(target=self._compute_loop, name="erdn-compute", daemon=True)
        compute.start()
        log.info("erdn worker pid %d serving %s (backend %s, device %s)", os.getpid(), config.endpoint,
                 config.backend, config.device)
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(replies, zmq.POLLIN)
        try:
            while not self.stop.is_set():
                events = dict(poller.poll(200))
                if replies in events:
                    while True:
                        try:
                            router.send_multipart(replies.recv_multipart(zmq.NOBLOCK, copy=False), copy=False)
                        except zmq.Again:
                            break
                if router in events:
                    while True:
                        try:
                            msg = router.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._on_message(router, msg)
                if self._idle_expired():
                    log.info("no session and no request for %.0f s: exiting", config.idle_timeout)
                    break
        finally:
            self.stop.set()
            self.jobs.put(None)
            compute.join(timeout=2)
            router.close(linger=0)
            replies.close(linger=0)
            if authenticator is not None:
                authenticator.stop()
            if compute.is_alive():  # still importing torch or inside a long stage: it is a daemon, leave it
                log.warning("compute thread still busy; exiting without waiting for it")
            else:
                self.ctx.term()
            if path is not None and path.exists():
                path.unlink(missing_ok=True)
            if self._lock_fd is not None:
                os.close(self._lock_fd)
            log.info("erdn worker stopped")
        return 0

    def _setup_curve(self, router: zmq.Socket) -> Any:
        """CurveZMQ on the ROUTER: encrypted, and only clients whose public key is authorized get through
        (the ZAP handler refuses the others during the handshake, so they never reach ``_on_message``)."""
        from zmq.auth.thread import ThreadAuthenticator

        from erdn_vs.keys import server_keys

        keys = server_keys()
        authenticator = ThreadAuthenticator(self.ctx, log=logging.getLogger("erdn.worker.auth"))
        authenticator.start()
        authenticator.configure_curve(domain="*", location=str(keys.authorized))
        router.curve_secretkey = keys.secret
        router.curve_publickey = keys.public
        router.curve_server = True
        log.info("CurveZMQ on: clients need a key from %s", keys.authorized)
        return authenticator

    def _idle_expired(self) -> bool:
        if self.config.idle_timeout <= 0:
            return False
        with self.stats.lock:
            busy = bool(self.stats.sessions) or self.stats.queue_depth > 0
        if busy:
            self.last_activity = time.monotonic()
            return False
        return time.monotonic() - self.last_activity > self.config.idle_timeout

    def _on_message(self, router: zmq.Socket, msg: list) -> None:
        self.last_activity = time.monotonic()
        identity, frames = msg[0], msg[1:]
        request_id = None

        def send(header: dict, buffers: list | tuple = ()) -> None:
            router.send_multipart([identity, *P.encode(header, buffers)], copy=False)

        try:
            if not frames:
                raise P.ProtocolError(P.BAD_REQUEST, "empty message: a request needs a JSON header frame")
            header = P.decode_header(frames[0].buffer)
            request_id = header.get("id") if type(header.get("id")) is int else None
            op, request_id = P.check_request_header(header)
            if op != "process" and len(frames) > 1:
                raise P.ProtocolError(P.BAD_REQUEST, f"op {op!r} takes no buffers, got {len(frames) - 1}")
            if len(frames) - 1 > P.MAX_BUFFERS:
                raise P.ProtocolError(P.BAD_REQUEST, f"a request carries at most {P.MAX_BUFFERS} buffers, "
                                      f"got {len(frames) - 1}")
            if op == "ping":
                alive = self.heartbeats.beat(P.heartbeat_sessions(header))
                with self.stats.lock:
                    queued = self.stats.queue_depth
                send(P.reply_ok(request_id, pid=os.getpid(), endpoint=self.config.endpoint,
                                protocol=P.PROTOCOL_VERSION, ready=self.ready.is_set(), load_error=self.load_error,
                                busy=self.busy, queue_depth=queued, heartbeats=alive))
            elif op == "stats":
                stats = self.stats.snapshot()
                stats.update(pid=os.getpid(), endpoint=self.config.endpoint, backend=self.config.backend,
                             device=self.config.device, ready=self.ready.is_set())
                send(P.reply_ok(request_id, stats=stats))
            elif op == "shutdown":
                log.info("shutdown requested")
                send(P.reply_ok(request_id))
                self.stop.set()
            else:
                size = sum(len(f) for f in frames[1:])
                with self.stats.lock:
                    full = (self.stats.queue_depth >= self.config.max_queue
                            or self.stats.queue_bytes + size > self.config.max_queue_mb * (1 << 20))
                    if not full:
                        self.stats.queue_depth += 1
                        self.stats.queue_bytes += size
                        self.stats.max_queue_depth = max(self.stats.max_queue_depth, self.stats.queue_depth)
                if full:  # bounded memory whatever the peers send; well-behaved clients resend
                    self.stats.add(overloaded=1)
                    raise P.ProtocolError(P.OVERLOADED, f"the worker has {self.config.max_queue} requests or "
                                          f"{self.config.max_queue_mb:g} MiB queued; resend a little later")
                from .session import content_digest

                buffers = [f.buffer for f in frames[1:]]
                # Name the frames here, beside the compute thread (hashlib releases the GIL on big buffers).
                contents = [content_digest(b) for b in buffers]
                client = self._client_pid(frames[0]) if op == "open_session" else None
                self.jobs.put((op, identity, request_id, header, buffers, size, contents, client))
        except P.ProtocolError as e:
            self.stats.add(errors=1)
            if e.code != P.OVERLOADED:
                log.warning("bad request: %s", e.message)
            send(P.reply_error(request_id, e.code, e.message, **e.fields))
        except Exception as e:  # a bug here must not end the I/O thread: answer and go on
            log.exception("request failed in the I/O thread")
            self.stats.add(errors=1)
            send(P.reply_error(request_id, P.INTERNAL, self._internal_message(e)))

    def _client_pid(self, frame: zmq.Frame) -> int | None:
        """The sending process's pid, on an ipc endpoint (None elsewhere, or where libzmq does not tell it)."""
        if not self._ipc:
            return None
        try:
            return peer_pid(frame.get("Peer-Address"))
        except (zmq.ZMQError, UnicodeDecodeError):
            return None

    # ------------------------------------------------------------ compute thread

    def _compute_loop(self) -> None:
        out = self.ctx.socket(zmq.PUSH)
        out.connect(REPLY_ENDPOINT)
        try:
            manager = self._make_manager()
        except Exception as e:  # torch missing or broken: keep answering, with the reason
            self.load_error = f"the worker cannot load torch ({e}); pip install erdn-vs[worker]"
            log.exception("worker start failed")
            manager = None
        self.ready.set()
        window = self.config.batch_window_ms / 1000
        last_expiry = time.monotonic()
        idle_since: float | None = None  # since when no session is open (None: one is, or a request just ran)
        released = True  # nothing to release before the first request
        try:
            while not self.stop.is_set():
                if manager is not None and time.monotonic() - last_expiry > 1:
                    try:
                        manager.expire()
                    except Exception:  # never let the compute thread die: its queue would fill for good
                        log.exception("session expiry failed")
                    last_expiry = time.monotonic()
                if manager is not None:
                    if manager.sessions:
                        idle_since, released = None, False
                    elif idle_since is None:
                        idle_since = time.monotonic()
                    elif not released and self._release_due(idle_since):
                        released = True
                        self._release_idle(manager)
                try:
                    job = self.jobs.get(timeout=1.0)
                except queue.Empty:
                    continue
                if job is None:
                    break
                batch = [job]
                self.busy = True
                if job[0] == "process":  # collect concurrent requests for a short while
                    deadline = time.monotonic() + window
                    while len(batch) < 64 and (remaining := deadline - time.monotonic()) > 0:
                        try:
                            more = self.jobs.get(timeout=remaining)
                        except queue.Empty:
                            break
                        if more is None:
                            self.stop.set()
                            break
                        batch.append(more)
                self.busy = True  # before the queue shrinks, so a ping never sees neither
                with self.stats.lock:
                    self.stats.queue_depth -= len(batch)
                    self.stats.queue_bytes -= sum(job[5] for job in batch)
                try:
                    self._run(manager, batch, out)
                finally:
                    self.busy = False
                idle_since, released = None, False  # a request: the grace period starts again
        finally:
            out.close(linger=0)

    def _release_due(self, idle_since: float) -> bool:
        """Whether the worker has had no session for its ``idle_release`` seconds (never when that is 0)."""
        grace = self.config.idle_release
        return grace > 0 and time.monotonic() - idle_since >= grace

    def _release_idle(self, manager) -> None:
        """Give back what an idle worker holds (``SessionManager.release_idle``) and log it once, with VmRSS."""
        before = _rss_mib()
        try:
            done = manager.release_idle()
        except Exception:  # never let the compute thread die over housekeeping
            log.exception("idle release failed")
            return
        log.info("no session for %g s: released %.1f MiB of cache (%d entries) and %d model(s), kept %d; "
                 "heap returned to the system: %s; resident memory %.0f -> %.0f MiB", self.config.idle_release,
                 done["cache_bytes"] / (1 << 20), done["cache_items"], done["models_evicted"], done["models_kept"],
                 "yes" if done["trimmed"] else "no", before, _rss_mib())

    def _make_manager(self):
        import torch

        from .backends import BackendError, resolve_device
        from .session import SessionManager

        if self.config.threads > 0:
            torch.set_num_threads(self.config.threads)
        c = self.config
        try:
            resolve_device(c.device)
        except BackendError as e:
            self.load_error = f"erdn worker --device {c.device}: {e}; restart it with another --device"
            log.error("%s", self.load_error)
            return None
        return SessionManager(backend=c.backend, device=c.device, cache_bytes=int(c.cache_mb * (1 << 20)),
                              manifest=c.manifest,
                              max_sessions=c.max_sessions, session_timeout=c.session_timeout,
                              max_pixels=c.max_pixels, max_batch=c.max_batch, stats=self.stats,
                              max_frame_pixels=c.max_frame_pixels, models_bytes=int(c.models_mb * (1 << 20)),
                              session_lease=c.session_lease, heartbeats=self.heartbeats)

    def _run(self, manager, batch: list, out: zmq.Socket) -> None:
        def replier(identity: bytes, request_id: int):
            def reply(message: tuple[dict, list]) -> None:
                header, buffers = message
                header["id"] = request_id
                out.send_multipart([identity, *P.encode(header, buffers)], copy=False)
            return reply

        process = []
        for op, identity, request_id, header, buffers, _, contents, client in batch:
            reply = replier(identity, request_id)
            if manager is None:
                reply((P.reply_error(None, P.CONFIG_ERROR, self.load_error or "worker not ready"), []))
                continue
            if op == "process":
                process.append((header, buffers, reply, contents))
                continue
            self._guarded(reply, lambda op=op, header=header, reply=reply, client=client:
                          self._session_op(manager, op, header, reply, client))
        if process:
            try:
                manager.process_batch(process)
            except Exception as e:  # a bug or an out-of-memory: answer every request of the batch
                log.exception("process batch failed")
                self.stats.add(errors=1)
                for _, _, reply, _ in process:
                    reply((P.reply_error(None, P.INTERNAL, self._internal_message(e)), []))

    def _session_op(self, manager, op: str, header: dict, reply, client: int | None) -> None:
        if op == "open_session":
            reply((P.reply_ok(None, **manager.open(header, client_pid=client)), []))
        elif op == "close_session":
            closed = manager.close(P.session_id_of(header))
            reply((P.reply_ok(None, closed=closed), []))

    def _guarded(self, reply, fn) -> None:
        try:
            fn()
        except P.ProtocolError as e:
            self.stats.add(errors=1)
            log.warning("request refused: %s", e.message)
            reply((P.reply_error(None, e.code, e.message, **e.fields), []))
        except Exception as e:
            log.exception("request failed")
            self.stats.add(errors=1)
            reply((P.reply_error(None, P.INTERNAL, self._internal_message(e)), []))

    @staticmethod
    def _internal_message(e: Exception) -> str:
        text = f"{type(e).__name__}: {e}"
        if "out of memory" in str(e).lower():
            return f"{text}; the frame does not fit in device memory: pass a smaller tile=(w, h) or start the " \
                   "worker with a smaller --max-pixels"
        return f"the worker failed ({text}); see its log {P.log_path()}"
