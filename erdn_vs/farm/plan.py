"""Chunks: which output frames each Ray task renders (pure Python, no Ray, no VapourSynth).

A chunk is a range ``[start, end)`` of output frames of the ``erdn deblur`` graph, cut *after*
deblurring exactly as ``--frames START:END`` cuts it: a chunk reads the neighbours its first and
last frames need across its ends, so the chunks concatenate to the single-machine render frame
for frame. Where the source has a scene cut near a boundary, the boundary moves onto the cut: no
temporal window crosses it, so the two chunks share no stage-1 result and neither reads across.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: A boundary may move this fraction of a chunk to land on a scene cut.
SLACK = 0.25


@dataclass(frozen=True)
class Chunk:
    """Output frames ``start`` .. ``end - 1``; ``index`` orders the chunks in the result."""

    index: int
    start: int
    end: int

    @property
    def frames(self) -> int:
        return self.end - self.start

    @property
    def name(self) -> str:
        return f"chunk-{self.index:05d}"

    def describe(self) -> str:
        return f"chunk {self.index} (frames {self.start}-{self.end - 1})"


def plan_chunks(start: int, end: int, chunk_frames: int, scene_cuts: Iterable[int] = ()) -> list[Chunk]:
    """Cut frames ``[start, end)`` into chunks of about ``chunk_frames``.

    ``scene_cuts``: frames that start a new scene. A boundary lands on the cut nearest its target
    within ``SLACK * chunk_frames``; the last chunk takes up to ``(1 + SLACK) * chunk_frames``
    frames rather than leave a sliver. Raises ValueError for an empty range or a size below 1.
    """
    if chunk_frames < 1:
        raise ValueError(f"chunk size must be at least 1 frame, got {chunk_frames}")
    if end <= start:
        raise ValueError(f"no frames to render in {start}:{end}")
    slack = int(chunk_frames * SLACK)
    cuts = sorted({c for c in scene_cuts if start < c < end})
    bounds = [start]
    while end - bounds[-1] > chunk_frames + slack:
        target = bounds[-1] + chunk_frames
        near = [c for c in cuts if target - slack <= c <= target + slack]
        bounds.append(min(near, key=lambda c: (abs(c - target), c)) if near else target)
    bounds.append(end)
    return [Chunk(i, a, b) for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))]
