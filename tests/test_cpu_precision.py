"""precision='auto' on the CPU: bf16 where the CPU has it natively, and only because its output stays close to fp32."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from worker import backends
from worker.backends import BackendError, TorchBackend, resolve_precision
from worker.registry import default_weights, resolve

# The manifest's default model, so that the guard follows whatever model ships next.
_DEFAULT = default_weights()
SHIPPED = _DEFAULT.path
SHIPPED_FRAMES = _DEFAULT.frames or 5  # the default model's window: 3 (one stage) or 5 (the cascade)
CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)
#: bf16 on the CPU is the default only while the shipped model's output stays this close to fp32's
#: (PSNR of the bf16 output against the fp32 output, float pixels in [0, 1]).
MIN_PSNR_VS_FP32 = 50.0


@pytest.mark.parametrize(("native", "device", "backend", "expected"), [
    (True, CPU, "torch", "bf16"),
    (False, CPU, "torch", "fp32"),
    (True, CPU, "onnx", "fp32"),  # onnxruntime's CPU provider has no bf16 path here
    (True, CUDA, "torch", "fp16"),
    (False, CUDA, "onnx", "fp16"),
])
def test_auto_precision(monkeypatch, native: bool, device: torch.device, backend: str, expected: str) -> None:
    monkeypatch.delenv(backends.CPU_PRECISION_ENV, raising=False)
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", device, backend) == expected


def test_environment_sets_what_auto_is_on_the_cpu(monkeypatch) -> None:
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setenv(backends.CPU_PRECISION_ENV, "fp32")
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision("auto", CUDA) == "fp16"  # the variable is about the CPU only
    monkeypatch.setattr(backends, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setenv(backends.CPU_PRECISION_ENV, "bf16")
    assert resolve_precision("auto", CPU) == "bf16"
    assert resolve_precision("auto", CPU, "onnx") == "fp32"
    monkeypatch.setenv(backends.CPU_PRECISION_ENV, "fp16")
    with pytest.raises(BackendError, match="ERDN_CPU_PRECISION='fp16' is not a CPU precision; set it to fp32"):
        resolve_precision("auto", CPU)


def test_explicit_precisions_and_refusals() -> None:
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"  # works on any CPU; native bf16 only makes it fast
    with pytest.raises(BackendError, match="needs a CUDA device"):
        resolve_precision("fp16", CPU)
    with pytest.raises(BackendError, match="onnx backend"):
        resolve_precision("bf16", CPU, "onnx")


def test_native_bf16_follows_cpuinfo() -> None:
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").is_file() else []
    assert backends.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def _textured_window(h: int, w: int) -> torch.Tensor:
    """Five frames of a photograph panning 3 px per frame, box-blurred along the motion: (1, 5, 3, H, W) in [0, 1]."""
    from skimage import data

    photo = torch.from_numpy(data.astronaut()[:256, 64:320].copy()).permute(2, 0, 1).float() / 255
    frames = []
    for t in range(5):
        shifted = torch.stack([photo[:, 40:40 + h, 40 + 3 * t + d:40 + 3 * t + d + w] for d in range(4)])
        frames.append(shifted.mean(0))
    return torch.stack(frames)[None]


def test_bf16_output_stays_within_tolerance_of_fp32_on_shipped_weights() -> None:
    """The reason 'auto' may pick bf16: on the trained weights the model's output barely moves."""
    weights = resolve(None, str(SHIPPED))
    window = _textured_window(96, 128)
    out = {}
    for precision in ("fp32", "bf16"):
        backend = TorchBackend(weights, CPU, precision)
        if SHIPPED_FRAMES == 3:  # one stage on the centre triplet
            out[precision] = backend.stage1(window[:, 1:4]).clamp(0, 1).numpy()
            continue
        s1 = torch.cat([backend.stage1(window[:, i:i + 3]) for i in range(3)])  # three (1, 3, H, W) outputs
        out[precision] = backend.stage2(s1[None]).clamp(0, 1).numpy()
    mse = float(np.mean((out["bf16"].astype(np.float64) - out["fp32"]) ** 2))
    psnr = math.inf if mse == 0 else 10 * math.log10(1 / mse)
    assert mse > 0, "bf16 autocast changed nothing: it did not run in bf16"
    assert psnr >= MIN_PSNR_VS_FP32, f"bf16 output is {psnr:.1f} dB from fp32 (tolerance {MIN_PSNR_VS_FP32} dB)"


def test_a_worker_on_defaults_serves_auto_sessions_in_its_cpu_precision(isolated_runtime_dir, monkeypatch) -> None:
    """A real worker process (inheriting no ERDN_CPU_PRECISION) opens a precision='auto' session in what
    cpu_auto_precision() picks here, and its frame is the model's within the bf16 tolerance."""
    from conftest import new_endpoint, spawn_worker, stop_worker

    from erdn_vs.client import WorkerClient
    from worker.model import load_model

    monkeypatch.delenv(backends.CPU_PRECISION_ENV, raising=False)
    expected = backends.cpu_auto_precision()
    endpoint = new_endpoint(isolated_runtime_dir, "auto-precision")
    proc = spawn_worker(endpoint)
    try:
        first = (5 - SHIPPED_FRAMES) // 2  # the centred window of the model's length
        window = _textured_window(48, 64)[0, first:first + SHIPPED_FRAMES].numpy()  # (frames, 3, H, W)
        centre, indices = SHIPPED_FRAMES // 2, tuple(range(SHIPPED_FRAMES))
        with WorkerClient(endpoint, autostart=False, timeout=120) as client:
            with client.open_session(frames=SHIPPED_FRAMES, width=64, height=48, sample_type="float",
                                     weights=str(SHIPPED)) as session:
                out = session.process(centre, indices, {n: window[n] for n in indices})
                served = session.info["precision"]
    finally:
        stop_worker(proc)
    assert served == expected
    with torch.inference_mode():
        reference = load_model(SHIPPED)(torch.from_numpy(window)[None])[0].numpy()
    mse = float(np.mean((out.astype(np.float64) - reference) ** 2))
    assert 10 * math.log10(1 / max(mse, 1e-20)) >= MIN_PSNR_VS_FP32
    if expected == "fp32":
        assert np.abs(out - reference).max() <= 1e-5
