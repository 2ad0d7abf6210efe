"""Fuzz a running worker with malformed messages (hypothesis) beside a well-behaved client.

tests/test_reliability.py runs about a thousand messages; as a script it runs as many as asked:

    cd /work/main && PYTHONPATH=.:tests .venv/bin/python tests/stress/fuzz.py --count 10000

Every message must get an error reply (ok only for harmless ops such as ping), never an
``internal`` one; the worker must stay alive, the concurrent client's frames must stay
bit-identical to an undisturbed render, and the worker's RSS must stay bounded.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from erdn_vs import protocol as P
from erdn_vs.client import WorkerClient

FUZZ_W, FUZZ_H = 16, 16  # the fuzzer's own session: small, so the rare valid request is cheap
GOOD_W, GOOD_H, GOOD_LENGTH = 64, 48, 6
IN_FLIGHT = 8  # messages sent before their replies are collected (the worker batches process requests)
REPLY_TIMEOUT_S = 30.0

# Kinds whose every message must be refused (an ok reply would mean bad input was accepted).
MUST_FAIL = {"truncated", "unknown_op", "bad_version", "no_session", "bad_buffers", "nonfinite", "huge_dims",
             "too_many_parts", "bad_id", "pickle", "not_object"}

json_scalar = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
               | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12))
json_value = st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=8)
FIELDS = ["frames", "width", "height", "sample_type", "model", "weights", "device", "precision", "tile", "overlap",
          "session", "n", "window", "buffers"]
SAFE_OPS = [op for op in P.OPS if op != "shutdown"]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _dumps(header: object) -> bytes:
    return json.dumps(header).encode()


def _process_header(session: str, window: list, descs: list) -> dict:
    return P.request("process", 1, session=session, n=0, window=window, buffers=descs)


def messages(fuzz_session: str, weights: str) -> st.SearchStrategy:
    """(kind, parts) pairs: each kind is one way a peer can get a message wrong."""
    frame_bytes = 3 * FUZZ_H * FUZZ_W * 4
    desc = {"shape": [3, FUZZ_H, FUZZ_W], "dtype": "float32"}
    window = st.lists(st.integers(0, 7), min_size=5, max_size=5)
    valid_headers = st.sampled_from([
        P.request("ping", 1), P.request("stats", 2), P.request("close_session", 3, session=fuzz_session),
        P.request("open_session", 4, **P.SessionSpec(5, FUZZ_W, FUZZ_H, "float", weights=weights).to_header()),
        _process_header(fuzz_session, [0, 1, 2, 3, 4], [{"index": 0, **desc}]),
    ]).map(_dumps)

    def truncated(raw: bytes) -> st.SearchStrategy:
        return st.integers(0, len(raw) - 1).map(lambda k: ("truncated", [raw[:k] or b" "]))

    @st.composite
    def wrong_types(draw):
        fields = draw(st.dictionaries(st.sampled_from(FIELDS), json_value, min_size=1, max_size=6))
        op = draw(st.sampled_from(SAFE_OPS))
        return "wrong_types", [_dumps({**fields, "v": P.PROTOCOL_VERSION, "id": draw(st.integers(0, 2**31)), "op": op})]

    @st.composite
    def bad_buffers(draw):
        w = draw(window)
        count = draw(st.integers(1, 5))
        indices = draw(st.lists(st.sampled_from(w), min_size=count, max_size=count, unique=True))
        bad = draw(st.integers(0, count - 1))
        descs, parts = [], []
        for k, i in enumerate(indices):
            d = {"index": i, **desc}
            size = frame_bytes
            if k == bad:  # at least one buffer is wrong: its size, or its descriptor
                how = draw(st.sampled_from(["short", "long", "empty", "shape", "dtype", "index"]))
                if how in ("short", "long", "empty"):
                    size = {"short": frame_bytes - draw(st.integers(1, frame_bytes)),
                            "long": frame_bytes + draw(st.integers(1, 4096)), "empty": 0}[how]
                elif how == "shape":
                    d["shape"] = draw(st.lists(st.integers(-1, 2**33), min_size=0, max_size=4))
                elif how == "dtype":
                    d["dtype"] = draw(st.sampled_from(["float16", "float64", "uint8", "", "f4"]))
                else:
                    d["index"] = draw(st.integers(8, 2**41) | st.integers(-(2**41), -1))
            descs.append(d)
            parts.append(bytes(max(size, 0)))
        return "bad_buffers", [_dumps(_process_header(fuzz_session, w, descs)), *parts]

    @st.composite
    def nonfinite(draw):
        w = draw(window)
        a = np.zeros((3, FUZZ_H, FUZZ_W), np.float32)
        a.flat[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
        return "nonfinite", [_dumps(_process_header(fuzz_session, w, [{"index": w[0], **desc}])), a.tobytes()]

    @st.composite
    def huge_dims(draw):
        spec = P.SessionSpec(5, 8, 8, "float", weights=weights).to_header()
        spec["width"], spec["height"] = draw(st.integers(1025, 2**40)), draw(st.integers(1025, 2**40))
        return "huge_dims", [_dumps(P.request("open_session", 1, **spec))]

    @st.composite
    def too_many_parts(draw):
        k = draw(st.integers(P.MAX_BUFFERS + 1, 64))
        head = _process_header(fuzz_session, [0, 1, 2, 3, 4], [{"index": i % 5, **desc} for i in range(k)])
        return "too_many_parts", [_dumps(head), *[bytes(draw(st.integers(0, 64))) for _ in range(k)]]

    return st.one_of(
        st.lists(st.binary(max_size=256), min_size=1, max_size=4).map(lambda parts: ("garbage", parts)),
        valid_headers.flatmap(truncated),
        wrong_types(),
        st.builds(lambda op: ("unknown_op", [_dumps(P.request(op, 1))]),
                  json_value.filter(lambda o: not isinstance(o, str) or o not in P.OPS)),
        # ping, stats and shutdown are answered in any integer version (P.ANY_VERSION_OPS, so that a newer client
        # can stop an older worker): a bad version must fail for every other op, and a non-integer one for all.
        st.builds(lambda v, op: ("bad_version", [_dumps({"v": v, "op": op, "id": 1})]),
                  json_value.filter(lambda v: v != P.PROTOCOL_VERSION),
                  st.sampled_from(sorted(set(P.OPS) - set(P.ANY_VERSION_OPS)))),
        st.builds(lambda v: ("bad_version", [_dumps({"v": v, "op": "ping", "id": 1})]),
                  json_value.filter(lambda v: type(v) is not int)),
        st.builds(lambda v: ("bad_id", [_dumps({"v": P.PROTOCOL_VERSION, "op": "ping", "id": v})]),
                  json_value.filter(lambda v: type(v) is not int or not 0 <= v < 2**63)),
        st.builds(lambda sid, w: ("no_session", [_dumps(_process_header(sid, w, []))]),
                  st.text("0123456789abcdef", min_size=1, max_size=64).filter(lambda s: s != fuzz_session), window),
        bad_buffers(),
        nonfinite(),
        huge_dims(),
        too_many_parts(),
        json_value.filter(lambda o: not isinstance(o, dict)).map(lambda o: ("not_object", [_dumps(o)])),
        st.builds(lambda o: ("pickle", [pickle.dumps(o)]), json_value),
    )


@dataclass
class FuzzReport:
    sent: int = 0
    kinds: Counter = field(default_factory=Counter)
    replies: Counter = field(default_factory=Counter)  # status or error code
    failures: list = field(default_factory=list)  # (kind, first part, reply or reason)
    rss_kib: list = field(default_factory=list)  # worker RSS samples
    seconds: float = 0.0


class GoodClient(threading.Thread):
    """Renders a small clip again and again; every frame must equal the first, undisturbed render bit for bit."""

    def __init__(self, endpoint: str, weights: str) -> None:
        super().__init__(daemon=True, name="good-client")
        rng = np.random.default_rng(123)
        self.planes = {i: rng.random((3, GOOD_H, GOOD_W), dtype=np.float32) for i in range(GOOD_LENGTH)}
        self.windows = [tuple(min(max(n + d, 0), GOOD_LENGTH - 1) for d in range(-2, 3)) for n in range(GOOD_LENGTH)]
        self.client = WorkerClient(endpoint, autostart=False, timeout=REPLY_TIMEOUT_S)
        self.weights = weights
        self.expected = self._render_once()
        self.stop = threading.Event()
        self.frames = 0
        self.mismatches = 0
        self.errors: list[str] = []

    def _render_once(self) -> list[np.ndarray]:
        with self.client.open_session(frames=5, width=GOOD_W, height=GOOD_H, sample_type="float",
                                      weights=self.weights) as session:
            return [session.process(n, w, self.planes) for n, w in enumerate(self.windows)]

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                for want, got in zip(self.expected, self._render_once(), strict=True):
                    self.frames += 1
                    self.mismatches += not np.array_equal(want, got)
        except Exception as e:  # reported by the caller
            self.errors.append(f"{type(e).__name__}: {e}")
        finally:
            self.client.close()


def _check(kind: str, parts: list[bytes], reply: dict | None, report: FuzzReport) -> None:
    report.kinds[kind] += 1
    if reply is None:
        report.replies["no reply"] += 1
        report.failures.append((kind, parts[0][:120], "no reply"))
        return
    status = reply.get("status")
    report.replies[reply.get("code") or status] += 1
    if status == "error":
        if reply.get("code") not in P.ERROR_CODES or reply.get("code") == P.INTERNAL or not reply.get("message"):
            report.failures.append((kind, parts[0][:120], reply))
    elif status not in ("ok", "need_frames") or kind in MUST_FAIL:
        report.failures.append((kind, parts[0][:120], reply))


def run_fuzz(endpoint: str, worker_pid: int, weights: str, count: int, seed: int = 0) -> FuzzReport:
    """Send ``count`` generated messages (IN_FLIGHT at a time, each on its own socket) and check every reply."""
    report = FuzzReport()
    ctx = zmq.Context.instance()
    with WorkerClient(endpoint, autostart=False, timeout=REPLY_TIMEOUT_S) as client:
        fuzz_session = client.open_session(frames=5, width=FUZZ_W, height=FUZZ_H, sample_type="float",
                                           weights=weights)
        pending: list[tuple[str, list[bytes]]] = []
        socks = []
        for _ in range(IN_FLIGHT):
            s = ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(endpoint)
            socks.append(s)

        def flush() -> None:
            for sock, (_, parts) in zip(socks, pending, strict=False):
                sock.send_multipart(parts)
            for sock, (kind, parts) in zip(socks, pending, strict=False):
                reply = None
                if sock.poll(int(REPLY_TIMEOUT_S * 1000)):
                    try:
                        reply = json.loads(sock.recv_multipart()[0])
                    except ValueError:
                        reply = {"status": "unparseable"}
                _check(kind, parts, reply, report)
                if reply and reply.get("status") == "ok" and "session" in reply and "frames_served" in reply:
                    sock.send_multipart([_dumps(P.request("close_session", 1, session=reply["session"]))])
                    sock.poll(int(REPLY_TIMEOUT_S * 1000)) and sock.recv_multipart()
            report.sent += len(pending)
            pending.clear()
            if report.sent % 256 < IN_FLIGHT:
                report.rss_kib.append(rss_kib(worker_pid))

        @hypothesis_seed(seed)
        @settings(max_examples=count, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))
        @given(messages(fuzz_session.id, weights))
        def one(message):
            pending.append(message)
            if len(pending) == IN_FLIGHT:
                flush()

        t0 = time.monotonic()
        one()
        flush()
        report.seconds = time.monotonic() - t0
        report.rss_kib.append(rss_kib(worker_pid))
        for s in socks:
            s.close()
        fuzz_session.close()
    return report


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import tempfile

    import torch
    from conftest import spawn_worker, stop_worker

    from worker.model import build_model, save_model

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--count", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="erdn-fz-", dir="/tmp") as tmp:
        import os

        os.environ["XDG_RUNTIME_DIR"] = tmp
        torch.manual_seed(0)
        weights = str(save_model(build_model("tiny", frames=5), Path(tmp) / "tiny5.safetensors"))
        endpoint = f"ipc://{tmp}/fuzz.sock"
        proc = spawn_worker(endpoint, "--cache-mb", "64", "--max-frame-pixels", str(1 << 20), "--idle-timeout", "0",
                            log=Path(tmp) / "worker.log")
        try:
            good = GoodClient(endpoint, weights)
            good.start()
            report = run_fuzz(endpoint, proc.pid, weights, args.count, args.seed)
            good.stop.set()
            good.join(120)
            alive = proc.poll() is None
        finally:
            stop_worker(proc)
    print(json.dumps({
        "sent": report.sent, "seconds": round(report.seconds, 1), "kinds": dict(report.kinds),
        "replies": dict(report.replies), "failures": [repr(f) for f in report.failures[:20]],
        "failure_count": len(report.failures), "worker_alive": alive,
        "rss_mib_first_last_max": [round(report.rss_kib[0] / 1024, 1), round(report.rss_kib[-1] / 1024, 1),
                                   round(max(report.rss_kib) / 1024, 1)],
        "good_client_frames": good.frames, "good_client_mismatches": good.mismatches,
        "good_client_errors": good.errors,
    }, indent=2))
    ok = (not report.failures and alive and good.frames > 0 and not good.mismatches and not good.errors
          and report.sent >= args.count)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
