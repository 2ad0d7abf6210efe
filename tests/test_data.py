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
    with pytest.raises(DatasetError, match="4 blurry frames .* but 3 sharp"):
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
