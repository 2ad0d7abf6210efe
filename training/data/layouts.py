"""Finding paired blurry/sharp videos in the folder layouts datasets are distributed in.

- ``dvd``: the official ERDN arrangement, ``ROOT/Train|Test/blur|gt/<video>/<frame>``.
- ``dvd-original``: DeepVideoDeblurring as downloaded, ``ROOT/quantitative_datasets/<video>/input|GT``;
  the test split is the ten videos the official arrange script holds out.
- ``gopro``: ``ROOT/train|test/<sequence>/blur|sharp`` (GOPRO_Large; also what ``erdn synth`` writes).
- ``paired``: any folder of ``<video>/<blurry folder>|<sharp folder>`` (blur, blurry or input;
  sharp, gt or GT), optionally under ``train``/``test`` split folders.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .images import image_size, list_images

LAYOUTS = ("dvd", "dvd-original", "gopro", "paired")

#: Held out by the official ERDN arrange script (script/arrange.py).
DVD_TEST_VIDEOS = frozenset(
    [
        "720p_240fps_2",
        "IMG_0003",
        "IMG_0021",
        "IMG_0030",
        "IMG_0031",
        "IMG_0032",
        "IMG_0033",
        "IMG_0037",
        "IMG_0039",
        "IMG_0049",
    ]
)
BLUR_NAMES = ("blur", "blurry", "input")
SHARP_NAMES = ("sharp", "gt", "GT")


class DatasetError(ValueError):
    """A dataset folder that cannot be read; the message says what was expected."""


@dataclass(frozen=True)
class VideoPair:
    """One video: its blurry frames and the sharp frames they pair with, in order."""

    name: str
    blur: tuple[Path, ...]
    sharp: tuple[Path, ...]

    def __len__(self) -> int:
        return len(self.blur)


def _names(paths: list[Path], limit: int = 5) -> str:
    shown = ", ".join(p.name for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def frames_by_name(video: str, folder: Path) -> dict[str, Path]:
    """The frames in ``folder`` keyed by file name without extension, in frame order."""
    frames: dict[str, Path] = {}
    for path in list_images(folder):
        if path.stem in frames:
            raise DatasetError(f"video {video}: {frames[path.stem].name} and {path.name} in {folder} are one frame "
                               "name twice; keep one of them")
        frames[path.stem] = path
    return frames


def make_pair(name: str, blur_dir: Path, sharp_dir: Path) -> VideoPair:
    """Blurry and sharp frames paired by file name (extension aside), checked for equal sizes.

    Raises DatasetError naming the video and the frames: frames without a partner, or of another size.
    """
    blur, sharp = frames_by_name(name, blur_dir), frames_by_name(name, sharp_dir)
    if not blur:
        raise DatasetError(f"{blur_dir} holds no frames")
    lone_blur = [p for stem, p in blur.items() if stem not in sharp]
    lone_sharp = [p for stem, p in sharp.items() if stem not in blur]
    if lone_blur or lone_sharp:
        parts = [f"blurry {_names(lone_blur)} (none of that name in {sharp_dir})"] if lone_blur else []
        parts += [f"sharp {_names(lone_sharp)} (none of that name in {blur_dir})"] if lone_sharp else []
        raise DatasetError(f"video {name}: frames are paired by file name, and these have no partner: "
                           f"{'; '.join(parts)}; add the missing frames or remove the extra ones")
    video = VideoPair(name, tuple(blur.values()), tuple(sharp[stem] for stem in blur))
    check_frame_sizes(video)
    return video


def check_frame_sizes(video: VideoPair) -> None:
    """Every frame of ``video``, blurry and sharp, has the size of its first blurry frame.

    Reads image headers only. Raises DatasetError naming the video and the first frame that differs.
    """

    def size(path: Path) -> tuple[int, int]:
        try:
            return image_size(path)
        except OSError as e:
            raise DatasetError(f"video {video.name}: {path} is not a readable image ({e})") from None

    first = video.blur[0]
    want = size(first)
    for blur, sharp in zip(video.blur, video.sharp, strict=True):
        if (got := size(blur)) != want:
            raise DatasetError(f"video {video.name}: blurry frame {blur.name} is {got[0]}x{got[1]} but {first.name} "
                               f"is {want[0]}x{want[1]}; every frame of a video must have one size")
        if (got := size(sharp)) != want:
            raise DatasetError(
                f"video {video.name}: sharp frame {sharp.name} is {got[0]}x{got[1]} but blurry {blur.name} is "
                f"{want[0]}x{want[1]}; blurry and sharp frames must have the same size (a super-resolution "
                f"dataset pairs different sizes)")


def subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def first_existing(folder: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        if (folder / n).is_dir():
            return folder / n
    return None


def split_folder(root: Path, split: str) -> Path | None:
    for name in (split, split.capitalize(), split.upper()):
        if (root / name).is_dir():
            return root / name
    return None


def detect_layout(root: Path) -> str:
    if (root / "quantitative_datasets").is_dir() or any(
        (v / "input").is_dir() and (v / "GT").is_dir() for v in subdirs(root)
    ):
        return "dvd-original"
    for split in ("Train", "Test", "train", "test"):
        if (root / split / "blur").is_dir() and (root / split / "gt").is_dir():
            return "dvd"
    if (root / "blur").is_dir() and (root / "gt").is_dir():
        return "dvd"
    return "gopro" if any((root / s).is_dir() for s in ("train", "test")) else "paired"


def find_videos(root: str | Path, split: str = "train", layout: str = "auto") -> list[VideoPair]:
    """The videos of ``split`` ("train", "val", "test" or "all") of the dataset at ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist")
    if split not in ("train", "val", "test", "all"):
        raise DatasetError(f"split must be train, val, test or all, got {split!r}")
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; choose auto or one of {', '.join(LAYOUTS)}")
    splits = ("train", "val", "test") if split == "all" else (split,)
    videos: list[VideoPair] = []
    if layout == "dvd":
        for s in splits:
            base = split_folder(root, s) or (root if (root / "blur").is_dir() and split != "all" else None)
            if base is None:
                continue
            for v in subdirs(base / "blur"):
                videos.append(make_pair(v.name, v, base / "gt" / v.name))
    elif layout == "dvd-original":
        base = root / "quantitative_datasets" if (root / "quantitative_datasets").is_dir() else root
        for v in subdirs(base):
            if not ((v / "input").is_dir() and (v / "GT").is_dir()):
                continue
            held_out = v.name in DVD_TEST_VIDEOS
            if split == "all" or (split == "test") == held_out:
                videos.append(make_pair(v.name, v / "input", v / "GT"))
    else:  # gopro and paired: <video>/blur|sharp, optionally under split folders
        bases = [b for s in splits if (b := split_folder(root, s)) is not None]
        if not bases and layout == "paired":
            bases = [root]
        for base in bases:
            for v in subdirs(base):
                blur, sharp = first_existing(v, BLUR_NAMES), first_existing(v, SHARP_NAMES)
                if blur is not None and sharp is not None:
                    videos.append(make_pair(v.name, blur, sharp))
    if not videos:
        raise DatasetError(
            f"no {split} videos found in {root} as layout {layout!r}; expected one of: "
            "Train|Test/blur|gt/<video>/ (dvd), quantitative_datasets/<video>/input|GT (dvd-original), "
            "train|test/<video>/blur|sharp (gopro, erdn synth)"
        )
    return videos
