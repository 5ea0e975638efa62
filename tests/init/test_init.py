"""Initial guesses (posegraph.init, posegraph.init.chordal): spanning-tree composition for edge-only
files and chordal initialization (exact without noise, robust to ill-conditioning, reaching the
reference optima)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from posegraph import GraphStructureError, PoseGraphError, build_problem, initialize, optimize, read_g2o
from posegraph.init.chordal import chordal_initialization as chordal
from posegraph.init.spanning_tree import spanning_tree, spanning_tree_edges
from posegraph.synthetic.graphs import sphere_se3

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
    assert initialize(g, "file") is g  # file poses kept as they are
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


# -- chordal initialization -------------------------------------------------------------------------


@pytest.mark.parametrize("kind,ids,reverse", CASES)
def test_chordal_is_exact_on_noise_free_graphs(write_file, synthetic, kind, ids, reverse):
    s = synthetic(kind=kind, n=8, ids=ids, reverse=reverse, seed=11)
    position = {vid: k for k, vid in enumerate(s.ids)}
    # edge-only: the lowest id at the identity
    g = _read(write_file("e.g2o", s.text(with_vertices=False)))
    g0 = initialize(g, "chordal")
    assert g0.poses.dtype == torch.float64 and g0.poses.shape == (8, *g.element_shape)
    got = theseus_to_homogeneous(kind, g0.poses)
    expected = s.truth_relative_to_lowest()[[position[v] for v in g0.ids.tolist()]]
    np.testing.assert_allclose(got, expected, atol=1e-8, rtol=0)
    assert float(build_problem(g0).error()) < 1e-12
    # with vertices: the gauge (lowest id) keeps its file pose, so the truth comes back
    # (the other vertices' file poses are ignored)
    rng = np.random.default_rng(1)
    wrong = random_poses(kind, 8, rng)
    lowest = int(np.argmin(s.ids))
    wrong[lowest] = s.truth[lowest]
    gv = _read(write_file("v.g2o", s.text(vertices=wrong)))
    got = theseus_to_homogeneous(kind, initialize(gv, "chordal").poses)
    np.testing.assert_allclose(got, s.truth[[position[v] for v in gv.ids.tolist()]], atol=1e-8)


@pytest.mark.parametrize("kind", ["SE2", "SE3"])
def test_chordal_keeps_fixed_vertices_where_the_file_puts_them(write_file, synthetic, kind):
    s = synthetic(kind=kind, n=8, seed=4)
    g = _read(write_file("f.g2o", s.text(fixed=[3, 6])))
    out = initialize(g, "chordal")
    fixed = g.fixed.nonzero().ravel()
    assert fixed.tolist() == [3, 6]
    torch.testing.assert_close(out.poses[fixed], g.poses[fixed], rtol=0, atol=0)
    np.testing.assert_allclose(theseus_to_homogeneous(kind, out.poses), s.truth, atol=1e-8)
    # every vertex fixed: nothing to solve for
    g = _read(write_file("all.g2o", s.text(fixed=range(8))))
    torch.testing.assert_close(initialize(g, "chordal").poses, g.poses, rtol=0, atol=0)


def test_chordal_disconnected_graph_is_a_structure_error(write_file):
    text = "EDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\nEDGE_SE2 5 6 1 0 0 1 0 0 1 0 1\n"
    g = _read(write_file("d.g2o", text))
    with pytest.raises(GraphStructureError, match="disconnected"):
        initialize(g, "chordal")


def test_chordal_ill_conditioned_weights_do_not_throw(write_file, synthetic):
    # information spanning 16 orders of magnitude, and loop closures without any rotation
    # information (a PSD, singular Ω): still factors, and still near the truth
    s = synthetic(kind="SE3", n=12, loops=((0, 6), (3, 9), (2, 11)), seed=8, noise=1e-3)
    scales = np.logspace(-8, 8, len(s.edges))
    s.information = s.information * scales[:, None, None]
    s.information[-3:, 3:, :] = 0.0
    s.information[-3:, :, 3:] = 0.0
    g = _read(write_file("ill.g2o", s.text(with_vertices=False)))
    poses = chordal(g)
    assert torch.isfinite(poses).all()
    got = theseus_to_homogeneous("SE3", poses)
    np.testing.assert_allclose(got, s.truth_relative_to_lowest(), atol=0.05)
    # an edge whose whole information is zero leaves its vertex undetermined by it
    s.information[5] = 0.0
    g = _read(write_file("zero.g2o", s.text(with_vertices=False)))
    assert torch.isfinite(chordal(g)).all()


def test_chordal_options_and_batches(synthetic):
    noisy, _ = sphere_se3(num_rings=3, poses_per_ring=6, seed=0)
    other, _ = sphere_se3(num_rings=3, poses_per_ring=6, seed=1)
    iso = chordal(noisy, weighting="isotropic")
    assert iso.shape == (18, 3, 4) and not torch.equal(iso, chordal(noisy))
    with pytest.raises(ValueError, match="weighting"):
        chordal(noisy, weighting="frobenius")
    with pytest.raises(ValueError, match="regularization"):
        chordal(noisy, regularization=-1.0)
    batched = noisy.with_poses(torch.stack([noisy.poses, other.poses]))
    batched.measurements = torch.stack([noisy.measurements, other.measurements])
    both = chordal(batched)
    assert both.shape == (2, 18, 3, 4)
    torch.testing.assert_close(both[0], chordal(noisy))
    torch.testing.assert_close(both[1], chordal(other))


@pytest.mark.parametrize("sigma,seed", [(0.1, 1), (0.2, 0)])
def test_chordal_then_lm_beats_file_vertices_under_large_rotation_noise(sigma, seed):
    noisy, _ = sphere_se3(num_rings=8, poses_per_ring=25, rotation_sigma=sigma, seed=seed)
    finals = {}
    for method in ("file", "chordal"):
        problem = build_problem(initialize(noisy, method))
        with torch.no_grad():
            finals[method] = float(optimize(problem).final_error)
    assert finals["chordal"] <= finals["file"] * (1 + 1e-9)
    # and chordal reaches the noise floor: below E·dof/2, the expected error at the truth
    assert finals["chordal"] < noisy.num_edges * 6 / 2


#: GTSAM 4.3.0 LM final errors (datasets README)
CHORDAL_REFERENCE = {"sphere2500": 675.7009629, "parking-garage": 0.6341923996}


@pytest.mark.parametrize("name", list(CHORDAL_REFERENCE))
def test_chordal_then_lm_reaches_the_reference_on_datasets(datasets_dir, name):
    path = datasets_dir / f"{name}.g2o"
    if not path.exists():
        pytest.skip(f"{path} not found")
    graph = initialize(read_g2o(path), "chordal")
    problem = build_problem(graph)
    with torch.no_grad():
        result = optimize(problem)
    assert result.converged
    assert float(result.initial_error) < float(build_problem(read_g2o(path)).error())
    assert float(result.final_error) == pytest.approx(CHORDAL_REFERENCE[name], rel=1e-6)


def test_auto_starts_from_the_lower_cost_of_file_and_chordal(write_file, synthetic):
    """``auto`` with vertices: the file's poses when they cost less than the chordal guess,
    else the chordal guess; the choice and both costs are recorded (per problem)."""
    from posegraph.init.dispatch import pose_graph_error
    from posegraph.synthetic.hard_cases import perturb_vertices

    import posegraph as pg

    s = synthetic(kind="SE3", n=12, loops=((0, 6), (11, 3), (2, 9)), seed=1, noise=0.05)
    problem = pg.build_problem(_read(write_file("good.g2o", s.text(vertices=s.truth))))
    pg.optimize(problem)
    good = problem.to_graph()  # at its optimum: no start costs less
    bad = perturb_vertices(good, 2.0, 1.5, seed=0)
    chordal = initialize(good, "chordal")
    # poses that fit their measurements (χ² ≤ d·E) are kept without computing the guess
    out = initialize(good)
    assert out.extras["init"].chosen == ["file"] and "fit their measurements" in out.extras["init"].note
    assert out.extras["init"].costs == pytest.approx({"file": float(pose_graph_error(good))}, rel=1e-12)
    assert 2 * float(pose_graph_error(good)) <= 6 * good.num_edges
    assert out.poses is good.poses
    # a start that does not: the lower cost of the two wins
    out = initialize(bad)
    file_cost, chordal_cost = float(pose_graph_error(bad)), float(pose_graph_error(chordal))
    assert out.extras["init"].chosen == ["chordal"] and chordal_cost < file_cost
    assert out.extras["init"].costs == pytest.approx({"file": file_cost, "chordal": chordal_cost}, rel=1e-12)
    torch.testing.assert_close(out.poses, chordal.poses, rtol=0, atol=1e-12)
    # the cost is the caller's to choose: here one under which the file's poses cost less
    out = initialize(bad, cost=lambda g: 1e12 - pose_graph_error(g))
    assert out.extras["init"].chosen == ["file"] and set(out.extras["init"].costs) == {"file", "chordal"}
    torch.testing.assert_close(out.poses, bad.poses, rtol=0, atol=0)


def test_pose_graph_error_is_the_solver_error(write_file, synthetic):
    from posegraph.model.build import build_problem
    from posegraph.init.dispatch import pose_graph_error

    for kind in ("SE2", "SE3"):
        s = synthetic(kind=kind, n=8, loops=((0, 5),), seed=3, noise=0.2)
        g = _read(write_file(f"{kind}.g2o", s.text()))
        assert float(pose_graph_error(g)) == pytest.approx(float(build_problem(g).error()), rel=1e-12)


# -- information and positions near the float64 limit -----------------------------------------------


def test_chordal_unchanged_by_a_common_scale_of_the_information(synthetic):
    """The solution does not depend on a common factor of all Ω: a power of 4 gives the very
    same bits (unit_scale), and values near 1e308 — whose traces and normal matrices used to
    overflow into 'SVD did not converge' — give the same poses."""
    import dataclasses

    s = synthetic(kind="SE3", n=10, loops=((0, 5), (9, 3), (2, 7)), seed=3, noise=0.05)
    g = read_g2o_text(s.text())
    ref = chordal(g)
    huge = dataclasses.replace(g, information=g.information * 4.0**400)
    assert torch.equal(chordal(huge), ref)
    top = float(g.information.abs().max())
    near_limit = dataclasses.replace(g, information=g.information * (1.7e308 / top))
    torch.testing.assert_close(chordal(near_limit), ref, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", ["SE2", "SE3"])
def test_chordal_one_edge_near_the_float64_limit(write_file, synthetic, kind):
    """Noise-free edges with Ω entries of 1e306 and one of 1.7e308 (a graph made in Python; g2o
    files refuse entries beyond 1e150): chordal is still exact (the trace of Ω_RR overflowed:
    an internal LinAlgError). Far larger spreads (one edge 1e308, the others 1) stay finite but
    lose the small edges to rounding."""
    from dataclasses import replace

    s = synthetic(kind=kind, n=8, loops=((0, 4), (7, 2)), seed=5)
    base = _read(write_file("base.g2o", s.text(with_vertices=False)))  # (files refuse entries > 1e150)
    unit = base.information / base.information.abs().amax(dim=(1, 2), keepdim=True)
    huge = unit * 1e306
    huge[2] *= 170
    poses = chordal(replace(base, information=huge))
    np.testing.assert_allclose(theseus_to_homogeneous(kind, poses), s.truth_relative_to_lowest(), atol=1e-8)
    spread = unit.clone()
    spread[2] *= 1e308
    assert torch.isfinite(chordal(replace(base, information=spread))).all()


def test_chordal_overflowing_poses_name_the_file(write_file):
    path = write_file("far.g2o", "VERTEX_SE2 0 1.7e308 0 0\nVERTEX_SE2 1 0 0 0\nEDGE_SE2 0 1 1.7e308 0 0 1 0 0 1 0 1\n")
    with pytest.raises(PoseGraphError) as exc:
        initialize(_read(path), "chordal")
    assert str(exc.value).startswith(f"{path}: chordal initialization: the pose of vertex 1 is not finite")


def read_g2o_text(text: str):
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "g.g2o")
        with open(path, "w") as fh:
            fh.write(text)
        return _read(path)
