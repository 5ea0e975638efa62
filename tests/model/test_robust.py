"""Robust kernels (posegraph.model.robust): kernel math, spec parsing, the robust cost and its
linearization (against autograd, on the sparse and the dense path), and outlier rejection on
generated graphs with wrong loop closures."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import theseus as th
import torch

from posegraph import build_problem, optimize, read_g2o
from posegraph.debug.callback import DebugCallback
from posegraph.debug.normal_matrix import normal_matrix, normal_rhs
from posegraph.model.robust import RobustBlockWeight, RobustKernel, RobustSpecError, loop_closure_mask
from posegraph.solve.linearization import BlockSparseLinearization
from posegraph.solve.optimize import SolverOptions, make_optimizer
from posegraph.synthetic.graphs import grid_se2, sphere_se3, with_wrong_loop_closures
from posegraph.synthetic.metrics import translation_rmse

D = torch.float64


# -- kernels ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["huber", "cauchy", "dcs"])
@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
def test_kernel_values_and_derivative(name, scale):
    k = RobustKernel(name, scale)
    s = torch.tensor([0.0, 1e-6, 0.1, 0.24, 0.26, 1.0, 4.0, 9.5, 100.0, 1e6], dtype=D)
    c2 = scale**2 if name != "dcs" else scale  # DCS's Φ bounds the squared norm itself
    if name == "huber":
        expected = torch.where(s <= c2, s, 2 * scale * s.sqrt() - c2)
    elif name == "cauchy":
        expected = c2 * torch.log1p(s / c2)
    else:  # Agarwal et al. 2013: the residual scaled by min(1, 2Φ/(Φ + s)) is √ρ'
        expected = torch.where(s <= c2, s, c2 * (3 * s - c2) / (s + c2))
        scaling = (2 * c2 / (c2 + s)).clamp_max(1.0)
        torch.testing.assert_close(k.rho_prime(s), scaling**2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k.rho(s), expected, rtol=1e-12, atol=1e-12)
    # ρ'(s) is dρ/ds (autograd; away from Huber's kink at s = c²)
    x = s[1:].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(k.rho(x).sum(), x)
    smooth = (s[1:] - c2).abs() > 1e-3
    torch.testing.assert_close(k.rho_prime(s[1:])[smooth], grad[smooth], rtol=1e-7, atol=1e-12)
    # inliers cost what they did; large residuals cost less
    assert torch.all(k.rho(s) <= s + 1e-12)
    assert float(k.rho(torch.tensor(1e-8, dtype=D))) == pytest.approx(1e-8, rel=1e-6)


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("huber:1.0", RobustKernel("huber", 1.0)),
        ("Cauchy:0.5", RobustKernel("cauchy", 0.5)),
        ("huber", RobustKernel("huber", 1.0)),
        ("dcs:2", RobustKernel("dcs", 2.0)),
        (" cauchy:2e-1 ", RobustKernel("cauchy", 0.2)),
        ("none", None),
        (None, None),
    ],
)
def test_parse_good_specs(spec, expected):
    assert RobustKernel.parse(spec) == expected


@pytest.mark.parametrize(
    "spec,words",
    [
        ("tukey:1", ["expected one of huber, cauchy, dcs", "'tukey'"]),
        ("gnc:2", ["not a kernel", "optimize_gnc"]),
        ("dcs:0", ["scale > 0"]),
        ("huber:x", ["expected a number", "'x'"]),
        ("huber:", ["NAME:SCALE"]),
        ("huber:-1", ["scale > 0", "-1"]),
        ("cauchy:0", ["scale > 0"]),
        ("huber:nan", ["finite scale"]),
        ("huber:inf", ["finite scale"]),
        ("huber:1:2", ["expected a number", "'1:2'"]),
    ],
)
def test_parse_bad_specs(spec, words):
    with pytest.raises(RobustSpecError) as exc:
        RobustKernel.parse(spec)
    for w in words:
        assert w in str(exc.value), (w, str(exc.value))
    assert isinstance(exc.value, ValueError)


def test_bad_robust_arguments_to_build_problem():
    noisy, _ = sphere_se3(num_rings=2, poses_per_ring=5)
    with pytest.raises(RobustSpecError, match="robust kernel"):
        build_problem(noisy, robust="welsch:1")
    with pytest.raises(RobustSpecError, match="robust edges"):
        build_problem(noisy, robust="huber:1", robust_edges="odometry")


# -- robust cost and linearization --------------------------------------------------------------------


def _graph(kind: str):
    """A small generated graph with its loop closures partly wrong (large residuals)."""
    if kind == "SE3":
        noisy, truth = sphere_se3(num_rings=3, poses_per_ring=6, seed=3)
    else:
        noisy, truth = grid_se2(width=2, height=2, num_poses=40, block_length=3, seed=3)
    return with_wrong_loop_closures(noisy, 0.3, seed=1), truth


def _tangent_function(problem, fn):
    """``fn`` evaluated at ``X ⊕ δ`` as a function of the free tangent coordinates ``δ``."""
    poses = problem.poses
    base = poses.tensor.clone()

    def at(delta: torch.Tensor) -> torch.Tensor:
        poses.update(poses.retract(delta[None]).tensor)
        try:
            return fn()
        finally:
            poses.update(base)

    return at


@pytest.mark.parametrize("kind", ["SE2", "SE3"])
@pytest.mark.parametrize("kernel", ["huber:1.0", "cauchy:0.5", "dcs:1"])
@pytest.mark.parametrize("edges", ["all", "loop-closures"])
def test_robust_cost_gradient_and_hessian_match_autograd(kind, kernel, edges):
    graph, _ = _graph(kind)
    plain = build_problem(graph)
    robust = build_problem(graph, robust=kernel, robust_edges=edges)
    k = RobustKernel.parse(kernel)
    mask = loop_closure_mask(graph.ids, graph.edges) if edges == "loop-closures" else torch.ones(
        graph.num_edges, dtype=torch.bool
    )
    assert (~mask).any() or edges == "all"

    # the reported error is ½ Σ ρ(‖W e‖²) on the robust edges, ½ ‖W e‖² elsewhere
    s = plain.between.weighted_block_error()[0].square().sum(-1)
    expected = 0.5 * torch.where(mask, k.rho(s), s).sum()
    torch.testing.assert_close(robust.error()[0], expected, rtol=1e-12, atol=0)
    assert float(robust.error()) < float(plain.error())

    # gradient: Aᵀb = −∇ (½ Σ ρ); Hessian: AᵀA = Σ ρ'(s) (WJ)ᵀ WJ  (IRLS / Gauss–Newton)
    dof = robust.poses.dof()
    zero = torch.zeros(dof, dtype=D)
    grad = torch.autograd.functional.jacobian(_tangent_function(robust, lambda: robust.error()[0]), zero)
    wjac = torch.autograd.functional.jacobian(
        _tangent_function(plain, lambda: plain.between.weighted_error()[0]), zero
    )  # (E·d, dof)
    rho1 = torch.where(mask, k.rho_prime(s), torch.ones_like(s))
    ref_ata = (wjac.T * rho1.repeat_interleave(plain.between.block_dim)) @ wjac

    block = BlockSparseLinearization(robust.objective)
    block.linearize()
    dense = make_optimizer(robust, SolverOptions(linear_solver="dense")).linear_solver.linearization
    assert isinstance(dense, th.DenseLinearization)
    dense.linearize()
    for lin in (block, dense):
        np.testing.assert_allclose(normal_rhs(lin), -grad.numpy(), rtol=1e-7, atol=1e-7 * float(grad.abs().max()))
        scale = float(ref_ata.abs().max())
        np.testing.assert_allclose(normal_matrix(lin, dense=True), ref_ata.numpy(), rtol=1e-7, atol=1e-9 * scale)


def test_robust_weight_scalings_and_mask():
    graph, _ = _graph("SE3")
    problem = build_problem(graph, robust="huber:1.0", robust_edges="loop-closures")
    weight = problem.between.weight
    assert isinstance(weight, RobustBlockWeight)
    werr = weight.base.weight_block_error(problem.between.block_error())
    s = werr.square().sum(-1)[0]
    lin, cost = weight.linearization_scale(werr)[0], weight.cost_scale(werr)[0]
    odo = ~loop_closure_mask(graph.ids, graph.edges)
    assert torch.equal(lin[odo], torch.ones_like(lin[odo])) and torch.equal(cost[odo], lin[odo])
    big = (~odo) & (s > 1.0)
    assert big.any()
    torch.testing.assert_close(lin[big], s[big].pow(-0.25))  # √ρ' = (c/√s)^½
    torch.testing.assert_close(cost[big], ((2 * s[big].sqrt() - 1) / s[big]).sqrt())
    small = (~odo) & (s < 1.0)
    torch.testing.assert_close(cost[small], torch.ones_like(cost[small]), rtol=0, atol=1e-12)
    # copies keep the kernel and the mask
    copy = problem.objective.copy()
    torch.testing.assert_close(copy.error_metric(), problem.error())


def test_lm_and_debug_trace_with_a_robust_kernel(tmp_path):
    graph, _ = _graph("SE2")
    problem = build_problem(graph, robust="cauchy:1.0")
    debug = DebugCallback.for_problem(problem, per_cost=True)
    with torch.no_grad():
        result = optimize(problem, SolverOptions(max_iterations=30), end_iter_callback=debug)
    errors = [rec.error for rec in result.history]
    assert errors[0] == pytest.approx(float(result.initial_error))
    assert all(b <= a * (1 + 1e-12) for a, b in zip(errors, errors[1:]))  # LM accepts descents only
    assert errors[-1] < errors[0]
    trace = debug.to_dict()
    assert trace["first_nonfinite"] is None and trace["iterations"]
    # the trace records the robust cost, and per-edge norms of the robust linearization
    by_iteration = {rec.iteration: rec.error for rec in result.history}
    for rec in trace["iterations"]:
        if rec["iteration"] in by_iteration:
            assert rec["error"] == pytest.approx(by_iteration[rec["iteration"]], rel=1e-9)
    names = graph.edge_names()
    assert set(trace["iterations"][-1]["cost_functions"]) >= set(names)
    debug.save(tmp_path / "trace.json")
    assert (tmp_path / "trace.json").stat().st_size > 0


def test_float32_robust_problem():
    graph, _ = _graph("SE3")
    problem = build_problem(graph, robust="huber:2", dtype=torch.float32)
    assert problem.error().dtype == torch.float32
    with torch.no_grad():
        result = optimize(problem, SolverOptions(max_iterations=10))
    assert torch.isfinite(result.final_error).all() and float(result.final_error) < float(result.initial_error)


# -- outliers: robust kernels recover the trajectory -----------------------------------------------------


@pytest.mark.parametrize("kind", ["SE2", "SE3"])
def test_robust_kernels_reject_wrong_loop_closures(kind):
    if kind == "SE3":
        noisy, truth = sphere_se3(num_rings=5, poses_per_ring=16, seed=1)
    else:
        noisy, truth = grid_se2(num_poses=200, seed=1)
    bad = with_wrong_loop_closures(noisy, 0.1, seed=2)
    outliers = int(bad.extras["outlier"].sum())
    assert outliers == round(0.1 * int(loop_closure_mask(bad.ids, bad.edges).sum())) and outliers > 5

    def ate(robust, edges="all"):
        problem = build_problem(bad, robust=robust, robust_edges=edges)
        with torch.no_grad():
            optimize(problem, SolverOptions(max_iterations=50))
        return translation_rmse(problem.to_graph(), truth)

    plain = ate(None)
    huber, cauchy = ate("huber:1.0"), ate("cauchy:1.0")
    huber_lc = ate("huber:1.0", "loop-closures")
    reference = 2 * ate_without_outliers(noisy, truth)
    assert huber < plain and cauchy < plain and huber_lc < plain
    assert cauchy < reference and huber_lc < reference  # close to the outlier-free estimate
    assert plain > 3 * reference  # the wrong closures do wreck least squares


def ate_without_outliers(noisy, truth) -> float:
    problem = build_problem(noisy)
    with torch.no_grad():
        optimize(problem)
    return translation_rmse(problem.to_graph(), truth)


def test_wrong_loop_closures_generator_is_deterministic():
    noisy, _ = sphere_se3(num_rings=3, poses_per_ring=8)
    a, b = with_wrong_loop_closures(noisy, 0.5, seed=4), with_wrong_loop_closures(noisy, 0.5, seed=4)
    assert torch.equal(a.measurements, b.measurements)
    changed = (a.measurements != noisy.measurements).flatten(1).any(1)
    assert torch.equal(changed, a.extras["outlier"])
    lc = loop_closure_mask(noisy.ids, noisy.edges)
    assert not (changed & ~lc).any() and int(changed.sum()) == round(0.5 * int(lc.sum()))
    rot = a.measurements[changed][:, :, :3]
    torch.testing.assert_close(rot @ rot.transpose(1, 2), torch.eye(3, dtype=D).expand_as(rot))
    with pytest.raises(ValueError, match="fraction"):
        with_wrong_loop_closures(noisy, 1.5)


def test_gradient_through_a_robust_solve_matches_finite_differences():
    graph, _ = _graph("SE2")
    meas = graph.measurements.clone().requires_grad_(True)

    def loss_of(m: torch.Tensor) -> torch.Tensor:
        problem = build_problem(dataclasses.replace(graph, measurements=m), robust="cauchy:1.0")
        # one step: the robust scalings are differentiated through the linearization and solve
        optimize(problem, SolverOptions(solver="gn", max_iterations=1, rel_tolerance=0, abs_tolerance=0))
        return problem.poses.tensor[..., :2].sum()

    loss = loss_of(meas)
    loss.backward()
    assert torch.isfinite(meas.grad).all()
    k = int(torch.nonzero(graph.extras["outlier"])[0])  # through an outlier's down-weighting too
    for edge in (3, k):
        d = torch.zeros_like(meas)
        d[edge, 0] = 1e-6
        num = (loss_of((meas + d).detach()) - loss_of((meas - d).detach())) / 2e-6
        assert abs(float(num) - float(meas.grad[edge, 0])) < 1e-6 * max(1.0, abs(float(num)))
