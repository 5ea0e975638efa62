"""Hand-written, vectorized SE(3) / SE(2) kernels for between residuals and their Jacobians.

Every function works on plain tensors in Theseus' layouts — SE3 ``(..., 3, 4)`` = ``[R | t]``
with tangent order ``(ρ, ω)`` (translation, rotation); SE2 ``(..., 4)`` = ``(x, y, cos, sin)``
with tangent ``(x, y, θ)`` — over any leading batch shape, in float32 or float64. They are
plain torch ops (no custom autograd functions, no in-place writes on inputs), so gradients flow
through them, and each numerically delicate quotient has an explicit branch:

* a *small-angle* branch (Taylor series in ``θ²``) where the closed form is ``0/0``;
* for SO(3)'s logarithm a *near-π* branch, where ``θ / sin θ`` blows up and the axis is read
  from the symmetric part of ``R`` instead;
* the branch that is not taken is fed a harmless value *before* dividing ("double where"), so
  neither its value nor its gradient can turn into ``inf``/``nan``.

One source, two array kinds. Each public kernel takes and returns torch tensors. When there is
no gradient to record and the tensors are small (:data:`NUMPY_MAX_ELEMENTS`), float32/float64
and on CPU, the same code runs on NumPy views of them instead (:func:`_kernel`): a kernel is a
chain of tens to hundreds of operations on small arrays, and NumPy's per-operation overhead is
a third of torch's (smallGrid3D's 297 between logarithms: 0.33 against 0.7 ms on one
thread). Under autograd, on GPU, in half precision, inside torch.func transforms or on large
arrays they are torch operations, with their gradients. The few calls whose spelling differs
between the two libraries go through the helpers below (``_xp`` names an array's library).

A third route, ahead of both: the hot kernels of :class:`posegraph.model.between.BetweenEdges` and
:class:`posegraph.model.variables.ManifoldArray` (between logarithm, ``J_r⁻¹`` from its parts, the
adjoint product, the retraction) also exist as compiled loops (:mod:`posegraph.lie.native`), taken
on float64 CPU tensors with no gradient to record, at any size; they compute the same formulas
with the same branches, element by element.

They replace Theseus' general-purpose ``torchlie`` operators on the hot path of
:class:`posegraph.model.between.BetweenEdges` (about twice as fast: no per-call checks, no
intermediate group objects, fused 3×3 blocks) and give the same values, conventions and
Jacobians (tests compare them with ``th.SE3`` / ``th.SE2``).

References
----------
* [Barfoot] T. D. Barfoot, "State Estimation for Robotics", 2017, §7.1 (SO(3)/SE(3) exp, log,
  Jacobians; eqs. 7.13–7.16, 7.37, 7.83–7.86, 7.94–7.95).
* [Solà] J. Solà, J. Deray, D. Atchuthan, "A micro Lie theory for state estimation in
  robotics", 2018, arXiv:1812.01537 (right Jacobians, adjoints: eqs. 143–146, 155–164,
  169–180; between-Jacobians: eqs. 28–31, 39).

One module because every kernel here shares one set of numerical branches and thresholds
(:data:`SMALL_ANGLE`, :data:`NEAR_PI`), the array helpers that run the same formula on torch or
NumPy (:data:`NUMPY_MAX_ELEMENTS`) and the compiled route: SO(3), SE(3) and SE(2) are marked
sections of it, and the formulas are easier to check side by side.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator, NamedTuple, Optional, Tuple, TypeVar, Union

import numpy as np
import torch
from torch import Tensor

from posegraph.lie import native as _native

__all__ = [
    "skew",
    "so3_exp",
    "so3_log",
    "so3_right_jacobian_inv",
    "se3_exp",
    "se3_log",
    "se3_right_jacobian_inv",
    "se3_adjoint",
    "se3_inverse",
    "se3_compose",
    "se3_retract",
    "BetweenLogParts",
    "se3_between_error",
    "se3_between_error_jacobians",
    "se3_between_parts",
    "se3_between_log_parts",
    "se3_between_jacobian_from_parts",
    "se3_mul_adjoint_inverse",
    "se2_exp",
    "se2_log",
    "se2_right_jacobian_inv",
    "se2_adjoint",
    "se2_inverse",
    "se2_compose",
    "se2_retract",
    "se2_between_error",
    "se2_between_error_jacobians",
    "se2_between_parts",
    "se2_between_log_parts",
    "se2_between_jacobian_from_parts",
    "se2_mul_adjoint_inverse",
]

#: Below this angle the Taylor series replace the closed forms. The series' truncation error
#: and the closed forms' cancellation error (≈ ε/θ² for e.g. (θ − sin θ)/θ³) both stay near
#: machine precision ε at these thresholds.
SMALL_ANGLE = {torch.float64: 1e-2, torch.float32: 1e-1, torch.float16: 3e-1, torch.bfloat16: 3e-1}
#: The same for γ of :func:`_se3_jr_inv_coefficients`, whose closed form cancels to O(θ⁶).
SMALL_ANGLE_GAMMA = {torch.float64: 0.25, torch.float32: 1.0, torch.float16: 1.0, torch.bfloat16: 1.0}
#: SO(3) log switches to the near-π branch when ``1 + cos θ`` is below this (θ/sin θ would lose
#: all precision there; Theseus uses the same test).
NEAR_PI = {torch.float64: 1e-7, torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 1e-2}

#: Kernels on tensors of up to this many elements run on NumPy (:func:`_numpy_route`). Below it
#: the kernels' time is mostly per-operation overhead, a third of torch's in NumPy; above it
#: the two are within noise of each other on one thread (measured from 300 to 8,000 SE(3)
#: edges), and torch can split the work over threads (in chunks of 32,768 elements).
#: (measured: on float32 CPU input this route saves 8.5–20% of a Gauss–Newton iteration on
#: sphere2500, intel and smallGrid3D against torch alone; docs/performance.md)
NUMPY_MAX_ELEMENTS = 32_768

#: A torch tensor or, on the NumPy route, an ndarray (or NumPy scalar, from 0-d arithmetic).
Array = Union[Tensor, np.ndarray, np.generic]
#: The dtypes NumPy computes in as torch does (the NumPy route).
_NUMPY_DTYPES = (torch.float64, torch.float32)
_TORCH_DTYPES = {np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32}
_F = TypeVar("_F", bound=Callable[..., Any])


# ------------------------------------------------------------------------------------------
# Two array kinds: torch tensors and NumPy arrays
# ------------------------------------------------------------------------------------------


def _xp(x: Array) -> Any:
    """The library of ``x``: ``numpy`` or ``torch`` (their shared names: ``sqrt``, ``sin``,
    ``cos``, ``atan2``, ``where``, ``clip``, ``stack``, ``concat``, ``diagonal``,
    ``zeros_like``, ``ones_like``; arrays of both have ``.mT``)."""
    return np if isinstance(x, (np.ndarray, np.generic)) else torch


def _dtype_key(x: Array) -> torch.dtype:
    """``x``'s dtype as the torch dtype the threshold tables are keyed by."""
    return x.dtype if isinstance(x, Tensor) else _TORCH_DTYPES.get(np.dtype(x.dtype), torch.float32)


def _flat(items: Any) -> Iterator[Any]:
    """The leaves of nested tuples, in order."""
    for item in items:
        if isinstance(item, tuple):
            yield from _flat(item)
        else:
            yield item


def _map(fn: Callable[[Any], Any], obj: Any) -> Any:
    """``fn`` applied to every leaf of nested tuples (named tuples keep their type)."""
    if isinstance(obj, tuple):
        items = [_map(fn, item) for item in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    return fn(obj)


def _numpy_route(tensors: list) -> bool:
    """Whether a kernel on ``tensors`` runs on NumPy: all CPU tensors of one float32/float64
    dtype, none over :data:`NUMPY_MAX_ELEMENTS` elements, no gradient to record."""
    return _native.plain_cpu_tensors(tensors, _NUMPY_DTYPES, NUMPY_MAX_ELEMENTS)


def _to_tensor(a: Any) -> Tensor:
    a = np.asarray(a)
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def _kernel(fn: Optional[_F] = None, *, native: Optional[Callable[..., Any]] = None,
            composed: bool = False) -> Any:
    """A public kernel: given tensors it runs, in this order of preference,

    1. compiled (:mod:`posegraph.lie.native`) where that route applies (float64 CPU tensors, no
       gradient to record): ``native`` is the kernel's compiled form (``None`` from it: not
       for inputs of these shapes); a ``composed`` kernel is built from kernels that have
       one, and runs on the tensors so that they take it;
    2. on NumPy views of them where :func:`_numpy_route` allows, returning tensors that share
       the results' memory;
    3. as torch operations.

    Given NumPy arrays (a kernel calling another on the NumPy route) it runs on them directly.

    Measured (docs/performance.md, 'What each speed mechanism pays'): the compiled route of the
    kernels the start comparison of ``--init auto`` runs saves 13–182% of an iteration once per
    solve (sphere2500 182%, smallGrid3D 100%).
    """
    if fn is None:
        return functools.partial(_kernel, native=native, composed=composed)

    @functools.wraps(fn)
    def run(*args: Any) -> Any:
        tensors = list(_flat(args))
        if not isinstance(tensors[0], Tensor):
            return fn(*args)
        if (native is not None or composed) and _native.applies(tensors):
            if composed:
                return fn(*args)
            try:
                result = native(*args)
            except (RuntimeError, TypeError):  # e.g. tensors wrapped by torch.func transforms
                result = None
            if result is not None:  # (None: not for inputs of these shapes)
                return result
        if not _numpy_route(tensors):
            return fn(*args)
        try:
            arrays = _map(lambda t: t.detach().numpy(), args)
        except (RuntimeError, TypeError):  # e.g. tensors wrapped by torch.func transforms
            return fn(*args)
        with np.errstate(all="ignore"):  # non-finite inputs give non-finite outputs, silently, as in torch
            return _map(_to_tensor, fn(*arrays))

    return run


def _safe(mask: Array, x: Array, fill: float = 1.0) -> Array:
    """``x`` where ``mask`` is False, ``fill`` elsewhere: the inner half of a double where."""
    return x.masked_fill(mask, fill) if isinstance(x, Tensor) else np.where(mask, fill, x)


def _components(v: Array) -> Tuple[Array, Array, Array]:
    """The three entries of ``v``'s last axis."""
    return v.unbind(-1) if isinstance(v, Tensor) else (v[..., 0], v[..., 1], v[..., 2])


def _eye3(like: Array) -> Array:
    if isinstance(like, Tensor):
        return torch.eye(3, dtype=like.dtype, device=like.device)
    return np.eye(3, dtype=like.dtype)


def _zeros(like: Array, *shape: int) -> Array:
    return like.new_zeros(shape) if isinstance(like, Tensor) else np.zeros(shape, dtype=like.dtype)


def _argmax_last(x: Array) -> Array:
    """Index of the largest entry along the last axis, kept as an axis of size 1."""
    return x.argmax(-1, keepdim=True) if isinstance(x, Tensor) else np.argmax(x, axis=-1, keepdims=True)


def _take_last(x: Array, index: Array) -> Array:
    """``x``'s entries at ``index`` along the last axis (``index`` broadcast over the others)."""
    if isinstance(x, Tensor):
        return torch.gather(x, -1, index.expand(*x.shape[:-1], index.shape[-1]))
    return np.take_along_axis(x, index, -1)


def _small(theta2: Array) -> Array:
    eps = SMALL_ANGLE.get(_dtype_key(theta2), 1e-1)
    return theta2 < eps * eps


def _select(small: Array, series: Callable[[], Array], closed: Callable[[], Array]) -> Array:
    """``where(small, series, closed)``, evaluating only the branches some element takes (a
    data-dependent shortcut that saves most of the work on small graphs; values and gradients
    are those of the full ``where``)."""
    if not bool(small.any()):
        return closed()
    if bool(small.all()):
        return series()
    return _xp(small).where(small, series(), closed())


def _sin_cos(theta2: Array) -> Tuple[Array, Array]:
    """``sin θ``, ``cos θ`` from ``θ²``, with ``θ = 1`` fed in where ``θ²`` is 0 (the
    coefficient functions use their series there; this keeps ``√θ²``'s gradient finite)."""
    xp = _xp(theta2)
    t = xp.sqrt(_safe(theta2 == 0, theta2))
    return xp.sin(t), xp.cos(t)


# ------------------------------------------------------------------------------------------
# Scalar coefficient functions of θ (each: closed form, Taylor series near 0)
# ------------------------------------------------------------------------------------------


def _sinc_coefficients(theta2: Array) -> Tuple[Array, Array, Array]:
    """``A = sin θ/θ``, ``B = (1 − cos θ)/θ²``, ``C = (θ − sin θ)/θ³`` from ``θ² = ‖ω‖²``.

    [Barfoot] eqs. 7.15, 7.86 (Rodrigues' formula and the left Jacobian); series:
    ``A = 1 − θ²/6 + θ⁴/120``, ``B = 1/2 − θ²/24 + θ⁴/720``, ``C = 1/6 − θ²/120 + θ⁴/5040``.
    """
    xp = _xp(theta2)
    small = _small(theta2)
    t2 = _safe(small, theta2)
    t = xp.sqrt(t2)
    s, c = xp.sin(t), xp.cos(t)
    a = _select(small, lambda: 1 - theta2 / 6 + theta2**2 / 120, lambda: s / t)
    b = _select(small, lambda: 0.5 - theta2 / 24 + theta2**2 / 720, lambda: (1 - c) / t2)
    cc = _select(
        small, lambda: 1 / 6 - theta2 / 120 + theta2**2 / 5040, lambda: (t - s) / (t2 * t)
    )
    return a, b, cc


def _half_cot_coefficient(theta2: Array, sine: Array, cosine: Array) -> Tuple[Array, Array]:
    """``α = (θ/2) cot(θ/2)`` and ``β = (1 − α)/θ²``, for ``θ ∈ [0, π]``.

    These are the coefficients of ``J_r⁻¹(ω) = α I + β ωωᵀ + ½[ω]×`` ([Barfoot] eq. 7.95 with
    ``[ω]×² = ωωᵀ − θ² I``; [Solà] eq. 146) and of SE(2)'s ``V⁻¹``. ``sine``/``cosine`` are
    sin θ ≥ 0 and cos θ as read from the group element (no re-evaluation). Two closed forms
    without cancellation, ``α = θ (1 + cos θ) / (2 sin θ)`` for ``cos θ > 0`` and
    ``α = θ sin θ / (2 (1 − cos θ))`` otherwise (→ 0 smoothly at π); series near 0:
    ``α = 1 − θ²/12 − θ⁴/720``, ``β = 1/12 + θ²/720 + θ⁴/30240``.
    """
    small = _small(theta2)
    t2 = _safe(small, theta2)

    def closed_alpha() -> Array:
        t = _xp(t2).sqrt(t2)
        front = cosine > 0
        return _select(
            front,
            lambda: t * (1 + cosine) / (2 * _safe(~front | small, sine)),
            lambda: t * sine / (2 * _safe(front, 1 - cosine)),
        )

    if bool(small.all()):
        return 1 - theta2 / 12 - theta2**2 / 720, 1 / 12 + theta2 / 720 + theta2**2 / 30240
    alpha_closed = closed_alpha()
    alpha = _select(small, lambda: 1 - theta2 / 12 - theta2**2 / 720, lambda: alpha_closed)
    beta = _select(
        small, lambda: 1 / 12 + theta2 / 720 + theta2**2 / 30240, lambda: (1 - alpha_closed) / t2
    )
    return alpha, beta


def _se3_jr_inv_coefficients(
    theta2: Array, sine: Array, cosine: Array
) -> Tuple[Array, Array]:
    """``γ = (4 cos θ − 4 + θ sin θ + θ²) / (2θ⁴ (1 − cos θ))`` and
    ``δ = −(θ − sin θ) / (2θ (1 − cos θ))``: the coefficients of the top-right block of SE(3)'s
    ``J_r⁻¹`` (see :func:`_se3_jr_inv`). Series: ``γ = 1/360 + θ²/7560 + θ⁴/201600 +
    θ⁶/5987520 + 691θ⁸/130767436800`` (below :data:`SMALL_ANGLE_GAMMA`: the closed form
    cancels to O(θ⁶)), ``δ = −1/6 − θ²/180 − θ⁴/5040``.
    """
    xp = _xp(theta2)
    eps_g = SMALL_ANGLE_GAMMA.get(_dtype_key(theta2), 1.0)
    small_g = theta2 < eps_g * eps_g
    small = _small(theta2)
    t2s = theta2**2

    def closed_gamma() -> Array:
        t2g = _safe(small_g, theta2)
        sg = _safe(small_g, sine, 1.0)
        cg = _safe(small_g, cosine, 0.0)
        return (4 * cg - 4 + xp.sqrt(t2g) * sg + t2g) / (2 * t2g * t2g * (1 - cg))

    def closed_delta() -> Array:
        t = xp.sqrt(_safe(small, theta2))
        return -(t - sine) / (2 * t * _safe(small, 1 - cosine))

    gamma = _select(
        small_g,
        lambda: 1 / 360 + theta2 / 7560 + t2s / 201600 + t2s * theta2 / 5987520
        + 691 * t2s * t2s / 130767436800,
        closed_gamma,
    )
    delta = _select(small, lambda: -1 / 6 - theta2 / 180 - t2s / 5040, closed_delta)
    return gamma, delta


# ------------------------------------------------------------------------------------------
# Products of small matrices
# ------------------------------------------------------------------------------------------


def _numpy_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """NumPy's ``matmul`` with each operand stored row by row (a transposed view sends NumPy to
    a loop 3–4× slower than torch's batched product)."""
    if a.strides[-1] != a.itemsize:
        a = np.ascontiguousarray(a)
    if b.strides[-1] != b.itemsize:
        b = np.ascontiguousarray(b)
    return np.matmul(a, b)


def _mm(a: Array, b: Array) -> Array:
    """Products of stacked small matrices (n > 1) for either array kind."""
    return a @ b if isinstance(a, Tensor) else _numpy_matmul(a, b)


# ------------------------------------------------------------------------------------------
# SO(3)
# ------------------------------------------------------------------------------------------


def _dot3(a: Array, b: Array) -> Array:
    """``Σₖ aₖ bₖ`` over a last axis of size 3. Torch: a batched ``(1×3)·(3×1)`` product, close
    to the fastest form from 12 to 20,000 vectors (torch's reduction over a size-3 axis is 3×
    slower on large batches, three explicit products and adds cost 11 operations). NumPy: the
    three products and adds (its fastest form beyond a few hundred vectors)."""
    if isinstance(a, Tensor):
        return (a.unsqueeze(-2) @ b.unsqueeze(-1))[..., 0, 0]
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def _cross(a: Array, b: Array) -> Array:
    """``a × b`` over the last axis (broadcasting): torch's ``linalg.cross``; on NumPy the
    products of the components (``np.cross`` is 1.5–2× slower)."""
    if isinstance(a, Tensor):
        return torch.linalg.cross(a, b)
    a0, a1, a2 = _components(a)
    b0, b1, b2 = _components(b)
    return _xp(a).stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], -1)


@_kernel
def skew(v: Tensor) -> Tensor:
    """``[v]×``, ``(..., 3)`` → ``(..., 3, 3)``."""
    xp = _xp(v)
    x, y, z = _components(v)
    o = xp.zeros_like(x)
    return xp.stack([o, -z, y, z, o, -x, -y, x, o], -1).reshape(*v.shape, 3)


@_kernel
def so3_exp(omega: Tensor) -> Tensor:
    """``Exp(ω) = I + A[ω]× + B[ω]×²`` (Rodrigues; [Barfoot] eq. 7.15), ``(..., 3)`` → ``(..., 3, 3)``."""
    a, b, _ = _sinc_coefficients(_dot3(omega, omega))
    k = skew(omega)
    return _eye3(omega) + a[..., None, None] * k + b[..., None, None] * _mm(k, k)


def _so3_log_parts(rot: Array) -> Tuple[Array, Array, Array, Array]:
    """``ω = Log(R)`` with ``θ²``, ``sin θ``, ``cos θ`` (for the Jacobian coefficients).

    ``w = vee(R − Rᵀ)/2 = sin θ · u`` and ``cos θ = (tr R − 1)/2``, ``θ = atan2(‖w‖, cos θ)``
    ([Barfoot] eq. 7.37, [Solà] eq. 144). Branches:

    * general: ``ω = (θ / sin θ) w``;
    * small angle (θ below :data:`SMALL_ANGLE`): ``θ / sin θ ≈ 1 + θ²/6 + 7θ⁴/360``;
    * near π (``1 + cos θ`` below :data:`NEAR_PI`): ``w`` carries no direction, so the axis
      comes from ``(R + Rᵀ)/2 − cos θ I = (1 − cos θ) u uᵀ``: its column with the largest
      diagonal entry, normalized, signed like ``w``'s matching entry.
    """
    r, xp = rot, _xp(rot)
    w = 0.5 * xp.stack(
        [r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1
    )
    diag = xp.diagonal(r, 0, -2, -1)
    cosine = xp.clip(0.5 * ((diag[..., 0] + diag[..., 1] + diag[..., 2]) - 1), -1.0, 1.0)
    sin2 = _dot3(w, w)
    zero_sin = sin2 == 0
    sine = _safe(zero_sin, xp.sqrt(_safe(zero_sin, sin2)), 0.0)
    theta = xp.atan2(sine, cosine)
    theta2 = theta * theta
    small = _small(theta2)
    near_pi = (1 + cosine) <= NEAR_PI.get(_dtype_key(r), 1e-2)
    general = ~(small | near_pi)
    scale = _select(
        small,
        lambda: 1 + theta2 / 6 + 7 * theta2**2 / 360,
        lambda: theta / _safe(~general, sine),
    )
    omega = w * scale[..., None]
    if bool(near_pi.any()):  # (a data-dependent shortcut: the branch is rarely needed)
        omega = xp.where(near_pi[..., None], _so3_log_near_pi(r, w, diag, cosine, theta), omega)
    return omega, theta2, sine, cosine


def _so3_log_near_pi(r: Array, w: Array, diag: Array, cosine: Array, theta: Array) -> Array:
    """Near-π branch of :func:`_so3_log_parts`: ``θ u`` with the axis ``u`` read from the
    largest column of ``(R + Rᵀ)/2 − cos θ I = (1 − cos θ) u uᵀ``, signed like ``w``."""
    near_pi = (1 + cosine) <= NEAR_PI.get(_dtype_key(r), 1e-2)
    k = _argmax_last(diag)  # (..., 1)
    sym = 0.5 * (r + r.mT) - cosine[..., None, None] * _eye3(r)
    col = _take_last(sym, k[..., None, :])[..., 0]
    col = _safe(~near_pi[..., None], col)
    axis = col / _xp(r).sqrt(_dot3(col, col))[..., None]
    w_k = _take_last(w, k)[..., 0]
    return axis * _xp(r).where(w_k < 0, -theta, theta)[..., None]


@_kernel
def so3_log(rot: Tensor) -> Tensor:
    """``Log(R)``, ``(..., 3, 3)`` → ``(..., 3)`` (see :func:`_so3_log_parts` for branches)."""
    return _so3_log_parts(rot)[0]


def _so3_jr_inv(omega: Array, theta2: Array, sine: Array, cosine: Array) -> Array:
    alpha, beta = _half_cot_coefficient(theta2, sine, cosine)
    outer = omega[..., :, None] * omega[..., None, :]
    return alpha[..., None, None] * _eye3(omega) + beta[..., None, None] * outer + 0.5 * skew(omega)


@_kernel
def so3_right_jacobian_inv(omega: Tensor) -> Tensor:
    """``J_r⁻¹(ω) = α I + β ωωᵀ + ½[ω]×`` ([Barfoot] eq. 7.95 at −ω; [Solà] eq. 146)."""
    theta2 = _dot3(omega, omega)
    return _so3_jr_inv(omega, theta2, *_sin_cos(theta2))


# ------------------------------------------------------------------------------------------
# SE(3): tensors (..., 3, 4) = [R | t], tangent (ρ, ω)
# ------------------------------------------------------------------------------------------


@_kernel
def se3_inverse(x: Tensor) -> Tensor:
    """``X⁻¹ = [Rᵀ | −Rᵀ t]``."""
    rt = x[..., :3].mT
    return _xp(x).concat([rt, -(rt @ x[..., 3:])], -1)


@_kernel
def se3_compose(x: Tensor, y: Tensor) -> Tensor:
    """``X·Y = [R_x R_y | R_x t_y + t_x]``."""
    rx = x[..., :3]
    return _xp(x).concat([_mm(rx, y[..., :3]), rx @ y[..., 3:] + x[..., 3:]], -1)


def _se3_inv_compose(x: Array, y: Array) -> Array:
    """``X⁻¹·Y = [R_xᵀ R_y | R_xᵀ (t_y − t_x)]`` without forming ``X⁻¹``."""
    rxt = x[..., :3].mT
    return _xp(x).concat([_mm(rxt, y[..., :3]), rxt @ (y[..., 3:] - x[..., 3:])], -1)


@_kernel
def se3_exp(xi: Tensor) -> Tensor:
    """``Exp(ρ, ω) = [Exp(ω) | V ρ]``, ``V = I + B[ω]× + C[ω]×²`` ([Barfoot] eqs. 7.83, 7.86;
    [Solà] eqs. 172–174), ``(..., 6)`` → ``(..., 3, 4)``."""
    rho, omega = xi[..., :3], xi[..., 3:]
    a, b, c = _sinc_coefficients(_dot3(omega, omega))
    k = skew(omega)
    k2 = _mm(k, k)
    eye = _eye3(xi)
    rot = eye + a[..., None, None] * k + b[..., None, None] * k2
    v = eye + b[..., None, None] * k + c[..., None, None] * k2
    return _xp(xi).concat([rot, v @ rho[..., None]], -1)


@_kernel(native=_native.retract)
def se3_retract(x: Tensor, delta: Tensor) -> Tensor:
    """Right retraction ``X ⊕ δ = X · Exp(δ)`` (Theseus' ``LieGroup.retract``)."""
    return se3_compose(x, se3_exp(delta))


def _se3_log_parts(x: Array) -> Tuple[Array, Tuple[Array, ...]]:
    """``Log(X)`` and its rotation's scalars ``(θ², sin θ, cos θ, α, β)`` (``α``, ``β``:
    :func:`_half_cot_coefficient`), which ``J_r⁻¹(Log X)`` reuses."""
    omega, theta2, sine, cosine = _so3_log_parts(x[..., :3])
    # ρ = V⁻¹ t = J_l⁻¹(ω) t = α t − ½ ω × t + β ω (ωᵀ t)  ([Barfoot] eq. 7.95, J_l⁻¹ = J_r⁻¹(−ω))
    alpha, beta = _half_cot_coefficient(theta2, sine, cosine)
    t = x[..., 3]
    rho = (
        alpha[..., None] * t
        - 0.5 * _cross(omega, t)
        + (beta * _dot3(omega, t))[..., None] * omega
    )
    return _xp(x).concat([rho, omega], -1), (theta2, sine, cosine, alpha, beta)


@_kernel
def se3_log(x: Tensor) -> Tensor:
    """``Log(X) = (V⁻¹ t, Log(R))``, ``(..., 3, 4)`` → ``(..., 6)`` ([Barfoot] eq. 7.86)."""
    return _se3_log_parts(x)[0]


def _se3_jr_inv_blocks(
    xi: Array, theta2: Array, sine: Array, cosine: Array, alpha: Array, beta: Array
) -> Tuple[Array, Array]:
    """Blocks of ``J_r⁻¹(ρ, ω) = [[J⁻¹, T], [0, J⁻¹]]``: ``J⁻¹ = J_r⁻¹(ω)`` and
    ``T = −J⁻¹ Q(−ρ, −ω) J⁻¹`` ([Barfoot] eqs. 7.86, 7.94 for the left Jacobian with
    ``J_r(ξ) = J_l(−ξ)``; [Solà] eqs. 179–180), expanded with ``[ω]×² = ωωᵀ − θ² I`` to
    ``T = γ (ωᵀρ) ωωᵀ + β (ωρᵀ + ρωᵀ) + δ (ωᵀρ) I + ½[ρ]×`` (no 3×3 products; the same
    expansion as Theseus' torchlie; tests check it against ``(∫₀¹ exp(−s ad_ξ) ds)⁻¹``).
    """
    rho, omega = xi[..., :3], xi[..., 3:]
    gamma, delta = _se3_jr_inv_coefficients(theta2, sine, cosine)
    eye = _eye3(xi)
    w_col, w_row = omega[..., :, None], omega[..., None, :]
    outer = w_col * w_row
    jinv = alpha[..., None, None] * eye + beta[..., None, None] * outer + 0.5 * skew(omega)
    e = _dot3(omega, rho)[..., None, None]
    bw = beta[..., None, None] * w_col
    top_right = (
        (gamma[..., None, None] * e) * outer
        + bw * rho[..., None, :]
        + rho[..., :, None] * (beta[..., None] * omega)[..., None, :]
        + (delta[..., None, None] * e) * eye
        + 0.5 * skew(rho)
    )
    return jinv, top_right


def _block_upper(a: Array, b: Array, d: Array) -> Array:
    """``[[a, b], [0, d]]`` from 3×3 blocks."""
    out = _zeros(a, *a.shape[:-2], 6, 6)
    out[..., :3, :3] = a
    out[..., :3, 3:] = b
    out[..., 3:, 3:] = d
    return out


def _se3_jr_inv(xi: Array, *scalars: Array) -> Array:
    """``J_r⁻¹(ξ)`` from ``ξ`` and its rotation's ``(θ², sin θ, cos θ, α, β)``."""
    jinv, top_right = _se3_jr_inv_blocks(xi, *scalars)
    return _block_upper(jinv, top_right, jinv)


@_kernel
def se3_right_jacobian_inv(xi: Tensor) -> Tensor:
    """``J_r⁻¹(ξ)`` of SE(3), ``(..., 6)`` → ``(..., 6, 6)``: ``Log(Exp(ξ)·Exp(δ)) ≈ ξ + J_r⁻¹ δ``."""
    theta2 = _dot3(xi[..., 3:], xi[..., 3:])
    sine, cosine = _sin_cos(theta2)
    return _se3_jr_inv(xi, theta2, sine, cosine, *_half_cot_coefficient(theta2, sine, cosine))


def _se3_adjoint_blocks(x: Array) -> Tuple[Array, Array]:
    rot = x[..., :3]
    return rot, _mm(skew(x[..., 3]), rot)


@_kernel
def se3_adjoint(x: Tensor) -> Tensor:
    """``Ad(X) = [[R, [t]× R], [0, R]]`` in (ρ, ω) order ([Barfoot] eq. 7.45; [Solà] eq. 176)."""
    rot, tr = _se3_adjoint_blocks(x)
    return _block_upper(rot, tr, rot)


class BetweenLogParts(NamedTuple):
    """A between residual ``e = Log(Z⁻¹ Xᵢ⁻¹ Xⱼ)`` with the intermediates its Jacobians need,
    so that an error evaluation can be reused by the linearization at the same point.

    Attributes:
        err: ``e``, ``(..., d)``.
        rel: ``Xᵢ⁻¹ Xⱼ`` (for ``∂e/∂δᵢ = −∂e/∂δⱼ · Ad(rel⁻¹)``).
        log_scalars: the logarithm's scalars that ``J_r⁻¹(e)`` reuses: SE(3)
            ``(θ², sin θ, cos θ, α, β)`` of ``e``'s rotation (:func:`_half_cot_coefficient`); SE(2) ``(α,)``, ``α = (θ/2) cot(θ/2)``.
            A tuple, or one tensor stacking them along its first dimension (as the fused
            compiled kernel returns them); either unpacks into the scalars.
    """

    err: Tensor
    rel: Tensor
    log_scalars: Union[Tuple[Tensor, ...], Tensor]


def _compiled_log_parts(element: Tuple[int, ...]) -> Callable[[Tensor, Tensor, Tensor], Optional[BetweenLogParts]]:
    """The compiled form of a ``*_between_log_parts`` kernel on ``element``-shaped tensors."""

    def run(xi: Tensor, xj: Tensor, z: Tensor) -> Optional[BetweenLogParts]:
        parts = _native.between_log_parts(xi, xj, z, element)
        return None if parts is None else BetweenLogParts(*parts)

    return run


def _compiled_jacobian_from_parts(parts: BetweenLogParts) -> Tensor:
    """The compiled form of the ``*_between_jacobian_from_parts`` kernels."""
    return _native.right_jacobian_inv(parts.err, parts.log_scalars)


@_kernel(native=_compiled_log_parts((3, 4)))
def se3_between_log_parts(xi: Tensor, xj: Tensor, z: Tensor) -> BetweenLogParts:
    """``e = Log(E)``, ``E = Z⁻¹ Xᵢ⁻¹ Xⱼ`` ([Barfoot] eq. 7.86 via :func:`_se3_log_parts`),
    with ``rel = Xᵢ⁻¹ Xⱼ`` and ``(θ², sin θ, cos θ, α, β)``: everything
    :func:`se3_between_jacobian_from_parts` needs, without a second logarithm."""
    rel = _se3_inv_compose(xi, xj)
    err, scalars = _se3_log_parts(_se3_inv_compose(z, rel))
    return BetweenLogParts(err, rel, scalars)


@_kernel(native=_compiled_jacobian_from_parts)
def se3_between_jacobian_from_parts(parts: BetweenLogParts) -> Tensor:
    """``∂e/∂δⱼ = J_r⁻¹(e)`` ``(..., 6, 6)`` ([Solà] eqs. 179–180; see
    :func:`_se3_jr_inv_blocks`) from :func:`se3_between_log_parts`' result."""
    return _se3_jr_inv(parts.err, *parts.log_scalars)


@_kernel(composed=True)
def se3_between_error(xi: Tensor, xj: Tensor, z: Tensor) -> Tensor:
    """``e = Log(Z⁻¹ Xᵢ⁻¹ Xⱼ)``, ``(..., 6)``."""
    return se3_between_log_parts(xi, xj, z).err


@_kernel(composed=True)
def se3_between_parts(xi: Tensor, xj: Tensor, z: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``e = Log(E)``, ``E = Z⁻¹ Xᵢ⁻¹ Xⱼ``, its Jacobian ``∂e/∂δⱼ = J_r⁻¹(e)`` and
    ``rel = Xᵢ⁻¹ Xⱼ`` (for ``∂e/∂δᵢ``, see :func:`se3_between_error_jacobians`)."""
    parts = se3_between_log_parts(xi, xj, z)
    return parts.err, se3_between_jacobian_from_parts(parts), parts.rel


@_kernel(native=_native.mul_adjoint_inverse)
def se3_mul_adjoint_inverse(m: Tensor, rel: Tensor) -> Tensor:
    """``M · Ad(rel⁻¹)`` for ``M`` ``(..., k, 6)``.

    With ``rel = [R | t]``, ``Ad(rel⁻¹) = [[Rᵀ, −Rᵀ[t]×], [0, Rᵀ]]`` ([Barfoot] eq. 7.45 at
    ``[Rᵀ | −Rᵀt]``, with ``[Rᵀt]× = Rᵀ[t]×R``), so ``M Ad = [P, M_R Rᵀ − P[t]×]`` with
    ``P = M_L Rᵀ`` (``M_L``/``M_R``: first/last three columns); row r of ``P[t]×`` is
    ``P[r] × t``. ``M_L Rᵀ`` and ``M_R Rᵀ`` are one product: ``M``'s rows read as ``2k`` rows
    of three, times ``Rᵀ``.
    """
    k = m.shape[-2]
    lead = m.shape[:-2]
    q = _mm(m.reshape(*lead, 2 * k, 3), rel[..., :3].mT).reshape(*lead, k, 2, 3)
    p = q[..., 0, :]
    return _xp(m).concat([p, q[..., 1, :] - _cross(p, rel[..., None, :, 3])], -1)


@_kernel(composed=True)
def se3_between_error_jacobians(xi: Tensor, xj: Tensor, z: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """``e = Log(E)``, ``E = Z⁻¹ Xᵢ⁻¹ Xⱼ``, and its right-perturbation Jacobians.

    ``∂e/∂δⱼ = J_r⁻¹(e)`` and ``∂e/∂δᵢ = −J_r⁻¹(e) Ad(Xⱼ⁻¹ Xᵢ)`` ([Solà] eqs. 28–31, 39 and
    ``Z⁻¹ (Xᵢ Exp(δ))⁻¹ Xⱼ = E · Exp(−Ad(Xⱼ⁻¹ Xᵢ) δ)``). Returns ``(e, J_i, J_j)``, shapes
    ``(..., 6)``, ``(..., 6, 6)``, ``(..., 6, 6)``.
    """
    err, jj, rel = se3_between_parts(xi, xj, z)
    return err, -se3_mul_adjoint_inverse(jj, rel), jj


# ------------------------------------------------------------------------------------------
# SE(2): tensors (..., 4) = (x, y, cos θ, sin θ), tangent (x, y, θ)
# ------------------------------------------------------------------------------------------


def _se2_parts(x: Array) -> Tuple[Array, Array, Array, Array]:
    return x[..., 0], x[..., 1], x[..., 2], x[..., 3]


@_kernel
def se2_inverse(x: Tensor) -> Tensor:
    """``X⁻¹ = (−Rᵀ t, Rᵀ)``."""
    tx, ty, c, s = _se2_parts(x)
    return _xp(x).stack([-(c * tx + s * ty), s * tx - c * ty, c, -s], -1)


@_kernel
def se2_compose(x: Tensor, y: Tensor) -> Tensor:
    """``X·Y = (R_x t_y + t_x, R_x R_y)``."""
    ax, ay, ac, as_ = _se2_parts(x)
    bx, by, bc, bs = _se2_parts(y)
    return _xp(x).stack(
        [ac * bx - as_ * by + ax, as_ * bx + ac * by + ay, ac * bc - as_ * bs, as_ * bc + ac * bs], -1
    )


def _se2_inv_compose(x: Array, y: Array) -> Array:
    """``X⁻¹·Y = (R_xᵀ (t_y − t_x), R_xᵀ R_y)``."""
    ax, ay, ac, as_ = _se2_parts(x)
    bx, by, bc, bs = _se2_parts(y)
    dx, dy = bx - ax, by - ay
    return _xp(x).stack(
        [ac * dx + as_ * dy, ac * dy - as_ * dx, ac * bc + as_ * bs, ac * bs - as_ * bc], -1
    )


@_kernel
def se2_exp(xi: Tensor) -> Tensor:
    """``Exp(ρ, θ) = (V ρ, θ)``, ``V = [[A, −B θ], [B θ, A]]`` with ``A = sin θ/θ``,
    ``B = (1 − cos θ)/θ²`` ([Solà] eqs. 156–158)."""
    th = xi[..., 2]
    a, b, _ = _sinc_coefficients(th * th)
    bt = b * th
    px, py = xi[..., 0], xi[..., 1]
    xp = _xp(xi)
    return xp.stack([a * px - bt * py, bt * px + a * py, xp.cos(th), xp.sin(th)], -1)


@_kernel(native=_native.retract)
def se2_retract(x: Tensor, delta: Tensor) -> Tensor:
    """Right retraction ``X ⊕ δ = X · Exp(δ)``."""
    return se2_compose(x, se2_exp(delta))


def _se2_log_parts(x: Array) -> Tuple[Array, Array, Array]:
    """``(ρ, θ)`` with ``ρ = V⁻¹ t = [[α, θ/2], [−θ/2, α]] t``, ``α = (θ/2) cot(θ/2)``
    ([Solà] eq. 158), and ``α``. ``θ = atan2(sin, cos)``."""
    xp = _xp(x)
    tx, ty, c, s = _se2_parts(x)
    th = xp.atan2(s, c)
    th2 = th * th
    norm = xp.sqrt(c * c + s * s)  # (cos, sin) may drift off the unit circle
    # α is even in θ: feed |sin θ| (θ ∈ (−π, π], so θ sin θ = |θ| |sin θ|)
    alpha, _ = _half_cot_coefficient(th2, abs(s) / norm, c / norm)
    half = 0.5 * th
    rho = xp.stack([alpha * tx + half * ty, alpha * ty - half * tx, th], -1)
    return rho, alpha, th


@_kernel
def se2_log(x: Tensor) -> Tensor:
    """``Log(X)``, ``(..., 4)`` → ``(..., 3)``."""
    return _se2_log_parts(x)[0]


def _se2_jr_inv(xi: Array, alpha: Array) -> Array:
    """``J_r⁻¹(ρ, θ) = [[M⁻¹, −M⁻¹ v], [0, 1]]`` from [Solà] eq. 163,
    ``J_r = [[M, v], [0, 1]]``, ``M = [[A, B θ], [−B θ, A]]``, so
    ``M⁻¹ = [[α, −θ/2], [θ/2, α]]``; ``v = (θρ₁ − ρ₂ + ρ₂ cos θ − ρ₁ sin θ,
    ρ₁ + θρ₂ − ρ₁ cos θ − ρ₂ sin θ)/θ²`` with series
    ``v ≈ (θρ₁ S − ρ₂ H, ρ₁ H + θρ₂ S)``, ``S = 1/6 − θ²/120 + θ⁴/5040``,
    ``H = 1/2 − θ²/24 + θ⁴/720`` below :data:`SMALL_ANGLE`."""
    xp = _xp(xi)
    p1, p2, th = xi[..., 0], xi[..., 1], xi[..., 2]
    th2 = th * th
    small = _small(th2)
    t = _safe(small, th)
    s, c = xp.sin(t), xp.cos(t)
    t2 = t * t
    v1 = xp.where(
        small,
        p1 * th * (1 / 6 - th2 / 120 + th2**2 / 5040) - p2 * (0.5 - th2 / 24 + th2**2 / 720),
        (t * p1 - p2 + p2 * c - p1 * s) / t2,
    )
    v2 = xp.where(
        small,
        p1 * (0.5 - th2 / 24 + th2**2 / 720) + p2 * th * (1 / 6 - th2 / 120 + th2**2 / 5040),
        (p1 + t * p2 - p1 * c - p2 * s) / t2,
    )
    half = 0.5 * th
    # −M⁻¹ v
    u1 = -(alpha * v1 - half * v2)
    u2 = -(half * v1 + alpha * v2)
    zero, one = xp.zeros_like(th), xp.ones_like(th)
    rows = [alpha, -half, u1, half, alpha, u2, zero, zero, one]
    return xp.stack(rows, -1).reshape(*th.shape, 3, 3)


@_kernel
def se2_right_jacobian_inv(xi: Tensor) -> Tensor:
    """``J_r⁻¹(ξ)`` of SE(2), ``(..., 3)`` → ``(..., 3, 3)``."""
    xp = _xp(xi)
    th = xi[..., 2]
    alpha, _ = _half_cot_coefficient(th * th, abs(xp.sin(th)), xp.cos(th))
    return _se2_jr_inv(xi, alpha)


@_kernel
def se2_adjoint(x: Tensor) -> Tensor:
    """``Ad(X) = [[R, (t_y, −t_x)ᵀ], [0, 1]]`` ([Solà] eq. 161)."""
    xp = _xp(x)
    tx, ty, c, s = _se2_parts(x)
    zero, one = xp.zeros_like(c), xp.ones_like(c)
    return xp.stack([c, -s, ty, s, c, -tx, zero, zero, one], -1).reshape(*c.shape, 3, 3)


@_kernel(native=_compiled_log_parts((4,)))
def se2_between_log_parts(xi: Tensor, xj: Tensor, z: Tensor) -> BetweenLogParts:
    """SE(2) version of :func:`se3_between_log_parts`: ``e = Log(Z⁻¹ Xᵢ⁻¹ Xⱼ)`` ([Solà]
    eq. 158 via :func:`_se2_log_parts`), ``rel = Xᵢ⁻¹ Xⱼ`` and ``(α,)``."""
    rel = _se2_inv_compose(xi, xj)
    err, alpha, _ = _se2_log_parts(_se2_inv_compose(z, rel))
    return BetweenLogParts(err, rel, (alpha,))


@_kernel(native=_compiled_jacobian_from_parts)
def se2_between_jacobian_from_parts(parts: BetweenLogParts) -> Tensor:
    """``∂e/∂δⱼ = J_r⁻¹(e)`` ``(..., 3, 3)`` ([Solà] eq. 163; see :func:`_se2_jr_inv`) from
    :func:`se2_between_log_parts`' result."""
    return _se2_jr_inv(parts.err, *parts.log_scalars)


@_kernel(composed=True)
def se2_between_error(xi: Tensor, xj: Tensor, z: Tensor) -> Tensor:
    """``e = Log(Z⁻¹ Xᵢ⁻¹ Xⱼ)``, ``(..., 3)``."""
    return se2_between_log_parts(xi, xj, z).err


@_kernel(composed=True)
def se2_between_parts(xi: Tensor, xj: Tensor, z: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """SE(2) version of :func:`se3_between_parts`: ``(e, J_r⁻¹(e), Xᵢ⁻¹ Xⱼ)``."""
    parts = se2_between_log_parts(xi, xj, z)
    return parts.err, se2_between_jacobian_from_parts(parts), parts.rel


@_kernel(native=_native.mul_adjoint_inverse)
def se2_mul_adjoint_inverse(m: Tensor, rel: Tensor) -> Tensor:
    """``M · Ad(rel⁻¹)`` for ``M`` ``(..., k, 3)``."""
    return _mm(m, se2_adjoint(se2_inverse(rel)))


@_kernel(composed=True)
def se2_between_error_jacobians(xi: Tensor, xj: Tensor, z: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """SE(2) version of :func:`se3_between_error_jacobians`: ``(e, J_i, J_j)``."""
    err, jj, rel = se2_between_parts(xi, xj, z)
    return err, -se2_mul_adjoint_inverse(jj, rel), jj
