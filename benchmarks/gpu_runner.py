"""Running the GPU session's steps: each under a time budget, its processes ended after it, every outcome
recorded (ok, failed, timeout, skipped) and the report rewritten after each step (benchmarks/gpu_session.py)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gpu_report import markdown

REPO = Path(__file__).resolve().parent.parent
JSON_NAME, MD_NAME = "gpu_session.json", "gpu_session.md"


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
                if step.status == "pending":  # stopped from outside (SIGTERM): say so in the report
                    step.status, step.error = "timeout", "the session was stopped during this step"
                    self.write_report()
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
