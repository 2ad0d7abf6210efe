"""``erdn export``: ERDN weights as ONNX graphs.

Three graphs, all float32 RGB in [0, 1], H and W dynamic:

- ``stage1.onnx``: ``in`` (B, 9, H, W), a triplet's three frames stacked on channels
  -> ``out`` (B, 3, H, W), the restored centre. H and W must be multiples of 8.
- ``stage2.onnx`` (frames=5 only): the three stage-1 outputs (t-1, t, t+1) stacked the
  same way -> the final frame. What the worker's onnx backend runs, caching stage 1.
- ``window.onnx``: the whole cascade for vs-mlrt and other per-frame runtimes: ``in``
  (1, 3*T, H, W), the T frames of a window stacked on channels -> ``out`` (1, 3, H, W).
  Any H and W of at least 8: the graph reflect-pads to multiples of 8 and crops back.

Deformable convolutions are written as the standard ONNX ``DeformConv`` op (opset 19;
onnxruntime >= 1.20, TensorRT >= 10.1) or, with ``--dcn gridsample``, as GridSample +
MatMul (opset 17) for runtimes without it. The export uses the TorchScript-based
exporter (``dynamo=False``): it writes DeformConv from a ``symbolic`` method without
extra dependencies.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .model import ERDN, load_model
from .model.dcn import ONNX_DCN_MODES, ModulatedDeformConvPack
from .model.weights import WeightsError

#: Default opset per --dcn mode: DeformConv appeared in opset 19, GridSample in 16.
DEFAULT_OPSET = {"deformconv": 19, "gridsample": 17}
MIN_OPSET = {"deformconv": 19, "gridsample": 16}
#: The newest opset the TorchScript exporter writes.
MAX_OPSET = 20


class ExportError(ValueError):
    """An export that cannot be done as asked; the message says what to do."""


class StageGraph(nn.Module):
    """One stage on (B, 9, H, W) stacked triplets -> (B, 3, H, W)."""

    def __init__(self, model: ERDN, stage: int) -> None:
        super().__init__()
        self.model = model
        self.stage = stage

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        triplet = x.reshape(b, 3, 3, h, w)
        run = self.model.run_stage1 if self.stage == 1 else self.model.run_stage2
        return run(triplet).out


class WindowGraph(nn.Module):
    """The whole cascade on (B, 3*T, H, W) -> (B, 3, H, W), padding to multiples of the model's stride inside."""

    def __init__(self, model: ERDN) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        # Always pad (possibly by 0) so that the traced graph has no branch on the size.
        stride = self.model.stride
        pad_h = (stride - h % stride) % stride
        pad_w = (stride - w % stride) % stride
        padded = F.pad(x, [0, pad_w, 0, pad_h], mode="reflect")
        window = padded.reshape(b, self.model.frames, 3, h + pad_h, w + pad_w)
        return self.model.cascade(window).out[:, :, :h, :w]


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def _dcn_written_as(model: nn.Module, dcn: str) -> Iterator[None]:
    layers = [m for m in model.modules() if isinstance(m, ModulatedDeformConvPack)]
    before = [m.onnx_op for m in layers]
    for m in layers:
        m.onnx_op = dcn
    try:
        yield
    finally:
        for m, op in zip(layers, before, strict=True):
            m.onnx_op = op


@contextmanager
def _one_thread() -> Iterator[None]:
    """Tracing runs the model once on a tiny example: extra threads only add waiting (5x slower on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _check_options(dcn: str, opset: int | None) -> int:
    if dcn not in ONNX_DCN_MODES:
        raise ExportError(f"unknown --dcn {dcn!r}; choose one of {', '.join(ONNX_DCN_MODES)}")
    opset = DEFAULT_OPSET[dcn] if opset is None else int(opset)
    if not MIN_OPSET[dcn] <= opset <= MAX_OPSET:
        raise ExportError(
            f"--dcn {dcn} needs an opset from {MIN_OPSET[dcn]} to {MAX_OPSET}, got {opset}"
            + ("; use --dcn gridsample for older runtimes" if dcn == "deformconv" else "")
        )
    return opset


def export_graph(
    graph: nn.Module,
    example: Tensor,
    path: str | Path,
    *,
    dcn: str = "deformconv",
    opset: int | None = None,
    dynamic_batch: bool = True,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write ``graph`` (one input ``in``, one output ``out``, H and W dynamic) as ONNX."""
    import onnx

    opset = _check_options(dcn, opset)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_batch else {2: "height", 3: "width"}
    graph = graph.eval()
    tmp = path.with_name(path.name + ".partial")
    with _dcn_written_as(graph, dcn), _one_thread(), torch.no_grad(), warnings.catch_warnings():
        # Shape checks in the model become constants in the trace (TracerWarning), and the
        # TorchScript exporter announces its deprecation: neither matters for these graphs.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx")
        torch.onnx.export(
            graph,
            (example,),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=["in"],
            output_names=["out"],
            dynamic_axes={"in": axes, "out": axes},
            # Keep the DeformConv autograd.Function as one node for its symbolic (inlining it
            # crashes the TorchScript peephole pass).
            autograd_inlining=False,
        )
    proto = onnx.load(str(tmp))
    for key, value in {"dcn": dcn, "opset": str(opset), **(metadata or {})}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    tmp.replace(path)
    return path


def _weights_metadata(model: ERDN, weights_path: str | Path | None) -> dict[str, str]:
    meta = {"preset": model.preset, "frames": str(model.frames), "producer": "erdn-vs"}
    if weights_path is not None:
        meta["weights_file"] = Path(weights_path).name
        meta["weights_sha256"] = file_sha256(weights_path)
    return meta


def export_model(
    model: ERDN,
    out_dir: str | Path,
    *,
    dcn: str = "deformconv",
    opset: int | None = None,
    weights_path: str | Path | None = None,
    window: bool = True,
) -> list[Path]:
    """Write stage1.onnx, stage2.onnx (frames=5) and window.onnx for ``model`` into ``out_dir``."""
    _check_options(dcn, opset)
    out_dir = Path(out_dir)
    model = model.float().cpu().eval()
    meta = _weights_metadata(model, weights_path)
    # Example sizes only shape the trace; every graph keeps H and W dynamic.
    stride = model.stride
    stage_example = torch.rand(1, 9, 2 * stride, 3 * stride)
    written = [
        export_graph(StageGraph(model, 1), stage_example, out_dir / "stage1.onnx", dcn=dcn, opset=opset,
                     metadata={**meta, "graph": "stage1", "input": "(B, 9, H, W): frames t-1, t, t+1 stacked"})
    ]
    if model.frames == 5:
        written.append(
            export_graph(StageGraph(model, 2), stage_example, out_dir / "stage2.onnx", dcn=dcn, opset=opset,
                         metadata={**meta, "graph": "stage2",
                                   "input": "(B, 9, H, W): stage-1 outputs at t-1, t, t+1 stacked"})
        )
    if window:
        t = model.frames
        example = torch.rand(1, 3 * t, 2 * stride + 3, 3 * stride + 5)
        written.append(
            export_graph(WindowGraph(model), example, out_dir / "window.onnx", dcn=dcn, opset=opset,
                         dynamic_batch=False,
                         metadata={**meta, "graph": "window", "input": f"(1, {3 * t}, H, W): {t} frames stacked"})
        )
    return written


def export_stages(
    weights_path: str | Path, out_dir: str | Path, *, dcn: str = "deformconv", opset: int | None = None
) -> list[Path]:
    """stage1.onnx (and stage2.onnx for frames=5) for a weights file: what the worker's onnx backend runs."""
    model = load_model(weights_path)
    return export_model(model, out_dir, dcn=dcn, opset=opset, weights_path=weights_path, window=False)


def export_weights(
    weights_path: str | Path, out_dir: str | Path, *, dcn: str = "deformconv", opset: int | None = None
) -> list[Path]:
    """All graphs (stages and window) for a weights file."""
    model = load_model(weights_path)
    return export_model(model, out_dir, dcn=dcn, opset=opset, weights_path=weights_path)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="erdn export",
        description="Export ERDN weights as ONNX graphs: stage1.onnx, stage2.onnx (frames=5) and window.onnx "
        "(the whole cascade for vs-mlrt: input (1, 3*T, H, W), output (1, 3, H, W)).",
    )
    parser.add_argument("weights", help="an erdn-vs .safetensors weights file")
    parser.add_argument("--onnx", required=True, metavar="OUT_DIR", help="directory for the .onnx files")
    parser.add_argument(
        "--dcn",
        choices=ONNX_DCN_MODES,
        default="deformconv",
        help="deformconv: the standard DeformConv op (opset 19; onnxruntime, TensorRT >= 10.1); "
        "gridsample: GridSample + MatMul (opset 17) for runtimes without DeformConv",
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 19 or 17 by --dcn)")
    parser.add_argument("--stages-only", action="store_true", help="skip window.onnx")
    args = parser.parse_args(argv)
    try:
        _check_options(args.dcn, args.opset)
        model = load_model(args.weights)
        paths = export_model(
            model, args.onnx, dcn=args.dcn, opset=args.opset, weights_path=args.weights, window=not args.stages_only
        )
    except (WeightsError, ExportError) as e:
        print(f"erdn export: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"erdn export: cannot write to {args.onnx}: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0
