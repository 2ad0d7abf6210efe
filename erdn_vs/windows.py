"""Temporal windows: which source frames restore output frame n (clip edges and scene cuts).

Pure logic, no VapourSynth: the filter feeds it the scene-change flags it reads from the
neighbouring frames it received.

The window of n is n-r..n+r (r = frames // 2). A neighbour that lies past a clip end or
across a scene cut is replaced by the nearest frame on the same side within n's scene, so
frames of two scenes are never mixed: n=0 gives (0, 0, 0, 1, 2); with a cut between 9 and 10,
frame 9 gives (7, 8, 9, 9, 9) and frame 10 gives (10, 10, 10, 11, 12).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

#: Window sizes the model takes.
FRAMES = (3, 5)


def radius(frames: int) -> int:
    if frames not in FRAMES:
        raise ValueError(f"frames must be one of {FRAMES}, got {frames!r}")
    return frames // 2


def clamped_offsets(n: int, length: int, frames: int) -> tuple[int, ...]:
    """Source indices n-r..n+r clamped to [0, length-1]: what the shifted clips deliver for n."""
    if not 0 <= n < length:
        raise ValueError(f"frame {n} is outside a clip of {length} frames")
    r = radius(frames)
    return tuple(min(max(n + d, 0), length - 1) for d in range(-r, r + 1))


def temporal_window(n: int, length: int, frames: int, cut_before: Callable[[int], bool]) -> tuple[int, ...]:
    """The window of source indices for output frame ``n`` of a clip of ``length`` frames.

    ``cut_before(k)`` says whether frame k starts a new scene (a cut between k-1 and k); it is
    asked only for k in n-r+1..n+r inside the clip, whose k-1 and k both lie in the clamped
    window, so the caller needs nothing beyond the frames it already has.
    """
    r = radius(frames)
    if not 0 <= n < length:
        raise ValueError(f"frame {n} is outside a clip of {length} frames")
    left = [n]
    for d in range(1, r + 1):
        k = n - d
        # k is usable if it exists and no cut lies between k and k+1 (its right neighbour, already usable).
        left.append(k if k >= 0 and left[-1] == k + 1 and not cut_before(k + 1) else left[-1])
    right = [n]
    for d in range(1, r + 1):
        k = n + d
        right.append(k if k < length and right[-1] == k - 1 and not cut_before(k) else right[-1])
    return tuple(reversed(left[1:])) + (n,) + tuple(right[1:])


def cuts_from_flags(prev_flags: Mapping[int, bool], next_flags: Mapping[int, bool]) -> Callable[[int], bool]:
    """``cut_before`` from the frames' ``_SceneChangePrev`` / ``_SceneChangeNext`` flags.

    _SceneChangePrev on k: k starts a new scene. _SceneChangeNext on k: k ends its scene,
    so k+1 starts one. A missing entry counts as no cut.
    """

    def cut_before(k: int) -> bool:
        return bool(prev_flags.get(k, False)) or bool(next_flags.get(k - 1, False))

    return cut_before


def no_cuts(k: int) -> bool:
    """``cut_before`` for scene_change=False: edges only."""
    return False
