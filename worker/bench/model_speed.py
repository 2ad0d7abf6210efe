"""Section 1: one stage evaluation's time and peak memory, per backend and frame size.

Each (backend, size) runs in a fresh child process, so that memory one measurement
allocated (and the allocator kept) never hides another's peak. On the CPU the peak is
the kernel's high-water mark of the resident set size during the runs (reset before the
first run, so model and input loading do not count), minus what it was at that reset; on
CUDA it is torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

_CHILD = "import sys; from worker.bench.model_speed import child_main; sys.exit(child_main(sys.argv[1]))"


def _status_bytes(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM, ...) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field} line")


class PeakRss:
    """Highest resident set size of this process while the ``with`` block runs, as the kernel keeps it.

    Entering resets the kernel's high-water mark (VmHWM) to the current resident size by writing
    5 to /proc/self/clear_refs (Linux >= 4.0); leaving reads it. Nothing samples, so a peak counts
    however briefly it lasted and however busy the machine is. ``start`` and ``peak`` are bytes.
    Raises RuntimeError where the mark cannot be reset.
    """

    def __enter__(self) -> PeakRss:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError as e:
            raise RuntimeError(f"cannot reset the peak resident size through /proc/self/clear_refs ({e}); "
                               "measuring peak memory needs Linux 4.0 or newer") from None
        self.start = _status_bytes("VmRSS")
        self.peak = self.start
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak = max(self.start, _status_bytes("VmHWM"))


def child_main(spec_json: str) -> int:
    """Time the stages the spec names (1, or 1 and 2) on one random triplet; print one JSON line."""
    from worker.cpu_runtime import configure

    configure()  # the worker's process settings, before torch loads
    import numpy as np
    import torch

    spec = json.loads(spec_json)
    if spec["threads"] > 0:  # else torch's default, as the worker has it
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    h, w = (-(-spec["height"] // 8) * 8, -(-spec["width"] // 8) * 8)
    x = torch.rand(1, 3, 3, h, w, generator=torch.Generator().manual_seed(0))
    if spec["backend"] == "torch":
        from worker.backends import TorchBackend, resolve_precision
        from worker.registry import ResolvedWeights

        # the worker's own stage code: inference mode, autocast in fp16/bf16, float32 out
        backend = TorchBackend(ResolvedWeights(Path(spec["weights"]), "", None, None), device,
                               resolve_precision(spec["precision"], device))
        x = x.to(device)
        stages = {1: backend.stage1, 2: backend.stage2}

        def run(stage: int) -> None:
            stages[stage](x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = spec["threads"]
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"] if device.type == "cpu" else ["CUDAExecutionProvider"]
        sessions = {i: ort.InferenceSession(str(Path(spec["onnx_dir"]) / f"stage{i}.onnx"), options,
                                            providers=providers) for i in spec["stages"]}
        feed = np.ascontiguousarray(x.reshape(1, 9, h, w).numpy())

        def run(stage: int) -> None:
            sess = sessions[stage]
            sess.run(None, {sess.get_inputs()[0].name: feed})

    times: dict[int, list[float]] = {stage: [] for stage in spec["stages"]}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with PeakRss() as rss:
        for r in range(spec["repeats"] + 1):  # the first round warms up and is not timed
            for stage in spec["stages"]:
                t0 = time.perf_counter()
                run(stage)
                if r:
                    times[stage].append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss.peak - rss.start
    print(json.dumps({**{f"stage{k}_s": statistics.median(v) for k, v in times.items()}, "peak_bytes": peak}))
    return 0


def measure(*, weights: Path, onnx_dir: Path | None, backend: str, width: int, height: int, threads: int,
            repeats: int, device: str, env: dict[str, str], precision: str = "auto",
            stages: tuple[int, ...] = (1, 2)) -> dict[str, float]:
    """Median seconds of one evaluation of each of ``stages`` (``stage1_s``, ``stage2_s``) and the peak memory
    (``peak_bytes``), from a child process. A 3-frame model has only stage 1."""
    spec = {"weights": str(weights), "onnx_dir": str(onnx_dir) if onnx_dir else None, "backend": backend,
            "width": width, "height": height, "threads": threads, "repeats": repeats, "device": device,
            "precision": precision, "stages": list(stages)}
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec)], capture_output=True, env=env,
                          timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"model throughput ({backend}, {width}x{height}) failed: "
                           f"{proc.stderr.decode(errors='replace')[-2000:]}")
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])
