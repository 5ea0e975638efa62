"""How much a Cholesky factorization of ``AᵀA`` will cost, worked out on the block graph.

CHOLMOD factors in one of two ways (Chen, Davis, Hager & Rajamanickam 2008, "Algorithm 887:
CHOLMOD", §2): *supernodal* (dense fronts, BLAS-3) or *simplicial* (column by column). Its
automatic choice takes supernodal once the factorization needs 40 flops per nonzero of ``L``.
On pose graphs, with ``AᵀA`` assembled by the solver (:mod:`~posegraph.solve.normal`),
supernodal wins from about 50 flops per nonzero, but only once the factorization is large
enough (some 6 Mflop) for its per-supernode overhead and the assembly to pay off
(``benchmarks/cholmod_modes.py`` prints the measured table: parking-garage, 52 flops per
nonzero and 21 Mflop, factors in 11.6 ms supernodal against 16.3 ms simplicial; smallGrid3D,
100 and 4.9 Mflop, in 2.0 ms against 1.8 ms).

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

The block graph also gives the *fill-reducing order* (:func:`block_fill_order`): ordering its
nodes and expanding each to its columns keeps a pose's columns together, costs a fraction of
CHOLMOD's analysis of the scalar pattern (parking-garage: 2.5 ms against 11.5 ms) and gives
simplicial factorizations that run faster at the same fill (parking-garage: 18 ms against
24 ms, measured by ``benchmarks/cholmod_modes.py``).

The same estimate picks the factorization backend (:func:`plan_factorization`): MKL PARDISO
(:mod:`~posegraph.solve.pardiso`) for factors from :data:`PARDISO_MIN_FLOPS_PER_NONZERO`, in
the block order, when it is installed; CHOLMOD otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import scipy.sparse as sp
from sksparse.cholmod import analyze

from posegraph.solve.linearization import BlockSparseLinearization, segment_positions
from posegraph.solve.mkl import pardiso_installed

#: Supernodal from this many flops per nonzero of L (measured crossover on pose graphs with
#: OpenBLAS and the solver's assembled ``AᵀA``; CHOLMOD's own default is 40) …
SUPERNODAL_MIN_FLOPS_PER_NONZERO = 50.0
#: … and this many flops in all (below it simplicial wins at any fill: smallGrid3D).
SUPERNODAL_MIN_FLOPS = 6e6
#: Above this many column blocks the estimate is skipped and supernodal taken: the block
#: graph's own factorization grows with the fill, and graphs this large fill in enough for
#: supernodal to win (sphere 5000: 350 flops per nonzero; 2D 10000: 340).
MAX_ESTIMATED_BLOCKS = 5000
#: The factorization backends: CHOLMOD (scikit-sparse) and MKL PARDISO (:mod:`~posegraph.solve.pardiso`).
BACKENDS = ("auto", "cholmod", "pardiso")
#: PARDISO from this many flops per nonzero of L (when available): the 3D datasets (smallGrid3D
#: 100, parking-garage 52, sphere2500 ~260) factor 3–4× faster than with CHOLMOD; on the 2D
#: ones (intel, manhattan: ~35) CHOLMOD's simplicial factorization is as fast end to end.
PARDISO_MIN_FLOPS_PER_NONZERO = 50.0
#: AMD breaks ties between equal degrees by input position, so its order depends on the order
#: it starts from: it is run once more on the block graph in its own first order, and the
#: order with fewer estimated flops kept. On sphere2500 that takes 397 Mflop to 291 (PARDISO's
#: factorization: 13.0 ms to 10.7 ms); on the other datasets the two are within 10%. More
#: rounds did not find lower counts. Costs ~1 ms per 1000 blocks.
#: Measured (docs/performance.md, 'What each speed mechanism pays'): saves 16.4% of an iteration
#: on sphere2500 for 16% of one once per solve; elsewhere it costs 18–43% of one, once.
AMD_RESTARTS = 1


@dataclass(frozen=True)
class FactorCost:
    """Estimated size and work of the Cholesky factor of ``AᵀA`` in some elimination order."""

    nonzeros: float
    flops: float

    @property
    def flops_per_nonzero(self) -> float:
        """Factorization flops per nonzero of the factor: how dense its work is."""
        return self.flops / max(self.nonzeros, 1.0)


@dataclass(frozen=True)
class BlockOrder:
    """A fill-reducing elimination order of the column blocks (``method``: the CHOLMOD ordering
    that found it on the block graph; block ``blocks[i]`` is eliminated ``i``-th), expanded to
    ``columns`` (a permutation of A's columns: ``columns[i]`` is eliminated ``i``-th), with
    its :class:`FactorCost` and the blocks' ``sizes``."""

    method: str
    blocks: np.ndarray
    columns: np.ndarray
    cost: FactorCost
    sizes: np.ndarray  # columns per block (:func:`column_block_sizes`)


def column_block_sizes(lin: BlockSparseLinearization) -> np.ndarray:
    """Columns per block, in column order: a packed variable (one with ``element_dof``, e.g.
    :class:`~posegraph.model.variables.ManifoldArray`) has one block per free element, any other
    variable is one block."""
    sizes = []
    for var in lin.ordering:
        step = getattr(var, "element_dof", None)
        if step:
            sizes.append(np.full(var.dof() // step, step, dtype=np.int64))
        elif var.dof():
            sizes.append(np.array([var.dof()], dtype=np.int64))
    return np.concatenate(sizes) if sizes else np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class BlockSpans:
    """A's blocks (a linearization's ``column_spans``) split where they cross column blocks:
    per piece its first ``row``, its column ``block``, its first column's ``offset`` within
    that block and its ``width``, in A's (row, column) order."""

    row: np.ndarray
    block: np.ndarray
    offset: np.ndarray
    width: np.ndarray


def block_spans(column_spans: Tuple[np.ndarray, np.ndarray, np.ndarray], sizes: np.ndarray) -> BlockSpans:
    """:class:`BlockSpans` of ``column_spans`` ``(first row, first column, width)`` for column
    blocks of ``sizes`` (:func:`column_block_sizes`)."""
    first_row, first_col, width = column_spans
    block_start = np.cumsum(sizes) - sizes
    block_of_col = np.repeat(np.arange(len(sizes)), sizes)
    low, high = block_of_col[first_col], block_of_col[first_col + width - 1]
    span, within = segment_positions(high - low + 1)
    block = low[span] + within
    start = np.maximum(first_col[span], block_start[block])
    end = np.minimum(first_col[span] + width[span], block_start[block] + sizes[block])
    return BlockSpans(first_row[span], block, start - block_start[block], end - start)


def block_graph(lin: BlockSparseLinearization, sizes: np.ndarray) -> sp.csc_matrix:
    """``PᵀP + I`` with ``P`` the rows × column-blocks incidence of A's pattern: symmetric
    positive definite, with the block graph's sparsity (only the pattern is meant: read from
    the linearization's ``column_spans`` when it has them, one row per residual block, else
    from A's nonzeros)."""
    if lin.column_spans is not None:  # (first row, first column, width) of A's blocks: fewer
        spans = block_spans(lin.column_spans, sizes)
        rows, blocks = spans.row, spans.block
    else:
        block_of_col = np.repeat(np.arange(len(sizes)), sizes)
        rows = np.repeat(np.arange(lin.num_rows), np.diff(lin.A_row_ptr))
        blocks = block_of_col[lin.A_col_ind]
        first = np.ones(len(blocks), dtype=bool)  # columns are sorted within a row: one per block
        first[1:] = (blocks[1:] != blocks[:-1]) | (rows[1:] != rows[:-1])
        rows, blocks = rows[first], blocks[first]
    incidence = sp.csr_matrix((np.ones(len(rows)), (rows, blocks)), shape=(lin.num_rows, len(sizes)))
    return (incidence.T @ incidence + sp.identity(len(sizes), format="csr")).tocsc()


def expand_block_order(blocks: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The column permutation that eliminates the blocks in the order ``blocks``, each block's
    columns together and in their own order."""
    starts = np.cumsum(sizes) - sizes
    block, within = segment_positions(sizes[blocks])
    return starts[blocks][block] + within


def _ordered_cost(graph: sp.csc_matrix, sizes: np.ndarray, method: str) -> Tuple[np.ndarray, FactorCost]:
    """The block order CHOLMOD's ``method`` finds on ``graph`` and the :class:`FactorCost` of
    ``AᵀA`` in it (formulas in the module docstring)."""
    factor = analyze(graph, mode="simplicial", ordering_method=method).cholesky(graph)
    blocks = np.array(factor.P(), dtype=np.int64)
    lower = factor.L().tocsc()
    d = sizes[blocks].astype(np.float64)  # L is in the permuted order
    column = np.repeat(np.arange(lower.shape[1]), np.diff(lower.indptr))
    below = np.bincount(column, weights=d[lower.indices], minlength=lower.shape[1]) - d
    nonzeros = float((d * (d + 1) / 2 + d * below).sum())
    flops = float((d * below**2 + below * d * (d + 1) + d * (d + 1) * (2 * d + 1) / 6).sum())
    return blocks, FactorCost(nonzeros, flops)


def _restarted_amd(graph: sp.csc_matrix, sizes: np.ndarray, restarts: int) -> Tuple[np.ndarray, FactorCost]:
    """AMD's block order of ``graph`` with the fewest estimated flops among its first and
    ``restarts`` more, each started from the order before (see :data:`AMD_RESTARTS`)."""
    blocks, cost = _ordered_cost(graph, sizes, "amd")
    best = (blocks, cost)
    for _ in range(restarts):
        again, cost = _ordered_cost(graph[blocks][:, blocks].tocsc(), sizes[blocks], "amd")
        blocks = blocks[again]
        if cost.flops < best[1].flops:
            best = (blocks, cost)
    return best


def block_fill_order(
    lin: BlockSparseLinearization,
    sizes: Optional[np.ndarray] = None,
    methods: Optional[Sequence[str]] = None,
) -> BlockOrder:
    """The fill-reducing order of ``lin``'s columns with the lowest estimated flops among the
    block-graph orders of CHOLMOD's ``methods`` (default: ``"amd"``, restarted as
    :data:`AMD_RESTARTS` says); ``sizes``: :func:`column_block_sizes`.

    Measured (docs/performance.md, 'What each speed mechanism pays'): the block order saves 4.7–32%
    of an iteration (sphere2500 32%, manhattan 10.3%, parking-garage 10.1%) against the backends'
    own orderings.
    """
    sizes = column_block_sizes(lin) if sizes is None else sizes
    if len(sizes) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return BlockOrder("natural", empty, empty, FactorCost(0.0, 0.0), sizes)
    if methods is None:
        methods = ("amd",)
    graph = block_graph(lin, sizes)
    found = [
        (method, *(_restarted_amd(graph, sizes, AMD_RESTARTS) if method == "amd" else _ordered_cost(graph, sizes, method)))
        for method in methods
    ]
    method, blocks, cost = min(found, key=lambda f: f[2].flops)
    return BlockOrder(method, blocks, expand_block_order(blocks, sizes), cost, sizes)


def estimate_factor_cost(lin: BlockSparseLinearization, sizes: Optional[np.ndarray] = None) -> FactorCost:
    """:class:`FactorCost` of ``AᵀA`` in AMD's order of the block graph (CHOLMOD's default
    ordering); ``sizes``: :func:`column_block_sizes`, computed when omitted."""
    return block_fill_order(lin, sizes, methods=("amd",)).cost


def mode_for(cost: FactorCost) -> str:
    """``"supernodal"`` from :data:`SUPERNODAL_MIN_FLOPS_PER_NONZERO` and
    :data:`SUPERNODAL_MIN_FLOPS`, else ``"simplicial"``."""
    dense_enough = cost.flops_per_nonzero >= SUPERNODAL_MIN_FLOPS_PER_NONZERO
    return "supernodal" if dense_enough and cost.flops >= SUPERNODAL_MIN_FLOPS else "simplicial"


@dataclass(frozen=True)
class FactorizationPlan:
    """How ``AᵀA`` is factored: by ``backend`` (``"cholmod"`` or ``"pardiso"``), CHOLMOD's
    ``mode`` (``"supernodal"`` for PARDISO, which has no other), in the block-graph
    elimination ``order`` (``None``: the backend's own ordering of the scalar pattern)."""

    mode: str
    order: Optional[BlockOrder] = None
    backend: str = "cholmod"


def plan_factorization(lin: BlockSparseLinearization, mode: str = "auto", backend: str = "auto") -> FactorizationPlan:
    """The backend for ``lin``'s normal matrix, CHOLMOD's mode and the elimination order.

    ``backend="auto"`` takes MKL PARDISO (:mod:`~posegraph.solve.pardiso`) when it is
    available, ``mode`` is ``"auto"``, A has block spans (PARDISO factors the solver's
    assembled ``AᵀA``) and the factor is dense enough — from
    :data:`PARDISO_MIN_FLOPS_PER_NONZERO`, or above :data:`MAX_ESTIMATED_BLOCKS` column
    blocks, where PARDISO orders the matrix itself (METIS); CHOLMOD otherwise. ``mode`` is
    CHOLMOD's: ``"auto"`` takes supernodal by :func:`mode_for` in the order of
    :func:`block_fill_order`, and supernodal in CHOLMOD's own order, without estimating, above
    :data:`MAX_ESTIMATED_BLOCKS` column blocks. A CHOLMOD supernodal factorization gets the
    block order only when the solver can assemble ``AᵀA`` itself
    (:class:`~posegraph.solve.normal.NormalMatrix`, which needs A's block spans): CHOLMOD's
    supernodal analysis of ``AAᵀ`` in a given (natural) order crashes (SuiteSparse 5.12
    through scikit-sparse 0.4.16, reproduced on random block matrices), while that of a
    symmetric matrix does not.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {', '.join(BACKENDS)}, received {backend!r}")
    if backend == "pardiso" and lin.column_spans is None:
        raise ValueError(
            "backend 'pardiso' factors the assembled AᵀA, which needs A's block structure; this "
            "linearization's blocks overlap: use the 'cholmod' backend"
        )
    pardiso = backend == "pardiso" or (
        backend == "auto" and mode == "auto" and lin.column_spans is not None and pardiso_installed()
    )
    sizes = column_block_sizes(lin)
    if len(sizes) > MAX_ESTIMATED_BLOCKS and (pardiso or mode != "simplicial"):
        return FactorizationPlan("supernodal", None, "pardiso" if pardiso else "cholmod")
    order = block_fill_order(lin, sizes)
    if pardiso and (backend == "pardiso" or order.cost.flops_per_nonzero >= PARDISO_MIN_FLOPS_PER_NONZERO):
        return FactorizationPlan("supernodal", order, "pardiso")
    chosen = mode_for(order.cost) if mode == "auto" else mode
    if chosen == "supernodal" and lin.column_spans is None:
        return FactorizationPlan(chosen)
    return FactorizationPlan(chosen, order)


def choose_cholmod_mode(lin: BlockSparseLinearization) -> str:
    """``"supernodal"`` or ``"simplicial"`` for CHOLMOD on ``lin``'s normal matrix
    (:func:`plan_factorization`'s choice)."""
    return plan_factorization(lin, backend="cholmod").mode


class OrderedTranspose:
    """``Aᵀ`` (CSC) with its rows — A's columns — in an elimination order, so that CHOLMOD,
    told to keep the natural order, factors ``AᵀA`` in that order; and the permutation of
    vectors between A's column order and a factor's (CHOLMOD's or PARDISO's, both told to
    keep the order).

    ``columns[i]`` is the column of A eliminated ``i``-th (``None``: A's own order). Within a
    column of ``Aᵀ`` (a row of A) the permuted row indices are re-sorted once, when the ordered
    ``Aᵀ`` is first asked for (a solver that assembles ``AᵀA`` itself never does); each call
    then gathers the values in that order. Vectors move between A's column order and the
    solver's with :meth:`apply` (``v[columns]``) and :meth:`restore` (its inverse).
    """

    def __init__(self, lin: BlockSparseLinearization, columns: Optional[np.ndarray] = None):
        self.columns = columns
        self.shape = (lin.num_cols, lin.num_rows)
        self._lin = lin
        self._structure: Optional[Tuple[Optional[np.ndarray], np.ndarray, np.ndarray]] = None
        if columns is not None:
            self._position = np.empty(lin.num_cols, dtype=np.int64)
            self._position[columns] = np.arange(lin.num_cols)

    def _ordered(self) -> Tuple[Optional[np.ndarray], np.ndarray, np.ndarray]:
        """The value gather (``None``: none needed) and the index arrays of the ordered ``Aᵀ``."""
        if self._structure is None:
            lin = self._lin
            indices, gather = np.asarray(lin.A_col_ind), None
            if self.columns is not None:
                # Re-sort each column of Aᵀ (short: a row of A) with SciPy's per-column sort,
                # carrying each value's index 1..nnz as its value.
                keyed = sp.csc_matrix(
                    (np.arange(1, len(indices) + 1, dtype=np.float64), self._position[indices], lin.A_row_ptr),
                    shape=self.shape,
                )
                keyed.has_sorted_indices = False
                keyed.sort_indices()
                gather = keyed.data.astype(np.int64) - 1
                indices = keyed.indices
                if np.array_equal(gather, np.arange(len(gather))):
                    gather = None
            self._structure = (gather, np.asarray(indices), np.asarray(lin.A_row_ptr))
        return self._structure

    def transpose(self, a_values: np.ndarray) -> sp.csc_matrix:
        """The ordered ``Aᵀ`` for A's values ``a_values`` (CSR order of the linearization)."""
        gather, indices, indptr = self._ordered()
        data = a_values if gather is None else a_values[gather]
        return sp.csc_matrix((data, indices, indptr), shape=self.shape)

    def pattern(self) -> sp.csc_matrix:
        """The ordered ``Aᵀ`` with every value 1 (for the symbolic analysis)."""
        return self.transpose(np.ones(len(self._ordered()[1])))

    def apply(self, v: np.ndarray) -> np.ndarray:
        """``v`` (A's column order) in the elimination order."""
        return v if self.columns is None else v[self.columns]

    def restore(self, v: np.ndarray) -> np.ndarray:
        """``v`` (elimination order) back in A's column order."""
        return v if self.columns is None else v[self._position]

    def solve(self, factor: Callable[[np.ndarray], np.ndarray], v: np.ndarray) -> np.ndarray:
        """``factor``'s solve for ``v``, both in A's column order."""
        return self.restore(factor(self.apply(v)))
