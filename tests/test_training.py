"""``erdn train``: runs from a YAML config, resumes exactly, refuses damaged checkpoints, runs under torchrun."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.config import ConfigError, load_config
from training.synth import SynthOptions, synthesize
from training.train import learning_rate, main
from worker.model import build_model, load_model

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    opts = SynthOptions(out=str(out), clips=2, test_clips=1, frames=4, width=40, height=40, subframes=3, seed=5)
    return synthesize(opts, progress=False)


def write_config(path: Path, dataset: Path, run_dir: Path, **top) -> Path:
    cfg = {
        "name": "tiny_test",
        "run_dir": str(run_dir),
        "seed": 1,
        "batch": 2,
        "iterations": 4,
        "val_every": 2,
        "checkpoint_every": 2,
        "log_every": 1,
        "threads": 1,
        "model": {"preset": "tiny", "frames": 5},
        "data": {"root": str(dataset), "crop": 32, "val_windows": 2},
        "optimizer": {"lr": 1.0e-3},
        "schedule": {"name": "step", "every": 1, "unit": "epoch", "gamma": 0.5},
    } | top
    path.write_text(yaml.safe_dump(cfg))
    return path


def losses(run_dir: Path) -> list[tuple[str, str]]:
    with open(run_dir / "log.csv", newline="") as f:
        return [(r["iteration"], r["total"]) for r in csv.DictReader(f) if r["total"]]


@pytest.mark.slow
def test_train_then_resume_matches_an_uninterrupted_run(tmp_path: Path, dataset: Path) -> None:
    straight = write_config(tmp_path / "a.yaml", dataset, tmp_path / "a")
    assert main([str(straight)]) == 0
    run_a = tmp_path / "a"
    for name in ("last.ckpt", "best.safetensors", "final.safetensors", "log.csv", "curves.png"):
        assert (run_a / name).is_file(), name
    assert any((run_a / "tb").iterdir())
    model = load_model(run_a / "final.safetensors")
    assert model.preset == "tiny" and model.frames == 5
    assert model.metadata["iterations"] == 4 and model.metadata["val_psnr"] > 0

    # the same run, interrupted after 2 iterations and resumed
    split = write_config(tmp_path / "b.yaml", dataset, tmp_path / "b")
    assert main([str(split), "--set", "iterations=2"]) == 0
    assert load_checkpoint(tmp_path / "b" / "last.ckpt")["iteration"] == 2
    assert main([str(split)]) == 0
    assert losses(tmp_path / "b") == losses(run_a)
    a, b = load_file(run_a / "final.safetensors"), load_file(tmp_path / "b" / "final.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the exported weights are exactly the trained state, and give the same output once loaded
    trained = load_checkpoint(run_a / "last.ckpt")["model"]
    assert all(torch.equal(trained[k], a[k]) for k in a)
    x = torch.rand(1, 5, 3, 16, 16)
    fresh = build_model("tiny", 5).eval()
    fresh.load_state_dict(trained)
    with torch.no_grad():
        assert torch.equal(model(x), fresh(x))
    # and training moved the weights away from their initialisation (the run seeds the init with `seed`)
    torch.manual_seed(1)
    initial = build_model("tiny", 5).state_dict()
    assert any(not torch.equal(initial[k], a[k]) for k in a)


def test_a_truncated_checkpoint_is_refused(tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture) -> None:
    cfg = write_config(tmp_path / "c.yaml", dataset, tmp_path / "c", iterations=2)
    assert main([str(cfg)]) == 0
    ckpt = tmp_path / "c" / "last.ckpt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(ckpt)
    assert main([str(cfg), "--set", "iterations=3"]) == 2
    assert "damaged (checksum mismatch" in capsys.readouterr().err
    ckpt.write_bytes(b"PK\x03\x04" + data[4:])  # not even our header
    with pytest.raises(CheckpointError, match="not an erdn training checkpoint"):
        load_checkpoint(ckpt)


def test_checkpoint_round_trip_without_pickle(tmp_path: Path) -> None:
    state = {"model": {"w": torch.arange(4.0)}, "iteration": 7, "rng": {"torch": torch.get_rng_state()}, "x": [1.5]}
    back = load_checkpoint(save_checkpoint(state, tmp_path / "s.ckpt"))
    assert back["iteration"] == 7 and torch.equal(back["model"]["w"], state["model"]["w"])
    assert not (tmp_path / "s.ckpt.partial").exists()


def test_config_errors_name_the_key(tmp_path: Path, dataset: Path) -> None:
    cfg = write_config(tmp_path / "d.yaml", dataset, tmp_path / "d", batchsize=3)
    with pytest.raises(ConfigError, match="unknown key.*batchsize"):
        load_config(cfg)
    cfg = write_config(tmp_path / "e.yaml", dataset, tmp_path / "e", model={"preset": "huge", "frames": 5})
    with pytest.raises(ConfigError, match="model.preset 'huge'"):
        load_config(cfg)
    cfg = write_config(tmp_path / "f.yaml", dataset, tmp_path / "f")
    with pytest.raises(ConfigError, match="multiple of 8"):
        load_config(cfg, {"data.crop": 30})


def test_shipped_configs_load() -> None:
    paper = load_config(REPO / "training" / "configs" / "paper.yaml")
    assert (paper.model.preset, paper.model.frames, paper.data.crop, paper.optimizer.lr) == ("paper", 5, 256, 1e-4)
    assert (paper.schedule.name, paper.schedule.every, paper.schedule.unit, paper.schedule.gamma) == (
        "step", 200, "epoch", 0.5
    )  # fmt: skip
    lite = load_config(REPO / "training" / "configs" / "lite_synth.yaml")
    assert (lite.model.preset, lite.model.frames) == ("lite", 5)
    # each two-phase run starts from its 3-frame control's kept checkpoint and is compared with the control at
    # equal compute (a 5-frame iteration = 4.05 three-frame ones, measured side by side)
    for five, three, compared in (
        ("lite_synth_2phase", "lite_synth_f3", (950, 8750)),
        ("lite_synth_v2", "lite_synth_v2_f3", None),
    ):
        cascade = load_config(REPO / "training" / "configs" / f"{five}.yaml")
        control = load_config(REPO / "training" / "configs" / f"{three}.yaml")
        assert (cascade.model.preset, cascade.model.frames, control.model.frames) == ("lite", 5, 3)
        phase1 = control.keep_at[0]
        assert cascade.model.init_from == f"{control.run_dir}/it{phase1}.ckpt"
        five_at, three_at = compared or (cascade.iterations, control.iterations)
        assert abs(phase1 + 4.05 * five_at - three_at) < 60
        assert (five_at in cascade.keep_at or five_at == cascade.iterations) and (
            three_at in (*control.keep_at, control.iterations)
        )
        assert cascade.data.root == control.data.root and cascade.data.crop == control.data.crop
    # the v3 pair goes on anywhere: phase 1 is the control's kept iteration, committed beside its copy
    cascade = load_config(REPO / "training" / "configs" / "lite_synth_v3.yaml")
    control = load_config(REPO / "training" / "configs" / "lite_synth_v3_f3.yaml")
    phase1 = control.keep_at[0]
    assert cascade.model.init_from == f"{control.checkpoint_copy}/it{phase1}.ckpt"
    assert abs(phase1 + 4.05 * cascade.iterations - control.iterations) < 60
    assert (cascade.data.val_split, control.data.val_split) == ("val", "val")  # chosen on val, never on test
    assert cascade.checkpoint_copy.startswith("training/checkpoints/") and cascade.ema and control.ema
    # phase 2 of the v3 run: both halves start from the finished 3-frame run and spend equal compute
    cascade = load_config(REPO / "training" / "configs" / "lite_synth_v3_cascade.yaml")
    restart = load_config(REPO / "training" / "configs" / "lite_synth_v3_f3_restart.yaml")
    assert cascade.model.init_from == restart.model.init_from == f"{control.checkpoint_copy}/last.ckpt"
    assert (cascade.model.frames, restart.model.frames) == (5, 3)
    assert 3.9 <= restart.iterations / cascade.iterations <= 4.05
    assert cascade.optimizer.lr == restart.optimizer.lr and cascade.data == restart.data
    assert len({cascade.checkpoint_copy, restart.checkpoint_copy, control.checkpoint_copy}) == 3
    # phase 4 goes on from the chosen line's kept checkpoint, on its data and batch, in a folder of its own
    chosen = load_config(REPO / "training" / "configs" / "lite_synth_v3x4_f3.yaml")
    phase4 = load_config(REPO / "training" / "configs" / "lite_synth_v3x4_f3_phase4.yaml")
    assert phase4.model.init_from == f"{chosen.checkpoint_copy}/last.ckpt"
    assert phase4.model == replace(chosen.model, init_from=phase4.model.init_from)
    assert phase4.data == chosen.data and phase4.loss == chosen.loss
    assert phase4.batch * phase4.nproc == chosen.batch * chosen.nproc == 2
    assert phase4.checkpoint_copy != chosen.checkpoint_copy and phase4.run_dir != chosen.run_dir


def test_paper_schedule_halves_every_200_epochs() -> None:
    cfg = load_config(REPO / "training" / "configs" / "paper.yaml")
    per_epoch = 100
    assert learning_rate(cfg, 0, per_epoch) == 1e-4
    assert learning_rate(cfg, 200 * per_epoch - 1, per_epoch) == 1e-4
    assert learning_rate(cfg, 200 * per_epoch, per_epoch) == 5e-5
    assert learning_rate(cfg, 400 * per_epoch, per_epoch) == 2.5e-5


@pytest.mark.slow
def test_torchrun_two_processes_gloo(tmp_path: Path, dataset: Path) -> None:
    # fp32 steps on every CPU: bf16 rounds a batch of 1 and a batch of 2 differently (cpu_bf16: auto picks bf16
    # on a CPU with AVX-512 BF16 or AMX), and this test compares the two to 1e-5
    fp32 = {"iterations": 2, "val_every": 2, "cpu_bf16": "off"}
    cfg = write_config(tmp_path / "ddp.yaml", dataset, tmp_path / "ddp", batch=1, **fp32)
    torchrun = Path(sys.executable).parent / "torchrun"
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "training.train", str(cfg)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = load_model(tmp_path / "ddp" / "final.safetensors")
    assert model.metadata["batch"] == 2  # 1 per process x 2 processes
    assert [it for it, _ in losses(tmp_path / "ddp")] == ["1", "2"]
    # DistributedSampler deals the same shuffled windows out to the two ranks and DDP averages
    # their gradients: the result equals one process taking batches of 2
    single = write_config(tmp_path / "one.yaml", dataset, tmp_path / "one", batch=2, **fp32)
    assert main([str(single)]) == 0
    a, b = load_file(tmp_path / "ddp" / "final.safetensors"), load_file(tmp_path / "one" / "final.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_validation_can_be_turned_off(tmp_path: Path, dataset: Path) -> None:
    cfg = write_config(tmp_path / "nv.yaml", dataset, tmp_path / "nv", iterations=1)
    assert main([str(cfg), "--set", "data.val_split=''"]) == 0
    model = load_model(tmp_path / "nv" / "final.safetensors")
    assert model.metadata["iterations"] == 1 and "val_psnr" not in model.metadata
    assert not (tmp_path / "nv" / "best.safetensors").exists()


def test_init_from_puts_a_3_frame_stage_into_both_stages(
    tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture
) -> None:
    """The two-phase recipe: a frames=5 run starts from a trained frames=3 model (stage 1 only)."""
    from training.train import init_from
    from worker.model import save_model
    from worker.model.weights import WeightsError

    torch.manual_seed(3)
    single = build_model("tiny", 3)
    path = save_model(single, tmp_path / "f3.safetensors")
    cascade = build_model("tiny", 5)
    init_from(cascade, str(path))
    want = single.stage1.state_dict()
    for stage in (cascade.stage1, cascade.stage2):
        got = stage.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(WeightsError, match="differs from this run's"):
        init_from(build_model("lite", 5), str(path))
    with pytest.raises(WeightsError, match="cannot start a frames=3 run"):
        init_from(build_model("tiny", 3), str(save_model(cascade, tmp_path / "f5.safetensors")))
    # through erdn train: a new run starts there (one step moves it), a bad path is one clear line
    cfg = write_config(tmp_path / "c.yaml", dataset, tmp_path / "c", iterations=1, val_every=1)
    assert main([str(cfg), "--set", f"model.init_from={path}"]) == 0
    assert "started from the weights of" in capsys.readouterr().err
    assert main([str(cfg), "--restart", "--set", f"model.init_from={tmp_path / 'nope.safetensors'}"]) == 2
    assert "erdn train:" in capsys.readouterr().err


def test_keep_at_keeps_those_iterations_checkpoints(tmp_path: Path, dataset: Path) -> None:
    """keep_at: the checkpoint of a named iteration survives later ones (phase 1 of the two-phase recipe)."""
    cfg = write_config(tmp_path / "k.yaml", dataset, tmp_path / "k", iterations=3, keep_at=[1], val_every=10)
    assert main([str(cfg)]) == 0
    kept = load_checkpoint(tmp_path / "k" / "it1.ckpt")
    assert kept["iteration"] == 1 and load_checkpoint(tmp_path / "k" / "last.ckpt")["iteration"] == 3
    last = load_checkpoint(tmp_path / "k" / "last.ckpt")["model"]
    assert any(not torch.equal(kept["model"][k], v) for k, v in last.items())
    for bad in ([0], "2800", [1.5], [True]):
        with pytest.raises(ConfigError, match="keep_at must be a list of positive iterations"):
            load_config(write_config(tmp_path / "kb.yaml", dataset, tmp_path / "kb", keep_at=bad))


def test_ema_is_validated_shipped_and_resumed_exactly(tmp_path: Path, dataset: Path) -> None:
    """With ema > 0 the shipped weights are the running average (AveragedModel), kept across a resume."""
    recipe = {"ema": 0.9, "loss": {"pixel": "charbonnier"}, "optimizer": {"lr": 1.0e-3, "offset_lr_mult": 0.25}}
    straight = write_config(tmp_path / "a.yaml", dataset, tmp_path / "a", **recipe)
    assert main([str(straight)]) == 0
    split = write_config(tmp_path / "b.yaml", dataset, tmp_path / "b", **recipe)
    assert main([str(split), "--set", "iterations=2"]) == 0
    state = load_checkpoint(tmp_path / "b" / "last.ckpt")
    assert int(state["ema"]["n_averaged"]) == 2 and state["train_seconds"] > 0
    assert main([str(split)]) == 0
    assert losses(tmp_path / "b") == losses(tmp_path / "a")
    final = load_file(tmp_path / "a" / "final.safetensors")
    last = load_checkpoint(tmp_path / "a" / "last.ckpt")
    # the shipped file is the average, not the raw weights (which differ after 4 steps at lr 1e-3)
    assert all(torch.equal(final[k], last["ema"][f"module.{k}"]) for k in final)
    assert any(not torch.equal(final[k], last["model"][k]) for k in final)
    with open(tmp_path / "a" / "log.csv", newline="") as f:
        assert any(r["val_psnr_raw"] for r in csv.DictReader(f))


def test_crop_steps_grow_the_crop_at_their_iterations(tmp_path: Path, dataset: Path) -> None:
    cfg_path = write_config(tmp_path / "c.yaml", dataset, tmp_path / "c", data={
        "root": str(dataset), "crop": 16, "val_windows": 2, "crop_steps": [[2, 24], [3, 32]]})
    assert main([str(cfg_path)]) == 0
    with open(tmp_path / "c" / "log.csv", newline="") as f:
        crops = {int(r["iteration"]): int(r["crop"]) for r in csv.DictReader(f) if r["crop"]}
    assert crops == {1: 16, 2: 16, 3: 24, 4: 32}  # logged after the step: iteration i ran at crop_at(i - 1)


def test_learning_rate_groups_slow_offsets_and_stage1() -> None:
    from training.train import param_groups, set_group_rates

    cfg = load_config(REPO / "training" / "configs" / "lite_synth_2phase.yaml", {
        "optimizer.offset_lr_mult": 0.25, "optimizer.stage1_lr_mult": 0.0, "optimizer.stage1_lr_until": 10})
    model = build_model("tiny", 5)
    optimizer = torch.optim.Adam(param_groups(model, cfg), lr=1.0)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(names)
    set_group_rates(optimizer, cfg, 1e-3, iteration=5)
    for g in optimizer.param_groups:
        for p in g["params"]:
            n = names[id(p)]
            want = 0.0 if n.startswith("stage1.") else 1e-3 * (0.25 if "offset" in n else 1.0)
            assert g["lr"] == pytest.approx(want), n
    set_group_rates(optimizer, cfg, 1e-3, iteration=10)  # stage 1 joins in
    assert {round(g["lr"], 8) for g in optimizer.param_groups} == {1e-3, 2.5e-4}


def test_cpu_bf16_step_matches_fp32_closely() -> None:
    from training.losses import CascadeLoss
    from training.train import CascadeForward, train_step

    mode = "autocast"
    results = {}
    for m in ("off", mode):
        torch.manual_seed(0)
        model = build_model("tiny", 3)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        g = torch.Generator().manual_seed(2)
        sharp = torch.rand(2, 3, 3, 32, 32, generator=g)
        blur = (sharp + 0.05 * torch.randn(sharp.shape, generator=g)).clamp(0, 1)
        results[m] = [train_step(CascadeForward(model), CascadeLoss(), opt, blur, sharp, amp=False, cpu_mode=m)["total"]
                      for _ in range(3)]
    assert results[mode] == pytest.approx(results["off"], rel=0.05)
    assert results[mode] != results["off"]  # bf16 really ran: results differ from fp32 in the last digits


@pytest.mark.parametrize("native", [True, False])
def test_cpu_bf16_auto_follows_the_cpu(native: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: bf16 only where the CPU has it in hardware (bf16 convolutions run 9x slower per step on an AVX2-only
    CPU); autocast: always; off: never; a GPU: never (CUDA has amp)."""
    import training.train as T

    monkeypatch.setattr(T, "cpu_has_native_bf16", lambda: native)
    cpu = torch.device("cpu")
    assert T.cpu_steps_in_bf16("auto", cpu) is native
    assert T.cpu_steps_in_bf16("autocast", cpu) and not T.cpu_steps_in_bf16("off", cpu)
    assert not T.cpu_steps_in_bf16("autocast", torch.device("cuda"))
    assert load_config(REPO / "training" / "configs" / "lite_synth_v3x4_f3.yaml").cpu_bf16 == "auto"


def test_ddp_stride_warning_is_quiet_for_1x1_kernels_only() -> None:
    import warnings

    import training.train as T

    def ddp_message(sizes: str, strides: str) -> str:  # the text torch's reducer warns with
        return (f"Grad strides do not match bucket view strides. This may indicate grad was not created according "
                f"to the gradient layout contract, or that the param's strides changed since DDP was constructed.  "
                f"This is not an error, but may impair performance.\ngrad.sizes() = [{sizes}], strides() = "
                f"[{strides}]\nbucket_view.sizes() = [{sizes}], strides() = [64, 1, 1, 1]")

    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        T.quiet_1x1_stride_warnings()
        warnings.warn(ddp_message("16, 64, 1, 1", "64, 1, 64, 64"), UserWarning, stacklevel=1)
        warnings.warn(ddp_message("16, 64, 3, 3", "576, 1, 192, 64"), UserWarning, stacklevel=1)
        warnings.warn("another warning about grad.sizes() = [16, 64, 1, 1]", UserWarning, stacklevel=1)
    assert [str(w.message).split(".")[0] for w in shown] == [
        "Grad strides do not match bucket view strides", "another warning about grad"
    ]
    assert "16, 64, 3, 3" in str(shown[0].message)


def test_recipe_keys_are_checked(tmp_path: Path, dataset: Path) -> None:
    for bad, words in (({"cpu_bf16": "fp8"}, "cpu_bf16"), ({"ema": 1.5}, "ema"),
                       ({"loss": {"pixel": "l2"}}, "loss.pixel"),
                       ({"data": {"root": str(dataset), "crop_steps": [[10, 100]]}}, "crop_steps")):
        path = write_config(tmp_path / "bad.yaml", dataset, tmp_path / "bad", **bad)
        with pytest.raises(ConfigError, match=words):
            load_config(path)


def test_checkpoint_copy_is_kept_and_resumed_in_a_fresh_run_dir(tmp_path: Path, dataset: Path) -> None:
    """A run whose run_dir is lost (a fresh clone) goes on from the copy kept under checkpoint_copy."""
    kept = tmp_path / "kept"
    first = write_config(tmp_path / "a.yaml", dataset, tmp_path / "a", checkpoint_copy=str(kept))
    assert main([str(first), "--set", "iterations=2"]) == 0
    assert load_checkpoint(kept / "last.ckpt")["iteration"] == 2 and (kept / "log.csv").is_file()
    elsewhere = write_config(tmp_path / "b.yaml", dataset, tmp_path / "b", checkpoint_copy=str(kept))
    assert main([str(elsewhere)]) == 0
    assert load_checkpoint(tmp_path / "b" / "last.ckpt")["iteration"] == 4
    assert [i for i, _ in losses(tmp_path / "b")] == ["1", "2", "3", "4"]  # the history came along
    assert load_checkpoint(kept / "last.ckpt")["iteration"] == 4


def _agree_as_rank(rank: int, store: str, answers) -> None:  # noqa: ANN001 - a multiprocessing queue
    import signal

    import torch.distributed as dist

    from training.train import agree_on_step

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    answers.put((rank, agree_on_step(2, torch.device("cpu"), 1.5 + rank, signal.SIGTERM if rank == 1 else 0)))
    answers.put((rank, agree_on_step(2, torch.device("cpu"), 0.25, 0)))
    dist.destroy_process_group()


def test_ranks_sum_their_core_seconds_and_stop_together(tmp_path: Path) -> None:
    """Under --nproc N every process's CPU seconds count (two single-thread ranks: twice the core-hours of one), and
    a signal that reached any rank stops them all after the same step."""
    import multiprocessing
    import signal

    ctx = multiprocessing.get_context("spawn")  # fork in a process with threads may deadlock
    answers = ctx.Queue()
    procs = [ctx.Process(target=_agree_as_rank, args=(r, str(tmp_path / "store"), answers)) for r in (0, 1)]
    for proc in procs:
        proc.start()
    got = sorted(answers.get(timeout=120) for _ in range(4))
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    stop = (pytest.approx(4.0), signal.SIGTERM)
    assert got == [(0, (pytest.approx(0.5), 0)), (0, stop), (1, (pytest.approx(0.5), 0)), (1, stop)]


def test_phase_two_counts_phase_one_compute(tmp_path: Path, dataset: Path) -> None:
    """A frames=5 run started from a frames=3 run's checkpoint carries on its core-seconds, so PSNR against
    core-hours compares the two-phase model with the 3-frame control at the compute both really cost."""
    single = write_config(tmp_path / "a.yaml", dataset, tmp_path / "a", iterations=2,
                          model={"preset": "tiny", "frames": 3})
    assert main([str(single)]) == 0
    phase1 = load_checkpoint(tmp_path / "a" / "last.ckpt")
    assert phase1["core_seconds"] > 0
    cascade = write_config(tmp_path / "b.yaml", dataset, tmp_path / "b", iterations=1,
                           model={"preset": "tiny", "frames": 5, "init_from": str(tmp_path / "a" / "last.ckpt")})
    assert main([str(cascade)]) == 0
    phase2 = load_checkpoint(tmp_path / "b" / "last.ckpt")
    assert phase2["core_seconds"] > phase1["core_seconds"] and phase2["train_seconds"] > phase1["train_seconds"]


@pytest.mark.slow
def test_sigterm_saves_the_step_it_finished_and_the_run_resumes(tmp_path: Path, dataset: Path) -> None:
    """SIGTERM between checkpoints (a GPU session's deadline, a shut-down machine) loses no finished step."""
    import signal
    import time

    cfg = write_config(tmp_path / "long.yaml", dataset, tmp_path / "long", iterations=100000, val_every=100000,
                       checkpoint_every=100000, checkpoint_minutes=0)
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "training.train", str(cfg)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "long" / "log.csv"
    deadline = time.monotonic() + 600  # a hang guard only
    while not (log.is_file() and len(losses(tmp_path / "long")) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("erdn train: stopped by SIGTERM at iteration ") and line.endswith(
        "last.ckpt is saved: run the same command to resume"), line
    stopped_at = int(line.split("at iteration ")[1].split(";")[0])
    assert stopped_at >= 3 and load_checkpoint(tmp_path / "long" / "last.ckpt")["iteration"] == stopped_at
    assert not (tmp_path / "long" / "final.safetensors").exists()  # the run is not over
    resumed = write_config(tmp_path / "long.yaml", dataset, tmp_path / "long", iterations=stopped_at + 2,
                           val_every=100000, checkpoint_every=100000, checkpoint_minutes=0)
    assert main([str(resumed)]) == 0
    assert [int(it) for it, _ in losses(tmp_path / "long")][-2:] == [stopped_at + 1, stopped_at + 2]


@pytest.mark.slow
def test_nproc_2_stops_on_sigterm_at_one_step_and_resumes(tmp_path: Path, dataset: Path) -> None:
    """erdn train --nproc 2 (the launcher in erdn's own process): SIGTERM reaches both ranks, they finish the same
    step, rank 0 saves it and alone says so, and the same command resumes from there."""
    import signal
    import time

    cfg = write_config(tmp_path / "long.yaml", dataset, tmp_path / "long", iterations=100000, val_every=100000,
                       checkpoint_every=100000, checkpoint_minutes=0, batch=1)
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "training.train", "--nproc", "2", str(cfg)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600  # a hang guard only
    while not ((tmp_path / "long" / "log.csv").is_file() and len(losses(tmp_path / "long")) >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    said = [line for line in err.splitlines() if line.startswith("erdn train: stopped by SIGTERM")]
    assert len(said) == 2 and said[1].startswith("erdn train: stopped by SIGTERM: the ranks finished"), said
    stopped_at = int(said[0].split("at iteration ")[1].split(";")[0])
    ckpt = load_checkpoint(tmp_path / "long" / "last.ckpt")
    assert stopped_at >= 3 and ckpt["iteration"] == stopped_at and ckpt["core_seconds"] > 0
    resumed = write_config(tmp_path / "long.yaml", dataset, tmp_path / "long", iterations=stopped_at + 2,
                           val_every=100000, checkpoint_every=100000, checkpoint_minutes=0, batch=1, nproc=2)
    proc = subprocess.run([sys.executable, "-m", "training.train", str(resumed)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)  # the config's nproc this time
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [int(it) for it, _ in losses(tmp_path / "long")][-2:] == [stopped_at + 1, stopped_at + 2]
    assert load_model(tmp_path / "long" / "final.safetensors").metadata["batch"] == 2


def test_erdn_train_keeps_freed_memory_before_training(tmp_path: Path, dataset: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # Without it every step page-faults its feature maps in afresh (worker.cpu_runtime); the order matters only in
    # that the setting must be in place before the steps allocate.
    import training.train as T

    calls: list[str] = []
    monkeypatch.setattr(T, "keep_freed_memory", lambda: calls.append("keep_freed_memory") or True)
    monkeypatch.setattr(T, "train", lambda cfg, resume: calls.append(f"train {cfg.name} resume={resume}"))
    assert main([str(write_config(tmp_path / "k.yaml", dataset, tmp_path / "k"))]) == 0
    assert calls == ["keep_freed_memory", "train tiny_test resume=True"]


def test_more_train_roots_join_the_training_set(tmp_path: Path, dataset: Path, capsys: pytest.CaptureFixture) -> None:
    """data.more_train_roots: their train splits join root's (an epoch is twice as long with the same set twice)."""
    def epochs(run_dir: Path) -> list[str]:
        with open(run_dir / "log.csv", newline="") as f:
            return [r["epoch"] for r in csv.DictReader(f) if r["total"]]

    one = write_config(tmp_path / "one.yaml", dataset, tmp_path / "one", iterations=8, val_every=100)
    assert main([str(one)]) == 0
    two = write_config(tmp_path / "two.yaml", dataset, tmp_path / "two", iterations=8, val_every=100)
    assert main([str(two), "--set", f"data.more_train_roots=[{dataset}]"]) == 0
    assert epochs(tmp_path / "one")[-1] == "1" and epochs(tmp_path / "two")[-1] == "0", (
        epochs(tmp_path / "one"), epochs(tmp_path / "two"))
    assert main([str(two), "--restart", "--set", f"data.more_train_roots=[{tmp_path / 'missing'}]"]) == 2
    err = capsys.readouterr().err
    assert "erdn train:" in err and str(tmp_path / "missing") in err
    assert main([str(two), "--restart", "--set", "data.more_train_roots=3"]) == 2
    assert "data.more_train_roots must be a list of dataset folders" in capsys.readouterr().err


def test_compact_checkpoint_copy_resumes_with_a_rewarmed_rate(tmp_path: Path, dataset: Path) -> None:
    """checkpoint_copy_compact keeps weights and EMA in bf16 without Adam moments, and a fresh clone resumes
    from it: Adam restarts and the rate warms up again over schedule.warmup iterations."""
    kept = tmp_path / "kept"
    top = {"checkpoint_copy": str(kept), "checkpoint_copy_compact": True, "ema": 0.9,
           "model": {"preset": "tiny_stem", "frames": 3},
           "schedule": {"name": "constant", "warmup": 2}, "iterations": 6, "log_every": 1}
    first = write_config(tmp_path / "a.yaml", dataset, tmp_path / "a", **top)
    assert main([str(first), "--set", "iterations=2"]) == 0
    full, copy = load_checkpoint(tmp_path / "a" / "last.ckpt"), load_checkpoint(kept / "last.ckpt")
    assert copy["compact"] and "compact" not in full
    assert {t.dtype for t in copy["model"].values()} == {torch.bfloat16}
    assert {t.dtype for t in copy["ema"].values() if t.is_floating_point()} == {torch.bfloat16}
    assert {t.dtype for t in full["model"].values()} == {torch.float32}
    assert copy["optimizer"]["state"] == {} and full["optimizer"]["state"]
    assert copy["optimizer"]["param_groups"] == full["optimizer"]["param_groups"]
    assert copy["rng"]["torch"].dtype == torch.uint8 and copy["iteration"] == 2
    for name, t in full["model"].items():
        assert torch.equal(copy["model"][name], t.to(torch.bfloat16)), name
    elsewhere = write_config(tmp_path / "b.yaml", dataset, tmp_path / "b", **top)
    assert main([str(elsewhere)]) == 0
    resumed = load_checkpoint(tmp_path / "b" / "last.ckpt")
    assert resumed["iteration"] == 6 and {t.dtype for t in resumed["model"].values()} == {torch.float32}
    assert resumed["optimizer"]["state"] and "compact" not in resumed
    with open(tmp_path / "b" / "log.csv", newline="") as f:
        rates = {int(r["iteration"]): float(r["lr"]) for r in csv.DictReader(f) if r["lr"]}
    # iterations are logged 1-based: the first run warmed up over 1-2, the resumed one again over 3-4
    assert rates == pytest.approx({1: 5e-4, 2: 1e-3, 3: 5e-4, 4: 1e-3, 5: 1e-3, 6: 1e-3})
