"""The wire protocol between the VapourSynth side and the worker (both import this module).

A message is a ZeroMQ multipart message: frame 0 is a UTF-8 JSON header, the frames after
it are raw C-contiguous array buffers described by the header. Nothing is pickled.

Requests carry ``{"v": PROTOCOL_VERSION, "op": OP, "id": REQUEST_ID, ...}``; replies carry
``{"v": ..., "id": REQUEST_ID, "status": "ok" | "error" | "need_frames", ...}``. An error
reply has a ``code`` (one of ERROR_CODES) and a ``message`` that says what to do.

Sessions end with their client: an ``open_session`` with ``"heartbeat": true`` gets a
``"lease"`` (seconds) in its reply, and the client then sends ``ping`` with ``"sessions": [ids]``
more often than that; a worker drops a leased session that misses its lease. A ``busy`` error
may carry ``"retry_after"`` (seconds): sessions that look dead will have expired by then.
Both are optional fields, so older clients and workers of the same version still talk.

Pure Python + numpy: no torch, no vapoursynth.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1

OPS = ("ping", "stats", "open_session", "process", "close_session", "shutdown")

# Error codes (the client maps each to an exception class).
BAD_REQUEST = "bad_request"  # a malformed or out-of-range message: a bug on the sending side
VERSION_MISMATCH = "version_mismatch"  # client and worker speak different protocol versions
#: Requests a worker answers whatever protocol version the client speaks: their header is the same in every
#: version ({"v", "op", "id"}), so `erdn worker stop` and `status` work across an upgrade. A client whose
#: request another version refused resends it with the worker's version (its error reply's "v").
ANY_VERSION_OPS = ("ping", "stats", "shutdown")
UNKNOWN_SESSION = "unknown_session"  # expired or never opened (the client reopens it)
MODEL_ERROR = "model_error"  # weights/manifest missing, damaged or not matching the session
CONFIG_ERROR = "config_error"  # a device/precision/backend/tile option the worker cannot honour
BUSY = "busy"  # too many sessions
SHUTTING_DOWN = "shutting_down"
OVERLOADED = "overloaded"  # the request queue is full: the client waits a little and resends
INTERNAL = "internal"  # a bug in the worker; the message names the log file
ERROR_CODES = (BAD_REQUEST, VERSION_MISMATCH, UNKNOWN_SESSION, MODEL_ERROR, CONFIG_ERROR, BUSY,
               SHUTTING_DOWN, OVERLOADED, INTERNAL)

SAMPLE_TYPES = {"half": np.dtype("<f2"), "float": np.dtype("<f4")}
DTYPE_NAMES = {np.dtype("<f2"): "float16", np.dtype("<f4"): "float32"}
PRECISIONS = ("auto", "fp32", "fp16", "bf16")

MAX_HEADER_BYTES = 64 * 1024
MAX_DIM = 16384
MAX_PIXELS = 8192 * 4352  # a little above 8K UHD
MAX_FRAME_BYTES = 3 * MAX_PIXELS * 4
MAX_SOURCE_INDEX = 2**40
MAX_OVERLAP = 256
MIN_TILE = 32
MAX_BUFFERS = 5  # a process request carries at most one buffer per window frame

ENDPOINT_ENV = "ERDN_WORKER_ENDPOINT"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
MAX_HEARTBEAT_SESSIONS = 256  # session ids one heartbeat may name


class ProtocolError(ValueError):
    """A message that breaks the protocol; ``code`` is one of ERROR_CODES."""

    def __init__(self, code: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields  # extra reply fields, e.g. retry_after for BUSY


# ---------------------------------------------------------------- per-user paths and the default endpoint


IPC_PATH_MAX = 100  # bytes of a unix socket path (sun_path is 108 on Linux, 104 on macOS; margin kept)
SOCKET_NAME = "worker.sock"


def _runtime_candidates() -> list[tuple[Path, str]]:
    """(directory, where its path came from), in order of preference."""
    out = []
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isdir(xdg):
        out.append((Path(xdg) / "erdn-vs", "$XDG_RUNTIME_DIR"))
    tmp = tempfile.gettempdir()
    origin = next((f"${k}" for k in ("TMPDIR", "TEMP", "TMP") if os.environ.get(k) == tmp), "the temp dir")
    out.append((Path(tmp) / f"erdn-vs-{os.getuid()}", origin))
    return out


def _socket_fits(directory: Path) -> bool:
    return len(str(directory / SOCKET_NAME).encode()) <= IPC_PATH_MAX


def runtime_dir() -> Path:
    """A directory only this user can read: $XDG_RUNTIME_DIR/erdn-vs, else /tmp/erdn-vs-$UID (mode 0700).

    Holds the default ipc socket, the autostart lock, the pid files and the worker log. A directory whose
    socket path would be too long for a unix socket is skipped before anything is created in it; when none
    fits, the first is used for the files (they need no short path) and ``default_endpoint`` refuses.
    """
    candidates = [d for d, _ in _runtime_candidates()]
    path = next((d for d in candidates if _socket_fits(d)), candidates[0])
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise PermissionError(f"{path} is not a directory owned by this user; remove it or set ${ENDPOINT_ENV}")
    if stat.S_IMODE(st.st_mode) != 0o700:
        path.chmod(0o700)
    return path


def default_endpoint() -> str:
    """$ERDN_WORKER_ENDPOINT if set, else ipc://RUNTIME_DIR/worker.sock.

    Raises ValueError naming the variable or the directories (and where each came from) when the ipc
    path would be too long; nothing is created then.
    """
    env = os.environ.get(ENDPOINT_ENV)
    if env:
        path = ipc_path(env)
        if path is not None and len(str(path).encode()) > IPC_PATH_MAX:
            raise ValueError(f"${ENDPOINT_ENV} is {env}: its path is {len(str(path).encode())} bytes, over the "
                             f"{IPC_PATH_MAX} a unix socket path can hold; set it to a shorter one "
                             f"(ipc:///tmp/erdn-{os.getuid()}.sock) or to tcp://127.0.0.1:5599")
        return env
    candidates = _runtime_candidates()
    if not any(_socket_fits(d) for d, _ in candidates):
        tried = "; ".join(f"{d / SOCKET_NAME} (from {origin}) is {len(str(d / SOCKET_NAME).encode())} bytes"
                          for d, origin in candidates)
        raise ValueError(f"no default worker socket fits the {IPC_PATH_MAX} bytes a unix socket path can hold: "
                         f"{tried}; set {ENDPOINT_ENV}=ipc:///tmp/erdn-{os.getuid()}.sock (or "
                         f"tcp://127.0.0.1:5599), pass endpoint= (erdn: --endpoint), or a shorter $TMPDIR")
    return f"ipc://{runtime_dir() / SOCKET_NAME}"


def ipc_path(endpoint: str) -> Path | None:
    """The socket file of an ipc:// endpoint (None for tcp://)."""
    return Path(endpoint[len("ipc://"):]) if endpoint.startswith("ipc://") else None


def is_loopback(endpoint: str) -> bool:
    """True for ipc:// and tcp:// on a loopback host."""
    if endpoint.startswith("ipc://"):
        return True
    host = endpoint[len("tcp://"):].rpartition(":")[0]
    return host in LOOPBACK_HOSTS


def check_endpoint(endpoint: str, curve: bool = False) -> str:
    """Accept ipc://PATH and tcp://HOST:PORT; anything else is a clear ValueError.

    A TCP host other than loopback needs ``curve`` (CurveZMQ keys): without it anyone on the network
    could open sessions that name files the worker reads.
    """
    if not isinstance(endpoint, str):
        raise ValueError(f"endpoint must be a string, got {type(endpoint).__name__}")
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        size = len(endpoint[len("ipc://"):].encode())
        if size > IPC_PATH_MAX:
            raise ValueError(f"endpoint {endpoint}: its path is {size} bytes, over the {IPC_PATH_MAX} a unix socket "
                             "path can hold; use a shorter one (ipc:///tmp/erdn-NAME.sock) or tcp://127.0.0.1:PORT")
        return endpoint
    if endpoint.startswith("tcp://") and ":" in endpoint[len("tcp://"):]:
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        if not host:
            raise ValueError(f"endpoint {endpoint!r}: give a host (tcp://127.0.0.1:PORT)")
        if host not in LOOPBACK_HOSTS and not curve:
            raise ValueError(f"endpoint {endpoint!r}: a worker off loopback needs CurveZMQ keys; create them with "
                             "`erdn worker keys` and use --curve (client: $ERDN_WORKER_CURVE=1), or use "
                             "tcp://127.0.0.1:PORT")
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"endpoint {endpoint!r}: the port must be a number from 1 to 65535")
        return endpoint
    raise ValueError(f"endpoint {endpoint!r} must look like ipc:///path/to/socket or tcp://127.0.0.1:PORT")


def log_path() -> Path:
    return runtime_dir() / "worker.log"


# ---------------------------------------------------------------- encoding


def encode(header: dict[str, Any], buffers: list[np.ndarray] | tuple = ()) -> list:
    """A multipart message: JSON header, then each array's raw bytes (zero-copy where possible)."""
    parts: list = [json.dumps(header, separators=(",", ":")).encode()]
    for a in buffers:
        parts.append(np.ascontiguousarray(a).data)
    return parts


def decode_header(frame: bytes | memoryview) -> dict[str, Any]:
    """Parse and minimally check the JSON header of a request or reply."""
    raw = bytes(frame)
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(BAD_REQUEST, f"header is {len(raw)} bytes (max {MAX_HEADER_BYTES})")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ProtocolError(BAD_REQUEST, f"header is not UTF-8 JSON ({e})") from None
    if not isinstance(header, dict):
        raise ProtocolError(BAD_REQUEST, "header must be a JSON object")
    return header


def request(op: str, request_id: int, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "op": op, "id": request_id, **fields}


def reply_ok(request_id: int | None, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "status": "ok", **fields}


def reply_error(request_id: int | None, code: str, message: str, **fields: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "status": "error", "code": code, "message": message, **fields}


def reply_need_frames(request_id: int | None, indices: list[int]) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "id": request_id, "status": "need_frames", "indices": sorted(indices)}


# ---------------------------------------------------------------- validation (worker side)


def _int(header: dict, key: str, lo: int, hi: int) -> int:
    value = header.get(key)
    if type(value) is not int or not lo <= value <= hi:
        raise ProtocolError(BAD_REQUEST, f"'{key}' must be an integer in [{lo}, {hi}], got {value!r}")
    return value


def _choice(header: dict, key: str, choices: tuple | dict, default: Any = None) -> Any:
    value = header.get(key, default)
    if not isinstance(value, str | int) or isinstance(value, bool) or value not in choices:
        raise ProtocolError(BAD_REQUEST, f"'{key}' must be one of {sorted(choices)}, got {value!r}")
    return value


def _opt_str(header: dict, key: str, max_len: int = 4096) -> str | None:
    value = header.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > max_len:
        raise ProtocolError(BAD_REQUEST, f"'{key}' must be a non-empty string of at most {max_len} chars")
    return value


def check_request_header(header: dict[str, Any]) -> tuple[str, int]:
    """Check the fields every request has; returns (op, id)."""
    request_id = header.get("id")
    if type(request_id) is not int or not 0 <= request_id < 2**63:
        raise ProtocolError(BAD_REQUEST, f"'id' must be a non-negative integer, got {request_id!r}")
    version = header.get("v")
    # type() and not isinstance: JSON's true would otherwise pass as version 1
    if type(version) is not int or (version != PROTOCOL_VERSION and header.get("op") not in ANY_VERSION_OPS):
        raise ProtocolError(
            VERSION_MISMATCH,
            f"client speaks protocol version {version!r}, this worker speaks {PROTOCOL_VERSION}; "
            "stop the old worker (`erdn worker stop`) so the installed version starts",
        )
    op = header.get("op")
    if op not in OPS:
        raise ProtocolError(BAD_REQUEST, f"unknown op {op!r}; expected one of {list(OPS)}")
    return op, request_id


def check_device(device: Any) -> str:
    if device in ("auto", "cpu", "cuda"):
        return device
    if isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit() and len(device) < 12:
        return device
    raise ProtocolError(BAD_REQUEST, f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


@dataclass(frozen=True)
class SessionSpec:
    """What a client asks for when it opens a session for one clip."""

    frames: int
    width: int
    height: int
    sample_type: str
    model: str | None = None
    weights: str | None = None
    device: str = "auto"
    precision: str = "auto"
    tile: tuple[int, int] | None = None
    overlap: int = 16

    def to_header(self) -> dict[str, Any]:
        return {
            "frames": self.frames, "width": self.width, "height": self.height, "sample_type": self.sample_type,
            "model": self.model, "weights": self.weights, "device": self.device, "precision": self.precision,
            "tile": list(self.tile) if self.tile else None, "overlap": self.overlap,
        }

    @classmethod
    def from_header(cls, header: dict[str, Any]) -> SessionSpec:
        frames = _choice(header, "frames", (3, 5))
        width = _int(header, "width", 1, MAX_DIM)
        height = _int(header, "height", 1, MAX_DIM)
        if width * height > MAX_PIXELS:
            raise ProtocolError(BAD_REQUEST, f"{width}x{height} is larger than the maximum of {MAX_PIXELS} pixels")
        sample_type = _choice(header, "sample_type", SAMPLE_TYPES)
        model, weights = _opt_str(header, "model", 256), _opt_str(header, "weights")
        if (model is None) == (weights is None):
            raise ProtocolError(BAD_REQUEST, "give exactly one of 'model' (a manifest name) or 'weights' (a file path)")
        device = check_device(header.get("device", "auto"))
        precision = _choice(header, "precision", PRECISIONS, "auto")
        tile = header.get("tile")
        if tile is not None:
            if (not isinstance(tile, list) or len(tile) != 2
                    or any(type(t) is not int or not MIN_TILE <= t <= MAX_DIM for t in tile)):
                raise ProtocolError(BAD_REQUEST, f"'tile' must be [width, height], each in [{MIN_TILE}, {MAX_DIM}]")
            tile = (tile[0], tile[1])
        overlap = _int({"overlap": header.get("overlap", 16)}, "overlap", 0, MAX_OVERLAP)
        return cls(frames, width, height, sample_type, model, weights, device, precision, tile, overlap)


@dataclass(frozen=True)
class ProcessRequest:
    """Restore output frame ``n`` from source frames ``window``; ``frames`` are the planes sent along."""

    session: str
    n: int
    window: tuple[int, ...]
    frames: dict[int, np.ndarray]


def _session_id(header: dict) -> str:
    sid = header.get("session")
    if not isinstance(sid, str) or not 1 <= len(sid) <= 64 or not sid.isalnum():
        raise ProtocolError(BAD_REQUEST, f"'session' must be a session id string, got {sid!r}")
    return sid


def session_id_of(header: dict[str, Any]) -> str:
    return _session_id(header)


def heartbeat_sessions(header: dict[str, Any]) -> list[str]:
    """The session ids a ``ping`` keeps alive (its optional ``sessions`` field); [] when absent.

    Raises ProtocolError (bad_request) for anything but a list of at most MAX_HEARTBEAT_SESSIONS ids."""
    ids = header.get("sessions")
    if ids is None:
        return []
    if not isinstance(ids, list) or len(ids) > MAX_HEARTBEAT_SESSIONS:
        raise ProtocolError(BAD_REQUEST, f"'sessions' must be a list of at most {MAX_HEARTBEAT_SESSIONS} session ids")
    return [_session_id({"session": sid}) for sid in ids]


def frame_descriptor(index: int, array: np.ndarray) -> dict[str, Any]:
    return {"index": index, "shape": list(array.shape), "dtype": DTYPE_NAMES[array.dtype]}


def parse_process(header: dict[str, Any], buffers: list, spec: SessionSpec) -> ProcessRequest:
    """Validate a process request against its session's spec; arrays are zero-copy views of ``buffers``."""
    session = _session_id(header)
    n = _int(header, "n", 0, MAX_SOURCE_INDEX)
    window = header.get("window")
    if (not isinstance(window, list) or len(window) != spec.frames
            or any(type(i) is not int or not 0 <= i <= MAX_SOURCE_INDEX for i in window)):
        raise ProtocolError(BAD_REQUEST,
                            f"'window' must be a list of {spec.frames} source indices >= 0, got {window!r}")
    descs = header.get("buffers", [])
    if len(buffers) > MAX_BUFFERS:
        raise ProtocolError(BAD_REQUEST, f"a process request carries at most {MAX_BUFFERS} buffers, got {len(buffers)}")
    if not isinstance(descs, list) or len(descs) != len(buffers):
        raise ProtocolError(
            BAD_REQUEST, f"header describes {len(descs) if isinstance(descs, list) else '?'} buffers, "
            f"message carries {len(buffers)}")
    dtype = SAMPLE_TYPES[spec.sample_type]
    shape = [3, spec.height, spec.width]
    frames: dict[int, np.ndarray] = {}
    for desc, buf in zip(descs, buffers, strict=True):
        if not isinstance(desc, dict):
            raise ProtocolError(BAD_REQUEST, "each 'buffers' entry must be an object {index, shape, dtype}")
        index = _int(desc, "index", 0, MAX_SOURCE_INDEX)
        if index not in window or index in frames:
            raise ProtocolError(BAD_REQUEST, f"buffer index {index} is not in the window or is sent twice")
        if desc.get("shape") != shape or desc.get("dtype") != DTYPE_NAMES[dtype]:
            raise ProtocolError(
                BAD_REQUEST, f"buffer {index} is {desc.get('dtype')!r} {desc.get('shape')!r}; this session takes "
                f"{DTYPE_NAMES[dtype]} {shape} (3 RGB planes of the size the session was opened with)")
        view = memoryview(buf)
        expected = 3 * spec.height * spec.width * dtype.itemsize
        if view.nbytes != expected:
            raise ProtocolError(BAD_REQUEST, f"buffer {index} has {view.nbytes} bytes, its shape needs {expected}")
        array = np.frombuffer(view, dtype=dtype).reshape(shape)
        if not np.isfinite(array).all():  # one NaN would spread through the session's cached results
            raise ProtocolError(BAD_REQUEST, f"buffer {index} holds NaN or infinite samples; frames must be "
                                "finite (clamp or fix the source clip)")
        frames[index] = array
    return ProcessRequest(session, n, tuple(window), frames)
