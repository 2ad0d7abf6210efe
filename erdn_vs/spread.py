"""Which worker restores which frame, and how the filter's lanes cover the clip (pure Python).

With several workers, frame n goes to worker ``(n // stripe) % workers``: stripes of
``stripe`` consecutive frames, round-robin. Consecutive frames on one worker share their
stage-1 results (the worker caches them per session), so only the two triplets past each
stripe edge are computed twice; interleaving single frames would compute almost every triplet
on both workers.

VapourSynth runs one Python callback of a filter instance at a time, so the filter builds one
``std.ModifyFrame`` per *lane*: ``batch`` lanes per worker, each taking every ``batch``-th frame
of that worker's stripes. The pattern repeats every ``cycle = workers * stripe`` frames, which
VapourSynth expresses cheaply: a lane is ``SelectEvery(cycle, offsets)``, the lanes are
interleaved, and one ``SelectEvery`` over the interleaved clip (``order``) puts every frame back
at its place. One worker keeps the filter's original lanes: frame n in lane ``n % batch``.
"""

from __future__ import annotations

from dataclasses import dataclass


def split_endpoints(value: object) -> list[str] | None:
    """The worker endpoints ``deblur(endpoint=...)`` names: None (the default worker) or a list.

    ``value`` is None, a str (one endpoint, or several separated by commas) or a list/tuple of str.
    Raises ValueError for an empty list or entry, a non-string entry, or an endpoint named twice.
    The pattern of each endpoint is the manifest's to check.
    """
    if value is None:
        return None
    if isinstance(value, str):
        items = [part.strip() for part in value.split(",")]
    elif isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("endpoint is an empty list; give one worker endpoint or several (e.g. "
                             "['ipc:///tmp/erdn-gpu0.sock', 'ipc:///tmp/erdn-gpu1.sock']), or None for the default")
        bad = [v for v in value if not isinstance(v, str)]
        if bad:
            raise ValueError(f"endpoint entries must be strings, got {bad[0]!r}")
        items = [v.strip() for v in value]
        if any("," in v for v in items):
            raise ValueError(f"endpoint {value!r}: put each endpoint in its own list entry (no commas inside one)")
    else:
        raise ValueError(f"endpoint must be a string, a list of strings or None, got {value!r}")
    if any(not v for v in items):
        raise ValueError(f"endpoint {value!r} has an empty entry; give one worker endpoint or several separated "
                         "by commas (ipc:///tmp/erdn-gpu0.sock,ipc:///tmp/erdn-gpu1.sock)")
    seen: set[str] = set()
    for v in items:
        if v in seen:
            raise ValueError(f"endpoint {v!r} is named twice; name each worker once (one worker per GPU, "
                             "each on its own endpoint)")
        seen.add(v)
    return items


def worker_of(n: int, workers: int, stripe: int) -> int:
    """The worker (index into the endpoint list) that restores frame ``n``."""
    return (n // stripe) % workers


@dataclass(frozen=True)
class Lane:
    """One ModifyFrame instance: frames ``c * cycle + o`` for o in ``offsets``, every cycle c.

    Every lane of a layout has the same number of offsets (Interleave takes one frame of each
    lane in turn); ``slots`` of them are real, the rest repeat the last real one and are never
    requested.
    """

    worker: int
    offsets: tuple[int, ...]
    slots: int

    def frame(self, i: int, cycle: int) -> int:
        """The clip frame that frame ``i`` of this lane is."""
        per_cycle = len(self.offsets)
        return (i // per_cycle) * cycle + self.offsets[i % per_cycle]


@dataclass(frozen=True)
class Layout:
    """Lanes repeating every ``cycle`` frames; clip frame ``c * cycle + o`` is frame
    ``c * block + order[o]`` of the interleaved lanes."""

    cycle: int
    lanes: tuple[Lane, ...]
    order: tuple[int, ...]

    @property
    def block(self) -> int:
        """Frames of the interleaved lanes per cycle of the clip."""
        return len(self.lanes) * len(self.lanes[0].offsets)

    def padded_length(self, length: int) -> int:
        """``length`` rounded up to whole cycles: every lane then has the same number of frames."""
        return -(-length // self.cycle) * self.cycle

    def interleaved_index(self, n: int) -> int:
        """Where clip frame ``n`` sits in the interleaved lanes (what ``order`` encodes)."""
        return (n // self.cycle) * self.block + self.order[n % self.cycle]


def layout(length: int, workers: int, stripe: int, batch: int) -> Layout:
    """The lanes for a clip of ``length`` frames on ``workers`` workers, ``batch`` lanes per worker."""
    if length < 1 or workers < 1 or stripe < 1 or batch < 1:
        raise ValueError(f"layout needs positive sizes, got length={length} workers={workers} "
                         f"stripe={stripe} batch={batch}")
    if workers == 1:
        parts = min(batch, length)
        lanes = tuple(Lane(0, (i,), 1) for i in range(parts))
        return Layout(parts, lanes, tuple(range(parts)))
    cycle = workers * stripe
    per_worker = min(batch, stripe)
    groups = [(k, [k * stripe + i for i in range(stripe) if i % per_worker == j])
              for k in range(workers) for j in range(per_worker)]
    width = max(len(offsets) for _, offsets in groups)
    lanes = tuple(Lane(k, tuple(offsets + [offsets[-1]] * (width - len(offsets))), len(offsets))
                  for k, offsets in groups)
    # Interleave puts slot s of lane l at s * len(lanes) + l within each block.
    where = {offset: slot * len(lanes) + index
             for index, lane in enumerate(lanes) for slot, offset in enumerate(lane.offsets[: lane.slots])}
    return Layout(cycle, lanes, tuple(where[o] for o in range(cycle)))
