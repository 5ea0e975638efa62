"""Vectorized costs (posegraph.model.costs): PointObservations' residual matches g2o's definition and
its analytic Jacobians match autograd through Theseus' own retraction; BetweenEdges reuses the
logarithm of its last evaluation only at the very same point, never under autograd."""

from __future__ import annotations

import pytest
import theseus as th
import torch

import posegraph as pg
from posegraph import ManifoldArray, PointObservations, synthetic
from posegraph.lie import geometry as G
from posegraph.lie import native
from posegraph.model.costs import EvaluationCache
from posegraph.model.weights import FullInformationWeight
from posegraph.information import sqrt_information

F64 = torch.float64


def _observation_cost(batch: int = 1, seed: int = 0, dtype=F64) -> PointObservations:
    g = torch.Generator().manual_seed(seed)
    poses = th.SE3.rand(batch * 4, generator=g, dtype=dtype).tensor.reshape(batch, 4, 3, 4)
    points = torch.randn(batch, 5, 3, generator=g, dtype=dtype)
    obs = torch.tensor([[0, 0], [0, 1], [1, 1], [2, 3], [3, 4], [1, 2], [3, 0]])
    meas = torch.randn(batch, obs.shape[0], 3, generator=g, dtype=dtype)
    offsets = th.SE3.rand(obs.shape[0], generator=g, dtype=dtype).tensor.unsqueeze(0)
    a = torch.randn(obs.shape[0], 3, 3, generator=g, dtype=dtype)
    info = (a @ a.transpose(-1, -2) + torch.eye(3, dtype=dtype)).unsqueeze(0)
    fixed = torch.tensor([True, False, False, False])
    return PointObservations(
        ManifoldArray(poses, th.SE3, fixed, name="poses"),
        ManifoldArray(points, th.Point3, name="points"),
        obs,
        th.Variable(meas, name="meas"),
        th.Variable(offsets, name="offsets"),
        FullInformationWeight(th.Variable(sqrt_information(info), name="w")),
    )


def test_residual_is_point_in_sensor_frame_minus_measurement():
    cost = _observation_cost()
    x = cost.poses.tensor[0]
    p = cost.points.tensor[0]
    for k, (i, j) in enumerate(cost.observations.tolist()):
        xh = torch.cat([x[i], torch.tensor([[0, 0, 0, 1.0]], dtype=F64)])
        oh = torch.cat([cost.offsets.tensor[0, k], torch.tensor([[0, 0, 0, 1.0]], dtype=F64)])
        q = torch.linalg.inv(xh @ oh) @ torch.cat([p[j], torch.ones(1, dtype=F64)])
        torch.testing.assert_close(cost.block_error()[0, k], q[:3] - cost.measurements.tensor[0, k])


@pytest.mark.parametrize("batch", [1, 3])
def test_jacobians_match_autograd(batch):
    cost = _observation_cost(batch)
    jacs, err = cost.block_jacobians()
    x0, p0 = cost.poses.tensor.clone(), cost.points.tensor.clone()

    def error_at(dx: torch.Tensor, dp: torch.Tensor) -> torch.Tensor:
        # right perturbation X·Exp(δ) with Theseus' own exp map, points x + δ
        exp = th.SE3.exp_map(dx.reshape(-1, 6)).tensor.reshape(x0.shape)
        cost.poses.update(th.SE3(tensor=x0.reshape(-1, 3, 4)).compose(th.SE3(tensor=exp.reshape(-1, 3, 4))).tensor.reshape(x0.shape))
        cost.points.update(p0 + dp)
        return cost.block_error()

    dx = torch.zeros(batch, 4, 6, dtype=F64)
    dp = torch.zeros(batch, 5, 3, dtype=F64)
    jx, jp = torch.autograd.functional.jacobian(error_at, (dx, dp))  # (B, M, 3, B, 4, 6), (B, M, 3, B, 5, 3)
    obs = cost.observations
    for b in range(batch):
        for k, (i, j) in enumerate(obs.tolist()):
            torch.testing.assert_close(jacs[0][b, k], jx[b, k, :, b, i], atol=1e-10, rtol=1e-8)
            torch.testing.assert_close(jacs[1][b, k], jp[b, k, :, b, j], atol=1e-10, rtol=1e-8)


def test_dense_jacobians_drop_fixed_pose_columns():
    cost = _observation_cost()
    (jx, jp), _ = cost.jacobians()
    assert jx.shape == (1, 7 * 3, 3 * 6)  # pose 0 is fixed: no columns
    assert jp.shape == (1, 7 * 3, 5 * 3)
    blocks, _ = cost.block_jacobians()
    torch.testing.assert_close(jx[0, 6:9, 0:6], blocks[0][0, 2])  # observation 2 sees pose 1
    assert not jx[0, 0:6].any()  # observations 0, 1 see the fixed pose 0


def test_refuses_wrong_element_classes():
    cost = _observation_cost()
    with pytest.raises(TypeError, match="th.SE3 poses and th.Point3 points"):
        PointObservations(cost.points, cost.poses, cost.observations, cost.measurements, cost.offsets, cost.weight)


# -- BetweenEdges: the logarithm of the last evaluation is reused at the same point ----------
def _between_cost(kind: str, batch: int = 1, seed: int = 0) -> "pg.BetweenEdges":
    g = torch.Generator().manual_seed(seed)
    cls, dof = (th.SE3, 6) if kind == "SE3" else (th.SE2, 3)
    edges = torch.tensor([[0, 1], [1, 2], [2, 3], [3, 4], [0, 4], [1, 3], [4, 2]])

    def rand(m: int) -> torch.Tensor:
        return cls.exp_map(torch.randn(m, dof, generator=g, dtype=F64)).tensor

    poses = rand(batch * 5).reshape(batch, 5, *rand(1).shape[1:])
    meas = rand(batch * edges.shape[0]).reshape(batch, edges.shape[0], *poses.shape[2:])
    a = torch.randn(batch, edges.shape[0], dof, dof, generator=g, dtype=F64)
    info = a @ a.transpose(-1, -2) + torch.eye(dof, dtype=F64)
    return pg.BetweenEdges(
        ManifoldArray(poses, cls, torch.tensor([True, False, False, False, False]), name="poses"),
        edges,
        th.Variable(meas, name="meas"),
        FullInformationWeight(th.Variable(sqrt_information(info), name="w")),
    )


def _uncached(cost: "pg.BetweenEdges"):
    """Error, weighted Jacobians and weighted error, all evaluated afresh."""
    cost.log_cache.clear()
    err = cost.block_error().clone()
    cost.log_cache.clear()
    jacs, werr = cost.weighted_block_jacobians_error()
    cost.log_cache.clear()
    return err, jacs, werr


def _assert_same(a, b):
    err_a, jacs_a, werr_a = a
    err_b, jacs_b, werr_b = b
    assert torch.equal(err_a, err_b) and torch.equal(werr_a, werr_b)
    assert all(torch.equal(x, y) for x, y in zip(jacs_a, jacs_b))


@pytest.mark.parametrize("kind", ["SE3", "SE2"])
@pytest.mark.parametrize("batch", [1, 2])
def test_between_cache_gives_the_uncached_values_bitwise(kind, batch):
    cost = _between_cost(kind, batch)
    with torch.no_grad():
        reference = _uncached(cost)
        err = cost.block_error()
        assert cost.log_cache.hits == 0
        jacs, werr = cost.weighted_block_jacobians_error()  # at the same point: reused
        assert cost.log_cache.hits == 1
        _assert_same((err, jacs, werr), reference)
        plain, err2 = cost.block_jacobians()
        assert cost.log_cache.hits == 2 and err2 is err
        cost.log_cache.clear()
        fresh, _ = cost.block_jacobians()
        assert all(torch.equal(x, y) for x, y in zip(plain, fresh))
        # the other way round: an error after a linearization reuses the linearization's
        cost.log_cache.clear()
        cost.weighted_block_jacobians_error()
        assert torch.equal(cost.block_error(), reference[0])
        assert cost.log_cache.hits == 3


@pytest.mark.parametrize("kind", ["SE3", "SE2"])
def test_between_cache_invalidated_by_new_or_edited_tensors(kind):
    cost = _between_cost(kind, seed=1)
    with torch.no_grad():
        cost.block_error()
        # a new pose tensor (Theseus' update / retraction)
        cost.poses.update(cost.poses.retract(torch.full((1, cost.poses.dof()), 0.05, dtype=F64)).tensor)
        result = cost.weighted_block_jacobians_error()
        assert cost.log_cache.hits == 0
        _assert_same((cost.block_error(), *result), _uncached(cost))
        # the same pose tensor edited in place
        cost.block_error()
        hits = cost.log_cache.hits
        cost.poses.tensor[0, 2] = cost.poses.tensor[0, 3]
        result = cost.weighted_block_jacobians_error()
        assert cost.log_cache.hits == hits
        _assert_same((cost.block_error(), *result), _uncached(cost))
        # a new measurement tensor (e.g. a layer updating its auxiliary variables) ...
        cost.block_error()
        hits = cost.log_cache.hits
        cost.measurements.update(cost.measurements.tensor.flip(1).clone())
        result = cost.weighted_block_jacobians_error()
        assert cost.log_cache.hits == hits
        _assert_same((cost.block_error(), *result), _uncached(cost))
        # ... or the measurements edited in place
        cost.block_error()
        cost.measurements.tensor[0, 0] = cost.measurements.tensor[0, 1]
        result = cost.weighted_block_jacobians_error()
        assert cost.log_cache.hits == hits + 1  # (only the error just above was reused)
        _assert_same((cost.block_error(), *result), _uncached(cost))
        # an error a caller edited in place is not handed out again
        err = cost.block_error()
        err.zero_()
        assert cost.block_error().abs().sum() > 0


def test_between_cache_not_shared_by_copies():
    cost = _between_cost("SE3", seed=2)
    with torch.no_grad():
        cost.block_error()
        twin = cost.copy()
        twin.poses.tensor[0, 1] = twin.poses.tensor[0, 2]
        assert twin.log_cache is not cost.log_cache
        assert not torch.equal(twin.block_error(), cost.block_error())
        assert twin.log_cache.hits == 0


def test_weighted_error_reused_while_error_and_weight_unchanged():
    """The weighted error of a linear weight is kept with the error it weighted: reused by a
    later evaluation and the linearization at the same point, recomputed when the weight's
    tensor is replaced or edited in place; a robust weight is always recomputed."""
    cost = _between_cost("SE3", seed=4)
    with torch.no_grad():
        werr = cost.weighted_block_error()
        reference = werr.clone()
        assert cost.weighted_block_error() is werr and cost.weighted_cache.hits == 1
        _, werr_lin = cost.weighted_block_jacobians_error()
        assert werr_lin is werr and cost.weighted_cache.hits == 2
        w = cost.weight.sqrt_information
        w.update(2 * w.tensor)  # a new weight tensor
        torch.testing.assert_close(cost.weighted_block_error(), 2 * reference, rtol=1e-14, atol=0)
        w.tensor.mul_(0.5)  # edited in place
        torch.testing.assert_close(cost.weighted_block_error(), reference, rtol=1e-14, atol=0)
        assert cost.weighted_cache.hits == 2
        robust = pg.BetweenEdges(cost.poses, cost.edges, cost.measurements, pg.RobustBlockWeight(cost.weight, "huber", 0.5))
        robust.weighted_block_error()
        robust.weighted_block_error()
        assert robust.weighted_cache.hits == 0


@pytest.mark.parametrize("kind", ["SE3", "SE2"])
def test_between_cache_unused_under_autograd(kind):
    cost = _between_cost(kind, seed=3)
    with torch.no_grad():
        cost.block_error()  # a value cached without a graph ...
    x = cost.poses.tensor.clone().requires_grad_(True)
    cost.poses.update(x)
    with torch.no_grad():
        cost.block_error()  # ... even for the very tensor that now requires grad
    err = cost.block_error()
    jacs, err2 = cost.block_jacobians()  # recomputed: every output carries its graph
    assert err2 is not err and all(j.requires_grad for j in (err2, *jacs))
    assert cost.log_cache.hits == 0
    loss = (err**2).sum() + jacs[0].sum() + (jacs[1] ** 2).sum()
    (grad,) = torch.autograd.grad(loss, x)
    # the same loss straight from the geometry kernels
    kernels = (G.se3_between_error_jacobians if kind == "SE3" else G.se2_between_error_jacobians)
    y = x.detach().clone().requires_grad_(True)
    e = cost.edges
    z = cost.measurements.tensor
    ref_err, j_i, j_j = kernels(y[:, e[:, 0]], y[:, e[:, 1]], z)
    (ref,) = torch.autograd.grad((ref_err**2).sum() + j_i.sum() + (j_j**2).sum(), y)
    torch.testing.assert_close(grad, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["SE3", "SE2"])
def test_lm_solve_evaluates_each_logarithm_once_per_point(kind, monkeypatch):
    """Counts the between logarithms of an LM solve with the cache and with it disabled:
    each accepted step saves the linearization's logarithm at the new point."""
    log_name = "_se3_log_parts" if kind == "SE3" else "_se2_log_parts"
    calls = {"n": 0}
    log = getattr(G, log_name)

    def counted(*args):
        calls["n"] += 1
        return log(*args)

    monkeypatch.setattr(G, log_name, counted)
    compiled = native.between_log_parts

    def counted_compiled(*args):  # the compiled route (float64 CPU without gradients)
        calls["n"] += 1
        return compiled(*args)

    monkeypatch.setattr(native, "between_log_parts", counted_compiled)

    def solve():
        noisy = (synthetic.sphere_se3(2, 8, seed=4) if kind == "SE3" else synthetic.grid_se2(num_poses=120, seed=4)).graph
        problem = pg.build_problem(pg.initialize(noisy))
        calls["n"] = 0
        with torch.no_grad():
            res = pg.optimize(problem, pg.SolverOptions(solver="lm"))
        return calls["n"], res

    cached_calls, cached = solve()
    with monkeypatch.context() as m:
        m.setattr(EvaluationCache, "get", lambda self, tensors: None)
        plain_calls, plain = solve()
    assert cached.iterations == plain.iterations >= 2
    assert torch.equal(cached.final_error, plain.final_error)
    assert cached_calls <= plain_calls - cached.iterations
