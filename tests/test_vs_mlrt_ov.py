"""vs-mlrt's OpenVINO filter (`vapoursynth-mlrt-ov`, plugin `ov`) runs the exported window graph on the CPU.

The route docs/vs-mlrt.md gives Intel (and any x86) users: `erdn export W --onnx DIR --dcn gridsample`, then
`core.ov.Model(window_clips, network_path="DIR/window.onnx", device="CPU")`. The reference is the torch model on
the same window, as in tests/test_export.py's vs-mlrt ORT test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from worker.export import main as export_main
from worker.model import ERDN, build_model, save_model

vs = pytest.importorskip("vapoursynth")
core = vs.core
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not hasattr(core, "ov"), reason="vapoursynth-mlrt-ov is not installed"),
]
H, W = 21, 35  # not multiples of 8: the graph pads and crops itself
F32 = {"INFERENCE_PRECISION_HINT": "f32"}  # OpenVINO's CPU plugin computes in bf16 where the CPU has it


@pytest.fixture(scope="module")
def model() -> ERDN:
    """A tiny 5-frame model whose offset convolutions are not zero, so every deformable convolution deforms."""
    torch.manual_seed(15)
    model = build_model("tiny", frames=5)
    for name, p in model.named_parameters():
        if "conv_offset" in name:
            torch.nn.init.normal_(p, std=0.2)
    return model.eval()


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory) -> dict[str, Path]:
    """window.onnx of each --dcn mode, through the real `erdn export`."""
    root = tmp_path_factory.mktemp("ov")
    weights = save_model(model, root / "tiny5.safetensors")
    out = {}
    for dcn in ("gridsample", "deformconv"):
        assert export_main([str(weights), "--onnx", str(root / dcn), "--dcn", dcn]) == 0
        out[dcn] = root / dcn / "window.onnx"
    return out


@pytest.fixture(scope="module")
def window() -> np.ndarray:
    return np.random.default_rng(0).random((5, 3, H, W), dtype=np.float32)


def rgbs_clip(rgb: np.ndarray) -> vs.VideoNode:
    blank = core.std.BlankClip(format=vs.RGBS, width=W, height=H, length=1)

    def fill(n: int, f: vs.VideoFrame) -> vs.VideoFrame:
        out = f.copy()
        for plane in range(3):
            np.asarray(out[plane])[:] = rgb[plane]
        return out

    return core.std.ModifyFrame(blank, blank, fill)


def run_ov(graph: Path, window: np.ndarray, **kwargs) -> np.ndarray:
    out = core.ov.Model([rgbs_clip(f) for f in window], network_path=str(graph), device="CPU", **kwargs)
    assert (out.width, out.height, out.format.id) == (W, H, vs.RGBS)
    frame = out.get_frame(0)
    return np.stack([np.asarray(frame[p]) for p in range(3)])


def torch_output(model: ERDN, window: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(window)[None])[0].numpy()


def test_gridsample_window_matches_torch(model, exported, window) -> None:
    want = torch_output(model, window)
    assert np.abs(run_ov(exported["gridsample"], window, config=lambda: F32) - want).max() <= 1e-4
    # OpenVINO's own default precision (bf16 on CPUs with native bf16, else f32): close, not exact
    assert np.abs(run_ov(exported["gridsample"], window) - want).max() <= 1e-2


def test_deformconv_window_is_refused_in_one_error_or_matches(model, exported, window) -> None:
    """The default export's ONNX DeformConv (opset 19): this OpenVINO has no conversion for it (docs/vs-mlrt.md
    says to export with --dcn gridsample). Should a later one read it, it must give the same output."""
    try:
        got = run_ov(exported["deformconv"], window, config=lambda: F32)
    except vs.Error as e:
        assert "DeformConv" in str(e)
    else:
        assert np.abs(got - torch_output(model, window)).max() <= 1e-4
