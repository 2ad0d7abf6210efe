"""``erdn eval`` and its metrics: the official script's PSNR/SSIM, windows and border option."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from training.data.images import read_rgb, write_rgb
from training.evaluate import main, official_windows
from training.metrics import psnr, ssim
from worker.model import build_model, save_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_identical_images_score_inf_and_one() -> None:
    img = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    assert psnr(img, img) == math.inf
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-12)


def test_known_pair_by_hand() -> None:
    a = np.zeros((24, 24, 3), np.uint8)
    b = a + 2
    # MSE 4 -> 20 log10(255 / 2); SSIM of two flat images: (C1) / (mu2^2 + C1), C1 = (0.01 * 255)^2
    assert psnr(a, b) == pytest.approx(20 * math.log10(255 / 2))
    c1 = (0.01 * 255) ** 2
    assert ssim(a, b) == pytest.approx(c1 / (4 + c1))


def test_ssim_refuses_images_smaller_than_its_window() -> None:
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((16, 16, 3), np.uint8), np.zeros((16, 16, 3), np.uint8))


def test_border_is_ignored() -> None:
    a = np.full((20, 20, 3), 100, np.uint8)
    b = a.copy()
    b[:4] = 0
    b[:, -4:] = 255
    assert psnr(a, b) == math.inf and psnr(a, b, border=0) < 20


def test_ssim_matches_an_independent_implementation() -> None:
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
    b = np.clip(a + rng.normal(0, 25, a.shape), 0, 255).astype(np.uint8)
    ref = metrics.structural_similarity(
        a[4:-4, 4:-4], b[4:-4, 4:-4], channel_axis=2, gaussian_weights=True, sigma=1.5,
        use_sample_covariance=False, data_range=255,
    )  # fmt: skip
    assert ssim(a, b) == pytest.approx(ref, abs=1e-9)


def test_official_windows_and_border_padding() -> None:
    assert official_windows(6, 5, border=False) == [[0, 1, 2, 3, 4], [1, 2, 3, 4, 5]]
    padded = official_windows(6, 5, border=True)
    assert len(padded) == 6
    assert padded[0] == [0, 1, 0, 1, 2] and padded[-1] == [3, 4, 5, 4, 5]  # the official gene_seq's padding
    assert official_windows(3, 3, border=False) == [[0, 1, 2]]


def make_dataset(root: Path, frames: int = 6) -> None:
    rng = np.random.default_rng(3)
    for v in ("v1", "v2"):
        for i in range(frames):
            sharp = rng.integers(0, 256, (36, 42, 3), dtype=np.uint8)  # 42 -> cropped to 40 (multiple of 4)
            blur = np.clip(sharp.astype(int) + 6, 0, 255).astype(np.uint8)
            write_rgb(root / "test" / v / "blur" / f"{i:03d}.png", blur)
            write_rgb(root / "test" / v / "sharp" / f"{i:03d}.png", sharp)


def test_eval_reports_restored_and_blurry_numbers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_dataset(tmp_path / "data")
    torch.manual_seed(0)
    weights = save_model(build_model("tiny", 5), tmp_path / "tiny.safetensors", training_data="none")
    out_json = tmp_path / "r.json"
    rc = main([str(weights), str(tmp_path / "data"), "--json", str(out_json), "--compare-png", str(tmp_path / "c.png"),
               "--save-dir", str(tmp_path / "out")])  # fmt: skip
    assert rc == 0
    result = json.loads(out_json.read_text())
    assert set(result["videos"]) == {"v1", "v2"}
    assert result["overall"]["frames"] == 4  # 6 frames, 5-frame windows, no border: 2 per video
    # the blurry baseline by hand: frame 2 of v1 (first scored centre), cropped to 36x40
    v1 = tmp_path / "data" / "test" / "v1"
    blur, sharp = read_rgb(v1 / "blur" / "002.png")[:36, :40], read_rgb(v1 / "sharp" / "002.png")[:36, :40]
    b3 = read_rgb(v1 / "blur" / "003.png")[:36, :40], read_rgb(v1 / "sharp" / "003.png")[:36, :40]
    expected = np.mean([psnr(blur, sharp), psnr(*b3)])
    assert result["videos"]["v1"]["blurry_psnr"] == pytest.approx(expected)
    assert math.isfinite(result["overall"]["psnr"])
    assert read_rgb(tmp_path / "c.png").shape == (36, 3 * 40, 3)
    assert sorted(p.name for p in (tmp_path / "out" / "v1").iterdir()) == ["002.png", "003.png"]
    assert "OVERALL" in capsys.readouterr().out
    # with --border every frame is scored
    assert main([str(weights), str(tmp_path / "data"), "--border", "--json", str(out_json)]) == 0
    assert json.loads(out_json.read_text())["overall"]["frames"] == 12


def test_eval_on_identical_frames_gives_inf_baseline(tmp_path: Path) -> None:
    for i in range(3):
        img = np.full((32, 32, 3), 10 * i, np.uint8)
        write_rgb(tmp_path / "d" / "test" / "v" / "blur" / f"{i}.png", img)
        write_rgb(tmp_path / "d" / "test" / "v" / "sharp" / f"{i}.png", img)
    weights = save_model(build_model("tiny", 3), tmp_path / "t3.safetensors")
    assert main([str(weights), str(tmp_path / "d"), "--json", str(tmp_path / "j.json")]) == 0
    result = json.loads((tmp_path / "j.json").read_text())
    assert result["overall"]["blurry_psnr"] == math.inf and result["overall"]["blurry_ssim"] == 1.0


def test_eval_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main([str(tmp_path / "missing.safetensors"), str(tmp_path)]) == 2
    assert "erdn eval:" in capsys.readouterr().err


def test_eval_reads_a_training_checkpoint_like_its_weights(tmp_path: Path) -> None:
    from training.checkpoint import save_checkpoint

    make_dataset(tmp_path / "data")
    torch.manual_seed(1)
    model = build_model("tiny", 5)
    weights = save_model(model, tmp_path / "w.safetensors")
    state = {"model": model.state_dict(), "preset": "tiny", "frames": 5, "iteration": 3}
    ckpt = save_checkpoint(state, tmp_path / "l.ckpt")
    for path, name in ((weights, "a.json"), (ckpt, "b.json")):
        assert main([str(path), str(tmp_path / "data"), "--max-windows", "1", "--json", str(tmp_path / name)]) == 0
    a, b = (json.loads((tmp_path / n).read_text())["overall"] for n in ("a.json", "b.json"))
    assert a == b


def test_centres_of_scores_a_3_frame_model_on_the_5_frame_models_frames(tmp_path: Path) -> None:
    make_dataset(tmp_path / "data")
    weights3 = save_model(build_model("tiny", 3), tmp_path / "t3.safetensors")
    weights5 = save_model(build_model("tiny", 5), tmp_path / "t5.safetensors")

    def overall(weights: Path, *args: str) -> dict:
        assert main([str(weights), str(tmp_path / "data"), *args, "--json", str(tmp_path / "r.json")]) == 0
        return json.loads((tmp_path / "r.json").read_text())["overall"]

    own, as5, f5 = overall(weights3), overall(weights3, "--centres-of", "5"), overall(weights5)
    assert own["frames"] == 8 and as5["frames"] == f5["frames"] == 4  # centres 1-4 of each video, against 2-3
    # the same frames as the 5-frame model's: the same blurry baseline
    assert (as5["blurry_psnr"], as5["blurry_ssim"]) == pytest.approx((f5["blurry_psnr"], f5["blurry_ssim"]))
    assert own["blurry_psnr"] != pytest.approx(f5["blurry_psnr"])


def test_eval_refuses_sharp_frames_of_another_size_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    make_dataset(tmp_path / "data")
    for i in range(6):  # v2's sharp frames at twice the size: a super-resolution dataset dropped in by mistake
        write_rgb(tmp_path / "data" / "test" / "v2" / "sharp" / f"{i:03d}.png", np.zeros((72, 84, 3), np.uint8))
    weights = save_model(build_model("tiny", 3), tmp_path / "t3.safetensors")
    assert main([str(weights), str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("erdn eval: video v2:") and "000.png" in err[0] and "84x72" in err[0]
