"""``erdn bench``: speed of the model, the worker, the VapourSynth pipeline and vs-mlrt, side by side.

This package imports nothing heavy at import time: the .vpy scripts it renders import
``worker.bench.clip`` inside vspipe, where torch must never be loaded.
"""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from .cli import main as run

    return run(argv)
