"""The demo end to end (the README's first command), on a small sample so it fits CI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from training.demo import make_sample


def test_sample_is_deterministic_and_blurry():
    b1, s1 = make_sample(64, 48, 4, seed=3)
    b2, s2 = make_sample(64, 48, 4, seed=3)
    np.testing.assert_array_equal(b1, b2)
    np.testing.assert_array_equal(s1, s2)
    assert b1.shape == s1.shape == (4, 48, 64, 3)
    # blur removes high frequencies: the blurry frames have less gradient energy than the sharp ones
    grad = lambda x: np.abs(np.diff(x.astype(np.float32), axis=2)).mean()  # noqa: E731
    assert grad(b1) < grad(s1)


@pytest.mark.slow
def test_demo_end_to_end_with_the_shipped_model(tmp_path, worker_endpoint):
    """The README's first command, on a smaller sample: the default (shipped) model, the real path."""
    out = tmp_path / "demo_out"
    r = subprocess.run(
        [sys.executable, "-m", "erdn_vs.cli", "demo", "--out", str(out), "--size", "64x48", "--frames", "6",
         "--endpoint", worker_endpoint],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr
    for name in ("restored.mkv", "restored.mp4", "comparison.png", "report.md", "report.json", "sample_blurry.mkv"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["frames"] == 6 and report["size"] == "64x48"
    assert report["model"].startswith("erdn-lite-synth")  # the manifest's default, named in the report
    for key in ("blurry", "restored"):
        assert 0 < report[key]["psnr"] < 100 and 0 < report[key]["ssim"] <= 1
    assert report["frames_per_second"] > 0
    png = Image.open(out / "comparison.png")
    assert png.width >= 3 * 64 and png.height > 48
    assert "wrote" in r.stderr and str(out / "report.md") in r.stderr
