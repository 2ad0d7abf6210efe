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

from training.checkpoint import load_checkpoint, save_checkpoint
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
    # the training ran until the session stopped it, exporting as it went; the last two checkpoints are kept
    train = steps["train"]["result"]
    assert train["stopped"] in ("deadline", "the next checkpoint would land past the deadline"), train["stopped"]
    assert len(train["exported"]) >= 2 and all("error" not in e for e in train["exported"])
    assert len(states) == 2
    prefix = out / states[-1].name.split(".")[0]
    iteration = int(prefix.name[len("train_it"):])
    assert [int(s.name.split(".")[0][len("train_it"):]) for s in states] == \
        [e["iteration"] for e in train["exported"][-2:]]
    assert iteration > 0
    assert load_model(prefix.with_name(prefix.name + ".model.safetensors")).preset == "tiny"  # weights as they are

    # the returned files become last.ckpt again, and erdn train resumes from it
    run_dir = short_tmp / "resume"
    join_checkpoint(prefix, run_dir / "last.ckpt")
    session = report["session"]
    overrides = [*shlex.split(session["train_set"]), f"data.root={work / 'data'}", f"run_dir={run_dir}",
                 'weights_out=""', 'checkpoint_copy=""', 'model.init_from=""', f"iterations={iteration + 1}"]
    assert train_main([session["train_config"], "--set", *overrides]) == 0
    assert f"resumed {run_dir / 'last.ckpt'} at iteration {iteration}" in capsys.readouterr().err
    assert int(load_checkpoint(run_dir / "last.ckpt")["iteration"]) == iteration + 1


def test_vspipe_is_pointed_at_a_shared_libpython(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Debian's and Ubuntu's python3.12 is statically linked: `vapoursynth config` then records the executable,
    which vspipe cannot load; the session points it at the shared library when the machine has one."""
    import sysconfig

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_session

    shared = Path(sysconfig.get_config_var("LIBDIR")) / (sysconfig.get_config_var("INSTSONAME") or "")
    if not shared.is_file():
        pytest.skip("this Python has no shared libpython")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    config = tmp_path / "vapoursynth" / "vapoursynth.toml"
    config.parent.mkdir()
    config.write_text('"/v/libvsscript.so" = ["/venv/bin/python","/usr/bin/python3.12","1778312176"]\n'
                      '"/w/libvsscript.so" = ["/venv2/bin/python","/lib/libpython3.12.so.1.0","5"]\n')
    assert str(shared) in gpu_session.fix_vsscript_config()
    import tomllib

    assert tomllib.loads(config.read_text()) == {
        "/v/libvsscript.so": ["/venv/bin/python", str(shared), "1778312176"],
        "/w/libvsscript.so": ["/venv2/bin/python", "/lib/libpython3.12.so.1.0", "5"],
    }
    assert gpu_session.fix_vsscript_config() == ""  # nothing left to fix


def test_only_the_last_two_checkpoints_stay_in_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from test_split_checkpoint import training_checkpoint

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu_session

    out = tmp_path / "out"
    out.mkdir()
    for it in (100, 250, 1200):  # 1200 > 250 > 100: ordered by iteration, not by name
        state = load_checkpoint(training_checkpoint(tmp_path / "last.ckpt", "tiny", ema=True))
        state["iteration"] = it
        save_checkpoint(state, tmp_path / "last.ckpt")
        entry = gpu_session.export_checkpoint(tmp_path / "last.ckpt", out, at_s=1.0)
        assert entry["iteration"] == it and "error" not in entry
    assert sorted(p.name for p in out.iterdir()) == [
        f"train_it{it}.{part}" for it in (1200, 250) for part in ("ema.safetensors", "model.safetensors", "state.ckpt")]
    monkeypatch.setattr(gpu_session, "RETURN_FILE_LIMIT", 1000)  # a file that could not come back is not kept
    entry = gpu_session.export_checkpoint(tmp_path / "last.ckpt", tmp_path / "other", at_s=2.0)
    assert "over the 16 MiB" in entry["error"] and list((tmp_path / "other").iterdir()) == []
