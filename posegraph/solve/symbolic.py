"""How much a Cholesky factorization of ``AᵀA`` will cost, worked out on the block graph.

CHOLMOD factors in one of two ways (Chen, Davis, Hager & Rajamanickam 2008, "Algorithm 887:
CHOLMOD", §2): *supernodal* (dense fronts, BLAS-3) or *simplicial* (column by column). Its
automatic choice takes supernodal once the factorization needs 40 flops per nonzero of ``L``;
on pose graphs that is too early: supernodal's per-supernode overhead loses to simplicial up
to about 100 flops per nonzero (``benchmarks/cholmod_modes.py`` prints the measured table).

Pose-graph columns come in blocks (one per pose: 3 or 6 columns with identical sparsity), so
the fill is computed on the *block graph* — one node per column block, an edge where two
blocks share a row of ``A`` — which is 9–36 times smaller than ``AᵀA``. With ``d_b`` columns
in block ``b`` and ``s_b`` columns in the blocks below it in ``L``'s block column, column
``t = 1..d_b`` of the block has ``t + s_b`` nonzeros, so (a column of ``L`` with ``c``
nonzeros costs about ``c²`` flops: the usual operation count of sparse Cholesky, Davis 2006,
"Direct Methods for Sparse Linear Systems", ch. 4)

    nnz(L) = Σ_b d_b (d_b + 1)/2 + d_b s_b,
    flops  = Σ_b Σ_{t=1}^{d_b} (t + s_b)²
           = Σ_b d_b s_b² + s_b d_b (d_b + 1) + d_b (d_b + 1)(2 d_b + 1)/6.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import scipy.sparse as sp
from sksparse.cholmod import analyze

from .linearization import BlockSparseLinearization

#: Supernodal from this many flops per nonzero of L (measured crossover on pose graphs with
#: OpenBLAS; CHOLMOD's own default is 40).
SUPERNODAL_MIN_FLOPS_PER_NONZERO = 100.0
#: Above this many column blocks the estimate is skipped and supernodal taken: the block
#: graph's own factorization grows with the fill, and graphs this large fill in enough for
#: supernodal to win (sphere 5000: 350 flops per nonzero; 2D 10000: 340).
MAX_ESTIMATED_BLOCKS = 5000


@dataclass(frozen=True)
class FactorCost:
    """Estimated size and work of the Cholesky factor of ``AᵀA`` (AMD ordering)."""

    nonzeros: float
    flops: float

    @property
    def flops_per_nonzero(self) -> float:
        return self.flops / max(self.nonzeros, 1.0)


def column_block_sizes(lin: BlockSparseLinearization) -> np.ndarray:
    """Columns per block, in column order: a packed variable (one with ``element_dof``, e.g.
    :class:`~posegraph.variables.ManifoldArray`) has one block per free element, any other
    variable is one block."""
    sizes = []
    for var in lin.ordering:
        step = getattr(var, "element_dof", None)
        if step:
            sizes.append(np.full(var.dof() // step, step, dtype=np.int64))
        elif var.dof():
            sizes.append(np.array([var.dof()], dtype=np.int64))
    return np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.int64)


def block_graph(lin: BlockSparseLinearization, sizes: np.ndarray) -> sp.csc_matrix:
    """``PᵀP + I`` with ``P`` the rows × column-blocks incidence of A's pattern: symmetric
    positive definite, with the block graph's sparsity."""
    block_of_col = np.repeat(np.arange(len(sizes)), sizes)
    rows = np.repeat(np.arange(lin.num_rows), np.diff(lin.A_row_ptr))
    blocks = block_of_col[lin.A_col_ind]
    first = np.ones(len(blocks), dtype=bool)  # columns are sorted within a row: keep one per block
    first[1:] = (blocks[1:] != blocks[:-1]) | (rows[1:] != rows[:-1])
    incidence = sp.csr_matrix(
        (np.ones(int(first.sum())), (rows[first], blocks[first])), shape=(lin.num_rows, len(sizes))
    )
    return (incidence.T @ incidence + sp.identity(len(sizes), format="csr")).tocsc()


def estimate_factor_cost(lin: BlockSparseLinearization, sizes: Optional[np.ndarray] = None) -> FactorCost:
    """:class:`FactorCost` of ``AᵀA`` from a factorization of the block graph (AMD ordering,
    as CHOLMOD's default; ``sizes``: :func:`column_block_sizes`, computed when omitted);
    formulas in the module docstring."""
    sizes = column_block_sizes(lin) if sizes is None else sizes
    if len(sizes) == 0:
        return FactorCost(0.0, 0.0)
    graph = block_graph(lin, sizes)
    factor = analyze(graph, mode="simplicial", ordering_method="amd").cholesky(graph)
    lower = factor.L().tocsc()
    d = sizes[factor.P()].astype(np.float64)  # L is in the permuted order
    column = np.repeat(np.arange(lower.shape[1]), np.diff(lower.indptr))
    below = np.bincount(column, weights=d[lower.indices], minlength=lower.shape[1]) - d
    nonzeros = float((d * (d + 1) / 2 + d * below).sum())
    flops = float((d * below**2 + below * d * (d + 1) + d * (d + 1) * (2 * d + 1) / 6).sum())
    return FactorCost(nonzeros, flops)


def choose_cholmod_mode(lin: BlockSparseLinearization) -> str:
    """``"supernodal"`` or ``"simplicial"`` for CHOLMOD on ``lin``'s normal matrix: supernodal
    from :data:`SUPERNODAL_MIN_FLOPS_PER_NONZERO` (estimated by :func:`estimate_factor_cost`),
    and without estimating above :data:`MAX_ESTIMATED_BLOCKS` column blocks."""
    sizes = column_block_sizes(lin)
    if len(sizes) > MAX_ESTIMATED_BLOCKS:
        return "supernodal"
    cost = estimate_factor_cost(lin, sizes)
    return "supernodal" if cost.flops_per_nonzero >= SUPERNODAL_MIN_FLOPS_PER_NONZERO else "simplicial"
