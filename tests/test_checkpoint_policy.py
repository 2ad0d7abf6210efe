"""training/CHECKPOINTS.md, checked: which training checkpoints may be committed, how big, and how often.

Reads git's index and history. Outside a git checkout (an sdist) there is nothing to check; in a shallow clone
the history holds one commit, which is checked like the rest.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
CHECKPOINTS = "training/checkpoints"
POLICY_SINCE = "2026-12-07T00:00:00Z"  # the day the policy was written; earlier history is as it was
MAX_BYTES = 32 * 2**20


def git(*args: str) -> str:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    env = dict(os.environ, TZ="UTC")
    return subprocess.run(["git", *args], cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout


def tracked_checkpoints() -> list[str]:
    return [p for p in git("ls-files", "--", CHECKPOINTS).splitlines() if p.endswith(".ckpt")]


def resume_points() -> set[str]:
    """Every checkpoint a config resumes from: checkpoint_copy's last.ckpt and model.init_from, and the GPU
    session's TRAIN_CHECKPOINT."""
    points = set()
    for config in (REPO / "training" / "configs").rglob("*.yaml"):
        raw = yaml.safe_load(config.read_text()) or {}
        if raw.get("checkpoint_copy"):
            points.add(f"{raw['checkpoint_copy'].rstrip('/')}/last.ckpt")
        init = (raw.get("model") or {}).get("init_from")
        if init:
            points.add(init)
    session = (REPO / "benchmarks" / "gpu_session.sh").read_text()
    points.update(re.findall(r"TRAIN_CHECKPOINT=\$\{TRAIN_CHECKPOINT:-([^}]+)\}", session))
    return points


def test_every_committed_checkpoint_is_one_a_config_resumes_from() -> None:
    stray = sorted(set(tracked_checkpoints()) - resume_points())
    assert not stray, (f"{stray}: no config resumes from these; git rm them and say in the config's header which "
                       "commit holds them (training/CHECKPOINTS.md)")


def test_no_committed_checkpoint_is_too_big() -> None:
    sizes = {p: (REPO / p).stat().st_size for p in tracked_checkpoints() if (REPO / p).exists()}
    assert all(size <= MAX_BYTES for size in sizes.values()), sizes


def test_at_most_one_checkpoint_commit_per_lineage_per_day() -> None:
    log = git("log", f"--since={POLICY_SINCE}", "--diff-filter=AM", "--name-only", "--date=format-local:%Y-%m-%d",
              "--format=@%h %cd", "--", CHECKPOINTS)
    commits: dict[tuple[str, str], set[str]] = defaultdict(set)
    commit = day = ""
    for line in log.splitlines():
        if line.startswith("@"):
            commit, day = line[1:].split()
        elif line.endswith(".ckpt"):
            lineage = Path(line).relative_to(CHECKPOINTS).parts[0]
            commits[(lineage, day)].add(commit)
    crowded = {key: sorted(c) for key, c in commits.items() if len(c) > 1}
    assert not crowded, (f"more than one checkpoint commit per lineage and day: {crowded}; commit the newest "
                         "checkpoint once a day (training/CHECKPOINTS.md)")
