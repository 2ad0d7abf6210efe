"""The output file of a render: checked before anything starts, written under a partial name, renamed at the end."""

from __future__ import annotations

import os
from pathlib import Path

from .tools import RenderError


def check_paths(input_path: Path, output: Path) -> None:
    if not input_path.is_file():
        raise RenderError(f"cannot read input {input_path}: no such file")
    if not os.access(input_path, os.R_OK):
        raise RenderError(f"cannot read input {input_path}: permission denied")
    parent = output.resolve().parent
    if not parent.is_dir():
        raise RenderError(f"cannot write {output}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise RenderError(f"cannot write {output}: directory {parent} is not writable")
    if output.resolve() == input_path.resolve():
        raise RenderError("the output must not overwrite the input")
