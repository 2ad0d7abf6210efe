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
``--dry-run`` runs every step on the CPU at tiny sizes. gpu_runner.py runs and records steps; gpu_report.py
writes the Markdown.
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
import xml.etree.ElementTree as ET
from pathlib import Path

from gpu_report import num
from gpu_runner import JSON_NAME, MD_NAME, REPO, Plan, Session, Step, python_json, stop_group, tail

RETURN_FILE_LIMIT = 16 * 2**20  # what the machine sends back: at most 8 files of 16 MiB
RETURN_FILES = 8
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
        from erdn_vs.pipeline.tools import vspipe_exe

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
    if preset == "paper":  # the official network is a 5-frame cascade; lite follows the default model's window
        args += ["--window", "5"]
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
        f"{s['precision']}: model {num(s.get('model_fps'))} fps, in order {num(s.get('fps_cached'))} vs full "
        f"cascade {num(s.get('fps_full_cascade'))} fps, peak {num(s.get('peak_mib'))} MiB, pipeline "
        f"{num(s.get('pipeline_efficiency'))}" for s in summary)


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
            r.update(window=report["args"].get("window"), model_fps=row["fps"], stage1_s=row["stage1_s"],
                     stage2_s=row.get("stage2_s"), peak_mib=row["peak_mib"])  # a 3-frame model has no stage 2
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
    else:  # CUDA graphs before compile: a compilation that runs out of time leaves the graphs' figures
        args = ["--preset", "lite", "--size", "1920x1080", "--device", "cuda", "--precision", "fp16",
                "--modes", "eager,cudagraph,compile", "--repeats", "5"]
    try:
        rc = session.run(step, [sys.executable, "benchmarks/stage_compile.py", *args, "--json", str(out)], seconds)
    finally:  # the figures so far (the script writes them after each mode), also when the step ran out of time
        if out.is_file():
            report = json.loads(out.read_text())
            step.result.update(report)
            step.headline = "; ".join(
                f"{m}: {r['fps']:.2f} fps" + (f" ({r['speedup_vs_eager']:.2f}x, set-up {r['setup_s']:.0f} s)"
                                              if "speedup_vs_eager" in r else "")
                if "fps" in r else f"{m}: {r['error'][:80]}" for m, r in report["modes"].items())
    if not out.is_file():
        raise RuntimeError(f"stage_compile exited {rc}")
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
        init = p.train_init_from
        if not init:  # the config's own starting point when it came along, else the shipped weights
            from training.config import load_config
            from worker.registry import default_weights

            configured = load_config(p.train_config).model.init_from
            init = configured if configured and Path(configured).is_file() else str(default_weights().path)
        init = "" if init == "none" else init
        overrides.append(f"model.init_from={json.dumps(init)}")  # a quoted YAML string, "" too
        step.result["started_from"] = init or "scratch"
        step.result["note"] = f"no checkpoint at {p.train_checkpoint!r}"
    # ours last, so they win: the data made here, a private run folder, and nothing written into the repo (no
    # weights_out, no checkpoint_copy: a dry run must never touch the run's kept checkpoint)
    overrides += [f"data.root={json.dumps(str(session.facts['data']))}", f"run_dir={json.dumps(str(run_dir))}",
                  'weights_out=""', 'checkpoint_copy=""', f"checkpoint_minutes={p.checkpoint_minutes}"]
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
    p.add_argument("--train-max-s", type=float, default=0.0, help="0: the training takes all the time left")
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
    session.step("train", lambda st, s: train(session, st, s), a.train_max_s or 10**6, protect=FINAL_RESERVE_S,
                 need=20.0)
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
