"""The wire protocol: encoding, and validation of every header field (no worker needed)."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from erdn_vs import protocol as P

SPEC = P.SessionSpec(frames=5, width=40, height=32, sample_type="float", weights="/w.safetensors")


def process_message(frames: dict[int, np.ndarray], window=(0, 1, 2, 3, 4), **overrides):
    header = P.request("process", 7, session="abc123", n=2, window=list(window),
                       buffers=[P.frame_descriptor(i, a) for i, a in frames.items()])
    header.update(overrides)
    parts = P.encode(header, list(frames.values()))
    return P.decode_header(parts[0]), [memoryview(p) for p in parts[1:]]


def frame(value=0.5, dtype=np.float32, shape=(3, 32, 40)):
    return np.full(shape, value, dtype=dtype)


def test_round_trip_is_zero_copy_and_exact():
    frames = {i: np.random.default_rng(i).random((3, 32, 40), dtype=np.float32) for i in (0, 3)}
    header, buffers = process_message(frames)
    assert header["v"] == P.PROTOCOL_VERSION and header["op"] == "process"
    req = P.parse_process(header, buffers, SPEC)
    assert req.session == "abc123" and req.n == 2 and req.window == (0, 1, 2, 3, 4)
    for i, a in frames.items():
        np.testing.assert_array_equal(req.frames[i], a)
    # parse_process views the received buffers instead of copying them
    assert np.shares_memory(req.frames[0], np.frombuffer(buffers[0], dtype=np.float32))


def test_session_spec_round_trip_and_defaults():
    spec = P.SessionSpec(3, 64, 48, "half", model="ERDN-lite", tile=(64, 64), overlap=8, precision="fp16")
    assert P.SessionSpec.from_header(json.loads(json.dumps(spec.to_header()))) == spec
    minimal = P.SessionSpec.from_header({"frames": 5, "width": 8, "height": 8, "sample_type": "float",
                                         "weights": "x"})
    assert (minimal.device, minimal.precision, minimal.tile, minimal.overlap) == ("auto", "auto", None, 16)


@pytest.mark.parametrize("change, words", [
    ({"frames": 4}, "'frames'"),
    ({"width": 0}, "'width'"),
    ({"height": 1.5}, "'height'"),
    ({"width": 16384, "height": 16384}, "maximum"),
    ({"sample_type": "int8"}, "'sample_type'"),
    ({"model": "m"}, "exactly one"),
    ({"weights": None}, "exactly one"),
    ({"device": "gpu"}, "device"),
    ({"precision": "fp8"}, "'precision'"),
    ({"tile": [16, 64]}, "'tile'"),
    ({"tile": "64x64"}, "'tile'"),
    ({"overlap": -1}, "'overlap'"),
])
def test_session_spec_rejects(change, words):
    header = {**SPEC.to_header(), **change}
    with pytest.raises(P.ProtocolError) as e:
        P.SessionSpec.from_header(header)
    assert e.value.code == P.BAD_REQUEST and words in e.value.message


@pytest.mark.parametrize("header, code", [
    ({"v": 1, "op": "ping"}, P.BAD_REQUEST),  # no id
    ({"v": 1, "op": "ping", "id": -1}, P.BAD_REQUEST),
    ({"v": 1, "op": "ping", "id": True}, P.BAD_REQUEST),
    ({"v": 99, "op": "open_session", "id": 1}, P.VERSION_MISMATCH),  # ping, stats, shutdown: any version
    ({"v": "1", "op": "shutdown", "id": 1}, P.VERSION_MISMATCH),
    ({"v": 1, "op": "explode", "id": 1}, P.BAD_REQUEST),
])
def test_request_header_rejects(header, code):
    with pytest.raises(P.ProtocolError) as e:
        P.check_request_header(header)
    assert e.value.code == code


@pytest.mark.parametrize("op", P.ANY_VERSION_OPS)
def test_stop_status_and_ping_are_understood_in_any_version(op):
    assert P.check_request_header({"v": 99, "op": op, "id": 1}) == (op, 1)


def test_version_mismatch_says_what_to_do():
    with pytest.raises(P.ProtocolError, match="erdn worker stop"):
        P.check_request_header({"v": 0, "op": "open_session", "id": 1})


@pytest.mark.parametrize("mutate, words", [
    (lambda h, b: (h, b[:1]), "describes 2 buffers"),
    (lambda h, b: (h, [b[0], memoryview(bytes(10))]), "has 10 bytes"),
    (lambda h, b: ({**h, "window": [0, 1, 2]}, b), "'window'"),
    (lambda h, b: ({**h, "window": [0, 1, 2, 3, -4]}, b), "'window'"),
    (lambda h, b: ({**h, "n": "2"}, b), "'n'"),
    (lambda h, b: ({**h, "session": "../x"}, b), "'session'"),
    (lambda h, b: ({**h, "buffers": [{**h["buffers"][0], "index": 9}, h["buffers"][1]]}, b), "not in the window"),
    (lambda h, b: ({**h, "buffers": [h["buffers"][0], h["buffers"][0]]}, b), "sent twice"),
    (lambda h, b: ({**h, "buffers": [{**h["buffers"][0], "dtype": "float16"}, h["buffers"][1]]}, b), "takes float32"),
    (lambda h, b: ({**h, "buffers": [{**h["buffers"][0], "shape": [3, 40, 32]}, h["buffers"][1]]}, b), "takes float32"),
    (lambda h, b: ({**h, "buffers": ["x", h["buffers"][1]]}, b), "must be an object"),
])
def test_process_rejects(mutate, words):
    header, buffers = process_message({0: frame(), 1: frame()})
    header, buffers = mutate(header, buffers)
    with pytest.raises(P.ProtocolError) as e:
        P.parse_process(header, buffers, SPEC)
    assert e.value.code == P.BAD_REQUEST and words in e.value.message


def test_half_session_takes_float16():
    spec = P.SessionSpec(3, 40, 32, "half", weights="w")
    header, buffers = process_message({1: frame(0.25, np.float16)}, window=(0, 1, 2))
    req = P.parse_process(header, buffers, spec)
    assert req.frames[1].dtype == np.float16 and float(req.frames[1][0, 0, 0]) == 0.25


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"not json", b"[1, 2]", b"x" * (P.MAX_HEADER_BYTES + 1)])
def test_decode_header_rejects_garbage(raw):
    with pytest.raises(P.ProtocolError) as e:
        P.decode_header(raw)
    assert e.value.code == P.BAD_REQUEST


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
header_keys = st.sampled_from(["v", "op", "id", "frames", "width", "height", "sample_type", "model", "weights",
                               "device", "precision", "tile", "overlap", "session", "n", "window", "buffers"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(header_keys, json_values, max_size=12))
def test_arbitrary_headers_only_raise_protocol_errors(header):
    """Whatever a peer sends, validation ends in a ProtocolError (an error reply), never a crash."""
    for check in (P.check_request_header, P.SessionSpec.from_header,
                  lambda h: P.parse_process(h, [], SPEC)):
        try:
            check(header)
        except P.ProtocolError as e:
            assert e.code in P.ERROR_CODES and e.message


def test_default_endpoint_is_private(isolated_runtime_dir):
    endpoint = P.default_endpoint()
    path = P.ipc_path(endpoint)
    assert endpoint.startswith("ipc://") and path.name == "worker.sock"
    mode = stat.S_IMODE(os.stat(path.parent).st_mode)
    assert mode == 0o700 and os.stat(path.parent).st_uid == os.getuid()


def test_default_endpoint_env_override(monkeypatch):
    monkeypatch.setenv(P.ENDPOINT_ENV, "tcp://127.0.0.1:5599")
    assert P.default_endpoint() == "tcp://127.0.0.1:5599"


@pytest.mark.parametrize("bad", ["", "http://x", "ipc://", "tcp://localhost", "ipc://" + "x" * 120,
                                 "tcp://0.0.0.0:5555", "tcp://192.168.1.2:5555", "tcp://127.0.0.1:http"])
def test_check_endpoint_rejects(bad):
    with pytest.raises(ValueError, match="endpoint"):
        P.check_endpoint(bad)


@pytest.mark.parametrize("field", ["sample_type", "precision", "frames"])
def test_unhashable_choice_is_a_protocol_error(field):
    with pytest.raises(P.ProtocolError):
        P.SessionSpec.from_header({**SPEC.to_header(), field: ["half"]})
