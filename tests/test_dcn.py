"""The portable deformable convolution against torchvision.ops.deform_conv2d (the oracle)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.model.dcn import ModulatedDeformConvPack, deform_conv2d, deform_conv2d_onnx_op

torchvision = pytest.importorskip("torchvision")
tv_deform_conv2d = torchvision.ops.deform_conv2d


def out_size(size: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def make_case(
    *,
    b: int = 1,
    c: int = 8,
    out_ch: int = 6,
    h: int = 9,
    w: int = 11,
    kernel: tuple[int, int] = (3, 3),
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (1, 1),
    dilation: tuple[int, int] = (1, 1),
    groups: int = 1,
    weight_groups: int = 1,
    offset_scale: float = 2.0,
    with_mask: bool = True,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> dict:
    g = torch.Generator().manual_seed(seed)
    kh, kw = kernel
    ho = out_size(h, kh, stride[0], padding[0], dilation[0])
    wo = out_size(w, kw, stride[1], padding[1], dilation[1])
    k = kh * kw
    return dict(
        input=torch.randn(b, c, h, w, generator=g, dtype=dtype),
        offset=torch.randn(b, 2 * groups * k, ho, wo, generator=g, dtype=dtype) * offset_scale,
        weight=torch.randn(out_ch, c // weight_groups, kh, kw, generator=g, dtype=dtype) * 0.3,
        bias=torch.randn(out_ch, generator=g, dtype=dtype),
        mask=torch.rand(b, groups * k, ho, wo, generator=g, dtype=dtype) if with_mask else None,
        stride=stride,
        padding=padding,
        dilation=dilation,
    )


def run_both(case: dict, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    ours = deform_conv2d(
        case["input"], case["offset"], case["weight"], case["bias"],
        stride=case["stride"], padding=case["padding"], dilation=case["dilation"], mask=case["mask"], **kw,
    )
    theirs = tv_deform_conv2d(
        case["input"], case["offset"], case["weight"], case["bias"],
        stride=case["stride"], padding=case["padding"], dilation=case["dilation"], mask=case["mask"],
    )
    return ours, theirs


CASES = {
    "groups1": dict(groups=1),
    "groups2": dict(groups=2),
    "groups8": dict(groups=8),
    "no_mask": dict(groups=2, with_mask=False),
    "batch3": dict(b=3, groups=2),
    "large_offsets_beyond_border": dict(groups=2, offset_scale=12.0),
    "small_offsets_near_border": dict(groups=2, offset_scale=0.7, padding=(2, 2)),
    "stride2": dict(groups=2, stride=(2, 2)),
    "stride_2x1_pad0": dict(groups=2, stride=(2, 1), padding=(0, 0)),
    "dilation2": dict(groups=2, dilation=(2, 2), padding=(2, 2)),
    "dilation_1x3_stride_1x2": dict(groups=4, dilation=(1, 3), stride=(1, 2), padding=(1, 3)),
    "kernel_3x5": dict(groups=2, kernel=(3, 5), padding=(1, 2)),
    "kernel_1x3_stride3": dict(groups=1, kernel=(1, 3), stride=(3, 3), padding=(0, 1)),
    "kernel_5x2": dict(groups=8, kernel=(5, 2), padding=(2, 0)),
    "weight_groups2": dict(groups=2, weight_groups=2),
    "height1": dict(groups=2, h=1, w=7),
    "width1": dict(groups=2, h=7, w=1),
    "one_pixel": dict(groups=2, h=1, w=1),
    "height1_no_pad": dict(groups=2, h=1, w=7, kernel=(1, 3), padding=(0, 0)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_torchvision(name: str) -> None:
    case = make_case(**CASES[name])
    ours, theirs = run_both(case)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-4


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 2),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    dilation=st.tuples(st.integers(1, 3), st.integers(1, 3)),
    padding=st.tuples(st.integers(0, 3), st.integers(0, 3)),
    groups=st.sampled_from([1, 2, 4]),
    offset_scale=st.sampled_from([0.0, 0.5, 3.0, 20.0]),
    with_mask=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_matches_torchvision_random_geometry(
    b, h, w, kh, kw, stride, dilation, padding, groups, offset_scale, with_mask, seed
) -> None:
    ho, wo = out_size(h, kh, stride[0], padding[0], dilation[0]), out_size(w, kw, stride[1], padding[1], dilation[1])
    if ho < 1 or wo < 1:
        return  # no output pixel: torchvision refuses these too
    case = make_case(
        b=b, h=h, w=w, kernel=(kh, kw), stride=stride, dilation=dilation, padding=padding,
        groups=groups, offset_scale=offset_scale, with_mask=with_mask, seed=seed,
    )
    ours, theirs = run_both(case)
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_integer_offsets_and_zero_offsets_are_exact_convolution() -> None:
    # Zero offsets and a unit mask: an ordinary convolution.
    case = make_case(groups=2, offset_scale=0.0, with_mask=False, stride=(2, 1), dilation=(1, 2), padding=(1, 2))
    ours, _ = run_both(case)
    conv = F.conv2d(case["input"], case["weight"], case["bias"], stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    assert (ours - conv).abs().max().item() <= 1e-5
    # Integer offsets land exactly on pixels (and on the zero border): still matches the oracle.
    case = make_case(groups=2)
    case["offset"] = case["offset"].round()
    ours, theirs = run_both(case)
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_gradcheck_float64() -> None:
    case = make_case(b=2, c=4, out_ch=3, h=4, w=5, groups=2, stride=(1, 2), dtype=torch.float64, offset_scale=1.5)
    names = ["input", "offset", "weight", "bias", "mask"]
    tensors = [case[n].clone().requires_grad_(True) for n in names]

    def fn(x, off, wt, bias, mask):
        return deform_conv2d(x, off, wt, bias, stride=(1, 2), padding=(1, 1), mask=mask)

    # fast_mode checks random projections of the Jacobian: seconds instead of a minute.
    assert torch.autograd.gradcheck(fn, tensors, eps=1e-6, atol=1e-5, fast_mode=True)


def test_gradients_match_torchvision() -> None:
    case = make_case(b=2, groups=2, dtype=torch.float64, offset_scale=3.0)
    names = ["input", "offset", "weight", "bias", "mask"]
    grads = []
    for impl in (deform_conv2d, tv_deform_conv2d):
        t = {n: case[n].clone().requires_grad_(True) for n in names}
        out = impl(t["input"], t["offset"], t["weight"], t["bias"], padding=(1, 1), mask=t["mask"])
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
        grads.append([t[n].grad for n in names])
    for name, ours, theirs in zip(names, *grads, strict=True):
        assert (ours - theirs).abs().max().item() <= 1e-8, name


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_equals_unchunked_forward_and_backward(dtype: torch.dtype) -> None:
    case = make_case(b=2, c=8, h=23, w=17, groups=2, offset_scale=4.0, dtype=dtype)
    # One output row of columns is b * c * k * wo * itemsize bytes; budgets of 1, 3 and 7 rows
    # (7 leaves a ragged last chunk).
    row_bytes = 2 * 8 * 9 * 17 * case["input"].element_size()
    names = ["input", "offset", "weight", "bias", "mask"]
    results = []
    for budget in (10**12, row_bytes, 3 * row_bytes, 7 * row_bytes):
        t = {n: case[n].clone().requires_grad_(True) for n in names}
        out = deform_conv2d(
            t["input"], t["offset"], t["weight"], t["bias"], padding=(1, 1), mask=t["mask"],
            max_columns_bytes=budget,
        )
        out.square().sum().backward()
        results.append((out.detach(), [t[n].grad for n in names]))
    whole, whole_grads = results[0]
    # Gradients of weight, bias and input sum over pixels in a chunk-dependent order.
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for out, grads in results[1:]:
        torch.testing.assert_close(out, whole, atol=tol, rtol=0)
        for g, g_whole in zip(grads, whole_grads, strict=True):
            torch.testing.assert_close(g, g_whole, atol=100 * tol, rtol=tol * 10)


def test_chunked_under_no_grad_matches_torchvision() -> None:
    case = make_case(b=1, c=8, h=31, w=9, groups=8, offset_scale=5.0)
    with torch.no_grad():
        ours, theirs = run_both(case, max_columns_bytes=1)  # one row per chunk
    assert (ours - theirs).abs().max().item() <= 1e-4


@pytest.mark.parametrize("budget_rows", [1, 4, 100])
def test_columns_stay_under_the_budget(monkeypatch, budget_rows: int) -> None:
    sampled_bytes = []
    real_grid_sample = F.grid_sample

    def recording_grid_sample(*args, **kwargs):
        out = real_grid_sample(*args, **kwargs)
        sampled_bytes.append(out.numel() * out.element_size())
        return out

    monkeypatch.setattr(F, "grid_sample", recording_grid_sample)
    case = make_case(b=2, c=8, h=20, w=13, groups=2, offset_scale=3.0)
    budget = budget_rows * 2 * 8 * 9 * 13 * 4  # whole output rows of float32 columns
    with torch.no_grad():
        ours, theirs = run_both(case, max_columns_bytes=budget)
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert max(sampled_bytes) <= budget
    assert len(sampled_bytes) == -(-20 // min(budget_rows, 20))  # ceil(rows / rows per chunk)


def test_half_precision_samples_wide_frames_accurately() -> None:
    # A float16 sampling grid would be off by about a pixel at this width.
    case = make_case(c=4, out_ch=4, h=3, w=1500, groups=2, offset_scale=0.3)
    ref, _ = run_both(case)
    half = deform_conv2d(
        case["input"].half(), case["offset"].half(), case["weight"].half(), case["bias"].half(),
        padding=(1, 1), mask=case["mask"].half(),
    )
    assert half.dtype == torch.float16
    # float16 rounding of inputs and outputs only (values are O(1..10)).
    assert (half.float() - ref).abs().max().item() < 0.05


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(offset=torch.zeros(1, 17, 9, 11)), "offset must be"),
        (dict(offset=torch.zeros(1, 18, 8, 11), mask=None), "output is 9x11"),
        (dict(mask=torch.ones(1, 8, 9, 11)), "mask must be"),
        (dict(bias=torch.zeros(5)), "bias must be"),
        (dict(weight=torch.zeros(6, 3, 3, 3)), "does not fit"),
        (dict(input=torch.zeros(8, 9, 11)), "must be 4-D"),
    ],
)
def test_bad_shapes_give_clear_errors(change: dict, message: str) -> None:
    case = make_case(groups=1)
    case.update(change)
    with pytest.raises(ValueError, match=message):
        deform_conv2d(case["input"], case["offset"], case["weight"], case["bias"], padding=(1, 1), mask=case["mask"])


def test_offset_groups_must_divide_channels() -> None:
    case = make_case(c=6, groups=1)
    case["offset"] = torch.zeros(1, 2 * 4 * 9, 9, 11)
    case["mask"] = None
    with pytest.raises(ValueError, match="offset groups"):
        deform_conv2d(case["input"], case["offset"], case["weight"], padding=1)


def test_pack_matches_torchvision_and_starts_as_a_halved_conv() -> None:
    torch.manual_seed(0)
    layer = ModulatedDeformConvPack(8, 8, 3, deform_groups=2)
    x, feat = torch.randn(2, 8, 10, 12), torch.randn(2, 8, 10, 12)
    # Fresh: zero offsets and sigmoid(0) = 0.5 masks.
    expected = F.conv2d(x, layer.weight * 0.5, layer.bias, padding=1)
    assert (layer(x, feat) - expected).abs().max().item() <= 1e-5
    torch.nn.init.normal_(layer.conv_offset.weight, std=0.3)
    torch.nn.init.normal_(layer.conv_offset.bias, std=0.5)
    out = layer(x, feat)
    o = layer.conv_offset(feat)
    ref = tv_deform_conv2d(x, o[:, :36], layer.weight, layer.bias, padding=1, mask=torch.sigmoid(o[:, 36:]))
    assert (out - ref).abs().max().item() <= 1e-4
    out.sum().backward()
    assert layer.conv_offset.weight.grad is not None and layer.conv_offset.weight.grad.abs().sum() > 0


class _OneDeformConv(torch.nn.Module):
    """A single deformable conv with odd geometry, for checking what the ONNX export writes."""

    def __init__(self, as_onnx_op: bool, weight_groups: int = 1) -> None:
        super().__init__()
        case = make_case(c=4, out_ch=4, groups=2, weight_groups=weight_groups, kernel=(3, 5))
        self.weight = torch.nn.Parameter(case["weight"])
        self.bias = torch.nn.Parameter(case["bias"])
        self.as_onnx_op = as_onnx_op

    geometry = dict(stride=(2, 1), padding=(1, 3), dilation=(1, 2))

    def forward(self, x, offset, mask):
        if self.as_onnx_op:
            return deform_conv2d_onnx_op(x, offset, self.weight, self.bias, mask, **self.geometry)
        return deform_conv2d(x, offset, self.weight, self.bias, mask=mask, **self.geometry)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter's notice
@pytest.mark.parametrize("as_onnx_op, weight_groups", [(True, 1), (True, 2), (False, 1)])
def test_onnx_export_of_one_layer_runs_in_onnxruntime(tmp_path, monkeypatch, as_onnx_op, weight_groups) -> None:
    """DeformConv attributes (pads, strides, dilations, groups) and the chunk-free GridSample graph."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import worker.model.dcn as dcn

    monkeypatch.setattr(dcn, "CPU_COLUMNS_BYTES", 1)  # eager runs one row per chunk; export must not
    layer = _OneDeformConv(as_onnx_op, weight_groups).eval()
    kh, kw = 3, 5

    def inputs(h: int, w: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        ho, wo = out_size(h, kh, 2, 1, 1), out_size(w, kw, 1, 3, 2)
        return (
            torch.randn(2, 4, h, w, generator=g),
            torch.randn(2, 2 * 2 * kh * kw, ho, wo, generator=g) * 3,
            torch.rand(2, 2 * kh * kw, ho, wo, generator=g),
        )

    path = tmp_path / "dcn.onnx"
    axes = {0: "b", 2: "h", 3: "w"}
    with torch.no_grad():
        torch.onnx.export(
            layer, inputs(9, 12, 0), str(path), dynamo=False, opset_version=19 if as_onnx_op else 17,
            input_names=["x", "offset", "mask"], output_names=["out"],
            dynamic_axes={"x": axes, "offset": axes, "mask": axes, "out": axes}, autograd_inlining=False,
        )
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ("DeformConv" in ops) == as_onnx_op and ("GridSample" in ops) != as_onnx_op
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for h, w, seed in [(9, 12, 1), (14, 7, 2)]:
        x, offset, mask = inputs(h, w, seed)
        with torch.no_grad():
            ref = tv_deform_conv2d(x, offset, layer.weight, layer.bias, mask=mask, **_OneDeformConv.geometry)
            eager = layer(x, offset, mask)
        (y,) = sess.run(["out"], {"x": x.numpy(), "offset": offset.numpy(), "mask": mask.numpy()})
        assert (eager - ref).abs().max().item() <= 1e-4
        assert np.abs(y - ref.numpy()).max() <= 1e-4, (h, w)
