"""A Theseus ``Linearization`` that places every Jacobian block with one index operation.

Theseus' ``SparseLinearization`` loops over cost functions in Python to place blocks and over
rows to compute ``diag(AᵀA)``. Here the sparsity structure of ``A`` (CSR) is worked out once,
at construction, as a map from "raw" Jacobian entries to CSR slots:

* :class:`~posegraph.model.costs.BlockSparseCostFunction` terms contribute their Jacobian blocks
  (``(B, K, d, e)`` each, see ``block_layout``); blocks of fixed elements are dropped;
* any other ``th.CostFunction`` (users' own terms) contributes its dense per-variable
  Jacobians ``(B, dim, dof)``, as in Theseus.

The map is worked out on blocks, not entries: all rows of one residual block hold the same
blocks of columns, so sorting a residual block's blocks by column gives every entry's slot in
closed form (:meth:`BlockSparseLinearization._slots_by_blocks`; parking-garage: 9 ms instead
of 27 ms entry by entry). Blocks that overlap (e.g. an edge from a pose to itself) fall back to
the entry-by-entry map, where entries sharing a slot are summed.

Each linearization then is: evaluate the costs and copy each flattened Jacobian tensor
straight into its CSR slots of ``A_val`` (``index_copy_``; ``index_add_`` where entries share
a slot), with no intermediate concatenation. ``Atb``, ``AtA``'s
diagonal and ``A v`` are single ``index_add`` calls. Everything stays a torch op, so
gradients flow through it for Theseus' backward modes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import numpy as np
import scipy.sparse as sp
import theseus as th
import torch
from theseus.optimizer import Linearization, VariableOrdering
from theseus.optimizer.linear_system import SparseStructure

from posegraph.model.costs import BlockSlots, BlockSparseCostFunction
from posegraph.model.variables import element_columns, element_dof


def records_gradient(*tensors: torch.Tensor) -> bool:
    """Whether autograd records an operation on ``tensors`` (grad mode on and one of them
    requires grad): then it must stay a torch operation, with its own exact values."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _plain_cpu(*tensors: torch.Tensor) -> bool:
    """All on CPU, same dtype, and no gradient to record (NumPy may write the values)."""
    return not records_gradient(*tensors) and all(
        t.device.type == "cpu" and t.dtype == tensors[0].dtype for t in tensors
    )


def segment_positions(lengths: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """For consecutive segments of ``lengths``: each element's segment and index within it."""
    segment = np.repeat(np.arange(len(lengths)), lengths)
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return segment, within


@dataclass
class _Piece:
    """One Jacobian tensor's place in A: ``K`` blocks of ``d × e`` entries, block ``k`` at rows
    ``first_row[k] …+d`` and columns ``col[k] …+e`` (``col[k] < 0``: a fixed element, dropped).
    Its values arrive flattened in ``(k, row, column)`` order."""

    first_row: np.ndarray
    d: int
    col: np.ndarray
    e: int

    def entries(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Row, column and kept flag of every entry, in value order."""
        shape = (len(self.first_row), self.d, self.e)
        r = self.first_row[:, None, None] + np.arange(self.d)[None, :, None]
        c = self.col[:, None, None] + np.arange(self.e)[None, None, :]
        keep = np.broadcast_to((self.col >= 0)[:, None, None], shape)
        return (np.broadcast_to(r, shape).ravel(), np.broadcast_to(c, shape).ravel(), keep.ravel())


def _block_slots(piece: "_Piece", dest: np.ndarray) -> Optional[BlockSlots]:
    """``piece``'s :class:`BlockSlots` from its entries' slots ``dest``, or ``None`` when a kept
    block's row does not fill consecutive slots."""
    slots = dest.reshape(len(piece.first_row), piece.d, piece.e)
    rows = slots[:, :, 0]
    kept = piece.col >= 0
    if not np.array_equal(slots[kept], rows[kept][:, :, None] + np.arange(piece.e)):
        return None
    return BlockSlots(np.ascontiguousarray(rows.reshape(-1)), np.ascontiguousarray(piece.col, dtype=np.int64), piece.e)


@dataclass
class _CostPlan:
    """How one cost function's Jacobian values feed the raw value vector."""

    cost: th.CostFunction
    block: bool  # BlockSparseCostFunction (True) or generic dense (False)
    pieces: int  # its Jacobian tensors (entries of the block layout, or optimization variables)
    #: Where a block cost's blocks go in A's values, per layout entry, when every kept block's
    #: rows fill consecutive slots (pure copies; see ``place_weighted_block_jacobians``).
    slots: Optional[List[BlockSlots]] = None


class BlockSparseLinearization(Linearization):
    """Sparse linearization ``A δ ≈ b`` (A: weighted Jacobian, b: −weighted error), CSR layout.

    Attributes after :meth:`linearize`: ``A_val`` ``(B, nnz)`` in CSR order of
    ``A_row_ptr``/``A_col_ind``, and ``b`` ``(B, num_rows)`` — the same contract as Theseus'
    ``SparseLinearization``, so ``structure()`` works with Theseus' sparse tools.
    """

    def __init__(
        self,
        objective: th.Objective,
        ordering: Optional[VariableOrdering] = None,
        **kwargs,
    ):
        super().__init__(objective, ordering)
        self._plans: List[_CostPlan] = []
        pieces: List[_Piece] = []
        row_offset = 0
        for cost in self.objective._get_jacobians_iter():
            block = isinstance(cost, BlockSparseCostFunction)
            cost_pieces = self._block_pieces(cost, row_offset) if block else self._dense_pieces(cost, row_offset)
            self._plans.append(_CostPlan(cost, block, len(cost_pieces)))
            pieces.extend(cost_pieces)
            row_offset += cost.dim()
        self._finalize_structure(pieces)
        self.A_val: torch.Tensor = None  # type: ignore[assignment]
        self.b: torch.Tensor = None  # type: ignore[assignment]
        self._Atb: Optional[torch.Tensor] = None
        self._AtA_diag: Optional[torch.Tensor] = None
        self._pairs: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None
        self._products: Optional[Tuple[sp.csr_matrix, sp.csc_matrix]] = None
        self.detached_hessian = False

    # -- structure --------------------------------------------------------------------------
    def _var_start(self, var: th.Manifold) -> int:
        return self.var_start_cols[self.ordering.index_of(var.name)]

    def _block_pieces(self, cost: BlockSparseCostFunction, row_offset: int) -> List[_Piece]:
        """One piece per Jacobian tensor ``(B, K, d, e)`` of a block cost: block ``k`` covers
        rows ``row_offset + rows[k]·d …`` and the columns of element ``elements[k]``."""
        d = cost.block_dim
        pieces = []
        for lay in cost.block_layout():
            var = lay.variable
            ecol = element_columns(var).numpy()[lay.elements.cpu().numpy()]
            first_row = row_offset + lay.rows.cpu().numpy().astype(np.int64) * d
            col = np.where(ecol >= 0, self._var_start(var) + ecol, -1)
            pieces.append(_Piece(first_row, d, col.astype(np.int64), element_dof(var)))
        return pieces

    def _dense_pieces(self, cost: th.CostFunction, row_offset: int) -> List[_Piece]:
        """One piece per dense Jacobian ``(B, dim, dof)`` of any other cost."""
        dim = cost.dim()
        return [
            _Piece(np.array([row_offset]), dim, np.array([self._var_start(var)]), var.dof())
            for var in cost.optim_vars
        ]

    def _finalize_structure(self, pieces: List[_Piece]) -> None:
        """A's CSR structure and, per piece, where each of its entries goes in ``A_val``.

        Dropped entries (blocks of fixed elements) go to one extra slot past the nonzeros, so
        every piece is copied whole, without first selecting its kept entries (sphere2500:
        0.5 ms per linearization).
        """
        dev = self.objective.device
        dests = self._slots_by_blocks(pieces)
        if dests is None:  # blocks overlap (entries share a slot): entry by entry
            dests = self._slots_by_entries(pieces)
        else:
            self._pure_copy = True
        self.nnz = int(self.A_row_ptr[-1])
        self._has_dropped = any(bool((p.col < 0).any()) for p in pieces)
        u_rows = np.repeat(np.arange(self.num_rows), np.diff(self.A_row_ptr))
        self._row_of_nz = torch.as_tensor(u_rows, dtype=torch.long, device=dev)
        self._col_of_nz = torch.as_tensor(self.A_col_ind, dtype=torch.long, device=dev)
        self._piece_dest: List[torch.Tensor] = [torch.as_tensor(d, device=dev) for d in dests]
        if self._pure_copy:
            first = 0
            for plan in self._plans:
                if plan.block:
                    span = range(first, first + plan.pieces)
                    slots = [_block_slots(pieces[k], np.asarray(dests[k], dtype=np.int64)) for k in span]
                    plan.slots = None if any(s is None for s in slots) else slots  # type: ignore[assignment]
                first += plan.pieces

    def _slots_by_blocks(self, pieces: List[_Piece]) -> Optional[List[np.ndarray]]:
        """Sets ``A_col_ind``/``A_row_ptr`` and returns each piece's slots, working on blocks:
        a residual block's rows all hold the same blocks of columns, in column order, so an
        entry ``(i, j)`` of a block with ``W`` columns in its rows and ``off`` of them before it
        goes to ``row_ptr[first_row] + i·W + off + j``. None when two blocks of one residual
        block overlap (their entries are summed: see :meth:`_slots_by_entries`).

        Measured (docs/performance.md, 'What each speed mechanism pays'): saves 27–442% of an
        iteration once per solve against the entry-by-entry map (parking-garage 442%, sphere2500
        271%).
        """
        sizes = [len(p.first_row) for p in pieces]
        first_row = np.concatenate([p.first_row for p in pieces]) if pieces else np.zeros(0, np.int64)
        col = np.concatenate([p.col for p in pieces]) if pieces else np.zeros(0, np.int64)
        rows = np.concatenate([np.full(n, p.d) for n, p in zip(sizes, pieces)]) if pieces else col
        width = np.concatenate([np.full(n, p.e) for n, p in zip(sizes, pieces)]) if pieces else col
        kept = np.flatnonzero(col >= 0)
        order = kept[np.lexsort((col[kept], first_row[kept]))]  # by residual block, then column
        fr, c, w, d = first_row[order], col[order], width[order], rows[order]
        same = fr[1:] == fr[:-1]
        if (same & ((c[1:] < c[:-1] + w[:-1]) | (d[1:] != d[:-1]))).any():
            return None
        #: (first row, first column, width) of every kept block of A (for the block graph).
        self.column_spans: Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]] = (fr, c, w)
        starts = np.flatnonzero(np.r_[True, ~same]) if len(order) else np.zeros(0, np.int64)
        block_rows, block_width = d[starts], np.add.reduceat(w, starts) if len(order) else w
        row_len = np.zeros(self.num_rows, dtype=np.int64)
        block_of, within = segment_positions(block_rows)
        row_len[fr[starts][block_of] + within] = block_width[block_of]
        self.A_row_ptr = np.concatenate([[0], np.cumsum(row_len)]).astype(np.int64)
        # Each kept block's rows: width of its residual block's rows and columns before it.
        group = np.cumsum(np.r_[True, ~same]) - 1 if len(order) else order
        before = np.cumsum(w) - w
        off = np.zeros(len(col), dtype=np.int64)
        row_width = np.zeros(len(col), dtype=np.int64)
        off[order] = before - before[starts][group]
        row_width[order] = block_width[group]
        base = self.A_row_ptr[first_row] if len(col) else col
        nnz = int(self.A_row_ptr[-1])
        self.A_col_ind = np.empty(nnz, dtype=np.int64)
        dests, at = [], 0
        for n, p in zip(sizes, pieces):
            k = slice(at, at + n)
            at += n
            i = np.arange(p.d)[None, :, None]
            j = np.arange(p.e)[None, None, :]
            dest = base[k][:, None, None] + i * row_width[k][:, None, None] + off[k][:, None, None] + j
            dest = np.where((p.col >= 0)[:, None, None], dest, nnz).reshape(-1)
            keep = dest < nnz
            self.A_col_ind[dest[keep]] = np.broadcast_to(p.col[:, None, None] + j, (n, p.d, p.e)).reshape(-1)[keep]
            dests.append(dest)
        return dests

    def _slots_by_entries(self, pieces: List[_Piece]) -> List[np.ndarray]:
        """Sets ``A_col_ind``/``A_row_ptr`` and returns each piece's slots, entry by entry
        (entries that share a slot are summed, ``index_add_``)."""
        expanded = [p.entries() for p in pieces]
        rows_a = np.concatenate([r for r, _, _ in expanded]) if expanded else np.zeros(0, dtype=np.int64)
        cols_a = np.concatenate([c for _, c, _ in expanded]) if expanded else np.zeros(0, dtype=np.int64)
        keep_a = np.concatenate([k for _, _, k in expanded]) if expanded else np.zeros(0, dtype=bool)
        kept = np.flatnonzero(keep_a)
        keys = rows_a[kept] * max(self.num_cols, 1) + cols_a[kept]
        uniq, dest = np.unique(keys, return_inverse=True)
        self._pure_copy = len(uniq) == len(kept)
        u_rows = uniq // max(self.num_cols, 1)
        self.A_col_ind = (uniq % max(self.num_cols, 1)).astype(np.int64)
        self.A_row_ptr = np.searchsorted(u_rows, np.arange(self.num_rows + 1)).astype(np.int64)
        self.column_spans = None
        dest_of_raw = np.full(len(rows_a), len(uniq), dtype=np.int64)
        dest_of_raw[kept] = dest.reshape(-1)
        bounds = np.cumsum([0] + [len(r) for r, _, _ in expanded])
        return [dest_of_raw[start:stop] for start, stop in zip(bounds[:-1], bounds[1:])]

    def structure(self) -> SparseStructure:
        """CSR structure of A (Theseus' ``SparseStructure``)."""
        return SparseStructure(
            self.A_col_ind,
            self.A_row_ptr,
            self.num_rows,
            self.num_cols,
            dtype=np.float64 if self.objective.dtype == torch.double else np.float32,
        )

    # -- numeric ----------------------------------------------------------------------------
    def _linearize_jacobian_impl(self) -> None:
        self._Atb = None
        self._AtA_diag = None
        batch = self.objective.batch_size
        dtype, device = self.objective.dtype, self.objective.device
        # Jacobian values go straight to their CSR slots (one index_copy_/index_add_ per
        # Jacobian tensor into one buffer; no concatenation of the raw values).
        alloc = torch.empty if self._pure_copy else torch.zeros  # pure copy: every slot written
        a_val = alloc((batch, self.nnz + int(self._has_dropped)), dtype=dtype, device=device)
        fill = a_val.index_copy_ if self._pure_copy else a_val.index_add_
        # One graph in float64 on CPU: a block cost may write its blocks to their slots itself
        # (BetweenEdges: in the kernel that computes them, without block tensors to place)
        # and add their rows' share of Aᵀb on the way (kept when every cost did).
        direct = a_val.numpy()[0] if batch == 1 and self._pure_copy and _plain_cpu(a_val) and dtype == torch.float64 else None
        atb = None if direct is None else np.zeros(self.num_cols)
        errs: List[torch.Tensor] = []
        piece = 0
        for plan in self._plans:
            err = None
            if direct is not None and plan.slots is not None:
                err = plan.cost.place_weighted_block_jacobians(direct, plan.slots, atb)
            if err is None:
                atb = None
                jacs, err = plan.cost.weighted_block_jacobians_error() if plan.block else plan.cost.weighted_jacobians_error()
                for j, dest in zip(jacs, self._piece_dest[piece : piece + plan.pieces]):
                    fill(1, dest, j.expand(batch, *j.shape[1:]).reshape(batch, -1))
            piece += plan.pieces
            errs.append(err.expand(batch, *err.shape[1:]).reshape(batch, -1))
        self.A_val = a_val[:, : self.nnz] if self._has_dropped else a_val  # without the dropped slot
        self.b = -torch.cat(errs, dim=1) if len(errs) != 1 else -errs[0]
        if atb is not None:
            self._Atb = torch.from_numpy(atb)[None, :, None]

    def _linearize_hessian_impl(self, _detach_hessian: bool = False) -> None:
        self._linearize_jacobian_impl()
        self.detached_hessian = _detach_hessian

    def _atb_impl(self) -> torch.Tensor:
        if self._Atb is None:
            self._Atb = self.Atv(self.b).unsqueeze(2)
        return self._Atb

    def Atv(self, u: torch.Tensor, a_val: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``Aᵀ u`` for ``u`` ``(B, num_rows)`` → ``(B, num_cols)`` (``a_val`` overrides
        ``A_val``, e.g. a detached copy)."""
        a = self.A_val if a_val is None else a_val
        return self.column_sums(a * u.index_select(1, self._row_of_nz))

    def column_sums(self, values: torch.Tensor) -> torch.Tensor:
        """Sum per column of A of values ``(B, nnz)`` laid out like ``A_val`` → ``(B, num_cols)``."""
        out = values.new_zeros(values.shape[0], self.num_cols)
        return out.index_add(1, self._col_of_nz, values)

    def ata_diagonal(self) -> torch.Tensor:
        """``diag(AᵀA)``, ``(B, num_cols)``."""
        if self._AtA_diag is None:
            self._AtA_diag = self.column_sums(self.A_val**2)
        return self._AtA_diag

    def diagonal_scaling(self, v: torch.Tensor) -> torch.Tensor:
        """``diag(AᵀA) · v`` (Theseus' ``Linearization.diagonal_scaling``, used by LM's ellipsoidal damping)."""
        return self.ata_diagonal() * v

    def Av(self, v: torch.Tensor, a_val: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``A v`` for ``v`` ``(B, num_cols)`` → ``(B, num_rows)``."""
        a = self.A_val if a_val is None else a_val
        contrib = a * v.index_select(1, self._col_of_nz)
        out = contrib.new_zeros(contrib.shape[0], self.num_rows)
        return out.index_add(1, self._row_of_nz, contrib)

    def normal_product(self, values: np.ndarray, beta: float) -> Callable[[np.ndarray], np.ndarray]:
        """``p ↦ (AᵀA + βI) p`` for A with ``values`` (one batch element, CSR order), without
        forming ``AᵀA``: SciPy's products with A and ``Aᵀ``."""
        a, at = self.product_matrices(values)
        return lambda p: at @ (a @ p) + beta * p

    def product_matrices(self, values: np.ndarray) -> Tuple[sp.csr_matrix, sp.csc_matrix]:
        """A (CSR) and ``Aᵀ`` (CSC) with ``values`` (one batch element, CSR order), for products
        made right away: the same two SciPy matrices on every call, their values replaced
        (building a SciPy matrix runs ~30 µs of format checks, and the solve loop needs a dozen
        per iteration; smallGrid3D: 0.6 ms per run). Keep neither: use :meth:`scipy_matrix`.

        Measured (docs/performance.md, 'What each speed mechanism pays'): saves 3.1% of an
        iteration on smallGrid3D and 4.2% on sphere2500 (the CG attempts' products).
        """
        values = np.ascontiguousarray(values)
        if self._products is None or self._products[0].dtype != values.dtype:
            a = self.scipy_matrix(values)
            self._products = (a, a.T)
        a, at = self._products
        a.data = at.data = values
        return a, at

    def scipy_matrix(self, values: np.ndarray, transpose: bool = False) -> sp.spmatrix:
        """A with ``values`` (one batch element, CSR order) as a SciPy CSR matrix, or ``Aᵀ`` as
        the CSC matrix with the same arrays (``transpose``)."""
        indices, indptr = self.A_col_ind, self.A_row_ptr
        if transpose:
            return sp.csc_matrix((values, indices, indptr), shape=(self.num_cols, self.num_rows))
        return sp.csr_matrix((values, indices, indptr), shape=(self.num_rows, self.num_cols))

    # -- sparse views (debugging, solvers) --------------------------------------------------
    def A_scipy(self, batch_index: int = 0) -> sp.csr_matrix:
        """A of one batch element as a SciPy CSR matrix (float64)."""
        return self.scipy_matrix(self.A_val[batch_index].detach().cpu().double().numpy())

    def sparse_ata(self, batch_index: int = 0) -> sp.csc_matrix:
        """AᵀA of one batch element as a SciPy CSC matrix (no dense matrix is formed)."""
        a = self.A_scipy(batch_index)
        return (a.T @ a).tocsc()

    def _row_pairs(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every pair ``(p, q)`` of nonzeros sharing a row of A, and the flat ``AᵀA`` slot
        ``col[p]·n + col[q]`` each product ``A_p A_q`` adds to (worked out once).

        ``(AᵀA)_{c₁c₂} = Σ_r A_{rc₁} A_{rc₂}``: only nonzeros of one row meet.
        """
        if self._pairs is None:
            counts = np.diff(self.A_row_ptr)
            row, local = segment_positions(counts**2)
            width = counts[row]
            p = self.A_row_ptr[row] + local // np.maximum(width, 1)
            q = self.A_row_ptr[row] + local % np.maximum(width, 1)
            slot = self.A_col_ind[p] * self.num_cols + self.A_col_ind[q]
            dev = self.objective.device
            self._pairs = tuple(torch.as_tensor(x, device=dev) for x in (p, q, slot))
        return self._pairs

    def _ata_impl(self) -> torch.Tensor:
        """Dense ``AᵀA`` ``(B, n, n)`` (Theseus' contract), formed on A's device with one
        gather and one ``index_add`` over row pairs (differentiable; detached from A when
        the last linearization asked for a detached Hessian, as Theseus' implicit mode
        does). Memory grows as n²: use :meth:`sparse_ata` on large problems."""
        a = self.A_val.detach() if self.detached_hessian else self.A_val
        p, q, slot = self._row_pairs()
        prod = a[:, p] * a[:, q]
        out = prod.new_zeros(prod.shape[0], self.num_cols * self.num_cols)
        return out.index_add(1, slot, prod).view(prod.shape[0], self.num_cols, self.num_cols)

