"""The worker's settings and their defaults (no torch here: the CLI and the I/O thread read them)."""

from __future__ import annotations

from dataclasses import dataclass

#: Pixels one forward call may hold (batch x tile area) unless the worker is told otherwise: a 1080p
#: triplet runs whole, a 4K frame in four or more tiles, so the paper preset stays within a consumer GPU.
DEFAULT_MAX_PIXELS = 1920 * 1088


@dataclass
class WorkerConfig:
    endpoint: str
    device: str = "auto"
    backend: str = "torch"
    idle_timeout: float = 300.0  # exit after this long with no session and no request (0: never)
    #: seconds with no open session after which the caches are dropped, models past the most recently used one
    #: evicted and freed heap returned to the kernel, once per idle spell (0: never)
    idle_release: float = 60.0
    session_timeout: float = 600.0  # a session without requests for this long is dropped
    cache_mb: float = 2048
    models_mb: float = 1024  # loaded models' parameters, all together; the least recently used idle one goes first
    session_lease: float = 10.0  # a session whose client sends heartbeats ends after this long without one
    manifest: str | None = None
    max_sessions: int = 16
    max_pixels: int = DEFAULT_MAX_PIXELS  # per forward call: batch x tile area
    max_batch: int = 8
    batch_window_ms: float = 4.0
    threads: int = 0  # torch intra-op threads (0: torch's default)
    max_frame_pixels: int = 8192 * 4352  # a session for larger frames is refused (protocol.MAX_PIXELS)
    max_queue: int = 64  # requests waiting for the compute thread; more are answered "overloaded"
    max_queue_mb: float = 1024  # bytes of frames waiting for the compute thread; more are answered "overloaded"
    curve: bool = False  # CurveZMQ: encrypt and accept only authorized client keys (required off loopback)
