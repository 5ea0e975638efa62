"""``import posegraph`` loads its names on first use (:mod:`posegraph._lazy`): a process that
never solves — the CLI's parser, the ``posegraph batch`` client — does not load torch; every
exported name and submodule is still there, and the names type checkers see are the same."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

import posegraph
import posegraph.io

REPO = Path(__file__).resolve().parents[1]


def fresh(code: str) -> str:
    """``code`` run in a new interpreter that imports this checkout's posegraph; its stdout."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                          cwd=str(REPO.parent)).stdout.strip()


HEAVY = "[m for m in ('torch', 'theseus', 'scipy', 'numpy') if m in sys.modules]"


def test_import_and_the_cli_parser_load_no_torch():
    code = (
        "import sys\n"
        "import posegraph, posegraph.io, posegraph.batch\n"
        "from posegraph.cli.main import _parse_args\n"
        "args = _parse_args(['batch', 'in', '--out-dir', 'out', '--workers', '2', '--max-iters', '5'])\n"
        "assert args.workers == 2 and args.max_iters == 5\n"
        "from posegraph.batch.driver import solve_options, _json_line\n"
        "assert solve_options({'max_iters': 5})['max_iters'] == 5 and _json_line({'a': float('nan')})\n"
        "from posegraph.io.output import write_text_atomic\n"
        f"print({HEAVY})"
    )
    assert fresh(code) == "[]"


def test_a_name_loads_what_it_needs():
    assert fresh(f"import sys, posegraph; posegraph.read_g2o; print({HEAVY}[:1])") == "['torch']"


def test_every_exported_name_and_submodule_resolves():
    for name in posegraph.__all__:
        assert getattr(posegraph, name) is not None, name
    for name in posegraph.io.__all__:
        assert getattr(posegraph.io, name) is not None, name
    assert posegraph.read_g2o.__module__ == "posegraph.io.g2o"
    assert fresh("import posegraph; print(posegraph.mesh.__name__, posegraph.solve.optimize.__name__)") == (
        "posegraph.mesh posegraph.solve.optimize"
    )
    assert set(posegraph.__all__) <= set(dir(posegraph))


def test_unknown_names_are_attribute_errors():
    assert not hasattr(posegraph, "no_such_name")
    assert not hasattr(posegraph.io, "no_such_name")
    assert not hasattr(posegraph, "__wrapped__")
    with pytest.raises(AttributeError, match="no_such_name"):
        posegraph.no_such_name  # noqa: B018


def type_checking_imports(path: Path) -> Dict[str, List[str]]:
    """``{"module": [names]}`` of the ``if TYPE_CHECKING:`` block of a package's ``__init__``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: Dict[str, List[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            for stmt in node.body:
                assert isinstance(stmt, ast.ImportFrom), ast.dump(stmt)
                if stmt.module == "posegraph":  # from posegraph import synthetic: subpackages, found as attributes
                    continue
                found.setdefault(stmt.module, []).extend(a.name for a in stmt.names)
    return found


@pytest.mark.parametrize("package", [posegraph, posegraph.io], ids=lambda p: p.__name__)
def test_type_checkers_see_the_names_the_package_exports(package):
    eager = type_checking_imports(Path(package.__file__))
    lazy = {module: sorted(names) for module, names in package._EXPORTS.items()}
    assert {module: sorted(names) for module, names in eager.items()} == lazy
    exported = {name for names in lazy.values() for name in names}
    assert set(package.__all__) <= exported
