"""``erdn_vs.deblur``: the public VapourSynth function.

The graph: source -> RGB (formats.to_rgb) -> frames n-r..n+r as shifted clips (so VapourSynth
prefetches them; no get_frame inside a callback) -> std.ModifyFrame, whose callback picks the
window (windows.temporal_window, from the neighbours' scene-change flags) and asks the worker
to restore it -> back to the source format -> the source's frame properties. The ModifyFrame
is split into lanes (``batch`` per worker; spread.py) so that several requests can be in flight,
on every worker when ``endpoint`` names several.

The worker session opens on the first frame request, not at script time, so evaluating a
script (vspipe --info, a vspreview reload) costs only source frame 0 (read for its colour
properties) until frames are wanted.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import weakref
from typing import Any

import vapoursynth as vs

from . import formats, spread, windows
from . import protocol as P
from .manifest import ManifestError, choose_model, load_manifest

PREFIX = "erdn_vs.deblur: "
RETRY_AFTER_S = 5.0  # a failed session open is reported as is to frame requests within this time


def deblur(
    clip: vs.VideoNode,
    *,
    model: str | None = None,
    weights: str | None = None,
    frames: int | None = None,
    tile: int | tuple[int, int] | None = None,
    overlap: int = 16,
    device: str = "auto",
    precision: str = "auto",
    endpoint: str | list[str] | tuple[str, ...] | None = None,
    scene_change: bool = True,
    autostart: bool = True,
    timeout: float = 60.0,
    batch: int = 2,
    stripe: int = 8,
) -> vs.VideoNode:
    """Deblur ``clip`` with ERDN on the persistent worker.

    Every parameter (type, default, allowed values) is declared in plugin_manifest.yaml.
    Returns a clip of the same format, size, length, frame rate and frame properties.
    Bad arguments or clips raise vapoursynth.Error at once; an unreachable worker raises it
    on the first frame request, naming the endpoint and the command that starts the worker.
    ``endpoint`` may name several workers (one per GPU): frames go to them in stripes of
    ``stripe`` consecutive frames, round-robin.

    Scene cuts: a window never takes frames across a cut marked on the clip's frames, by
    ``_SceneChangePrev=1`` (this frame starts a scene) or ``_SceneChangeNext=1`` (the next one does).
    Source plugins set neither. ``erdn deblur INPUT --script`` prints a script with the cuts ffmpeg's
    scdet found in INPUT already marked; in your own script, mark them before deblur with a scene-change
    plugin (e.g. ``clip = core.scxvid.Scxvid(clip)`` from ``pip install vapoursynth-scxvid``), or from a
    list of frame numbers with ``std.ModifyFrame`` as that script does. GRAY clips are restored as RGB
    with equal planes and come back GRAY.
    """
    try:
        manifest = load_manifest()
        args = manifest.check_arguments("deblur", {
            "clip": clip, "model": model, "weights": weights, "frames": frames, "tile": tile,
            "overlap": overlap, "device": device, "precision": precision,
            "scene_change": scene_change, "autostart": autostart, "timeout": timeout, "batch": batch,
            "stripe": stripe,
        })
        # endpoint may name several workers: each one is checked against the manifest's pattern.
        endpoints = spread.split_endpoints(endpoint)
        endpoint_param = manifest.params("deblur")["endpoint"]
        if endpoints is None:  # the default: resolved at the first frame, but a path that cannot work fails here
            P.default_endpoint()
            endpoints = [None]
        else:
            endpoints = [endpoint_param.check(e) for e in endpoints]
        formats.check_clip(clip)
        first = dict(clip.get_frame(0).props)  # the one frame read at script time: fields and colour
        formats.check_progressive(first)
        model, weights, frames = _choose_model(args["model"], args["weights"], args["frames"])
    except (ValueError, ManifestError) as e:
        raise vs.Error(PREFIX + str(e)) from None

    core = vs.core
    colour = formats.colour_from_props(first, clip.format, clip.width, clip.height)
    rgb = formats.to_rgb(clip, colour)
    length = clip.num_frames
    r = windows.radius(frames)
    neighbours = [_shifted(rgb, d) for d in range(-r, r + 1)]
    blank = core.std.BlankClip(rgb, format=vs.RGBS, keep=True)
    session_args = {"frames": frames, "width": clip.width, "height": clip.height,
                    "sample_type": formats.sample_type(rgb.format.id), "model": model, "weights": weights,
                    "device": args["device"], "precision": args["precision"], "tile": args["tile"],
                    "overlap": args["overlap"]}
    # One session per worker, each opened on the first frame that worker is asked for.
    restorers = [_Restorer(client_args={"endpoint": e, "autostart": args["autostart"], "timeout": args["timeout"]},
                           session_args=session_args) for e in endpoints]
    use_cuts = args["scene_change"]

    def restore_frame(n: int, f: list[vs.VideoFrame], restorer: _Restorer) -> vs.VideoFrame:
        sources = windows.clamped_offsets(n, length, frames)
        received = dict(zip(sources, f[1:], strict=True))  # duplicates at the edges are the same frame
        if use_cuts:
            cut = windows.cuts_from_flags(
                {k: fr.props.get("_SceneChangePrev", 0) for k, fr in received.items()},
                {k: fr.props.get("_SceneChangeNext", 0) for k, fr in received.items()},
            )
        else:
            cut = windows.no_cuts
        window = windows.temporal_window(n, length, frames, cut)
        for k in sorted(set(window)):  # frame 0 was checked at script time; a later frame may be interlaced
            try:
                formats.check_progressive(received[k].props, f"source frame {k}")
            except ValueError as e:
                raise vs.Error(f"{PREFIX}frame {n}: {e}") from None
        planes = {k: formats.frame_to_array(received[k]) for k in set(window)}
        restored = restorer.process(n, window, planes)
        out = f[0].copy()
        formats.write_array(out, restored)
        return out

    # VapourSynth runs one Python callback of a filter instance at a time (measured: four 0.5 s
    # callbacks take 2.0 s with 2 or 4 threads). To have up to ``batch`` requests in flight per
    # worker, so it can batch them and overlap its compute with our conversions, the clip is split
    # into lanes, each with its own ModifyFrame: ``batch`` interleaved parts for one worker; for
    # several, ``batch`` lanes per worker over its stripes of consecutive frames (spread.py).
    plan = spread.layout(length, len(endpoints), args["stripe"], args["batch"])
    extra = plan.padded_length(length) - length  # whole cycles: every lane gets as many frames
    inputs = [c + c[-1] * extra if extra else c for c in (blank, *neighbours)]  # the padding is never requested

    def lane_of(c: vs.VideoNode, lane: spread.Lane) -> vs.VideoNode:
        return c if plan.cycle == 1 else core.std.SelectEvery(c, plan.cycle, lane.offsets, modify_duration=False)

    def lane_callback(lane: spread.Lane):
        restorer = restorers[lane.worker]
        return lambda n, f: restore_frame(lane.frame(n, plan.cycle), f, restorer)

    pieces = [core.std.ModifyFrame(lane_of(inputs[0], lane), [lane_of(c, lane) for c in inputs], lane_callback(lane))
              for lane in plan.lanes]
    restored = pieces[0] if len(pieces) == 1 else core.std.Interleave(pieces, modify_duration=False)
    if plan.order != tuple(range(plan.block)):
        restored = core.std.SelectEvery(restored, plan.block, plan.order, modify_duration=False)
    restored = restored[:length]
    out = formats.from_rgb(restored, clip, colour)
    return core.std.CopyFrameProps(out, clip)


def _document_parameters() -> None:
    """Append the manifest's parameter table to deblur's docstring, for help(erdn_vs.deblur)."""
    try:
        params = load_manifest().functions["deblur"]
    except (ManifestError, KeyError):
        return  # deblur() itself reports the broken manifest
    lines = [f"        {p.name} ({p.type}{', default ' + repr(p.default) if not p.required else ''}): {p.doc}"
             for p in params]
    deblur.__doc__ = (deblur.__doc__ or "") + "\n    Parameters:\n" + "\n".join(lines) + "\n"


_document_parameters()


def _choose_model(model: str | None, weights: str | None,
                  frames: int | None) -> tuple[str | None, str | None, int]:
    """Exactly one of (manifest model name, absolute weights path), and the window: ``frames``
    checked against the model's, or the model's own when ``frames`` is None."""
    choice = choose_model(model, weights)
    if frames is not None and choice.frames is not None and choice.frames != frames:
        raise ValueError(f"{choice.label} is a frames={choice.frames} model; "
                         f"pass frames={choice.frames} (or leave frames out)")
    return choice.model, choice.weights, frames or choice.frames or 5


def _shifted(clip: vs.VideoNode, offset: int) -> vs.VideoNode:
    """Frame n of the result is frame clamp(n + offset) of ``clip`` (same length)."""
    length = clip.num_frames
    k = min(abs(offset), length)
    if offset == 0:
        return clip
    if offset < 0:
        pad = clip[0] * k
        return pad + clip[: length - k] if length > k else pad
    pad = clip[-1] * k
    return clip[k:] + pad if length > k else pad


class _Restorer:
    """One clip's worker session: opened on first use, shared by VapourSynth's threads,
    closed when the clip's graph is freed (the worker also expires idle sessions)."""

    def __init__(self, client_args: dict[str, Any], session_args: dict[str, Any]) -> None:
        self._client_args = client_args
        self._session_args = session_args
        self._lock = threading.Lock()
        # Held in a list the finalizer can reach without keeping ``self`` alive.
        self._open: list = []  # [client, session] once opened
        self._failure: tuple[float, Exception] | None = None  # (when, error) of the last failed open
        weakref.finalize(self, _close, self._open)

    def process(self, n: int, window: tuple[int, ...], planes: dict) -> Any:
        from .client import WorkerError

        try:
            return self._session().process(n, window, planes)
        except (WorkerError, ValueError) as e:
            raise vs.Error(f"{PREFIX}frame {n}: {e}") from None

    def _session(self) -> Any:
        if self._open:
            return self._open[1]
        with self._lock:
            if self._open:
                return self._open[1]
            # VapourSynth runs Python frame callbacks one at a time and vspipe has several frames
            # in flight: without this, each would wait out its own connection timeout in turn.
            # Requests a little later (after the user started the worker) try again.
            if self._failure is not None and time.monotonic() - self._failure[0] < RETRY_AFTER_S:
                raise self._failure[1]
            from .client import WorkerClient, WorkerError

            try:
                client = WorkerClient(**self._client_args)
            except ValueError as e:
                self._failure = (time.monotonic(), e)
                raise
            try:
                session = client.open_session(**self._session_args)
            except (WorkerError, ValueError) as e:
                client.close()
                self._failure = (time.monotonic(), e)
                raise
            self._open.extend([client, session])
            _report_session(client, session)
            return session


#: Set by ``erdn deblur`` for the vspipe it runs: each opened session is reported on stderr as one
#: ``REPORT_PREFIX`` line of JSON, which it reads (to say the device once, and to close the session
#: itself when the render is interrupted). Unset (a script in vspreview, an NLE), nothing is written.
REPORT_ENV = "ERDN_REPORT_SESSIONS"
REPORT_PREFIX = "erdn-session: "


def _report_session(client: Any, session: Any) -> None:
    if not os.environ.get(REPORT_ENV):
        return
    info = {k: session.info.get(k) for k in ("device", "precision", "backend", "model", "weights")}
    info.update(endpoint=client.endpoint, session=session.id)
    sys.stderr.write(REPORT_PREFIX + json.dumps(info) + "\n")
    sys.stderr.flush()


def _close(opened: list) -> None:
    if opened:
        client, session = opened
        opened.clear()
        try:
            session.close()
        finally:
            client.close()
