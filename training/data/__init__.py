"""Training data: dataset layouts, temporal windows, image I/O."""

from .layouts import LAYOUTS, DatasetError, VideoPair, find_videos
from .windows import TrainWindows, window_indices

__all__ = ["LAYOUTS", "DatasetError", "TrainWindows", "VideoPair", "find_videos", "window_indices"]
