"""``erdn export``: the ONNX graphs run in onnxruntime (CPU) and match the torch model.

Two exports per run, to keep it short: ``--dcn deformconv`` of frames=5 weights through the
real command (stage1, stage2, window) and ``gridsample`` of a frames=3 model (stage1, window).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from worker.export import export_model
from worker.export import main as export_main
from worker.model import ERDN, build_model, load_model, save_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only wait on each other
    yield
    torch.set_num_threads(threads)


def deformed_model(frames: int) -> ERDN:
    """A tiny model whose offset convs are not zero, so that every DCN really deforms."""
    torch.manual_seed(10 + frames)
    model = build_model("tiny", frames=frames)
    for name, p in model.named_parameters():
        if "conv_offset" in name:
            torch.nn.init.normal_(p, std=0.2)
    return model.eval()


class Exported:
    def __init__(self, dcn: str, model: ERDN, weights: Path, out: Path, before=None) -> None:
        self.dcn, self.model, self.weights, self.out = dcn, model, weights, out
        self.before = before  # (input, torch output) taken before the export, if any


@pytest.fixture(scope="module")
def deformconv_export(tmp_path_factory) -> Exported:
    """frames=5 weights exported by the real `erdn export WEIGHTS --onnx DIR` (default --dcn deformconv)."""
    root = tmp_path_factory.mktemp("export-deformconv")
    weights = save_model(deformed_model(5), root / "tiny5.safetensors")
    assert export_main([str(weights), "--onnx", str(root / "onnx")]) == 0
    return Exported("deformconv", load_model(weights), weights, root / "onnx")


@pytest.fixture(scope="module")
def gridsample_export(tmp_path_factory) -> Exported:
    """A frames=3 model in memory exported with --dcn gridsample; the model is checked afterwards."""
    root = tmp_path_factory.mktemp("export-gridsample")
    model = deformed_model(3)
    weights = save_model(model, root / "tiny3.safetensors")
    x = torch.rand(1, 3, 3, 16, 16)
    with torch.no_grad():
        before = (x, model(x))
    export_model(model, root / "onnx", dcn="gridsample", weights_path=weights)
    return Exported("gridsample", model, weights, root / "onnx", before)


@pytest.fixture(params=["deformconv", "gridsample"])
def exported(request) -> Exported:
    return request.getfixturevalue(f"{request.param}_export")


def session(path: Path):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def graph_names(e: Exported) -> list[str]:
    return ["stage1", "stage2", "window"] if e.model.frames == 5 else ["stage1", "window"]


@pytest.mark.slow
def test_written_graphs(exported) -> None:
    assert sorted(p.name for p in exported.out.iterdir()) == sorted(f"{g}.onnx" for g in graph_names(exported))


@pytest.mark.slow
@pytest.mark.parametrize("dcn, stage", [("deformconv", 1), ("deformconv", 2), ("gridsample", 1)])
def test_stage_graphs_match_torch_at_two_sizes(request, dcn: str, stage: int) -> None:
    exported = request.getfixturevalue(f"{dcn}_export")
    model = exported.model
    sess = session(exported.out / f"stage{stage}.onnx")
    run = model.run_stage1 if stage == 1 else model.run_stage2
    torch.manual_seed(stage)
    for shape in [(1, 9, 16, 24), (2, 9, 24, 40)]:  # batch, H and W all change through one graph
        x = torch.rand(*shape)
        with torch.no_grad():
            ref = run(x.reshape(shape[0], 3, 3, *shape[2:])).out.numpy()
        (y,) = sess.run(["out"], {"in": x.numpy()})
        assert y.shape == ref.shape
        assert np.abs(y - ref).max() <= TOL, (exported.dcn, stage, shape)


@pytest.mark.slow
def test_window_graph_pads_inside_and_matches_torch(exported) -> None:
    model = exported.model
    t = model.frames
    sess = session(exported.out / "window.onnx")
    inp = sess.get_inputs()[0]
    assert inp.shape[:2] == [1, 3 * t] and all(isinstance(d, str) for d in inp.shape[2:])
    torch.manual_seed(3)
    for h, w in [(16, 24), (21, 35)]:  # a multiple of 8, and an odd size the graph pads and crops
        x = torch.rand(1, t, 3, h, w)
        with torch.no_grad():
            ref = model(x).numpy()
        (y,) = sess.run(["out"], {"in": x.reshape(1, 3 * t, h, w).numpy()})
        assert y.shape == (1, 3, h, w)
        assert np.abs(y - ref).max() <= TOL, (exported.dcn, h, w)


@pytest.mark.slow
def test_dcn_mode_decides_the_op(exported) -> None:
    for graph in graph_names(exported):
        proto = onnx.load(str(exported.out / f"{graph}.onnx"))
        ops = {n.op_type for n in proto.graph.node}
        if exported.dcn == "deformconv":
            assert "DeformConv" in ops and "GridSample" not in ops, graph
            assert proto.opset_import[0].version == 19
        else:
            assert "GridSample" in ops and "DeformConv" not in ops, graph
            assert proto.opset_import[0].version == 17


@pytest.mark.slow
def test_metadata_names_the_weights(exported) -> None:
    sha = hashlib.sha256(exported.weights.read_bytes()).hexdigest()
    for graph in graph_names(exported):
        meta = {p.key: p.value for p in onnx.load(str(exported.out / f"{graph}.onnx")).metadata_props}
        assert meta["preset"] == "tiny"
        assert meta["frames"] == str(exported.model.frames)
        assert meta["weights_sha256"] == sha
        assert meta["dcn"] == exported.dcn
        assert meta["graph"] == graph


@pytest.mark.slow
def test_export_leaves_the_torch_model_as_it_was(gridsample_export) -> None:
    model = gridsample_export.model
    x, before = gridsample_export.before
    with torch.no_grad():
        assert torch.equal(model(x), before)
    # Still trainable: gradients reach the offset convolutions through the decomposition.
    model.train()
    try:
        model(x).mean().backward()
    finally:
        model.eval()
    grads = [p.grad for n, p in model.named_parameters() if "conv_offset" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dcn", "deformconv", "--opset", "17"], "needs an opset from 19"),
        (["--dcn", "gridsample", "--opset", "15"], "needs an opset from 16"),
    ],
)
def test_bad_options_give_one_clear_error(tmp_path, capsys, args, message) -> None:
    weights = save_model(build_model("tiny", frames=3), tmp_path / "w.safetensors")
    out = tmp_path / "out"
    assert export_main([str(weights), "--onnx", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bad_weights_file_gives_one_clear_error(tmp_path, capsys) -> None:
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"not a safetensors file")
    assert export_main([str(bad), "--onnx", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("erdn export: ") and "erdn convert" in err
    assert export_main([str(tmp_path / "missing.safetensors"), "--onnx", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_window_graph_runs_in_vs_mlrt(deformconv_export) -> None:
    """vs-mlrt's onnxruntime filter (plugin ort) takes window.onnx as laid out: T RGBS clips in, one out."""
    vs = pytest.importorskip("vapoursynth")
    core = vs.core
    if not hasattr(core, "ort"):
        pytest.skip("vapoursynth-mlrt-ort is not installed")
    model = deformconv_export.model
    h, w = 21, 35
    frames = np.random.default_rng(0).random((model.frames, 3, h, w), dtype=np.float32)

    def clip_of(rgb: np.ndarray):
        blank = core.std.BlankClip(format=vs.RGBS, width=w, height=h, length=1)

        def fill(n, f):
            out = f.copy()
            for plane in range(3):
                np.asarray(out[plane])[:] = rgb[plane]
            return out

        return core.std.ModifyFrame(blank, blank, fill)

    out = core.ort.Model(
        [clip_of(f) for f in frames], network_path=str(deformconv_export.out / "window.onnx"), provider="CPU"
    )
    frame = out.get_frame(0)
    y = np.stack([np.asarray(frame[p]) for p in range(3)])
    with torch.no_grad():
        ref = model(torch.from_numpy(frames)[None])[0].numpy()
    assert (out.width, out.height) == (w, h)
    assert np.abs(y - ref).max() <= TOL


def _scramble(model: ERDN) -> ERDN:
    """Every parameter random, so that zero-started convs, gated blocks' beta/gamma and the offsets all act."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and "norm" not in name:
                torch.nn.init.normal_(p, std=0.3 / max(1, p[0].numel()) ** 0.5)
            elif "conv_offset" in name or name.endswith(("beta", "gamma")):
                torch.nn.init.normal_(p, std=0.2)
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("dcn", ["deformconv", "gridsample"])
def test_reduced_resolution_preset_exports_and_matches_torch(tmp_path, dcn: str) -> None:
    """A stem-2 model with gated blocks and resize upsampling (tiny_stem): stage and window graphs match torch,
    the window graph padding to the model's own stride (16) inside."""
    torch.manual_seed(11)
    model = _scramble(build_model("tiny_stem", frames=3))
    weights = save_model(model, tmp_path / "stem.safetensors")
    export_model(model, tmp_path / "onnx", dcn=dcn, weights_path=weights)
    stage = session(tmp_path / "onnx" / "stage1.onnx")
    x = torch.rand(1, 9, 32, 48)
    with torch.no_grad():
        ref = model.run_stage1(x.reshape(1, 3, 3, 32, 48)).out.numpy()
    assert np.abs(ref - x[:, 3:6].numpy()).max() > 0.05  # the model really changes its input
    (y,) = stage.run(["out"], {"in": x.numpy()})
    assert np.abs(y - ref).max() <= TOL
    window = session(tmp_path / "onnx" / "window.onnx")
    for h, w in [(32, 48), (37, 50)]:
        x = torch.rand(1, 3, 3, h, w)
        with torch.no_grad():
            ref = model(x).numpy()
        (y,) = window.run(["out"], {"in": x.reshape(1, 9, h, w).numpy()})
        assert y.shape == (1, 3, h, w) and np.abs(y - ref).max() <= TOL, (dcn, h, w)
