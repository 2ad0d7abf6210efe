"""README.md and the docs/ pages it links to: every command still exists and parses, every link resolves.

Each `erdn ...` line of a shell block (README and docs/*.md) is run through its subcommand's real argument
parser (stopped right after a successful parse); `make` lines must name Makefile targets; Python blocks must
compile. The README stays short (about 300 lines), links every docs page, and its model table says what
plugin_manifest.yaml says. What the commands *do* is tested where it belongs (test_render, test_demo,
test_export, test_convert, test_training, test_worker, ...).
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import textwrap
from pathlib import Path

import pytest
import yaml

from erdn_vs.cli import SUBCOMMANDS

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()
DOC_PAGES = sorted((REPO / "docs").glob("*.md"))
# Markdown files whose commands and links are checked: the README, the docs pages, the checkpoint policy.
PAGES = {path: path.read_text() for path in [REPO / "README.md", *DOC_PAGES, REPO / "training" / "CHECKPOINTS.md"]}


def code_blocks(lang: str, text: str = README) -> list[str]:
    return [textwrap.dedent(b) for b in re.findall(rf"^\s*```{lang}\n(.*?)^\s*```", text, flags=re.S | re.M)]


def shell_commands(text: str) -> list[str]:
    commands = []
    for block in code_blocks("sh", text):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def without_redirection(tokens: list[str]) -> list[str]:
    """The command's own arguments: up to a pipe or a redirection."""
    for i, tok in enumerate(tokens):
        if tok in ("|", ">", ">>", "2>", "<") or tok.startswith((">", "2>")):
            return tokens[:i]
    return tokens


class Parsed(Exception):
    pass


def parses(module_name: str, argv: list[str], monkeypatch) -> argparse.Namespace:
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    module = importlib.import_module(module_name)
    with pytest.raises(Parsed) as caught:
        module.main(argv)
    return caught.value.args[0]


def test_readme_starts_with_the_two_commands_and_ci_runs_the_test_one():
    first = code_blocks("sh")[0].splitlines()
    assert first[0].startswith("make demo") and first[1].startswith("make test")
    assert README.index("```sh") < 200
    ci = (REPO / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1].strip() == "make test"


def test_readme_is_short_and_links_every_docs_page():
    assert len(README.splitlines()) <= 320, "the README is for users: move details to a docs/ page and link it"
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)", README))
    assert {f"docs/{p.name}" for p in DOC_PAGES} <= linked


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    outside_code = re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.S | re.M)
    return {github_anchor(h) for h in re.findall(r"^#+ (.*)$", outside_code, flags=re.M)}


@pytest.mark.parametrize("page", list(PAGES), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path):
    text = PAGES[page]
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(target)
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest.read_text()):
            broken.append(target)
    assert not broken, f"{page.name}: {broken}"


def test_readme_model_table_says_what_the_manifest_says():
    models = yaml.safe_load((REPO / "plugin_manifest.yaml").read_text())["models"]
    rows = {line.split("|")[1].strip().split()[0].strip("`"): line for line in README.splitlines()
            if line.startswith("| `erdn-")}
    assert list(rows)[: len(models)] == [m["name"] for m in models], "one row per shipped model, in manifest order"
    assert "(default)" in rows[models[0]["name"]]
    for m in models:
        q, row = m["quality"], rows[m["name"]]
        cells = [c.strip() for c in row.split("|")[1:-1]]
        assert cells[1] == str(m["frames"]), m["name"]
        v3 = q if "v3" in q["eval"] else {"psnr_db": q["also_on_synth_v3_test"].split("-> ")[1].split(" /")[0]}
        assert f"{float(v3['psnr_db']):.2f} / " in cells[2], (m["name"], cells[2])
        fresh = q["also_on_fresh_set"].split("-> ")[1].split(" (")[0]  # "24.93 / 0.7713"
        assert fresh in cells[3], (m["name"], cells[3])
        real = q["real_footage"]  # benchmarks/artefacts.py: bbb / bikes
        for key in ("pan_blur_gain_db", "nyquist_ratio", "shimmer_ratio"):
            assert str(real[key]) in cells[4], (m["name"], key, cells[4])


COMMANDS = [c for text in PAGES.values() for c in shell_commands(text)]


@pytest.mark.parametrize("line", [c for c in COMMANDS if c.startswith("erdn ")])
def test_erdn_command_parses(line, monkeypatch):
    argv = without_redirection(shlex.split(line))[1:]
    assert argv[0] in SUBCOMMANDS, f"README uses unknown subcommand {argv[0]!r}"
    parses(SUBCOMMANDS[argv[0]][0], argv[1:], monkeypatch)


@pytest.mark.parametrize("line", [c for c in COMMANDS if c.startswith("torchrun ")])
def test_torchrun_command_parses(line, monkeypatch):
    argv = shlex.split(line)
    module = argv[argv.index("-m") + 1]
    parses(module, argv[argv.index("-m") + 2 :], monkeypatch)


def test_make_targets_exist():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, flags=re.M))
    used = [shlex.split(c)[1] for c in COMMANDS if c.startswith("make ")]
    assert used and set(used) <= targets


def test_every_shell_line_is_a_known_kind_of_command():
    known = ("erdn ", "make ", "torchrun ", "vspipe ", ".venv/bin/", "source ", "python ", "ffmpeg ", "git ",
             "cd ", "vapoursynth ", "bash ", "awk ", "migraphx-driver ")
    strays = [c for c in COMMANDS if not c.startswith(known)]
    assert not strays, strays


@pytest.mark.parametrize("block", [b for text in PAGES.values() for b in code_blocks("python", text)])
def test_python_blocks_compile(block):
    compile(block, "README.md", "exec")
