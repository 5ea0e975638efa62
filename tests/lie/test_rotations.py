"""Tests for posegraph.lie: stable rotation <-> quaternion conversions.

Choice of test points (where Shepperd's pivot could tie)
--------------------------------------------------------
The pivot is argmax(trace, R00, R11, R22).  Within a pivot region the
conversion is a smooth function of the 9 matrix entries, but two things are
discontinuous and make central finite differences (gradcheck) meaningless
if a perturbation crosses them:

* the canonical sign ``w >= 0``: it flips where ``w = 0`` (angle pi), and
* pivot switches, where two candidates tie.

Cases used here:

* identity and 1e-9 rad from it (about x, y, z, diagonal): trace = 3 vs
  R_kk = 1, w = 1; no tie, no sign issue -> default gradcheck step.
* pi -/+ 1e-9 rad about x (y, z): pivot x with margin 2 over the others,
  but |w| = 5e-10, so a default step (1e-6) would cross w = 0.  We use a
  finite-difference step of 1e-10 (moves w by <= 2.5e-11 < 5e-10).
* about the diagonal (1,1,1)/sqrt(3): R00 = R11 = R22 for *every* angle,
  i.e. the x/y/z pivots tie exactly (harmless near identity, where trace
  wins by 2).  Near pi the test point is therefore 1e-9 away from the tie
  *in the axis too*: rotation vector (pi -/+ 1e-9) n + 1e-9 u with u
  orthogonal to n, which separates R00, R11, R22 by >= ~1.6e-9, more than
  the 1e-10 step can change them.
* exactly identity / exactly pi (x, y, z, diagonal; the diagonal one has
  the 3-way tie and w = 0): only gradient finiteness is asserted -- the
  returned gradient is a one-sided limit (see the module docstring).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from typing import Callable, Dict

import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

import theseus as th

from posegraph.lie.rotations import (
    g2o_to_se3,
    matrix_to_quaternion,
    quaternion_to_matrix,
    se2_to_xytheta,
    se3_to_g2o,
    xytheta_to_se2,
)
from posegraph.lie.theseus_patch import is_theseus_patched, patch_theseus, theseus_patched, unpatch_theseus

F64 = torch.float64
F32 = torch.float32
AXES = {
    "x": (1.0, 0.0, 0.0),
    "y": (0.0, 1.0, 0.0),
    "z": (0.0, 0.0, 1.0),
    "diag": (1.0, 1.0, 1.0),
}
# Unit vector orthogonal to the diagonal axis, used to break its x/y/z tie.
TIE_BREAKER = (1.0 / math.sqrt(2.0), -1.0 / math.sqrt(2.0), 0.0)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def unit(v) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=F64)
    return t / t.norm()


def hat(w: torch.Tensor) -> torch.Tensor:
    z = torch.zeros((), dtype=w.dtype)
    return torch.stack(
        [
            torch.stack([z, -w[2], w[1]]),
            torch.stack([w[2], z, -w[0]]),
            torch.stack([-w[1], w[0], z]),
        ]
    )


def expm(rotvec: torch.Tensor) -> torch.Tensor:
    """Rotation matrix from a rotation vector (float64 matrix exponential)."""
    return torch.linalg.matrix_exp(hat(rotvec.to(F64)))


def rot(axis, angle: float) -> torch.Tensor:
    return expm(angle * unit(axis))


def exact_pi(axis) -> torch.Tensor:
    """Rotation by exactly pi: 2 n n^T - I (matrix_exp would leave sin(pi) ~ 1e-16)."""
    n = unit(axis)
    return 2.0 * torch.outer(n, n) - torch.eye(3, dtype=F64)


def near_special_cases() -> Dict[str, torch.Tensor]:
    """Float64 test points 1e-9 from identity / pi (see module docstring)."""
    cases = {}
    for name, axis in AXES.items():
        cases[f"id+1e-9 {name}"] = rot(axis, 1e-9)
    for name in ("x", "y", "z"):
        cases[f"pi-1e-9 {name}"] = rot(AXES[name], math.pi - 1e-9)
        cases[f"pi+1e-9 {name}"] = rot(AXES[name], math.pi + 1e-9)
    n, u = unit(AXES["diag"]), unit(TIE_BREAKER)
    for sign, label in ((-1.0, "-"), (1.0, "+")):
        cases[f"pi{label}1e-9 diag"] = expm((math.pi + sign * 1e-9) * n + 1e-9 * u)
    return cases


def exact_special_cases() -> Dict[str, torch.Tensor]:
    cases = {"identity": torch.eye(3, dtype=F64)}
    for name, axis in AXES.items():
        cases[f"pi {name}"] = exact_pi(axis)
    return cases


def all_special_cases() -> Dict[str, torch.Tensor]:
    return {**exact_special_cases(), **near_special_cases()}


def random_rotations(n: int, seed: int, dtype=F64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 4, generator=g, dtype=F64)
    return quaternion_to_matrix(q).to(dtype)


def pivot_of(R: torch.Tensor) -> torch.Tensor:
    d = torch.diagonal(R, dim1=-2, dim2=-1)
    return torch.argmax(torch.cat([d.sum(-1, keepdim=True), d], -1), -1)


def well_separated_rotations(n: int, seed: int) -> torch.Tensor:
    """Random rotations with |w| and the pivot margin both > 0.05."""
    R = random_rotations(20 * n, seed)
    d = torch.diagonal(R, dim1=-2, dim2=-1)
    cand = torch.cat([d.sum(-1, keepdim=True), d], -1).sort(-1, descending=True).values
    w = matrix_to_quaternion(R)[:, 0]
    ok = (w.abs() > 0.05) & (cand[:, 0] - cand[:, 1] > 0.05)
    return R[ok][:n]


def weighted_backward(fn: Callable[[torch.Tensor], torch.Tensor], R: torch.Tensor) -> torch.Tensor:
    """Gradient of a generic weighted sum of fn(R) w.r.t. R."""
    R = R.detach().clone().requires_grad_(True)
    out = fn(R)
    weights = torch.linspace(-1.3, 2.1, out.numel(), dtype=out.dtype).reshape(out.shape)
    (out * weights).sum().backward()
    return R.grad


def same_up_to_sign(a: torch.Tensor, b: torch.Tensor, atol: float) -> bool:
    plus = (a - b).abs().amax(-1)
    minus = (a + b).abs().amax(-1)
    return bool((torch.minimum(plus, minus) <= atol).all())


@pytest.fixture(autouse=True)
def _restore_theseus_patch_state():
    """Leave Theseus patched/unpatched exactly as each test found it."""
    was_patched = is_theseus_patched()
    yield
    if was_patched:
        patch_theseus()
    else:
        unpatch_theseus()


# ---------------------------------------------------------------------------
# matrix_to_quaternion: gradients
# ---------------------------------------------------------------------------


def test_gradcheck_random_rotations_f64():
    R = well_separated_rotations(16, seed=1)
    pivots = set(pivot_of(R).tolist())
    assert pivots == {0, 1, 2, 3}, f"every Shepperd branch must be exercised, got {pivots}"
    assert gradcheck(matrix_to_quaternion, (R.clone().requires_grad_(True),))


@pytest.mark.parametrize("name", list(near_special_cases()))
def test_gradcheck_near_identity_and_pi_f64(name):
    R = near_special_cases()[name]
    eps = 1e-6 if name.startswith("id") else 1e-10  # see module docstring
    assert gradcheck(matrix_to_quaternion, (R.clone().requires_grad_(True),), eps=eps)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("name", list(all_special_cases()))
def test_finite_forward_and_backward(name, dtype):
    R = all_special_cases()[name].to(dtype)
    q = matrix_to_quaternion(R)
    assert torch.isfinite(q).all()
    assert abs(q.norm().item() - 1.0) < (1e-6 if dtype == F32 else 1e-12)
    grad = weighted_backward(matrix_to_quaternion, R)
    assert torch.isfinite(grad).all(), grad


@pytest.mark.parametrize("name", list(all_special_cases()))
def test_f32_forward_matches_f64(name):
    # Same input values in both precisions (upcast of the float32 matrix), so
    # the pivot and the sign of w are decided identically.
    R32 = all_special_cases()[name].to(F32)
    q32 = matrix_to_quaternion(R32)
    q64 = matrix_to_quaternion(R32.to(F64))
    assert (q32.to(F64) - q64).abs().max().item() <= 1e-6


def test_f32_random_matches_f64():
    R32 = random_rotations(1000, seed=2, dtype=F32)
    q32 = matrix_to_quaternion(R32)
    q64 = matrix_to_quaternion(R32.to(F64))
    assert (q32.to(F64) - q64).abs().max().item() <= 1e-6
    assert torch.isfinite(weighted_backward(matrix_to_quaternion, R32)).all()


def test_known_values_and_sign_convention():
    s = math.sqrt(0.5)
    assert torch.allclose(matrix_to_quaternion(torch.eye(3, dtype=F64)), torch.tensor([1.0, 0, 0, 0], dtype=F64))
    assert torch.allclose(
        matrix_to_quaternion(rot(AXES["z"], math.pi / 2)), torch.tensor([s, 0, 0, s], dtype=F64), atol=1e-15
    )
    # Exactly pi: w == 0, pivot component positive.
    assert torch.equal(matrix_to_quaternion(exact_pi(AXES["x"])), torch.tensor([0.0, 1, 0, 0], dtype=F64))
    assert torch.equal(matrix_to_quaternion(exact_pi((0.0, -1.0, 0.0))), torch.tensor([0.0, 0, 1, 0], dtype=F64))
    q = matrix_to_quaternion(exact_pi(AXES["diag"]))  # 3-way tie: x pivot, positive
    assert q[0] == 0 and torch.allclose(q[1:], unit(AXES["diag"]), atol=1e-15)
    # Just past pi the canonical (w >= 0) quaternion is the other sign.
    q = matrix_to_quaternion(rot(AXES["x"], math.pi + 1e-3))
    assert q[0] > 0 and q[1] < 0
    # w >= 0 everywhere.
    assert (matrix_to_quaternion(random_rotations(10000, seed=3))[:, 0] >= 0).all()


def test_gradient_at_pi_is_one_sided_limit():
    """At exactly pi the gradient equals the limit from angles below pi."""
    g_exact = weighted_backward(matrix_to_quaternion, exact_pi(AXES["x"]))
    g_below = weighted_backward(matrix_to_quaternion, rot(AXES["x"], math.pi - 1e-9))
    assert torch.allclose(g_exact, g_below, atol=1e-8)


# ---------------------------------------------------------------------------
# Round trips, batching, quaternion_to_matrix
# ---------------------------------------------------------------------------


def test_round_trip_matrix_quaternion_matrix_f64():
    R = torch.cat([random_rotations(2000, seed=4), torch.stack(list(all_special_cases().values()))])
    R2 = quaternion_to_matrix(matrix_to_quaternion(R))
    assert (R2 - R).abs().max().item() <= 1e-12


def test_round_trip_quaternion_matrix_quaternion():
    g = torch.Generator().manual_seed(5)
    q = torch.randn(2000, 4, generator=g, dtype=F64) * torch.rand(2000, 1, generator=g, dtype=F64) * 10
    q2 = matrix_to_quaternion(quaternion_to_matrix(q))
    assert same_up_to_sign(q2, q / q.norm(dim=-1, keepdim=True), atol=1e-12)
    assert (q2[:, 0] >= 0).all()


def test_batched_equals_one_at_a_time():
    """Mixed batch (exact/near identity and pi, ties, random) == per-element calls."""
    for dtype in (F64, F32):
        cases = list(all_special_cases().values()) + list(random_rotations(16, seed=6))
        R = torch.stack(cases).to(dtype).requires_grad_(True)
        q = matrix_to_quaternion(R)
        weights = torch.linspace(-1.3, 2.1, 4, dtype=dtype)
        (q * weights).sum().backward()
        for i in range(R.shape[0]):
            Ri = R[i].detach().clone().requires_grad_(True)
            qi = matrix_to_quaternion(Ri)
            (qi * weights).sum().backward()
            assert torch.equal(q[i].detach(), qi.detach()), i
            assert torch.equal(R.grad[i], Ri.grad), i
        assert torch.isfinite(R.grad).all()


def test_leading_batch_dims():
    R = random_rotations(24, seed=7).reshape(2, 3, 4, 3, 3)
    q = matrix_to_quaternion(R)
    assert q.shape == (2, 3, 4, 4)
    assert torch.equal(q.reshape(24, 4), matrix_to_quaternion(R.reshape(24, 3, 3)))
    assert quaternion_to_matrix(q).shape == (2, 3, 4, 3, 3)


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        matrix_to_quaternion(torch.zeros(3, 4))
    with pytest.raises(ValueError):
        quaternion_to_matrix(torch.ones(3))


@pytest.mark.parametrize("dtype", [F32, F64])
def test_zero_quaternion_raises(dtype):
    with pytest.raises(ValueError, match="zero"):
        quaternion_to_matrix(torch.zeros(4, dtype=dtype))
    batch = torch.tensor([[1.0, 0, 0, 0], [0, 0, 0, 0]], dtype=dtype)
    with pytest.raises(ValueError, match="1 quaternion"):
        quaternion_to_matrix(batch)
    subnormal = torch.finfo(dtype).tiny / 4
    with pytest.raises(ValueError):
        quaternion_to_matrix(torch.tensor([subnormal, 0, 0, 0], dtype=dtype))


def test_non_unit_quaternion_is_normalized():
    g = torch.Generator().manual_seed(8)
    q = torch.randn(100, 4, generator=g, dtype=F64)
    R = quaternion_to_matrix(q / q.norm(dim=-1, keepdim=True))
    for scale in (1e-200, 1e-6, 3.7, 1e200):
        assert (quaternion_to_matrix(q * scale) - R).abs().max().item() <= 1e-14
    assert (quaternion_to_matrix(-q) - R).abs().max().item() <= 1e-15
    # Orthonormal with det +1.
    eye = torch.eye(3, dtype=F64).expand(100, 3, 3)
    assert (R @ R.transpose(-1, -2) - eye).abs().max().item() <= 1e-14
    assert (torch.linalg.det(R) - 1).abs().max().item() <= 1e-14


def test_quaternion_to_matrix_gradcheck():
    g = torch.Generator().manual_seed(9)
    q = (torch.randn(8, 4, generator=g, dtype=F64) * 2.0).requires_grad_(True)
    assert gradcheck(quaternion_to_matrix, (q,))


def test_quaternion_to_matrix_matches_theseus():
    g = torch.Generator().manual_seed(10)
    q = torch.randn(50, 4, generator=g, dtype=F64)
    q = q / q.norm(dim=-1, keepdim=True)
    R_th = th.SO3(quaternion=q).tensor
    assert (quaternion_to_matrix(q) - R_th).abs().max().item() <= 1e-14


# ---------------------------------------------------------------------------
# Performance requirement
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F64])
def test_one_million_conversions_are_vectorized(dtype):
    """1e6 rotations convert in about 0.13 s here; the bound only catches a per-rotation Python
    loop (tens of seconds), not machine load."""
    R = random_rotations(1_000_000, seed=11, dtype=dtype)
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        q = matrix_to_quaternion(R)
        times.append(time.perf_counter() - t0)
    assert q.shape == (1_000_000, 4)
    assert min(times) <= 5.0, f"best of 3: {min(times):.3f} s"


# ---------------------------------------------------------------------------
# SE3 <-> g2o, SE2 <-> (x, y, theta)
# ---------------------------------------------------------------------------


def random_se3(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    R = random_rotations(n, seed)
    t = torch.randn(n, 3, 1, generator=g, dtype=F64) * 5
    return torch.cat([R, t], dim=-1)


def test_se3_g2o_round_trip():
    special = torch.stack(list(all_special_cases().values()))
    special = torch.cat([special, torch.ones(special.shape[0], 3, 1, dtype=F64)], -1)
    T = torch.cat([random_se3(500, seed=12), special])
    v = se3_to_g2o(T)
    assert v.shape == (T.shape[0], 7)
    assert (g2o_to_se3(v) - T).abs().max().item() <= 1e-12
    assert (v[:, 6] >= 0).all()  # qw >= 0


def test_g2o_layout_and_normalization():
    s = math.sqrt(0.5)
    T = torch.cat([rot(AXES["z"], math.pi / 2), torch.tensor([[1.0], [2.0], [3.0]], dtype=F64)], -1)
    expected = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, s, s], dtype=F64)
    assert torch.allclose(se3_to_g2o(T), expected, atol=1e-15)
    # Non-unit g2o quaternion with qw < 0: same pose, canonicalized on the way back.
    v = torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, -2 * s, -2 * s], dtype=F64)
    assert torch.allclose(g2o_to_se3(v), T, atol=1e-15)
    assert torch.allclose(se3_to_g2o(g2o_to_se3(v)), expected, atol=1e-15)
    # Agrees with Theseus' own SE3 quaternion layout [x y z qw qx qy qz].
    th_v = th.SE3(tensor=T.unsqueeze(0)).to_x_y_z_quaternion()[0]
    assert torch.allclose(th_v[[0, 1, 2, 4, 5, 6, 3]], expected, atol=1e-12)
    with pytest.raises(ValueError):
        g2o_to_se3(torch.tensor([1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 0.0], dtype=F64))


def test_se2_round_trip_and_layout():
    g = torch.Generator().manual_seed(13)
    v = torch.rand(1000, 3, generator=g, dtype=F64) * 2 - 1
    v[:, :2] *= 10
    v[:, 2] *= math.pi * (1 - 1e-12)
    t = xytheta_to_se2(v)
    assert (se2_to_xytheta(t) - v).abs().max().item() <= 1e-12
    # Same layout as Theseus' SE2 tensor [x, y, cos, sin].
    assert (th.SE2(x_y_theta=v).tensor - t).abs().max().item() <= 1e-15
    # theta = pi round trips to pi; non-unit (cos, sin) only sets the direction.
    t_pi = torch.tensor([0.5, -1.0, -3.0, 0.0], dtype=F64)
    assert torch.allclose(se2_to_xytheta(t_pi), torch.tensor([0.5, -1.0, math.pi], dtype=F64))
    grad = weighted_backward(se2_to_xytheta, t)
    assert torch.isfinite(grad).all()


# ---------------------------------------------------------------------------
# Theseus patch
# ---------------------------------------------------------------------------


def test_patch_is_idempotent_and_reversible():
    so3_orig = th.SO3.__dict__["to_quaternion"]
    se3_orig = th.SE3.__dict__["to_x_y_z_quaternion"]
    unpatch_theseus()  # harmless when not patched
    assert not is_theseus_patched()
    patch_theseus()
    patch_theseus()
    assert is_theseus_patched()
    assert th.SO3.to_quaternion is not so3_orig
    unpatch_theseus()
    assert not is_theseus_patched()
    assert th.SO3.__dict__["to_quaternion"] is so3_orig
    assert th.SE3.__dict__["to_x_y_z_quaternion"] is se3_orig
    unpatch_theseus()
    assert th.SO3.__dict__["to_quaternion"] is so3_orig


def test_patch_theseus_at_the_top_level():
    import posegraph as pg

    assert pg.patch_theseus is patch_theseus and pg.unpatch_theseus is unpatch_theseus
    assert {"patch_theseus", "unpatch_theseus"} <= set(pg.__all__)
    so3_orig = th.SO3.__dict__["to_quaternion"]
    pg.patch_theseus()
    try:
        assert is_theseus_patched()
    finally:
        pg.unpatch_theseus()
    assert th.SO3.__dict__["to_quaternion"] is so3_orig


def test_context_manager_nests_and_restores():
    so3_orig = th.SO3.__dict__["to_quaternion"]
    with theseus_patched():
        assert is_theseus_patched()
        with theseus_patched():
            assert is_theseus_patched()
        assert is_theseus_patched()  # inner exit keeps the outer patch
    assert not is_theseus_patched()
    assert th.SO3.__dict__["to_quaternion"] is so3_orig
    with pytest.raises(RuntimeError):
        with theseus_patched():
            raise RuntimeError("boom")
    assert th.SO3.__dict__["to_quaternion"] is so3_orig


def so3_quat(R: torch.Tensor) -> torch.Tensor:
    return th.SO3(tensor=R.unsqueeze(0)).to_quaternion()


def se3_quat(R: torch.Tensor) -> torch.Tensor:
    t = torch.tensor([[0.5], [-1.0], [2.0]], dtype=R.dtype)
    return th.SE3(tensor=torch.cat([R, t], -1).unsqueeze(0)).to_x_y_z_quaternion()


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("name", list(all_special_cases()))
def test_patched_theseus_gradients_finite(name, dtype):
    R = all_special_cases()[name].to(dtype)
    with theseus_patched():
        q = so3_quat(R)
        assert q.shape == (1, 4)
        assert torch.equal(q[0], matrix_to_quaternion(R))
        assert torch.isfinite(weighted_backward(so3_quat, R)).all()
        v = se3_quat(R)
        assert v.shape == (1, 7)
        assert torch.equal(v[0, 3:], matrix_to_quaternion(R))
        assert torch.isfinite(weighted_backward(se3_quat, R)).all()


@pytest.mark.parametrize("name", list(near_special_cases()))
def test_patched_theseus_gradcheck(name):
    R = near_special_cases()[name]
    eps = 1e-6 if name.startswith("id") else 1e-10
    with theseus_patched():
        assert gradcheck(lambda x: so3_quat(x), (R.clone().requires_grad_(True),), eps=eps)


def test_patched_theseus_matches_original_on_generic_rotations():
    """Same values/semantics as the original away from pi (and more accurate)."""
    g = torch.Generator().manual_seed(14)
    q_true = torch.randn(200, 4, generator=g, dtype=F64)
    q_true = q_true / q_true.norm(dim=-1, keepdim=True) * torch.sign(q_true[:, :1])
    R = quaternion_to_matrix(q_true)
    T = torch.cat([R, torch.ones(200, 3, 1, dtype=F64)], -1)
    q_orig = th.SO3(tensor=R).to_quaternion()
    v_orig = th.SE3(tensor=T).to_x_y_z_quaternion()
    with theseus_patched():
        q_new = th.SO3(tensor=R).to_quaternion()
        v_new = th.SE3(tensor=T).to_x_y_z_quaternion()
    assert q_new.shape == q_orig.shape == (200, 4)
    assert v_new.shape == v_orig.shape == (200, 7)
    # The original divides by w, losing digits for small w (~3e-12 here).
    assert (q_new - q_orig).abs().max().item() <= 1e-9
    assert (v_new - v_orig).abs().max().item() <= 1e-9
    assert (q_new - q_true).abs().max().item() <= 1e-14
    assert (v_new[:, 3:] - q_true).abs().max().item() <= 1e-14


# ---------------------------------------------------------------------------
# Regression: Theseus exp_map / log_map gradients (finite today; keep them so)
# ---------------------------------------------------------------------------

EXP_LOG_POINTS = {
    "identity": [0.0, 0.0, 0.0],
    "1e-9": [1e-9, -2e-9, 0.5e-9],
    "pi-1e-6 x": [math.pi - 1e-6, 0.0, 0.0],
    "pi x": [math.pi, 0.0, 0.0],
    "pi-1e-6 diag": [(math.pi - 1e-6) / math.sqrt(3.0)] * 3,
    "pi diag": [math.pi / math.sqrt(3.0)] * 3,
}


@pytest.mark.parametrize("patched", [False, True])
@pytest.mark.parametrize("group", ["SO3", "SE3"])
@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("point", list(EXP_LOG_POINTS))
def test_theseus_exp_log_gradients_finite(point, dtype, group, patched):
    G = getattr(th, group)
    omega = torch.tensor(EXP_LOG_POINTS[point], dtype=dtype)
    tangent = omega if group == "SO3" else torch.cat([torch.tensor([0.1, -0.2, 0.3], dtype=dtype), omega])
    ctx = theseus_patched() if patched else contextlib.nullcontext()
    with ctx:
        grad_exp = weighted_backward(lambda x: G.exp_map(x.unsqueeze(0)).tensor, tangent)
        assert torch.isfinite(grad_exp).all()
        T = G.exp_map(tangent.unsqueeze(0)).tensor[0].detach()
        grad_log = weighted_backward(lambda x: G(tensor=x.unsqueeze(0)).log_map(), T)
        assert torch.isfinite(grad_log).all()
        if point == "identity":
            eye = torch.eye(3, dtype=dtype)
            T_id = eye if group == "SO3" else torch.cat([eye, torch.zeros(3, 1, dtype=dtype)], -1)
            assert torch.isfinite(weighted_backward(lambda x: G(tensor=x.unsqueeze(0)).log_map(), T_id)).all()



# ---------------------------------------------------------------------------
# The rotation rule: check_rotations, printed_precision, nearest_rotation
# ---------------------------------------------------------------------------


def test_rule_uses_rotations_within_precision_as_given():
    from posegraph.lie.rotation_rule import check_rotations

    R = random_rotations(50, seed=21)
    R[3] += 1e-8
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_rotations(R, "matrix", str) is R
        arr = R.numpy()
        assert check_rotations(arr, "matrix", str) is arr
        R32 = R.float() + 1e-5
        assert check_rotations(R32, "matrix", str) is R32  # float32: 1e-4


def test_rule_makes_rotations_beyond_precision_with_one_warning_and_keeps_type():
    from posegraph.lie.rotation_rule import check_rotations

    R = random_rotations(6, seed=22)
    bad = R.clone()
    bad[1] *= 3.0
    bad[4] = bad[4] @ torch.tensor([[1.0, 0.2, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=F64)
    with pytest.warns(UserWarning, match=r"m 1: max\(\|RᵀR − I\|, \|det R − 1\|\) = 26, .*2 rotations in all") as rec:
        out = check_rotations(bad, "matrix", lambda k: f"m {k}")
    assert len(rec) == 1
    assert isinstance(out, torch.Tensor) and out.dtype == F64 and out is not bad
    torch.testing.assert_close(out[1], R[1], atol=1e-15, rtol=0)  # 3·R → R
    torch.testing.assert_close(out[4] @ out[4].T, torch.eye(3, dtype=F64), atol=1e-15, rtol=0)
    assert torch.equal(out[[0, 2, 3, 5]], bad[[0, 2, 3, 5]])  # the others as given
    assert torch.equal(bad[1], 3.0 * R[1])  # the input is not modified
    with pytest.warns(UserWarning):
        arr = check_rotations(bad.numpy(), "matrix", str)
    assert isinstance(arr, np.ndarray)
    np.testing.assert_array_equal(arr, out.numpy())
    q = torch.tensor([[0.0, 0.0, 0.0, 2.0], [0.0, 0.6, 0.0, 0.8]], dtype=torch.float32)
    with pytest.warns(UserWarning, match="precision 0.0001 of float32"):
        qn = check_rotations(q, "quaternion", str)
    assert qn.dtype == torch.float32 and qn[0].tolist() == [0.0, 0.0, 0.0, 1.0] and torch.equal(qn[1], q[1])


@pytest.mark.parametrize(
    "kind,value,words",
    [
        ("matrix", torch.diag(torch.tensor([1.0, -1.0, 1.0], dtype=F64)), "det R = -1 (a reflection)"),
        ("matrix", torch.zeros(3, 3, dtype=F64), "det R = 0 (singular)"),
        ("matrix", torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, float("nan")]], dtype=F64), "non-finite numbers"),
        ("quaternion", torch.zeros(4, dtype=F64), "the zero quaternion"),
        ("quaternion", torch.tensor([0.0, 0.0, 5e-324, 0.0], dtype=F64), "the zero quaternion"),
        ("SE2", torch.tensor([1.0, 2.0, 0.0, 0.0], dtype=F64), "received (0, 0)"),
    ],
    ids=["reflection", "singular", "nan", "zero-quaternion", "subnormal-quaternion", "zero-se2"],
)
def test_rule_refuses_what_cannot_be_made_a_rotation(kind, value, words):
    from posegraph.errors import G2oFormatError, PoseGraphError
    from posegraph.lie.rotation_rule import check_rotations

    batch = torch.stack([value, value])
    with pytest.raises(G2oFormatError) as info:
        check_rotations(batch, kind, lambda k: f"item {k}", error=G2oFormatError, path="f.g2o", lines=[7, 8])
    assert isinstance(info.value, PoseGraphError)
    assert str(info.value).startswith("f.g2o:7: item 0: expected a rotation"), str(info.value)
    assert words in str(info.value)


def test_printed_precision_examples():
    from posegraph.lie.rotation_rule import printed_precision

    quaternions = [
        ["0.1234", "-0.5678", "0.0000", "0.8140"],  # 4 decimals: 2 · 5e-5
        ["0", "0", "0", "2"],  # whole numbers: ε = ½, capped
        ["0.0", "0.0", "0.7071067811865476", "0.7071067811865475"],  # repr: float64's 1e-6
        ["1.234560e-01", "0", "0", "9.923498e-01"],  # 7 significant digits
    ]
    np.testing.assert_allclose(printed_precision(quaternions, "quaternion"), [1e-4, 1e-3, 1e-6, 1e-6], rtol=1e-9)
    matrices = [["9.99999e-01"] * 9, ["1.00000e+00"] * 9, ["1"] + ["-0.000123457"] * 8]
    expected = [(1 + 3 * 5e-7) ** 3 - 1, (1 + 3 * 5e-6) ** 3 - 1, (1 + 3 * 5e-6) ** 3 - 1]  # %g: "1" is 1.00000
    np.testing.assert_allclose(printed_precision(matrices, "matrix"), expected, rtol=1e-9)


def test_printed_precision_bounds_the_defect_of_rounded_rotations():
    """The bound is a bound: rotations rounded to d decimals or s significant digits stay
    within their printed precision."""
    from posegraph.lie.rotation_rule import printed_precision, rotation_defect

    R = random_rotations(3000, seed=23).numpy()
    q = matrix_to_quaternion(torch.as_tensor(R)).numpy()
    for fmt in ("{:.3f}", "{:.4f}", "{:.6f}", "{:.5e}", "{:g}", "{:.3g}"):
        for values, kind in ((R.reshape(-1, 9), "matrix"), (q, "quaternion")):
            tokens = [[fmt.format(v) for v in row] for row in values]
            printed = np.array([[float(t) for t in row] for row in tokens])
            shaped = torch.as_tensor(printed.reshape(-1, 3, 3) if kind == "matrix" else printed)
            defect = rotation_defect(shaped, kind).numpy()
            precision = printed_precision(tokens, kind)
            capped = precision >= 1e-3
            assert (defect[~capped] <= precision[~capped]).all(), (fmt, kind, float((defect - precision).max()))


def test_nearest_rotation_is_the_polar_factor_and_chordal_uses_it():
    from posegraph.init.chordal import project_to_rotations
    from posegraph.lie.rotation_rule import nearest_rotation

    R = random_rotations(20, seed=24).numpy()
    rng = np.random.default_rng(0)
    np.testing.assert_allclose(nearest_rotation(2.5 * R), R, atol=1e-15)
    M = R + 0.1 * rng.normal(size=R.shape)
    P = nearest_rotation(M)
    np.testing.assert_allclose(np.swapaxes(P, 1, 2) @ P, np.broadcast_to(np.eye(3), P.shape), atol=1e-14)
    np.testing.assert_allclose(np.linalg.det(P), 1.0, atol=1e-14)
    H = np.swapaxes(P, 1, 2) @ M  # polar: M = P H with H symmetric positive definite
    np.testing.assert_allclose(H, np.swapaxes(H, 1, 2), atol=1e-14)
    assert (np.linalg.eigvalsh(H) > 0).all()
    np.testing.assert_array_equal(project_to_rotations(M), P)


def test_defect_of_one_rotation_is_the_numpy_defect():
    """check_rotations' plain-Python path for one rotation computes rotation_defect's formula."""
    from posegraph.lie.rotation_rule import _defect_of_one, rotation_defect

    rng = np.random.default_rng(25)
    M = random_rotations(200, seed=25) + torch.as_tensor(rng.normal(scale=10.0 ** rng.uniform(-9, 0, (200, 1, 1)), size=(200, 3, 3)))
    q = torch.as_tensor(rng.normal(size=(200, 4)))
    cs = torch.as_tensor(rng.normal(size=(200, 2)))
    se2 = torch.cat([torch.zeros(200, 2, dtype=F64), cs], dim=1)
    for values, kind, flat in ((M, "matrix", M.reshape(200, 9)), (q, "quaternion", q), (se2, "SE2", cs)):
        expected = rotation_defect(values, kind).numpy()
        got = np.array([_defect_of_one(row, kind) for row in flat.tolist()])
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)
    assert math.isnan(_defect_of_one([float("nan")] + [0.0] * 8, "matrix"))
