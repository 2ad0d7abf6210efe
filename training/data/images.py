"""Reading and writing 8-bit RGB frames, and the sRGB <-> linear-light transfer functions."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def frame_order(path: Path) -> tuple:
    """Sort key that reads the digits in a name as a number: ``2.png`` before ``10.png``."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", path.name))


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside ``folder``, in frame order (by name, digits compared as numbers)."""
    folder = Path(folder)
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES), key=frame_order)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file, from its header (the pixels are not decoded).

    Raises OSError for a file that is not a readable image.
    """
    from PIL import Image

    with Image.open(path) as img:
        return img.size


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as (H, W, 3) uint8: grey is repeated, alpha is dropped."""
    import imageio.v3 as iio

    img = np.asarray(iio.imread(path))
    if img.dtype != np.uint8:
        if img.dtype == np.uint16:
            img = (img.astype(np.float32) / 257.0).round().astype(np.uint8)
        else:
            raise ValueError(f"{path}: unsupported pixel type {img.dtype}; use 8-bit images")
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"{path}: expected an RGB image, got shape {img.shape}")
    return np.ascontiguousarray(img[..., :3])


def write_rgb(path: str | Path, img: np.ndarray) -> None:
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, np.ascontiguousarray(img))


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] to linear light (IEC 61966-2-1)."""
    x = np.asarray(x, dtype=np.float32)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] to sRGB-encoded values."""
    x = np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * x ** (1 / 2.4) - 0.055).astype(np.float32)


def to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats to 8-bit, rounded (the official evaluation's quantisation)."""
    return np.round(np.clip(np.asarray(x, dtype=np.float64) * 255.0, 0.0, 255.0)).astype(np.uint8)
