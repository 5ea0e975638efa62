"""The per-problem arithmetic of the solve loop's tests (:mod:`posegraph.solve.nonlinear`):
the decrease criteria and LM's predicted decrease, on torch tensors for a batch or on plain
scalars for one CPU problem (:class:`ScalarOps`), and the conversions between the two.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, List, Tuple

import numpy as np
import torch

from posegraph.solve.sparse_cholesky import vector_dot


class ScalarOps:
    """The operations of LM's per-problem bookkeeping on one problem's values: NumPy float64
    scalars (IEEE arithmetic, as in arrays: a zero divisor gives ±inf or NaN), Python bools
    and ints, and one-dimensional rows. Each NumPy or torch call on a length-1 array costs
    1–3 µs, and the bookkeeping makes ~30 a step (on smallGrid3D ~0.1 ms of a 1.2 ms
    iteration); these cost ~0.1 µs. The namespace of :func:`_arrays` for one CPU problem.

    Measured (docs/performance.md, 'What each speed mechanism pays'): saves 4.0% of an iteration on
    smallGrid3D against NumPy (intel 2.0%), and 13.7% against torch (intel 6.9%).
    """

    abs = staticmethod(abs)
    isfinite = staticmethod(math.isfinite)

    @staticmethod
    def where(condition: Any, a: Any, b: Any) -> Any:
        """``a if condition else b`` on scalars (``torch.where``'s role)."""
        return a if condition else b

    @staticmethod
    def clip(x: Any, low: float, high: float) -> Any:
        """``x`` within ``[low, high]``, of ``x``'s type (NaN stays NaN, as in ``np.clip``)."""
        if x < low:
            return type(x)(low)
        return type(x)(high) if x > high else x

    @staticmethod
    def logical_not(a: Any) -> bool:
        """``not a`` on a scalar (``torch.logical_not``'s role)."""
        return not a

    @staticmethod
    def logical_and(a: Any, b: Any) -> bool:
        """``a and b`` on scalars (``torch.logical_and``'s role)."""
        return bool(a) and bool(b)

    @staticmethod
    def logical_or(a: Any, b: Any) -> bool:
        """``a or b`` on scalars (``torch.logical_or``'s role)."""
        return bool(a) or bool(b)


def _arrays(*tensors: torch.Tensor) -> Tuple[Any, List[Any]]:
    """The namespace LM's per-problem bookkeeping runs in, and ``tensors`` in it: for one
    problem on CPU (every tensor's first dimension 1), :class:`ScalarOps` with each tensor's
    only row (a scalar for ``(1,)``); else torch, with the tensors (detached)."""
    if all(t.device.type == "cpu" and t.shape[0] == 1 for t in tensors):
        return ScalarOps, [(t.detach().numpy() if t.requires_grad else t.numpy())[0] for t in tensors]
    return torch, [t.detach() for t in tensors]


def _tensor(value: Any, like: torch.Tensor) -> torch.Tensor:
    """``value`` (from :func:`_arrays`' namespace) as a tensor on ``like``'s device (one
    problem's scalar as a ``(1,)`` tensor)."""
    if isinstance(value, torch.Tensor):
        return value.to(like.device)
    return torch.from_numpy(value if isinstance(value, np.ndarray) else np.asarray([value])).to(like.device)


def _mask(value: Any) -> np.ndarray:
    """A boolean mask from :func:`_arrays`' namespace as a ``(B,)`` NumPy array."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy().astype(bool).reshape(-1)
    return np.asarray(value, dtype=bool).reshape(-1)


def _quiet(xp: Any) -> Any:
    """NumPy's floating-point warnings off: a zero predicted decrease gives ``ρ = ±inf`` or
    NaN, which the rules handle (torch computes them silently)."""
    return contextlib.nullcontext() if xp is torch else np.errstate(all="ignore")


def decrease_criterion(xp: Any, err: Any, last_err: Any, rel_tol: float, abs_tol: float) -> Any:
    """Which decrease test an accepted step passes, per problem: 1 ``absolute-error``
    (``err < abs_tol``), 2 ``absolute-decrease`` (``|Δ| < abs_tol``), 3 ``relative-decrease``
    (``|Δ| / |last_err| < rel_tol``), 0 none (index ``k − 1`` in :data:`CRITERIA`). Theseus'
    test, per problem. Values of namespace ``xp`` (:func:`_arrays`), ``(B,)``."""
    change = xp.abs(last_err - err)
    code = xp.where(change / xp.abs(last_err) < rel_tol, 3, 0)
    code = xp.where(change < abs_tol, 2, code)
    return xp.where(xp.abs(err) < abs_tol, 1, code)


def predicted_decrease(xp: Any, delta: Any, damping: Any, atb: Any) -> Any:
    """LM's predicted decrease ``L(0) − L(δ) = ½ δᵀ(λδ + Aᵀb)`` per problem (Madsen, Nielsen
    & Tingleff 2004, "Methods for non-linear least squares problems", eq. 3.14), from the
    steps ``delta`` and ``Aᵀb`` ``(B, n)`` and the dampings ``(B,)`` — one problem's row and
    scalar under :class:`ScalarOps`."""
    if xp is ScalarOps:  # (not ndarray.dot: long ones go to BLAS's threads, see vector_dot)
        return delta.dtype.type(vector_dot(delta, damping * delta + atb) / 2)
    return (delta * (damping[:, None] * delta + atb)).sum(1) / 2
