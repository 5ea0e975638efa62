"""posegraph's compiled loops (posegraph.native): when they apply, how inputs are shaped, and
that a run gives the same result with or without them (an install without a C compiler)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import posegraph as pg
from posegraph import geometry as G
from posegraph import native

DATA = Path(__file__).resolve().parents[1] / "data"
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
