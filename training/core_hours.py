"""Validation PSNR against compute: runs compared at equal core-hours (issue 13's 3- vs 5-frame question).

Reads the ``log.csv`` of each run (``erdn train`` writes ``core_seconds``, the process's CPU time spent on
training steps, carried over from a phase-1 run into its phase 2) and plots validation PSNR, of the EMA
weights and of the raw weights, against core-hours. Prints the same points as a Markdown table.

    python -m training.core_hours training/checkpoints/lite_synth_v3_f3/log.csv:3-frame \\
        training/checkpoints/lite_synth_v3/log.csv:5-frame --blurry 25.26 --out docs/psnr_vs_core_hours.png

Core-seconds are CPU time: a CPU core-hour and a GPU-hour are not the same unit, so a run resumed on a GPU
has no place on this plot.
"""

from __future__ import annotations

import argparse
import csv
import itertools
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ValPoint:
    iteration: int
    core_hours: float
    psnr: float  # the shipped (EMA) weights' validation PSNR, dB
    psnr_raw: float | None  # the raw weights' (None when the run keeps no EMA)


def read_validation(log_csv: Path) -> list[ValPoint]:
    """The validation rows of one run's log.csv, in order of iteration.

    Raises ValueError when the log has no ``core_seconds`` column (a run from before it was counted)."""
    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and "core_seconds" not in rows[0]:
        raise ValueError(f"{log_csv} has no core_seconds column; it predates compute accounting")
    points = {}
    for r in rows:
        if r.get("val_psnr") and r.get("core_seconds"):
            raw = float(r["val_psnr_raw"]) if r.get("val_psnr_raw") else None
            points[int(r["iteration"])] = ValPoint(int(r["iteration"]), float(r["core_seconds"]) / 3600,
                                                   float(r["val_psnr"]), raw)
    return [points[k] for k in sorted(points)]


def plot(runs: dict[str, list[ValPoint]], png: Path, blurry: float | None,
         zoom_from: float | None = None, ymin: float | None = None) -> list[int]:
    """Every run's EMA (solid) and raw (dashed) validation PSNR against core-hours; with ``zoom_from``, a second
    panel shows only the points from that many core-hours on (where later phases crowd together). ``ymin`` cuts
    the axis there (a collapse far below stays in the table, not on the scale of everything else).
    Returns the number of runs drawn in each panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if zoom_from is not None else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.6), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    drawn = [0] * panels
    for i, ax in enumerate(axes[0]):
        start = zoom_from if i == 1 else float("-inf")
        for (label, points), color in zip(runs.items(), itertools.cycle(colors)):
            shown = [p for p in points if p.core_hours >= start]
            if not shown:
                continue
            drawn[i] += 1
            ax.plot([p.core_hours for p in shown], [p.psnr for p in shown], marker="o", markersize=4, color=color,
                    label=f"{label} (EMA, shipped)")
            raw = [p for p in shown if p.psnr_raw is not None]
            if raw:
                ax.plot([p.core_hours for p in raw], [p.psnr_raw for p in raw], marker=".", linestyle="--",
                        color=color, alpha=0.6, label=f"{label} (raw weights)")
        if blurry is not None and i == 0:
            ax.axhline(blurry, color="gray", linestyle=":", label=f"blurry input ({blurry:.2f} dB)")
        ax.set(xlabel="compute (CPU core-hours)", ylabel="validation PSNR (dB)",
               title=f"from {zoom_from:g} core-hours" if i == 1 else "")
        ax.grid(alpha=0.3)
        if ymin is not None:
            ax.set_ylim(bottom=ymin)
        if drawn[i]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return drawn


def table(runs: dict[str, list[ValPoint]]) -> str:
    lines = ["| run | iteration | core-hours | val PSNR (EMA) | val PSNR (raw) |", "|---|---|---|---|---|"]
    for label, points in runs.items():
        for p in points:
            raw = f"{p.psnr_raw:.3f}" if p.psnr_raw is not None else ""
            lines.append(f"| {label} | {p.iteration} | {p.core_hours:.3f} | {p.psnr:.3f} | {raw} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.core_hours", description=__doc__.splitlines()[0])
    p.add_argument("logs", nargs="+", help="LOG.csv[:LABEL] of each run")
    p.add_argument("--out", type=Path, default=None, help="write the plot here (PNG)")
    p.add_argument("--blurry", type=float, default=None, help="the blurry input's validation PSNR, drawn as a line")
    p.add_argument("--zoom-from", type=float, default=None, metavar="HOURS",
                   help="add a panel of the points from HOURS core-hours on")
    p.add_argument("--ymin", type=float, default=None, metavar="DB", help="cut the PSNR axis below DB")
    p.add_argument("--until", type=float, default=None, metavar="HOURS",
                   help="only the points up to HOURS core-hours (runs of different lengths on one scale)")
    args = p.parse_args(argv)
    runs: dict[str, list[ValPoint]] = {}
    for item in args.logs:
        path, _, label = item.partition(":")
        try:
            points = read_validation(Path(path))
        except (OSError, ValueError) as e:
            p.error(str(e))
        if args.until is not None:
            points = [q for q in points if q.core_hours <= args.until]
        runs[label or Path(path).parent.name] = points
    print(table(runs))
    if args.out:
        plot(runs, args.out, args.blurry, args.zoom_from, args.ymin)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
