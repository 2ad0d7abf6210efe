"""The previewer users actually use: the real vspreview (PyPI) opens a deblur script on a CPU worker, headless.

It shows frame 0, seeks to a later frame, reloads the script and takes a screenshot
(tests/vspreview_driver.py). Every frame it showed must be the frame vspipe renders from the same
script, and the reload must cost the worker no stage evaluation: the warm-across-reloads promise
is about this client. Under Xvfb when it is installed (``make`` installs it as root), else on Qt's
``offscreen`` platform; vspreview's Qt needs PulseAudio's client library (Debian: libpulse0) either way.
"""

from __future__ import annotations

import ctypes.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import new_endpoint, spawn_worker, stop_worker, worker_env
from test_vspipe import sensitive_tiny, split_frames

from training.data.images import read_rgb

REPO = Path(__file__).resolve().parent.parent
VPY = REPO / "tests" / "vpy"
DRIVER = REPO / "tests" / "vspreview_driver.py"
VSPIPE = Path(sys.executable).parent / "vspipe"
W, H, LENGTH, SEEK_TO = 96, 64, 8, 5

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def display() -> Iterator[dict[str, str]]:
    """Environment for a Qt program without a screen: a private Xvfb display, or the offscreen platform."""
    if ctypes.util.find_library("pulse") is None:
        pytest.fail("vspreview's Qt (QtMultimedia) needs libpulse.so.0: apt-get install libpulse0 (make does this)")
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        yield {"QT_QPA_PLATFORM": "offscreen"}
        return
    read_end, write_end = os.pipe()
    proc = subprocess.Popen([xvfb, "-displayfd", str(write_end), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        number = f.readline().strip()  # Xvfb writes the display number it took once it accepts clients
    if not number:
        proc.kill()
        pytest.fail(f"Xvfb ({xvfb}) did not start")
    try:
        yield {"DISPLAY": f":{number}", "QT_QPA_PLATFORM": "xcb"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def worker(isolated_runtime_dir) -> Iterator[str]:
    endpoint = new_endpoint(isolated_runtime_dir, "vspreview")
    proc = spawn_worker(endpoint, "--idle-timeout", "600", "--device", "cpu")
    yield endpoint
    stop_worker(proc)


def script_args(weights: Path, endpoint: str) -> list[str]:
    """``key=value`` arguments of tests/vpy/deblur_pattern.vpy: an RGB24 clip, shown as it is (no conversion)."""
    return [f"weights={weights}", f"endpoint={endpoint}", "fmt=RGB24", f"length={LENGTH}", f"width={W}",
            f"height={H}", "autostart=0"]


def test_vspreview_shows_what_vspipe_renders_and_reloads_warm(tmp_path: Path, display, worker) -> None:
    weights = sensitive_tiny(17, tmp_path / "tiny5.safetensors")
    # vspreview keeps its settings beside the script and under ~/.config: both go to tmp_path.
    for name in ("deblur_pattern.vpy", "vpy_clips.py"):
        shutil.copy(VPY / name, tmp_path / name)
    env = worker_env() | display | {"HOME": str(tmp_path / "home")}
    out = tmp_path / "shown"
    run = subprocess.run([sys.executable, str(DRIVER), str(out), str(SEEK_TO), str(tmp_path / "deblur_pattern.vpy"),
                          *script_args(weights, worker)], env=env, capture_output=True, text=True, timeout=600)
    record = json.loads((out / "steps.json").read_text()) if (out / "steps.json").exists() else {}
    assert run.returncode == 0 and not record.get("error"), (record.get("error"), run.stderr[-3000:])
    assert "erdn-test: torch in sys.modules: False" in run.stderr  # vspreview's process never imports torch
    assert "torch import attempted" not in run.stderr
    print(f"vspreview on Qt platform {record['platform']!r}")
    assert record["platform"] == display["QT_QPA_PLATFORM"]

    steps = {s["step"]: s for s in record["steps"]}
    assert [steps[k]["frame"] for k in ("open", "seek", "reload")] == [0, SEEK_TO, SEEK_TO]

    # What vspipe renders from the same script, on the same worker.
    rendered = subprocess.run([str(VSPIPE), *(a for arg in script_args(weights, worker) for a in ("-a", arg)),
                               str(tmp_path / "deblur_pattern.vpy"), "-"],
                              env=worker_env(), capture_output=True, timeout=300)
    assert rendered.returncode == 0, rendered.stderr.decode(errors="replace")[-2000:]
    frames = [np.stack(planes, axis=-1) for planes in split_frames(rendered.stdout, _rgb24(), W, H)]
    assert len(frames) == LENGTH
    for step in steps.values():
        image = read_rgb(out / step["image"])
        assert image.shape == (H, W, 3)
        assert np.array_equal(image, frames[step["frame"]]), f"{step['step']}: shown frame differs from vspipe's"
    assert not np.array_equal(frames[0], frames[SEEK_TO])  # the seek shows another picture

    # Warm across reloads: the reloaded script opens a new session and gets frame SEEK_TO again,
    # with no stage evaluated (the worker keeps what it computed by frame content).
    seek, reload = steps["seek"]["stats"], steps["reload"]["stats"]
    assert steps["open"]["stats"]["stage1_evals"] > 0
    assert reload["frames_served"] > seek["frames_served"]
    assert (reload["stage1_evals"], reload["stage2_evals"]) == (seek["stage1_evals"], seek["stage2_evals"])
    assert reload["pid"] == steps["open"]["stats"]["pid"]

    screenshot = read_rgb(out / "screenshot.png")
    assert screenshot.shape[0] > H and screenshot.shape[1] > W  # the whole window, not only the frame


def _rgb24() -> int:
    import vapoursynth as vs

    return vs.RGB24
