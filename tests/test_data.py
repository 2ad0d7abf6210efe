"""Dataset layouts and training windows, on small generated fixture trees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from training.data import DatasetError, TrainWindows, find_videos, window_indices
from training.data.images import write_rgb
from training.data.layouts import DVD_TEST_VIDEOS, detect_layout

H, W = 24, 20


def frame(video: int, index: int, blurry: bool) -> np.ndarray:
    """Red = frame index, green = video, blue = x ramp; blurry frames are the sharp ones halved."""
    img = np.zeros((H, W, 3), np.uint8)
    img[..., 0] = 10 * index
    img[..., 1] = 20 * video
    img[..., 2] = np.arange(W, dtype=np.uint8)[None, :] * 10
    return img // 2 if blurry else img


def write_video(blur_dir: Path, sharp_dir: Path, video: int, length: int, ext: str = "png") -> None:
    for i in range(length):
        write_rgb(blur_dir / f"{i:05d}.{ext}", frame(video, i, True))
        write_rgb(sharp_dir / f"{i:05d}.{ext}", frame(video, i, False))


def make_layout(root: Path, layout: str) -> Path:
    if layout == "dvd":
        for split, names in (("Train", ["a", "b"]), ("Test", ["c"])):
            for v, name in enumerate(names):
                write_video(root / split / "blur" / name, root / split / "gt" / name, v, 4)
    elif layout == "dvd-original":
        for v, name in enumerate(["IMG_0003", "IMG_0100", "IMG_0101"]):
            base = root / "quantitative_datasets" / name
            write_video(base / "input", base / "GT", v, 4, ext="jpg" if v else "png")
    elif layout == "gopro":
        for split, names in (("train", ["GOPR0372_07_00", "GOPR0372_07_01"]), ("test", ["GOPR0384_11_00"])):
            for v, name in enumerate(names):
                write_video(root / split / name / "blur", root / split / name / "sharp", v, 4)
    elif layout == "paired":
        for v, name in enumerate(["x", "y"]):
            write_video(root / name / "blurry", root / name / "gt", v, 4)
    return root


EXPECTED = {  # layout -> (train videos, test videos)
    "dvd": (["a", "b"], ["c"]),
    "dvd-original": (["IMG_0100", "IMG_0101"], ["IMG_0003"]),
    "gopro": (["GOPR0372_07_00", "GOPR0372_07_01"], ["GOPR0384_11_00"]),
}


def test_window_indices_replicate_the_nearest_frame_at_the_edges() -> None:
    assert window_indices(0, 10, 5) == [0, 0, 0, 1, 2]
    assert window_indices(1, 10, 5) == [0, 0, 1, 2, 3]
    assert window_indices(5, 10, 5) == [3, 4, 5, 6, 7]
    assert window_indices(9, 10, 5) == [7, 8, 9, 9, 9]
    assert window_indices(0, 1, 3) == [0, 0, 0]


@pytest.mark.parametrize("layout", sorted(EXPECTED))
def test_split_layouts_are_detected_and_read(tmp_path: Path, layout: str) -> None:
    root = make_layout(tmp_path, layout)
    assert detect_layout(root) == layout
    train_names, test_names = EXPECTED[layout]
    assert [v.name for v in find_videos(root, "train")] == train_names
    assert [v.name for v in find_videos(root, "test")] == test_names
    assert len(find_videos(root, "all", layout)) == len(train_names) + len(test_names)
    for video in find_videos(root, "train"):
        assert len(video) == 4
        assert [p.stem for p in video.blur] == [p.stem for p in video.sharp]


def test_dvd_original_holds_out_the_official_test_videos() -> None:
    assert "IMG_0003" in DVD_TEST_VIDEOS and "720p_240fps_2" in DVD_TEST_VIDEOS and len(DVD_TEST_VIDEOS) == 10


def test_paired_layout_without_splits_and_aliases(tmp_path: Path) -> None:
    root = make_layout(tmp_path, "paired")
    assert detect_layout(root) == "paired"
    videos = find_videos(root, "train", "paired")
    assert [v.name for v in videos] == ["x", "y"]
    assert videos[0].blur[0].parent.name == "blurry" and videos[0].sharp[0].parent.name == "gt"


def test_missing_or_mismatched_data_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        find_videos(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no train videos"):
        find_videos(tmp_path / "empty")
    root = make_layout(tmp_path / "g", "gopro")
    (root / "train" / "GOPR0372_07_00" / "sharp" / "00003.png").unlink()
    with pytest.raises(DatasetError, match=r"video GOPR0372_07_00: .* no partner: blurry 00003\.png"):
        find_videos(root, "train")


def test_train_windows_pair_blur_with_sharp_and_keep_frame_order(tmp_path: Path) -> None:
    videos = find_videos(make_layout(tmp_path, "gopro"), "train")
    ds = TrainWindows(videos, frames=5, crop=16, seed=3)
    assert len(ds) == 8  # 2 videos x 4 centres
    for index in range(len(ds)):
        blur, sharp = ds[index]
        assert blur.shape == sharp.shape == (5, 3, 16, 16)
        # same crop, flips and rotation on both: blurry = sharp // 2 everywhere
        assert torch.equal((blur * 255).round(), torch.floor((sharp * 255).round() / 2))
        # the red channel carries the frame index: edges replicate the nearest frame
        _, centre = ds.items[index]
        order = (sharp[:, 0].mean(dim=(1, 2)) * 255 / 10).round().int().tolist()
        assert order == window_indices(centre, 4, 5)


def test_augmentation_is_a_function_of_seed_epoch_and_index(tmp_path: Path) -> None:
    videos = find_videos(make_layout(tmp_path, "dvd"), "train")
    a = TrainWindows(videos, frames=3, crop=16, seed=1)
    b = TrainWindows(videos, frames=3, crop=16, seed=1)
    assert all(torch.equal(a[i][0], b[i][0]) for i in range(len(a)))
    draws = set()
    for epoch in range(8):
        a.set_epoch(epoch)
        draws.add(a[2][1].numpy().tobytes())
    assert len(draws) > 1  # crops/flips/rotations change from epoch to epoch


def test_crop_larger_than_frames_is_a_clear_error(tmp_path: Path) -> None:
    videos = find_videos(make_layout(tmp_path, "dvd"), "train")
    with pytest.raises(ValueError, match="smaller than the 64 crop"):
        TrainWindows(videos, frames=3, crop=64)[0]


# ----------------------------------------------------------------------------- frames paired by name, sizes


def test_frames_are_paired_by_name_not_position(tmp_path: Path) -> None:
    """Blurry lacks 00003 and has an extra 00006: both folders still hold 6 files."""
    blur, sharp = tmp_path / "d" / "train" / "v1" / "blur", tmp_path / "d" / "train" / "v1" / "sharp"
    write_video(blur, sharp, 0, 6)
    (blur / "00003.png").unlink()
    write_rgb(blur / "00006.png", frame(0, 6, True))
    with pytest.raises(DatasetError) as e:
        find_videos(tmp_path / "d", "train")
    message = str(e.value)
    assert "\n" not in message
    assert "video v1" in message and "blurry 00006.png" in message and "sharp 00003.png" in message


def test_pairs_match_names_across_extensions_in_frame_number_order(tmp_path: Path) -> None:
    """Unpadded frame numbers sort as numbers (1, 2, ..., 10), not as text (1, 10, 2)."""
    base = tmp_path / "p" / "v"
    for i in range(1, 12):
        write_rgb(base / "input" / f"{i}.jpg", frame(0, i, True))
        write_rgb(base / "gt" / f"{i}.png", frame(0, i, False))
    (video,) = find_videos(tmp_path / "p", "train", "paired")
    assert [p.stem for p in video.blur] == [str(i) for i in range(1, 12)]
    assert [(p.name, q.name) for p, q in zip(video.blur, video.sharp, strict=True)][9] == ("10.jpg", "10.png")


def test_two_frames_of_one_name_are_refused(tmp_path: Path) -> None:
    root = make_layout(tmp_path, "paired")
    write_rgb(root / "x" / "blurry" / "00002.jpg", frame(0, 2, True))
    with pytest.raises(DatasetError, match=r"video x: .*00002\.jpg.*00002\.png|video x: .*00002\.png.*00002\.jpg"):
        find_videos(root, "train", "paired")


def test_sharp_frames_of_another_size_are_refused_naming_video_and_frame(tmp_path: Path) -> None:
    """A super-resolution dataset dropped in by mistake: sharp frames at twice the blurry size."""
    root = make_layout(tmp_path, "gopro")
    sharp = root / "train" / "GOPR0372_07_01" / "sharp"
    for i in range(4):
        big = np.repeat(np.repeat(frame(1, i, False), 2, axis=0), 2, axis=1)
        write_rgb(sharp / f"{i:05d}.png", big)
    with pytest.raises(DatasetError) as e:
        find_videos(root, "train")
    message = str(e.value)
    assert "\n" not in message
    assert "video GOPR0372_07_01" in message and "00000.png" in message
    assert f"{2 * W}x{2 * H}" in message and f"{W}x{H}" in message


def test_a_frame_of_another_size_inside_a_video_is_refused(tmp_path: Path) -> None:
    root = make_layout(tmp_path, "dvd")
    write_rgb(root / "Train" / "blur" / "b" / "00002.png", np.zeros((H + 2, W, 3), np.uint8))
    write_rgb(root / "Train" / "gt" / "b" / "00002.png", np.zeros((H + 2, W, 3), np.uint8))
    with pytest.raises(DatasetError, match=rf"video b: .*00002\.png is {W}x{H + 2}.*00000\.png is {W}x{H}"):
        find_videos(root, "train")


def test_erdn_train_refuses_mismatched_sizes_before_any_training_step(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import yaml

    from training.train import main as train_main

    root = make_layout(tmp_path / "data", "gopro")
    sharp = root / "train" / "GOPR0372_07_00" / "sharp"
    for i in range(4):
        write_rgb(sharp / f"{i:05d}.png", np.zeros((2 * H, 2 * W, 3), np.uint8))
    run_dir = tmp_path / "run"
    cfg = {"name": "mismatch", "run_dir": str(run_dir), "batch": 1, "iterations": 2, "threads": 1,
           "model": {"preset": "tiny", "frames": 3}, "data": {"root": str(root), "crop": 16}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert train_main([str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("erdn train: video GOPR0372_07_00:") and "00000.png" in err[0]
    assert not (run_dir / "last.ckpt").exists() and not (run_dir / "log.csv").exists()
