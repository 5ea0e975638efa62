"""The package's shape: no import circles, each stage imports only the stages below it, and
no module grows past ~500 lines without saying why.

The stages, from the bottom (``../shared/DESIGN.md``): the foundations (``errors``, ``graph``,
``information``), ``lie``, ``io``, ``init``, ``mesh``, ``model``, ``solve``, ``debug``,
``report``, ``synthetic``, ``cli``, ``batch``. Every import counts, including those inside
functions (a lazy import is still a dependency). Package ``__init__`` files only re-export
their modules' names and are left out; ``posegraph.cli.main``, the entry point, may import
any stage.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "posegraph"
STAGES = ["errors", "graph", "information", "_moved", "_lazy", "lie", "io", "init", "mesh", "model",
          "solve", "debug", "report", "synthetic", "cli", "batch"]
ENTRY_POINT = "posegraph.cli.main"
MAX_LINES = 530  # "~500": a module this long says why in its docstring
REASON = "One module because"


def modules() -> Dict[str, Path]:
    """posegraph's modules (package ``__init__`` files left out) by dotted name."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] != "__init__":
            found[".".join(parts)] = path
    return found


def imports(path: Path, known: Set[str]) -> Set[str]:
    """The posegraph modules ``path`` imports (anywhere in the file)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("posegraph"):
            assert not node.level, f"{path}: relative import (posegraph uses absolute imports)"
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add(sub if sub in known else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("posegraph"))
    return {m for m in out if m in known}


def graph() -> Dict[str, Set[str]]:
    known = modules()
    return {name: imports(path, set(known)) for name, path in known.items()}


def stage(module: str) -> int:
    return STAGES.index(module.split(".")[1])


def find_cycle(edges: Dict[str, Set[str]]) -> List[str]:
    """One import cycle as a list of modules (first = last), or [] when there is none."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_every_module_belongs_to_a_stage():
    unknown = [m for m in modules() if m.split(".")[1] not in STAGES]
    assert not unknown, f"modules outside the stages {STAGES}: {unknown}"


def test_no_stage_imports_a_stage_above_it():
    upward = [
        f"{m} -> {t}"
        for m, targets in sorted(graph().items())
        for t in sorted(targets)
        if m != ENTRY_POINT and stage(t) > stage(m)
    ]
    assert not upward, "imports of a higher stage:\n  " + "\n  ".join(upward)


@pytest.mark.parametrize("name", sorted(modules()))
def test_long_modules_say_why(name):
    path = modules()[name]
    lines = len(path.read_text(encoding="utf-8").splitlines())
    if lines > MAX_LINES:
        doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        assert REASON in doc, f"{name} has {lines} lines: split it, or say in its docstring '{REASON} …'"
