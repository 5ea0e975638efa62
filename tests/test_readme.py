"""The README runs as written: its ``python`` blocks in order (one namespace), and the shell
blocks marked ``<!-- readme-test: run -->`` line by line (``posegraph …`` through the entry
point in this process, ``mkdir -p``),
from a temporary folder where ``data/`` and ``configs/`` are the repository's."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from posegraph.cli.main import main
from conftest import python_blocks

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
MARK = "<!-- readme-test: run -->"


def marked_commands(text: str):
    blocks = re.findall(re.escape(MARK) + r"\s*\n```(?:sh|bash|console)\n(.*?)^```", text, flags=re.S | re.M)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_has_the_tour_and_examples():
    assert len(python_blocks(README)) >= 3
    assert len(marked_commands(README)) >= 5
    assert "make demo" in README and "make test" in README


@pytest.mark.slow
def test_python_blocks_run_in_order(in_repo_data_folder, capsys):
    namespace: dict = {"__name__": "__readme__"}
    for k, block in enumerate(python_blocks(README)):
        code = compile(block, f"README.md python block {k + 1}", "exec")
        exec(code, namespace)  # noqa: S102 - the README is ours
    assert (in_repo_data_folder / "grid_se2.optimized.g2o").is_file()


@pytest.mark.slow
def test_marked_cli_examples_run(in_repo_data_folder, capsys):
    for line in marked_commands(README):
        argv = shlex.split(line)
        if argv[:2] == ["mkdir", "-p"]:
            for folder in argv[2:]:
                os.makedirs(folder, exist_ok=True)
            continue
        assert argv[0] == "posegraph", line
        code = main(argv[1:])
        out, err = capsys.readouterr()
        assert code == 0, (line, err)
        assert "error" not in err, (line, err)
    assert (in_repo_data_folder / "out" / "sphere.png").stat().st_size > 10_000


def test_readme_is_short_and_its_links_resolve():
    assert len(README.splitlines()) <= 450
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    local = [link for link in links if "://" not in link]
    assert any(link.startswith("docs/") for link in local)
    missing = [link for link in local if not (REPO / link).exists()]
    assert not missing, f"README links to missing files: {missing}"
