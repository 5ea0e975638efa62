"""The linear system of a linearization as SciPy sparse matrices: the Jacobian ``A``, the normal
matrix ``AᵀA`` and ``Aᵀb``, for any Theseus linearization (posegraph's block-sparse one, or
Theseus' dense and sparse ones), one problem of the batch at a time.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union
import numpy as np
import scipy.sparse as sp
import torch


def _csr_parts(lin: Any) -> Optional[Tuple[torch.Tensor, np.ndarray, np.ndarray]]:
    a_val = getattr(lin, "A_val", None)
    if isinstance(a_val, torch.Tensor) and hasattr(lin, "A_col_ind") and hasattr(lin, "A_row_ptr"):
        return a_val, np.asarray(lin.A_col_ind), np.asarray(lin.A_row_ptr)
    return None


def _check_batch(tensor: torch.Tensor, batch_index: int) -> None:
    if not -tensor.shape[0] <= batch_index < tensor.shape[0]:
        raise IndexError(f"batch_index {batch_index} out of range for batch size {tensor.shape[0]}")


def jacobian_matrix(linearization: Any, batch_index: int = 0) -> sp.csr_matrix:
    """The weighted Jacobian ``A`` of one batch element as a SciPy CSR matrix (float64).

    Works for any linearized CSR linearization (posegraph's BlockSparseLinearization, Theseus'
    SparseLinearization: ``A_val``/``A_col_ind``/``A_row_ptr``) and Theseus'
    DenseLinearization (``A``). Call ``linearization.linearize()`` first.
    """
    lin = linearization
    csr = _csr_parts(lin)
    if csr is not None:
        a_val, col_ind, row_ptr = csr
        _check_batch(a_val, batch_index)
        val = a_val[batch_index].detach().cpu().double().numpy()
        return sp.csr_matrix((val, col_ind, row_ptr), shape=(lin.num_rows, lin.num_cols))
    a = getattr(lin, "A", None)
    if isinstance(a, torch.Tensor):
        _check_batch(a, batch_index)
        return sp.csr_matrix(a[batch_index].detach().cpu().double().numpy())
    raise ValueError(
        f"{type(lin).__name__}: no Jacobian available (not linearized yet, or not a "
        "CSR/dense linearization); call linearize() first"
    )


def normal_matrix(
    linearization: Any, batch_index: int = 0, dense: bool = False
) -> Union[sp.csr_matrix, np.ndarray]:
    """``AᵀA`` (Gauss–Newton Hessian, undamped) of one batch element.

    A SciPy CSR matrix (float64) for every linearization — Theseus' SparseLinearization
    included, whose ``AtA`` is not implemented; a dense ``ndarray`` only with ``dense=True``.
    """
    try:
        a = jacobian_matrix(linearization, batch_index)
    except ValueError:
        full = linearization.AtA  # other linearizations: their own (dense) AᵀA
        if not isinstance(full, torch.Tensor):
            raise
        _check_batch(full, batch_index)
        ata = sp.csr_matrix(full[batch_index].detach().cpu().double().numpy())
    else:
        ata = (a.T @ a).tocsr()
    ata.sort_indices()
    return ata.toarray() if dense else ata


def normal_rhs(linearization: Any, batch_index: int = 0) -> np.ndarray:
    """``Aᵀb`` of one batch element, ``(num_cols,)`` float64, with Theseus' ``b = −W e``
    (the same vector as ``linearization.Atb[batch_index, :, 0]``)."""
    b = getattr(linearization, "b", None)
    if not isinstance(b, torch.Tensor):
        raise ValueError(f"{type(linearization).__name__}: not linearized yet; call linearize() first")
    _check_batch(b, batch_index)
    a = jacobian_matrix(linearization, batch_index)
    return np.asarray(a.T @ b[batch_index].detach().cpu().double().numpy()).ravel()
