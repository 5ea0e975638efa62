"""PoseGraph (posegraph.graph): sizes, names, components, the gauge, and disconnected graphs
with vertices (each component anchored, optimized fine, with a warning)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from posegraph import SolverOptions, build_problem, optimize, read_g2o
from posegraph.graph import PoseGraph, connected_components

REPO = Path(__file__).resolve().parents[1]


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return read_g2o(path)


def test_sizes_kinds_and_names(write_file, se2_text, se3_text):
    g = _read(write_file("a.g2o", se2_text + "EDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\n"))
    assert (g.kind, g.dof, g.element_shape, g.num_poses, g.num_edges) == ("SE2", 3, (4,), 3, 4)
    assert g.batch_size == 1 and g.dtype == torch.float64 and g.device.type == "cpu"
    assert g.edge_names() == ["EDGE_SE2 0 1", "EDGE_SE2 1 2", "EDGE_SE2 2 0", "EDGE_SE2 0 1 #2"]
    assert g.where_edge(3) == f"{g.source}:7"
    h = _read(write_file("b.g2o", se3_text))
    assert (h.kind, h.dof, h.element_shape) == ("SE3", 6, (3, 4))
    assert h.element_cls.__name__ == "SE3" and g.element_cls.__name__ == "SE2"
    batched = h.with_poses(h.poses.expand(4, -1, -1, -1))
    assert batched.batch_size == 4 and h.batch_size == 1


def test_where_edge_without_source_uses_the_name():
    g = PoseGraph(
        kind="SE2",
        ids=torch.tensor([3, 8]),
        poses=None,
        edges=torch.tensor([[1, 0]]),
        measurements=torch.tensor([[0.0, 0, 1, 0]], dtype=torch.float64),
        information=torch.eye(3, dtype=torch.float64)[None],
        fixed=torch.zeros(2, dtype=torch.bool),
    )
    assert g.where_edge(0) == "EDGE_SE2 8 3"


def test_to_keeps_index_dtypes(write_file, se3_text):
    g = _read(write_file("a.g2o", se3_text)).to(dtype=torch.float32)
    assert g.poses.dtype == g.measurements.dtype == g.information.dtype == torch.float32
    assert g.ids.dtype == g.edges.dtype == torch.long and g.fixed.dtype == torch.bool


def test_connected_components():
    labels = connected_components(7, np.array([[4, 5], [0, 2], [2, 1], [6, 5]]))
    assert labels.tolist() == [0, 0, 0, 1, 2, 2, 2]
    assert connected_components(3, np.zeros((0, 2), dtype=np.int64)).tolist() == [0, 1, 2]


def _two_component_text(fixed_line: str = "") -> str:
    return (
        "VERTEX_SE2 7 0 0 0\nVERTEX_SE2 3 1 0 0\nVERTEX_SE2 20 5 5 0\nVERTEX_SE2 11 6 5 0\n"
        + fixed_line
        + "EDGE_SE2 7 3 1.1 0 0.05 1 0 0 1 0 1\n"
        "EDGE_SE2 20 11 0.9 0.1 0 1 0 0 1 0 1\n"
    )


def test_gauge_fixed_anchors_lowest_id_per_component(write_file):
    g = _read(write_file("d.g2o", _two_component_text()))
    assert g.components().tolist() == [0, 0, 1, 1]
    assert g.gauge_fixed().tolist() == [False, True, False, True]  # ids 3 and 11
    g = _read(write_file("f.g2o", _two_component_text("FIX 7\n")))
    assert g.gauge_fixed().tolist() == [True, False, False, True]  # FIX replaces the anchor


def test_disconnected_graph_with_vertices_is_anchored_and_optimized(write_file):
    path = write_file("d.g2o", _two_component_text())
    g = _read(path)
    with pytest.warns(UserWarning, match=r"2 connected components.*\(3, 11\)") as rec:
        problem = build_problem(g)
    assert str(path) in str(rec[0].message)
    result = optimize(problem, SolverOptions(solver="lm"))
    assert result.converged
    assert float(result.final_error) < 1e-10  # each component is a tree: zero residual at the optimum
    poses = problem.pose_tensor()[0]
    # anchors (ids 3 and 11: positions 1 and 3) kept their initial poses exactly
    assert torch.equal(poses[1], g.poses[1]) and torch.equal(poses[3], g.poses[3])
    # the free poses moved to satisfy their measurements
    assert not torch.equal(poses[0], g.poses[0]) and not torch.equal(poses[2], g.poses[2])


def test_disconnected_graph_error_equals_components_solved_alone(write_file, synthetic):
    a = synthetic(kind="SE3", n=5, loops=((0, 3), (1, 4)), seed=1, noise=0.05)
    b = synthetic(kind="SE3", n=4, loops=((0, 2),), ids=[10, 11, 12, 13], seed=2, noise=0.05)
    ta, tb = a.text(), b.text()
    both = _read(write_file("both.g2o", ta + tb))
    with pytest.warns(UserWarning, match="connected components"):
        pb = build_problem(both)
    rb = optimize(pb, SolverOptions(solver="gn"))
    singles = []
    for name, text in (("a.g2o", ta), ("b.g2o", tb)):
        p = build_problem(_read(write_file(name, text)))
        singles.append(float(optimize(p, SolverOptions(solver="gn")).final_error))
    assert float(rb.final_error) == pytest.approx(sum(singles), rel=1e-9)
    assert float(rb.final_error) > 0


def test_no_warning_for_connected_or_fully_fixed_graphs(write_file, se2_text):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_problem(_read(write_file("c.g2o", se2_text)))
        build_problem(_read(write_file("f.g2o", _two_component_text("FIX 3 20\n"))))


@pytest.mark.parametrize("bad", [None, 5, b"x.g2o", "", "a\0b.g2o"])
def test_file_paths_that_are_not_paths_are_named(tmp_path, bad):
    """None, numbers (a file descriptor to open()), bytes, empty names and NUL characters: a
    posegraph error naming the call and argument (they raised TypeError or ValueError from
    open/os.stat, and read_g2o(5) would read file descriptor 5)."""
    import posegraph as pg
    from posegraph.errors import PoseGraphError

    graph = pg.read_g2o(REPO / "data" / "grid_se2.g2o")
    verts, faces = pg.mesh.icosphere(0)
    calls = {
        "read_g2o: path": lambda: pg.read_g2o(bad),
        "output path": lambda: pg.write_g2o(graph, bad),
        "read_obj: path": lambda: pg.read_obj(bad),
        "read_tum: path": lambda: pg.io.read_tum(bad),
        "read_kitti: path": lambda: pg.io.read_kitti(bad),
    }
    for what, call in calls.items():
        with pytest.raises(PoseGraphError, match=f"^{what}: expected a file path"):
            call()
    if bad is None:
        for name, call in {"initialize": lambda: pg.initialize(bad), "graph_info": lambda: pg.graph_info(bad),
                           "build_problem": lambda: pg.build_problem(bad)}.items():
            with pytest.raises(PoseGraphError, match=f"^{name}: graph: expected a posegraph.PoseGraph, received NoneType"):
                call()
        with pytest.raises(PoseGraphError, match="^optimize: problem: expected a PoseGraphProblem"):
            pg.optimize(bad)
