"""erdn_vs: ERDN video deblurring as a VapourSynth filter backed by a persistent worker.

``erdn_vs.deblur(clip, ...)`` is the public function. It is imported lazily so that the
worker can import ``erdn_vs.protocol`` (and ``erdn_vs.manifest``) without pulling in
VapourSynth; nothing in this package imports torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["deblur"]


def __getattr__(name: str) -> Any:
    if name == "deblur":
        from .filter import deblur

        return deblur
    raise AttributeError(f"module 'erdn_vs' has no attribute {name!r}")
