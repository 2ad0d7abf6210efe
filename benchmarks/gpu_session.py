"""The steps of benchmarks/gpu_session.sh, each under its own time budget, recorded and never fatal.

The script sets up a venv and runs this file with it. Steps, in order: ``probe`` (what the machine has,
whether vspipe embeds this Python), ``gpu_tests`` (``pytest -m gpu`` on tests/test_gpu.py), ``bench_lite``
and ``bench_paper`` (``erdn bench`` at 1920x1080 on CUDA in fp16 and bf16), ``compile`` (optional:
torch.compile and CUDA graphs, only when the training would still get its minimum), ``synth`` (the
training run's data, on every core) and ``train`` (the run goes on until the deadline; each checkpoint
it writes is split into files under 16 MiB in $OUT, the last two kept). A step that fails, runs past its
budget or finds no time left is recorded as failed, timeout or skipped, and the next one runs.

$OUT receives gpu_session.json (every figure), gpu_session.md (the short report), rewritten after each
step so a session cut short still returns what it had, and train_it<N>.* (see training/split_checkpoint.py).
``--dry-run`` runs every step on the CPU at tiny sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RETURN_FILE_LIMIT = 16 * 2**20  # what the machine sends back: at most 8 files of 16 MiB
RETURN_FILES = 8
JSON_NAME, MD_NAME = "gpu_session.json", "gpu_session.md"
SHIPPED = "worker/weights/erdn_lite_synth.safetensors"
FINAL_RESERVE_S = 15.0  # kept after the training for the last export and the report

# What each step may take, in seconds: (on the GPU machine, in the dry run). The whole session is also bound
# by its deadline, and steps before the training stop early enough to leave it min_train_s.
BUDGETS = {
    "probe": (45, 120),
    "gpu_tests": (170, 600),
    "bench_lite": (90, 240),
    "bench_paper": (150, 120),
    "compile": (100, 150),
    "synth": (90, 180),
}


class StepTimeout(Exception):
    pass


@dataclass
class Step:
    name: str
    status: str = "pending"  # ok | failed | timeout | skipped
    seconds: float = 0.0
    budget_s: float = 0.0
    headline: str = ""
    result: dict = field(default_factory=dict)
    error: str = ""
    log_tail: str = ""


@dataclass
class Plan:
    dry_run: bool
    out: Path
    work: Path
    deadline: float  # time.time() by which everything has ended
    started: float
    setup_seconds: float
    setup_status: str
    setup_log: Path
    train_config: str
    train_checkpoint: str
    train_init_from: str
    synth_args: str
    train_set: str
    checkpoint_minutes: float
    min_train_s: float


class Session:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.steps: list[Step] = []
        self.marker = f"ERDN_GPU_SESSION_STEP={os.getpid()}"
        (plan.work / "logs").mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [self.env.get("PYTHONPATH")])])
        if plan.dry_run:
            self.env["ERDN_GPU_DRY_RUN"] = "1"
            self.env["OMP_NUM_THREADS"] = "1"  # a small shared CPU: one thread per process runs fastest
        self.facts: dict = {}  # what the probe found, for later steps

    # ------------------------------------------------------------------ running steps

    def remaining(self) -> float:
        return self.plan.deadline - time.time()

    def step(self, name: str, fn: Callable[[Step, float], None], budget: float, *, protect: float = 0.0,
             need: float = 5.0) -> Step:
        """Run ``fn(step, seconds)`` within ``budget`` seconds, leaving ``protect`` seconds before the deadline;
        skipped when less than ``need`` seconds are left for it."""
        step = Step(name)
        self.steps.append(step)
        step.budget_s = round(max(0.0, min(budget, self.remaining() - protect)), 1)
        if step.budget_s < need:
            step.status, step.error = "skipped", f"no time left ({step.budget_s:.0f} s of the {need:.0f} s it needs)"
        else:
            t0 = time.time()
            print(f"gpu_session: {name} (budget {step.budget_s:.0f} s)", flush=True)
            try:
                fn(step, step.budget_s)
                if step.status == "pending":
                    step.status = "ok"
            except StepTimeout as e:
                step.status, step.error = "timeout", str(e)
            except Exception as e:  # every failure is a finding: record it and go on
                step.status = "failed"
                step.error = f"{type(e).__name__}: {e}"
                step.log_tail = (step.log_tail + "\n" + traceback.format_exc())[-3000:]
            finally:
                self.end_leftovers(name)
                step.seconds = round(time.time() - t0, 1)
        print(f"gpu_session: {name}: {step.status} in {step.seconds:.0f} s {step.headline or step.error}"[:400],
              flush=True)
        self.write_report()
        return step

    def run(self, step: Step, cmd: list[str], seconds: float, log_name: str | None = None,
            env: dict[str, str] | None = None) -> int:
        """Run ``cmd`` (its own process group) for at most ``seconds``; its output goes to a log whose tail the
        step keeps. Raises StepTimeout when it runs out of time (the whole group is ended)."""
        log = self.plan.work / "logs" / f"{log_name or step.name}.log"
        full_env = dict(env or self.env)
        full_env["ERDN_GPU_SESSION_STEP"] = f"{os.getpid()}:{step.name}"
        step.result.setdefault("commands", []).append(shlex.join(cmd))
        with open(log, "ab") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                    env=full_env, start_new_session=True)
            try:
                rc = proc.wait(timeout=max(1.0, seconds))
            except subprocess.TimeoutExpired:
                stop_group(proc)
                step.log_tail = tail(log)
                raise StepTimeout(f"{shlex.join(cmd[:4])} ... ran past {seconds:.0f} s and was stopped") from None
            finally:
                stop_group(proc)  # also when this process is told to stop (SIGTERM from the script's timeout)
        step.log_tail = tail(log)
        return rc

    def end_leftovers(self, name: str) -> None:
        """End every process this step started that is still running (workers, DataLoader children): each
        carries ERDN_GPU_SESSION_STEP=<our pid>:<step> in its environment."""
        tag = f"ERDN_GPU_SESSION_STEP={os.getpid()}:{name}".encode()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if tag in (entry / "environ").read_bytes().split(b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue

    # ------------------------------------------------------------------ the report

    def write_report(self) -> None:
        p = self.plan
        data = {
            "session": {"dry_run": p.dry_run, "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(p.started)),
                        "seconds": round(time.time() - p.started, 1), "deadline_s": round(p.deadline - p.started),
                        "train_config": p.train_config, "train_checkpoint": p.train_checkpoint,
                        "synth_args": p.synth_args, "train_set": p.train_set},
            "steps": [asdict(s) for s in self.steps],
        }
        write_atomic(p.out / JSON_NAME, json.dumps(data, indent=2, default=str))
        write_atomic(p.out / MD_NAME, markdown(data))


# ---------------------------------------------------------------------- helpers


def tail(path: Path, chars: int = 2500) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-chars:].decode(errors="replace").replace("\r", "\n")


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, then SIGKILL what is left after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    tmp.replace(path)


def python_json(session: Session, step: Step, code: str, seconds: float) -> dict:
    """Run ``code`` (which prints one JSON object last) in a child Python; returns the object."""
    log = session.plan.work / "logs" / f"{step.name}.json.out"
    rc = session.run(step, [sys.executable, "-c", code], seconds, log_name=f"{step.name}-py")
    lines = [line for line in tail(session.plan.work / "logs" / f"{step.name}-py.log", 20000).splitlines()
             if line.startswith("{")]
    log.write_text("\n".join(lines))
    if rc != 0 or not lines:
        raise RuntimeError(f"python exited {rc}: {step.log_tail[-800:]}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------------- steps

PROBE = r"""
import json, os, platform, shutil, subprocess, sys
r = {"python": sys.version.split()[0], "executable": sys.executable, "cpus": os.cpu_count()}
import torch
r["torch"] = torch.__version__
r["cuda_available"] = torch.cuda.is_available()
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    r["gpu"] = p.name
    r["gpu_memory_gib"] = round(p.total_memory / 2**30, 1)
    r["compute_capability"] = f"{p.major}.{p.minor}"
    r["cuda"] = torch.version.cuda
    r["cudnn"] = torch.backends.cudnn.version()
    r["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
for name in ("numpy", "vapoursynth", "zmq", "safetensors", "yaml", "skimage", "onnxruntime", "tensorboard",
             "pytest_timeout"):
    try:
        m = __import__(name)
        r[name] = str(getattr(m, "__version__", getattr(m, "version", "yes")))
    except Exception as e:
        r[name] = f"missing ({type(e).__name__})"
try:
    import vapoursynth
    r["vapoursynth"] = str(vapoursynth.core.version_number())
except Exception as e:
    r["vapoursynth"] = f"missing ({type(e).__name__}: {e})"
try:
    import imageio_ffmpeg
    r["ffmpeg"] = imageio_ffmpeg.get_ffmpeg_exe()
except Exception as e:
    r["ffmpeg"] = None
    r["ffmpeg_error"] = f"{type(e).__name__}: {e}"
if shutil.which("nvidia-smi"):
    r["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip()
print(json.dumps(r))
"""


def probe(session: Session, step: Step, seconds: float) -> None:
    found = python_json(session, step, PROBE, seconds / 2)
    step.result.update(found)
    session.facts.update(found)
    fixed = fix_vsscript_config()
    if fixed:
        step.result["vsscript_config_fixed"] = fixed
    # vspipe embeds this Python through the config `vapoursynth config` wrote: render one blank frame
    vpy = session.plan.work / "probe.vpy"
    vpy.write_text("import vapoursynth as vs\nvs.core.std.BlankClip(width=64, height=48, length=1).set_output()\n")
    try:
        from erdn_vs.render import vspipe_exe

        rc = session.run(step, [vspipe_exe(), str(vpy), "--"], min(30.0, seconds / 2), log_name="probe-vspipe")
        step.result["vspipe"] = "renders" if rc == 0 else f"failed (exit {rc}): {step.log_tail[-600:]}"
    except Exception as e:
        step.result["vspipe"] = f"failed: {type(e).__name__}: {e}"
    session.facts["vspipe_ok"] = step.result["vspipe"] == "renders"
    problems = []
    if not session.plan.dry_run and not found.get("cuda_available"):
        problems.append("torch sees no CUDA GPU")
    if not session.facts["vspipe_ok"]:
        problems.append(f"vspipe: {step.result['vspipe']}")
    gpu = found.get("gpu", "no GPU")
    step.headline = f"{gpu}, torch {found.get('torch')}, Python {found.get('python')}, {found.get('cpus')} CPUs"
    if problems:
        step.status, step.error = "failed", "; ".join(problems)


def fix_vsscript_config() -> str:
    """Where `vapoursynth config` recorded a statically linked interpreter (Debian/Ubuntu's python3.12) as the
    library vspipe loads, point it at the shared libpython3.12 instead, when the machine has one."""
    import sysconfig
    import tomllib

    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    path = Path(config_home) / "vapoursynth" / "vapoursynth.toml"
    if not path.is_file():
        return ""
    entries = tomllib.loads(path.read_text())
    bad = {k: v for k, v in entries.items() if ".so" not in Path(v[1]).name}
    if not bad:
        return ""
    name = sysconfig.get_config_var("INSTSONAME") or "libpython3.12.so.1.0"
    dirs = [sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LIBPL"), "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64", "/usr/lib", "/usr/local/lib"]
    found = next((Path(d) / name for d in dirs if d and (Path(d) / name).is_file()), None)
    if found is None:
        return f"no shared {name} on this machine: vspipe cannot embed {bad[next(iter(bad))][1]}"
    for key in bad:
        entries[key] = [entries[key][0], str(found), entries[key][2]]
    path.write_text("".join(f"{json.dumps(k)} = [{json.dumps(v[0])},{json.dumps(v[1])},{json.dumps(str(v[2]))}]\n"
                            for k, v in entries.items()))
    return f"library {found} instead of {bad[next(iter(bad))][1]}"


def gpu_tests(session: Session, step: Step, seconds: float) -> None:
    report = session.plan.work / "gpu_numbers.json"
    report.unlink(missing_ok=True)
    junit = session.plan.work / "gpu_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "tests/test_gpu.py", "-m", "gpu", "-q", "-p", "no:cacheprovider",
           "-o", "addopts=-ra", f"--junitxml={junit}"]
    if "missing" not in str(session.facts.get("pytest_timeout", "missing")):
        cmd += ["-p", "pytest_timeout", f"--timeout={int(max(30, seconds * 0.6))}"]  # one hung test, not all
    env = dict(session.env, ERDN_GPU_REPORT=str(report))
    try:
        rc = session.run(step, cmd, seconds, env=env)
    finally:
        step.result["tests"] = junit_outcomes(junit)
        if report.is_file():
            step.result["numbers"] = json.loads(report.read_text())
    counts: dict[str, int] = {}
    for outcome in step.result["tests"].values():
        counts[outcome.split(":")[0]] = counts.get(outcome.split(":")[0], 0) + 1
    step.headline = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "no test ran"
    if rc != 0:
        step.status, step.error = "failed", f"pytest exited {rc}"


def junit_outcomes(path: Path) -> dict[str, str]:
    """test name -> passed | failed: MESSAGE | skipped: REASON, from pytest's JUnit XML (our own file)."""
    if not path.is_file():
        return {}
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = case.get("name", "?")
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                word = "skipped" if tag == "skipped" else "failed"
                outcome = f"{word}: {(node.get('message') or '')[:300]}"
        out[name] = outcome
    return out


def bench(session: Session, step: Step, seconds: float, preset: str) -> None:
    out = session.plan.work / f"bench_{preset}.json"
    if session.plan.dry_run:  # the paper preset's step runs the model section only: the dry run's CPU is small
        args = ["--preset", "tiny", "--sizes", "64x48", "--device", "cpu", "--precision", "fp32", "--frames", "3",
                "--compare-frames", "1", "--repeats", "1", "--threads", "1",
                "--only", "throughput" if preset == "paper" else "throughput,pipeline,cache"]
    else:
        args = ["--preset", preset, "--sizes", "1920x1080", "--device", "cuda", "--precision", "fp16,bf16",
                "--frames", "6", "--compare-frames", "2", "--repeats", "2", "--threads", "4",
                "--only", "throughput,pipeline,cache"]
    workdir = session.plan.work / "b"  # short: the bench's ipc sockets live here
    workdir.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "erdn_vs.cli", "bench", *args, "--backends", "torch", "--workdir", str(workdir),
           "--json", str(out)]
    rc = session.run(step, cmd, seconds)
    if rc != 0 or not out.is_file():
        raise RuntimeError(f"erdn bench exited {rc}")
    report = json.loads(out.read_text())
    step.result["bench"] = report
    step.result["summary"] = summary = bench_summary(report)
    step.headline = "; ".join(
        f"{s['precision']}: model {_num(s.get('model_fps'))} fps, in order {_num(s.get('fps_cached'))} vs full "
        f"cascade {_num(s.get('fps_full_cascade'))} fps, peak {_num(s.get('peak_mib'))} MiB, pipeline "
        f"{_num(s.get('pipeline_efficiency'))}" for s in summary)


def bench_summary(report: dict) -> list[dict]:
    """Per precision: model fps (stage reuse), in-order fps against the full cascade, peak memory, pipeline."""
    rows: dict[str, dict] = {}
    for s in report["sections"]:
        precision = s["meta"]["precision"]
        r = rows.setdefault(precision, {"precision": precision})
        by_label = {row["label"]: row for row in s["rows"]}
        ratios = {x["name"]: x["value"] for x in s["ratios"]}
        if s["key"] == "throughput":
            row = next(iter(by_label.values()))
            r.update(model_fps=row["fps"], stage1_s=row["stage1_s"], stage2_s=row["stage2_s"], peak_mib=row["peak_mib"])
        elif s["key"] == "pipeline":
            r.update(pipeline_efficiency=ratios.get("pipeline efficiency"),
                     vspipe_fps=by_label["vspipe + erdn_vs.deblur"]["fps"])
        elif s["key"] == "cache":
            r.update(fps_cached=by_label["with cache (worker, in order)"]["fps"],
                     fps_full_cascade=by_label["without (full cascade per frame)"]["fps"],
                     cache_speedup=ratios.get("stage-1 cache speed-up"))
    return list(rows.values())


def compile_step(session: Session, step: Step, seconds: float) -> None:
    out = session.plan.work / "compile.json"
    if session.plan.dry_run:
        args = ["--preset", "tiny", "--size", "64x48", "--device", "cpu", "--precision", "fp32",
                "--modes", "eager,compile", "--compile-backend", "eager", "--repeats", "2"]
    else:
        args = ["--preset", "lite", "--size", "1920x1080", "--device", "cuda", "--precision", "fp16",
                "--modes", "eager,compile,cudagraph", "--repeats", "5"]
    rc = session.run(step, [sys.executable, "benchmarks/stage_compile.py", *args, "--json", str(out)], seconds)
    if not out.is_file():
        raise RuntimeError(f"stage_compile exited {rc}")
    report = json.loads(out.read_text())
    step.result.update(report)
    step.headline = "; ".join(
        f"{m}: {r['fps']:.2f} fps" + (f" ({r['speedup_vs_eager']:.2f}x, set-up {r['setup_s']:.0f} s)"
                                      if "speedup_vs_eager" in r else "")
        if "fps" in r else f"{m}: {r['error'][:80]}" for m, r in report["modes"].items())
    if rc != 0:
        step.status, step.error = "failed", "a mode failed (see result.modes)"


def synth(session: Session, step: Step, seconds: float) -> None:
    p = session.plan
    args = shlex.split(p.synth_args)
    if not session.facts.get("ffmpeg") and "--h264" not in args:
        # erdn synth's H.264 degradation needs imageio-ffmpeg's binary; without it those clips get JPEG only
        args += ["--h264", "0"]
        step.result["deviation"] = ("no ffmpeg on this machine (imageio-ffmpeg not carried): --h264 0 added, "
                                    "so no clip has H.264 artefacts")
    data = p.work / "data"
    workers = max(1, (os.cpu_count() or 1) - (0 if p.dry_run else 1))
    cmd = [sys.executable, "-m", "erdn_vs.cli", "synth", str(data), *args, "--workers", str(workers)]
    rc = session.run(step, cmd, seconds)
    if rc != 0:
        raise RuntimeError(f"erdn synth exited {rc}")
    clips = sorted(str(c.relative_to(data)) for c in data.glob("*/clip_*"))
    step.result.update(workers=workers, clips=len(clips), splits=sorted({c.split("/")[0] for c in clips}))
    step.headline = f"{len(clips)} clips in {step.result['splits']} with {workers} processes"
    session.facts["data"] = data


def train(session: Session, step: Step, seconds: float) -> None:
    """Resume the run (or start it from the shipped weights) until the deadline; export every checkpoint."""
    from training.checkpoint import load_checkpoint

    p = session.plan
    if "data" not in session.facts:
        raise RuntimeError("no training data (the synth step did not finish)")
    run_dir = p.work / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = shlex.split(p.train_set)
    source = Path(p.train_checkpoint) if p.train_checkpoint else None
    if source is not None and source.is_file():
        state = load_checkpoint(source)  # checked (checksum) before a minute is spent on it
        (run_dir / "last.ckpt").write_bytes(source.read_bytes())
        step.result["resumed_from"] = {"checkpoint": str(source), "iteration": int(state["iteration"])}
        del state
    else:
        overrides.append(f"model.init_from={json.dumps(p.train_init_from)}")  # a quoted YAML string, "" too
        step.result["started_from"] = p.train_init_from or "scratch"
        step.result["note"] = f"no checkpoint at {p.train_checkpoint!r}"
    # ours last, so they win: the data made here, a private run folder, never writing into the repo's weights
    overrides += [f"data.root={json.dumps(str(session.facts['data']))}", f"run_dir={json.dumps(str(run_dir))}",
                  'weights_out=""', f"checkpoint_minutes={p.checkpoint_minutes}"]
    cmd = [sys.executable, "-m", "erdn_vs.cli", "train", p.train_config, "--set", *overrides]
    step.result["commands"] = [shlex.join(cmd)]
    log = p.work / "logs" / "train.log"
    env = dict(session.env, ERDN_GPU_SESSION_STEP=f"{os.getpid()}:{step.name}")
    t0 = time.time()
    stop_at = t0 + seconds
    interval = 60.0 * p.checkpoint_minutes
    exported: list[dict] = []
    seen_mtime = (run_dir / "last.ckpt").stat().st_mtime if (run_dir / "last.ckpt").exists() else 0.0
    stopped_early = ""
    with open(log, "ab") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                env=env, start_new_session=True)
        try:
            while proc.poll() is None:
                time.sleep(0.5)
                mtime = (run_dir / "last.ckpt").stat().st_mtime if (run_dir / "last.ckpt").exists() else 0.0
                if mtime != seen_mtime:
                    seen_mtime = mtime
                    exported.append(export_checkpoint(run_dir / "last.ckpt", p.out, time.time() - t0))
                    if time.time() + 1.3 * interval + 5 > stop_at:  # no later checkpoint could land in time
                        stopped_early = "the next checkpoint would land past the deadline"
                        break
                if time.time() > stop_at:
                    stopped_early = "deadline"
                    break
        finally:
            stop_group(proc)
    rc = proc.returncode
    mtime = (run_dir / "last.ckpt").stat().st_mtime if (run_dir / "last.ckpt").exists() else 0.0
    if mtime != seen_mtime:  # written at the very end (a finished run, or just before the stop)
        exported.append(export_checkpoint(run_dir / "last.ckpt", p.out, time.time() - t0))
    step.log_tail = tail(log)
    step.result.update(seconds=round(time.time() - t0, 1), exit_code=rc, stopped=stopped_early or "finished",
                       exported=exported, returned=sorted(x.name for x in p.out.glob("train_it*")),
                       log=training_log(run_dir / "log.csv"))
    ok = [e for e in exported if "error" not in e]
    first = step.result.get("resumed_from", {}).get("iteration", 0)
    if ok:
        last = ok[-1]["iteration"]
        step.headline = (f"iterations {first} -> {last} in {step.result['seconds']:.0f} s; returned "
                         f"{', '.join(step.result['returned'])}")
    if not ok:
        step.status = "failed"
        step.error = (f"no checkpoint came back (erdn train exit {rc}); see log_tail" if not exported
                      else f"checkpoints could not be returned: {exported[-1].get('error')}")
    elif not stopped_early and rc != 0:
        step.status, step.error = "failed", f"erdn train exited {rc}"


def export_checkpoint(ckpt: Path, out: Path, at_s: float) -> dict:
    """Split ``ckpt`` into $OUT/train_it<N>.* (each under 16 MiB) and keep only the newest two splits."""
    from training.checkpoint import CheckpointError, load_checkpoint
    from training.split_checkpoint import split_checkpoint

    try:
        iteration = int(load_checkpoint(ckpt)["iteration"])
        files = split_checkpoint(ckpt, out / f"train_it{iteration}")
    except (CheckpointError, OSError) as e:
        return {"at_s": round(at_s, 1), "error": str(e)}
    sizes = {f.name: f.stat().st_size for f in files}
    entry = {"iteration": iteration, "at_s": round(at_s, 1), "files": sizes}
    too_big = [n for n, size in sizes.items() if size > RETURN_FILE_LIMIT]
    if too_big:
        for f in files:
            f.unlink(missing_ok=True)
        entry["error"] = f"{too_big} over the 16 MiB a file may have to come back; not kept"
        return entry
    splits = sorted({int(f.name.split(".")[0][len("train_it"):]) for f in out.glob("train_it*.state.ckpt")})
    keep = max(1, min(2, (RETURN_FILES - 2) // len(files)))  # the JSON and the Markdown report come back too
    for old in splits[:-keep]:
        for f in out.glob(f"train_it{old}.*"):
            f.unlink(missing_ok=True)
    return entry


def training_log(path: Path) -> dict:
    """The first and last training rows and every validation row of log.csv."""
    import csv

    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    train_rows = [r for r in rows if r.get("total")]
    val = [{"iteration": int(r["iteration"]), "val_psnr": float(r["val_psnr"])} for r in rows if r.get("val_psnr")]
    keep = ("iteration", "total", "lr", "crop", "seconds", "train_seconds")
    return {"first": {k: train_rows[0].get(k) for k in keep} if train_rows else None,
            "last": {k: train_rows[-1].get(k) for k in keep} if train_rows else None, "validation": val}


# ---------------------------------------------------------------------- the Markdown report


def markdown(data: dict) -> str:
    s = data["session"]
    lines = [f"# GPU session{' (dry run on the CPU)' if s['dry_run'] else ''}", "",
             f"Started {s['started']} UTC, {s['seconds']:.0f} s of {s['deadline_s']} s. "
             f"Training: `{s['train_config']}`.", "",
             "| step | status | seconds | budget | result |", "|---|---|---|---|---|"]
    for st in data["steps"]:
        text = (st["headline"] or st["error"]).replace("|", "/").replace("\n", " ")[:300]
        lines.append(f"| {st['name']} | {st['status']} | {st['seconds']:.0f} | {st['budget_s']:.0f} | {text} |")
    steps = {st["name"]: st for st in data["steps"]}
    numbers = steps.get("gpu_tests", {}).get("result", {}).get("numbers", {})
    precision = {k: v for k, v in numbers.items() if k.startswith("precision_")}
    if precision:
        lines += ["", "## Precision against fp32 on the CPU (same window, outputs clamped to [0, 1])", "",
                  "| preset, size | fp32 max diff / PSNR | fp16 | bf16 |", "|---|---|---|---|"]
        for k, v in precision.items():
            cells = [_diff(v.get(p, {})) for p in ("fp32", "fp16", "bf16")]
            lines.append(f"| {k.split('_', 1)[1]} {v.get('size')} on {v.get('device')} | " + " | ".join(cells) + " |")
    tiling = {k: v for k, v in numbers.items() if k.startswith("tiling_")}
    if tiling:
        lines += ["", "## Tiled against whole frame", "",
                  "| size | tile (h, w) | max diff / PSNR | whole s | tiled s |", "|---|---|---|---|---|"]
        for k, v in tiling.items():
            lines.append(f"| {k.split('_', 1)[1]} | {v['tile_hw']} | {_diff(v)} | {v['whole_s']:.2f} | "
                         f"{v['tiled_s']:.2f} |")
    for key in ("vspipe", "training", "ddp"):
        if key in numbers:
            lines += ["", f"**{key}**: `{json.dumps(numbers[key], default=str)[:600]}`"]
    bench_rows = [(name, r) for name in ("bench_lite", "bench_paper")
                  for r in steps.get(name, {}).get("result", {}).get("summary", [])]
    if bench_rows:
        lines += ["", "## erdn bench at 1920x1080" if not s["dry_run"] else "## erdn bench (tiny, CPU)", "",
                  "| preset | precision | model fps (stage reuse) | in order fps | full cascade fps | speed-up | "
                  "peak MiB | pipeline efficiency |", "|---|---|---|---|---|---|---|---|"]
        for name, r in bench_rows:
            lines.append(f"| {name.split('_')[1]} | {r['precision']} | {_num(r.get('model_fps'))} | "
                         f"{_num(r.get('fps_cached'))} | {_num(r.get('fps_full_cascade'))} | "
                         f"{_num(r.get('cache_speedup'))} | {_num(r.get('peak_mib'))} | "
                         f"{_num(r.get('pipeline_efficiency'))} |")
    train_step = steps.get("train", {}).get("result", {})
    if train_step.get("returned"):
        prefix = sorted(train_step["returned"])[-1].split(".")[0]
        lines += ["", "## Training", "", f"Returned: {', '.join(train_step['returned'])}. "
                  f"Validation: {train_step.get('log', {}).get('validation', [])[-3:]}.", "",
                  "To go on with the run here: `python -m training.split_checkpoint join OUT/" + prefix +
                  " RUN_DIR/last.ckpt`, then `erdn train CONFIG` (its run_dir: RUN_DIR). "
                  f"`OUT/{prefix}.model.safetensors` (and `.ema.safetensors`) are weights for `erdn eval` as they are."]
    return "\n".join(lines) + "\n"


def _num(v: object) -> str:
    return "" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def _diff(d: dict) -> str:
    if not d:
        return ""
    psnr = "identical" if d.get("psnr_db") is None else f"{d['psnr_db']:.1f} dB"
    return f"{d['max_abs_diff']:.2e} / {psnr}"


# ---------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--deadline", type=float, required=True, help="epoch seconds by which everything has ended")
    p.add_argument("--started", type=float, required=True)
    p.add_argument("--setup-seconds", type=float, required=True)
    p.add_argument("--setup-status", required=True)
    p.add_argument("--setup-log", type=Path, required=True)
    p.add_argument("--train-config", required=True)
    p.add_argument("--train-checkpoint", default="")
    p.add_argument("--train-init-from", default="")
    p.add_argument("--synth-args", required=True)
    p.add_argument("--train-set", default="")
    p.add_argument("--checkpoint-minutes", type=float, default=0.5)
    p.add_argument("--min-train-s", type=float, default=150.0)
    a = p.parse_args(argv)
    plan = Plan(dry_run=a.dry_run, out=a.out, work=a.work, deadline=a.deadline, started=a.started,
                setup_seconds=a.setup_seconds, setup_status=a.setup_status, setup_log=a.setup_log,
                train_config=a.train_config, train_checkpoint=a.train_checkpoint, train_init_from=a.train_init_from,
                synth_args=a.synth_args, train_set=a.train_set, checkpoint_minutes=a.checkpoint_minutes,
                min_train_s=a.min_train_s)
    plan.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: the running step's processes are ended
    session = Session(plan)
    setup = Step("setup", status=a.setup_status, seconds=round(a.setup_seconds, 1), log_tail=tail(a.setup_log),
                 headline=f"venv, carried wheels and the project in {a.setup_seconds:.0f} s")
    if a.setup_status != "ok":
        setup.error = "set-up failed; see log_tail"
    session.steps.append(setup)
    session.write_report()
    col = 1 if plan.dry_run else 0
    protect = plan.min_train_s  # what the steps before the training leave it
    session.step("probe", lambda st, s: probe(session, st, s), BUDGETS["probe"][col], protect=protect)
    session.step("gpu_tests", lambda st, s: gpu_tests(session, st, s), BUDGETS["gpu_tests"][col], protect=protect)
    for preset in ("lite", "paper"):
        session.step(f"bench_{preset}", lambda st, s, pr=preset: bench(session, st, s, pr),
                     BUDGETS[f"bench_{preset}"][col], protect=protect, need=30.0)
    session.step("compile", lambda st, s: compile_step(session, st, s), BUDGETS["compile"][col], protect=protect,
                 need=BUDGETS["compile"][col])  # optional: all of its budget, or not at all
    session.step("synth", lambda st, s: synth(session, st, s), BUDGETS["synth"][col],
                 protect=FINAL_RESERVE_S + 30.0)
    session.step("train", lambda st, s: train(session, st, s), 10**6, protect=FINAL_RESERVE_S, need=20.0)
    session.write_report()
    print_summary(session)
    return 0


def print_summary(session: Session) -> None:
    """A compact summary for the end of stdout (the device tool returns only the last 12,000 characters)."""
    print("\n==== gpu_session summary " + ("(dry run) " if session.plan.dry_run else "") + "====")
    for st in session.steps:
        print(f"{st.name:12s} {st.status:8s} {st.seconds:6.0f} s  {(st.headline or st.error)[:600]}")
    print(f"report: {session.plan.out / MD_NAME}, figures: {session.plan.out / JSON_NAME}")
    returned = sorted(f.name for f in session.plan.out.iterdir())
    print(f"in OUT ({len(returned)} files): {', '.join(returned)}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
