"""The normal matrix ``AᵀA + βI`` of a :class:`BlockSparseLinearization`, assembled from the
Gram matrices of A's residual blocks: lower triangle, CSC, in a block elimination order.

Why: CHOLMOD can factor ``AᵀA`` given A (``cholesky_AAt``), but it then forms each supernode's
columns of ``AᵀA`` itself, row pair by row pair, and its supernodal analysis of ``AAᵀ`` in a
given order crashes (see :func:`~posegraph.solve.symbolic.plan_factorization`), so a
supernodal factorization could not use the block order. Given the lower triangle of ``AᵀA``
in that order, it factors in natural order (``benchmarks/cholmod_modes.py``: sphere2500
37.7 ms against 40.7 ms, parking-garage 11.6 ms against 20.1 ms, assembly included). MKL
PARDISO (:mod:`~posegraph.solve.pardiso`) factors the same arrays: the lower triangle in CSC
is its upper triangle in CSR.

Assembly. Rows of different residual blocks never meet in ``AᵀA``
(``(AᵀA)_ij = Σ_r A_ri A_rj``), so ``AᵀA = Σ_g S_gᵀ S_g`` over A's residual blocks ``g``,
where ``S_g`` (``d × W``: the block's ``d`` rows and the ``W`` columns they hold) lies
contiguously in A's CSR values. On CPU the compiled loop :func:`posegraph.lie.native.gram_scatter`
adds each kept entry of each Gram matrix at its slot in one pass (sphere2500: 1.4–1.5 ms);
elsewhere (GPUs, installs without the extension) residual blocks of one shape are done
together with torch: one gather, one batched product and one ``index_add`` per shape
(sphere2500: 2.9–3.1 ms).

Layout. ``H`` holds the *block* pattern: every pair of column blocks
(:func:`~posegraph.solve.symbolic.column_block_sizes`) that share a residual block, dense —
``AᵀA``'s own pattern when A's blocks cover whole column blocks, as pose graphs' do. In
elimination order, column ``t`` of block ``J`` (``d_J`` columns) holds rows ``t … d_J−1`` of
its own block, then all rows of each later block ``I`` paired with ``J``, in order. So the
entry (row ``u`` of block ``I``, column ``t`` of block ``J``) sits at

    indptr[column] + u − t                          (I = J),
    indptr[column] + d_J − t + rows_before(I) + u   (I after J),

``rows_before(I)`` being the rows of the blocks paired with ``J`` before ``I``: every slot
follows in closed form from the pairs of blocks, without sorting entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple, Union

import numpy as np
import scipy.sparse as sp
import torch

from posegraph.lie import native
from posegraph.solve.linearization import BlockSparseLinearization, segment_positions
from posegraph.solve.symbolic import BlockSpans, block_spans


@dataclass
class _Shape:
    """Residual blocks of one shape (``d`` rows, ``width`` columns) and where their Gram
    matrices go: ``values`` indexes their A values (CSR order, ``G·d·W``); ``upper`` the
    entries ``(a, b)``, ``a ≤ b``, of their stacked ``W × W`` Gram matrices that ``H`` keeps
    (flat: one 1-D gather is much faster than selecting along a dimension); ``slots`` where
    each goes in ``H``'s values."""

    d: int
    width: int
    values: torch.Tensor
    upper: torch.Tensor
    slots: torch.Tensor
    #: For the compiled route (:func:`posegraph.lie.native.gram_scatter`): each residual block's
    #: first value in A, and the kept Gram entries as (column, column) pairs.
    start: np.ndarray
    column_a: np.ndarray
    column_b: np.ndarray


@dataclass
class _BlockOrder:
    """Column blocks in elimination order: ``position[b]`` of block ``b``; by position, its
    ``size`` and ``first`` column."""

    position: np.ndarray
    size: np.ndarray
    first: np.ndarray

    @classmethod
    def of(cls, sizes: np.ndarray, blocks: np.ndarray) -> "_BlockOrder":
        position = np.empty(len(sizes), dtype=np.int64)
        position[blocks] = np.arange(len(sizes))
        size = sizes[blocks]
        return cls(position, size, np.cumsum(size) - size)


class _ResidualBlocks:
    """A's residual blocks — runs of spans with the same first row — grouped by shape (rows
    ``d`` and span widths). ``start[g]``: residual block ``g``'s first span; ``value_start[g]``:
    where its values start in A's CSR values."""

    def __init__(self, lin: BlockSparseLinearization, spans: BlockSpans):
        n_spans = len(spans.row)
        self.start = np.flatnonzero(np.r_[True, spans.row[1:] != spans.row[:-1]]) if n_spans else spans.row
        n = len(self.start)
        count = np.diff(np.r_[self.start, n_spans])
        total = np.add.reduceat(spans.width, self.start) if n else spans.width
        first_row = spans.row[self.start]
        ptr = np.asarray(lin.A_row_ptr)
        self.value_start = ptr[first_row]
        # Rows between two residual blocks hold no values (their elements are all fixed).
        d = (ptr[np.r_[first_row[1:], lin.num_rows]] - self.value_start) // np.maximum(total, 1)
        table = np.full((n, 2 + (int(count.max()) if n else 0)), -1, dtype=np.int64)
        table[:, 0], table[:, 1] = d, count
        g, k = segment_positions(count)
        table[g, 2 + k] = spans.width
        self._shapes, self._shape_of = _distinct_rows(table)

    def __len__(self) -> int:
        return len(self._shapes)

    def members(self, shape: int) -> np.ndarray:
        """The residual blocks of ``shape``."""
        return np.flatnonzero(self._shape_of == shape)

    def rows(self, shape: int) -> int:
        return int(self._shapes[shape, 0])

    def widths(self, shape: int) -> np.ndarray:
        """The widths of ``shape``'s spans, in column order."""
        return self._shapes[shape, 2 : 2 + int(self._shapes[shape, 1])]


def _distinct_rows(table: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The distinct rows of ``table`` and each row's index among them (``np.unique(axis=0)``
    sorts a void view and is several times slower)."""
    if len(table) == 0:
        return table, np.zeros(0, dtype=np.int64)
    order = np.lexsort(table.T[::-1])
    ordered = table[order]
    new = np.r_[True, (ordered[1:] != ordered[:-1]).any(axis=1)]
    index = np.empty(len(table), dtype=np.int64)
    index[order] = np.cumsum(new) - 1
    return ordered[new], index


class NormalMatrix:
    """Lower triangle of ``H = AᵀA + βI`` (CSC) for ``lin``'s pattern, columns in the
    elimination order of the column blocks ``blocks`` (block ``blocks[i]`` eliminated
    ``i``-th; ``sizes``: columns per block), assembled by :meth:`matrix` from A's values.

    Needs ``lin.column_spans`` (a linearization whose blocks do not overlap).
    """

    def __init__(self, lin: BlockSparseLinearization, sizes: np.ndarray, blocks: np.ndarray):
        if lin.column_spans is None:
            raise ValueError("NormalMatrix: the linearization has no block structure (overlapping blocks)")
        self.num_cols = int(lin.num_cols)
        sizes = np.asarray(sizes, dtype=np.int64)
        self._order = _BlockOrder.of(sizes, np.asarray(blocks, dtype=np.int64))
        spans = block_spans(lin.column_spans, sizes)
        residuals = _ResidualBlocks(lin, spans)
        self._pairs = self._block_pairs(spans, residuals)
        self._layout()
        self.indices = self._row_indices()
        dev = lin.objective.device
        self._shapes: List[_Shape] = [self._shape(residuals, shape, spans, dev) for shape in range(len(residuals))]

    # -- structure ---------------------------------------------------------------------------
    def _block_pairs(self, spans: BlockSpans, residuals: _ResidualBlocks) -> np.ndarray:
        """Keys ``J·nb + I`` (positions, ``J`` before ``I``) of the pairs of distinct column
        blocks that share a residual block, sorted: column-major order of ``H``'s blocks."""
        nb = len(self._order.position)
        keys = [np.zeros(0, dtype=np.int64)]
        for shape in range(len(residuals)):
            i, j = np.triu_indices(len(residuals.widths(shape)), k=1)
            first = residuals.start[residuals.members(shape)][:, None]
            pi = self._order.position[spans.block[first + i]]
            pj = self._order.position[spans.block[first + j]]
            lo, hi = np.minimum(pi, pj), np.maximum(pi, pj)
            keys.append((lo * nb + hi)[lo != hi])
        return np.unique(np.concatenate(keys))

    def _layout(self) -> None:
        """Column pointers; per block position its column stride ``K_J = d_J + below_J − 1``
        (``indptr[first_J + t] = indptr[first_J] + t·K_J − t(t−1)/2``) and the pairs in its
        block column; per pair the rows of earlier pairs in the same block column."""
        nb, size = len(self._order.position), self._order.size
        column_block, row_block = self._pairs // nb, self._pairs % nb
        rows = size[row_block]
        self._pair_count = np.bincount(column_block, minlength=nb)
        below = np.bincount(column_block, weights=rows, minlength=nb).astype(np.int64)
        column_start = np.cumsum(below) - below
        self._rows_before = np.cumsum(rows) - rows - np.repeat(column_start, self._pair_count)
        block, t = segment_positions(size)  # column t of each block position
        self.indptr = np.r_[0, np.cumsum(size[block] - t + below[block])].astype(np.int64)
        self.nnz = int(self.indptr[-1])
        self._diagonal = self.indptr[:-1]  # each column's first entry
        self._stride = size + below - 1
        self._block_ptr = self.indptr[self._order.first]  # first slot of each block column

    def _row_indices(self) -> np.ndarray:
        """``H``'s row index of every slot: each column is a run of its own block's rows
        ``t … d_J−1``, then one run per block paired with ``J``."""
        order, nb = self._order, len(self._order.position)
        block, t = segment_positions(order.size)
        column, run = segment_positions(1 + self._pair_count[block])  # runs of each column
        pair_first = np.cumsum(self._pair_count) - self._pair_count
        own = run == 0
        paired = self._pairs[(pair_first[block[column]] + run - 1)[~own]] % nb  # row blocks
        start = np.empty(len(run), dtype=np.int64)
        length = np.empty(len(run), dtype=np.int64)
        start[own], length[own] = order.first[block] + t, order.size[block] - t
        start[~own], length[~own] = order.first[paired], order.size[paired]
        entry, within = segment_positions(length)
        return start[entry] + within

    def _shape(self, residuals: _ResidualBlocks, shape: int, spans: BlockSpans, dev) -> _Shape:
        """Value indices, Gram entries and their ``H`` slots for the residual blocks of one
        shape, worked out per pair of spans ``(i, j)``, ``i ≤ j``.

        An entry ``(a, b)`` (``a`` in span ``i``, ``b`` in span ``j``) has its column in the
        span whose block is eliminated first (``J``). With ``t = t₀ + T`` and ``u = u₀ + U`` its
        column and row within their blocks (``t₀``, ``u₀``: the spans' offsets; ``T``, ``U``:
        the entry's within the spans), its slot ``base + t·K_J − t(t−1)/2 + u`` is
        ``B + T·(K_J − t₀) + (U − T(T−1)/2)``: per residual block times per entry, one
        broadcast product and sum (``base``: the block column's first slot, plus ``d_J`` and
        the rows of earlier pairs for an off-diagonal block).
        """
        order = self._order
        members = residuals.members(shape)
        widths = residuals.widths(shape)
        d, m, W = residuals.rows(shape), len(widths), int(widths.sum())
        span_first = np.cumsum(widths) - widths  # first Gram column of each span
        s = residuals.start[members][:, None] + np.arange(m)[None, :]  # (G, m) spans
        s_pos = order.position[spans.block[s]]
        s_off = spans.offset[s]  # span's first column within its block
        templates = []  # per span pair: its entries' offsets within the spans
        for i, j in zip(*np.triu_indices(m)):
            if i == j:
                templates.append((i, j, *np.triu_indices(int(widths[i]))))
            else:
                templates.append((i, j, *(x.ravel() for x in np.indices((int(widths[i]), int(widths[j]))))))
        upper = np.concatenate([(span_first[i] + oa) * W + span_first[j] + ob for i, j, oa, ob in templates])
        slots = np.empty((len(members), len(upper)), dtype=np.int64)
        at = 0
        for i, j, oa, ob in templates:
            pair_slots = slots[:, at : at + len(oa)]
            at += len(oa)
            flip = s_pos[:, j] < s_pos[:, i]  # span j's block is eliminated first
            for rows, (c, r), (T, U) in ((~flip, (i, j), (oa, ob)), (flip, (j, i), (ob, oa))):
                if rows.any():  # c: the column side's span, r: the row side's
                    J, I = s_pos[rows, c], s_pos[rows, r]
                    pair_slots[rows] = self._slots(J, I, s_off[rows, c], s_off[rows, r], T, U)
        gram_entries = np.arange(len(members))[:, None] * W * W + upper[None, :]
        start = np.ascontiguousarray(residuals.value_start[members], dtype=np.int64)
        values = start[:, None] + np.arange(d * W)[None, :]
        return _Shape(
            d,
            W,
            torch.as_tensor(values.reshape(-1), device=dev),
            torch.as_tensor(gram_entries.reshape(-1), device=dev),
            torch.as_tensor(slots.reshape(-1), device=dev),
            start,
            upper // W,
            upper % W,
        )

    def _slots(
        self, J: np.ndarray, I: np.ndarray, t0: np.ndarray, u0: np.ndarray, T: np.ndarray, U: np.ndarray
    ) -> np.ndarray:
        """Slots ``(G, P)`` of entries at column ``t0 + T`` of block position ``J`` and row
        ``u0 + U`` of block position ``I`` (``I`` = ``J`` or after it), per residual block
        (``J``, ``I``, ``t0``, ``u0``: ``(G,)``) and entry (``T``, ``U``: ``(P,)``)."""
        nb = len(self._order.position)
        base = self._block_ptr[J].copy()
        off = J != I
        pair = np.searchsorted(self._pairs, J[off] * nb + I[off])
        base[off] += self._order.size[J[off]] + self._rows_before[pair]
        K = self._stride[J]
        B = base + t0 * K - t0 * (t0 - 1) // 2 + u0
        return B[:, None] + (K - t0)[:, None] * T[None, :] + (U - T * (T - 1) // 2)[None, :]

    def pattern(self) -> sp.csc_matrix:
        """``H``'s lower-triangle pattern (every value 1), for the symbolic analysis."""
        return self._csc(np.ones(self.nnz))

    # -- numeric -----------------------------------------------------------------------------
    def values(self, a_val: Union[torch.Tensor, np.ndarray], beta: float = 0.0) -> np.ndarray:
        """``H``'s values (float64, CSC order) for A's values ``a_val`` (``(nnz,)``, CSR order; a
        tensor, or a float64 NumPy array)."""
        if isinstance(a_val, np.ndarray) and a_val.dtype == np.float64 and native.enabled():
            a_np = np.ascontiguousarray(a_val)
        else:
            a = torch.as_tensor(a_val).detach().to(torch.float64)
            a_np = a.contiguous().numpy() if a.device.type == "cpu" and native.enabled() else None
        if a_np is not None:
            h = np.zeros(self.nnz)
            for shape in self._shapes:
                native.gram_scatter(
                    a_np, shape.start, shape.column_a, shape.column_b, shape.slots.numpy(), shape.d, shape.width, h
                )
        else:
            h = self._values_torch(a)
        if beta:
            h[self._diagonal] += beta
        return h

    def _values_torch(self, a: torch.Tensor) -> np.ndarray:
        """``AᵀA``'s values with torch operations (any device): per shape one gather, one
        batched product of the Gram matrices and one ``index_add`` of their kept entries."""
        out = torch.zeros(self.nnz, dtype=torch.float64, device=a.device)
        for shape in self._shapes:
            s = a.index_select(0, shape.values).view(-1, shape.d, shape.width)
            gram = torch.bmm(s.transpose(1, 2), s)
            out.index_add_(0, shape.slots, gram.view(-1).index_select(0, shape.upper))
        return out.cpu().numpy()

    def matrix(self, a_val: torch.Tensor, beta: float = 0.0) -> sp.csc_matrix:
        """``H = AᵀA + βI``, lower triangle, in the elimination order."""
        return self._csc(self.values(a_val, beta))

    def _csc(self, data: np.ndarray) -> sp.csc_matrix:
        return sp.csc_matrix((data, self.indices, self.indptr), shape=(self.num_cols, self.num_cols))
