"""Tests for posegraph.synthetic and the generated files under data/."""

from __future__ import annotations

import importlib.util
import math
import os

import numpy as np
import pytest
import torch

from posegraph import SolverOptions, build_problem, initialize, optimize, read_g2o
from posegraph.graph import PoseGraph
from posegraph.synthetic.graphs import SyntheticGraph, grid_se2, large_se2, sphere_se3
from posegraph.synthetic.metrics import align_to_first, rotation_rmse, translation_rmse

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "data")
DATA_FILES = [
    "sphere_se3.g2o",
    "sphere_se3.gt.g2o",
    "grid_se2.g2o",
    "grid_se2.gt.g2o",
    "grid_se2_edges_only.g2o",
    "mesh_demo.g2o",
    "mesh_demo.gt.g2o",
    "icosphere.obj",
]

# Small instances keep the suite fast.
SMALL = {
    "sphere": lambda **kw: sphere_se3(num_rings=6, poses_per_ring=20, **kw),
    "grid": lambda **kw: grid_se2(width=3, height=3, num_poses=250, **kw),
}


def _graph_fields(g: PoseGraph):
    return [g.ids, g.poses, g.edges, g.measurements, g.information, g.fixed]


def _assert_graphs_equal(a: PoseGraph, b: PoseGraph) -> None:
    assert a.kind == b.kind
    for x, y in zip(_graph_fields(a), _graph_fields(b)):
        if x is None or y is None:
            assert x is None and y is None
        else:
            assert x.dtype == y.dtype and torch.equal(x, y)


def _whitened_residuals(graph: PoseGraph) -> torch.Tensor:
    """``L e`` per edge (``Ω = LᵀL``), ``(E, d)``, at the graph's poses."""
    problem = build_problem(graph)
    err = problem.between.block_error()[0]
    chol = torch.linalg.cholesky(graph.information)  # Ω = C Cᵀ, so eᵀΩe = |Cᵀe|²
    return (chol.transpose(-1, -2) @ err.unsqueeze(-1)).squeeze(-1)


# -- determinism and layout -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SMALL))
def test_same_seed_gives_identical_graphs(name):
    a, b = SMALL[name](seed=7), SMALL[name](seed=7)
    assert isinstance(a, SyntheticGraph)
    _assert_graphs_equal(a.graph, b.graph)
    _assert_graphs_equal(a.truth, b.truth)
    c = SMALL[name](seed=8)
    assert not torch.equal(a.graph.measurements, c.graph.measurements)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_layout(name):
    noisy, truth = SMALL[name](seed=0)
    kind, shape = ("SE3", (3, 4)) if name == "sphere" else ("SE2", (4,))
    n, e = noisy.num_poses, noisy.num_edges
    for g in (noisy, truth):
        assert g.kind == kind and g.dtype == torch.float64
        assert g.poses.shape == (n, *shape) and g.measurements.shape == (e, *shape)
        assert g.information.shape == (e, g.dof, g.dof)
        assert torch.equal(g.ids, torch.arange(n))
        assert g.fixed.tolist() == [True] + [False] * (n - 1)
        assert g.components().max() == 0  # connected
    # odometry chain first, then loop closures; no duplicate or self edges
    assert torch.equal(noisy.edges[: n - 1], torch.stack([torch.arange(n - 1), torch.arange(1, n)], 1))
    pairs = {tuple(p) for p in noisy.edges.tolist()}
    assert len(pairs) == e and all(i != j for i, j in pairs)
    assert torch.equal(noisy.edges, truth.edges) and torch.equal(noisy.information, truth.information)
    # initial guess: pose 0 at the truth, the rest drifted
    assert torch.allclose(noisy.poses[0], truth.poses[0], atol=1e-12)
    assert translation_rmse(noisy, truth) > 0.05


def test_information_is_inverse_variance_in_tangent_order():
    noisy, _ = sphere_se3(num_rings=2, poses_per_ring=10, translation_sigma=0.1, rotation_sigma=(0.01, 0.02, 0.05))
    expected = torch.diag(torch.tensor([100.0, 100.0, 100.0, 1e4, 2500.0, 400.0], dtype=torch.float64))
    assert torch.allclose(noisy.information, expected.expand_as(noisy.information), rtol=1e-12)
    g, _ = grid_se2(width=2, height=2, num_poses=50, translation_sigma=0.05, rotation_sigma=0.1)
    assert torch.equal(g.information[0], torch.diag(torch.tensor([400.0, 400.0, 100.0], dtype=torch.float64)))


# -- noise-free generation -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SMALL))
def test_sigma_zero_matches_truth(name):
    noisy, truth = SMALL[name](seed=3, translation_sigma=0.0, rotation_sigma=0.0)
    assert torch.equal(noisy.measurements, truth.measurements)
    assert torch.allclose(noisy.poses, truth.poses, atol=1e-9)
    for g in (truth, noisy.with_poses(truth.poses), noisy):
        assert float(build_problem(g).error()) < 1e-15
    # same topology as the noisy graph of the same seed
    assert torch.equal(noisy.edges, SMALL[name](seed=3).graph.edges)


def test_truth_measurements_are_relative_poses():
    _, truth = sphere_se3(num_rings=3, poses_per_ring=12)
    h = torch.zeros(truth.num_poses, 4, 4, dtype=torch.float64)
    h[:, :3], h[:, 3, 3] = truth.poses, 1.0
    i, j = truth.edges[:, 0], truth.edges[:, 1]
    rel = torch.linalg.solve(h[i], h[j])[:, :3]
    assert torch.allclose(rel, truth.measurements, atol=1e-12)
    # on the sphere, x axis outwards
    assert torch.allclose(truth.poses[:, :, 3].norm(dim=1), torch.full((truth.num_poses,), 100.0, dtype=torch.float64))
    assert torch.allclose(truth.poses[:, :, 3], 100.0 * truth.poses[:, :, 0], atol=1e-12)


def test_noise_is_right_perturbation_with_matching_information():
    # At the truth, e = Log(Z⁻¹ Z_true) = −n: whitened residuals are standard normal per axis.
    # (Left-multiplied noise would leak rotation noise × 12 m lever arms into translation.)
    noisy, truth = sphere_se3(num_rings=6, poses_per_ring=50, seed=5)
    w = _whitened_residuals(noisy.with_poses(truth.poses))
    var = (w * w).mean(dim=0)
    assert torch.all((var - 1).abs() < 0.15), var
    assert float(w.mean(dim=0).abs().max()) < 0.15
    noisy, truth = grid_se2(seed=5, translation_sigma=0.2, rotation_sigma=0.05)
    w = _whitened_residuals(noisy.with_poses(truth.poses))
    var = (w * w).mean(dim=0)
    assert torch.all((var - 1).abs() < 0.15), var


# -- optimization brings the graph back to the truth -------------------------------------------------


@pytest.mark.parametrize("name", ["sphere", "grid"])
def test_optimizing_recovers_truth(name):
    noisy, truth = (
        sphere_se3(num_rings=8, poses_per_ring=30, seed=11) if name == "sphere" else grid_se2(seed=11)
    )
    problem = build_problem(noisy)
    result = optimize(problem, SolverOptions(solver="lm", max_iterations=50))
    assert result.converged, result.status
    initial, final = float(result.initial_error), float(result.final_error)
    assert final < 1e-2 * initial
    # at the global optimum, 2·error ≈ χ² with dof·(E − N + 1) degrees of freedom
    redundancy = noisy.dof * (noisy.num_edges - noisy.num_poses + 1)
    assert abs(2 * final - redundancy) < 6 * math.sqrt(2 * redundancy)
    estimate = problem.to_graph()
    assert torch.equal(estimate.poses[0], noisy.poses[0])  # FIX 0 held
    t0, t1 = translation_rmse(noisy, truth), translation_rmse(estimate, truth)
    r0, r1 = rotation_rmse(noisy, truth), rotation_rmse(estimate, truth)
    assert t1 < 0.2 * t0 and r1 < 0.2 * r0, (t0, t1, r0, r1)


# -- loop closures ---------------------------------------------------------------------------------------


def test_sphere_loop_closure_counts():
    rings, per = 5, 16
    n = rings * per
    for offsets, expected in [((0,), (rings - 1) * per), ((-1, 0, 1), 3 * (rings - 1) * per - 1)]:
        g, _ = sphere_se3(num_rings=rings, poses_per_ring=per, closure_offsets=offsets)
        assert g.extras["num_loop_closures"] == expected
        assert g.num_edges == n - 1 + expected
        loops = g.edges[g.extras["loop_closure"]]
        gaps = (loops[:, 1] - loops[:, 0]).unique().tolist()
        assert gaps == sorted(per + o for o in offsets)
    g, _ = sphere_se3(num_rings=rings, poses_per_ring=per, loop_closures=False)
    assert g.num_edges == n - 1 and g.extras["num_loop_closures"] == 0


def test_grid_loop_closures_are_near_revisits():
    noisy, truth = grid_se2(seed=4, min_gap=10, closure_radius=1.0)
    mask = noisy.extras["loop_closure"]
    n_loops = int(mask.sum())
    assert n_loops == noisy.extras["num_loop_closures"] == noisy.num_edges - (noisy.num_poses - 1)
    assert 0.3 * noisy.num_poses < n_loops < noisy.num_poses  # revisits are frequent on 4×4 blocks
    loops = noisy.edges[mask]
    assert torch.all(loops[:, 1] - loops[:, 0] > 10)
    xy = truth.poses[:, :2]
    dist = (xy[loops[:, 0]] - xy[loops[:, 1]]).norm(dim=1)
    assert float(dist.max()) <= 1.0 + 1e-12
    assert len(set(loops[:, 1].tolist())) == n_loops  # max_closures_per_pose=1
    # the walk stays on streets (multiples of block_length on x or y) and steps one meter
    cells = noisy.extras["cells"]
    assert torch.all((cells[:, 0] % 5 == 0) | (cells[:, 1] % 5 == 0))
    assert torch.all((cells[1:] - cells[:-1]).abs().sum(dim=1) == 1)
    assert int(cells.min()) >= 0 and int(cells.max()) <= 20
    # true odometry: one step forward, turn of 0 or ±90°
    odo = truth.measurements[: noisy.num_poses - 1]
    assert torch.allclose(odo[:, 0], torch.ones_like(odo[:, 0]))
    assert torch.allclose(odo[:, 1], torch.zeros_like(odo[:, 1]))
    turn = odo[:, 2:]  # (cos, sin) of the turn: exactly (1, 0) or (0, ±1), never a U-turn
    assert set(map(tuple, turn.tolist())) <= {(1.0, 0.0), (0.0, 1.0), (0.0, -1.0)}
    assert torch.equal(truth.poses[0], torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64))
    none, _ = grid_se2(seed=4, closure_probability=0.0)
    assert none.extras["num_loop_closures"] == 0


def test_large_se2_is_city10000_sized():
    g, truth = large_se2(num_poses=10000, seed=0)
    assert g.kind == "SE2" and g.num_poses == 10000
    assert 18000 <= g.num_edges <= 22000
    assert g.extras["generator"] == "large_se2"
    assert g.poses.shape == truth.poses.shape == (10000, 4)


# -- edge-only graphs and helpers -----------------------------------------------------------------------


def test_edge_only_graph_initializes_to_composed_odometry():
    with_poses, _ = grid_se2(seed=9)
    edge_only, truth = grid_se2(seed=9, initial=None)
    assert edge_only.poses is None and truth.poses is not None
    assert torch.equal(edge_only.measurements, with_poses.measurements)
    init = initialize(edge_only)  # spanning tree along the odometry chain
    assert torch.allclose(init.poses, with_poses.poses, atol=1e-9)
    sphere, _ = sphere_se3(num_rings=2, poses_per_ring=10, initial=None)
    assert sphere.poses is None
    t, tt = sphere_se3(num_rings=2, poses_per_ring=10, initial="truth")
    assert torch.equal(t.poses, tt.poses)


def test_alignment_helpers():
    _, truth = sphere_se3(num_rings=2, poses_per_ring=10)
    assert translation_rmse(truth, truth) == 0.0 and rotation_rmse(truth, truth) < 1e-7
    import theseus as th

    move = th.SE3.exp_map(torch.tensor([[1.0, -2.0, 3.0, 0.3, -0.2, 0.1]], dtype=torch.float64))
    moved = move.compose(th.SE3(tensor=truth.poses)).tensor
    assert translation_rmse(moved, truth, align=False) > 1.0
    assert translation_rmse(moved, truth) < 1e-9 and rotation_rmse(moved, truth) < 1e-7
    assert torch.allclose(align_to_first(moved, truth), truth.poses, atol=1e-9)
    _, grid = grid_se2(width=2, height=2, num_poses=40)
    assert translation_rmse(grid, grid) == 0.0


def test_invalid_arguments():
    with pytest.raises(ValueError, match="translation_sigma"):
        sphere_se3(translation_sigma=-1.0)
    with pytest.raises(ValueError, match="rotation_sigma"):
        grid_se2(rotation_sigma=(0.1, 0.1))
    with pytest.raises(ValueError, match="initial"):
        grid_se2(initial="spanning-tree")
    with pytest.raises(ValueError):
        grid_se2(width=0)


# -- data/ is what data/generate.py produces ---------------------------------------------------------------


def _load_generate():
    spec = importlib.util.spec_from_file_location("posegraph_data_generate", os.path.join(DATA, "generate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _same_g2o_text(a: str, b: str) -> bool:
    """Equal, or equal up to last-digit float noise (other CPUs' libm/BLAS): same lines, same
    tags and ids, numbers within 1e-9 relative."""
    if a == b:
        return True
    la, lb = a.splitlines(), b.splitlines()
    if len(la) != len(lb):
        return False
    for x, y in zip(la, lb):
        tx, ty = x.split(), y.split()
        if len(tx) != len(ty):
            return False
        for u, v in zip(tx, ty):
            if u == v:
                continue
            try:
                fu, fv = float(u), float(v)
            except ValueError:
                return False
            if "." not in u or not math.isclose(fu, fv, rel_tol=1e-9, abs_tol=1e-9):
                return False
    return True


def test_data_folder_matches_generate_script(tmp_path, capsys):
    gen = _load_generate()
    assert gen.main(["--out", str(tmp_path)]) == 0
    written = sorted(os.listdir(tmp_path))
    assert written == sorted(DATA_FILES)
    for name in DATA_FILES:
        committed = os.path.join(DATA, name)
        assert os.path.exists(committed), f"{committed} missing: run data/generate.py --out data/"
        with open(committed, encoding="utf-8") as fh:
            old = fh.read()
        with open(tmp_path / name, encoding="utf-8") as fh:
            new = fh.read()
        assert _same_g2o_text(old, new), f"data/{name} differs from data/generate.py's output: rerun it"
    total = sum(os.path.getsize(os.path.join(DATA, f)) for f in os.listdir(DATA))
    assert total < 2_000_000


def test_data_files_read_and_match_generators():
    sphere = read_g2o(os.path.join(DATA, "sphere_se3.g2o"))
    gt = read_g2o(os.path.join(DATA, "sphere_se3.gt.g2o"))
    assert (sphere.kind, sphere.num_poses, sphere.num_edges) == ("SE3", 500, 949)
    assert torch.equal(sphere.edges, gt.edges)
    assert float(build_problem(gt).error()) < 1e-12
    edges_only = read_g2o(os.path.join(DATA, "grid_se2_edges_only.g2o"))
    grid = read_g2o(os.path.join(DATA, "grid_se2.g2o"))
    assert edges_only.poses is None and torch.equal(edges_only.edges, grid.edges)
    assert np.allclose(edges_only.measurements.numpy(), grid.measurements.numpy(), atol=0)
    assert grid.fixed[0] and edges_only.fixed[0]
