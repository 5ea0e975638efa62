"""Hand-written SE(3)/SE(2) kernels against Theseus, closed-form references and finite
differences, in float64 and float32, near the identity and near π."""

import math
import os
import warnings

import pytest
import theseus as th
import torch

from posegraph.lie import geometry as G
from posegraph.lie import native

F64 = torch.float64


# -- references -----------------------------------------------------------------------------
def _hat(xi: torch.Tensor) -> torch.Tensor:
    """Lie algebra matrix of an SE2 (x, y, θ) or SE3 (ρ, ω) tangent vector."""
    if xi.shape[-1] == 3:
        m = xi.new_zeros(*xi.shape[:-1], 3, 3)
        m[..., 0, 1], m[..., 1, 0] = -xi[..., 2], xi[..., 2]
        m[..., :2, 2] = xi[..., :2]
        return m
    m = xi.new_zeros(*xi.shape[:-1], 4, 4)
    m[..., :3, :3] = G.skew(xi[..., 3:])
    m[..., :3, 3] = xi[..., :3]
    return m


def _vee(m: torch.Tensor, d: int) -> torch.Tensor:
    if d == 3:
        return torch.stack([m[..., 0, 2], m[..., 1, 2], m[..., 1, 0]], -1)
    return torch.stack(
        [m[..., 0, 3], m[..., 1, 3], m[..., 2, 3], m[..., 2, 1], m[..., 0, 2], m[..., 1, 0]], -1
    )


def reference_jr_inv(xi: torch.Tensor) -> torch.Tensor:
    """``J_r(ξ) = ∫₀¹ exp(−s ad_ξ) ds`` (via one matrix exponential), inverted."""
    d = xi.shape[-1]
    x = _hat(xi)
    cols = []
    for k in range(d):
        e = torch.zeros_like(xi)
        e[..., k] = 1
        ek = _hat(e)
        cols.append(_vee(x @ ek - ek @ x, d))
    ad = torch.stack(cols, -1)
    big = xi.new_zeros(*xi.shape[:-1], 2 * d, 2 * d)
    big[..., :d, :d] = -ad
    big[..., :d, d:] = torch.eye(d, dtype=xi.dtype)
    return torch.linalg.inv(torch.linalg.matrix_exp(big)[..., :d, d:])


def theseus_between(cls, xi, xj, z):
    """Error and Jacobians of Log(Z⁻¹ Xi⁻¹ Xj) with Theseus' own group operations."""
    a, b, m = (cls(tensor=t) for t in (xi, xj, z))
    rel = a.between(b)
    jac = []
    err = m.between(rel).log_map(jacobians=jac)
    return err, -jac[0] @ rel.inverse().adjoint(), jac[0]


def random_se3(n, scale, dtype=F64, gen=None):
    xi = torch.randn(n, 6, dtype=dtype, generator=gen) * scale
    return G.se3_exp(xi)


def random_se2(n, scale, dtype=F64, gen=None):
    xi = torch.randn(n, 3, dtype=dtype, generator=gen) * scale
    return G.se2_exp(xi)


KINDS = {
    "SE3": (th.SE3, random_se3, G.se3_between_error_jacobians, G.se3_retract, 6),
    "SE2": (th.SE2, random_se2, G.se2_between_error_jacobians, G.se2_retract, 3),
}


# -- against Theseus --------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["SE3", "SE2"])
@pytest.mark.parametrize("scale", [1e-6, 1e-2, 0.3, 1.0])
def test_between_matches_theseus(kind, scale):
    cls, rnd, kernel, _, _ = KINDS[kind]
    gen = torch.Generator().manual_seed(1)
    xi, xj, z = rnd(500, 2 * scale, gen=gen), rnd(500, 2 * scale, gen=gen), rnd(500, scale, gen=gen)
    err, ji, jj = kernel(xi, xj, z)
    err_t, ji_t, jj_t = theseus_between(cls, xi, xj, z)
    torch.testing.assert_close(err, err_t, atol=1e-10, rtol=1e-10)
    # Theseus' own small-angle series are coarser than ours (and its SE3 series has a sign
    # slip in one coefficient), hence the looser tolerance; the exact reference is below.
    torch.testing.assert_close(jj, jj_t, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ji, ji_t, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("kind", ["SE3", "SE2"])
def test_float32_close_to_float64(kind):
    _, rnd, kernel, _, _ = KINDS[kind]
    gen = torch.Generator().manual_seed(2)
    xs = [rnd(500, s, gen=gen) for s in (1.0, 1.0, 0.1)]
    ref = kernel(*xs)
    got = kernel(*(x.float() for x in xs))
    for a, b in zip(got, ref):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a.double(), b, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["SE3", "SE2"])
def test_retract_matches_theseus(kind):
    cls, rnd, _, retract, dof = KINDS[kind]
    gen = torch.Generator().manual_seed(3)
    x = rnd(300, 1.0, gen=gen)
    for scale in (0.0, 1e-9, 1e-3, 0.5, 2.0):
        delta = torch.randn(300, dof, dtype=F64, generator=gen) * scale
        torch.testing.assert_close(retract(x, delta), cls(tensor=x).retract(delta).tensor)


# -- exact references -------------------------------------------------------------------------
@pytest.mark.parametrize("dof", [3, 6])
@pytest.mark.parametrize("scale", [0.0, 1e-7, 1e-3, 1e-2, 0.05, 0.3, 1.0])
def test_right_jacobian_inverse_exact(dof, scale):
    gen = torch.Generator().manual_seed(4)
    xi = torch.randn(400, dof, dtype=F64, generator=gen) * scale
    xi[:, : dof // 2] *= 5  # translations larger than angles
    ang = slice(2, 3) if dof == 3 else slice(3, 6)
    norm = xi[:, ang].norm(dim=1, keepdim=True)
    xi[:, ang] *= torch.where(norm > 2.5, 2.5 / norm, torch.ones_like(norm))  # stay below π
    fn = G.se2_right_jacobian_inv if dof == 3 else G.se3_right_jacobian_inv
    torch.testing.assert_close(fn(xi), reference_jr_inv(xi), atol=1e-11, rtol=1e-11)
    ref32 = reference_jr_inv(xi)
    torch.testing.assert_close(fn(xi.float()).double(), ref32, atol=2e-5 * (1 + 5 * scale), rtol=1e-4)


@pytest.mark.parametrize("kind", ["SE3", "SE2"])
@pytest.mark.parametrize("scale", [1e-4, 0.5, 1.5])
def test_between_jacobians_finite_differences(kind, scale):
    _, rnd, kernel, retract, dof = KINDS[kind]
    gen = torch.Generator().manual_seed(5)
    xi, xj, z = rnd(50, scale, gen=gen), rnd(50, scale, gen=gen), rnd(50, scale / 2, gen=gen)
    _, ji, jj = kernel(xi, xj, z)
    h = 1e-6
    for k in range(dof):
        d = torch.zeros(50, dof, dtype=F64)
        d[:, k] = h
        fd_i = (kernel(retract(xi, d), xj, z)[0] - kernel(retract(xi, -d), xj, z)[0]) / (2 * h)
        fd_j = (kernel(xi, retract(xj, d), z)[0] - kernel(xi, retract(xj, -d), z)[0]) / (2 * h)
        torch.testing.assert_close(ji[..., k], fd_i, atol=1e-7, rtol=1e-6)
        torch.testing.assert_close(jj[..., k], fd_j, atol=1e-7, rtol=1e-6)


# -- branches: identity and π -------------------------------------------------------------------
def _rotation(axis, angle, dtype=F64):
    axis = torch.as_tensor(axis, dtype=dtype)
    return G.so3_exp(axis / axis.norm() * angle)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("gap", [0.0, 1e-9, 1e-6, 1e-3])
@pytest.mark.parametrize("axis", [(1.0, 0.0, 0.0), (0.3, -0.5, 0.8), (-1.0, 1.0, 1.0)])
def test_so3_log_near_pi(dtype, gap, axis):
    rot = _rotation(axis, math.pi - gap, dtype)
    omega = G.so3_log(rot)
    assert torch.isfinite(omega).all()
    tol = 1e-9 if dtype == F64 else 2e-3
    torch.testing.assert_close(G.so3_exp(omega), rot, atol=tol, rtol=0)
    assert abs(float(omega.norm()) - (math.pi - gap)) < tol
    # gradients through the near-π branch are finite
    r = rot.clone().requires_grad_(True)
    (G.so3_log(r) * torch.tensor([1.0, 2.0, 3.0], dtype=dtype)).sum().backward()
    assert torch.isfinite(r.grad).all()


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("angle", [0.0, 1e-12, 1e-6, 1e-3, 0.05])
def test_kernels_near_identity_finite_with_gradients(dtype, angle):
    gen = torch.Generator().manual_seed(6)
    omega = torch.randn(3, dtype=F64, generator=gen)
    omega = (omega / omega.norm() * angle).to(dtype)
    xi = torch.cat([torch.tensor([0.2, -0.1, 0.3], dtype=dtype), omega])
    for fn in (G.se3_exp, G.se3_right_jacobian_inv, lambda v: G.se3_log(G.se3_exp(v))):
        v = xi.clone().requires_grad_(True)
        out = fn(v)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(v.grad).all()
    x = G.se3_exp(xi).requires_grad_(True)
    G.se3_log(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    tol = 1e-12 if dtype == F64 else 1e-6
    torch.testing.assert_close(G.se3_log(G.se3_exp(xi)), xi, atol=tol, rtol=tol * 10)
    xi2 = xi[[0, 1, 5]]
    torch.testing.assert_close(G.se2_log(G.se2_exp(xi2)), xi2, atol=tol, rtol=tol * 10)


# -- autograd ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["SE3", "SE2"])
def test_autograd_matches_theseus(kind):
    """Gradients of a weighted error w.r.t. tangent perturbations of the poses and of the
    measurement (``X·Exp(δ)``, δ = 0), through our kernels and through Theseus' ops, agree."""
    cls, rnd, kernel, retract, dof = KINDS[kind]
    gen = torch.Generator().manual_seed(7)
    inputs = [rnd(40, s, gen=gen) for s in (1.0, 1.0, 0.3)]
    w = torch.randn(40, dof, dtype=F64, generator=gen)
    grads = []
    for fn in (lambda *a: kernel(*a)[0], lambda *a: theseus_between(cls, *a)[0]):
        deltas = [torch.zeros(40, dof, dtype=F64, requires_grad=True) for _ in inputs]
        moved = [retract(x, d) for x, d in zip(inputs, deltas)]
        (fn(*moved) * w).pow(2).sum().backward()
        grads.append([d.grad for d in deltas])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-8)


@pytest.mark.parametrize("kind", ["SE3", "SE2"])
def test_gradcheck(kind):
    _, rnd, kernel, _, _ = KINDS[kind]
    gen = torch.Generator().manual_seed(8)
    inputs = tuple(rnd(4, 0.8, gen=gen).requires_grad_(True) for _ in range(3))
    assert torch.autograd.gradcheck(lambda *a: kernel(*a), inputs)


# -- one source, two array kinds: NumPy without gradients, torch otherwise -------------------------
def _route_cases(dtype):
    """Every public kernel with inputs that take each branch: general, near identity, near π."""
    gen = torch.Generator().manual_seed(11)
    xi3 = torch.randn(60, 6, dtype=F64, generator=gen)
    xi3[:20, 3:] *= 1e-4  # small angles
    xi3[20:40, 3:] *= math.pi * (1 - 1e-9) / xi3[20:40, 3:].norm(dim=-1, keepdim=True)  # near π
    xi2 = torch.randn(60, 3, dtype=F64, generator=gen)
    xi2[:20, 2] *= 1e-5
    xi3, xi2 = xi3.to(dtype), xi2.to(dtype)
    x3 = G.se3_exp(xi3)
    x2 = G.se2_exp(xi2)
    m6, m3 = torch.randn(60, 6, 6, dtype=dtype, generator=gen), torch.randn(60, 3, 3, dtype=dtype, generator=gen)
    p3 = G.se3_between_log_parts(x3, x3.flip(0), x3.roll(1, 0))
    p2 = G.se2_between_log_parts(x2, x2.flip(0), x2.roll(1, 0))
    # Z⁻¹ Xᵢ⁻¹ Xⱼ = Xⱼ: the between kernels' every branch (small angle, general, near π)
    i3, i2 = G.se3_exp(torch.zeros_like(xi3)), G.se2_exp(torch.zeros_like(xi2))
    q3, q2 = G.se3_between_log_parts(i3, x3, i3), G.se2_between_log_parts(i2, x2, i2)
    return [
        (G.se3_between_log_parts, (i3, x3, i3)), (G.se3_between_jacobian_from_parts, (q3,)),
        (G.se3_between_error_jacobians, (i3, x3, i3)), (G.se3_mul_adjoint_inverse, (m6, q3.rel)),
        (G.se2_between_log_parts, (i2, x2, i2)), (G.se2_between_jacobian_from_parts, (q2,)),
        (G.se2_between_error_jacobians, (i2, x2, i2)),
        (G.skew, (xi3[:, 3:],)), (G.so3_exp, (xi3[:, 3:],)), (G.so3_log, (x3[..., :3],)),
        (G.so3_right_jacobian_inv, (xi3[:, 3:],)),
        (G.se3_exp, (xi3,)), (G.se3_log, (x3,)), (G.se3_right_jacobian_inv, (xi3,)), (G.se3_adjoint, (x3,)),
        (G.se3_inverse, (x3,)), (G.se3_compose, (x3, x3.flip(0))), (G.se3_retract, (x3, xi3 * 0.1)),
        (G.se3_between_error, (x3, x3.flip(0), x3.roll(1, 0))),
        (G.se3_between_error_jacobians, (x3, x3.flip(0), x3.roll(1, 0))),
        (G.se3_between_parts, (x3, x3.flip(0), x3.roll(1, 0))),
        (G.se3_between_log_parts, (x3, x3.flip(0), x3.roll(1, 0))),
        (G.se3_between_jacobian_from_parts, (p3,)), (G.se3_mul_adjoint_inverse, (m6, x3)),
        (G.se2_exp, (xi2,)), (G.se2_log, (x2,)), (G.se2_right_jacobian_inv, (xi2,)), (G.se2_adjoint, (x2,)),
        (G.se2_inverse, (x2,)), (G.se2_compose, (x2, x2.flip(0))), (G.se2_retract, (x2, xi2 * 0.1)),
        (G.se2_between_error, (x2, x2.flip(0), x2.roll(1, 0))),
        (G.se2_between_error_jacobians, (x2, x2.flip(0), x2.roll(1, 0))),
        (G.se2_between_parts, (x2, x2.flip(0), x2.roll(1, 0))),
        (G.se2_between_log_parts, (x2, x2.flip(0), x2.roll(1, 0))),
        (G.se2_between_jacobian_from_parts, (p2,)), (G.se2_mul_adjoint_inverse, (m3, x2)),
    ]


def _leaves(out):
    return [t for o in out for t in _leaves(o)] if isinstance(out, tuple) else [out]


def _torch_route(monkeypatch):
    monkeypatch.setattr(native, "ENABLED", False)
    monkeypatch.setattr(G, "_numpy_route", lambda tensors: False)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_numpy_and_compiled_routes_equal_torch_route(dtype, monkeypatch):
    """Each public kernel gives the same tensors (type, dtype, shape, values) whether it runs
    compiled (float64 without gradients; the default), on NumPy (no gradient, small CPU
    tensors) or as torch operations."""
    cases = _route_cases(dtype)
    assert {fn.__name__ for fn, _ in cases} == set(G.__all__) - {"BetweenLogParts"}
    with torch.no_grad():
        default = [fn(*args) for fn, args in cases]
        monkeypatch.setattr(native, "ENABLED", False)
        on_numpy = [fn(*args) for fn, args in cases]
        _torch_route(monkeypatch)
        on_torch = [fn(*args) for fn, args in cases]
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == F64 else dict(rtol=2e-5, atol=2e-5)
    for route in (default, on_numpy):
        for (fn, _), a, b in zip(cases, route, on_torch):
            assert type(a) is type(b), fn.__name__
            for x, y in zip(_leaves(a), _leaves(b)):
                assert isinstance(x, torch.Tensor) and x.dtype == dtype and x.shape == y.shape, fn.__name__
                torch.testing.assert_close(x, y, **tol, msg=fn.__name__)


def _native_required() -> None:
    """The compiled loops are built by the install; only an install without a C compiler
    lacks them (CI must not)."""
    if not native.AVAILABLE:
        if os.environ.get("CI"):
            pytest.fail("posegraph's compiled extensions did not build (setup.py)")
        pytest.skip("posegraph was installed without its compiled extensions")


COMPILED = {
    "se3_between_log_parts": G.se3_between_log_parts, "se3_between_jacobian_from_parts": G.se3_between_jacobian_from_parts,
    "se3_mul_adjoint_inverse": G.se3_mul_adjoint_inverse, "se3_retract": G.se3_retract,
    "se2_between_log_parts": G.se2_between_log_parts, "se2_between_jacobian_from_parts": G.se2_between_jacobian_from_parts,
    "se2_mul_adjoint_inverse": G.se2_mul_adjoint_inverse, "se2_retract": G.se2_retract,
}


def test_compiled_route_taken_for_float64_without_gradients(monkeypatch):
    """The hot kernels call the compiled loops on float64 CPU tensors with no gradient to
    record — at any size — and never under autograd, in float32 or when turned off."""
    _native_required()
    calls = []
    monkeypatch.setattr(native, "_lib", _SpyLib(native._lib, calls))
    cases = {fn.__name__: args for fn, args in _route_cases(F64)}
    big = G.se3_exp(torch.randn(G.NUMPY_MAX_ELEMENTS // 12 + 10, 6, dtype=F64))
    for name, fn in COMPILED.items():
        calls.clear()
        fn(*cases[name])
        assert calls, name
    calls.clear()
    G.se3_between_error_jacobians(big, big.roll(1, 0), big)  # composed of compiled kernels, large
    assert calls == ["se3_between_log_parts", "se3_jr_inv", "se3_mul_adjoint_inverse"]
    calls.clear()
    x = cases["se3_retract"][0].clone().requires_grad_(True)
    G.se3_retract(x, cases["se3_retract"][1])  # autograd records it
    G.se3_retract(*(t.float() for t in cases["se3_retract"]))
    monkeypatch.setattr(native, "ENABLED", False)
    G.se3_retract(*cases["se3_retract"])
    assert calls == []


class _SpyLib:
    """The compiled module, recording the names of the functions called."""

    def __init__(self, lib, calls):
        self._lib, self._calls = lib, calls

    def __getattr__(self, name):
        fn = getattr(self._lib, name)

        def call(*args):
            self._calls.append(name)
            return fn(*args)

        return call


def test_compiled_route_checks_buffer_lengths():
    _native_required()
    x = torch.zeros(4, 3, 4, dtype=F64)
    with pytest.raises(ValueError, match="delta: expected 24 float64 values"):
        native._lib.se3_retract(x.numpy(), torch.zeros(3, 6, dtype=F64).numpy(), torch.empty_like(x).numpy())


def test_compiled_route_keeps_gradients_and_transforms():
    """Under autograd and torch.func the kernels are torch operations: gradients as before."""
    x = G.se3_exp(torch.randn(5, 6, dtype=F64))
    z = G.se3_exp(torch.randn(5, 6, dtype=F64))
    d = torch.zeros(5, 6, dtype=F64, requires_grad=True)
    err = G.se3_between_error(G.se3_retract(x, d), x.roll(1, 0), z)
    (grad,) = torch.autograd.grad(err.square().sum(), d)
    jac = torch.func.jacrev(lambda v: G.se3_between_error(G.se3_retract(x, v), x.roll(1, 0), z))(d.detach())
    torch.testing.assert_close(grad, (2 * err.detach()[:, :, None, None] * jac).sum((0, 1)))


def test_numpy_route_taken_only_where_it_may_be():
    x = G.se3_exp(torch.randn(10, 6, dtype=F64))
    assert G._numpy_route([x, x])
    assert not G._numpy_route([x, x.float()])  # mixed dtypes: torch promotes
    assert not G._numpy_route([x.half()])
    assert not G._numpy_route([torch.zeros(G.NUMPY_MAX_ELEMENTS + 1, dtype=F64)])
    y = x.clone().requires_grad_(True)
    assert not G._numpy_route([x, y])  # autograd records it
    with torch.no_grad():
        assert G._numpy_route([x, y])


def test_numpy_route_silent_on_non_finite_inputs():
    """NaN/inf in, NaN/inf out, without NumPy's floating-point warnings (as torch)."""
    x = G.se3_exp(torch.randn(5, 6, dtype=F64))
    x[1, 0, 0] = float("nan")
    x[2, 1, 3] = float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        err, ji, jj = G.se3_between_error_jacobians(x, x.roll(1, 0), x)
    assert not torch.isfinite(err[1]).all() and torch.isfinite(err[0]).all() and torch.isfinite(jj[4]).all()
