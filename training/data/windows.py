"""Temporal windows of 2N+1 frames as training samples: random crops, flips and rotations.

Augmentation randomness is a pure function of (seed, epoch, sample index), so a resumed
run draws exactly the crops an uninterrupted one would, with no RNG state to carry.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from .images import read_rgb
from .layouts import VideoPair


def window_indices(centre: int, length: int, frames: int) -> list[int]:
    """Frame indices of the ``frames``-long window around ``centre`` in a video of ``length``
    frames; indices past either end repeat the nearest frame."""
    half = frames // 2
    return [min(max(centre + k, 0), length - 1) for k in range(-half, half + 1)]


def to_tensor(frames: list[np.ndarray]) -> torch.Tensor:
    """uint8 (H, W, 3) frames -> float (T, 3, H, W) in [0, 1]."""
    return torch.from_numpy(np.stack(frames).transpose(0, 3, 1, 2).astype(np.float32) / 255.0)


class TrainWindows(Dataset):
    """Every (video, centre frame) of a set of videos as a sample ``(blur, sharp)``, both (T, 3, crop, crop).

    ``sharp`` holds the sharp frames of the whole window: the cascaded loss needs the
    neighbours' sharp frames too, not only the centre's.
    """

    def __init__(
        self,
        videos: list[VideoPair],
        frames: int,
        crop: int = 256,
        flip: bool = True,
        rotate: bool = True,
        seed: int = 0,
    ) -> None:
        if frames % 2 == 0 or frames < 1:
            raise ValueError(f"frames must be odd, got {frames}")
        self.videos, self.frames, self.crop = videos, frames, crop
        self.flip, self.rotate, self.seed = flip, rotate, seed
        self.epoch = 0
        self.items = [(v, c) for v in range(len(videos)) for c in range(len(videos[v]))]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        vi, centre = self.items[index]
        video = self.videos[vi]
        idx = window_indices(centre, len(video), self.frames)
        blur = [read_rgb(video.blur[i]) for i in idx]
        sharp = [read_rgb(video.sharp[i]) for i in idx]
        h, w = blur[0].shape[:2]
        if h < self.crop or w < self.crop:
            raise ValueError(
                f"video {video.name}: frames are {w}x{h}, smaller than the {self.crop} crop; lower data.crop"
            )
        y = int(rng.integers(0, h - self.crop + 1))
        x = int(rng.integers(0, w - self.crop + 1))
        b = to_tensor([f[y : y + self.crop, x : x + self.crop] for f in blur])
        s = to_tensor([f[y : y + self.crop, x : x + self.crop] for f in sharp])
        if self.flip and rng.random() < 0.5:
            b, s = b.flip(-1), s.flip(-1)
        if self.flip and rng.random() < 0.5:
            b, s = b.flip(-2), s.flip(-2)
        if self.rotate:
            k = int(rng.integers(0, 4))
            b, s = torch.rot90(b, k, (-2, -1)), torch.rot90(s, k, (-2, -1))
        return b.contiguous(), s.contiguous()
