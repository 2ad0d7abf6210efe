"""``erdn train CONFIG.yaml``: the cascaded training loop.

One process, or several (DistributedDataParallel; gloo on CPU, NCCL on CUDA) launched by ``--nproc`` (or the
config's ``nproc``) or by torchrun::

    erdn train training/configs/lite_synth.yaml
    erdn train training/configs/lite_synth_v3_f3.yaml --nproc 2 --set batch=1   # both cores of a CPU
    torchrun --nproc_per_node 4 -m training.train training/configs/paper.yaml

A run lives in ``run_dir``: ``last.ckpt`` (resumed automatically), ``best.safetensors``
(best validation PSNR), ``final.safetensors``, ``log.csv``, TensorBoard events under
``tb/`` and ``curves.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from erdn_vs.pidlock import LockHeld, hold_pid_lock
from training.checkpoint import (
    CheckpointError,
    compact_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from training.config import ConfigError, TrainConfig, load_config
from training.data import DatasetError, TrainWindows, find_videos, window_indices
from training.data.images import read_rgb, to_uint8
from training.grow import GrowError, can_grow, grow_into
from training.losses import CascadeLoss, LossWeights
from training.metrics import psnr, ssim
from worker.backends import cpu_has_native_bf16
from worker.cpu_runtime import keep_freed_memory
from worker.model import ERDN, build_model, save_model
from worker.model.weights import WeightsError

CSV_FIELDS = [
    "iteration", "epoch", "lr", "crop", "total", "rec", "grad", "align", "val_psnr", "val_ssim", "val_psnr_raw",
    "seconds", "train_seconds", "core_seconds",
]


class CascadeForward(nn.Module):
    """Makes ``ERDN.cascade`` the forward, so DistributedDataParallel sees (and syncs) it."""

    def __init__(self, model: ERDN) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):  # noqa: ANN201 - CascadeOutput
        return self.model.cascade(x)


def learning_rate(cfg: TrainConfig, iteration: int, iters_per_epoch: int) -> float:
    """The schedule as a pure function of the iteration, so resuming needs no scheduler object."""
    s, base = cfg.schedule, cfg.optimizer.lr
    if s.warmup and iteration < s.warmup:
        return base * (iteration + 1) / s.warmup
    if s.name == "constant":
        return base
    if s.name == "step":
        unit = iteration // iters_per_epoch if s.unit == "epoch" else iteration
        return base * s.gamma ** (unit // s.every)
    progress = min(1.0, (iteration - s.warmup) / max(1, cfg.iterations - s.warmup))
    return s.min_lr + 0.5 * (base - s.min_lr) * (1 + math.cos(math.pi * progress))


def crop_at(cfg: TrainConfig, iteration: int) -> int:
    """The training crop at ``iteration``: data.crop, then each data.crop_steps entry from its iteration on."""
    crop = cfg.data.crop
    for at, size in sorted(cfg.data.crop_steps):
        if iteration >= at:
            crop = size
    return crop


def param_groups(model: ERDN, cfg: TrainConfig) -> list[dict[str, Any]]:
    """Parameters grouped by learning-rate multiplier ("lr_mult"): offset predictors (optimizer.offset_lr_mult),
    stage 1 of a frames=5 model (optimizer.stage1_lr_mult until stage1_lr_until), the rest at 1."""
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        key = ("offset" in name, model.frames == 5 and name.startswith("stage1."))
        groups.setdefault(key, []).append(p)
    return [{"params": ps, "offset": off, "stage1": s1} for (off, s1), ps in sorted(groups.items())]


def set_group_rates(optimizer: torch.optim.Optimizer, cfg: TrainConfig, lr: float, iteration: int) -> None:
    o = cfg.optimizer
    stage1 = o.stage1_lr_mult if iteration < o.stage1_lr_until else 1.0
    for g in optimizer.param_groups:
        g["lr"] = lr * (o.offset_lr_mult if g["offset"] else 1.0) * (stage1 if g["stage1"] else 1.0)


def cpu_steps_in_bf16(mode: str, device: torch.device) -> bool:
    """Whether training steps run under ``torch.autocast("cpu", bfloat16)`` (convolutions and matmuls in bf16,
    grid_sample and losses in fp32 by autocast's CPU policy): ``autocast`` always on the CPU, ``auto`` where the
    CPU computes bf16 in hardware (AVX-512 BF16 or AMX; ``worker.backends.cpu_has_native_bf16``), ``off`` never.
    A GPU: no (CUDA uses ``amp``). Measured (docs/training.md "Training speed on a CPU"): a lite 3-frame step 1.17x
    faster with AVX-512 BF16, 9x slower on an AVX2-only CPU, where bf16 convolutions fall back to reference code."""
    if device.type != "cpu":
        return False
    return mode == "autocast" or (mode == "auto" and cpu_has_native_bf16())


def train_step(
    net: nn.Module,
    criterion: CascadeLoss,
    optimizer: torch.optim.Optimizer,
    blur: torch.Tensor,
    sharp: torch.Tensor,
    *,
    amp: bool,
    cpu_mode: str = "off",
    grad_clip: float = 0.0,
) -> dict[str, float]:
    """One optimisation step on a batch (B, T, 3, H, W); returns the loss terms. ``amp``: bf16 autocast on
    CUDA; ``cpu_mode``: see ``cpu_steps_in_bf16``. The loss is always computed in fp32."""
    device = blur.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp or cpu_steps_in_bf16(cpu_mode, device)):
        output = net(blur)
    output = type(output)(output.out.float(), [type(s)(*(t.float() for t in s)) for s in output.stages])
    loss, terms = criterion(output, sharp)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], grad_clip)
    optimizer.step()
    return terms


# ----------------------------------------------------------------------------- validation


def validation_windows(cfg: TrainConfig, frames: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(blurry window (T,H,W,3), sharp centre, blurry centre) uint8, evenly spread over the val videos."""
    if not cfg.data.val_split:
        return []
    videos = find_videos(cfg.data.root, cfg.data.val_split, cfg.data.layout)
    items = [(v, c) for v in videos for c in range(len(v))]
    if cfg.data.val_windows and len(items) > cfg.data.val_windows:
        picks = np.linspace(0, len(items) - 1, cfg.data.val_windows).round().astype(int)
        items = [items[i] for i in picks]
    out = []
    for video, centre in items:
        blur = np.stack([read_rgb(video.blur[i]) for i in window_indices(centre, len(video), frames)])
        sharp = read_rgb(video.sharp[centre])
        if cfg.data.val_crop:
            c = cfg.data.val_crop
            h, w = sharp.shape[:2]
            y, x = max(0, (h - c) // 2), max(0, (w - c) // 2)
            blur, sharp = blur[:, y : y + c, x : x + c], sharp[y : y + c, x : x + c]
        out.append((blur, sharp, blur[frames // 2]))
    return out


@torch.no_grad()
def validate(model: ERDN, windows: list, device: torch.device) -> dict[str, float]:
    """Mean PSNR/SSIM of restored and of blurry centre frames (official metric: 8-bit, border 4)."""
    was_training = model.training
    model.eval()
    scores: dict[str, list[float]] = {"psnr": [], "ssim": [], "blurry_psnr": [], "blurry_ssim": []}
    for blur, sharp, blurry_centre in windows:
        x = torch.from_numpy(blur.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)[None].to(device)
        restored = to_uint8(model(x)[0].float().cpu().numpy().transpose(1, 2, 0))
        scores["psnr"].append(psnr(restored, sharp))
        scores["ssim"].append(ssim(restored, sharp))
        scores["blurry_psnr"].append(psnr(blurry_centre, sharp))
        scores["blurry_ssim"].append(ssim(blurry_centre, sharp))
    model.train(was_training)
    return {k: float(np.mean(v)) for k, v in scores.items()}


# ----------------------------------------------------------------------------- logging


class RunLog:
    """CSV (always), TensorBoard (when the tensorboard package is installed), on rank 0 only."""

    def __init__(self, run_dir: Path, start_iteration: int) -> None:
        self.path = run_dir / "log.csv"
        rows = []
        if self.path.is_file() and start_iteration > 0:  # keep what happened before the checkpoint
            with open(self.path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["iteration"]) <= start_iteration]
        with open(self.path, "w", newline="") as f:
            w = csv.DictWriter(f, CSV_FIELDS)
            w.writeheader()
            w.writerows(rows)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_iteration + 1 if start_iteration else None)
        except ImportError:
            print("erdn train: tensorboard is not installed; logging to log.csv only", file=sys.stderr)

    def write(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, CSV_FIELDS).writerow({k: row.get(k, "") for k in CSV_FIELDS})
        if self.tb is not None:
            for k, v in row.items():
                if k not in ("iteration", "epoch", "seconds") and v != "":
                    self.tb.add_scalar(k if k.startswith("val") else f"train/{k}", float(v), int(row["iteration"]))
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def plot_curves(csv_path: Path, png_path: Path) -> bool:
    """Loss and validation PSNR curves as a PNG; False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    train = [(int(r["iteration"]), float(r["total"])) for r in rows if r["total"]]
    val = [(int(r["iteration"]), float(r["val_psnr"])) for r in rows if r["val_psnr"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    if train:
        a.plot(*zip(*train, strict=True))
    a.set(xlabel="iteration", ylabel="training loss (all stages)", yscale="log")
    if val:
        b.plot(*zip(*val, strict=True), marker="o")
    b.set(xlabel="iteration", ylabel="validation PSNR (dB)")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------- the loop


def setup_distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world_size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 0, 1
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), world


def quiet_1x1_stride_warnings() -> None:
    """Silence DistributedDataParallel's "Grad strides do not match bucket view strides" for 1x1 kernels only.

    Under bf16 autocast on the CPU a 1x1 convolution's weight gradient comes back with channels-last strides,
    e.g. (64, 1, 64, 64) for a (16, 64, 1, 1) weight. Strides of size-1 dimensions address nothing, so that is
    the same memory order as the bucket's and the warning's "may impair performance" does not apply; for any
    other kernel it still shows.
    """
    warnings.filterwarnings(
        "ignore", message=r"(?s)Grad strides do not match bucket view strides.*grad\.sizes\(\) = \[\d+, \d+, 1, 1\]"
    )


def init_from(model: ERDN, path: str) -> None:
    """Load a trained model's weights into ``model``: the same preset, or a shallower one that grows into it
    (training/grow.py); a frames=3 model's single stage goes into every stage of a frames=5 ``model``.
    Raises WeightsError / CheckpointError naming what does not fit."""
    from training.evaluate import load_weights_or_checkpoint

    source = load_weights_or_checkpoint(path, "cpu")
    if source.cfg != model.cfg:
        why = can_grow(source.cfg, model.cfg)
        if why is not None:
            raise WeightsError(f"model.init_from {path}: its network ({source.preset}) differs from this run's "
                               f"({model.preset}) and cannot grow into it: {why}; start from weights of the same "
                               "preset or of a shallower one of the same widths")
    if source.frames != model.frames and source.frames != 3:
        raise WeightsError(f"model.init_from {path}: a frames={source.frames} model cannot start a "
                           f"frames={model.frames} run; use frames=3 or frames={model.frames} weights")
    pairs = [(model.stage1, source.stage1)]
    if model.frames == 5:
        pairs.append((model.stage2, source.stage2 if source.frames == 5 else source.stage1))
    for n, (stage, trained) in enumerate(pairs, 1):
        try:
            grow_into(stage, trained, f"stage{n}")  # a plain copy when the two networks are the same
        except GrowError as e:
            raise WeightsError(f"model.init_from {path}: {e}") from None


class TrainingStopped(Exception):
    """SIGTERM or SIGINT ended a run between two steps, after it saved ``last.ckpt``: the same command resumes it."""

    def __init__(self, signum: int, iteration: int, checkpoint: Path) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} at iteration {iteration}; {checkpoint} is saved: "
                         "run the same command to resume")
        self.signum = signum


@contextlib.contextmanager
def stop_requests():
    """While inside, SIGTERM and SIGINT only record themselves (a dict with ``"signum"``), so that the loop can
    finish its step and save before it stops (under torchrun the ranks agree on the step: ``agree_on_step``).
    Off outside the main thread, where signal handlers cannot be set."""
    got: dict[str, int] = {}
    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    for sig in before:
        signal.signal(sig, lambda signum, frame: got.setdefault("signum", signum))
    try:
        yield got
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def agree_on_step(world: int, device: torch.device, cpu_seconds: float, signum: int) -> tuple[float, int]:
    """After a step under DistributedDataParallel: (the step's CPU seconds summed over every rank, the signal
    that asked any rank to stop, or 0), so that core-hours count every process and all ranks stop (and rank 0
    saves) after the same step. One process: its own figures."""
    if world == 1:
        return cpu_seconds, signum
    t = torch.tensor([cpu_seconds, signum == signal.SIGTERM, signum == signal.SIGINT], dtype=torch.float64,
                     device=device)
    dist.all_reduce(t)
    agreed = signal.SIGTERM if t[1] > 0 else signal.SIGINT if t[2] > 0 else 0
    return float(t[0]), int(agreed)


#: Outputs a config may send outside run_dir: a run moved with --set run_dir=... writes none of them there.
OUTSIDE_RUN_DIR = ("weights_out", "checkpoint_copy")


def own_run_dir(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """With ``run_dir`` overridden, every output of the run goes there: the config's ``weights_out`` and
    ``checkpoint_copy`` (paths of the shipped run) are dropped unless also given, and the user is told."""
    if "run_dir" not in overrides:
        return cfg
    dropped = [k for k in OUTSIDE_RUN_DIR if k not in overrides and getattr(cfg, k)]
    if dropped and "WORLD_SIZE" not in os.environ:  # said once, by the launching process
        print(f"erdn train: --set run_dir moves every output there; this run does not write the config's "
              f"{' or '.join(f'{k} ({getattr(cfg, k)})' for k in dropped)}; give --set {dropped[0]}=PATH to "
              "write it", file=sys.stderr)
    return replace(cfg, **{k: "" for k in dropped})


def check_crop(videos: list, crop: int) -> None:
    """Raise DatasetError, before any step, when a training video's frames are smaller than ``data.crop``
    (its first frame; ``find_videos`` checks that a video's frames share one size)."""
    from .data.images import image_size

    for video in videos:
        w, h = image_size(video.blur[0])
        if min(w, h) < crop:
            fits = min(min(image_size(v.blur[0])) for v in videos) // 16 * 16
            raise DatasetError(f"video {video.name} has {w}x{h} frames, smaller than data.crop {crop}: lower the "
                               f"crop (--set data.crop={fits} fits every video) or give bigger frames")


def claim_run_dir(run_dir: Path) -> int:
    """One trainer per run directory: an exclusive lock on ``run_dir/train.lock`` (it holds the owner's pid),
    held while the returned file descriptor is open (the OS drops it when the process ends, even killed).

    Raises CheckpointError naming the other trainer: a second one would resume from the first's live
    checkpoint and both would write the same files.
    """
    try:
        return hold_pid_lock(run_dir / "train.lock")
    except LockHeld as held:
        raise CheckpointError(f"another erdn train (pid {held.pid}) is training in {run_dir}; wait for it to end, "
                              "stop it, or give this run its own directory (--set run_dir=DIR)") from None


def train(cfg: TrainConfig, resume: bool = True) -> Path:
    """Run (or resume) the training described by ``cfg``; returns the final weights path."""
    rank, local_rank, world = setup_distributed()
    main_process = rank == 0
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    use_amp = cfg.amp and device.type == "cuda"
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = claim_run_dir(run_dir) if main_process else None
    try:
        return _train_claimed(cfg, resume, rank, local_rank, world, device, use_amp, run_dir)
    finally:  # released however the run ends: an error's traceback would otherwise keep the lock alive
        if lock is not None:
            os.close(lock)


def _train_claimed(cfg: TrainConfig, resume: bool, rank: int, local_rank: int, world: int, device: torch.device,
                   use_amp: bool, run_dir: Path) -> Path:
    """``train`` once this process holds the run directory."""
    main_process = rank == 0
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model.preset, cfg.model.frames).to(device)
    model.train()
    net: nn.Module = CascadeForward(model)
    if world > 1:
        quiet_1x1_stride_warnings()
        net = nn.parallel.DistributedDataParallel(net, device_ids=[local_rank] if device.type == "cuda" else None)
    opt_cls = torch.optim.AdamW if cfg.optimizer.name == "adamw" else torch.optim.Adam
    optimizer = opt_cls(
        param_groups(model, cfg), lr=cfg.optimizer.lr, betas=cfg.optimizer.betas,
        weight_decay=cfg.optimizer.weight_decay,
    )
    criterion = CascadeLoss(LossWeights(cfg.loss.rec, cfg.loss.grad, cfg.loss.align, cfg.loss.pixel)).to(device)
    # The weights validated and shipped: an exponential moving average when cfg.ema > 0, else the model.
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True) if cfg.ema else None
    shipped = ema.module if ema is not None else model

    videos = [v for root in (cfg.data.root, *cfg.data.more_train_roots)
              for v in find_videos(root, cfg.data.train_split, cfg.data.layout)]
    check_crop(videos, cfg.data.crop)
    dataset = TrainWindows(videos, cfg.model.frames, cfg.data.crop, cfg.data.flip, cfg.data.rotate, cfg.seed)
    sampler = torch.utils.data.DistributedSampler(dataset, world, rank, shuffle=True, seed=cfg.seed, drop_last=True)
    iters_per_epoch = len(sampler) // cfg.batch
    if iters_per_epoch == 0:
        raise DatasetError(
            f"{len(dataset)} training windows cannot fill one batch of {cfg.batch} on {world} process(es)"
        )

    copy_dir = Path(cfg.checkpoint_copy) if cfg.checkpoint_copy else None
    if resume and main_process and copy_dir is not None and not (run_dir / "last.ckpt").is_file():
        if (copy_dir / "last.ckpt").is_file():  # the run went on elsewhere: carry on from its kept copy
            shutil.copyfile(copy_dir / "last.ckpt", run_dir / "last.ckpt")
            if (copy_dir / "log.csv").is_file():
                shutil.copyfile(copy_dir / "log.csv", run_dir / "log.csv")
            print(f"erdn train: resuming from the kept copy {copy_dir / 'last.ckpt'}", file=sys.stderr)
    if world > 1:
        dist.barrier()
    start, best = 0, {"psnr": -math.inf, "iteration": -1}
    # Compute spent on training steps over every resumed part of the run: wall seconds, and CPU seconds of this
    # process (every thread; on a shared CPU the honest count of core-hours, which the wall clock overstates).
    train_seconds = core_seconds = 0.0
    rewarm: tuple[int, int] | None = None  # (from, until): the rate's warm-up after a compact resume
    ckpt_path = run_dir / "last.ckpt"
    if resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path)
        if state["preset"] != cfg.model.preset or int(state["frames"]) != cfg.model.frames:
            raise CheckpointError(f"{ckpt_path} is a {state['preset']}/{state['frames']}-frame run; the config differs")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if ema is not None:
            if "ema" in state:
                ema.load_state_dict(state["ema"])
            else:  # a run that gains an EMA when resumed: the average starts from the current weights
                ema.module.load_state_dict(model.state_dict())
        train_seconds = float(state.get("train_seconds", 0.0))
        core_seconds = float(state.get("core_seconds", 0.0))
        set_rng_state(state["rng"])
        start = int(state["iteration"])
        best = {"psnr": float(state["best_psnr"]), "iteration": int(state["best_iteration"])}
        if state.get("compact"):  # no Adam moments: they restart under a warm-up of the rate
            rewarm = (start, start + max(1, cfg.schedule.warmup))
        if main_process:
            print(f"erdn train: resumed {ckpt_path} at iteration {start}"
                  + (f" (compact: Adam restarts, the rate warms up until {rewarm[1]})" if rewarm else ""),
                  file=sys.stderr)
    elif cfg.model.init_from:
        init_from(model, cfg.model.init_from)
        if cfg.model.init_from.endswith(".ckpt"):  # phase 2 of a run: its compute counts phase 1's too
            phase1 = load_checkpoint(cfg.model.init_from)
            train_seconds = float(phase1.get("train_seconds", 0.0))
            core_seconds = float(phase1.get("core_seconds", 0.0))
        if ema is not None:
            ema.module.load_state_dict(model.state_dict())
        if main_process:
            print(f"erdn train: started from the weights of {cfg.model.init_from}", file=sys.stderr)

    def save_last(iteration: int) -> dict[str, Any]:
        state = (
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "rng": rng_state(),
                "iteration": iteration,
                "best_psnr": best["psnr"],
                "best_iteration": best["iteration"],
                "preset": cfg.model.preset,
                "frames": cfg.model.frames,
                "train_seconds": train_seconds,
                "core_seconds": core_seconds,
            }
            | ({"ema": ema.state_dict()} if ema is not None else {})
        )
        save_checkpoint(state, ckpt_path)
        return state

    if main_process and device.type == "cpu":
        in_bf16, native = cpu_steps_in_bf16(cfg.cpu_bf16, device), cpu_has_native_bf16()
        print(f"erdn train: CPU steps in {'bf16' if in_bf16 else 'fp32'} (cpu_bf16: {cfg.cpu_bf16}; this CPU has "
              f"{'' if native else 'no '}native bf16)", file=sys.stderr)
        if in_bf16 and not native:
            print("erdn train: warning: cpu_bf16: autocast on a CPU without AVX-512 BF16 or AMX runs bf16 "
                  "convolutions in reference code, about 9x slower per step; set cpu_bf16: auto", file=sys.stderr)
    log = RunLog(run_dir, start) if main_process else None
    val_windows = validation_windows(cfg, cfg.model.frames) if main_process else []
    metadata = {
        "preset": cfg.model.preset,
        "frames": cfg.model.frames,
        "training_data": cfg.training_data or " + ".join((cfg.data.root, *cfg.data.more_train_roots)),
        "config": cfg.name,
        "seed": cfg.seed,
        "crop": cfg.data.crop,
        "batch": cfg.batch * world,
    }
    last_val: dict[str, float] = {}

    def val_metadata() -> dict[str, float]:
        return {f"val_{k}": v for k, v in last_val.items()}

    def run_validation(iteration: int) -> None:
        nonlocal last_val
        if main_process:
            if not val_windows:  # data.val_split: "" turns validation off
                return
            last_val = validate(shipped, val_windows, device)
            row = {"iteration": iteration, "val_psnr": last_val["psnr"], "val_ssim": last_val["ssim"],
                   "train_seconds": round(train_seconds, 2), "core_seconds": round(core_seconds, 2)}
            if ema is not None:  # how much the average adds over the raw weights
                row["val_psnr_raw"] = validate(model, val_windows, device)["psnr"]
            log.write(row)
            print(
                f"erdn train: iteration {iteration}: val PSNR {last_val['psnr']:.2f} dB SSIM {last_val['ssim']:.4f} "
                f"(blurry {last_val['blurry_psnr']:.2f} dB / {last_val['blurry_ssim']:.4f})",
                file=sys.stderr,
            )
            if last_val["psnr"] > best["psnr"]:
                best.update(psnr=last_val["psnr"], iteration=iteration)
                save_model(shipped, run_dir / "best.safetensors", **metadata, iterations=iteration, **val_metadata())
        if world > 1:
            dist.barrier()

    bar = None
    if main_process:
        from tqdm import tqdm

        bar = tqdm(total=cfg.iterations, initial=start, desc=cfg.name, unit="it", file=sys.stderr, dynamic_ncols=True)
    sums: dict[str, float] = {}
    count, t0, last_ckpt_time = 0, time.time(), time.time()
    batches = None
    iteration = start
    with stop_requests() as stop:
        while iteration < cfg.iterations:
            epoch, within = divmod(iteration, iters_per_epoch)
            if crop_at(cfg, iteration) != dataset.crop:
                dataset.crop, batches = crop_at(cfg, iteration), None
            if batches is None:
                sampler.set_epoch(epoch)
                dataset.set_epoch(epoch)
                indices = list(sampler)[within * cfg.batch : iters_per_epoch * cfg.batch]
                loader = torch.utils.data.DataLoader(
                    dataset, batch_size=cfg.batch, sampler=indices, num_workers=cfg.data.workers, drop_last=True
                )
                batches = iter(loader)
            try:
                blur, sharp = next(batches)
            except StopIteration:
                batches = None
                continue
            lr = learning_rate(cfg, iteration, iters_per_epoch)
            if rewarm is not None and iteration < rewarm[1]:
                lr *= (iteration - rewarm[0] + 1) / (rewarm[1] - rewarm[0])
            set_group_rates(optimizer, cfg, lr, iteration)
            blur, sharp = blur.to(device, non_blocking=True), sharp.to(device, non_blocking=True)
            step_start, step_cpu = time.time(), time.process_time()
            terms = train_step(
                net, criterion, optimizer, blur, sharp, amp=use_amp, cpu_mode=cfg.cpu_bf16,
                grad_clip=cfg.optimizer.grad_clip,
            )
            if ema is not None:
                ema.update_parameters(model)
            step_cores, signum = agree_on_step(world, device, time.process_time() - step_cpu, stop.get("signum", 0))
            train_seconds += time.time() - step_start
            core_seconds += step_cores
            iteration += 1
            if within + 1 == iters_per_epoch:
                batches = None
            for k in ("total", "rec", "grad", "align"):
                sums[k] = sums.get(k, 0.0) + terms[k]
            count += 1
            if main_process:
                bar.update(1)
                bar.set_postfix(loss=f"{terms['total']:.4f}", lr=f"{lr:.2e}")
                if iteration % cfg.log_every == 0 or iteration == cfg.iterations:
                    log.write(
                        {"iteration": iteration, "epoch": epoch, "lr": lr, "crop": dataset.crop,
                         "seconds": round(time.time() - t0, 2), "train_seconds": round(train_seconds, 2),
                         "core_seconds": round(core_seconds, 2)}
                        | {k: v / count for k, v in sums.items()}
                    )
                    sums, count = {}, 0
            if iteration % cfg.val_every == 0 or iteration == cfg.iterations:
                run_validation(iteration)
            minutes_due = cfg.checkpoint_minutes > 0 and time.time() - last_ckpt_time > 60 * cfg.checkpoint_minutes
            keep = iteration in cfg.keep_at
            due = iteration % cfg.checkpoint_every == 0 or iteration == cfg.iterations or minutes_due
            stopping = signum != 0
            if main_process and (due or keep or stopping):
                state = save_last(iteration)
                last_ckpt_time = time.time()
                if copy_dir is not None:
                    copy_dir.mkdir(parents=True, exist_ok=True)
                    if cfg.checkpoint_copy_compact:
                        save_checkpoint(compact_checkpoint(state), copy_dir / "last.ckpt")
                    kept = ("log.csv",) if cfg.checkpoint_copy_compact else ("last.ckpt", "log.csv")
                    for name in kept:
                        shutil.copyfile(run_dir / name, copy_dir / f"{name}.partial")
                        (copy_dir / f"{name}.partial").replace(copy_dir / name)
                if keep:
                    shutil.copyfile(ckpt_path, run_dir / f"it{iteration}.ckpt")
            if stopping:
                if main_process:
                    bar.close()
                    log.close()
                if world > 1:
                    dist.barrier()  # rank 0 has saved
                    dist.destroy_process_group()
                raise TrainingStopped(signum, iteration, copy_dir / "last.ckpt" if copy_dir else ckpt_path)
    if start >= cfg.iterations:  # resumed a finished run: validate once more for the weights' metadata
        run_validation(iteration)
    if main_process:
        bar.close()
        final = save_model(
            shipped,
            run_dir / "final.safetensors",
            **metadata,
            iterations=iteration,
            **val_metadata(),
        )
        if cfg.weights_out:
            Path(cfg.weights_out).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(final, cfg.weights_out)
        log.close()
        plot_curves(run_dir / "log.csv", run_dir / "curves.png")
        print(f"erdn train: done; weights {final}", file=sys.stderr)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return run_dir / "final.safetensors"


def launch_processes(nproc: int, args: list[str]) -> int:
    """``erdn train --nproc N``: this run in N processes under torchrun's launcher (in this process, so that a
    SIGTERM reaches it and it passes the signal on to every rank: they agree on a step, rank 0 saves)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(["--standalone", "--nproc-per-node", str(nproc), "-m", "training.train", *args])
    except SignalException as e:
        print(f"erdn train: stopped by {e.sigval.name}: the ranks finished the same step and rank 0 saved it (above); "
              "run the same command to resume", file=sys.stderr)
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        codes = sorted({f.exitcode for f in e.failures.values()})
        print(f"erdn train: {len(e.failures)} of {nproc} processes failed (exit codes {codes}); their errors are "
              "above", file=sys.stderr)
        return 2 if codes == [2] else 1
    return 0


def parse_overrides(items: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set takes KEY=VALUE (e.g. data.crop=128), got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="erdn train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("config", nargs="?", help="YAML config: a file, or a shipped config's name (--list-configs)")
    p.add_argument("--list-configs", action="store_true", help="list the shipped configs (names and purpose)")
    p.add_argument("--set", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config keys, dotted within a section: --set batch=16 data.crop=192 (repeatable)")
    p.add_argument("--restart", action="store_true", help="ignore run_dir/last.ckpt and start from scratch")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train data-parallel in N processes on this machine (default: the config's nproc, 1; "
                        "torchrun --standalone; gloo on the CPU, NCCL on GPUs, one per GPU). 'batch' is per "
                        "process. On a CPU, N single-thread processes finish each iteration sooner than one (with 2: "
                        "1.35x on an AVX2 EPYC at 1.33x the CPU per iteration, 1.58x on an AMX Xeon at no more "
                        "CPU; README 'Training speed on a CPU'), where one process on N threads costs 8x the CPU")
    a = p.parse_args(argv)
    if a.list_configs:
        from .config import describe_config, shipped_configs

        for name, path in shipped_configs().items():
            print(f"{name:36s} {describe_config(path)[:100]}")
        return 0
    if a.config is None:
        p.error("the following arguments are required: config (a YAML file or a shipped name; --list-configs)")
    try:
        overrides = parse_overrides(a.set) | ({"nproc": a.nproc} if a.nproc is not None else {})
        cfg = own_run_dir(load_config(a.config, overrides), overrides)
        if a.print_config:
            import yaml

            print(yaml.safe_dump(asdict(cfg), sort_keys=False))
            return 0
        if cfg.nproc > 1 and "WORLD_SIZE" not in os.environ:
            gpus = torch.cuda.device_count()
            if gpus and cfg.nproc > gpus:
                raise ConfigError(f"nproc {cfg.nproc} needs {cfg.nproc} GPUs, this machine has {gpus}: "
                                  f"use --nproc {gpus} (and raise batch to keep the recipe's)")
            return launch_processes(cfg.nproc, [a.config, "--set", *a.set, f"nproc={cfg.nproc}",
                                                *(["--restart"] if a.restart else [])])
        # Freed feature maps stay in the heap: without it every step page-faults fresh memory in
        # (worker.cpu_runtime; lite 3-frame steps 1.06x faster here, 5-frame ones level: benchmarks/bench_train.py).
        keep_freed_memory()
        train(cfg, resume=not a.restart)
    except (ConfigError, CheckpointError, DatasetError, WeightsError) as e:
        print(f"erdn train: {e}", file=sys.stderr)
        return 2
    except TrainingStopped as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun rank 0 speaks for every rank
            print(f"\nerdn train: {e}", file=sys.stderr)
        return 128 + e.signum
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
