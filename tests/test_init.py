"""Initial guesses (posegraph.init): spanning-tree composition for edge-only files."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from posegraph import GraphStructureError, build_problem, initialize, read_g2o
from posegraph.init import spanning_tree, spanning_tree_edges

from conftest import g2o_values, random_poses, theseus_to_homogeneous, upper


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return read_g2o(path)


CASES = [
    # kind, ids (per chain position), reversed chain edges
    ("SE3", None, ()),
    ("SE3", [30, 4, 17, 8, 100, 55, 2, 61], (1, 4)),  # lowest id (2) in the middle of the chain
    ("SE2", None, ()),
    ("SE2", [9, 3, 27, 12, 5, 44, 1, 70], (0, 2, 6)),
]


@pytest.mark.parametrize("kind,ids,reverse", CASES)
def test_spanning_tree_reproduces_noise_free_poses(write_file, synthetic, kind, ids, reverse):
    s = synthetic(kind=kind, n=8, ids=ids, reverse=reverse, seed=11)
    g = _read(write_file("e.g2o", s.text(with_vertices=False)))
    assert g.poses is None
    g0 = initialize(g)  # auto → spanning tree for edge-only files
    assert g0.poses is not None and g0.poses.dtype == torch.float64
    # g.ids are sorted; map each stored vertex back to its position in the synthetic graph
    position = {vid: k for k, vid in enumerate(s.ids)}
    order = [position[v] for v in g0.ids.tolist()]
    expected = s.truth_relative_to_lowest()[order]
    got = theseus_to_homogeneous(kind, g0.poses)
    np.testing.assert_allclose(got, expected, atol=1e-9, rtol=0)
    # the lowest id is exactly the identity (the gauge)
    root = int(torch.argmin(g0.ids))
    np.testing.assert_array_equal(got[root], np.eye(got.shape[-1]))
    # noise-free: the initial guess is already at zero error
    problem = build_problem(g0)
    assert float(problem.error().max()) < 1e-12


def test_spanning_tree_follows_the_odometry_chain(write_file, synthetic):
    # loops listed first in the file: the tree still takes the consecutive-id edges
    s = synthetic(kind="SE2", n=6, loops=((0, 3), (1, 5)), seed=2)
    text = s.text(with_vertices=False).splitlines()
    loops, chain = text[5:], text[:5]
    g = _read(write_file("e.g2o", "\n".join(loops + chain) + "\n"))
    tree = spanning_tree_edges(g)
    assert len(tree) == g.num_poses - 1
    pairs = {tuple(sorted(g.ids[g.edges[e]].tolist())) for e in tree}
    assert pairs == {(k, k + 1) for k in range(5)}


def test_spanning_tree_without_chain_uses_any_edges(write_file):
    # a star around vertex 0 (id gaps 1..5) and a redundant edge: still a tree of N-1 edges
    rng = np.random.default_rng(0)
    truth = random_poses("SE3", 6, rng)
    lines = []
    for a, b in [(0, 5), (3, 0), (0, 2), (4, 0), (0, 1), (2, 5)]:
        z = np.linalg.inv(truth[a]) @ truth[b]
        vals = g2o_values("SE3", z) + upper(np.eye(6))
        lines.append(f"EDGE_SE3:QUAT {a} {b} " + " ".join(repr(float(v)) for v in vals))
    g = _read(write_file("star.g2o", "\n".join(lines) + "\n"))
    assert len(spanning_tree_edges(g)) == 5
    got = theseus_to_homogeneous("SE3", spanning_tree(g))
    np.testing.assert_allclose(got, np.linalg.inv(truth[0])[None] @ truth, atol=1e-9)


def test_disconnected_edge_only_graph_is_an_error(write_file):
    text = "EDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\nEDGE_SE2 5 6 1 0 0 1 0 0 1 0 1\n"
    path = write_file("d.g2o", text)
    g = _read(path)
    with pytest.raises(GraphStructureError) as exc:
        initialize(g)
    msg = exc.value.message
    assert "disconnected" in msg and "2 components" in msg and "vertex 0" in msg and "vertex 5" in msg
    assert exc.value.path == str(path)
    assert str(exc.value).startswith(f"{path}: ")


def test_initialize_methods(write_file, synthetic):
    s = synthetic(kind="SE2", n=5, loops=((0, 4),), seed=5, noise=0.1)
    rng = np.random.default_rng(0)
    init = s.truth.copy()
    init[:, :2, 2] += rng.normal(size=(5, 2))
    g = _read(write_file("v.g2o", s.text(vertices=init)))
    assert initialize(g) is g and initialize(g, "file") is g  # file poses kept as they are
    st = initialize(g, "spanning-tree")
    assert not torch.equal(st.poses, g.poses)
    torch.testing.assert_close(st.poses[0], torch.tensor([0.0, 0, 1, 0], dtype=torch.float64))
    edge_only = _read(write_file("e.g2o", s.text(with_vertices=False)))
    with pytest.raises(GraphStructureError) as exc:
        initialize(edge_only, "file")
    assert "no VERTEX lines" in exc.value.message
    with pytest.raises(ValueError, match="unknown initialization"):
        initialize(g, "random")


def test_initialize_keeps_dtype(write_file, synthetic):
    s = synthetic(kind="SE3", n=4, loops=(), seed=7)
    g = _read(write_file("e.g2o", s.text(with_vertices=False))).to(dtype=torch.float32)
    g0 = initialize(g)
    assert g0.poses.dtype == torch.float32 and g0.poses.shape == (4, 3, 4)
