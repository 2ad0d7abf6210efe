"""benchmarks/gpu_session.sh --dry-run: every step of the GPU session on this CPU at tiny sizes, so the
script cannot rot between lendings of a GPU machine; and what comes back resumes the training run."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from training.checkpoint import load_checkpoint
from training.split_checkpoint import join_checkpoint
from training.train import main as train_main
from worker.model import load_model

REPO = Path(__file__).resolve().parent.parent
STEPS = ["setup", "probe", "gpu_tests", "bench_lite", "bench_paper", "compile", "synth", "train"]


@pytest.fixture
def short_tmp():
    """A short folder: the session's ipc sockets live under it, and their paths have a length limit."""
    path = Path(tempfile.mkdtemp(prefix="erdn-g-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.slow
def test_dry_run_reports_every_step_and_returns_a_checkpoint_that_resumes(short_tmp: Path, one_torch_thread,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    out, work = short_tmp / "out", short_tmp / "w"
    env = dict(os.environ, OUT=str(out), GPU_PYTHON=sys.executable, GPU_WORK=str(work))
    proc = subprocess.run(["bash", "benchmarks/gpu_session.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True,
                          timeout=1800)
    stdout = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, stdout[-3000:] + proc.stderr.decode(errors="replace")[-2000:]
    assert "==== gpu_session summary (dry run) ====" in stdout

    report = json.loads((out / "gpu_session.json").read_text())
    assert report["session"]["dry_run"] is True
    steps = {s["name"]: s for s in report["steps"]}
    assert list(steps) == STEPS
    failed = {n: (s["status"], s["error"], s["log_tail"][-1500:]) for n, s in steps.items() if s["status"] != "ok"}
    assert failed == {}
    assert (out / "gpu_session.md").read_text().startswith("# GPU session (dry run on the CPU)")

    numbers = steps["gpu_tests"]["result"]["numbers"]
    assert {"precision_tiny", "tiling_96x64", "tiling_128x72", "vspipe", "training", "ddp"} <= set(numbers)
    assert set(steps["gpu_tests"]["result"]["tests"].values()) == {"passed"}
    for name in ("bench_lite", "bench_paper"):
        assert [r["precision"] for r in steps[name]["result"]["summary"]] == ["fp32"]
        assert steps[name]["result"]["summary"][0]["model_fps"] > 0
    assert steps["bench_lite"]["result"]["summary"][0]["cache_speedup"] > 0
    assert steps["compile"]["result"]["modes"]["compile"]["fps"] > 0

    # what comes back fits the machine's return limits: at most 8 files of 16 MiB, plain names
    files = sorted(out.iterdir())
    assert len(files) <= 8 and all(f.stat().st_size <= 16 * 2**20 for f in files)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f.name) for f in files)
    states = sorted(out.glob("train_it*.state.ckpt"), key=lambda p: int(p.name.split(".")[0][len("train_it"):]))
    assert 1 <= len(states) <= 2
    prefix = out / states[-1].name.split(".")[0]
    iteration = int(prefix.name[len("train_it"):])
    assert steps["train"]["result"]["exported"][-1]["iteration"] == iteration > 0
    assert load_model(prefix.with_name(prefix.name + ".model.safetensors")).preset == "tiny"  # weights as they are

    # the returned files become last.ckpt again, and erdn train resumes from it
    run_dir = short_tmp / "resume"
    join_checkpoint(prefix, run_dir / "last.ckpt")
    session = report["session"]
    overrides = [*shlex.split(session["train_set"]), f"data.root={work / 'data'}", f"run_dir={run_dir}",
                 'weights_out=""', 'model.init_from=""', f"iterations={iteration + 1}"]
    assert train_main([session["train_config"], "--set", *overrides]) == 0
    assert f"resumed {run_dir / 'last.ckpt'} at iteration {iteration}" in capsys.readouterr().err
    assert int(load_checkpoint(run_dir / "last.ckpt")["iteration"]) == iteration + 1
