"""The deblur graph in-process, with a recording stand-in for the worker client (unit test).

The real worker and vspipe are exercised in tests/test_vspipe.py; here a fake session records
exactly which windows and which frames the filter sends, which a random model cannot reveal.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import vapoursynth as vs

import erdn_vs.client
import erdn_vs.filter
from erdn_vs import formats
from erdn_vs.filter import deblur

sys.path.insert(0, str(Path(__file__).resolve().parent / "vpy"))
import vpy_clips  # noqa: E402

core = vs.core


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.opened: list[dict] = []
        self.calls: dict[int, tuple[tuple[int, ...], dict[int, np.ndarray]]] = {}
        self.closed = 0
        self.fail_with: Exception | None = None
        self.attempts = 0
        self.delay = 0.0
        self.overlap = 0  # hold requests until this many have been in flight together (once)
        self.in_flight = self.max_in_flight = 0


@pytest.fixture
def recorder(monkeypatch):
    rec = Recorder()

    class FakeSession:
        def process(self, n, window, planes):
            with rec.lock:
                rec.calls[n] = (tuple(window), {k: v.copy() for k, v in planes.items()})
                rec.in_flight += 1
                rec.max_in_flight = max(rec.max_in_flight, rec.in_flight)
                rec.lock.notify_all()
                # However slowly a loaded machine schedules the other requests: they are waited for, not raced.
                rec.lock.wait_for(lambda: rec.max_in_flight >= rec.overlap, timeout=60)
            time.sleep(rec.delay)
            with rec.lock:
                rec.in_flight -= 1
            return planes[window[len(window) // 2]].astype(np.float32)  # identity on the centre frame

        def close(self):
            rec.closed += 1

    class FakeClient:
        def __init__(self, endpoint=None, *, autostart=True, timeout=30.0, worker_args=None):
            rec.client_args = {"endpoint": endpoint, "autostart": autostart, "timeout": timeout}

        def open_session(self, **kwargs):
            rec.attempts += 1
            if rec.fail_with is not None:
                raise rec.fail_with
            rec.opened.append(kwargs)
            return FakeSession()

        def close(self):
            pass

    monkeypatch.setattr(erdn_vs.client, "WorkerClient", FakeClient)
    return rec


@pytest.fixture
def weights(tmp_path) -> str:
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"x")
    return str(path)


def rgb_frames(src: vs.VideoNode) -> list[np.ndarray]:
    rgb = formats.to_rgb(src, formats.colour_of(src))
    return [formats.frame_to_array(rgb.get_frame(i)) for i in range(src.num_frames)]


@pytest.mark.parametrize(("frames", "cut", "scene_change", "expected"), [
    (5, 4, True, {0: (0, 0, 0, 1, 2), 3: (1, 2, 3, 4, 4), 4: (2, 3, 4, 4, 4), 5: (5, 5, 5, 6, 7),
                  8: (6, 7, 8, 9, 9), 9: (7, 8, 9, 9, 9)}),
    (5, 4, False, {0: (0, 0, 0, 1, 2), 4: (2, 3, 4, 5, 6), 5: (3, 4, 5, 6, 7), 9: (7, 8, 9, 9, 9)}),
    (3, 4, True, {0: (0, 0, 1), 4: (3, 4, 4), 5: (5, 5, 6), 9: (8, 9, 9)}),
])
@pytest.mark.parametrize("batch", [1, 3])
def test_windows_and_frames_sent(recorder, weights, frames, cut, scene_change, expected, batch):
    src = vpy_clips.pattern_clip(vs.RGB24, 10, 32, 24, cut)
    out = deblur(src, weights=weights, frames=frames, scene_change=scene_change, endpoint="ipc:///x/y.sock",
                 tile=(64, 32), precision="fp32", batch=batch)
    assert out.num_frames == 10 and out.fps == src.fps
    for n in range(out.num_frames):
        out.get_frame(n)
    assert len(recorder.opened) == 1  # one session per clip, opened on first use
    opened = recorder.opened[0]
    assert opened == {"frames": frames, "width": 32, "height": 24, "sample_type": "half", "model": None,
                      "weights": str(Path(weights).resolve()), "device": "auto", "precision": "fp32",
                      "tile": (64, 32), "overlap": 16}
    assert recorder.client_args == {"endpoint": "ipc:///x/y.sock", "autostart": True, "timeout": 60.0}
    assert sorted(recorder.calls) == list(range(10))
    for n, window in expected.items():
        assert recorder.calls[n][0] == window
    truth = rgb_frames(src)
    for window, planes in recorder.calls.values():
        assert set(planes) == set(window)
        for k, plane in planes.items():
            assert plane.dtype == np.float16 and plane.shape == (3, 24, 32)
            np.testing.assert_array_equal(plane, truth[k])  # frame k really is source frame k


def test_the_window_follows_the_model_when_frames_is_left_out(recorder, tmp_path):
    import torch

    from erdn_vs.manifest import load_manifest
    from worker.model import build_model, save_model

    torch.manual_seed(0)
    three = save_model(build_model("tiny", frames=3), tmp_path / "three.safetensors")
    src = vpy_clips.pattern_clip(vs.RGB24, 4, 32, 24)
    out = deblur(src, weights=str(three), endpoint="ipc:///x/y.sock")
    for n in range(out.num_frames):
        out.get_frame(n)
    assert recorder.opened[-1]["frames"] == 3
    assert {len(window) for window, _ in recorder.calls.values()} == {3}

    shipped = load_manifest().models[0]  # no model and no weights: the default model, at its own window
    deblur(src, endpoint="ipc:///x/y.sock").get_frame(0)
    assert (recorder.opened[-1]["model"], recorder.opened[-1]["frames"]) == (shipped.name, shipped.frames)


@pytest.mark.parametrize("fmt", [vs.YUV420P8, vs.YUV420P10, vs.YUV444P16, vs.RGB24, vs.RGBS, vs.YUV422PH],
                         ids=lambda f: f.name)
def test_identity_session_round_trips_format_and_props(recorder, weights, fmt):
    src = vpy_clips.pattern_clip(fmt, 3, 32, 24, 1)
    out = deblur(src, weights=weights)
    assert (out.format.id, out.width, out.height, out.num_frames, out.fps) == (fmt, 32, 24, 3, src.fps)
    # What an identity model must give: to RGB, clamped to [0, 1], back (the pattern's YUV is partly
    # outside the RGB gamut, so the clamp matters).
    colour = formats.colour_of(src)
    rgbs = core.resize.Point(formats.to_rgb(src, colour), format=vs.RGBS)
    expected = formats.from_rgb(core.std.Expr(rgbs, "x 0 max 1 min"), src, colour)
    for n in range(3):
        got, want = out.get_frame(n), src.get_frame(n)
        assert dict(got.props) == dict(want.props)
        for p in range(3):
            np.testing.assert_array_equal(np.asarray(got[p]), np.asarray(expected.get_frame(n)[p]))
    deep = src.format.bits_per_sample > 10 and src.format.bits_per_sample != 16 or fmt == vs.YUV444P16
    assert recorder.opened[0]["sample_type"] == ("float" if deep else "half")


@pytest.mark.parametrize("batch", [1, 2])
def test_batch_requests_in_flight(recorder, weights, batch):
    if core.num_threads < batch:
        pytest.skip(f"VapourSynth has {core.num_threads} thread(s)")
    recorder.overlap, recorder.delay = batch, 0.2  # then 0.2 s more, so that a request beyond batch would show
    out = deblur(vpy_clips.pattern_clip(vs.YUV420P8, 6, 32, 24), weights=weights, batch=batch)
    for future in [out.get_frame_async(n) for n in range(6)]:
        future.result()
    assert recorder.max_in_flight == batch
    assert sorted(recorder.calls) == list(range(6))


def test_session_closes_when_the_clip_goes_away(recorder, weights):
    src = vpy_clips.pattern_clip(vs.YUV420P8, 3, 32, 24)
    out = deblur(src, weights=weights)
    out.get_frame(0)
    assert recorder.closed == 0
    del out
    gc.collect()
    assert recorder.closed == 1


def test_worker_errors_become_one_vapoursynth_error(recorder, weights, monkeypatch):
    recorder.fail_with = erdn_vs.client.WorkerUnavailable(
        "erdn worker at ipc:///x/y.sock did not answer. Start it with `erdn worker --endpoint ipc:///x/y.sock`")
    out = deblur(vpy_clips.pattern_clip(vs.YUV420P8, 3, 32, 24), weights=weights, autostart=False)
    with pytest.raises(vs.Error) as e:
        out.get_frame(1)
    # VapourSynth puts its own traceback before a callback's error; the error itself is one line.
    last = str(e.value).strip().splitlines()[-1]
    assert last.startswith("vapoursynth.Error: erdn_vs.deblur: frame 1: erdn worker at ipc:///x/y.sock")
    assert "`erdn worker --endpoint ipc:///x/y.sock`" in last
    # Requests right after the failure get the same error at once instead of waiting again ...
    with pytest.raises(vs.Error, match="erdn_vs.deblur: frame 2: erdn worker at ipc:///x/y.sock"):
        out.get_frame(2)
    assert recorder.attempts == 1
    # ... later ones try again (e.g. after the user started the worker).
    monkeypatch.setattr(erdn_vs.filter, "RETRY_AFTER_S", 0.0)
    recorder.fail_with = None
    out.get_frame(2)
    assert recorder.attempts == 2 and len(recorder.opened) == 1


@pytest.mark.parametrize("field_based", [1, 2])
def test_an_interlaced_clip_is_refused_with_what_to_do(recorder, weights, field_based):
    src = core.std.SetFieldBased(vpy_clips.pattern_clip(vs.YUV420P8, 3, 32, 24), field_based)
    with pytest.raises(vs.Error) as e:
        deblur(src, weights=weights)
    message = str(e.value)
    assert message.startswith("erdn_vs.deblur: clip is interlaced") and "\n" not in message
    assert f"_FieldBased={field_based}" in message
    assert "QTGMC" in message and "std.SetFieldBased(clip, 0)" in message  # deinterlace, or clear a wrong tag
    assert recorder.attempts == 0


def test_an_interlaced_frame_later_in_the_clip_is_refused(recorder, weights):
    """Frames 0-4 progressive, 5-7 field-based (mixed broadcast material): requests that need them fail."""
    src = vpy_clips.pattern_clip(vs.YUV420P8, 8, 32, 24)
    src = src[:5] + core.std.SetFieldBased(src[5:], 2)
    out = deblur(src, weights=weights)
    out.get_frame(0)
    with pytest.raises(vs.Error) as e:
        out.get_frame(7)
    last = str(e.value).strip().splitlines()[-1]
    assert "erdn_vs.deblur: frame 7: source frame 5 is interlaced (_FieldBased=2" in last, last
    assert "QTGMC" in last


def test_a_progressive_tag_goes_through(recorder, weights):
    src = core.std.SetFieldBased(vpy_clips.pattern_clip(vs.YUV420P8, 3, 32, 24), 0)
    out = deblur(src, weights=weights)
    out.get_frame(1)
    assert recorder.attempts == 1
