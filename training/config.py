"""Training configuration: one YAML file, read into plain dataclasses and checked up front.

Relative paths in a config (data roots, the run folder) are taken relative to the
current directory, so configs under training/configs/ are meant to run from the repo root.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key and what it should be."""


@dataclass
class ModelConfig:
    preset: str = "lite"
    frames: int = 5
    # Weights (.safetensors or a run's .ckpt) to start a new run from: a frames=3 model's stage goes into
    # both stages of a frames=5 model (the official two-phase recipe: one stage first, then the cascade).
    init_from: str = ""


@dataclass
class DataConfig:
    root: str = "data/synth"
    layout: str = "auto"
    train_split: str = "train"
    val_split: str = "test"  # "" turns validation off
    crop: int = 256
    flip: bool = True
    rotate: bool = True
    workers: int = 0
    val_windows: int = 8  # validation windows (evenly spread over the val videos); 0: every window
    val_crop: int = 0  # centre crop of validation frames (0: whole frames)
    # Crops that grow late in a run: [[iteration, crop], ...], each from that iteration on (batch unchanged).
    # At a 96 crop the coarsest pyramid level is 12x12; larger crops give the offsets room late in a run.
    crop_steps: tuple[tuple[int, int], ...] = ()
    # More datasets whose train split (same layout) joins root's: e.g. a second `erdn synth` with another seed
    # (more clips, the same held-out photographs) while validation stays root's.
    more_train_roots: tuple[str, ...] = ()


@dataclass
class OptimizerConfig:
    name: str = "adam"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # max gradient norm (0: off)
    # Learning-rate multiplier of the convolutions that predict deformable offsets and masks (every parameter
    # whose name contains "offset"); DCNv2's and EDVR's authors train them slower for stability.
    offset_lr_mult: float = 1.0
    # Multiplier of stage 1's rate in a frames=5 run until iteration stage1_lr_until (0: frozen), then 1:
    # stage 2 learns on a fixed stage 1 first, then the cascade trains jointly.
    stage1_lr_mult: float = 1.0
    stage1_lr_until: int = 0


@dataclass
class ScheduleConfig:
    name: str = "step"  # step | cosine | constant
    every: int = 200  # step: halve (gamma) every this many `unit`s
    unit: str = "epoch"  # epoch | iteration
    gamma: float = 0.5
    min_lr: float = 1e-6  # cosine: final learning rate
    warmup: int = 0  # iterations of linear warm-up


@dataclass
class LossConfig:
    rec: float = 1.0
    grad: float = 1.0
    align: float = 1.0  # lambda of Eq. 10
    pixel: str = "l1"  # l1 | charbonnier (sqrt(d^2 + eps^2), eps 1e-3: EDVR, BasicVSR)


@dataclass
class TrainConfig:
    name: str = "run"
    run_dir: str = "runs/run"
    seed: int = 0
    batch: int = 8  # per process
    iterations: int = 1000
    val_every: int = 500
    checkpoint_every: int = 100  # iterations; also every checkpoint_minutes, whichever comes first
    checkpoint_minutes: float = 0.0
    keep_at: tuple[int, ...] = ()  # also keep the checkpoint of these iterations, as it<N>.ckpt
    # Also keep last.ckpt and log.csv in this folder (under training/checkpoints/, committed as the run goes),
    # and resume from it where run_dir has no last.ckpt: a long run goes on in any clone, on any machine.
    checkpoint_copy: str = ""
    # Keep that copy compact (training.checkpoint.compact_checkpoint): weights and EMA in bfloat16, no Adam
    # moments, which a resume restarts under a warm-up of schedule.warmup iterations. For wide models, whose
    # full checkpoints pass the 32 MB of training/CHECKPOINTS.md (a 7M-parameter run: 115 MB full, 29 MB compact).
    # The run's own last.ckpt in run_dir stays full, so resuming on the same machine is exact.
    checkpoint_copy_compact: bool = False
    log_every: int = 10
    threads: int = 0  # torch CPU threads (0: torch's default)
    # Processes of one data-parallel run on this machine (erdn train --nproc overrides): on a CPU one
    # single-thread process per core; on a GPU machine at most one per GPU. batch is per process.
    nproc: int = 1
    amp: bool = True  # mixed precision on CUDA (bfloat16)
    # bfloat16 on the CPU (torch.autocast: convs in bf16, grid_sample and the loss in fp32): "auto" where the
    # CPU has AVX-512 BF16 or AMX (1.17x it/core-hour there), else fp32; "autocast" always (9x slower per step
    # on an AVX2-only CPU); "off" never. docs/training.md "Training speed on a CPU".
    cpu_bf16: str = "auto"
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: off); validated and shipped
    weights_out: str = ""  # also copy the final weights here (e.g. worker/weights/x.safetensors)
    training_data: str = ""  # description recorded in the weights' metadata
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)


SECTIONS = {
    "model": ModelConfig,
    "data": DataConfig,
    "optimizer": OptimizerConfig,
    "schedule": ScheduleConfig,
    "loss": LossConfig,
}


def _build(cls: type, raw: Any, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(raw).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name in SECTIONS and cls is TrainConfig:
            values[name] = _build(SECTIONS[name], value, f"{where}.{name}")
            continue
        default = getattr(cls(), name)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}.{name} must be true or false, got {value!r}")
        elif isinstance(default, int | float) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{where}.{name} must be a number, got {value!r}")
            if isinstance(default, int) and not float(value).is_integer():
                raise ConfigError(f"{where}.{name} must be a whole number, got {value!r}")
            value = type(default)(value)
        elif name == "keep_at":
            if not isinstance(value, list | tuple) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
            ):
                raise ConfigError(f"{where}.keep_at must be a list of positive iterations, got {value!r}")
            value = tuple(value)
        elif name == "crop_steps":
            if not isinstance(value, list | tuple) or not all(
                isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(n, int) and n > 0 for n in v)
                for v in value
            ):
                raise ConfigError(f"{where}.crop_steps must be a list of [iteration, crop] pairs, got {value!r}")
            value = tuple(tuple(v) for v in value)
        elif name == "more_train_roots":
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) and v for v in value):
                raise ConfigError(f"{where}.more_train_roots must be a list of dataset folders, got {value!r}")
            value = tuple(value)
        elif isinstance(default, tuple):
            value = tuple(float(v) for v in value)
        elif isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{where}.{name} must be a string, got {value!r}")
        values[name] = value
    return cls(**values)


#: The configs shipped with erdn-vs (``erdn train NAME`` finds them from any directory).
SHIPPED = Path(__file__).resolve().parent / "configs"


def shipped_configs() -> dict[str, Path]:
    """Shipped config name (its path under ``SHIPPED`` without .yaml, e.g. ``paper``, ``trials/lite_f3``) -> path."""
    return {str(p.relative_to(SHIPPED).with_suffix("")): p for p in sorted(SHIPPED.rglob("*.yaml"))}


def describe_config(path: Path) -> str:
    """A config's first comment line: what it is for."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def find_config(path: str | Path) -> Path:
    """A config file: ``path`` itself, else the shipped config of that name (with or without .yaml).
    Raises ConfigError naming the shipped configs."""
    given = Path(path)
    if given.is_file():
        return given
    name = str(path).removesuffix(".yaml")
    shipped = shipped_configs()
    if name in shipped:
        return shipped[name]
    top = [n for n in shipped if "/" not in n]
    raise ConfigError(f"config {path} does not exist, here or among the shipped configs ({', '.join(top)}, ...; "
                      "`erdn train --list-configs` lists them all)")


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read and check a training config. ``overrides`` maps dotted keys (``data.crop``) to values."""
    path = find_config(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:  # one line: the problem and where (PyYAML's own text spans several)
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
        raise ConfigError(f"config {path} is not valid YAML{where}: {problem}; fix it there "
                          "(see training/configs/ for examples)") from None
    for key, value in (overrides or {}).items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            if node.get(p) is None:  # absent, or a section left empty in the YAML
                node[p] = {}
            node = node[p]
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {p} is a value, not a section of the config")
        node[leaf] = value
    cfg = _build(TrainConfig, raw, path.name)
    check(cfg, path.name)
    return cfg


def check(cfg: TrainConfig, where: str) -> None:
    from worker.model import PRESETS

    if cfg.model.preset not in PRESETS:
        raise ConfigError(f"{where}: model.preset {cfg.model.preset!r} is not one of {sorted(PRESETS)}")
    if cfg.model.frames not in (3, 5):
        raise ConfigError(f"{where}: model.frames must be 3 or 5, got {cfg.model.frames}")
    if cfg.data.crop < 8 or cfg.data.crop % 8:
        raise ConfigError(f"{where}: data.crop must be a positive multiple of 8, got {cfg.data.crop}")
    for name in ("batch", "iterations", "val_every", "checkpoint_every", "log_every", "nproc"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{where}: {name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.optimizer.name not in ("adam", "adamw"):
        raise ConfigError(f"{where}: optimizer.name must be adam or adamw, got {cfg.optimizer.name!r}")
    if cfg.schedule.name not in ("step", "cosine", "constant"):
        raise ConfigError(f"{where}: schedule.name must be step, cosine or constant, got {cfg.schedule.name!r}")
    for at, crop in cfg.data.crop_steps:
        if crop % 8:
            raise ConfigError(f"{where}: data.crop_steps: crop {crop} at iteration {at} must be a multiple of 8")
    if cfg.cpu_bf16 not in ("off", "auto", "autocast"):
        raise ConfigError(f"{where}: cpu_bf16 must be auto, off or autocast, got {cfg.cpu_bf16!r}")
    if not 0.0 <= cfg.ema < 1.0:
        raise ConfigError(f"{where}: ema must be a decay in [0, 1), e.g. 0.999, got {cfg.ema}")
    if cfg.loss.pixel not in ("l1", "charbonnier"):
        raise ConfigError(f"{where}: loss.pixel must be l1 or charbonnier, got {cfg.loss.pixel!r}")
    if cfg.optimizer.offset_lr_mult < 0 or cfg.optimizer.stage1_lr_mult < 0:
        raise ConfigError(f"{where}: optimizer.offset_lr_mult and stage1_lr_mult must be at least 0")
    if cfg.schedule.unit not in ("epoch", "iteration"):
        raise ConfigError(f"{where}: schedule.unit must be epoch or iteration, got {cfg.schedule.unit!r}")
