"""CurveZMQ keys for a worker reached over TCP (pyzmq's built-in CURVE; no torch, no vapoursynth).

The per-user key directory ($ERDN_KEYS_DIR, else $XDG_CONFIG_HOME/erdn-vs/curve, else
~/.config/erdn-vs/curve; mode 0700) holds:

- ``server.key`` / ``server.key_secret``: the worker's key pair;
- ``client.key`` / ``client.key_secret``: this user's client key pair;
- ``authorized/``: the client public keys (``*.key``) the worker accepts.

``erdn worker keys`` writes them; copy ``server.key`` to a client machine and that client's
``client.key`` into the worker's ``authorized/``. Key files are ZeroMQ's text certificates
(``zmq.auth``), never pickles.
"""

from __future__ import annotations

import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

KEYS_ENV = "ERDN_KEYS_DIR"
CURVE_ENV = "ERDN_WORKER_CURVE"  # "1": use CURVE even on loopback


class KeysError(ValueError):
    """Keys missing or unreadable; the message says how to make them."""


def keys_dir() -> Path:
    env = os.environ.get(KEYS_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "erdn-vs" / "curve"


def curve_forced() -> bool:
    return os.environ.get(CURVE_ENV, "") not in ("", "0")


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        path.chmod(0o700)
    return path


def generate_keys(directory: Path | None = None) -> Path:
    """Create the server and client key pairs (keeping existing ones) and authorize the client key."""
    import zmq.auth

    directory = _private_dir(directory or keys_dir())
    old_umask = os.umask(0o077)
    try:
        for name in ("server", "client"):
            if not (directory / f"{name}.key_secret").is_file():
                zmq.auth.create_certificates(str(directory), name)
        authorized = _private_dir(directory / "authorized")
        shutil.copyfile(directory / "client.key", authorized / "client.key")
    finally:
        os.umask(old_umask)
    return directory


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    import zmq.auth

    if not path.is_file():
        raise KeysError(f"CurveZMQ key file {path} does not exist; create the keys with `erdn worker keys`")
    try:
        public, secret_key = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as e:
        raise KeysError(f"cannot read CurveZMQ key file {path} ({e}); recreate it with `erdn worker keys`") from None
    if secret and not secret_key:
        raise KeysError(f"{path} holds no secret key; create the keys with `erdn worker keys`")
    return public, secret_key


@dataclass(frozen=True)
class ServerKeys:
    public: bytes
    secret: bytes
    authorized: Path  # directory of accepted client public keys


@dataclass(frozen=True)
class ClientKeys:
    public: bytes
    secret: bytes
    server_public: bytes


def server_keys(directory: Path | None = None) -> ServerKeys:
    directory = directory or keys_dir()
    public, secret = _load(directory / "server.key_secret", secret=True)
    authorized = directory / "authorized"
    if not authorized.is_dir() or not any(authorized.glob("*.key")):
        raise KeysError(f"no authorized client keys in {authorized}; run `erdn worker keys` or copy clients' "
                        "client.key files there")
    return ServerKeys(public, secret, authorized)  # type: ignore[arg-type]


def client_keys(directory: Path | None = None) -> ClientKeys:
    directory = directory or keys_dir()
    public, secret = _load(directory / "client.key_secret", secret=True)
    server_public, _ = _load(directory / "server.key", secret=False)
    return ClientKeys(public, secret, server_public)  # type: ignore[arg-type]
