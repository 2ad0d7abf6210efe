"""PSNR and SSIM computed the way the official ERDN inference script computes them.

Both take 8-bit (H, W, 3) images (outputs are rounded to 8 bits first), crop ``border``
pixels on every side (4 in the official script), and work on all channels at once:
PSNR over the mean squared error of every value; SSIM with an 11x11 Gaussian window
(sigma 1.5), "valid" filtering, averaged over the whole map of every channel.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.ndimage import correlate1d

CROP_BORDER = 4


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    k = np.exp(-(x * x) / (2 * sigma * sigma))
    return k / k.sum()


def _check(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")


def crop_border(img: np.ndarray, border: int = CROP_BORDER) -> np.ndarray:
    return img[border:-border, border:-border] if border > 0 else img


def psnr(a: np.ndarray, b: np.ndarray, border: int = CROP_BORDER) -> float:
    """PSNR in dB of two [0, 255] images; inf when they are identical."""
    _check(a, b)
    x = crop_border(a, border).astype(np.float64)
    y = crop_border(b, border).astype(np.float64)
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 20 * math.log10(255.0 / math.sqrt(mse))


def _filter_valid(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable correlation over H and W of (H, W, C), keeping only fully covered pixels."""
    out = correlate1d(correlate1d(img, kernel, axis=0, mode="nearest"), kernel, axis=1, mode="nearest")
    r = len(kernel) // 2
    return out[r:-r, r:-r]


def ssim(a: np.ndarray, b: np.ndarray, border: int = CROP_BORDER) -> float:
    """SSIM of two [0, 255] images (the official script's, which matches MATLAB's)."""
    _check(a, b)
    x = crop_border(a, border).astype(np.float64)
    y = crop_border(b, border).astype(np.float64)
    if x.ndim == 2:
        x, y = x[..., None], y[..., None]
    if min(x.shape[:2]) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11 after cropping {border} border pixels, got {a.shape}")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    k = _gaussian_1d()
    mu1, mu2 = _filter_valid(x, k), _filter_valid(y, k)
    s11 = _filter_valid(x * x, k) - mu1 * mu1
    s22 = _filter_valid(y * y, k) - mu2 * mu2
    s12 = _filter_valid(x * y, k) - mu1 * mu2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 * mu1 + mu2 * mu2 + c1) * (s11 + s22 + c2))
    return float(ssim_map.mean())
