"""Helpers shared by the test .vpy scripts (run by vspipe) and tests/test_vspipe.py (in-process).

Imported inside vspipe: VapourSynth and numpy only, never torch.
"""

from __future__ import annotations

import importlib.abc
import sys

import numpy as np
import vapoursynth as vs

SCENE_JUMP = 40.0  # phase jump of the pattern at a scene cut, so mixing two scenes shows


class _NoTorch(importlib.abc.MetaPathFinder):
    """Any attempt to import torch in this process fails loudly."""

    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            sys.stderr.write("erdn-test: torch import attempted\n")
            raise ImportError("the VapourSynth process must not import torch")
        return None


def forbid_torch() -> None:
    if "torch" in sys.modules:
        sys.stderr.write("erdn-test: torch was already imported\n")
    sys.meta_path.insert(0, _NoTorch())


def report_modules() -> None:
    sys.stderr.write(f"erdn-test: torch in sys.modules: {'torch' in sys.modules}\n")


def pattern_clip(fmt: int, length: int, width: int, height: int, cut_next: int = -1) -> vs.VideoNode:
    """A moving smooth texture; frame n has prop Stamp=n; frame ``cut_next`` has _SceneChangeNext=1."""
    core = vs.core
    base = core.std.BlankClip(width=width, height=height, format=fmt, length=length)
    info = base.format

    def fill(n: int, f: vs.VideoFrame) -> vs.VideoFrame:
        out = f.copy()
        phase = 2.0 * n + (SCENE_JUMP if 0 <= cut_next < n else 0.0)
        for p in range(info.num_planes):
            a = np.asarray(out[p])
            yy, xx = np.mgrid[0 : a.shape[0], 0 : a.shape[1]].astype(np.float64)
            v = 0.5 + 0.4 * np.sin((xx + phase + 5 * p) / 3.5) * np.cos((yy - 0.5 * phase) / 4.5)
            if info.sample_type == vs.INTEGER:
                a[:] = np.round(v * ((1 << info.bits_per_sample) - 1)).astype(a.dtype)
            elif info.color_family == vs.YUV and p > 0:
                a[:] = v - 0.5
            else:
                a[:] = v
        out.props["Stamp"] = n
        if n == cut_next:
            out.props["_SceneChangeNext"] = 1
        return out

    return core.std.ModifyFrame(base, base, fill)


def check_props(out: vs.VideoNode, src: vs.VideoNode) -> vs.VideoNode:
    """Pass ``out`` through, failing the render if any frame's props differ from the source frame's."""

    def compare(n: int, f: list[vs.VideoFrame]) -> vs.VideoFrame:
        got, want = dict(f[0].props), dict(f[1].props)
        if got != want:
            raise vs.Error(f"erdn-test: props of frame {n} differ: {got} != {want}")
        sys.stderr.write(f"erdn-test: props ok {n}\n")
        return f[0]

    return vs.core.std.ModifyFrame(out, [out, src], compare)
