"""Intel MKL PARDISO for the normal matrix: one symbolic analysis, numeric factorizations
kept side by side, solves — through MKL's documented C interface (``pardiso_64``, ctypes).

Why PARDISO: on the 3D datasets its supernodal factorization of ``AᵀA`` (assembled by
:class:`~posegraph.solve.normal.NormalMatrix`, in the same block order) is 2.4–3.2× faster
than CHOLMOD's faster mode on the same 2-core machine (``benchmarks/cholmod_modes.py``,
assembly included: sphere2500 14.2 ms against 38.3 ms, parking-garage 4.7 ms against 15.1 ms,
smallGrid3D 0.66 ms against 1.79 ms; SE2 with 10,000 poses 34 ms against 80 ms). CHOLMOD (SuiteSparse 5.12) runs a supernode at a time and leaves the parallelism to
BLAS, whose calls on supernodes of a few dozen columns are too small to use two threads
well; PARDISO also works on independent subtrees in parallel (Schenk & Gärtner, "Solving
unsymmetric sparse systems of linear equations with PARDISO", FGCS 20(3), 2004). On 2D graphs,
whose factors are much sparser, CHOLMOD's simplicial factorization is as fast and stays the
choice (:func:`~posegraph.solve.symbolic.plan_factorization`).

Why a binding of our own rather than ``pypardiso``: the solver needs one analysis shared by
several numeric factorizations held at once (the lagged factor while a new one is made, and
every factor a backward pass still needs), which PARDISO offers through ``maxfct``/``mnum`` and
``pypardiso`` does not expose; its ``solve`` also compares the whole matrix with the last one
on every call. The library itself comes from the ``mkl`` wheel (``libmkl_rt``).

Measured (docs/performance.md, 'What each speed mechanism pays'): PARDISO instead of CHOLMOD saves 144% of an iteration on
sphere2500, 86% on parking-garage, 91% on smallGrid3D (the 2D graphs take CHOLMOD either way).

PARDISO reference: Intel oneAPI MKL Developer Reference (C), "pardiso" and "pardiso iparm
Parameter". Matrix type 2 (real symmetric positive definite: Cholesky, no pivoting); the upper
triangle in CSR — the same arrays as the lower triangle in CSC, which is what
:class:`~posegraph.solve.normal.NormalMatrix` builds.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import weakref
from typing import List, Optional

import numpy as np

from posegraph.solve.threads import idle_cores
from posegraph.solve.linearization import BlockSparseLinearization
from posegraph.solve.normal import NormalMatrix
from posegraph.solve.symbolic import FactorizationPlan, OrderedTranspose, column_block_sizes
from posegraph.solve.mkl import _load

#: PARDISO's error codes (``error`` argument), from the MKL reference.
PARDISO_ERRORS = {
    -1: "input inconsistent",
    -2: "not enough memory",
    -3: "reordering problem",
    -4: "zero or negative pivot: the matrix is not positive definite",
    -5: "unclassified (internal) error",
    -6: "reordering failed",
    -7: "diagonal matrix is singular",
    -8: "32-bit integer overflow problem",
    -9: "not enough memory for OOC",
    -10: "error opening OOC files",
    -11: "read/write error with OOC files",
    -12: "pardiso_64 called from a 32-bit library",
    -13: "interrupted by the mkl_progress function",
    -15: "internal error for iparm[23]=10 and iparm[12]=1",
}

#: Numeric factorizations one analysis holds (PARDISO's ``maxfct``); more live factors open
#: another handle, with its own analysis. Memory is taken per factorization, not per slot.
SLOTS_PER_HANDLE = 4

_MTYPE_SPD = 2
_ANALYSIS, _FACTORIZE, _SOLVE, _RELEASE_ALL = 11, 22, 33, -1


class PardisoError(RuntimeError):
    """A PARDISO call failed; ``code`` is its error code."""

    def __init__(self, phase: int, code: int):
        self.phase, self.code = phase, code
        what = {_ANALYSIS: "analysis", _FACTORIZE: "factorization", _SOLVE: "solve"}.get(phase, f"phase {phase}")
        super().__init__(f"PARDISO {what} failed: {PARDISO_ERRORS.get(code, 'unknown error')} (error {code})")


def _ptr(a: np.ndarray) -> ctypes.c_void_p:
    return ctypes.c_void_p(a.ctypes.data)


# -- handles, analyses, factors ----------------------------------------------------------------
class _Handle:
    """One PARDISO handle (``pt``): the analysis of a pattern and up to ``SLOTS_PER_HANDLE``
    numeric factorizations of it. Released (phase −1) when no analysis or factor uses it."""

    def __init__(self, pattern: "PardisoAnalysis"):
        self.pt = np.zeros(64, dtype=np.int64)
        self.free = list(range(SLOTS_PER_HANDLE, 0, -1))  # PARDISO's mnum, 1-based; pop() → 1
        pattern.call(self, _ANALYSIS, 1, pattern._ones)
        self._finalizer = weakref.finalize(self, _release, self.pt, pattern._arrays)
        self._finalizer.atexit = False


def _release(pt: np.ndarray, arrays: "_Arrays") -> None:
    lib = _load()
    if lib is not None and pt.any():
        arrays.call(lib, pt, _RELEASE_ALL, 1, np.zeros(1), None, None)


class _Arrays:
    """The pattern's index arrays and PARDISO's parameters (shared by every handle), and the
    thread count every call runs with: MKL's at the analysis.

    PARDISO's phases must run on as many threads as its analysis did. Measured with MKL
    2026.2: an analysis on two threads followed by a factorization on one (``torch.set_num_threads(1)``,
    e.g. ``SolverOptions(threads=1)`` with an optimizer built before) solves wrongly without
    an error, and crashes in the solver loop. Each call therefore sets MKL's thread-local count
    (``mkl_set_num_threads_local``, which takes precedence over OpenMP's) and restores it.
    """

    def __init__(self, n: int, indptr: np.ndarray, indices: np.ndarray, iparm: np.ndarray, perm: Optional[np.ndarray], threads: int):
        self.n = n
        self.indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        self.indices = np.ascontiguousarray(indices, dtype=np.int64)
        self.iparm = iparm
        self.perm = perm
        self.threads = threads

    def call(self, lib, pt, phase, mnum, values, rhs, out) -> None:
        """One ``pardiso_64`` call (handle ``pt``, factor slot ``mnum``) on MKL's thread count
        of the analysis; raises :class:`PardisoError` on PARDISO's error code."""
        nrhs = 1 if rhs is None else (rhs.shape[1] if rhs.ndim == 2 else 1)
        ints = [ctypes.c_int64(v) for v in (SLOTS_PER_HANDLE, mnum, _MTYPE_SPD, phase, self.n, nrhs, 0, 0)]
        maxfct, mnum_, mtype, phase_, size, nrhs_, msglvl, error = ints
        none = ctypes.c_void_p(None)
        previous = lib.MKL_Set_Num_Threads_Local(self.threads)
        try:
            lib.pardiso_64(
                _ptr(pt), ctypes.byref(maxfct), ctypes.byref(mnum_), ctypes.byref(mtype), ctypes.byref(phase_),
                ctypes.byref(size), _ptr(values), _ptr(self.indptr), _ptr(self.indices),
                none if self.perm is None else _ptr(self.perm), ctypes.byref(nrhs_), _ptr(self.iparm),
                ctypes.byref(msglvl), none if rhs is None else _ptr(rhs), none if out is None else _ptr(out),
                ctypes.byref(error),
            )
        finally:
            lib.MKL_Set_Num_Threads_Local(previous)
        if error.value != 0:
            raise PardisoError(phase, int(error.value))


class PardisoAnalysis:
    """PARDISO's analysis of a symmetric positive definite pattern, given as the upper
    triangle in CSR (``indptr``, ``indices``: sorted, diagonal present) — equivalently the
    lower triangle in CSC — of an ``n × n`` matrix.

    ``keep_order``: the matrix is already in a fill-reducing order (the identity is passed
    as PARDISO's permutation, ``iparm[4] = 1``); else PARDISO orders it with its parallel
    nested dissection (METIS, ``iparm[1] = 3``). The analysis (PARDISO's phase 11: ordering
    and symbolic factorization) runs here, once; :meth:`factorize` returns a
    :class:`PardisoFactor`, and any number may live at once.
    """

    def __init__(self, n: int, indptr: np.ndarray, indices: np.ndarray, keep_order: bool = True):
        lib = _load()
        if lib is None:
            raise RuntimeError("MKL PARDISO is not available: install the 'mkl' package (or set POSEGRAPH_MKL_RT)")
        self._lib = lib
        iparm = np.zeros(64, dtype=np.int64)
        iparm[0] = 1  # parameters below, not PARDISO's defaults
        iparm[1] = 3  # parallel nested dissection (when no order is kept)
        iparm[4] = 1 if keep_order else 0  # user permutation (the identity)
        iparm[7] = 0  # no iterative refinement
        iparm[17] = -1  # report the factor's nonzeros
        iparm[34] = 1  # zero-based indices
        perm = np.arange(n, dtype=np.int64) if keep_order else None
        threads = min(max(1, int(lib.MKL_Get_Max_Threads())), idle_cores())  # see idle_cores
        self._arrays = _Arrays(int(n), indptr, indices, iparm, perm, threads)
        self._ones = np.ones(len(self._arrays.indices))
        self.n = int(n)
        self._handles: List[_Handle] = [_Handle(self)]

    def call(self, handle: _Handle, phase: int, mnum: int, values: np.ndarray, rhs=None, out=None) -> None:
        """One PARDISO call on ``handle`` (phases 11, 22, 33)."""
        self._arrays.call(self._lib, handle.pt, phase, mnum, values, rhs, out)

    def _slot(self) -> "tuple[_Handle, int]":
        for handle in self._handles:
            if handle.free:
                return handle, handle.free.pop()
        self._handles.append(_Handle(self))
        return self._handles[-1], self._handles[-1].free.pop()

    def factorize(self, values: np.ndarray) -> "PardisoFactor":
        """The numeric factorization of the matrix with ``values`` (in the pattern's order)."""
        values = np.ascontiguousarray(values, dtype=np.float64)
        if values.shape != self._ones.shape:
            raise ValueError(f"PARDISO: expected {len(self._ones)} values, received {values.shape}")
        handle, mnum = self._slot()
        try:
            self.call(handle, _FACTORIZE, mnum, values)
        except PardisoError:
            handle.free.append(mnum)
            raise
        return PardisoFactor(self, handle, mnum, values)

    @property
    def factor_nonzeros(self) -> int:
        """Nonzeros of the Cholesky factor (PARDISO's count from the analysis)."""
        return int(self._arrays.iparm[17])

    @property
    def handles(self) -> int:
        """PARDISO handles (analyses) opened so far."""
        return len(self._handles)


class PardisoFactor:
    """One numeric factorization; calling it solves ``H x = rhs`` (``rhs``: ``(n,)`` or
    ``(n, k)``). Its slot goes back to the analysis when the factor is garbage-collected
    (the memory stays with the slot, for the next factorization)."""

    def __init__(self, analysis: PardisoAnalysis, handle: _Handle, mnum: int, values: np.ndarray):
        self._analysis, self._handle, self._mnum = analysis, handle, mnum
        self._values = values  # PARDISO may read them during the solve
        weakref.finalize(self, handle.free.append, mnum)

    def __call__(self, rhs: np.ndarray) -> np.ndarray:
        rhs = np.asarray(rhs, dtype=np.float64)
        if rhs.shape[0] != self._analysis.n:
            raise ValueError(f"PARDISO solve: expected {self._analysis.n} rows, received {rhs.shape}")
        b = np.asfortranarray(rhs)  # PARDISO reads several right-hand sides column by column
        out = np.empty_like(b, order="F")
        self._analysis.call(self._handle, _SOLVE, self._mnum, self._values, b, out)
        return np.ascontiguousarray(out)


class PardisoFactorization:
    """PARDISO's analysis of ``lin``'s normal matrix under ``plan`` and its numeric
    factorizations (:meth:`factorize`: a :class:`PardisoFactor`, called to solve in
    ``order``'s order).

    ``AᵀA + βI`` is assembled by :class:`~posegraph.solve.normal.NormalMatrix` — in the plan's
    block order, which PARDISO keeps (the assembly's lower triangle in CSC is PARDISO's upper
    triangle in CSR), or, without one (large graphs), in A's own order, which PARDISO orders
    by nested dissection.
    """

    backend = "pardiso"

    def __init__(self, lin: BlockSparseLinearization, plan: FactorizationPlan):
        self.mode = plan.mode
        if plan.order is not None:
            sizes, blocks, columns = plan.order.sizes, plan.order.blocks, plan.order.columns
        else:
            sizes = column_block_sizes(lin)
            blocks, columns = np.arange(len(sizes)), None
        self.order = OrderedTranspose(lin, columns)
        self.normal = NormalMatrix(lin, sizes, blocks)
        # no analysis of an empty matrix (every variable fixed: PARDISO refuses n = 0, and the
        # solver has nothing to solve, see SparseCholeskySolver._solve)
        self.analysis: Optional[PardisoAnalysis] = None
        if self.normal.num_cols > 0:
            self.analysis = PardisoAnalysis(
                self.normal.num_cols, self.normal.indptr, self.normal.indices, plan.order is not None
            )

    def factorize(self, a_values: np.ndarray, beta: float) -> PardisoFactor:
        """PARDISO's numeric factorization of ``AᵀA + βI`` for A's values ``a_values`` (CSR
        order); a matrix that is not positive definite raises ``RuntimeError``."""
        if self.analysis is None:
            raise ValueError("PARDISO: nothing to factorize (the normal matrix has no columns)")
        return self.analysis.factorize(self.normal.values(a_values, beta))
