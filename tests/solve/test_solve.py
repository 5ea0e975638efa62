"""Vectorized path vs Theseus' own: packed variables, between costs, linearization, CHOLMOD."""

from __future__ import annotations

import dataclasses

import pytest
import theseus as th
import torch

import posegraph as pg
from posegraph.solve.linearization import BlockSparseLinearization
from posegraph.solve.optimize import make_optimizer
from conftest import check_normal_solve_against_dense, drop_column_spans



@pytest.fixture(autouse=True)
def float64_default():
    """These tests build tensors without dtypes; keep float64 local to this module."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def random_graph(kind: str, n: int = 6, seed: int = 0, batch: int = 1) -> pg.PoseGraph:
    """A small random loop graph with random full information matrices."""
    gen = torch.Generator().manual_seed(seed)
    cls, shape, dof = pg.graph.POSE_KINDS[kind]
    def rand(m):
        return cls.exp_map(torch.randn(m, dof, generator=gen)).tensor
    edges = [(k, k + 1) for k in range(n - 1)] + [(0, n - 1), (1, n - 2)]
    e = len(edges)
    a = torch.randn(batch, e, dof, dof, generator=gen)
    info = a @ a.transpose(-1, -2) + 0.5 * torch.eye(dof)
    poses = rand(batch * n).reshape(batch, n, *shape)
    meas = rand(batch * e).reshape(batch, e, *shape)
    return pg.PoseGraph(
        kind=kind,
        ids=torch.arange(10, 10 + n),
        poses=poses if batch > 1 else poses[0],
        edges=torch.tensor(edges),
        measurements=meas if batch > 1 else meas[0],
        information=info if batch > 1 else info[0],
        fixed=torch.zeros(n, dtype=torch.bool),
    )


def stock_objective(g: pg.PoseGraph):
    """The same problem built from stock Theseus objects (one Between per edge)."""
    cls = g.element_cls
    fixed = g.gauge_fixed()
    poses = [cls(tensor=g.poses[k : k + 1].clone(), name=f"x{k}") for k in range(g.num_poses)]
    obj = th.Objective()
    for k, (i, j) in enumerate(g.edges.tolist()):
        w = pg.FullInformationWeight.from_information(g.information[k])
        z = cls(tensor=g.measurements[k : k + 1].clone(), name=f"z{k}")
        obj.add(th.Between(poses[i], poses[j], z, w, name=f"e{k}"))
    return obj, poses, fixed


@pytest.mark.parametrize("kind", ["SE3", "SE2"])
def test_between_error_matches_theseus_between(kind):
    g = random_graph(kind)
    problem = pg.build_problem(g)
    obj, _, _ = stock_objective(g)
    ours = problem.objective.error_metric()
    theirs = obj.error_metric()
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["SE3", "SE2"])
def test_block_jacobians_match_theseus_between(kind):
    g = random_graph(kind)
    problem = pg.build_problem(g)
    jacs, err = problem.between.block_jacobians()
    for k, (i, j) in enumerate(g.edges.tolist()):
        cls = g.element_cls
        xi = cls(tensor=g.poses[i : i + 1].clone())
        xj = cls(tensor=g.poses[j : j + 1].clone())
        z = cls(tensor=g.measurements[k : k + 1].clone())
        cost = th.Between(xi, xj, z, th.ScaleCostWeight(torch.tensor(1.0)))
        (ji, jj), e = cost.jacobians()
        torch.testing.assert_close(err[0, k], e[0], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(jacs[0][0, k], ji[0], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(jacs[1][0, k], jj[0], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["SE3", "SE2"])
def test_jacobian_matches_finite_differences_of_retraction(kind):
    g = random_graph(kind, n=4)
    problem = pg.build_problem(g)
    poses = problem.poses
    dense, _ = problem.between.jacobians()
    x0 = poses.tensor.clone()
    eps = 1e-6
    num = torch.zeros_like(dense[0])
    for c in range(poses.dof()):
        d = torch.zeros(1, poses.dof())
        d[0, c] = eps
        poses.update(poses.retract(d).tensor)
        ep = problem.between.error()
        poses.update(x0)
        poses.update(poses.retract(-d).tensor)
        em = problem.between.error()
        poses.update(x0)
        num[0, :, c] = (ep - em)[0] / (2 * eps)
    torch.testing.assert_close(dense[0], num, rtol=1e-5, atol=1e-6)


def test_sparse_linearization_equals_dense_linearization():
    g = random_graph("SE3", n=7, seed=3)
    problem = pg.build_problem(g)
    sparse_opt = make_optimizer(problem, pg.SolverOptions(linear_solver="cholmod"))
    dense_opt = make_optimizer(problem, pg.SolverOptions(linear_solver="dense"))
    ls, ld = sparse_opt.linear_solver.linearization, dense_opt.linear_solver.linearization
    ls.linearize()
    ld.linearize()
    a_sparse = ls.A_scipy().toarray()
    torch.testing.assert_close(torch.as_tensor(a_sparse), ld.A[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ls.Atb, ld.Atb, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ls.AtA, ld.AtA, rtol=1e-12, atol=1e-12)
    v = torch.randn(1, ls.num_cols)
    torch.testing.assert_close(ls.diagonal_scaling(v), torch.diagonal(ld.AtA[0]) * v)
    torch.testing.assert_close(ls.Av(v), (ld.A @ v.unsqueeze(2)).squeeze(2))
    # the gauge vertex owns no columns
    assert ls.num_cols == (g.num_poses - 1) * 6


def linearized_cholmod(kind: str, n: int, seed: int):
    """A CHOLMOD optimizer over a random graph, linearized once: (optimizer, linearization)."""
    problem = pg.build_problem(random_graph(kind, n=n, seed=seed))
    opt = make_optimizer(problem, pg.SolverOptions(linear_solver="cholmod"))
    lin = opt.linear_solver.linearization
    lin.linearize()
    return opt, lin


def test_cholmod_solve_matches_dense_and_damping():
    opt, lin = linearized_cholmod("SE3", n=7, seed=4)
    opt.linear_solver.reuse_factor = False  # a fresh factorization with each damping
    a = torch.as_tensor(lin.A_scipy().toarray())
    for lam in (0.0, 0.3):
        x = opt.linear_solver.solve(damping=lam)
        expected = torch.linalg.solve(a.T @ a + lam * torch.eye(a.shape[1]), a.T @ lin.b[0])
        torch.testing.assert_close(x[0], expected, rtol=1e-9, atol=1e-10)


def test_cholmod_solve_gradient_matches_dense_autograd():
    opt, lin = linearized_cholmod("SE2", n=5, seed=5)
    a_val = lin.A_val.detach().clone().requires_grad_(True)
    b = lin.b.detach().clone().requires_grad_(True)
    from posegraph.solve.sparse_cholesky import NormalSolve

    x = NormalSolve.apply(a_val, b, opt.linear_solver, [0.1], False)
    w = torch.randn_like(x)
    (x * w).sum().backward()
    rows = lin._row_of_nz
    cols = lin._col_of_nz
    a_val2 = lin.A_val.detach().clone().requires_grad_(True)
    b2 = lin.b.detach().clone().requires_grad_(True)
    dense = torch.zeros(lin.num_rows, lin.num_cols).index_put((rows, cols), a_val2[0])
    x2 = torch.linalg.solve(dense.T @ dense + 0.1 * torch.eye(lin.num_cols), dense.T @ b2[0])
    (x2 * w[0]).sum().backward()
    torch.testing.assert_close(a_val.grad, a_val2.grad, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(b.grad, b2.grad, rtol=1e-8, atol=1e-10)


def near_graph(kind: str, n: int = 8, seed: int = 6) -> pg.PoseGraph:
    """Measurements consistent with the poses up to small noise; poses perturbed a little."""
    g = random_graph(kind, n=n, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    cls = g.element_cls
    x = cls(tensor=g.poses)
    xi = cls(tensor=g.poses[g.edges[:, 0]])
    xj = cls(tensor=g.poses[g.edges[:, 1]])
    z = xi.between(xj).compose(cls.exp_map(0.05 * torch.randn(g.num_edges, g.dof, generator=gen)))
    start = x.compose(cls.exp_map(0.1 * torch.randn(n, g.dof, generator=gen)))
    return dataclasses.replace(g, poses=start.tensor, measurements=z.tensor)


@pytest.mark.parametrize("solver", ["gn", "lm"])
@pytest.mark.parametrize("linear", ["cholmod", "dense"])
def test_optimizers_agree(solver, linear):
    g = near_graph("SE3")
    problem = pg.build_problem(g)
    res = pg.optimize(problem, pg.SolverOptions(solver=solver, linear_solver=linear, max_iterations=50))
    assert res.status == ["converged"]
    ref = pg.build_problem(g)
    pg.optimize(ref, pg.SolverOptions(solver="gn", linear_solver="dense", max_iterations=50))
    torch.testing.assert_close(res.final_error, ref.error(), rtol=1e-7, atol=1e-9)
    assert float(res.final_error) < float(res.initial_error)


def test_fixed_vertices_stay_exactly_fixed():
    g = near_graph("SE3", n=6, seed=7)
    g.fixed[2] = True
    problem = pg.build_problem(g)
    before = problem.poses.tensor[0, 2].clone()
    pg.optimize(problem, pg.SolverOptions(max_iterations=5))
    assert torch.equal(problem.poses.tensor[0, 2], before)


@pytest.mark.parametrize("mode", ["auto", "supernodal"])
def test_batched_solve_equals_one_at_a_time(mode):
    """Also with the supernodal factorization of the assembled AᵀA (one per batch element)."""
    g = random_graph("SE3", n=6, seed=8, batch=3)
    problem = pg.build_problem(g)
    options = pg.SolverOptions(solver="gn", max_iterations=30, cholmod_mode=mode)
    res = pg.optimize(problem, options)
    if mode == "supernodal":
        assert res.factor_stats.mode == "supernodal"
    for k in range(3):
        single = pg.PoseGraph(
            kind="SE3", ids=g.ids, poses=g.poses[k], edges=g.edges,
            measurements=g.measurements[k], information=g.information[k], fixed=g.fixed,
        )
        p1 = pg.build_problem(single)
        pg.optimize(p1, pg.SolverOptions(solver="gn", max_iterations=30))
        torch.testing.assert_close(problem.poses.tensor[k], p1.poses.tensor[0], rtol=1e-8, atol=1e-8)
        torch.testing.assert_close(res.final_error[k], p1.error()[0], rtol=1e-8, atol=1e-10)


def test_user_cost_in_same_objective():
    """A user's own th.CostFunction over its own variable is placed by the generic path."""
    g = random_graph("SE2", n=5, seed=9)
    target = th.Vector(tensor=torch.tensor([[1.0, 2.0]]), name="target")
    v = th.Vector(tensor=torch.zeros(1, 2), name="v")
    prior = th.Difference(v, target, th.ScaleCostWeight(torch.tensor(2.0)), name="prior_v")
    problem = pg.build_problem(g, extra_costs=[prior])
    res = pg.optimize(problem, pg.SolverOptions(solver="gn"))
    assert res.status == ["converged"]
    torch.testing.assert_close(v.tensor, target.tensor, rtol=1e-9, atol=1e-9)


def test_unroll_gradient_through_solve_is_finite_and_matches_fd():
    g = random_graph("SE2", n=4, seed=10)
    meas = g.measurements.clone().requires_grad_(True)
    def loss_of(m):
        gg = pg.PoseGraph(kind="SE2", ids=g.ids, poses=g.poses, edges=g.edges,
                          measurements=m, information=g.information, fixed=g.fixed)
        p = pg.build_problem(gg)
        pg.optimize(p, pg.SolverOptions(solver="gn", max_iterations=6, rel_tolerance=0, abs_tolerance=0))
        return p.poses.tensor[..., :2].sum()
    loss = loss_of(meas)
    loss.backward()
    assert torch.isfinite(meas.grad).all()
    d = torch.zeros_like(meas)
    d[1, 0] = 1e-6
    num = (loss_of((meas + d).detach()) - loss_of((meas - d).detach())) / 2e-6
    assert abs(float(num) - float(meas.grad[1, 0])) < 1e-4 * max(1.0, abs(float(num)))


def test_sparse_linearization_sums_entries_sharing_a_slot():
    """A block cost touching one element twice on a row (a self-loop edge, which the builder
    refuses but a hand-made cost may have) takes the scatter-add path: A = dense A."""
    g = random_graph("SE2", n=5, seed=4)
    poses = pg.ManifoldArray(g.poses.unsqueeze(0).clone(), th.SE2, g.gauge_fixed(), name="poses")
    edges = torch.cat([g.edges, torch.tensor([[2, 2]])])
    meas = torch.cat([g.measurements, g.measurements[:1]]).unsqueeze(0)
    info = torch.cat([g.information, g.information[:1]]).unsqueeze(0)
    cost = pg.BetweenEdges(
        poses, edges, th.Variable(meas, name="z"), pg.FullInformationWeight.from_information(info)
    )
    obj = th.Objective()
    obj.add(cost)
    obj.update()
    sparse = BlockSparseLinearization(obj)
    dense = th.DenseLinearization(obj)
    sparse.linearize()
    dense.linearize()
    assert not sparse._pure_copy
    torch.testing.assert_close(torch.as_tensor(sparse.A_scipy().toarray()), dense.A[0])
    torch.testing.assert_close(sparse.Atb, dense.Atb)


def test_solver_threads_option_applies_and_restores():
    problem = pg.build_problem(near_graph("SE2"))
    before = torch.get_num_threads()
    seen = []
    result = pg.optimize(
        problem,
        pg.SolverOptions(threads=1, max_iterations=3),
        on_iteration=lambda rec: seen.append(torch.get_num_threads()),
    )
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before
    assert result.iterations >= 1
    with pytest.raises(ValueError, match="threads"):
        pg.optimize(problem, pg.SolverOptions(threads=0))


def test_default_threads_one_for_small_problems_setup_on_torchs(monkeypatch):
    """``threads=None``: the setup (the factorization's analysis) runs on torch's threads, the
    iterations of a small CPU problem on one; above ``SINGLE_THREAD_MAX_ROWS`` on torch's."""
    from posegraph.solve import optimize as optimize_module

    problem = pg.build_problem(near_graph("SE2"))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        at_setup, seen = [], []
        real = optimize_module.make_optimizer
        monkeypatch.setattr(optimize_module, "make_optimizer", lambda *a: at_setup.append(torch.get_num_threads()) or real(*a))
        hook = lambda rec: seen.append(torch.get_num_threads())  # noqa: E731
        pg.optimize(problem, pg.SolverOptions(max_iterations=3), on_iteration=hook)
        assert at_setup == [2] and set(seen) == {1} and torch.get_num_threads() == 2
        monkeypatch.setattr(optimize_module, "SINGLE_THREAD_MAX_ROWS", problem.objective.dim() - 1)
        seen.clear()
        pg.optimize(problem, pg.SolverOptions(max_iterations=3), on_iteration=hook)
        assert set(seen) == {2}
    finally:
        torch.set_num_threads(before)


def test_full_information_weight_rows_identity_and_subset():
    gen = torch.Generator().manual_seed(9)
    w = pg.FullInformationWeight(torch.randn(1, 3, 6, 6, generator=gen))
    jac = torch.randn(1, 3, 6, 6, generator=gen)
    all_rows = torch.arange(3)
    full = w.sqrt_information.tensor
    torch.testing.assert_close(w.weight_block_jacobians(jac, all_rows), full @ jac)
    sub = torch.tensor([2, 0])
    torch.testing.assert_close(w.weight_block_jacobians(jac[:, :2], sub), full[:, sub] @ jac[:, :2])
    # the same rows tensor again after the weight's values changed: the new values are used
    w.sqrt_information.update(torch.randn(1, 3, 6, 6, generator=gen))
    torch.testing.assert_close(
        w.weight_block_jacobians(jac, all_rows), w.sqrt_information.tensor @ jac
    )


@pytest.mark.parametrize("kind", ["SE3", "SE2"])
@pytest.mark.parametrize("weight", ["full", "scale"])
def test_between_weighted_jacobians_equal_weighting_each(kind, weight):
    """BetweenEdges weights ∂e/∂δⱼ once and derives the weighted ∂e/∂δᵢ; the result equals
    weighting both Jacobians (the generic BlockSparseCostFunction path)."""
    g = random_graph(kind, n=6, seed=11, batch=2)
    cls = g.element_cls
    poses = pg.ManifoldArray(g.poses.clone(), cls, g.gauge_fixed(), name="poses")
    if weight == "full":
        w = pg.FullInformationWeight.from_information(g.information)
    else:
        w = pg.BlockScaleWeight(torch.rand(2, g.num_edges) + 0.5, poses.element_dof)
    cost = pg.BetweenEdges(poses, g.edges, th.Variable(g.measurements.clone(), name="z"), w)
    got, err = cost.weighted_block_jacobians_error()
    ref, ref_err = pg.BlockSparseCostFunction.weighted_block_jacobians_error(cost)
    torch.testing.assert_close(err, ref_err)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


# -- CHOLMOD: lagged factors, factorization mode ------------------------------------------


def normal_system(kind: str, n: int, seed: int):
    """Aᵀ (CSC, rows in the solver's elimination order), the right-hand side Aᵀb and the
    CHOLMOD solver of a random graph."""
    opt, lin = linearized_cholmod(kind, n=n, seed=seed)
    at = opt.linear_solver.order.transpose(lin.A_val[0].numpy())
    return at, at @ lin.b[0].numpy(), opt.linear_solver


def test_lagged_factor_cg_converges_with_a_nearby_factor_and_gives_up_with_a_far_one():
    import numpy as np

    from posegraph.solve.sparse_cholesky import lagged_factor_cg

    at, rhs, solver = normal_system("SE3", n=9, seed=11)
    product = lambda p: at @ (at.T @ p) + 1e-6 * p  # noqa: E731
    exact = solver.factorization.symbolic.cholesky_AAt(at, beta=1e-6)
    x, its = lagged_factor_cg(product, rhs, exact, 1e-10, 10)
    assert its == 1 and np.allclose(x, exact(rhs), rtol=1e-9, atol=1e-12)
    near = solver.factorization.symbolic.cholesky_AAt(at * 1.001, beta=1e-6)
    x, its = lagged_factor_cg(product, rhs, near, 1e-10, 10)
    assert 1 < its <= 10
    h = (at @ at.T).toarray() + 1e-6 * np.eye(at.shape[0])
    assert np.linalg.norm(h @ x - rhs) <= 1e-10 * np.linalg.norm(rhs)
    far = solver.factorization.symbolic.cholesky_AAt(at, beta=1e3)  # heavy damping: a poor preconditioner
    x, its = lagged_factor_cg(product, rhs, far, 1e-10, 10)
    assert x is None and its < 10
    zero, its = lagged_factor_cg(product, 0 * rhs, exact, 1e-10, 10)
    assert its == 0 and not zero.any()


def test_normal_product_equals_the_normal_matrix():
    """``(AᵀA + βI) p`` without forming ``AᵀA``, with SciPy's products."""
    import numpy as np

    g = random_graph("SE3", n=7, seed=4)
    g.fixed[0] = True
    problem = pg.build_problem(g)
    lin = BlockSparseLinearization(problem.objective)
    with torch.no_grad():
        lin.linearize()
    values = lin.A_val[0].numpy()
    p = np.random.default_rng(0).normal(size=lin.num_cols)
    a = lin.A_scipy(0).toarray()
    out = lin.normal_product(values, 0.25)(p)
    np.testing.assert_allclose(out, a.T @ (a @ p) + 0.25 * p, rtol=1e-12, atol=1e-12)


def solve_bundled(name: str, **options):
    from pathlib import Path

    g = pg.initialize(pg.read_g2o(Path(__file__).resolve().parents[2] / "data" / name))
    problem = pg.build_problem(g)
    with torch.no_grad():
        return pg.optimize(problem, pg.SolverOptions(linear_solver="cholmod", **options))


@pytest.mark.parametrize("name", ["sphere_se3.g2o", "grid_se2.g2o"])
def test_factor_reuse_saves_factorizations_and_keeps_the_optimum(name):
    fresh = solve_bundled(name, reuse_factor=False)
    reused = solve_bundled(name, cg_max_iterations=10)  # every attempt made, whatever it costs here
    assert fresh.factor_stats.reused == 0
    assert fresh.factor_stats.factorizations == fresh.iterations
    assert reused.factor_stats.reused > 0
    assert reused.factor_stats.factorizations + reused.factor_stats.reused == reused.iterations
    assert reused.iterations == fresh.iterations
    torch.testing.assert_close(reused.final_error, fresh.final_error, rtol=1e-9, atol=0)


def test_last_factor_tried_only_after_a_small_fall_of_the_error():
    """A fall of the error (½‖b‖²) above ``reuse_max_decrease`` since the last solve means the
    matrix moved: refactor without trying CG; a small one tries the last factor first."""
    import numpy as np

    opt, lin = linearized_cholmod("SE3", n=9, seed=11)
    solver = opt.linear_solver
    a, b = lin.A_val[0].numpy(), lin.b[0].numpy()
    rhs = solver.order.apply(lin.Atb[0, :, 0].numpy())
    x0, _ = solver.solve_one(0, a, b, rhs, 1e-6, False)
    assert (solver.stats.factorizations, solver.stats.cg_iterations) == (1, 0)
    x1, _ = solver.solve_one(0, a, 0.5 * b, 0.5 * rhs, 1e-6, False)  # error fell by 75%
    assert (solver.stats.factorizations, solver.stats.cg_iterations, solver.stats.reused) == (2, 0, 0)
    x2, _ = solver.solve_one(0, a, 0.5 * b, 0.5 * rhs, 1e-6, False)  # unchanged: CG, converged
    assert solver.stats.factorizations == 2 and solver.stats.reused == 1 and solver.stats.cg_iterations >= 1
    np.testing.assert_allclose(x1, 0.5 * x0, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(x2, x1, rtol=1e-8, atol=1e-12)
    solver.reset()
    assert solver._last_errors == {} and solver._last_factors == {}


def test_solve_costs_budget():
    from posegraph.solve.sparse_cholesky import CG_MAX_ITERATIONS, CG_MIN_ITERATIONS, SolveCosts

    assert SolveCosts().budget() == CG_MAX_ITERATIONS and SolveCosts().worth_trying()  # nothing measured
    assert SolveCosts(fresh_s=1.0).budget(7) == 7
    costs = SolveCosts(fresh_s=1.0, cg_iteration_s=0.2)
    assert costs.budget() == 5 and costs.budget(3) == 3
    assert costs.needed == CG_MIN_ITERATIONS and costs.worth_trying()
    costs.needed = 5  # as many as a factorization costs: nothing to gain
    assert not costs.worth_trying()
    costs = SolveCosts(fresh_s=1.0, cg_iteration_s=0.22, needed=4)  # 0.88 of a factorization
    assert costs.worth_trying() and costs.budget() == 4
    assert not SolveCosts(fresh_s=1.0, cg_iteration_s=0.01, needed=11).worth_trying()  # beyond the cap
    assert SolveCosts(fresh_s=1.0, cg_iteration_s=2.0).budget() == 0


def test_last_factor_tried_only_while_cheaper_than_a_factorization(monkeypatch):
    """With measured costs (the default) an attempt gets the iterations one factorization
    costs, and none is made when the last converged attempt needed that many; a fixed
    ``cg_max_iterations`` makes every attempt."""
    from posegraph.solve import sparse_cholesky

    limits = []
    real = sparse_cholesky.lagged_factor_cg
    monkeypatch.setattr(sparse_cholesky, "lagged_factor_cg", lambda *a: limits.append(a[-1]) or real(*a))
    opt, lin = linearized_cholmod("SE3", n=9, seed=11)
    solver = opt.linear_solver
    a, b = lin.A_val[0].numpy(), lin.b[0].numpy()
    rhs = solver.order.apply(lin.Atb[0, :, 0].numpy())
    solver.solve_one(0, a, b, rhs, 1e-6, False)
    assert solver.costs.fresh_s > 0 and solver.costs.cg_iteration_s is None
    solver.costs = sparse_cholesky.SolveCosts(fresh_s=1.0, cg_iteration_s=0.1, needed=4)
    solver.solve_one(0, a, b, rhs, 1e-6, False)  # unchanged: tried, with 10 iterations' budget
    assert limits == [10] and solver.stats.reused == 1
    assert solver.costs.needed == solver.stats.cg_iterations and 0 < solver.costs.cg_iteration_s
    solver.costs = sparse_cholesky.SolveCosts(fresh_s=1.0, cg_iteration_s=0.25, needed=4)
    solver.solve_one(0, a, b, rhs, 1e-6, False)  # 4 iterations cost a factorization: refactor
    assert limits == [10] and solver.stats.factorizations == 2
    solver.costs = sparse_cholesky.SolveCosts(fresh_s=1.0, cg_iteration_s=0.15, needed=4)
    solver.solve_one(0, a, b, rhs, 1e-6, False)  # 6 would: tried within them
    assert limits == [10, 6]
    solver.cg_max_iterations = 3
    solver.costs = sparse_cholesky.SolveCosts(fresh_s=1.0, cg_iteration_s=0.5, needed=4)
    solver.solve_one(0, a, b, rhs, 1e-6, False)  # fixed: tried whatever it costs
    assert limits == [10, 6, 3]


def test_factor_reuse_only_without_gradients():
    opt, lin = linearized_cholmod("SE2", n=6, seed=3)
    solver = opt.linear_solver
    a_val = lin.A_val.detach().clone().requires_grad_(True)
    with torch.no_grad():
        assert solver.reuse_allowed(a_val, lin.b)
    with torch.enable_grad():
        assert not solver.reuse_allowed(a_val, lin.b)
        assert solver.reuse_allowed(lin.A_val.detach(), lin.b.detach())
    solver.reuse_factor = False
    with torch.no_grad():
        assert not solver.reuse_allowed(a_val, lin.b)


def test_recorded_solves_always_factor():
    """Unroll mode records every solve: each gets its own factorization (its backward needs it)."""
    problem = pg.build_problem(random_graph("SE2", n=6, seed=2))
    problem.poses.tensor.requires_grad_(True)
    res = pg.optimize(problem, pg.SolverOptions(linear_solver="cholmod", max_iterations=4))
    assert res.factor_stats.reused == 0 and res.factor_stats.factorizations >= res.iterations


@pytest.mark.parametrize("mode", ["supernodal", "simplicial"])
def test_cholmod_modes_agree(mode):
    auto = solve_bundled("sphere_se3.g2o")
    forced = solve_bundled("sphere_se3.g2o", cholmod_mode=mode)
    assert forced.factor_stats.mode == mode
    torch.testing.assert_close(forced.final_error, auto.final_error, rtol=1e-9, atol=0)


def test_ordered_transpose_permutes_the_rows_of_a_transpose():
    import numpy as np

    from posegraph.solve.symbolic import OrderedTranspose

    _, lin = linearized_cholmod("SE3", n=9, seed=2)
    values = lin.A_val[0].numpy()
    columns = np.random.default_rng(0).permutation(lin.num_cols)
    order = OrderedTranspose(lin, columns)
    at = order.transpose(values)
    assert at.has_sorted_indices
    expected = lin.structure().csc_transpose(values)[columns]
    assert (at != expected).nnz == 0
    v = np.arange(lin.num_cols, dtype=float)
    assert np.array_equal(order.apply(v), v[columns])
    assert np.array_equal(order.restore(order.apply(v)), v)
    plain = OrderedTranspose(lin)
    assert (plain.transpose(values) != lin.structure().csc_transpose(values)).nnz == 0
    assert plain.apply(v) is v and plain.restore(v) is v


@pytest.mark.parametrize("mode, spans", [("simplicial", True), ("supernodal", True), ("supernodal", False)])
def test_cholmod_solve_and_gradient_in_either_order(mode, spans, monkeypatch):
    """Both modes run in the block order (supernodal on the solver's assembled AᵀA), or
    supernodal in CHOLMOD's own order when A has no block spans: all give the dense solution
    and the dense gradient."""
    from posegraph.solve.sparse_cholesky import CholmodSolver

    _, lin = linearized_cholmod("SE3", n=9, seed=8)
    if not spans:
        drop_column_spans(monkeypatch)
    solver = CholmodSolver(lin.objective, mode=mode)
    solver.linearization.linearize()
    lin = solver.linearization
    assert (solver.order.columns is not None) == spans
    assert (solver.normal is not None) == (spans and mode == "supernodal")
    if spans:
        assert not (solver.order.columns == torch.arange(lin.num_cols).numpy()).all()
    check_normal_solve_against_dense(solver, 0.2)


def test_cholmod_mode_is_validated():
    from posegraph.solve.sparse_cholesky import CholmodSolver

    with pytest.raises(ValueError, match=r"cholmod_mode: expected one of auto, supernodal, simplicial, received 'dense'"):
        pg.SolverOptions(cholmod_mode="dense").validate()
    problem = pg.build_problem(random_graph("SE2", n=4, seed=1))
    with pytest.raises(ValueError, match=r"mode: expected one of .* received 'fast'"):
        CholmodSolver(problem.objective, mode="fast")


@pytest.mark.parametrize(
    "field,value,expected",
    [
        ("max_iterations", 1.5, "an integer ≥ 0"),
        ("max_iterations", "5", "an integer ≥ 0"),
        ("max_iterations", True, "an integer ≥ 0"),
        ("max_iterations", -1, "an integer ≥ 0"),
        ("cg_max_iterations", 2.0, "an integer ≥ 1 or None"),
        ("threads", "2", "an integer ≥ 1 or None"),
        ("rel_tolerance", "1e-3", "a number"),
        ("damping", None, "a number"),
    ],
)
def test_options_of_the_wrong_type_are_refused_by_validate(field, value, expected):
    """Integer options must be integers (not floats, strings or bools) and tolerances numbers:
    validate() refuses them, naming the option, before the solve fails on them with a bare
    TypeError; NumPy integers are integers."""
    import numpy as np

    with pytest.raises(pg.PoseGraphError, match=rf"^{field}: expected {expected}, received"):
        pg.SolverOptions(**{field: value}).validate()
    problem = pg.build_problem(random_graph("SE2", n=4, seed=1))
    with pytest.raises(pg.PoseGraphError, match=rf"^{field}: expected {expected}"):
        pg.optimize(problem, pg.SolverOptions(**{field: value}))
    pg.SolverOptions(max_iterations=np.int64(5), threads=np.int32(1)).validate()


def test_transpose_products_equal_the_dense_ones():
    """Aᵀu (one or a batch of right-hand sides, with or without autograd) equals the dense product."""
    opt, lin = linearized_cholmod("SE3", n=7, seed=8)
    u = torch.randn(1, lin.num_rows)
    with torch.no_grad():
        atu = lin.Atv(u)
    a_grad = lin.A_val.detach().clone().requires_grad_(True)
    torch.testing.assert_close(lin.Atv(u, a_grad), atu, rtol=0, atol=0)
    assert lin.Atv(u, a_grad).requires_grad
    dense = torch.as_tensor(lin.A_scipy().toarray())
    torch.testing.assert_close(atu[0], dense.T @ u[0], rtol=1e-12, atol=1e-12)
    with torch.no_grad():  # a batch of right-hand sides against one A
        torch.testing.assert_close(lin.Atv(torch.cat([u, 2 * u])), torch.cat([atu, 2 * atu]), rtol=1e-12, atol=1e-12)

def test_product_matrices_are_reused_with_new_values():
    """The product matrices are built once and take each call's values (and dtype)."""
    import numpy as np

    _, lin = linearized_cholmod("SE3", n=7, seed=8)
    values = lin.A_val[0].numpy()
    a, at = lin.product_matrices(values)
    v = np.random.default_rng(0).standard_normal(lin.num_cols)
    expected = lin.A_scipy() @ v
    a2, at2 = lin.product_matrices(2.0 * values)
    assert a2 is a and at2 is at
    np.testing.assert_allclose(a2 @ v, 2.0 * expected, rtol=1e-12)
    np.testing.assert_allclose(at2 @ (a2 @ v), 4.0 * (lin.A_scipy().T @ expected), rtol=1e-12)
    a32, _ = lin.product_matrices(values.astype(np.float32))
    assert a32 is not a and a32.dtype == np.float32


def test_lm_damping_rule_accepts_rejects_and_scales():
    """GTSAM's schedule per problem: ρ > 1e-3 accepts (λ/10), else rejects (λ·10, at most
    1e5); a non-finite error rejects; a predicted decrease below the tolerances accepts."""
    from posegraph.solve.optimize import DampingRule

    rule = DampingRule()
    delta = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [1e-9, 0.0], [1.0, 0.0]])
    atb = torch.tensor([[2.0, 0.0]] * 5)  # predicted decrease ½ δᵀ(λδ + Aᵀb) ≈ 1 (≈1e-9 for row 3)
    damping = torch.tensor([1e-5, 1e-5, 1e-5, 1e-5, 5e4])
    previous = torch.full((5,), 10.0)
    new = torch.tensor([9.5, 9.9999, float("nan"), 10.0, 11.0])
    reject, scaled = rule.update(torch, delta, damping, atb, new, previous, 1e-10, 1e-8)
    assert reject.tolist() == [False, True, True, False, True]
    assert scaled.tolist() == pytest.approx([1e-6, 1e-4, 1e-4, 1e-6, 1e5])


def test_lm_bookkeeping_same_on_torch_and_scalars():
    """The step test and the convergence criteria give the same on torch (batches, other
    devices) and, problem by problem, on scalars (one problem on CPU), non-finite values and
    zero decreases included."""
    import numpy as np

    from posegraph.solve.optimize import DampingRule, ScalarOps, decrease_criterion

    gen = torch.Generator().manual_seed(0)
    b, n = 64, 5
    delta = torch.randn(b, n, generator=gen) * torch.logspace(-12, 0, b).unsqueeze(1)
    delta[3] = 0.0
    atb = torch.randn(b, n, generator=gen)
    damping = torch.logspace(-9, 5, b)
    previous = torch.rand(b, generator=gen) * 10
    new = previous - torch.randn(b, generator=gen).abs() * torch.logspace(-14, 1, b)
    new[5], new[6], previous[7], new[8] = float("nan"), float("inf"), 0.0, 1e-12

    def run(xp, convert):
        args = [convert(t) for t in (delta, damping, atb, new, previous)]
        with np.errstate(all="ignore"):
            out = DampingRule().update(xp, *args, 1e-10, 1e-10)
            code = decrease_criterion(xp, convert(new), convert(previous), 1e-10, 1e-10)
        return [torch.as_tensor(np.asarray(a)) for a in (*out, code)]

    on_torch = run(torch, lambda t: t)
    assert on_torch[0].any() and not on_torch[0].all()
    assert set(on_torch[2].tolist()) == {0, 1, 2, 3}  # every criterion, and none, occurs
    # one problem at a time: its row and scalars (as the bookkeeping gets them for one graph)
    for k in range(b):
        on_scalars = run(ScalarOps, lambda t: t[k].numpy()[()])  # a row, or a scalar
        for s, t in zip(on_scalars, on_torch):
            assert torch.equal(s.reshape(()).to(t.dtype), t[k]), k


# -- degenerate problems: nothing (or part of nothing) to optimize -----------------------------

def _linear_solvers():
    from posegraph.solve.mkl import pardiso_available

    no_mkl = pytest.mark.skipif(not pardiso_available(), reason="MKL PARDISO not installed")
    names = ["cholmod", "pardiso", "dense", "batched_dense", "cg"]
    return [pytest.param(n, marks=no_mkl) if n == "pardiso" else n for n in names]


@pytest.mark.parametrize("solver", ["gn", "lm"])
@pytest.mark.parametrize("linear", _linear_solvers())
@pytest.mark.parametrize("kind", ["SE2", "SE3"])
def test_all_poses_fixed_every_linear_solver_agrees(kind, linear, solver):
    """Every pose FIX'ed: no tangent columns. Every linear solver ends as CHOLMOD does
    (converged after one iteration, poses untouched) instead of a reshape or PARDISO error."""
    g = dataclasses.replace(near_graph(kind, n=5), fixed=torch.ones(5, dtype=torch.bool))
    problem = pg.build_problem(g)
    before = problem.poses.tensor.clone()
    res = pg.optimize(problem, pg.SolverOptions(solver=solver, linear_solver=linear))
    assert (res.status, res.iterations) == (["converged"], 1)
    assert torch.equal(problem.poses.tensor, before)
    assert torch.equal(res.final_error, res.initial_error)


@pytest.mark.parametrize("linear", _linear_solvers())
def test_unobserved_point_with_every_linear_solver(tmp_path, linear):
    """A VERTEX_TRACKXYZ that nothing observes (held constant: no columns, no rows) next to
    free poses: the dense Jacobians of the empty observation cost have zero columns."""
    g = near_graph("SE3", n=4, seed=3)
    path = tmp_path / "points.g2o"
    path.write_text(pg.io.format_g2o(g) + "VERTEX_TRACKXYZ 1000 1 2 3\n")
    problem = pg.build_problem(pg.read_g2o(path))
    res = pg.optimize(problem, pg.SolverOptions(linear_solver=linear))
    assert res.status == ["converged"]
    ref = pg.build_problem(g)
    pg.optimize(ref, pg.SolverOptions(linear_solver="cholmod"))
    torch.testing.assert_close(res.final_error, ref.error(), rtol=1e-7, atol=1e-9)
    assert problem.points.tensor[0, 0].tolist() == [1.0, 2.0, 3.0]


# -- size guard of the dense solvers -----------------------------------------------------------

@pytest.mark.parametrize("linear", ["dense", "batched_dense"])
def test_dense_solvers_refuse_problems_beyond_their_limit_unless_forced(monkeypatch, linear):
    import posegraph.solve.optimize as optimize_mod

    problem = pg.build_problem(near_graph("SE3", n=8))  # 7 free poses: 42 columns
    assert optimize_mod.tangent_columns(problem) == 42
    monkeypatch.setitem(optimize_mod.DENSE_SOLVER_MAX_COLUMNS, linear, 41)
    with pytest.raises(pg.PoseGraphError) as exc:
        pg.optimize(problem, pg.SolverOptions(linear_solver=linear))
    message = str(exc.value)
    assert f"'{linear}': 42 tangent columns exceed its limit of 41" in message
    assert "--linear-solver auto" in message and "--force-dense" in message
    res = pg.optimize(problem, pg.SolverOptions(linear_solver=linear, force_dense=True))
    assert res.status == ["converged"]
    monkeypatch.setitem(optimize_mod.DENSE_SOLVER_MAX_COLUMNS, linear, 42)  # at the limit: runs
    assert pg.optimize(pg.build_problem(near_graph("SE3", n=8)), pg.SolverOptions(linear_solver=linear)).converged
    # the sparse solvers have no such limit
    pg.optimize(pg.build_problem(near_graph("SE3", n=8)), pg.SolverOptions(linear_solver="cholmod"))


def test_dense_limits_are_documented_sizes():
    import posegraph.solve.optimize as optimize_mod

    assert optimize_mod.DENSE_SOLVER_MAX_COLUMNS == {"dense": 2000, "batched_dense": 3000}
    assert "force_dense" in pg.SolverOptions.__doc__
