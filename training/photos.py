"""The still photographs ``erdn synth`` renders from, and which split may see which.

- ``photos`` (recipe v1/v2): nine colour photographs inside scikit-image's wheel.
- ``all`` (recipe v3): every photograph and texture in scikit-image's data folder. Left out: the
  motion-blurred ``clock_motion.png`` (its sharp target would be blurry), the defocused ``cell.png``,
  drawings and graphics (``color``, ``phantom``, ``logo``, ``horse``, the chessboards), the tiny
  ``microaneurysms.png`` and the multi-page TIFFs.
- ``eval``: photographs shipped by scikit-learn and matplotlib. They are reserved for evaluation:
  training never reads them (``load`` refuses them for training splits, by content, wherever they are
  copied to).

Held-out photographs: with ``holdout`` > 0, a fixed share of the photographs (the groups whose
SHA-256 of the name sorts first; a stereo pair ``x_left``/``x_right`` is one group) is used only by
the val and test splits, and the train split never sees them. The choice depends on the file names
alone, not on the seed, so datasets made with different seeds hold out the same photographs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.data.images import IMAGE_SUFFIXES, list_images, read_rgb, srgb_to_linear

#: The colour photographs of decent size inside scikit-image's wheel (recipes v1 and v2).
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "retina.jpg",
    "rocket.jpg",
)

#: Every photograph and texture in scikit-image's data folder (recipe v3); grey ones get tinted.
SKIMAGE_ALL = SKIMAGE_PHOTOS + (
    "brick.png",
    "camera.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "moon.png",
    "page.png",
    "text.png",
)

IMAGE_SETS = ("photos", "all", "eval", "none")


class ReservedPhotoError(ValueError):
    """A photograph reserved for evaluation was offered for training."""


@dataclass(frozen=True)
class Still:
    """One source photograph in linear light, float32 (H, W, 3)."""

    name: str
    pixels: np.ndarray
    grey: bool


def _package_dir(package: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent.joinpath(*parts)
    return folder if folder.is_dir() else None


def skimage_data_dir() -> Path:
    folder = _package_dir("skimage", "data")
    if folder is None:
        raise SystemExit("erdn synth: scikit-image is not installed; pip install -e .[training]")
    return folder


def reserved_photo_paths() -> list[Path]:
    """The evaluation photographs present in this environment: scikit-learn's and matplotlib's samples."""
    folders = [_package_dir("sklearn", "datasets", "images"), _package_dir("matplotlib", "mpl-data", "sample_data")]
    return [p for f in folders if f is not None for p in list_images(f)]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reserved_digests() -> frozenset[str]:
    return frozenset(_digest(p) for p in reserved_photo_paths())


def image_paths(images: str, extra_folders: tuple[str, ...] = ()) -> list[Path]:
    """The photographs of image set ``images`` (see the module docstring) plus every image in ``extra_folders``."""
    if images not in IMAGE_SETS:
        raise SystemExit(f"erdn synth: --images must be one of {', '.join(IMAGE_SETS)}, got {images!r}")
    paths: list[Path] = []
    if images in ("photos", "all"):
        data = skimage_data_dir()
        names = SKIMAGE_PHOTOS if images == "photos" else SKIMAGE_ALL
        paths += [data / name for name in names if (data / name).is_file()]
    elif images == "eval":
        paths += [p for p in reserved_photo_paths() if min(read_rgb(p).shape[:2]) >= 256]
        if not paths:
            raise SystemExit("erdn synth: --images eval found no scikit-learn or matplotlib sample photographs; "
                             "pip install -e .[training]")
    for folder in extra_folders:
        found = list_images(folder) if Path(folder).is_dir() else []
        if not found:
            raise SystemExit(f"erdn synth: --stills {folder} holds no images (png, jpg, ...)")
        paths += found
    return paths


def check_not_reserved(paths: list[Path]) -> None:
    """Refuse any evaluation photograph (compared by content, so a copy is caught too)."""
    reserved = reserved_digests()
    for p in paths:
        if p.suffix.lower() in IMAGE_SUFFIXES and _digest(p) in reserved:
            raise ReservedPhotoError(
                f"erdn synth: {p} is a photograph reserved for evaluation (scikit-learn/matplotlib sample); "
                "never train on it. Remove it from --stills, or make an evaluation set with --images eval."
            )


def load(paths: list[Path]) -> list[Still]:
    """Read photographs as linear-light stills, in the order given."""
    stills = []
    for p in paths:
        rgb = read_rgb(p)
        grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
        stills.append(Still(p.name, srgb_to_linear(rgb.astype(np.float32) / 255.0), grey))
    return stills


def group_key(name: str) -> str:
    """Photographs of one scene share a key (a stereo pair ``x_left``/``x_right`` is one scene)."""
    return re.sub(r"_(left|right)$", "", Path(name).stem)


def held_out_names(names: list[str], fraction: float) -> set[str]:
    """The names reserved for val/test: ``ceil(fraction * groups)`` groups, chosen by SHA-256 of the group key."""
    if fraction <= 0:
        return set()
    groups = sorted({group_key(n) for n in names}, key=lambda g: hashlib.sha256(g.encode()).hexdigest())
    chosen = set(groups[: min(len(groups), math.ceil(fraction * len(groups)))])
    return {n for n in names if group_key(n) in chosen}
