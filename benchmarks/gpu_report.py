"""The GPU session's short Markdown report, from the figures it records (benchmarks/gpu_session.py)."""

from __future__ import annotations

import json


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
            cells = [diff_cell(v.get(p, {})) for p in ("fp32", "fp16", "bf16")]
            lines.append(f"| {k.split('_', 1)[1]} {v.get('size')} on {v.get('device')} | " + " | ".join(cells) + " |")
    tiling = {k: v for k, v in numbers.items() if k.startswith("tiling_")}
    if tiling:
        lines += ["", "## Tiled against whole frame", "",
                  "| size | tile (h, w) | max diff / PSNR | whole s | tiled s |", "|---|---|---|---|---|"]
        for k, v in tiling.items():
            lines.append(f"| {k.split('_', 1)[1]} | {v['tile_hw']} | {diff_cell(v)} | {v['whole_s']:.2f} | "
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
            lines.append(f"| {name.split('_')[1]} | {r['precision']} | {num(r.get('model_fps'))} | "
                         f"{num(r.get('fps_cached'))} | {num(r.get('fps_full_cascade'))} | "
                         f"{num(r.get('cache_speedup'))} | {num(r.get('peak_mib'))} | "
                         f"{num(r.get('pipeline_efficiency'))} |")
    train_step = steps.get("train", {}).get("result", {})
    if train_step.get("returned"):
        prefix = sorted(train_step["returned"])[-1].split(".")[0]
        lines += ["", "## Training", "", f"Returned: {', '.join(train_step['returned'])}. "
                  f"Validation: {train_step.get('log', {}).get('validation', [])[-3:]}.", "",
                  "To go on with the run here: `python -m training.split_checkpoint join OUT/" + prefix +
                  " RUN_DIR/last.ckpt`, then `erdn train CONFIG` (its run_dir: RUN_DIR). "
                  f"`OUT/{prefix}.model.safetensors` (and `.ema.safetensors`) are weights for `erdn eval` as they are."]
    return "\n".join(lines) + "\n"


def num(v: object) -> str:
    return "" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)


def diff_cell(d: dict) -> str:
    if not d:
        return ""
    psnr = "identical" if d.get("psnr_db") is None else f"{d['psnr_db']:.1f} dB"
    return f"{d['max_abs_diff']:.2e} / {psnr}"
