"""The documentation in docs/ holds: every ``python`` block of each page runs, in order, in one
namespace per page (from a temporary folder where ``data/`` and ``configs/`` are the
repository's; ``py`` blocks are shown but not run: they need a cluster or a GPU), and every
public name of the modules the API reference documents has a docstring — mkdocstrings renders
a name without one silently, so this is the check that fails the build (``make docs`` builds
the pages themselves with ``mkdocs build --strict``)."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from types import ModuleType
from typing import Iterator, List, Tuple

import pytest

import posegraph
from conftest import python_blocks

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = sorted(p for p in DOCS.glob("*.md"))


def documented_modules() -> List[str]:
    """The modules the API reference renders: its ``::: module`` lines."""
    names: List[str] = []
    for page in sorted((DOCS / "api").glob("*.md")):
        names += re.findall(r"^::: ([\w.]+)", page.read_text(encoding="utf-8"), flags=re.M)
    return names


def public_names(module: ModuleType) -> List[str]:
    """``__all__``, or else the public classes and functions the module defines itself."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return [
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == module.__name__
    ]


def undocumented(qualname: str, obj: object) -> Iterator[str]:
    """``qualname`` and its public methods and properties (those the class defines) that have
    no docstring of their own or inherited from the method they override."""
    if inspect.ismodule(obj) or inspect.isclass(obj) or callable(obj):
        if not (getattr(obj, "__doc__", None) or "").strip():
            yield qualname
    if not inspect.isclass(obj):
        return
    for name, member in vars(obj).items():
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            doc = member.__doc__
        elif isinstance(member, (classmethod, staticmethod)) or inspect.isfunction(member):
            doc = inspect.getdoc(getattr(obj, name))
        else:
            continue
        if not (doc or "").strip():
            yield f"{qualname}.{name}"


def missing_docstrings(modules: List[str]) -> List[str]:
    missing: List[str] = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        if not (module.__doc__ or "").strip():
            missing.append(module_name)
        for name in public_names(module):
            missing += undocumented(f"{module_name}.{name}", getattr(module, name))
    return sorted(set(missing))


def test_blocks_are_found():
    assert python_blocks("a\n```python\nx = 1\n```\n```py\ny\n```\n```python\nz = 2\n```\n") == [
        "x = 1\n",
        "z = 2\n",
    ]


def test_the_reference_documents_the_public_modules():
    modules = set(documented_modules())
    for name in ("posegraph", "posegraph.io", "posegraph.solve.optimize", "posegraph.solve.layer",
                 "posegraph.model.builder", "posegraph.debug", "posegraph.report.eval", "posegraph.mesh",
                 "posegraph.init", "posegraph.init.chordal", "posegraph.synthetic.hard_cases", "posegraph.synthetic"):
        assert name in modules, name


def test_every_top_level_name_is_in_a_documented_module():
    modules = set(documented_modules())
    homes: List[Tuple[str, str]] = []
    for name in posegraph.__all__:
        obj = getattr(posegraph, name)
        home = obj.__name__ if inspect.ismodule(obj) else obj.__module__
        if home not in modules and not any(
            name in getattr(importlib.import_module(m), "__all__", ()) for m in modules if m != "posegraph"
        ):
            homes.append((name, home))
    assert not homes, f"public names whose module the API reference does not render: {homes}"


def test_public_names_have_docstrings():
    missing = missing_docstrings(["posegraph", *documented_modules()])
    assert not missing, "public names without a docstring:\n  " + "\n  ".join(missing)


def test_the_check_finds_a_missing_docstring():
    class Documented:
        """Has one."""

        def method(self):
            pass

        @property
        def value(self):
            return 1

    assert list(undocumented("Documented", Documented)) == ["Documented.method", "Documented.value"]


def test_pages_have_python_examples():
    pages = {p.name for p in PAGES if python_blocks(p.read_text(encoding="utf-8"))}
    assert {"index.md", "python.md", "layer.md", "debugging.md", "meshes.md", "robust.md"} <= pages


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_python_blocks_run_in_order(page, in_repo_data_folder, capsys):
    namespace: dict = {"__name__": f"__docs_{page.stem}__"}
    for k, block in enumerate(python_blocks(page.read_text(encoding="utf-8"))):
        code = compile(block, f"docs/{page.name} python block {k + 1}", "exec")
        exec(code, namespace)  # noqa: S102 - the docs are ours
