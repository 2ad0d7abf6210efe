"""Every command in README.md still exists and parses, so none goes stale.

Each `erdn ...` line of a shell block is run through its subcommand's real argument parser
(stopped right after a successful parse); `make` lines must name Makefile targets; Python
blocks must compile. What the commands *do* is tested where it belongs (test_render,
test_demo, test_export, test_convert, test_training, test_worker, ...).
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import textwrap
from pathlib import Path

import pytest

from erdn_vs.cli import SUBCOMMANDS

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def code_blocks(lang: str) -> list[str]:
    return [textwrap.dedent(b) for b in re.findall(rf"^\s*```{lang}\n(.*?)^\s*```", README, flags=re.S | re.M)]


def shell_commands() -> list[str]:
    commands = []
    for block in code_blocks("sh"):
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


COMMANDS = shell_commands()


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
    known = ("erdn ", "make ", "torchrun ", "vspipe ", ".venv/bin/", "source ", "python ", "ffmpeg ", "git ")
    strays = [c for c in COMMANDS if not c.startswith(known)]
    assert not strays, strays


@pytest.mark.parametrize("block", code_blocks("python"))
def test_python_blocks_compile(block):
    compile(block, "README.md", "exec")
