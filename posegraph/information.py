"""Information matrices Ω of measurements: the checks the g2o reader and the builders share.

* **Magnitude.** An entry of Ω is refused when its magnitude exceeds
  :func:`information_bound` of the dtype it is solved in: ``1e150`` in float64, ``1e15`` in
  float32 (the largest power of ten at most ``10⁻⁴ · √max``). Below the bound, a product of two
  entries stays below ``10⁻⁸ · max``, so the eigen-decomposition and square root ``W`` of Ω
  (``WᵀW = Ω``), the cost ``eᵀΩe`` and the normal equations ``JᵀΩJ`` stay finite; above it
  they overflow to ``inf``/``nan`` in the middle of a solve, far from the line at fault.
* **Positive semidefiniteness.** Ω is accepted as PSD when its smallest eigenvalue
  ``λ_min ≥ −PSD_TOLERANCE · max(1, |λ|_max)`` (round-off sized negatives pass).
* **Repair.** :func:`nearest_psd` replaces a symmetric matrix by its nearest PSD matrix in the
  Frobenius norm, ``V diag(max(λ, 0)) Vᵀ`` for ``Ω = V diag(λ) Vᵀ`` (N. J. Higham, "Computing
  a nearest symmetric positive semidefinite matrix", Linear Algebra and its Applications 103,
  1988, pp. 103–118, Theorem 2.1 for a symmetric matrix).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import numpy as np
import torch

__all__ = [
    "PSD_TOLERANCE",
    "information_bound",
    "first_oversized",
    "psd_smallest_eigenvalues",
    "nearest_psd",
]

#: Ω is accepted as PSD when λ_min ≥ −PSD_TOLERANCE · max(1, |λ|_max).
PSD_TOLERANCE = 1e-9

DType = Union[torch.dtype, np.dtype, type]


def information_bound(dtype: DType = torch.float64) -> float:
    """The largest magnitude accepted in an information matrix solved in ``dtype``: the largest
    power of ten at most ``10⁻⁴ · √max`` (``1e150`` for float64, ``1e15`` for float32), so
    that products of two entries stay finite with room to spare (see the module docstring)."""
    if isinstance(dtype, torch.dtype):
        largest = torch.finfo(dtype).max
    else:
        largest = float(np.finfo(dtype).max)
    return 10.0 ** (math.floor(math.log10(math.sqrt(largest))) - 4)


def first_oversized(
    info: Union[np.ndarray, torch.Tensor], bound: float
) -> Optional[Tuple[int, int, int, float]]:
    """``(matrix, row, column, value)`` of the first entry of ``info`` ``(..., E, d, d)`` (in
    matrix order, then row-major) that is not finite or whose magnitude exceeds ``bound``;
    None when all are within it. One pass (``torch.aminmax``); the position is located only
    on failure. A leading batch dimension is folded into the first one that fails.

    Measured (docs/performance.md, 'What each speed mechanism pays'): the one-pass test saves
    2.2–6.2% of an iteration per build (manhattan 6.2%, parking-garage 4.8%, sphere2500 4.6%).
    """
    t = torch.as_tensor(info)
    if t.numel() == 0:
        return None
    low, high = torch.aminmax(t)  # one pass, no temporary; nan propagates
    if -bound <= float(low) and float(high) <= bound:  # False for nan
        return None
    within = t.abs() <= bound  # False for nan too
    d = t.shape[-1]
    bad = (~within).reshape(-1, t.shape[-3], d * d).any(dim=0)  # (E, d·d) over the batch
    k, at = (int(v) for v in torch.nonzero(bad)[0])
    flat = t.reshape(-1, t.shape[-3], d * d)[:, k, at]
    worst = flat[~(flat.abs() <= bound)][0]
    return k, at // d, at % d, float(worst)


def psd_smallest_eigenvalues(info: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``(indices, λ_min)`` of the matrices of ``info`` ``(E, d, d)`` (symmetric, entries
    within :func:`information_bound`) that are not PSD within :data:`PSD_TOLERANCE`.

    Fast accept: a Cholesky factorization that succeeds proves ``A + E ≻ 0`` with
    ``‖E‖ = O(n²u‖A‖)`` (N. J. Higham, "Accuracy and Stability of Numerical Algorithms",
    2nd ed., 2002, Thm 10.3), far inside the tolerance, so the eigenvalue test would accept
    too; eigenvalues are computed only when some factorization fails (singular or indefinite).
    """
    empty = np.zeros(0, dtype=np.int64), np.zeros(0)
    if info.shape[0] == 0:
        return empty
    if bool((torch.linalg.cholesky_ex(torch.as_tensor(info)).info == 0).all()):
        return empty
    lam = np.linalg.eigvalsh(info)
    scale = np.maximum(1.0, np.abs(lam).max(axis=1))
    bad = np.flatnonzero(lam[:, 0] < -PSD_TOLERANCE * scale)
    return bad, lam[bad, 0]


def nearest_psd(info: np.ndarray) -> np.ndarray:
    """The nearest symmetric PSD matrix, in the Frobenius norm, of each symmetric matrix of
    ``info`` ``(..., d, d)``: ``V diag(max(λ, 0)) Vᵀ`` (Higham 1988, Theorem 2.1), symmetrized
    against round-off. A matrix without a positive eigenvalue becomes zero."""
    lam, vec = np.linalg.eigh(info)
    out = (vec * np.maximum(lam, 0.0)[..., None, :]) @ np.swapaxes(vec, -1, -2)
    return 0.5 * (out + np.swapaxes(out, -1, -2))


# ---------------------------------------------------------------------------
# Square roots: the whitening W with WᵀW = Ω that the costs apply
# ---------------------------------------------------------------------------

def symmetric_part(information: torch.Tensor) -> torch.Tensor:
    """``(Ω + Ωᵀ)/2`` of ``(..., d, d)`` matrices: what a square root is taken of (a Cholesky
    factorization reads one triangle only, an eigen-decomposition assumes symmetry)."""
    return 0.5 * (information + information.transpose(-1, -2))


def sqrt_information(information: torch.Tensor) -> torch.Tensor:
    """Square root ``W`` of symmetric PSD matrices, ``Wᵀ W = Ω``, for ``(..., d, d)`` input.

    Uses the eigen-decomposition ``Ω = V diag(λ) Vᵀ`` and returns ``W = diag(√λ) Vᵀ``: unlike a
    Cholesky factor it exists for singular (PSD, not PD) Ω. Eigenvalues that are negative by
    round-off are clamped to 0 (callers validate PSD first; see :mod:`posegraph.information`).
    """
    lam, vecs = torch.linalg.eigh(symmetric_part(information))
    return lam.clamp_min(0.0).sqrt().unsqueeze(-1) * vecs.transpose(-1, -2)


def cholesky_sqrt_information(information: torch.Tensor) -> torch.Tensor:
    """``W`` with ``WᵀW = Ω``, as the Cholesky factor ``W = Lᵀ`` (``Ω = L Lᵀ``): faster than
    :func:`sqrt_information`, and its gradient stays finite for repeated eigenvalues
    (``Ω = I``), where the eigen-decomposition's does not. Singular PSD blocks (no Cholesky
    factor) fall back to :func:`sqrt_information`, block by block."""
    lower, info = torch.linalg.cholesky_ex(information)
    if bool((info == 0).all()):
        return lower.transpose(-1, -2)
    ok = (info == 0)[..., None, None]
    return torch.where(ok, lower.transpose(-1, -2), sqrt_information(information))
