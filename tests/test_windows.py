"""Temporal windows at clip edges and scene cuts (pure logic, no VapourSynth)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from erdn_vs.windows import clamped_offsets, cuts_from_flags, no_cuts, temporal_window


def cut_at(*starts: int):
    """cut_before for scenes starting at the given frames."""
    return lambda k: k in starts


@pytest.mark.parametrize(
    ("n", "length", "frames", "expected"),
    [
        (0, 20, 5, (0, 0, 0, 1, 2)),
        (1, 20, 5, (0, 0, 1, 2, 3)),
        (10, 20, 5, (8, 9, 10, 11, 12)),
        (18, 20, 5, (16, 17, 18, 19, 19)),
        (19, 20, 5, (17, 18, 19, 19, 19)),
        (0, 1, 5, (0, 0, 0, 0, 0)),
        (1, 2, 5, (0, 0, 1, 1, 1)),
        (0, 20, 3, (0, 0, 1)),
        (19, 20, 3, (18, 19, 19)),
        (5, 20, 3, (4, 5, 6)),
    ],
)
def test_edges(n, length, frames, expected):
    assert temporal_window(n, length, frames, no_cuts) == expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (7, (5, 6, 7, 8, 9)),
        (8, (6, 7, 8, 9, 9)),
        (9, (7, 8, 9, 9, 9)),
        (10, (10, 10, 10, 11, 12)),
        (11, (10, 10, 11, 12, 13)),
        (12, (10, 11, 12, 13, 14)),
    ],
)
def test_cut_between_9_and_10(n, expected):
    assert temporal_window(n, 20, 5, cut_at(10)) == expected


def test_one_frame_scene_stands_alone():
    assert temporal_window(5, 20, 5, cut_at(5, 6)) == (5, 5, 5, 5, 5)
    assert temporal_window(5, 20, 3, cut_at(5, 6)) == (5, 5, 5)


def test_flags_prev_and_next_mean_the_same_cut():
    # _SceneChangeNext on 9 and _SceneChangePrev on 10 both put a cut between 9 and 10.
    by_next = cuts_from_flags({}, {9: True})
    by_prev = cuts_from_flags({10: True}, {})
    for cut in (by_next, by_prev):
        assert temporal_window(9, 20, 5, cut) == (7, 8, 9, 9, 9)
        assert temporal_window(10, 20, 5, cut) == (10, 10, 10, 11, 12)
    assert not by_next(9) and not by_prev(11)


def test_clamped_offsets():
    assert clamped_offsets(0, 8, 5) == (0, 0, 0, 1, 2)
    assert clamped_offsets(7, 8, 5) == (5, 6, 7, 7, 7)
    assert clamped_offsets(3, 8, 3) == (2, 3, 4)
    with pytest.raises(ValueError, match="outside"):
        clamped_offsets(8, 8, 5)
    with pytest.raises(ValueError, match="frames must be one of"):
        temporal_window(0, 8, 4, no_cuts)


def oracle(n: int, length: int, frames: int, starts: set[int]) -> tuple[int, ...]:
    """Independent formulation: clamp n+d into n's scene [first, last]."""
    first = max([s for s in starts if s <= n], default=0)
    later = [s for s in starts if s > n]
    last = (min(later) if later else length) - 1
    r = frames // 2
    return tuple(min(max(n + d, first), last) for d in range(-r, r + 1))


@given(
    length=st.integers(1, 30),
    frames=st.sampled_from([3, 5]),
    starts=st.sets(st.integers(1, 29), max_size=8),
    data=st.data(),
)
def test_matches_oracle_and_never_mixes_scenes(length, frames, starts, data):
    starts = {s for s in starts if s < length}
    n = data.draw(st.integers(0, length - 1))
    asked: list[int] = []

    def cut_before(k: int) -> bool:
        asked.append(k)
        return k in starts

    window = temporal_window(n, length, frames, cut_before)
    assert window == oracle(n, length, frames, starts)
    # Substitution only moves toward n, so the window lies inside what the shifted clips deliver.
    assert set(window) <= set(clamped_offsets(n, length, frames))
    # Only flags of frames the callback holds are asked for.
    r = frames // 2
    assert all(n - r < k <= n + r and 0 < k < length for k in asked)
