"""The rule for rotations handed in as numbers: refused, made a rotation with a warning, or used as given.

One rule for every rotation posegraph takes as numbers -- poses and measurements given to the
builder (SE3 matrices, SE2 ``(cos, sin)``), the poses :mod:`posegraph.eval` compares, and the
quaternions and matrices the g2o, TUM and KITTI readers read -- the g2o reader's rule for
quaternions, extended to matrices (:func:`check_rotations`):

* **Refused**, when the numbers cannot be made a rotation: non-finite numbers, the zero
  quaternion (or ``(cos, sin) = (0, 0)``), a matrix with ``det R <= 0`` (singular, or a
  reflection).  The error is the site's :class:`~posegraph.errors.PoseGraphError` subclass,
  naming where (file and line, the builder's argument, the evaluation's input), what was
  expected and what was received.
* **Made a rotation, with one warning per call**, when the defect
  (:func:`rotation_defect`: ``|‖q‖ - 1|``, ``max(|RᵀR - I|, |det R - 1|)``) is beyond the
  precision of the numbers: a quaternion is normalized, a matrix replaced by its nearest
  rotation (:func:`nearest_rotation`, the polar decomposition), the same projection for both.
  The warning names the first (file:line or argument), its defect, the precision, and the count.
  ``2·I`` becomes ``I``; it is never silently taken as it is.
* **Used as given**, silently, within the precision (the readers still normalize quaternions
  and make matrices exactly orthonormal).

The precision is :data:`ROTATION_TOLERANCE` of the dtype for tensors (1e-6 float64, 1e-4
float32) and, for text, that of the printed digits (:func:`printed_precision`: at least
float64's 1e-6, at most :data:`PRINTED_PRECISION_CAP`), so a file written with 4 decimals or
6 significant digits reads without a warning.

The rule reads the numbers through NumPy (on the CPU) and returns a projected copy of the
input's type, dtype and device.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
import numpy as np
import torch
from torch import Tensor
from posegraph.errors import PoseGraphError


#: Precision of a rotation held in a tensor, per dtype: the largest defect (:func:`rotation_defect`)
#: used as given. Round-off of a rotation computed in that precision stays well below it; beyond
#: it a rotation is made one, with a warning (:func:`check_rotations`).
ROTATION_TOLERANCE: Dict[torch.dtype, float] = {torch.float64: 1e-6, torch.float32: 1e-4}


#: The coarsest precision printed digits are granted (:func:`printed_precision`), the threshold
#: the file readers warned at before the rule was one: a row of whole numbers (``0 0 0 2``,
#: ``2 0 0 0 2 0 0 0 2``) is ±½ by its digits, which must not excuse a quaternion of norm 2 or
#: a ``2·I`` block.
PRINTED_PRECISION_CAP = 1e-3


#: What :func:`check_rotations` and :func:`rotation_defect` take (see :func:`rotation_defect`).
ROTATION_KINDS = ("matrix", "SE3", "SE2", "quaternion")


_DEFECT_FORMULA = {
    "matrix": "max(|RᵀR − I|, |det R − 1|)",
    "SE3": "max(|RᵀR − I|, |det R − 1|)",
    "SE2": "|cos² + sin² − 1|",
    "quaternion": "|‖q‖ − 1|",
}


_PROJECTION = {
    "matrix": "the nearest rotation, U·Vᵀ of the polar decomposition",
    "SE3": "the nearest rotation, U·Vᵀ of the polar decomposition",
    "SE2": "(cos, sin) normalized",
    "quaternion": "normalized",
}


def rotation_tolerance(dtype: torch.dtype) -> float:
    """:data:`ROTATION_TOLERANCE` of ``dtype`` (float16/bfloat16: 1e-2)."""
    return ROTATION_TOLERANCE.get(dtype, 1e-2)


def _check_kind(kind: str) -> None:
    if kind not in ROTATION_KINDS:
        raise ValueError(f"rotation kind: expected one of {', '.join(ROTATION_KINDS)}, received {kind!r}")


def _as_numpy(x: Any) -> "np.ndarray":
    """The numbers of a tensor (detached, on the CPU; float32/float64 kept, others as float64)
    or of an array-like, as a NumPy array (no copy where none is needed)."""
    if isinstance(x, Tensor):
        x = x.detach()
        if x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float64)
        return x.cpu().numpy()
    a = np.asarray(x)
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


def _tolerance_of(x: Any) -> Tuple[float, str]:
    """:func:`rotation_tolerance` of the dtype of ``x`` (tensor or array) and the dtype's name."""
    if isinstance(x, Tensor):
        return rotation_tolerance(x.dtype), str(x.dtype).replace("torch.", "")
    dtype = torch.float32 if np.asarray(x).dtype == np.float32 else torch.float64
    return rotation_tolerance(dtype), str(dtype).replace("torch.", "")


def _element_ndim(kind: str) -> int:
    """Trailing dimensions of one element of ``kind`` (2 for matrices and SE3, else 1)."""
    return 2 if kind in ("matrix", "SE3") else 1


def _rotations_of(a: "np.ndarray", kind: str) -> "np.ndarray":
    """``(N, *rotation shape)``: the rotation part of each element (leading dims flattened)."""
    if kind == "SE3":
        a = a[..., :3, :3]
    elif kind == "SE2":
        a = a[..., 2:4]
    inner = _element_ndim(kind)
    return a.reshape(-1, *a.shape[a.ndim - inner:])


def _defects(rot: "np.ndarray", kind: str) -> Tuple["np.ndarray", "np.ndarray", "np.ndarray"]:
    """Per rotation of ``rot`` ``(N, …)``: the defect, whether it is refused (non-finite; zero
    vector; ``det R ≤ 0``), and ``det R`` (matrices) or the largest ``|component|`` (vectors)."""
    axes = (1, 2) if rot.ndim == 3 else (1,)
    finite = np.isfinite(rot).all(axis=axes)
    if rot.ndim == 3:
        det = np.linalg.det(rot)
        gram = np.abs(np.swapaxes(rot, 1, 2) @ rot - np.eye(rot.shape[-1])).max(axis=(1, 2))
        return np.maximum(gram, np.abs(det - 1.0)), ~finite | ~(det > 0), det
    largest = np.abs(rot).max(axis=1)
    square = (rot * rot).sum(axis=1)
    defect = np.abs(square - 1.0) if kind == "SE2" else np.abs(np.sqrt(square) - 1.0)
    return defect, ~finite | (largest < np.finfo(rot.dtype).tiny), largest


#: Per kind: the number of numbers of one element, and the positions of its rotation's.
_ONE_ELEMENT: Dict[str, Tuple[int, Tuple[int, ...]]] = {
    "SE3": (12, (0, 1, 2, 4, 5, 6, 8, 9, 10)),
    "SE2": (4, (2, 3)),
    "matrix": (9, tuple(range(9))),
    "quaternion": (4, (0, 1, 2, 3)),
}


def _flat(nested: Any) -> List[float]:
    """The numbers of a ``tolist()``, flattened."""
    while nested and isinstance(nested[0], list):
        nested = [v for part in nested for v in part]
    return nested


def _defect_of_one(v: List[float], kind: str) -> float:
    """:func:`_defects`' defect of one 3×3 matrix (9 numbers, row-major) or one vector, in
    plain Python: the builder checks one pose per call, where NumPy's dozen calls on a tiny
    array cost several times more. nan when a number is not finite (the caller then takes
    NumPy's path)."""
    if not math.isfinite(sum(v)):
        return math.nan
    if kind in ("SE2", "quaternion"):
        square = sum(c * c for c in v)
        return abs(square - 1.0) if kind == "SE2" else abs(math.sqrt(square) - 1.0)
    a, b, c, d, e, f, g, h, i = v
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    gram = (
        a * a + d * d + g * g - 1.0, b * b + e * e + h * h - 1.0, c * c + f * f + i * i - 1.0,
        a * b + d * e + g * h, a * c + d * f + g * i, b * c + e * f + h * i,
    )
    return max(abs(det - 1.0), *(abs(x) for x in gram))


def rotation_defect(x: Tensor, kind: str = "matrix") -> Tensor:
    """How far the rotations in ``x`` are from being rotations, per element (on ``x``'s device).

    ``kind``: ``"matrix"`` for rotation matrices ``(..., 3, 3)`` or ``(..., 2, 2)``, ``"SE3"`` for
    Theseus SE3 tensors ``(..., 3, 4) = [R | t]``, ``"SE2"`` for Theseus SE2 tensors
    ``(..., 4) = [x, y, cos, sin]`` (a batch of three SE2 poses has the shape of one SE3
    pose: the kind is never guessed), ``"quaternion"`` for quaternions ``(..., 4)`` (any order
    of the components). For matrices the defect is ``max(max|RᵀR − I|, |det R − 1|)``: 0 for
    a rotation, ``7`` for ``2·I`` (``det = 8``), ``1`` for the zero matrix, ``2`` for a
    reflection. For SE2, ``R = [[c, −s], [s, c]]`` gives ``RᵀR = (c² + s²) I`` and
    ``det R = c² + s²``, so the defect is ``|c² + s² − 1|``. For a quaternion it is
    ``|‖q‖ − 1|``. Non-finite input gives a non-finite defect. What the rule does with it:
    :func:`check_rotations`.
    """
    _check_kind(kind)
    a = _as_numpy(x)
    lead = a.shape[: a.ndim - _element_ndim(kind)]
    with np.errstate(all="ignore"):
        defect = _defects(_rotations_of(a, kind), kind)[0]
    out = torch.as_tensor(defect.reshape(lead))
    return out.to(x.device) if isinstance(x, Tensor) else out


def nearest_rotation(mats: "np.ndarray") -> "np.ndarray":
    """The nearest rotations, in the Frobenius norm, to ``(..., k, k)`` matrices.

    With the SVD ``M = U S Vᵀ`` it is ``U diag(1, …, 1, d) Vᵀ``, ``d = sign det(U Vᵀ)``
    (Umeyama 1991, "Least-squares estimation of transformation parameters between two point
    patterns", IEEE TPAMI 13(4), eqs. 39–40). Where ``det M > 0`` (every matrix the rotation
    rule makes a rotation) ``d = 1`` and this is ``U Vᵀ``, the orthogonal factor of the polar
    decomposition ``M = (U Vᵀ)(V S Vᵀ)`` (Higham 1986, "Computing the polar decomposition — with
    applications", SIAM J. Sci. Stat. Comput. 7(4)): unique for a nonsingular ``M``, and
    unchanged by a positive scale (``2·R`` gives ``R``).
    """
    u, _, vt = np.linalg.svd(mats)
    d = np.sign(np.linalg.det(u @ vt))
    d[d == 0] = 1.0
    u[..., :, -1] *= d[..., None]
    return u @ vt


def _made_rotations(rot: "np.ndarray", kind: str) -> "np.ndarray":
    """``rot`` ``(n, …)`` (none refused) made rotations: vectors normalized (scaled by their
    largest component first, so no square underflows or overflows), matrices
    :func:`nearest_rotation`. ``q/‖q‖`` is the nearest unit quaternion, and ``(c, s)/‖(c, s)‖``
    the polar factor of ``[[c, −s], [s, c]]``: the same projection for every representation."""
    if rot.ndim == 3:
        return nearest_rotation(rot)
    scaled = rot / np.abs(rot).max(axis=1, keepdims=True)
    return scaled / np.sqrt((scaled * scaled).sum(axis=1, keepdims=True))


def _printed_digits(token: str) -> Tuple[int, int]:
    """``(decimals, significant digits)`` of a number token as ``float`` reads it: the
    position of its last printed digit (``0.1234`` → 4, ``1.234560e-01`` → 7, ``12`` → 0) and
    the count of its digits after leading zeros (``0.00120`` → 3, ``0`` → 0)."""
    mantissa, _, exponent = token.lower().lstrip("+-").partition("e")
    whole, _, fraction = mantissa.replace("_", "").partition(".")
    try:
        shift = int(exponent) if exponent else 0
    except ValueError:
        shift = 0
    return len(fraction) - shift, len((whole + fraction).lstrip("0"))


def printed_precision(rows: Sequence[Sequence[str]], kind: str) -> "np.ndarray":
    """The precision of rotations printed as text, per row of number tokens (the 4 numbers of
    a quaternion, or the ``k²`` of a ``k×k`` matrix, as ``float`` reads them).

    **The rounding of a row.** Its numbers are taken as printed by one writer, to as many
    decimals as its most precise number shows (``D``: fixed-point writers, ``%.4f``) or to as
    many significant digits (``S``: ``%g``, ``%e``, ``repr``), whichever is coarser for its
    largest number ``m``: each is off by at most ``ε = ½·max(10^−D, 10^(e + 1 − S))``,
    ``e = ⌊log₁₀ m⌋`` (the place of ``m``'s leading digit). A writer that strips trailing
    zeros (``%g`` prints ``0.5`` and ``1``) only lowers ``D`` and ``S``, which raises ``ε``: its
    files never warn for their rounding.

    **Its effect on the defect** (:func:`rotation_defect`). The row is off by
    ``‖Δ‖₂ ≤ √n·ε`` (``n`` numbers) from the rotation it was printed from, so:

    * quaternion: ``|‖q̃‖ − 1| ≤ ‖q̃ − q‖₂ ≤ 2ε`` (triangle inequality);
    * ``k×k`` matrix: every singular value of ``R̃ = R + Δ`` is within ``‖Δ‖₂ ≤ ‖Δ‖_F ≤ kε`` of
      1 (Weyl's inequality for singular values; Horn & Johnson, "Topics in Matrix Analysis",
      Thm 3.3.16), so ``max|R̃ᵀR̃ − I| ≤ (1 + kε)² − 1`` and ``|det R̃ − 1| ≤ (1 + kε)^k − 1``:
      the bound is the latter (≈ 9ε for 3×3).

    The precision is that bound, at least float64's :data:`ROTATION_TOLERANCE` and at most
    :data:`PRINTED_PRECISION_CAP` (a row of whole numbers such as ``0 0 0 2`` has ``ε = ½``).
    Examples: 4-decimal quaternions 1e-4; a KITTI matrix of 6 significant digits 4.5e-6, or
    4.5e-5 where an entry reads ``1.00000e+00`` (or ``%g``'s ``1``); numbers written by
    ``repr`` 1e-6.
    """
    if kind not in ("quaternion", "matrix"):
        raise ValueError(f"printed_precision: expected kind 'quaternion' or 'matrix', received {kind!r}")
    out = np.empty(len(rows))
    for r, tokens in enumerate(rows):
        digits = [_printed_digits(t) for t in tokens]
        decimals = max((d for d, _ in digits), default=0)
        significant = max((s for _, s in digits), default=0)
        largest = max((abs(float(t)) for t in tokens), default=0.0)
        lead = math.floor(math.log10(largest)) if largest > 0 else 0  # its leading digit's place
        eps = 0.5 * 10.0 ** min(max(-decimals, lead + 1 - significant), 0)
        n = len(tokens)
        k = math.isqrt(n)
        out[r] = 2.0 * eps if kind == "quaternion" else (1.0 + k * eps) ** k - 1.0
    return np.maximum(ROTATION_TOLERANCE[torch.float64], np.minimum(PRINTED_PRECISION_CAP, out))


def _refusal(rot: "np.ndarray", kind: str, measure: float) -> str:
    """Why a refused rotation is not one: expected, received."""
    if not np.isfinite(rot).all():
        shown = " ".join(f"{v:.6g}" for v in rot.reshape(-1))
        return f"expected a rotation, received non-finite numbers ({shown})"
    if kind == "quaternion":
        return "expected a rotation, received the zero quaternion, which is none (it has no direction to normalize)"
    if kind == "SE2":
        return "expected a rotation (cos, sin), received (0, 0), which has no angle"
    what = "singular" if measure == 0 else "a reflection"
    return f"expected a rotation matrix (det R > 0), received one with det R = {measure:.6g} ({what})"


def refused_rotations(x: Tensor, kind: str) -> Tensor:
    """Which elements of ``x`` the rule refuses (:func:`check_rotations`' refusals: non-finite
    numbers, ``(cos, sin) = (0, 0)``, the zero quaternion, ``det R ≤ 0``), as a ``bool`` tensor
    over the flattened elements, on ``x``'s device and without leaving torch (no copy to the
    CPU, no projection): the check for inputs that must be used as given, such as the
    differentiable inputs of :class:`~posegraph.solve.layer.PoseGraphLayer`. ``det R`` of a
    3×3 matrix is its cofactor expansion, computed batched."""
    _check_kind(kind)
    x = x.detach()
    if kind == "SE3":
        x = x[..., :3, :3]
    elif kind == "SE2":
        x = x[..., 2:4]
    inner = _element_ndim(kind)
    rot = x.reshape(-1, *x.shape[x.ndim - inner:])
    finite = torch.isfinite(rot).flatten(1).all(1)
    if inner == 1:
        tiny = torch.finfo(rot.dtype).tiny
        return ~finite | ~(rot.abs().amax(1) >= tiny)
    if rot.shape[-1] == 3:
        a, b, c = rot[:, 0, 0], rot[:, 0, 1], rot[:, 0, 2]
        d, e, f = rot[:, 1, 0], rot[:, 1, 1], rot[:, 1, 2]
        g, h, i = rot[:, 2, 0], rot[:, 2, 1], rot[:, 2, 2]
        det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    else:
        det = torch.linalg.det(rot)
    return ~finite | ~(det > 0)


def refuse_rotations(x: Tensor, kind: str, name: Callable[[int], str], *, error: type = PoseGraphError) -> None:
    """Raise ``error`` for the first element of ``x`` the rotation rule refuses
    (:func:`refused_rotations`), with :func:`check_rotations`' message, ``name(k)`` naming
    element ``k`` of the flattened leading dimensions; return ``None`` when none is refused.
    Rotations beyond their precision are neither warned about nor projected: ``x`` is used as
    given (gradients keep flowing to it)."""
    refused = refused_rotations(x, kind)
    if not bool(refused.any()):
        return
    k = int(torch.nonzero(refused)[0, 0])
    rot = _rotations_of(_as_numpy(x), kind)[k : k + 1]
    with np.errstate(all="ignore"):
        measure = _defects(rot, kind)[2]
    raise error(f"{name(k)}: {_refusal(rot[0], kind, float(measure[0]))}")


def check_rotations(
    x: Any,
    kind: str,
    name: Callable[[int], str],
    *,
    error: type = PoseGraphError,
    path: Optional[str] = None,
    lines: Optional[Sequence[int]] = None,
    printed: Optional[Callable[[int], Sequence[str]]] = None,
    stacklevel: int = 1,
) -> Any:
    """The rotation rule (module docstring) applied to the rotations in ``x``.

    ``x``: a tensor or a NumPy array of elements of ``kind`` (:data:`ROTATION_KINDS`, as
    :func:`rotation_defect`), leading dimensions flattened into the element index ``k``.
    ``name(k)`` names element ``k`` in messages (``"pose 'x1'"``, ``"EDGE_SE3:QUAT 4 5"``);
    ``path`` and ``lines[k]`` (files) give its place. ``printed(k)``, for text, gives the
    printed number tokens of element ``k``'s rotation: its precision is then
    :func:`printed_precision`'s, else :func:`rotation_tolerance` of ``x``'s dtype.

    Returns ``x`` itself when every rotation is within its precision, else a copy (of the same
    type, dtype and device) in which the others are made rotations, after one
    ``UserWarning`` naming the first, its defect, its precision and the count. ``stacklevel``:
    the frames above the caller the warning points at (1: the caller).

    Raises:
        error: (a :class:`~posegraph.errors.PoseGraphError` subclass) for the first rotation
            that cannot be made one — non-finite numbers, the zero quaternion or ``(cos, sin)
            = (0, 0)``, a matrix with ``det R ≤ 0`` — naming it, ``path`` and its line.
    """
    _check_kind(kind)
    tol, dtype_name = _tolerance_of(x)
    used_as_given = ROTATION_TOLERANCE[torch.float64] if printed is not None else tol
    size, positions = _ONE_ELEMENT[kind]
    if (x.numel() if isinstance(x, Tensor) else np.size(x)) == size:
        v = _flat(x.tolist())  # one rotation (the builder's per call): checked in plain Python
        if _defect_of_one([v[j] for j in positions], kind) <= used_as_given:
            return x
    a = _as_numpy(x)
    rot = _rotations_of(a, kind)
    if rot.shape[0] == 0:
        return x
    with np.errstate(all="ignore"):  # non-finite input: refused below
        defect, refused, measure = _defects(rot, kind)
    if refused.any():
        k = int(np.flatnonzero(refused)[0])
        line = None if lines is None else lines[k]
        raise error(f"{name(k)}: {_refusal(rot[k], kind, float(measure[k]))}", path, line)
    beyond = np.flatnonzero(defect > used_as_given)
    if beyond.size == 0:
        return x
    if printed is not None:
        precision = printed_precision([printed(int(k)) for k in beyond], "quaternion" if kind == "quaternion" else "matrix")
        keep = defect[beyond] > precision
        beyond, precision = beyond[keep], precision[keep]
        if beyond.size == 0:
            return x
        basis = "of its printed digits"
    else:
        precision = np.full(beyond.size, tol)
        basis = f"of {dtype_name}"
    k = int(beyond[0])
    line = None if lines is None else lines[k]
    prefix = "" if path is None else f"{path}:{line}: " if line is not None else f"{path}: "
    more = f"; {beyond.size} rotations in all were made rotations, this the first" if beyond.size > 1 else ""
    warnings.warn(
        f"{prefix}{name(k)}: {_DEFECT_FORMULA[kind]} = {defect[k]:.3g}, beyond the precision "
        f"{precision[0]:.3g} {basis}; made a rotation ({_PROJECTION[kind]}){more}",
        UserWarning,
        stacklevel=stacklevel + 1,
    )
    made = _made_rotations(rot[beyond], kind)
    lead = a.shape[: a.ndim - _element_ndim(kind)]
    if isinstance(x, Tensor):
        out = x.contiguous().clone()
        values: Any = torch.as_tensor(made).to(dtype=x.dtype, device=x.device)
        index: Any = torch.as_tensor(beyond, device=x.device)
    else:
        out, values, index = np.array(a, copy=True), made.astype(a.dtype), beyond
    elements = out.reshape(-1, *out.shape[len(lead):])
    if kind == "SE3":
        elements[index, :3, :3] = values
    elif kind == "SE2":
        elements[index, 2:4] = values
    else:
        elements[index] = values
    return out
