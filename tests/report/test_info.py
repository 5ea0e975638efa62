"""``posegraph info``: counts, connectivity, information summary, initial χ²."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from posegraph import build_problem, read_g2o
from posegraph.cli.optimize import EXIT_BAD_INPUT
from posegraph.cli.main import main
from posegraph.report.info import format_info, graph_info

from conftest import SE2_TEXT

REPO = Path(__file__).resolve().parents[2]


def test_counts_and_chi2(tmp_path, synthetic):
    s = synthetic(kind="SE3", n=8, loops=((0, 4), (7, 2)), ids=[10, 11, 12, 13, 14, 15, 16, 20], seed=2, noise=0.1)
    path = tmp_path / "g.g2o"
    path.write_text(s.text(fixed=[12]))
    info = graph_info(read_g2o(path))
    # chain 10-11-…-16-20: the last link (16, 20) is not consecutive ids: a loop closure here
    assert (info["vertices"], info["edges"], info["odometry_edges"], info["loop_closures"]) == (8, 9, 6, 3)
    assert (info["fixed"], info["fixed_ids"], info["id_range"]) == (1, [12], [10, 20])
    assert (info["components"], info["largest_component"], info["vertices_without_edges"]) == (1, 8, 0)
    inf = info["information"]
    assert inf["diagonal"] is False and inf["all_equal"] is False
    lam = np.linalg.eigvalsh(s.information)
    assert inf["min_eigenvalue"] == pytest.approx(lam.min()) and inf["max_eigenvalue"] == pytest.approx(lam.max())
    problem = build_problem(read_g2o(path))
    assert info["initial_chi2"] == pytest.approx(2 * float(problem.error()), rel=1e-12)
    assert info["initial_chi2"] > 0 and info["initial_error"] == info["initial_chi2"] / 2


def test_disconnected_and_isolated_vertices(tmp_path):
    text = SE2_TEXT + "VERTEX_SE2 7 5 5 0\nVERTEX_SE2 8 6 5 0\nVERTEX_SE2 9 9 9 0\nEDGE_SE2 7 8 1 0 0 1 0 0 1 0 1\n"
    path = tmp_path / "d.g2o"
    path.write_text(text)
    with pytest.warns(UserWarning, match="connected components"):
        info = graph_info(read_g2o(path))
    assert (info["components"], info["largest_component"], info["vertices_without_edges"]) == (3, 3, 1)
    assert info["information"] == {"min_eigenvalue": 1.0, "max_eigenvalue": 1.0, "diagonal": True, "all_equal": True}
    assert info["initial_chi2"] == pytest.approx(np.pi**2, rel=1e-12)  # SE2_TEXT is not noise-free


def test_vertex_only_and_edge_only_files(tmp_path):
    traj = tmp_path / "traj.g2o"
    traj.write_text("VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1 0 0\nVERTEX_SE2 2 2 0 0.1\n")
    info = graph_info(read_g2o(traj))
    assert (info["vertices"], info["edges"], info["initial_chi2"]) == (3, 0, None)
    assert info["information"]["min_eigenvalue"] is None
    assert "no VERTEX" not in format_info(info) and "chi2" not in format_info(info)
    edge_only = graph_info(read_g2o(REPO / "data" / "grid_se2_edges_only.g2o"))
    assert edge_only["has_vertex_poses"] is False and edge_only["initial_chi2"] is None
    assert (edge_only["vertices"], edge_only["edges"], edge_only["odometry_edges"], edge_only["loop_closures"]) == (500, 847, 499, 348)
    assert "no VERTEX lines" in format_info(edge_only)


def test_cli_info(capsys):
    path = REPO / "data" / "sphere_se3.g2o"
    assert main(["info", str(path), "--json"]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and err == ""
    data = json.loads(out)
    assert (data["kind"], data["vertices"], data["edges"], data["odometry_edges"], data["loop_closures"]) == ("SE3", 500, 949, 499, 450)
    assert data["initial_error"] == pytest.approx(3413286.121, rel=1e-9)  # data/README.md
    assert data["information"]["min_eigenvalue"] == 100.0 and data["information"]["max_eigenvalue"] == 10000.0
    assert main(["info", str(path)]) == 0
    out, _ = capsys.readouterr()
    for word in ("500", "949 (499 odometry, 450 loop closures)", "components   1", "diagonal, all equal", "initial chi2"):
        assert word in out, (word, out)


def test_cli_info_bad_file(tmp_path, capsys):
    path = tmp_path / "bad.g2o"
    path.write_text("VERTEX_SE2 0 0 0\n")
    assert main(["info", str(path)]) == EXIT_BAD_INPUT
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: {path}:1: VERTEX_SE2: expected 4 values after the tag, received 3\n"


def test_info_counts_points_and_their_cost(capsys):
    from posegraph.cli.main import main

    data = Path(__file__).resolve().parents[2] / "data"
    assert main(["info", str(data / "mesh_demo.g2o"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["points"] == 642 and info["point_observations"] > 642
    problem = build_problem(read_g2o(data / "mesh_demo.g2o"))
    assert info["initial_chi2"] == pytest.approx(2 * float(problem.error()), rel=1e-12)
