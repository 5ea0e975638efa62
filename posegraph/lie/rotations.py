"""Numerically stable rotation <-> quaternion conversions, and g2o's pose vectors.

The rule for rotations handed in as numbers is :mod:`posegraph.lie.rotation_rule`; the patch that
puts these conversions into Theseus is :mod:`posegraph.lie.theseus_patch`.

Quaternions are ``(w, x, y, z)`` with the scalar part first, the convention
Theseus uses for ``SO3.to_quaternion``.  g2o's 7-vectors are
``(x, y, z, qx, qy, qz, qw)``: scalar part *last*.

Why this module exists
----------------------
``theseus.SO3.to_quaternion`` (theseus-ai 0.2.3) computes
``w = 0.5 * sqrt(1 + trace(R))`` for every rotation and only masks the
result near pi (upstream Theseus issue #670).  At ``trace(R) = -1`` (any
rotation by exactly pi) the backward pass meets ``d sqrt(u)/du`` at
``u = 0`` and the gradient is ``inf``; near pi it is huge (about 4e11 at
1e-6 rad from pi in float64).  :func:`matrix_to_quaternion` instead uses
Shepperd's method, which takes the square root of the *largest* of
``4w^2, 4x^2, 4y^2, 4z^2`` only.

Formulas
--------
For a rotation matrix ``R`` with trace ``t`` (Shepperd 1978, "Quaternion
from rotation matrix", J. Guidance and Control 1(3):223-224; written out
as in Day 2015, "Converting a rotation matrix to a quaternion"):

* pivot ``w``: ``4w^2 = 1 + t``;  ``4wx = R21 - R12``, ``4wy = R02 - R20``,
  ``4wz = R10 - R01``
* pivot ``x``: ``4x^2 = 1 + R00 - R11 - R22``;  ``4wx``, ``4xy = R01 + R10``,
  ``4xz = R02 + R20``
* pivot ``y``: ``4y^2 = 1 - R00 + R11 - R22``;  ``4wy``, ``4xy``,
  ``4yz = R12 + R21``
* pivot ``z``: ``4z^2 = 1 - R00 - R11 + R22``;  ``4wz``, ``4xz``, ``4yz``

and with ``r = sqrt(4 q_k^2)`` the pivot component is ``q_k = r / 2`` and
each other component is ``q_j = (4 q_k q_j) / (2 r)``.  The pivot ``k``
is the argmax of ``(t, R00, R11, R22)``; this is the same as the argmax
of the four pivot squares because ``4 q_k^2 = 1 - t + 2 d_k`` with
``d = (t, R00, R11, R22)``.  Those four squares sum to exactly 4 for
*any* 3x3 matrix, so the selected one is ``>= 1``: the square root and the
division by ``2 sqrt(4 q_k^2) >= 2`` are always well conditioned, even for
the unconstrained (off-SO(3)) matrices that finite differences produce.

The three branches that are not selected are still evaluated (the function
is vectorized), and the backward pass of ``torch.where`` multiplies their
gradients by zero -- but ``0 * inf = nan``.  So each unselected branch is
fed the safe value 1.0 *before* its square root and division ("double
where"); its output is then discarded by the outer ``where``.

Sign convention, continuity and gradients at identity / pi
----------------------------------------------------------
``q`` and ``-q`` are the same rotation; we return the one with ``w >= 0``
(the branch result is negated where ``w < 0``).  When ``w == 0`` exactly
(rotation by exactly pi) no sign flip happens and the sign is the
Shepperd one: the pivot component -- the one of ``x, y, z`` with the
largest magnitude, i.e. the largest ``R_kk``; the first of them on an exact
tie -- is positive.  Example: ``R = diag(1, -1, -1)`` gives ``(0, 1, 0, 0)``.

No continuous choice of sign exists on all of SO(3), so the canonical
quaternion necessarily jumps from ``q`` to ``-q`` across the surface
``w = 0`` (rotation angle pi).  What we return there:

* **Exactly the identity**: the ``w`` branch is selected on a whole
  neighbourhood (``t = 3`` vs ``R_kk = 1``) and ``w = 1``; the function is
  smooth there and the gradient is the ordinary two-sided derivative.
* **Exactly pi**: value and gradient are those of the pivot branch
  without a sign flip, i.e. the one-sided limit from the side where
  ``w > 0`` (rotation angles ``theta -> pi^-`` about the axis whose pivot
  component is positive).  The gradient is finite (bounded by the
  well-conditioned pivot branch); from the other side the value tends to
  ``-q``.
* **Ties between pivot candidates** (e.g. pi about ``(1,1,1)/sqrt(3)``
  where ``R00 = R11 = R22``; ``argmax`` takes the first): all tied branches
  agree in value and along SO(3), but as functions of the 9 unconstrained
  entries their derivatives in directions *off* SO(3) differ.  We return
  the derivative of the first tied branch, i.e. a one-sided limit from the
  region where that branch wins.

References are cited per function.  The conversions are plain PyTorch,
fully vectorized over leading batch dimensions, differentiable, and keep
dtype and device.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import Tensor


__all__ = ["matrix_to_quaternion", "quaternion_to_matrix", "se3_to_g2o", "g2o_to_se3", "se2_to_xytheta", "xytheta_to_se2"]


# ---------------------------------------------------------------------------
# Shape checks
# ---------------------------------------------------------------------------


def _check_trailing_shape(x: Tensor, shape: Tuple[int, ...], name: str) -> None:
    """Raise ``ValueError`` unless ``x`` is a floating tensor of shape ``(..., *shape)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < len(shape) or tuple(x.shape[x.ndim - len(shape) :]) != shape:
        expected = "(..., " + ", ".join(str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got {x.dtype}")


# ---------------------------------------------------------------------------
# Rotation matrix -> quaternion (Shepperd 1978 / Day 2015)
# ---------------------------------------------------------------------------


def _shepperd_branch(
    pivot_square: Tensor, selected: Tensor, products: List[Tensor], k: int
) -> Tensor:
    """One branch of Shepperd's method, guarded for when it is not selected.

    Args:
        pivot_square: ``4 q_k^2`` computed from the matrix, shape ``(...)``.
        selected: bool mask ``(...)``, True where this branch is the pivot.
        products: the three entries ``4 q_k q_j`` (``j != k``, ascending
            ``j``) computed from the matrix, each of shape ``(...)``.
        k: index of the pivot component in ``(w, x, y, z)``.

    Returns:
        ``(..., 4)`` quaternion with ``q_k = r / 2`` and
        ``q_j = (4 q_k q_j) / (2 r)``, ``r = sqrt(4 q_k^2)`` (Shepperd 1978,
        eqs. for the four cases; Day 2015 eqs. 2-5).  Where ``selected`` is
        False the input of the square root is replaced by 1.0 (the inner
        half of the "double where"), so neither the value nor the gradient
        of the discarded lanes can be inf/nan.  Where selected,
        ``pivot_square >= 1`` (see the module docstring).
    """
    r = torch.sqrt(torch.where(selected, pivot_square, torch.ones_like(pivot_square)))
    half_inv_r = 0.5 / r
    components = [p * half_inv_r for p in products]
    components.insert(k, 0.5 * r)
    return torch.stack(components, dim=-1)


def matrix_to_quaternion(R: Tensor) -> Tensor:
    """Convert rotation matrices to unit quaternions ``(w, x, y, z)``, stably.

    Shepperd's method (Shepperd 1978, "Quaternion from rotation matrix",
    J. Guidance and Control 1(3); Day 2015, "Converting a rotation matrix to
    a quaternion"): per element, the pivot is the largest of
    ``(trace, R00, R11, R22)``; only that branch's square root
    ``sqrt(4 q_k^2) >= 1`` is differentiated.  The other branches are
    guarded with the double-where pattern, so the backward pass is finite
    for every finite input, including exactly the identity and exactly pi.

    Args:
        R: ``(..., 3, 3)`` rotation matrices (float32/float64, any device).
            The formula is a smooth function of the 9 entries within each
            pivot region; for matrices not exactly in SO(3) it returns
            Shepperd's estimate, which is *not* renormalized.

    Returns:
        ``(..., 4)`` quaternions ``(w, x, y, z)`` with ``w >= 0``.  If
        ``w == 0`` exactly (rotation by pi) the pivot component (largest of
        ``|x|, |y|, |z|``, decided by the largest ``R_kk``, first index on a
        tie) is positive.  See the module docstring for the one-sided
        limits returned at pi and at pivot ties.

    Raises:
        ValueError: if ``R`` is not of shape ``(..., 3, 3)``.
        TypeError: if ``R`` is not a floating point tensor.
    """
    _check_trailing_shape(R, (3, 3), "R")
    r00, r01, r02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    r10, r11, r12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    r20, r21, r22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    trace = r00 + r11 + r22

    # Pivot choice (Shepperd 1978): largest of (trace, R00, R11, R22), which
    # is the largest of 4w^2, 4x^2, 4y^2, 4z^2.  Exact ties -> first index.
    pivot = torch.argmax(torch.stack([trace, r00, r11, r22], dim=-1), dim=-1)

    # 4 q_k^2 for k = w, x, y, z (they sum to 4 for any 3x3 matrix).
    four_ww = 1.0 + trace
    four_xx = 1.0 + r00 - r11 - r22
    four_yy = 1.0 - r00 + r11 - r22
    four_zz = 1.0 - r00 - r11 + r22
    # Off-diagonal products 4 q_i q_j.
    four_wx = r21 - r12
    four_wy = r02 - r20
    four_wz = r10 - r01
    four_xy = r01 + r10
    four_xz = r02 + r20
    four_yz = r12 + r21

    is_w, is_x, is_y, is_z = (pivot == k for k in range(4))
    q_w = _shepperd_branch(four_ww, is_w, [four_wx, four_wy, four_wz], 0)
    q_x = _shepperd_branch(four_xx, is_x, [four_wx, four_xy, four_xz], 1)
    q_y = _shepperd_branch(four_yy, is_y, [four_wy, four_xy, four_yz], 2)
    q_z = _shepperd_branch(four_zz, is_z, [four_wz, four_xz, four_yz], 3)

    # Outer half of the double where: keep only the selected branch.
    q = torch.where(
        is_w.unsqueeze(-1),
        q_w,
        torch.where(is_x.unsqueeze(-1), q_x, torch.where(is_y.unsqueeze(-1), q_y, q_z)),
    )

    # Canonical sign: w >= 0.  At w == 0 exactly we keep the branch sign
    # (pivot component positive); this is the w > 0 one-sided limit.
    return torch.where((q[..., :1] < 0), -q, q)


# ---------------------------------------------------------------------------
# The rotation rule (see the module docstring): one for every rotation handed in as numbers
# ---------------------------------------------------------------------------


# ---------------------------------------------------------------------------
# Quaternion -> rotation matrix
# ---------------------------------------------------------------------------


def quaternion_to_matrix(q: Tensor) -> Tensor:
    """Convert quaternions ``(w, x, y, z)`` (any nonzero norm) to rotation matrices.

    The quaternion is normalized implicitly: with ``s = 2 / |q|^2`` the
    matrix is ``I + s * (...)`` (the standard homogeneous form, e.g.
    Shoemake 1985, "Animating rotation with quaternion curves", SIGGRAPH),
    which equals the rotation of ``q / |q|``.  To avoid overflow/underflow
    of ``|q|^2`` the quaternion is first divided by its largest absolute
    component ``m`` (a constant for autograd: ``R`` is invariant to the
    scale of ``q``, so the gradient through ``m`` is exactly zero anyway).

    Args:
        q: ``(..., 4)`` quaternions, scalar first.  ``q`` and ``-q`` give
            the same matrix.

    Returns:
        ``(..., 3, 3)`` rotation matrices.

    Raises:
        ValueError: if any quaternion is zero or so close to zero that its
            direction is meaningless: largest absolute component below
            ``torch.finfo(q.dtype).tiny`` (about 2.2e-308 for float64,
            1.2e-38 for float32; i.e. zero or subnormal).  NaN inputs are
            not rejected; they propagate to the output.  The check reads the
            data (a host sync on accelerators).
    """
    _check_trailing_shape(q, (4,), "q")
    scale = q.detach().abs().amax(dim=-1, keepdim=True)
    tiny = torch.finfo(q.dtype).tiny
    if bool((scale < tiny).any()):
        n_bad = int((scale < tiny).sum())
        raise ValueError(
            f"quaternion_to_matrix: {n_bad} quaternion(s) are zero or nearly zero "
            f"(max |component| < finfo({q.dtype}).tiny = {tiny:.3g}); a zero "
            "quaternion does not represent a rotation"
        )
    # Branch-free from here: 1 <= |q / scale|^2 <= 4, so s is well conditioned.
    w, x, y, z = torch.unbind(q / scale, dim=-1)
    s = 2.0 / (w * w + x * x + y * y + z * z)
    xx, yy, zz = s * x * x, s * y * y, s * z * z
    xy, xz, yz = s * x * y, s * x * z, s * y * z
    wx, wy, wz = s * w * x, s * w * y, s * w * z
    rows = [
        torch.stack([1.0 - (yy + zz), xy - wz, xz + wy], dim=-1),
        torch.stack([xy + wz, 1.0 - (xx + zz), yz - wx], dim=-1),
        torch.stack([xz - wy, yz + wx, 1.0 - (xx + yy)], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


# ---------------------------------------------------------------------------
# SE3 <-> g2o, SE2 <-> (x, y, theta)
# ---------------------------------------------------------------------------


def se3_to_g2o(T: Tensor) -> Tensor:
    """Theseus SE3 tensor ``(..., 3, 4) = [R | t]`` -> g2o ``(..., 7)``.

    The g2o ``VERTEX_SE3:QUAT`` / ``EDGE_SE3:QUAT`` layout is
    ``x y z qx qy qz qw`` (scalar last).  The quaternion comes from
    :func:`matrix_to_quaternion`, so ``qw >= 0`` with the same tie rule.
    """
    _check_trailing_shape(T, (3, 4), "T")
    q = matrix_to_quaternion(T[..., :, :3])
    return torch.cat([T[..., :, 3], q[..., 1:], q[..., :1]], dim=-1)


def g2o_to_se3(v: Tensor) -> Tensor:
    """g2o ``(..., 7) = x y z qx qy qz qw`` -> Theseus SE3 tensor ``(..., 3, 4)``.

    The quaternion need not be unit; it is normalized by
    :func:`quaternion_to_matrix`, which raises ``ValueError`` for a zero
    quaternion.
    """
    _check_trailing_shape(v, (7,), "v")
    q_wxyz = torch.cat([v[..., 6:7], v[..., 3:6]], dim=-1)
    R = quaternion_to_matrix(q_wxyz)
    return torch.cat([R, v[..., :3].unsqueeze(-1)], dim=-1)


def se2_to_xytheta(t: Tensor) -> Tensor:
    """Theseus SE2 tensor ``(..., 4) = [x, y, cos, sin]`` -> ``(..., 3) = [x, y, theta]``.

    ``theta = atan2(sin, cos)`` lies in ``[-pi, pi]`` (``-pi`` only for
    ``sin == -0.0``).  ``(cos, sin)`` need not be unit length -- only its
    direction matters -- but ``(0, 0)`` has no angle (``atan2`` returns 0
    and its gradient there is nan).
    """
    _check_trailing_shape(t, (4,), "t")
    theta = torch.atan2(t[..., 3], t[..., 2])
    return torch.stack([t[..., 0], t[..., 1], theta], dim=-1)


def xytheta_to_se2(v: Tensor) -> Tensor:
    """``(..., 3) = [x, y, theta]`` -> Theseus SE2 tensor ``(..., 4) = [x, y, cos, sin]``."""
    _check_trailing_shape(v, (3,), "v")
    theta = v[..., 2]
    return torch.stack([v[..., 0], v[..., 1], torch.cos(theta), torch.sin(theta)], dim=-1)


# ---------------------------------------------------------------------------
# Theseus monkeypatch
# ---------------------------------------------------------------------------


