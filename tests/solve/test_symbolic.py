"""Factor-cost estimate on the block graph (posegraph.solve.symbolic) against CHOLMOD's own."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import theseus as th
import torch
from sksparse.cholmod import analyze

import posegraph as pg
from posegraph.solve import symbolic
from posegraph.solve.optimize import make_optimizer
from posegraph.synthetic.graphs import sphere_se3

DATA = Path(__file__).resolve().parents[2] / "data"


def linearization(graph: pg.PoseGraph, **build):
    problem = pg.build_problem(pg.initialize(graph), **build)
    opt = make_optimizer(problem, pg.SolverOptions(linear_solver="cholmod"))
    lin = opt.linear_solver.linearization
    lin.linearize()
    return lin


def scalar_factor_cost(lin, ordering):
    """nnz(L) and Σ c_j² of CHOLMOD's simplicial factor of the scalar pattern of AᵀA (A's
    values set to 1, so no entry cancels) plus I, eliminated in ``ordering``."""
    a = lin.A_scipy()
    a.data[:] = 1.0
    h = (a.T @ a + sp.identity(a.shape[1], format="csr")).tocsc()
    h = h[ordering][:, ordering].tocsc()
    lower = analyze(h, mode="simplicial", ordering_method="natural").cholesky(h).L().tocsc()
    counts = np.diff(lower.indptr).astype(float)
    return counts.sum(), (counts**2).sum()


@pytest.mark.parametrize(
    "graph",
    [
        pg.read_g2o(DATA / "sphere_se3.g2o"),
        pg.read_g2o(DATA / "grid_se2.g2o"),
    ],
    ids=["sphere_se3", "grid_se2"],
)
def test_estimate_equals_scalar_factor_in_the_same_order(graph, monkeypatch):
    monkeypatch.setattr(symbolic, "AMD_RESTARTS", 0)  # AMD's own order, once
    lin = linearization(graph)
    sizes = symbolic.column_block_sizes(lin)
    assert sizes.sum() == lin.num_cols
    graph_b = symbolic.block_graph(lin, sizes)
    block_order = analyze(graph_b, mode="simplicial", ordering_method="amd").P()
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    scalar_order = np.concatenate([np.arange(starts[b], starts[b] + sizes[b]) for b in block_order])
    nnz, flops = scalar_factor_cost(lin, scalar_order)
    est = symbolic.estimate_factor_cost(lin)
    assert est.nonzeros == pytest.approx(nnz, rel=1e-12)
    assert est.flops == pytest.approx(flops, rel=1e-12)


def test_column_blocks_follow_variables_and_skip_fixed_poses():
    g = pg.read_g2o(DATA / "mesh_demo.g2o")  # SE3 poses (one fixed) and TRACKXYZ points
    lin = linearization(g)
    sizes = symbolic.column_block_sizes(lin)
    free = int((~g.gauge_fixed()).sum())
    assert list(np.unique(sizes)) == [3, 6]
    assert (sizes == 6).sum() == free
    assert (sizes == 3).sum() == g.landmarks.num_points


def test_mode_follows_fill():
    sparse = sphere_se3(num_rings=2, poses_per_ring=40, seed=0)[0]  # two rings: little fill
    dense = sphere_se3(num_rings=12, poses_per_ring=50, seed=0)[0]  # sphere: separators of rings
    lo = symbolic.estimate_factor_cost(linearization(sparse))
    hi = symbolic.estimate_factor_cost(linearization(dense))
    assert lo.flops_per_nonzero < symbolic.SUPERNODAL_MIN_FLOPS_PER_NONZERO <= hi.flops_per_nonzero
    assert symbolic.choose_cholmod_mode(linearization(sparse)) == "simplicial"
    assert symbolic.choose_cholmod_mode(linearization(dense)) == "supernodal"


def test_large_graphs_skip_the_estimate(monkeypatch):
    lin = linearization(sphere_se3(num_rings=2, poses_per_ring=40, seed=0)[0])
    monkeypatch.setattr(symbolic, "MAX_ESTIMATED_BLOCKS", 10)
    monkeypatch.setattr(symbolic, "block_fill_order", lambda *a, **k: pytest.fail("estimated"))
    assert symbolic.choose_cholmod_mode(lin) == "supernodal"
    assert symbolic.plan_factorization(lin, backend="cholmod") == symbolic.FactorizationPlan("supernodal", None)
    assert symbolic.plan_factorization(lin, backend="pardiso") == symbolic.FactorizationPlan("supernodal", None, "pardiso")


def test_expand_block_order_keeps_each_block_together():
    sizes = np.array([6, 3, 6])
    columns = symbolic.expand_block_order(np.array([2, 0, 1]), sizes)
    assert columns.tolist() == [9, 10, 11, 12, 13, 14, 0, 1, 2, 3, 4, 5, 6, 7, 8]


@pytest.mark.parametrize(
    "name, methods",
    [("sphere_se3.g2o", None), ("grid_se2.g2o", None), ("grid_se2.g2o", ("nesdis",))],
)
def test_block_fill_order_cost_is_exact_and_lowest(name, methods):
    """The chosen order's estimate equals the scalar factor in that order, and no candidate
    method gives fewer estimated flops."""
    lin = linearization(pg.read_g2o(DATA / name))
    order = symbolic.block_fill_order(lin, methods=methods)
    assert sorted(order.columns.tolist()) == list(range(lin.num_cols))
    nnz, flops = scalar_factor_cost(lin, order.columns)
    assert order.cost.nonzeros == pytest.approx(nnz, rel=1e-12)
    assert order.cost.flops == pytest.approx(flops, rel=1e-12)
    for method in methods or ("amd",):
        assert order.cost.flops <= symbolic.block_fill_order(lin, methods=(method,)).cost.flops


def test_restarted_amd_keeps_its_cheapest_order():
    """AMD run again from its own order can find less fill (ties broken differently): the
    cheapest order is kept, and its estimate is the scalar factor's in that order."""
    lin = linearization(pg.read_g2o(DATA / "sphere_se3.g2o"))
    sizes = symbolic.column_block_sizes(lin)
    graph = symbolic.block_graph(lin, sizes)
    once = symbolic._restarted_amd(graph, sizes, 0)
    blocks, cost = symbolic._restarted_amd(graph, sizes, 2)
    assert cost.flops < once[1].flops  # on this graph the second restart finds 1.3% fewer
    assert sorted(blocks.tolist()) == list(range(len(sizes)))
    nnz, flops = scalar_factor_cost(lin, symbolic.expand_block_order(blocks, sizes))
    assert cost.nonzeros == pytest.approx(nnz, rel=1e-12)
    assert cost.flops == pytest.approx(flops, rel=1e-12)


def test_plan_gives_the_block_order_to_both_modes():
    lin = linearization(pg.read_g2o(DATA / "grid_se2.g2o"))
    simplicial = symbolic.plan_factorization(lin, "simplicial")
    assert simplicial.mode == "simplicial" and simplicial.order is not None
    supernodal = symbolic.plan_factorization(lin, "supernodal")
    assert supernodal.mode == "supernodal"
    assert np.array_equal(supernodal.order.columns, simplicial.order.columns)
    auto = symbolic.plan_factorization(lin)  # a 2D grid fills in little: simplicial
    assert auto.mode == "simplicial" and np.array_equal(auto.order.columns, simplicial.order.columns)


def test_supernodal_keeps_cholmods_order_without_block_spans():
    """Without A's block spans (overlapping blocks) the solver cannot assemble AᵀA, and CHOLMOD
    cannot analyse AAᵀ supernodally in a given order: it keeps its own."""
    lin = linearization(pg.read_g2o(DATA / "grid_se2.g2o"))
    lin.column_spans = None
    assert symbolic.plan_factorization(lin, "supernodal") == symbolic.FactorizationPlan("supernodal", None)
    assert symbolic.plan_factorization(lin, "simplicial").order is not None


@pytest.mark.parametrize(
    "flops, nonzeros, mode",
    [(5e6, 1e4, "simplicial"), (7e6, 1e5, "supernodal"), (7e6, 2e5, "simplicial"), (1e9, 1e6, "supernodal")],
)
def test_supernodal_needs_fill_and_size(flops, nonzeros, mode):
    """smallGrid3D-like (100 flops per nonzero, 5 Mflop) stays simplicial; parking-garage-like
    (52, 21 Mflop) goes supernodal."""
    assert symbolic.mode_for(symbolic.FactorCost(nonzeros, flops)) == mode


def test_user_variables_are_one_block_each():
    x = th.Vector(tensor=torch.zeros(1, 4, dtype=torch.float64), name="x")
    obj = th.Objective(dtype=torch.float64)
    target = th.Vector(tensor=torch.ones(1, 4, dtype=torch.float64), name="t")
    obj.add(th.Difference(x, target, th.ScaleCostWeight(torch.ones(1, 1, dtype=torch.float64)), name="d"))
    from posegraph.solve.linearization import BlockSparseLinearization

    lin = BlockSparseLinearization(obj)
    assert symbolic.column_block_sizes(lin).tolist() == [4]
    cost = symbolic.estimate_factor_cost(lin)
    assert cost.nonzeros == 10 and cost.flops == 1 + 4 + 9 + 16


def test_block_graph_from_column_spans_equals_the_one_from_the_pattern():
    """The block graph from the linearization's blocks (fast) has the pattern of the one read
    off A's nonzeros, also with a user's dense cost over all poses (a span of many blocks)."""
    g = pg.initialize(pg.read_g2o(DATA / "grid_se2.g2o"))
    problem = pg.build_problem(g)
    anchor = problem.poses.copy(new_name="anchor")
    problem.objective.add(th.Difference(problem.poses, anchor, th.ScaleCostWeight(torch.tensor(1e-3, dtype=torch.float64)), name="prior"))
    from posegraph.solve.linearization import BlockSparseLinearization

    lin = BlockSparseLinearization(problem.objective)
    assert lin.column_spans is not None
    sizes = symbolic.column_block_sizes(lin)
    fast = symbolic.block_graph(lin, sizes)
    lin.column_spans = None
    slow = symbolic.block_graph(lin, sizes)
    assert fast.shape == slow.shape and ((fast != 0) != (slow != 0)).nnz == 0  # same pattern
    assert fast.nnz == len(sizes) ** 2  # the prior couples every pose with every other
