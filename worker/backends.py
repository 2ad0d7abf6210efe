"""Backends run one ERDN stage: (B, 3, 3, H, W) float32 triplets -> (B, 3, H, W) float32 frames.

``torch``: the network itself, on CUDA (fp32, fp16 or bf16 autocast) or the CPU (fp32 or bf16 autocast).
``onnx``: onnxruntime on the stage1.onnx / stage2.onnx graphs that ``erdn export`` writes
(inputs (B, 9, H, W): three RGB frames stacked on channels), with the TensorRT, CUDA or CPU
execution provider. Exported graphs are cached per user, keyed by the weights' sha256.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from .registry import ResolvedWeights

BACKENDS = ("torch", "onnx")


class BackendError(ValueError):
    """A device, precision or backend the worker cannot honour; the message says what to do."""


class Backend(Protocol):
    name: str
    device: torch.device
    precision: str
    frames: int
    stride: int  # H and W of every stage input are multiples of this (ERDNConfig.stride)

    def stage1(self, triplets: Tensor) -> Tensor: ...

    def stage2(self, triplets: Tensor) -> Tensor: ...


def resolve_device(requested: str, default: str = "auto") -> torch.device:
    """'auto' -> the worker's default device, which 'auto' makes CUDA when present, else the CPU."""
    name = default if requested == "auto" else requested
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BackendError(f"device {name!r} was asked for but this worker sees no CUDA GPU; use device='cpu'")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise BackendError(f"device {name!r}: this worker sees {torch.cuda.device_count()} GPU(s)")
        return torch.device("cuda", index)
    if name != "cpu":
        raise BackendError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX-512 BF16 or AMX-BF16), from /proc/cpuinfo's flags.

    False where /proc/cpuinfo is missing (not Linux): bf16 then stays opt-in."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


#: Environment variable: what precision="auto" becomes on the CPU ("fp32" or "bf16"), overriding the choice
#: by the CPU's features; read by each worker process (autostarted ones inherit it).
CPU_PRECISION_ENV = "ERDN_CPU_PRECISION"


def cpu_auto_precision(backend: str = "torch") -> str:
    """What precision="auto" is on this CPU: ``$ERDN_CPU_PRECISION`` when set, else bf16 for the torch backend
    where the CPU has native bf16 (lite 640x360 at default threads 1.2x faster; output within 71.7 dB PSNR of
    fp32 on the shipped weights, ``benchmarks/cpu_bf16.py``, docs/speed.md), else fp32. The onnx backend has
    no bf16: fp32.

    Raises BackendError for a value of ``$ERDN_CPU_PRECISION`` other than fp32 and bf16."""
    chosen = os.environ.get(CPU_PRECISION_ENV, "")
    if chosen and chosen not in ("fp32", "bf16"):
        raise BackendError(f"{CPU_PRECISION_ENV}={chosen!r} is not a CPU precision; set it to fp32 or bf16, "
                           "or unset it")
    if backend == "onnx":
        return "fp32"
    return chosen or ("bf16" if cpu_has_native_bf16() else "fp32")


def resolve_precision(precision: str, device: torch.device, backend: str = "torch") -> str:
    """The precision a stage runs in: 'fp32', 'fp16' or 'bf16' (autocast).

    'auto' is fp16 on CUDA and ``cpu_auto_precision(backend)`` on the CPU. fp16 needs CUDA; the onnx backend
    has no bf16. Raises BackendError for a precision this device or backend cannot run."""
    if precision == "auto":
        return "fp16" if device.type == "cuda" else cpu_auto_precision(backend)
    if precision == "fp16" and device.type != "cuda":
        raise BackendError("precision 'fp16' needs a CUDA device; use precision='fp32' (or 'bf16') on the CPU")
    if precision == "bf16" and backend == "onnx":
        raise BackendError("the onnx backend runs fp32 or fp16 (TensorRT); use precision='fp32' or 'fp16', "
                           "or start the worker with --backend torch for bf16")
    return precision


_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend:
    name = "torch"

    def __init__(self, weights: ResolvedWeights, device: torch.device, precision: str) -> None:
        from .model import load_model

        self.model = load_model(weights.path, device)
        self.device = device
        self.precision = precision
        self.frames = self.model.frames
        self.stride = self.model.stride

    def _run(self, stage, x: Tensor) -> Tensor:
        with torch.inference_mode():
            if self.precision in _AUTOCAST:
                with torch.autocast(self.device.type, dtype=_AUTOCAST[self.precision]):
                    return stage(x).out.float()
            return stage(x).out.float()

    def stage1(self, triplets: Tensor) -> Tensor:
        return self._run(self.model.run_stage1, triplets)

    def stage2(self, triplets: Tensor) -> Tensor:
        return self._run(self.model.run_stage2, triplets)


def onnx_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "erdn-vs" / "onnx"


def _providers(device: torch.device, precision: str) -> list:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    chosen: list = []
    index = device.index or 0
    if "TensorrtExecutionProvider" in available:
        trt_cache = onnx_cache_dir() / "trt"
        trt_cache.mkdir(parents=True, exist_ok=True)
        chosen.append(("TensorrtExecutionProvider", {
            "device_id": index, "trt_fp16_enable": precision == "fp16",
            "trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_cache)}))
    if "CUDAExecutionProvider" in available:
        chosen.append(("CUDAExecutionProvider", {"device_id": index}))
    if not chosen:
        raise BackendError("onnxruntime has no CUDA or TensorRT provider here; use device='cpu' or backend torch")
    return [*chosen, "CPUExecutionProvider"]


class OnnxBackend:
    """onnxruntime on the exported stage graphs; tensors cross as float32 numpy arrays."""

    name = "onnx"

    def __init__(self, weights: ResolvedWeights, device: torch.device, precision: str) -> None:
        import onnxruntime as ort

        from .model.weights import read_metadata

        if precision == "bf16":
            raise BackendError("the onnx backend runs fp32 or fp16 (TensorRT); use precision='fp32' or 'fp16'")
        self.device = device
        self.precision = precision
        paths, self.frames = exported_graphs(weights)
        self.stride = read_metadata(weights.path)["config"].stride
        options = ort.SessionOptions()
        options.log_severity_level = 3
        threads = torch.get_num_threads()
        options.intra_op_num_threads = threads
        providers = _providers(device, precision)
        self._sessions = [ort.InferenceSession(str(p), options, providers=providers) for p in paths]
        self._input = [s.get_inputs()[0].name for s in self._sessions]

    def _run(self, which: int, triplets: Tensor) -> Tensor:
        b, t, c, h, w = triplets.shape
        x = triplets.reshape(b, t * c, h, w).detach().float().cpu().numpy()
        (y,) = self._sessions[which].run(None, {self._input[which]: x})[:1]
        return torch.from_numpy(y).to(self.device).float()

    def stage1(self, triplets: Tensor) -> Tensor:
        return self._run(0, triplets)

    def stage2(self, triplets: Tensor) -> Tensor:
        if len(self._sessions) < 2:
            raise BackendError("this model has frames=3: it has no stage 2")
        return self._run(1, triplets)


def exported_graphs(weights: ResolvedWeights) -> tuple[list[Path], int]:
    """stage1.onnx (and stage2.onnx for frames=5) for these weights, exported once and cached by sha256."""
    from .model.weights import read_metadata

    frames = read_metadata(weights.path)["frames"]
    out_dir = onnx_cache_dir() / weights.sha256[:32]
    names = ["stage1.onnx"] + (["stage2.onnx"] if frames == 5 else [])
    paths = [out_dir / n for n in names]
    if not all(p.is_file() for p in paths):
        try:
            from .export import export_stages
        except ImportError as e:
            raise BackendError(f"the onnx backend needs worker.export ({e}); use --backend torch") from None
        import shutil

        # Export beside the cache entry, then move it in whole: a crash never leaves half a graph there.
        tmp = out_dir.with_name(out_dir.name + f".partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        export_stages(weights.path, tmp)
        try:
            tmp.replace(out_dir)
        except OSError:  # another worker exported the same weights first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise BackendError(f"ONNX export did not write {missing[0]}")
    return paths, frames


def load_backend(kind: str, weights: ResolvedWeights, device: torch.device, precision: str) -> Backend:
    if kind == "torch":
        return TorchBackend(weights, device, precision)
    if kind == "onnx":
        return OnnxBackend(weights, device, precision)
    raise BackendError(f"unknown backend {kind!r}; choose one of {BACKENDS}")
