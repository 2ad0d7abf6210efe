"""``erdn bench``: structure and sanity of its figures (not their size: tests check correctness, not timings)."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from worker.bench import cli as bench_cli
from worker.bench.clip import pattern_frame
from worker.bench.model_speed import PeakRss
from worker.bench.report import Ratio, Section, format_table
from worker.bench.vspipe import _OUTPUT_LINE, VspipeError, read_rgbs

VSPIPE = Path(sys.executable).parent / "vspipe"
MAY_BE_ZERO = ("peak_mib", "max_abs_diff", "need_frames_replies")  # may be 0: tiny allocations, same output


def test_pattern_frames_are_deterministic_moving_rgb_in_range() -> None:
    a, b = pattern_frame(3, 40, 24), pattern_frame(3, 40, 24)
    assert a.shape == (3, 24, 40) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert np.abs(pattern_frame(4, 40, 24) - a).mean() > 0.01


def test_vspipe_summary_line_and_raw_output(tmp_path) -> None:
    m = _OUTPUT_LINE.search("Script evaluation done in 0.01 seconds\nOutput 5 frames in 0.01 seconds (628.77 fps)")
    assert m is not None and (m.group(1), m.group(3)) == ("5", "628.77")
    frames = np.random.default_rng(0).random((2, 3, 4, 5), dtype=np.float32)
    frames.tofile(tmp_path / "out.raw")
    assert np.array_equal(read_rgbs(tmp_path / "out.raw", 2, 5, 4), frames)
    with pytest.raises(VspipeError, match="expected"):
        read_rgbs(tmp_path / "out.raw", 3, 5, 4)


def test_peak_rss_sees_an_allocation_no_other_thread_could_watch() -> None:
    """The peak comes from the kernel, not from a sampler that a busy machine may never schedule.

    A switch interval of 100 s keeps every other Python thread off the GIL while this one maps, touches
    and unmaps 64 MiB, as a loaded machine can starve a sampling thread. An earlier, larger peak of
    this process must not count either. The block is an anonymous mapping of its own, so the pages are
    new to the process whatever malloc keeps (an earlier test may have called keep_freed_memory).
    """
    import mmap

    earlier = np.ones(192 << 20, np.uint8)  # 192 MiB, touched, freed before the measurement
    del earlier
    interval = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    try:
        with PeakRss() as rss:
            block = mmap.mmap(-1, 64 << 20)  # made, touched page by page and freed while holding the GIL
            for offset in range(0, len(block), mmap.PAGESIZE):
                block[offset] = 1
            block.close()
    finally:
        sys.setswitchinterval(interval)
    assert 48 << 20 <= rss.peak - rss.start < 128 << 20


def test_ratio_status_and_table() -> None:
    s = Section("x", "x. title")
    s.row("a row", fps=2.5, bytes_per_frame=1000.0)
    s.ratios += [Ratio("good", 2.0, 1.8), Ratio("bad", 0.5, 0.95), Ratio("shown", 1.0, None)]
    assert [r.status for r in s.ratios] == ["PASS", "MISS", "info"]
    text = format_table([s], ["header"])
    assert "fps=2.5" in text and "PASS good: 2x, target >= 1.8x" in text and "MISS bad" in text
    assert "shown" not in text.split("== targets")[1]
    assert s.to_dict()["ratios"][1]["status"] == "MISS"


@pytest.mark.parametrize("args, message", [
    (["--sizes", "640by360"], "a size looks like 640x360"),
    (["--only", "pipeline,speed"], "unknown ['speed']"),
    (["--preset", "huge"], "unknown ['huge']"),
    (["--precision", "fp8"], "unknown ['fp8']"),
])
def test_bad_arguments_are_one_clear_error(capsys, args, message) -> None:
    with pytest.raises(SystemExit) as e:
        bench_cli.main(args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_fp16_needs_cuda(capsys) -> None:
    assert bench_cli.main(["--precision", "fp32,fp16"]) == 2
    assert "--precision fp16 needs --device cuda" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["0", "-1", "two"])
def test_threads_are_positive_or_default(capsys, text) -> None:
    with pytest.raises(SystemExit):
        bench_cli.main(["--threads", f"1,{text}"])
    assert "threads are a positive number or 'default'" in capsys.readouterr().err


def test_too_short_clip_is_refused(capsys) -> None:
    assert bench_cli.main(["--frames", "2"]) == 2
    assert "--frames must be at least 3" in capsys.readouterr().err


def _bench_processes(workdir: Path) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if f"{workdir}/erdn-bench-" in cmdline and int(entry.name) != os.getpid():
                found.append(cmdline)
    return found


def _evals_per_frame(window: int, n: int) -> float:
    """Stage evaluations per frame of an in-order render of n frames: a 5-frame cascade reuses stage-1 results
    (n + 2 stage-1 triplets, edges included, and n stage-2 ones); a 3-frame model runs one stage per frame."""
    return (2 * n + 2) / n if window == 5 else 1.0


DEFAULT_WINDOW = bench_cli.default_window()


@pytest.mark.slow
@pytest.mark.skipif(not VSPIPE.exists(), reason=f"vspipe not found next to {sys.executable}")
@pytest.mark.parametrize("window", [None, 8 - DEFAULT_WINDOW], ids=["default-window", "other-window"])
def test_bench_runs_every_section_with_sane_figures(tmp_path, capsys, isolated_runtime_dir, window) -> None:
    """Every section at the default model's window (what users get, and what the header says) and at the other."""
    w, h, n = 64, 48, 3
    out = tmp_path / "bench.json"
    pinned = [] if window is None else ["--window", str(window)]
    assert bench_cli.main(["--preset", "tiny", "--sizes", f"{w}x{h}", "--frames", str(n), "--compare-frames", "2",
                           "--repeats", "1", "--threads", "1", "--workdir", str(isolated_runtime_dir),
                           "--json", str(out), *pinned]) == 0
    window = window or DEFAULT_WINDOW
    table = capsys.readouterr().out
    assert f"presets tiny ({window}-frame window)" in table
    report = json.loads(out.read_text())
    sections = {s["key"]: s for s in report["sections"]}
    assert list(sections) == list(bench_cli.SECTIONS)
    for s in report["sections"]:
        assert s["rows"], s["key"]
        assert s["title"] in table
        for row in s["rows"]:
            for name, value in row.items():
                if name == "label":
                    continue
                assert isinstance(value, (int, float)) and math.isfinite(value), (s["key"], row)
                assert value >= 0 if name in MAY_BE_ZERO else value > 0, (s["key"], row["label"], name, value)
        for r in s["ratios"]:
            assert math.isfinite(r["value"]) and r["value"] > 0
            assert r["status"] == ("info" if r["target"] is None else "PASS" if r["value"] >= r["target"] else "MISS")
    assert {r["label"] for r in sections["throughput"]["rows"]} == {"torch (cpu)", "onnx (cpu)"}
    for row in sections["throughput"]["rows"]:  # a 3-frame model has no stage 2
        assert ("stage2_s" in row) == (window == 5)
        assert row["fps"] == pytest.approx(1 / (row["stage1_s"] + row.get("stage2_s", 0.0)))
    cache_ratio = sections["cache"]["ratios"][0]
    assert cache_ratio["target"] == (1.8 if window == 5 else None)
    assert {r["label"]: r for r in sections["cache"]["rows"]}["without (full cascade per frame)"][
        "stage_evals_per_frame"] == (4 if window == 5 else 1)
    # The figures come from the right places: the worker's counters for an in-order render of n frames
    # (each source frame sent once as float32), the same output from every path.
    rows = {r["label"]: r for r in sections["pipeline"]["rows"]}
    for label in ("vspipe + erdn_vs.deblur", "Session.process in order"):
        assert rows[label]["stage_evals_per_frame"] == pytest.approx(_evals_per_frame(window, n))
        assert rows[label]["bytes_per_frame"] == 3 * w * h * 4
    diffs = [r["max_abs_diff"] for key in ("cache", "vsmlrt") for r in sections[key]["rows"] if "max_abs_diff" in r]
    assert len(diffs) == 2 and max(diffs) < 1e-4
    assert _bench_processes(isolated_runtime_dir) == []  # the worker and all else the bench started are gone


@pytest.mark.slow
@pytest.mark.skipif(not VSPIPE.exists(), reason=f"vspipe not found next to {sys.executable}")
def test_bench_runs_pinned_and_default_threads_on_fresh_workers(tmp_path, capsys, isolated_runtime_dir) -> None:
    """Both thread settings render the same clip side by side, each on a worker that has cached nothing (every
    render computes its stages: 2n + 2 for n frames), and each gets its own vs-mlrt ratio."""
    w, h, n = 64, 48, 3
    out = tmp_path / "bench.json"
    assert bench_cli.main(["--preset", "tiny", "--sizes", f"{w}x{h}", "--frames", str(n), "--compare-frames", "2",
                           "--only", "pipeline,vsmlrt", "--threads", "1,default", "--repeats", "1", "--window", "5",
                           "--workdir", str(isolated_runtime_dir), "--json", str(out)]) == 0
    table = capsys.readouterr().out
    sections = json.loads(out.read_text())["sections"]
    labels = [(s["key"], s["meta"]["threads"]) for s in sections]
    default = labels[2][1]
    assert default.startswith("default threads (") and labels == [
        ("pipeline", "1 thread"), ("vsmlrt", "1 thread"), ("pipeline", default), ("vsmlrt", default)]
    for s in sections:
        if s["key"] == "pipeline":
            for row in s["rows"][:2]:  # vspipe, then Session.process: each on a fresh worker
                assert row["stage_evals_per_frame"] == pytest.approx((2 * n + 2) / n), row
    for threads in ("1 thread", default):  # each setting's vs-mlrt ratio in the targets summary
        assert f" deblur vs vs-mlrt ({threads}): " in table.split("== targets")[1]
    assert _bench_processes(isolated_runtime_dir) == []


def test_official_needs_the_paper_preset(capsys, tmp_path) -> None:
    assert bench_cli.main(["--preset", "lite", "--official", str(tmp_path)]) == 2
    assert "--official compares the paper preset" in capsys.readouterr().err


def test_default_window_and_preset_are_the_default_models(tmp_path, monkeypatch) -> None:
    """The manifest's first model decides (its weights file need not exist: the bench uses random weights)."""
    manifest = tmp_path / "manifest.yaml"
    monkeypatch.setenv("ERDN_MANIFEST", str(manifest))
    for frames in (3, 5):
        preset = "quarter" if frames == 3 else "lite"
        manifest.write_text(f"models:\n  - {{name: first, file: missing.safetensors, frames: {frames}, "
                            f"preset: {preset}}}\n"
                            f"  - {{name: second, file: missing.safetensors, frames: {8 - frames}, preset: tiny}}\n")
        assert bench_cli.default_window() == frames and bench_cli.default_preset() == preset
    manifest.unlink()
    assert bench_cli.default_window() == 5 and bench_cli.default_preset() == "lite"  # no manifest


def test_official_needs_the_5_frame_window(capsys, tmp_path) -> None:
    assert bench_cli.main(["--preset", "paper", "--window", "3", "--official", str(tmp_path)]) == 2
    assert "--official runs the official 5-frame ERDN: pass --window 5" in capsys.readouterr().err


def test_official_path_that_is_not_a_checkout_is_one_clear_error(tmp_path) -> None:
    from worker.bench.official import OfficialError, load_official

    with pytest.raises(OfficialError, match="not a checkout of TencentCloud/ERDN"):
        load_official(tmp_path, seed=0)


def test_official_dcn_shim_has_the_official_parameters_and_computes_dcnv2() -> None:
    """The stand-in for the official compiled DCN: its parameter names load official weights, its function is
    a modulated deformable convolution (checked against ours, itself tested against torchvision)."""
    import torch

    from worker.bench import official
    from worker.model.dcn import deform_conv2d

    names = ["dcn", "dcn.modules", official.SHIM]
    saved = {n: sys.modules.get(n) for n in names}
    try:
        official._install_dcn_shim()
        shim = sys.modules[official.SHIM]
        pack = shim.ModulatedDeformConvPack(16, 8, 3, stride=1, padding=1, deformable_groups=4)
        shapes = {k: tuple(v.shape) for k, v in pack.state_dict().items()}
        assert shapes == {"weight": (8, 16, 3, 3), "bias": (8,), "conv_offset.weight": (4 * 27, 16, 3, 3),
                          "conv_offset.bias": (4 * 27,)}
        torch.manual_seed(0)
        x = torch.rand(1, 16, 12, 10)
        offset, mask = torch.randn(1, 72, 12, 10) * 2, torch.rand(1, 36, 12, 10)
        got = shim._ModulatedDeformConv(x, offset, mask, pack.weight, pack.bias, pack.stride, pack.padding,
                                        pack.dilation, pack.groups, pack.deformable_groups, pack.im2col_step)
        want = deform_conv2d(x, offset, pack.weight, pack.bias, padding=1, mask=mask)
        assert (got - want).abs().max().item() < 1e-4
    finally:
        for n, module in saved.items():
            if module is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = module
