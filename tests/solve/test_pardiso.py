"""MKL PARDISO: the binding (analysis, factors side by side, solves, errors), the backend
choice, and the sparse Cholesky solver on PARDISO against CHOLMOD and dense algebra."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import theseus as th
import torch

import posegraph as pg
from posegraph.solve import mkl, pardiso, symbolic
from posegraph.solve.linearization import BlockSparseLinearization
from posegraph.solve.optimize import make_optimizer
from posegraph.solve.sparse_cholesky import SparseCholeskySolver
from posegraph.synthetic.graphs import large_se2, sphere_se3
from conftest import check_normal_solve_against_dense, drop_column_spans
from test_solve import random_graph

pytestmark = pytest.mark.skipif(not mkl.pardiso_available(), reason="MKL PARDISO not installed")

DATA = Path(__file__).resolve().parents[2] / "data"


def spd_lower(n: int, seed: int) -> sp.csc_matrix:
    """A random sparse symmetric positive definite matrix's lower triangle (CSC, sorted)."""
    m = sp.random(n, n, density=0.03, random_state=seed)
    lower = sp.tril(m @ m.T + 2 * sp.eye(n)).tocsc()
    lower.sort_indices()
    return lower


def full(lower: sp.csc_matrix) -> np.ndarray:
    dense = lower.toarray()
    return dense + np.tril(dense, -1).T


# -- the binding -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keep_order", [True, False])
def test_factors_solve_like_dense_algebra(keep_order):
    lower = spd_lower(120, seed=1)
    analysis = pardiso.PardisoAnalysis(120, lower.indptr, lower.indices, keep_order=keep_order)
    factor = analysis.factorize(lower.data)
    rhs = np.random.default_rng(0).standard_normal((120, 3))
    expected = np.linalg.solve(full(lower), rhs)
    np.testing.assert_allclose(factor(rhs[:, 0]), expected[:, 0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(factor(rhs), expected, rtol=1e-10, atol=1e-12)


def test_factors_live_side_by_side_and_slots_are_recycled():
    lower = spd_lower(80, seed=2)
    analysis = pardiso.PardisoAnalysis(80, lower.indptr, lower.indices)
    scales = np.arange(1, pardiso.SLOTS_PER_HANDLE + 3)
    factors = [analysis.factorize(lower.data * s) for s in scales]
    assert analysis.handles == 2  # more live factors than one handle's slots
    rhs = np.ones(80)
    x = np.linalg.solve(full(lower), rhs)
    for s, factor in zip(scales, factors):  # each factor still solves its own matrix
        np.testing.assert_allclose(factor(rhs), x / s, rtol=1e-10)
    del factors
    gc.collect()
    for s in scales:  # freed slots are reused: no new handle
        analysis.factorize(lower.data * s)(rhs)
    assert analysis.handles == 2


_THREADS_SCRIPT = """
import numpy as np, scipy.sparse as sp, torch
from posegraph.solve import pardiso
m = sp.random(1000, 1000, density=0.01, random_state=1)
lower = sp.tril(m @ m.T + 2 * sp.eye(1000)).tocsc()
lower.sort_indices()
torch.set_num_threads(2)
analysis = pardiso.PardisoAnalysis(1000, lower.indptr, lower.indices, keep_order=False)
torch.set_num_threads(1)  # e.g. SolverOptions(threads=1) on an optimizer built before
x = analysis.factorize(lower.data)(np.ones(1000))
dense = lower.toarray()
print(np.abs((dense + np.tril(dense, -1).T) @ x - 1).max())
"""


def test_calls_run_on_the_analysis_thread_count():
    """A factorization on fewer threads than its analysis solved wrongly or crashed; every
    call now runs on the analysis' count. In a subprocess: the failure was a crash."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _THREADS_SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout.split()[-1]) < 1e-9


def test_errors_name_the_problem():
    lower = spd_lower(40, seed=3)
    analysis = pardiso.PardisoAnalysis(40, lower.indptr, lower.indices)
    with pytest.raises(pardiso.PardisoError, match=r"factorization failed: zero or negative pivot.*\(error -4\)"):
        analysis.factorize(-lower.data)
    with pytest.raises(ValueError, match=rf"expected {lower.nnz} values, received \(3,\)"):
        analysis.factorize(np.ones(3))
    factor = analysis.factorize(lower.data)  # the failed slot is free again and usable
    with pytest.raises(ValueError, match=r"expected 40 rows"):
        factor(np.ones(41))
    assert np.isfinite(factor(np.ones(40))).all()


def test_missing_library_is_reported(monkeypatch):
    monkeypatch.setattr(mkl, "_load", lambda: None)
    monkeypatch.setattr(pardiso, "_load", lambda: None)
    assert not mkl.pardiso_available()
    with pytest.raises(RuntimeError, match=r"install the 'mkl' package"):
        pardiso.PardisoAnalysis(3, np.array([0, 1, 2, 3]), np.array([0, 1, 2]))


# -- the backend choice ------------------------------------------------------------------------------------
def linearization(graph: pg.PoseGraph) -> BlockSparseLinearization:
    opt = make_optimizer(pg.build_problem(graph), pg.SolverOptions(linear_solver="cholmod"))
    return opt.linear_solver.linearization


def test_auto_takes_pardiso_for_dense_factors_only(monkeypatch):
    dense = linearization(pg.initialize(pg.read_g2o(DATA / "sphere_se3.g2o")))
    sparse = linearization(large_se2(num_poses=300, seed=0)[0])
    plan = symbolic.plan_factorization(dense)
    assert symbolic.estimate_factor_cost(dense).flops_per_nonzero >= symbolic.PARDISO_MIN_FLOPS_PER_NONZERO
    assert symbolic.estimate_factor_cost(sparse).flops_per_nonzero < symbolic.PARDISO_MIN_FLOPS_PER_NONZERO
    assert plan.backend == "pardiso" and plan.order is not None
    assert symbolic.plan_factorization(sparse).backend == "cholmod"
    assert symbolic.plan_factorization(sparse, backend="pardiso").backend == "pardiso"
    assert symbolic.plan_factorization(dense, mode="supernodal").backend == "cholmod"  # CHOLMOD's setting
    monkeypatch.setattr(mkl, "pardiso_available", lambda: False)
    assert symbolic.plan_factorization(dense).backend == "cholmod"
    with pytest.raises(ValueError, match=r"backend: expected one of auto, cholmod, pardiso, received 'mkl'"):
        symbolic.plan_factorization(dense, backend="mkl")


def test_large_graphs_let_pardiso_order(monkeypatch):
    lin = linearization(sphere_se3(num_rings=2, poses_per_ring=40, seed=0)[0])
    monkeypatch.setattr(symbolic, "MAX_ESTIMATED_BLOCKS", 10)
    assert symbolic.plan_factorization(lin) == symbolic.FactorizationPlan("supernodal", None, "pardiso")


def test_overlapping_blocks_need_cholmod(monkeypatch):
    drop_column_spans(monkeypatch)
    problem = pg.build_problem(random_graph("SE3", n=8, seed=1))
    assert SparseCholeskySolver(problem.objective).backend == "cholmod"
    with pytest.raises(ValueError, match=r"needs A's block structure.*use the 'cholmod' backend"):
        SparseCholeskySolver(problem.objective, backend="pardiso")
    with pytest.raises(ValueError, match=r"backend: expected one of auto, cholmod, pardiso, received 'mkl'"):
        SparseCholeskySolver(problem.objective, backend="mkl")


# -- the solver --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, keep_order", [("SE3", True), ("SE2", True), ("SE3", False)])
def test_solve_and_gradient_match_dense_algebra(kind, keep_order, monkeypatch):
    if not keep_order:
        monkeypatch.setattr(symbolic, "MAX_ESTIMATED_BLOCKS", 2)
    graph = random_graph(kind, n=9, seed=8)
    graph = graph.to(dtype=torch.float64)
    solver = SparseCholeskySolver(pg.build_problem(graph).objective, backend="pardiso")
    assert solver.backend == "pardiso" and (solver.order.columns is not None) == keep_order
    solver.linearization.linearize()
    check_normal_solve_against_dense(solver, 0.2)


def solve_bundled(name: str, **options):
    problem = pg.build_problem(pg.initialize(pg.read_g2o(DATA / name)))
    with torch.no_grad():
        return pg.optimize(problem, pg.SolverOptions(**options))


@pytest.mark.parametrize("reuse", [True, False])
def test_optimize_agrees_with_cholmod(reuse):
    auto = solve_bundled("sphere_se3.g2o", reuse_factor=reuse, cg_max_iterations=10)
    cholmod = solve_bundled("sphere_se3.g2o", linear_solver="cholmod", reuse_factor=reuse, cg_max_iterations=10)
    assert auto.linear_solver == "pardiso" and auto.factor_stats.backend == "pardiso"
    assert cholmod.linear_solver == "cholmod" and cholmod.factor_stats.backend == "cholmod"
    assert auto.iterations == cholmod.iterations
    assert (auto.factor_stats.reused > 0) == reuse
    torch.testing.assert_close(auto.final_error, cholmod.final_error, rtol=1e-9, atol=0)


def test_a_new_factor_takes_the_memory_of_the_last(monkeypatch):
    """Without gradients the lagged factor is dropped before a fresh factorization, so every
    factorization reuses one PARDISO slot (allocated memory) instead of alternating two."""
    slots = []
    real = pardiso.PardisoAnalysis.call
    monkeypatch.setattr(
        pardiso.PardisoAnalysis, "call",
        lambda self, handle, phase, mnum, *a, **k: (phase == 22 and slots.append(mnum)) or real(self, handle, phase, mnum, *a, **k),
    )
    res = solve_bundled("sphere_se3.g2o", cg_max_iterations=10)
    assert res.linear_solver == "pardiso" and len(slots) == res.factor_stats.factorizations > 2
    assert set(slots) == {1}


def test_batched_layer_on_pardiso_matches_one_problem_at_a_time():
    graph = sphere_se3(num_rings=4, poses_per_ring=10, seed=3)[0]
    options = pg.SolverOptions(linear_solver="pardiso", max_iterations=20)
    layer = pg.PoseGraphLayer(graph, options=options)
    gen = torch.Generator().manual_seed(0)
    steps = th.SE3.exp_map(0.02 * torch.randn(3 * graph.num_poses, 6, generator=gen, dtype=graph.poses.dtype))
    start = th.SE3(tensor=graph.poses.repeat(3, 1, 1)).compose(steps).tensor
    noisy = start.reshape(3, *graph.poses.shape)
    out, info = layer(noisy)
    assert info.linear_solver == "pardiso"
    for k in range(3):
        alone, _ = layer(noisy[k : k + 1])
        torch.testing.assert_close(out[k], alone[0], rtol=0, atol=1e-8)
