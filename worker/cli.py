"""``erdn worker``: serve in the foreground; ``erdn worker status`` / ``erdn worker stop`` query a running one;
``erdn worker keys`` creates the CurveZMQ keys a worker off loopback needs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def _endpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", default=None,
                   help="ipc:///path/sock or tcp://127.0.0.1:PORT (default: $ERDN_WORKER_ENDPOINT, else a socket "
                        "in the per-user runtime directory)")


def serve_parser() -> argparse.ArgumentParser:
    from erdn_vs import protocol as P

    from .config import DEFAULT_MAX_PIXELS

    p = argparse.ArgumentParser(prog="erdn worker", description="Run the persistent ERDN worker in the foreground "
                                "(logs go to stderr). Subcommands: `erdn worker status`, `erdn worker stop`, "
                                "`erdn worker keys`.")
    _endpoint_arg(p)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--backend", default="torch", choices=["torch", "onnx"])
    p.add_argument("--idle-timeout", type=float, default=300.0,
                   help="exit after this many seconds with no open session (0: never; default 300)")
    p.add_argument("--idle-release", type=float, default=60.0,
                   help="after this many seconds with no open session, drop the caches and every loaded model but "
                        "the most recently used, and give the freed memory back to the system (once per idle "
                        "spell; 0: never; default 60)")
    p.add_argument("--session-timeout", type=float, default=600.0,
                   help="drop a session after this many seconds without requests (default 600)")
    p.add_argument("--session-lease", type=float, default=10.0,
                   help="end a session whose client stopped sending heartbeats after this many seconds (0: no "
                        "leases; on an ipc endpoint a session also ends as soon as its client process exits; "
                        "default 10)")
    p.add_argument("--cache-mb", type=float, default=2048,
                   help="MiB the frame and stage-1 caches may hold, all sessions together (default 2048)")
    p.add_argument("--models-mb", type=float, default=1024,
                   help="MiB of parameters the loaded models may hold together; past it the least recently used "
                        "model that no open session uses is evicted (models in use always stay; default 1024). "
                        "The worker's memory is about torch's own (~600 MiB on the CPU) + --models-mb + --cache-mb")
    p.add_argument("--manifest", default=None,
                   help="plugin_manifest.yaml that maps model names to weights (default: $ERDN_MANIFEST, else the "
                        "one next to the worker package)")
    p.add_argument("--max-sessions", type=int, default=16)
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="pixels one forward call may hold (batch x tile); larger frames are tiled")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--batch-window-ms", type=float, default=4.0,
                   help="how long to collect concurrent requests into one batch")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: its default)")
    p.add_argument("--max-frame-pixels", type=int, default=P.MAX_PIXELS,
                   help=f"refuse sessions whose frames have more pixels than this (default {P.MAX_PIXELS})")
    p.add_argument("--max-queue", type=int, default=64,
                   help="requests that may wait for the model; more are answered 'overloaded' (default 64)")
    p.add_argument("--max-queue-mb", type=float, default=1024,
                   help="MiB of frames that may wait for the model (default 1024)")
    p.add_argument("--curve", action="store_true",
                   help="CurveZMQ: encrypt and accept only clients whose key is in the keys' authorized/ "
                        "directory (required for a tcp:// host other than loopback; keys: `erdn worker keys`)")
    p.add_argument("--log-level", default="INFO")
    return p


def serve_main(argv: list[str]) -> int:
    args = serve_parser().parse_args(argv)
    # vspipe may share our stdout with a video stream: anything printed goes to stderr instead.
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s erdn-worker[%(process)d] %(levelname)s %(message)s")
    from erdn_vs import protocol as P

    from .config import WorkerConfig
    from .server import EndpointInUse, Server

    for name, value in (("--cache-mb", args.cache_mb * 1024), ("--models-mb", args.models_mb * 1024),
                        ("--max-sessions", args.max_sessions),
                        ("--max-pixels", args.max_pixels), ("--max-batch", args.max_batch),
                        ("--max-frame-pixels", args.max_frame_pixels), ("--max-queue", args.max_queue),
                        ("--max-queue-mb", args.max_queue_mb * 1024)):
        if value < 1:
            print(f"erdn worker: {name} is too small; give a positive number (`erdn worker --help` shows the "
                  "defaults)", file=sys.stderr)
            return 2
    if args.session_lease < 0:
        print(f"erdn worker: --session-lease must be 0 (no leases) or a number of seconds, got {args.session_lease:g}",
              file=sys.stderr)
        return 2
    if not args.idle_release >= 0:  # also refuses nan
        print(f"erdn worker: --idle-release must be 0 (never) or a number of seconds, got {args.idle_release:g}",
              file=sys.stderr)
        return 2
    if args.threads < 0:
        print(f"erdn worker: --threads must be 0 (torch's default) or a number of threads, got {args.threads}",
              file=sys.stderr)
        return 2
    try:
        endpoint = P.check_endpoint(args.endpoint or P.default_endpoint(), curve=args.curve)
        P.check_device(args.device)
        if args.curve:
            from erdn_vs.keys import server_keys

            server_keys()  # missing keys: one clear line now, not an error from the I/O thread
    except (ValueError, P.ProtocolError) as e:
        print(f"erdn worker: {e}", file=sys.stderr)
        return 2
    config = WorkerConfig(endpoint=endpoint, device=args.device, backend=args.backend,
                          idle_timeout=args.idle_timeout, idle_release=args.idle_release,
                          session_timeout=args.session_timeout,
                          cache_mb=args.cache_mb, models_mb=args.models_mb, session_lease=args.session_lease,
                          max_sessions=args.max_sessions, max_pixels=args.max_pixels,
                          max_batch=args.max_batch, manifest=args.manifest, batch_window_ms=args.batch_window_ms,
                          threads=args.threads, max_frame_pixels=args.max_frame_pixels, max_queue=args.max_queue,
                          max_queue_mb=args.max_queue_mb, curve=args.curve)
    from .cpu_runtime import configure

    # Before the compute thread imports torch and before any thread allocates (see worker.cpu_runtime).
    logging.getLogger("erdn.worker").info("process settings: %s", configure())
    try:
        return Server(config).serve()
    except EndpointInUse as e:
        print(f"erdn worker: {e}", file=sys.stderr)
        return 3
    except Exception as e:  # zmq bind errors and the like: one line, not a traceback
        print(f"erdn worker: cannot serve {endpoint}: {e}", file=sys.stderr)
        return 1


def _query_main(command: str, argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"erdn worker {command}")
    _endpoint_arg(p)
    p.add_argument("--timeout", type=float, default=3.0)
    args = p.parse_args(argv)
    from erdn_vs.client import WorkerClient, WorkerError, WorkerUnavailable

    try:
        with WorkerClient(args.endpoint, autostart=False, timeout=args.timeout) as client:
            if command == "status":
                print(json.dumps(client.stats(), indent=2, sort_keys=True))
            else:
                client.shutdown()
                print(f"erdn worker at {client.endpoint} is stopping", file=sys.stderr)
    except WorkerUnavailable:  # the client's own advice speaks of deblur()'s autostart, not of this command
        # Only a request raises this (the constructor does not connect), so ``client`` is bound here.
        print(f"erdn worker {command}: no worker answers at {client.endpoint} within {args.timeout:g} s; start one "
              f"with `erdn worker --endpoint {client.endpoint}` (erdn_vs.deblur() starts one itself on first use)",
              file=sys.stderr)
        return 1
    except (WorkerError, ValueError) as e:  # ValueError: an endpoint or keys that cannot be used, said in one line
        print(f"erdn worker {command}: {e}", file=sys.stderr)
        return 1
    return 0


def keys_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="erdn worker keys", description="Create the CurveZMQ server and client key "
                                "pairs (existing ones are kept) and authorize the client key.")
    p.add_argument("--dir", default=None, help="key directory (default: $ERDN_KEYS_DIR, else "
                   "$XDG_CONFIG_HOME/erdn-vs/curve)")
    args = p.parse_args(argv)
    from pathlib import Path

    from erdn_vs.keys import generate_keys

    directory = generate_keys(Path(args.dir) if args.dir else None)
    print(f"CurveZMQ keys in {directory}: server.key (give it to clients), client.key_secret (this user's "
          f"client), authorized/ (client public keys the worker accepts)")
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "keys":
        return keys_main(argv[1:])
    if argv and argv[0] in ("status", "stop"):
        return _query_main(argv[0], argv[1:])
    if argv and argv[0] == "serve":
        argv = argv[1:]
    return serve_main(argv)
