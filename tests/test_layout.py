"""The import graph of ``erdn_vs``: no circles, and the command line on top of the file pipeline and the farm.

Read from the source with ``ast`` (nothing is imported), counting every import, also those inside
functions: a circle through a function-level import is still a circle a reader has to untangle.
Run it alone with ``python tests/test_layout.py``: it prints the graph.
"""

from __future__ import annotations

import ast
import graphlib
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "erdn_vs"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The ``erdn_vs`` modules ``path`` imports. ``from . import x`` counts as module ``x`` when it is one;
    a package's own ``__init__`` is not counted for importing its submodules (Python runs it, but it
    imports nothing back)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                root = ".".join(base + ([node.module] if node.module else []))
            else:
                root = node.module or ""
            targets = [f"{root}.{alias.name}" if f"{root}.{alias.name}" in modules else root for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # erdn_vs.filter.deblur -> erdn_vs.filter
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) for f in files}


def reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_erdn_vs_has_no_import_circle():
    graph = import_graph()
    assert len(graph) > 10  # the walk found the package
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        raise AssertionError(f"import circle in erdn_vs: {' -> '.join(e.args[1])}") from None


def test_the_command_line_is_on_top():
    """``erdn deblur`` (deblur_cli) calls the plain render and the farm; neither reaches back to it, the file
    pipeline never reaches the farm, and the VapourSynth function reaches neither."""
    graph = import_graph()
    assert {"erdn_vs.pipeline.render", "erdn_vs.farm.driver"} <= reaches(graph, "erdn_vs.deblur_cli")
    for module in graph:
        if module.startswith(("erdn_vs.pipeline", "erdn_vs.farm")):
            assert "erdn_vs.deblur_cli" not in reaches(graph, module), module
        if module.startswith("erdn_vs.pipeline"):
            assert not any(m.startswith("erdn_vs.farm") for m in reaches(graph, module)), module
    assert not any(m.startswith(("erdn_vs.pipeline", "erdn_vs.farm", "erdn_vs.deblur_cli"))
                   for m in reaches(graph, "erdn_vs.filter"))


def test_a_circle_is_found(tmp_path):
    """The check itself: two modules importing each other (one inside a function) make a circle."""
    pkg = tmp_path / "erdn_vs"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")
    modules = {"erdn_vs", "erdn_vs.a", "erdn_vs.b"}
    global PACKAGE
    saved, PACKAGE = PACKAGE, pkg
    try:
        assert imports_of(pkg / "a.py", modules) == {"erdn_vs.b"}
        assert imports_of(pkg / "b.py", modules) == {"erdn_vs.a"}
    finally:
        PACKAGE = saved


if __name__ == "__main__":
    for module, deps in import_graph().items():
        print(f"{module}: {', '.join(sorted(deps)) or '-'}")
    sys.exit(0)
