"""posegraph's compiled loops (posegraph.lie.native): when they apply, how inputs are shaped, and
that a run gives the same result with or without them (an install without a C compiler)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import posegraph as pg
from posegraph.lie import geometry as G
from posegraph.lie import native

DATA = Path(__file__).resolve().parents[2] / "data"
F64 = torch.float64


@pytest.fixture
def compiled():
    if not native.AVAILABLE:
        pytest.skip("posegraph was installed without its compiled extensions")


def test_applies_to_float64_cpu_tensors_without_gradients(compiled, monkeypatch):
    x = torch.zeros(3, 6, dtype=F64)
    assert native.applies([x, x])
    assert not native.applies([x, x.float()])
    assert not native.applies([x, "not a tensor"])
    y = x.clone().requires_grad_(True)
    assert not native.applies([x, y])  # autograd records it
    with torch.no_grad():
        assert native.applies([x, y])
    monkeypatch.setattr(native, "ENABLED", False)
    assert not native.enabled() and not native.applies([x])


def test_inputs_broadcast_over_leading_shapes(compiled):
    """Poses broadcast against a batch, and non-contiguous inputs: the same result as the
    torch operations; measurements batched beyond the poses are left to the array routes,
    whose ``Xᵢ⁻¹Xⱼ`` keeps the poses' shape."""
    gen = torch.Generator().manual_seed(3)
    xi = G.se3_exp(torch.randn(1, 7, 6, dtype=F64, generator=gen))
    xj = G.se3_exp(torch.randn(4, 7, 6, dtype=F64, generator=gen))
    z = G.se3_exp(torch.randn(4, 7, 6, dtype=F64, generator=gen)).transpose(0, 1).contiguous().transpose(0, 1)
    assert not z.is_contiguous()
    err, rel, scalars = native.between_log_parts(xi, xj, z, (3, 4))
    assert err.shape == (4, 7, 6) and rel.shape == (4, 7, 3, 4) and all(s.shape == (4, 7) for s in scalars)
    native.ENABLED = False
    try:
        expected = G.se3_between_log_parts(xi, xj, z)
        expected_z_batch = G.se3_between_log_parts(xi, xj[:1], z)
    finally:
        native.ENABLED = True
    torch.testing.assert_close(err, expected.err, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rel, expected.rel, rtol=1e-12, atol=1e-12)
    assert native.between_log_parts(xi, xj[:1], z, (3, 4)) is None
    z_batch = G.se3_between_log_parts(xi, xj[:1], z)
    assert z_batch.rel.shape == expected_z_batch.rel.shape == (1, 7, 3, 4)
    torch.testing.assert_close(z_batch.err, expected_z_batch.err, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["sphere_se3.g2o", "grid_se2.g2o"])
def test_run_without_compiled_loops_gives_the_same_result(name, monkeypatch):
    """What an install without the extensions computes (NumPy and torch only): the same
    iterations and final error."""
    graph = pg.initialize(pg.read_g2o(DATA / name))
    results = []
    for available in (native.AVAILABLE, False):
        monkeypatch.setattr(native, "AVAILABLE", available)
        problem = pg.build_problem(graph)
        res = pg.optimize(problem, pg.SolverOptions(max_iterations=30))
        results.append((res.iterations, float(res.final_error), problem.poses.tensor.clone()))
    (it_a, err_a, x_a), (it_b, err_b, x_b) = results
    assert it_a == it_b and err_a == pytest.approx(err_b, rel=1e-9)
    torch.testing.assert_close(x_a, x_b, rtol=1e-8, atol=1e-9)


def _fused_case(kind: str):
    """Poses, edges, measurements and weights whose ``Z⁻¹Xᵢ⁻¹Xⱼ`` takes every branch of the
    logarithm (small angle, general, near π: edges from the identity at element 0 with Z = I),
    plus edges between random poses."""
    gen = torch.Generator().manual_seed(5)
    dof = 6 if kind == "SE3" else 3
    exp = G.se3_exp if kind == "SE3" else G.se2_exp
    xi = torch.randn(61, dof, dtype=F64, generator=gen)
    if kind == "SE3":
        xi[1:21, 3:] *= 1e-4
        xi[21:41, 3:] *= 3.141592653589793 * (1 - 1e-9) / xi[21:41, 3:].norm(dim=-1, keepdim=True)
    else:
        xi[1:21, 2] *= 1e-5
    xi[0] = 0.0
    poses = exp(xi)
    ends_i = torch.cat([torch.zeros(60, dtype=torch.long), torch.randint(0, 61, (40,), generator=gen)])
    ends_j = torch.cat([torch.arange(1, 61), torch.randint(0, 61, (40,), generator=gen)])
    z = torch.cat([exp(torch.zeros(60, dof, dtype=F64)), exp(0.3 * torch.randn(40, dof, dtype=F64, generator=gen))])
    w = torch.randn(100, dof, dof, dtype=F64, generator=gen)
    return poses, ends_i, ends_j, z, w, ((3, 4) if kind == "SE3" else (4,))


def ordered_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` with each entry summed over the inner index in order (the compiled kernels' sum)."""
    out = a[..., :, 0:1] * b[..., 0:1, :]
    for k in range(1, a.shape[-1]):
        out = out + a[..., :, k : k + 1] * b[..., k : k + 1, :]
    return out


@pytest.mark.parametrize("kind", ["SE3", "SE2"])
def test_fused_between_kernels_equal_the_separate_ones_bitwise(compiled, kind):
    """The fused error (logarithm with ``W e``, endpoints gathered in C) and the fused weighted
    Jacobians give exactly the separate kernels' values."""
    poses, ends_i, ends_j, z, w, element = _fused_case(kind)
    err, rel, scalars, werr = native.between_weighted_error(poses[None], ends_i, ends_j, z[None], w[None], element)
    s_err, s_rel, s_scalars = native.between_log_parts(poses[ends_i][None], poses[ends_j][None], z[None], element)
    assert torch.equal(err, s_err) and torch.equal(rel, s_rel)
    assert len(scalars) == len(s_scalars) and all(torch.equal(a, b) for a, b in zip(scalars, s_scalars))
    assert torch.equal(werr, ordered_matmul(w[None], err.unsqueeze(-1)).squeeze(-1))
    j_i, j_j = native.between_weighted_jacobians(err, scalars, rel, w[None])
    wj = ordered_matmul(w[None], native.right_jacobian_inv(err, scalars))
    assert torch.equal(j_j, wj) and torch.equal(j_i, -native.mul_adjoint_inverse(wj, rel))
    assert j_i.shape == j_j.shape == (1, 100, w.shape[-1], w.shape[-1])
    # written straight to the rows of a CSR buffer, adding up Aᵀb: the same values
    d, edges = w.shape[-1], 100
    gen = torch.Generator().manual_seed(3)
    rows = (torch.randperm(2 * edges * d, generator=gen) * d).numpy()
    rows_i, rows_j = rows[: edges * d], rows[edges * d :]
    cols_i, cols_j = (torch.randint(0, 40, (2, edges), generator=gen) * d).numpy()
    cols_i[::7] = -1  # fixed elements' blocks: not written
    out, atb = np.full(2 * edges * d * d, np.nan), np.zeros(40 * d)
    werr = ordered_matmul(w[None], err.unsqueeze(-1)).squeeze(-1)
    native.between_weighted_jacobians_into(err, scalars, rel, w[None], rows_i, rows_j, cols_i, cols_j, out, werr, atb)
    expected, written = np.zeros(40 * d), np.zeros(out.shape, dtype=bool)
    for k in range(edges):
        for blocks, row_slots, col in ((j_i, rows_i, cols_i[k]), (j_j, rows_j, cols_j[k])):
            if col < 0:
                continue
            block = blocks[0, k].numpy()
            for r in range(d):
                start = row_slots[d * k + r]
                assert np.array_equal(out[start : start + d], block[r])
                written[start : start + d] = True
                for c in range(d):
                    expected[col + c] += block[r, c] * -werr[0, k, r].item()
    assert np.isnan(out[~written]).all() and np.array_equal(atb, expected)


def test_fused_between_error_checks_indices_and_lengths(compiled):
    poses, ends_i, ends_j, z, w, element = _fused_case("SE3")
    with pytest.raises(ValueError, match="expected element indices < len"):
        native.between_weighted_error(poses[None], ends_i, ends_j + 1, z[None], w[None], element)
    with pytest.raises(ValueError, match="w: expected 3600 float64 values"):
        native.between_weighted_error(poses[None], ends_i, ends_j, z[None], w[None, :-1], element)
    err, rel, scalars, _ = native.between_weighted_error(poses[None], ends_i, ends_j, z[None], w[None], element)
    rows, cols = np.arange(600, dtype=np.int64) * 6, np.zeros(100, dtype=np.int64)
    args = (err, scalars, rel, w[None], rows, rows, cols, cols)
    with pytest.raises(ValueError, match="rows_i, cols_i: expected each block's slots < len"):
        native.between_weighted_jacobians_into(*args, np.empty(3599))
    with pytest.raises(ValueError, match="rows_j: expected 600 int64 indices"):
        native.between_weighted_jacobians_into(err, scalars, rel, w[None], rows, rows[:-1], cols, cols, np.empty(3600))
    werr = ordered_matmul(w[None], err.unsqueeze(-1)).squeeze(-1)
    with pytest.raises(ValueError, match="columns < len\\(atb\\)"):
        native.between_weighted_jacobians_into(*args, np.empty(3600), werr, np.zeros(5))
    with pytest.raises(ValueError, match="werr: expected 600 float64 values"):
        native.between_weighted_jacobians_into(*args, np.empty(3600), werr[:, :-1], np.zeros(10))


def test_between_edges_take_the_fused_kernels_where_they_apply(compiled, monkeypatch):
    """One graph with full information weights in float64 without gradients: one call for the
    error and one for the weighted Jacobians; the same values as the separate kernels."""
    from posegraph.model import between

    g = pg.initialize(pg.read_g2o(DATA / "sphere_se3.g2o"))
    problem = pg.build_problem(g)
    cost = problem.between
    calls = []
    real = native._lib
    monkeypatch.setattr(native, "_lib", type("Spy", (), {"__getattr__": lambda self, n: (calls.append(n), getattr(real, n))[1]})())
    with torch.no_grad():
        werr = cost.weighted_block_error()
        jacs, werr2 = cost.weighted_block_jacobians_error()
        assert calls == ["between_weighted_error", "between_weighted_jacobians"] and werr2 is werr
        calls.clear()
        monkeypatch.setattr(between.BetweenEdges, "_fused_inputs", lambda self: None)
        cost.log_cache.clear()
        cost.weighted_cache.clear()
        assert torch.equal(cost.weighted_block_error(), werr)
        assert all(torch.equal(a, b) for a, b in zip(cost.weighted_block_jacobians_error()[0], jacs))
        assert "between_weighted_error" not in calls and "se3_between_log_parts" in calls
    poses = cost.poses.tensor
    cost.poses.update(poses.expand(2, *poses.shape[1:]).clone())  # two graphs: not fused
    monkeypatch.undo()
    assert cost._fused_inputs() is None


@pytest.mark.parametrize("path", ["sphere_se3.g2o", "grid_se2.g2o"])
def test_linearization_lets_between_edges_write_their_blocks_in_place(compiled, monkeypatch, path):
    """One graph in float64: the weighted Jacobians go from the fused kernel straight to A's
    CSR slots, adding up Aᵀb on the way, with the same A, b and Aᵀb, bit for bit, as placing
    the kernel's block tensors and multiplying after."""
    from posegraph.model import between
    from posegraph.solve.optimize import make_optimizer

    def linearized():
        problem = pg.build_problem(pg.initialize(pg.read_g2o(DATA / path)))
        lin = make_optimizer(problem, pg.SolverOptions()).linear_solver.linearization
        with torch.no_grad():
            lin.linearize()
            fused_atb = lin._Atb is not None
            return lin.A_val, lin.b, lin.Atb, fused_atb

    calls = []
    real = native._lib
    monkeypatch.setattr(native, "_lib", type("Spy", (), {"__getattr__": lambda self, n: (calls.append(n), getattr(real, n))[1]})())
    a, b, atb, fused_atb = linearized()
    assert fused_atb and "between_weighted_jacobians_into" in calls and "between_weighted_jacobians" not in calls
    calls.clear()
    monkeypatch.setattr(between.BetweenEdges, "place_weighted_block_jacobians", lambda self, *args: None)
    a_placed, b_placed, atb_placed, fused_atb = linearized()
    assert not fused_atb and "between_weighted_jacobians" in calls and "between_weighted_jacobians_into" not in calls
    assert torch.equal(a, a_placed) and torch.equal(b, b_placed) and torch.equal(atb, atb_placed)


@pytest.mark.parametrize("kind", ["SE3", "SE2"])
def test_retract_at_moves_only_the_free_elements(compiled, kind):
    """One pass: a copy of the elements with the free ones retracted, bit for bit as
    :func:`native.retract`; ``ManifoldArray.retract`` takes it for one batch element."""
    from posegraph.model.variables import ManifoldArray

    gen = torch.Generator().manual_seed(7)
    dof, exp, cls = (6, G.se3_exp, pg.graph.POSE_KINDS["SE3"][0]) if kind == "SE3" else (3, G.se2_exp, pg.graph.POSE_KINDS["SE2"][0])
    x = exp(torch.randn(1, 9, dof, dtype=F64, generator=gen))
    fixed = torch.tensor([True, False, False, True, False, False, False, True, False])
    free = torch.nonzero(~fixed).flatten()
    delta = 0.3 * torch.randn(1, len(free) * dof, dtype=F64, generator=gen)
    out = native.retract_at(x, free, delta)
    expected = x.clone()
    expected[0, free] = native.retract(x[0, free], delta.reshape(len(free), dof))
    assert torch.equal(out, expected)
    moved = ManifoldArray(x, cls, fixed, name="x").retract(delta)
    assert torch.equal(moved.tensor, expected) and torch.equal(moved.fixed, fixed)
    with pytest.raises(ValueError, match="free: expected element indices < len"):
        native.retract_at(x, free + 3, delta)
