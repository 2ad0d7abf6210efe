"""The bench's sections. Each takes a ``Bench`` (one preset at one size) and returns a ``Section``.

Rendering the clip through the worker in order is the product's path; the baselines are the
stateless ways to run the same weights: the full cascade per frame (the model's forward, which
is also the official code's compute schedule: 4 stage evaluations per output frame of a 5-frame
model, 1 of a 3-frame one) and vs-mlrt's ORT filter on the exported window graph.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

from erdn_vs import windows

from .harness import Bench
from .model_speed import measure
from .report import Ratio, Section
from .vspipe import read_rgbs, run_vspipe

CACHE_TARGET = 1.8
PIPELINE_TARGET = 0.95
VSMLRT_TARGET = 2.0
START_TARGET = 10.0
PAPER_TARGET = 2.5


def _delta(before: dict, after: dict) -> dict[str, float]:
    keys = ("frames_served", "stage1_evals", "stage2_evals", "stage1_seconds", "stage2_seconds", "bytes_received",
            "forward_calls", "need_frames_replies")
    return {k: after[k] - before[k] for k in keys}


def _worker_figures(d: dict[str, float]) -> dict[str, float]:
    frames = max(1, d["frames_served"])
    return {"stage_evals_per_frame": (d["stage1_evals"] + d["stage2_evals"]) / frames,
            "bytes_per_frame": d["bytes_received"] / frames,
            "compute_s": d["stage1_seconds"] + d["stage2_seconds"],
            "need_frames_replies": d["need_frames_replies"]}


# ------------------------------------------------------------ shared runs


def baseline_frames(b: Bench) -> list[int]:
    """The frames the stateless baselines render: ``compare_frames`` of them, spread over the clip."""
    k = min(b.compare_frames, b.length)
    return sorted({round(i * (b.length - 1) / (k - 1)) for i in range(k)}) if k > 1 else [0]


def deblur_run(b: Bench) -> dict:
    """vspipe renders the clip through erdn_vs.deblur on the (warm) worker; raw RGBS frames to a file.

    With ``pair_vsmlrt``, vs-mlrt renders the first baseline frames just before and the rest just after."""
    if "deblur" not in b.memo:
        b.fresh_worker()
        k = min(b.compare_frames, b.length)
        halves = [(0, (k + 1) // 2 - 1), ((k + 1) // 2, k - 1)] if b.pair_vsmlrt else []
        mlrt = []
        if halves:
            mlrt.append(_vsmlrt_part(b, *halves[0]))
        out = b.root / f"deblur-{b.preset}-{b.size}-{b.precision}.raw"
        before = b.stats()
        run = run_vspipe(b.vspipe, b.deblur_vpy, b.script_args(autostart=False), out, b.env)
        d = _delta(before, b.stats())
        if halves and halves[1][0] <= halves[1][1]:
            mlrt.append(_vsmlrt_part(b, *halves[1]))
        b.memo["deblur"] = {"run": run, "delta": d, "out": out}
        if mlrt:
            b.memo["vsmlrt"] = mlrt
    return b.memo["deblur"]


def _vsmlrt_part(b: Bench, first: int, last: int) -> dict:
    out = b.root / f"vsmlrt-{b.preset}-{b.size}-{first}.raw"
    run = run_vspipe(b.vspipe, b.vsmlrt_vpy, b.script_args(autostart=False), out, b.env, start=first, end=last)
    return {"run": run, "out": out, "frames": last - first + 1}


def direct_run(b: Bench) -> dict:
    """The same frames pushed straight through the client's Session.process in order (no VapourSynth).

    With ``pair_forward``, the full cascade of a baseline frame runs in this process right after the
    worker returned that frame (the worker is idle meanwhile); only the worker's calls are timed as ours."""
    if "direct" not in b.memo:
        b.fresh_worker()
        frames = b.frames()
        planes = dict(enumerate(frames))
        baselines = {}  # memo name -> run(window): the stateless baselines paired with this run
        if b.pair_forward:
            baselines["forward"] = _forward_runner(b)
            if b.official is not None:
                from .official import forward_runner

                baselines["official"] = forward_runner(b.official)
        picks = set(baseline_frames(b))
        outputs: list[np.ndarray] = []
        paired: dict[str, tuple[list, list]] = {name: ([], []) for name in baselines}  # (seconds, outputs)
        with b.client() as client:
            before = b.stats()
            t0 = time.perf_counter()
            session = client.open_session(frames=b.window, width=b.width, height=b.height, sample_type="float",
                                          weights=str(b.weights), precision=b.precision)
            seconds = time.perf_counter() - t0
            for n in range(b.length):
                window = windows.temporal_window(n, b.length, b.window, windows.no_cuts)
                t0 = time.perf_counter()
                outputs.append(session.process(n, window, planes))
                seconds += time.perf_counter() - t0
                if baselines and n in picks:
                    stacked = np.stack([frames[i] for i in window])
                    for name, run in baselines.items():
                        t0 = time.perf_counter()
                        paired[name][1].append(run(stacked))
                        paired[name][0].append(time.perf_counter() - t0)
            session.close()
            d = _delta(before, b.stats())
        b.memo["direct"] = {"seconds": seconds, "delta": d, "outputs": outputs, "bytes_sent": session.bytes_sent}
        for name, (times, outs) in paired.items():
            b.memo[name] = {"median_s": statistics.median(times), "outputs": outs, "frames": sorted(picks),
                            "paired": True}
    return b.memo["direct"]


# ------------------------------------------------------------ 1. model throughput


def throughput(b: Bench, backends: list[str]) -> Section:
    s = Section("throughput", f"1. model throughput: {b.preset} {b.size} {b.precision_label}, {b.threads_label}, "
                f"{b.device}")
    for backend in backends:
        r = measure(weights=b.weights, onnx_dir=b.onnx_dir, backend=backend, width=b.width, height=b.height,
                    threads=b.threads, repeats=b.repeats, device=b.device, precision=b.precision, env=b.env,
                    stages=(1, 2) if b.window == 5 else (1,))
        stage_s = {k: r[k] for k in ("stage1_s", "stage2_s") if k in r}
        s.row(f"{backend} ({b.device})", fps=1.0 / sum(stage_s.values()), **stage_s,
              peak_mib=r["peak_bytes"] / 2**20)
    how = ("fps = 1 / (stage1_s + stage2_s): a sequential render with the stage-1 cache runs one stage-1 and one "
           "stage-2 evaluation per output frame" if b.window == 5 else
           "fps = 1 / stage1_s: a 3-frame model runs one stage evaluation per output frame")
    s.notes.append(f"{how} ({b.window}-frame model); medians of {b.repeats} runs after one warm-up; "
                   "peak_mib: resident memory above the loaded model during the runs (CPU) or "
                   "torch.cuda.max_memory_allocated (CUDA)")
    return s


# ------------------------------------------------------------ 2. pipeline efficiency


def pipeline(b: Bench) -> Section:
    s = Section("pipeline", f"2. pipeline efficiency: {b.preset} {b.size} {b.precision_label}, {b.length} frames, "
                f"worker {b.backend} {b.threads_label}, VapourSynth threads {b.vs_threads or 'default'}, "
                f"batch {b.batch}")
    vs_run, direct = deblur_run(b), direct_run(b)
    run, vd = vs_run["run"], vs_run["delta"]
    direct_fps = b.length / direct["seconds"]
    s.row("vspipe + erdn_vs.deblur", fps=run.fps, wall_s=run.wall_s, **_worker_figures(vd))
    s.row("Session.process in order", fps=direct_fps, seconds=direct["seconds"],
          **_worker_figures(direct["delta"]))
    compute_fps = b.length / _worker_figures(vd)["compute_s"]
    s.row("worker stage compute (vspipe run)", fps=compute_fps)
    s.ratios.append(Ratio("pipeline efficiency", run.fps / compute_fps, PIPELINE_TARGET,
                          "vspipe fps / (frames / seconds the worker computed stages during that same run)"))
    s.ratios.append(Ratio("vspipe vs Session.process", run.fps / direct_fps, None,
                          "two separate runs: load from other processes moves this one"))
    s.notes.append("vspipe's fps is its own figure (first request to last frame; the session opens inside it); "
                   "the source is RGBS, so frames travel as float32")
    return s


# ------------------------------------------------------------ 3. the stage-1 cache (and 6. paper)


def forward_per_frame(b: Bench) -> dict:
    """The full cascade per output frame on the baseline frames, in the worker's backend: the model's
    forward (torch) or window.onnx in onnxruntime (onnx). Paired with the worker's run when asked."""
    direct_run(b)
    if "forward" not in b.memo:
        run = _forward_runner(b)
        frames, picks = b.frames(), baseline_frames(b)
        times, outputs = [], []
        for n in picks:
            window = np.stack([frames[i] for i in windows.temporal_window(n, b.length, b.window, windows.no_cuts)])
            t0 = time.perf_counter()
            outputs.append(run(window))
            times.append(time.perf_counter() - t0)
        b.memo["forward"] = {"median_s": statistics.median(times), "outputs": outputs, "frames": picks,
                             "paired": False}
    return b.memo["forward"]


def _forward_runner(b: Bench):
    import torch

    torch.set_num_threads(b.measure_threads)
    return _onnx_window(b) if b.backend == "onnx" else _torch_forward(b)


def _torch_forward(b: Bench):
    import torch

    from worker.backends import resolve_precision
    from worker.model import load_model

    device = torch.device(b.device if b.device.startswith("cuda") else "cpu")
    model = load_model(b.weights, device).eval()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(resolve_precision(b.precision, device))

    def run(window: np.ndarray) -> np.ndarray:
        # autocast as the worker's torch backend runs a stage; .cpu() waits for the GPU
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            y = model(torch.from_numpy(window)[None].to(device))[0].float().cpu()
        return y.numpy()

    return run


def _onnx_window(b: Bench):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = b.measure_threads
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(b.onnx_dir / "window.onnx"), options, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run(window: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: window.reshape(1, -1, *window.shape[-2:])})[0][0]

    return run


def cache(b: Bench) -> Section:
    s = Section("cache", f"3. stage-1 cache: {b.preset} {b.size} {b.precision_label}, {b.backend} backend, sequential "
                f"render of {b.length} frames")
    direct, forward = direct_run(b), forward_per_frame(b)
    fig = _worker_figures(direct["delta"])
    cached_s = direct["seconds"] / b.length
    s.row("with cache (worker, in order)", fps=1 / cached_s, s_per_frame=cached_s, **fig,
          client_bytes_per_frame=direct["bytes_sent"] / b.length)
    s.row("without (full cascade per frame)", fps=1 / forward["median_s"], s_per_frame=forward["median_s"],
          stage_evals_per_frame=float(b.stages_per_window))
    picks = forward["frames"]
    s.row(f"max |cached - forward|, frames {','.join(map(str, picks))}", max_abs_diff=_max_diff(direct, forward))
    # A 3-frame model has one stage: nothing to reuse, so its ratio is shown without the 5-frame target.
    s.ratios.append(Ratio("stage-1 cache speed-up", forward["median_s"] / cached_s,
                          CACHE_TARGET if b.window == 5 else None,
                          f"{b.window}-frame model; clip edges included: "
                          f"{fig['stage_evals_per_frame'] * b.length:g} stage evaluations for {b.length} frames"))
    baseline = "window.onnx in onnxruntime" if b.backend == "onnx" else "the model's forward"
    when = "each right after the worker's run of that frame" if forward["paired"] else "after the worker's run"
    s.notes.append(f"'without' is {baseline} in the bench process ({b.measure_threads} threads), median of frames "
                   f"{','.join(map(str, picks))}, {when}; its cost does not depend on the frame")
    official = b.memo.get("official")
    if official is not None:
        s.row("official ERDN forward (its code, torchvision DCN)", fps=1 / official["median_s"],
              s_per_frame=official["median_s"], stage_evals_per_frame=4.0)
        s.row("max |ours - official|", max_abs_diff=_max_diff(direct, official))
        s.ratios.append(Ratio(f"paper: our sequential render ({b.length} frames) vs the official forward",
                              official["median_s"] / cached_s, PAPER_TARGET,
                              f"official median of frames {','.join(map(str, official['frames']))}, each run right "
                              "after our worker returned that frame"))
        d = direct["delta"]
        steady_s = d["stage1_seconds"] / max(1, d["stage1_evals"]) + d["stage2_seconds"] / max(1, d["stage2_evals"])
        s.row("ours, long render (1 stage-1 + 1 stage-2 per frame, this run's mean stage times)",
              fps=1 / steady_s, s_per_frame=steady_s, stage_evals_per_frame=2.0)
        s.ratios.append(Ratio("paper: long render vs the official forward", official["median_s"] / steady_s,
                              PAPER_TARGET, "derived: the clip edges' extra stage-1 evaluations vanish in a long "
                              "render; worker compute only (no VapourSynth, no wire)"))
    elif b.preset == "paper" and b.window == 5:
        s.notes.append("paper: the forward runs the official compute schedule (4 stage evaluations per output "
                       "frame, no reuse) in our code; pass --official PATH to run the official code beside it")
    return s


def _max_diff(direct: dict, baseline: dict) -> float:
    """Largest difference between the worker's outputs and a baseline's, on the baseline's frames."""
    return max(float(np.abs(direct["outputs"][n] - f).max())
               for n, f in zip(baseline["frames"], baseline["outputs"], strict=True))


# ------------------------------------------------------------ 4. vs-mlrt


def vsmlrt(b: Bench) -> Section:
    k = min(b.compare_frames, b.length)
    s = Section("vsmlrt", f"4. vs-mlrt (core.ort.Model, CPU, fp32) on window.onnx vs erdn_vs.deblur "
                f"({b.backend} worker, {b.precision_label}, {b.threads_label}): {b.preset} {b.size}")
    ours = deblur_run(b)
    parts = b.memo.get("vsmlrt") or [_vsmlrt_part(b, 0, k - 1)]
    seconds = sum(p["frames"] / p["run"].fps for p in parts)
    theirs_fps = k / seconds
    got = np.concatenate([read_rgbs(p["out"], p["frames"], b.width, b.height) for p in parts])
    ref = read_rgbs(ours["out"], b.length, b.width, b.height)[:k]
    diff = float(np.abs(np.clip(got, 0, 1) - ref).max())
    s.row(f"vs-mlrt ort, frames 0..{k - 1}", fps=theirs_fps, wall_s=sum(p["run"].wall_s for p in parts))
    s.row(f"erdn_vs.deblur, {b.length} frames", fps=ours["run"].fps, wall_s=ours["run"].wall_s)
    s.row("max |vs-mlrt - deblur| (clamped)", max_abs_diff=diff)
    s.ratios.append(Ratio("deblur vs vs-mlrt", ours["run"].fps / theirs_fps, VSMLRT_TARGET))
    when = "half just before and half just after deblur's run" if len(parts) > 1 else "after deblur's run"
    s.notes.append(f"same clip, same weights, both through vspipe; vs-mlrt renders {k} frames ({when}; its cost "
                   "per frame does not depend on the clip), deblur the whole clip, edges included, on a worker "
                   "started for this run (nothing cached); onnxruntime in vs-mlrt sizes its own thread pool (all "
                   "cores) whatever the bench's threads")
    return s


# ------------------------------------------------------------ 5. cold and warm start


def start(b: Bench) -> Section:
    s = Section("start", f"5. first frame: {b.preset} {b.size}, {b.threads_label} (vspipe, whole process, one frame)")
    cold, reload, unseen = [], [], []
    # Frames 5 apart share no stage-1 triplet (nor a 3-frame window): each "unseen" frame finds nothing of its
    # window in the cache.
    far = [5 * (r + 1) for r in range(b.repeats)]
    args = b.script_args(autostart=True, length=max(b.length, far[-1] + 3))
    for k in far:
        b.stop_worker()
        cold.append(run_vspipe(b.vspipe, b.deblur_vpy, args, "--", b.env, start=0, end=0).wall_s)
        reload.append(run_vspipe(b.vspipe, b.deblur_vpy, args, "--", b.env, start=0, end=0).wall_s)
        unseen.append(run_vspipe(b.vspipe, b.deblur_vpy, args, "--", b.env, start=k, end=k).wall_s)
    b.stop_worker()  # autostarted with the worker's defaults; later sections start one with the bench's options
    cold_s, reload_s, unseen_s = (statistics.median(v) for v in (cold, reload, unseen))
    s.row("cold (worker autostart, model load, frame 0)", seconds=cold_s)
    s.row("warm, frames seen before (script reloaded, frame 0 again)", seconds=reload_s)
    s.row("warm, frames never seen (worker up, another frame)", seconds=unseen_s)
    s.ratios.append(Ratio("cold / warm first frame, script reloaded", cold_s / reload_s, START_TARGET))
    s.ratios.append(Ratio("cold / warm first frame, new frames", cold_s / unseen_s, START_TARGET))
    s.notes.append(f"medians of {b.repeats}; each vspipe run is a new process and a new worker session; the worker "
                   f"is autostarted by erdn_vs.deblur with its defaults ({b.threads_label}). "
                   "A reloaded script's frames are answered from the worker's content-keyed cache (no stage "
                   f"evaluated); a frame never seen costs its window's {b.stages_per_window} stage evaluation"
                   f"{'s' if b.stages_per_window > 1 else ''}")
    return s
