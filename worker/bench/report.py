"""What the bench measured: sections of rows of raw figures, ratios against targets, and the table."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class Ratio:
    name: str
    value: float
    target: float | None  # None: shown for information, no target
    note: str = ""

    @property
    def status(self) -> str:
        if self.target is None:
            return "info"
        return "PASS" if self.value >= self.target else "MISS"


@dataclass
class Section:
    key: str
    title: str
    rows: list[dict] = field(default_factory=list)  # {"label": str, metric: number, ...}
    ratios: list[Ratio] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)  # what was measured: preset, size, precision (set by the bench loop)

    def row(self, label: str, **metrics: float) -> dict:
        row = {"label": label, **metrics}
        self.rows.append(row)
        return row

    def to_dict(self) -> dict:
        out = asdict(self)
        for ratio, d in zip(self.ratios, out["ratios"], strict=True):
            d["status"] = ratio.status
        return out


def _number(v: object) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def format_table(sections: list[Section], header: list[str]) -> str:
    lines = [*header]
    for s in sections:
        lines += ["", f"== {s.title}"]
        for row in s.rows:
            metrics = "  ".join(f"{k}={_number(v)}" for k, v in row.items() if k != "label")
            lines.append(f"  {row['label']:<34s} {metrics}")
        for r in s.ratios:
            target = "" if r.target is None else f" (target >= {r.target:g})"
            note = f"  [{r.note}]" if r.note else ""
            lines.append(f"  -> {r.name:<31s} {_number(r.value)}x{target} {r.status}{note}")
        lines += [f"  note: {n}" for n in s.notes]
    # A section measured at a given thread setting says which, so pinned and default runs stay apart.
    summary = [(r, f" ({s.meta['threads']})" if "threads" in s.meta else "")
               for s in sections for r in s.ratios if r.target is not None]
    if summary:
        lines += ["", "== targets"]
        lines += [f"  {r.status:4s} {r.name}{where}: {_number(r.value)}x, target >= {r.target:g}x"
                  for r, where in summary]
    return "\n".join(lines)
