"""Sparse Cholesky linear solver for :class:`BlockSparseLinearization`, differentiable.

The normal equations ``(AᵀA + λI) δ = Aᵀb`` are factored by a backend chosen per problem
(:func:`~posegraph.solve.symbolic.plan_factorization`): CHOLMOD
(:mod:`~posegraph.solve.cholmod`) or MKL PARDISO (:mod:`~posegraph.solve.pardiso`), with one
symbolic analysis per solver and a numeric factorization per call, in the block-graph order.
On top of either, :class:`SparseCholeskySolver` serves solves with the last factor while
conjugate gradients converge with it (:func:`lagged_factor_cg`).

Gradients (Theseus' unroll / truncated / implicit modes) come from :class:`NormalSolve`:
with ``H = (AᵀA + λI)⁻¹ g`` for the incoming gradient ``g``, ``∂L/∂b = A H`` and
``∂L/∂A_rc = (b − A δ)_r H_c − (A H)_r δ_c`` on A's nonzeros (the derivation in Theseus'
``CholmodSolveFunction``; Golub & Van Loan, "Matrix Computations", §5.3 for the
normal-equation perturbation). With a detached Hessian (implicit mode) the second term
vanishes: ``∂L/∂A_rc = b_r H_c`` (:func:`~posegraph.solve.batched.normal_solve_gradients`,
shared with the batched CG solver). Unlike Theseus' version it stays in float64 throughout
and computes the gradient with vectorized gathers, not a loop over rows.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Type, Union

import numpy as np
import theseus as th
import torch
from theseus.optimizer import Linearization

from posegraph.solve.batched import BlockSparseSolver, normal_solve_gradients
from posegraph.solve.cholmod import CHOLMOD_MODES, CholmodFactorization
from posegraph.solve.linearization import records_gradient
from posegraph.solve.normal import NormalMatrix
from posegraph.solve.pardiso import PardisoFactorization
from posegraph.solve.symbolic import OrderedTranspose, plan_factorization

#: The most CG iterations an attempt with the last factor takes (:func:`lagged_factor_cg`).
CG_MAX_ITERATIONS = 10
#: Before any attempt has converged, an attempt is made only when this many CG iterations cost
#: less than a factorization: the fewest a lagged factor has needed at the default tolerance
#: (intel: 2; manhattan and a 10,000-pose SE2 graph: 3; sphere2500: 4).
CG_MIN_ITERATIONS = 2

#: A numeric factorization: called with a right-hand side, returns the solution.
Factor = Callable[[np.ndarray], np.ndarray]


class NormalSolve(torch.autograd.Function):
    """``δ = (AᵀA + λI)⁻¹ Aᵀ b`` for each batch element; A given by CSR values."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        A_val: torch.Tensor,
        b: torch.Tensor,
        solver: "SparseCholeskySolver",
        dampings: Sequence[float],
        detach_hessian: bool,
    ) -> torch.Tensor:
        a_np, b_np, x_np, factors = solver.solve_batch(A_val, b, dampings, exact=True)
        ctx.save_for_backward(A_val, b)
        ctx.x_np, ctx.a_np, ctx.b_np = x_np, a_np, b_np
        ctx.factors = factors
        ctx.order = solver.order
        ctx.detach_hessian = detach_hessian
        ctx.lin = solver.linearization
        return torch.as_tensor(x_np).to(dtype=A_val.dtype, device=A_val.device)

    @staticmethod
    def backward(ctx: Any, grad_x: torch.Tensor):  # type: ignore[override]
        A_val, b = ctx.saved_tensors
        g = grad_x.detach().cpu().double().numpy()
        order = ctx.order
        h = np.stack([order.solve(f, g[i]) if f is not None else np.zeros_like(g[i]) for i, f in enumerate(ctx.factors)])
        grad_a, grad_b = normal_solve_gradients(
            ctx.lin,
            torch.as_tensor(ctx.b_np),
            torch.as_tensor(ctx.x_np),
            torch.as_tensor(h),
            torch.as_tensor(ctx.a_np),
            ctx.detach_hessian,
        )
        to = dict(dtype=A_val.dtype, device=A_val.device)
        return grad_a.to(**to), grad_b.to(**to), None, None, None


@dataclass
class FactorStats:
    """What the sparse Cholesky solver did in one optimization: its factorization ``backend``
    and ``mode``, numeric factorizations, solves served by an earlier factor
    (:func:`lagged_factor_cg`) and the CG iterations run (those of attempts that gave up
    included)."""

    backend: str = "cholmod"
    mode: str = "supernodal"
    factorizations: int = 0
    reused: int = 0
    cg_iterations: int = 0


@dataclass
class SolveCosts:
    """Wall times a :class:`SparseCholeskySolver` measures to decide whether trying the last
    factor pays: ``fresh_s``, its last numeric factorization with the solve; ``cg_iteration_s``,
    one CG iteration of its last attempt with a lagged factor (a product with ``AᵀA`` and a
    solve); ``needed``, the iterations its last converged attempt took
    (:data:`CG_MIN_ITERATIONS` before one has).

    Measured (docs/performance.md, 'What each speed mechanism pays'): the cost-aware limit saves
    4.7% of an iteration on parking-garage against attempts of up to 10 CG iterations always made
    (within ±2.3% elsewhere).
    """

    fresh_s: Optional[float] = None
    cg_iteration_s: Optional[float] = None
    needed: int = CG_MIN_ITERATIONS

    def budget(self, cap: int = CG_MAX_ITERATIONS) -> int:
        """The CG iterations that cost as much as a factorization and its solve, at most
        ``cap`` (``cap`` until both have been measured)."""
        if self.fresh_s is None or self.cg_iteration_s is None:
            return cap
        return min(cap, int(self.fresh_s / self.cg_iteration_s))

    def worth_trying(self, cap: int = CG_MAX_ITERATIONS) -> bool:
        """Whether an attempt converging as fast as the last one — ``needed`` iterations, at
        most ``cap`` — would cost less than a factorization and its solve (strictly: at equal
        cost nothing is gained, and the timings are noisy). Such an attempt fits in
        :meth:`budget`."""
        if self.needed > cap:
            return False
        if self.fresh_s is None or self.cg_iteration_s is None:
            return self.needed < cap
        return self.needed * self.cg_iteration_s < self.fresh_s


#: Up to this length a dot product goes to BLAS, longer ones do not (:func:`vector_dot`). NumPy's
#: OpenBLAS keeps such short ones on one thread (measured: 4,096 entries take 0.98 µs with one
#: thread or two; 20,000 take 3.3 µs with one and 2.2 µs with two, i.e. threaded).
BLAS_DOT_MAX = 4096


def vector_dot(a: np.ndarray, b: np.ndarray) -> float:
    """``aᵀb``; long vectors without BLAS: NumPy's bundled OpenBLAS threads long dot products,
    and its threads then spin against CHOLMOD's BLAS threads in the alternating CG loop
    (measured: three CG iterations on sphere2500 take 21 ms instead of 5 ms). Short ones with
    it: 0.4 µs against einsum's 2 µs on smallGrid3D's 744 entries, a dozen per CG attempt.

    Measured (docs/performance.md, 'What each speed mechanism pays'): keeping long dot products off
    BLAS saves 114% of an iteration on sphere2500 and 166% on parking-garage.
    """
    return float(a.dot(b)) if a.shape[0] <= BLAS_DOT_MAX else float(np.einsum("i,i->", a, b))


def _float64_array(t: torch.Tensor) -> np.ndarray:
    """``t`` as a float64 NumPy array (a view when it is one already, on CPU)."""
    t = t.detach()
    if t.device.type != "cpu" or t.dtype != torch.float64:
        t = t.to(device="cpu", dtype=torch.float64)
    return t.numpy()


def lagged_factor_cg(
    product: Callable[[np.ndarray], np.ndarray],
    rhs: np.ndarray,
    factor: Callable[[np.ndarray], np.ndarray],
    tolerance: float,
    max_iterations: int,
) -> Tuple[Optional[np.ndarray], int]:
    """Solve ``H x = rhs``, ``H = AᵀA + βI``, by conjugate gradients preconditioned with the
    Cholesky ``factor`` of an earlier, nearby normal matrix (Saad, "Iterative Methods for Sparse
    Linear Systems", 2nd ed. 2003, alg. 9.1; lagging the preconditioner of a Newton-type method:
    Knoll & Keyes 2004, "Jacobian-free Newton–Krylov methods", J. Comput. Phys. 193, §3.1).

    ``product`` computes ``H p`` (e.g. :meth:`BlockSparseLinearization.normal_product`);
    ``factor`` applies the factor's solve (a CHOLMOD ``Factor``, or one wrapped to work in A's
    column order). Converged when ``‖r‖ ≤ tolerance·‖rhs‖``.
    Gives up (returns ``None``) as soon as the residual falls slower than that rate spread
    over ``max_iterations`` (``‖r_k‖ > ‖r_0‖ · tolerance^(k / max_iterations)``): the factor
    is then too far from the current matrix and refactoring is cheaper. Returns the solution
    (or ``None``) and the iterations run.
    """
    norm0 = math.sqrt(vector_dot(rhs, rhs))
    if norm0 == 0.0:
        return np.zeros_like(rhs), 0
    x = np.zeros_like(rhs)
    r = rhs.copy()
    z = factor(r)
    p = z.copy()
    rz = vector_dot(r, z)
    for k in range(1, max_iterations + 1):
        hp = product(p)
        alpha = rz / vector_dot(p, hp)
        x += alpha * p
        r -= alpha * hp
        norm = math.sqrt(vector_dot(r, r))
        if norm <= tolerance * norm0:
            return x, k
        if not norm <= norm0 * tolerance ** (k / max_iterations):  # also NaN
            return None, k
        z = factor(r)
        rz_next = vector_dot(r, z)
        p = z + (rz_next / rz) * p
        rz = rz_next
    return None, max_iterations


class SparseCholeskySolver(BlockSparseSolver):
    """Theseus ``LinearSolver`` over :class:`BlockSparseLinearization` by sparse Cholesky
    factorization of the normal matrix, with CHOLMOD or MKL PARDISO.

    Supports Levenberg–Marquardt's scalar damping (``λI``, per batch element) — GTSAM's default
    damping; ellipsoidal damping (``λ diag(AᵀA)``) is not supported.

    Args:
        backend: ``"cholmod"``, ``"pardiso"`` or ``"auto"`` (PARDISO for dense-enough factors
            when MKL is installed; :func:`~posegraph.solve.symbolic.plan_factorization`).
            ``solver.backend`` holds the choice.
        mode: CHOLMOD's ``"supernodal"`` or ``"simplicial"`` factorization, or ``"auto"``
            (from the estimated fill); setting it chooses CHOLMOD under ``backend="auto"``.
            Both backends run in the block-graph order when there is one: ``solver.order``
            holds it, and ``solver.normal`` the ``AᵀA`` the solver assembles (PARDISO and
            CHOLMOD's supernodal factorizations).
        reuse_factor: when no gradient is being recorded, first try conjugate gradients
            preconditioned with the last factorization (:func:`lagged_factor_cg`) and
            refactor only when that does not converge quickly: near the optimum the normal
            matrix barely changes between iterations, and a CG iteration (two triangular
            solves) costs a small fraction of a factorization. Solutions agree with a fresh
            factorization to ``cg_tolerance`` (relative residual). Measured
            (docs/performance.md): saves 12–29% of an iteration (sphere2500 29%, intel 21%,
            smallGrid3D 12%; parking-garage within noise).
        cg_tolerance: the relative residual CG stops at (:func:`lagged_factor_cg`). A step
            ``δ`` with relative residual ``r`` changes the decrease the LM model predicts by
            about ``r²`` relative (the model's error is quadratic in ``δ``'s), so the default
            ``1e-6`` keeps it ~10⁻¹² exact, below Theseus' convergence tests (1e-10 by
            default). Measured on the shared datasets and a 10,000-pose SE2 graph: the same
            iterations and final errors to 12 digits as with fresh factorizations only, with
            4 CG iterations per attempt on sphere2500 instead of 7 at 1e-10.
        cg_max_iterations: the CG iterations an attempt with the last factor may take.
            ``None`` (default): as many as cost one factorization and its solve, measured
            while solving (:class:`SolveCosts`, at most :data:`CG_MAX_ITERATIONS`); no attempt
            is made while fewer than the last converged attempt needed fit in. With PARDISO on
            sphere2500 one factorization and its solve cost about 6 CG iterations: attempts
            needing 7 (at a tolerance of 1e-10) made the solves slower, those needing 4 (at
            1e-6) make them faster; CHOLMOD's factorizations of 2D graphs cost more (manhattan:
            ~14 CG iterations). An integer fixes the limit: every allowed attempt is made, the
            same on any machine.
        reuse_max_decrease: the last factor is tried only when the error ``½‖b‖²`` fell by
            less than this fraction since the last solve. A larger fall means the iterate
            moved far and the matrix changed with it: on the shared datasets and a
            10,000-pose SE2 graph, every attempt that converged followed a fall below 1e-4,
            and with 1e-2 attempts after falls between the two gave up after one or two CG
            iterations (1–2.5 ms each on parking-garage). At 1e-4 every attempt there
            converged, in 2–4 CG iterations. Measured (docs/performance.md): saves 7.7–17.5% of
            an iteration against trying after any fall (sphere2500 17.5%, parking-garage 14.3%).
    """

    def __init__(
        self,
        objective: th.Objective,
        linearization_cls: Optional[Type[Linearization]] = None,
        linearization_kwargs: Optional[dict] = None,
        damping: float = 0.0,
        mode: str = "auto",
        reuse_factor: bool = True,
        cg_tolerance: float = 1e-6,
        cg_max_iterations: Optional[int] = None,
        reuse_max_decrease: float = 1e-4,
        backend: str = "auto",
        **kwargs,
    ):
        super().__init__(objective, linearization_cls, linearization_kwargs, **kwargs)
        if mode not in CHOLMOD_MODES:
            raise ValueError(f"mode: expected one of {', '.join(CHOLMOD_MODES)}, received {mode!r}")
        plan = plan_factorization(self.linearization, mode, backend)
        factorization_cls = PardisoFactorization if plan.backend == "pardiso" else CholmodFactorization
        self.factorization: Union[CholmodFactorization, PardisoFactorization] = factorization_cls(
            self.linearization, plan
        )
        self.default_damping = damping
        self.reuse_factor = reuse_factor
        self.cg_tolerance = cg_tolerance
        self.cg_max_iterations = cg_max_iterations
        self.reuse_max_decrease = reuse_max_decrease
        self.stats = FactorStats(self.backend, self.mode)
        self.costs = SolveCosts()
        self._last_factors: Dict[int, Factor] = {}
        self._last_errors: Dict[int, float] = {}
        #: the problems of the last solve whose factorization failed: ``{index: message}``
        #: (their solutions are NaN; :meth:`solve_batch`)
        self.failures: Dict[int, str] = {}

    @property
    def backend(self) -> str:
        """``"cholmod"`` or ``"pardiso"``."""
        return self.factorization.backend

    @property
    def mode(self) -> str:
        """CHOLMOD's ``"supernodal"`` or ``"simplicial"`` (PARDISO's is supernodal)."""
        return self.factorization.mode

    @property
    def order(self) -> OrderedTranspose:
        """The elimination order of A's columns (and the permutation of vectors into it)."""
        return self.factorization.order

    @property
    def normal(self) -> Optional[NormalMatrix]:
        """``AᵀA`` as the solver assembles it, or ``None`` (CHOLMOD forms it from ``Aᵀ``)."""
        return self.factorization.normal

    def reset(self, **kwargs) -> None:
        """A new optimization: forget the last factors, errors and the counts (the measured
        costs stay: they belong to the problem's structure)."""
        super().reset(**kwargs)
        self._last_factors = {}
        self._last_errors = {}
        self.stats = FactorStats(self.backend, self.mode)

    def reuse_allowed(self, a_val: torch.Tensor, b: torch.Tensor) -> bool:
        """Lagged factors serve a solve only when no gradient flows through it (the backward
        pass needs this matrix's own factor)."""
        return self.reuse_factor and not records_gradient(a_val, b)

    def solve_batch(
        self,
        a_val: torch.Tensor,
        b: torch.Tensor,
        dampings: Sequence[float],
        exact: bool,
        atb: Optional[torch.Tensor] = None,
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, List[Factor]]:
        """:meth:`solve_one` for each batch element of A's values ``a_val`` ``(B, nnz)`` and
        ``b`` ``(B, rows)`` (right-hand sides ``Aᵀb``: ``atb`` ``(B, cols)``, or formed here):
        A's and b's values as float64 arrays, the solutions ``(B, cols)`` and the factors used.
        A problem whose system is not finite is not factored, and one whose factorization fails
        (not positive definite) is recorded in :attr:`failures`: either way its solution is NaN
        (and its factor None), so it fails alone in the solve loop while the others of its
        batch go on."""
        lin = self.linearization
        a_np, b_np = _float64_array(a_val), _float64_array(b)
        atb_np = None if atb is None else _float64_array(atb)
        x_np = np.empty((a_np.shape[0], lin.num_cols))
        factors: List[Factor] = []
        self.failures = {}
        for i in range(a_np.shape[0]):
            rhs = lin.product_matrices(a_np[i])[1] @ b_np[i] if atb_np is None else atb_np[i]
            x_np[i], factor = np.nan, None
            if np.isfinite(a_np[i]).all() and np.isfinite(rhs).all() and math.isfinite(dampings[i]):
                try:
                    x_np[i], factor = self.solve_one(i, a_np[i], b_np[i], rhs, dampings[i], exact)
                except RuntimeError as err:  # CHOLMOD's or PARDISO's refusal: this problem's alone
                    self.failures[i] = str(err)
            factors.append(factor)
        return a_np, b_np, x_np, factors

    def solve_one(
        self, index: int, a_values: np.ndarray, b_values: np.ndarray, rhs: np.ndarray, beta: float, exact: bool
    ) -> Tuple[np.ndarray, Factor]:
        """``(AᵀA + βI)⁻¹ rhs`` for batch element ``index`` (A's values ``a_values``, CSR
        order; ``b``'s ``b_values``) and the factor it used (the lagged one when CG converged
        with it, else a fresh one, which becomes the lagged one); ``rhs`` and the result in A's
        column order (CG runs there too: only the factor's solves are permuted)."""
        last = None if exact else self._last_factors.get(index)
        if not self._small_change(index, 0.5 * vector_dot(b_values, b_values)):
            last = None
        limit = None if last is None else self._cg_limit()
        if limit is not None:
            x = self._lagged_solve(last, a_values, rhs, beta, limit)
            if x is not None:
                return x, last
        last = None  # with the entry below, the lagged factor's last references: its memory
        self._last_factors.pop(index, None)  # can take the new factor
        start = time.perf_counter()
        factor = self.factorize(a_values, beta)
        x = self.order.solve(factor, rhs)
        self.costs.fresh_s = time.perf_counter() - start
        self.stats.factorizations += 1
        self._last_factors[index] = factor
        return x, factor

    def _cg_limit(self) -> Optional[int]:
        """The CG iterations an attempt with the last factor may take now: ``cg_max_iterations``
        when set, else :meth:`SolveCosts.budget` — or ``None`` when an attempt is not worth
        making (:meth:`SolveCosts.worth_trying`)."""
        if self.cg_max_iterations is not None:
            return self.cg_max_iterations
        return self.costs.budget() if self.costs.worth_trying() else None

    def _lagged_solve(
        self, last: Factor, a_values: np.ndarray, rhs: np.ndarray, beta: float, limit: int
    ) -> Optional[np.ndarray]:
        """:func:`lagged_factor_cg` with the lagged factor ``last`` and at most ``limit``
        iterations; records its costs and counts."""
        product = self.linearization.normal_product(a_values, beta)
        start = time.perf_counter()
        x, iterations = lagged_factor_cg(
            product, rhs, lambda r: self.order.solve(last, r), self.cg_tolerance, limit
        )
        self.costs.cg_iteration_s = (time.perf_counter() - start) / max(iterations, 1)
        self.stats.cg_iterations += iterations
        if x is not None:
            self.costs.needed = iterations
            self.stats.reused += 1
        return x

    def _small_change(self, index: int, error: float) -> bool:
        """Whether batch element ``index``'s error fell by at most ``reuse_max_decrease`` (as a
        fraction) since its last solve; records ``error`` for the next one."""
        previous = self._last_errors.get(index)
        self._last_errors[index] = error
        return previous is None or previous - error <= self.reuse_max_decrease * abs(previous)

    def factorize(self, a_values: np.ndarray, beta: float) -> Factor:
        """The backend's numeric factorization of ``AᵀA + βI`` in the solver's order, for A's
        values ``a_values`` (CSR order)."""
        return self.factorization.factorize(a_values, beta)

    def _solve(self, lam: torch.Tensor) -> torch.Tensor:
        lin = self.linearization
        self.failures = {}
        a_val, b = lin.A_val, lin.b
        if lin.num_cols == 0:  # every variable held fixed: nothing to factor (PARDISO refuses n = 0)
            return a_val.new_zeros(a_val.shape[0], 0)
        dampings = lam.detach().reshape(-1).tolist()  # (B|1, 1) → B
        if len(dampings) == 1:
            dampings = dampings * a_val.shape[0]
        if not records_gradient(a_val, b):
            # Nothing to differentiate: no autograd Function (measured: 3.0% of an iteration on
            # smallGrid3D, 2.3% on intel; docs/performance.md). The right-hand side is the
            # linearization's Aᵀb (formed once per linearization; LM's gain ratio uses it too).
            atb = lin.Atb[..., 0] if a_val.dtype == torch.float64 else None
            x = self.solve_batch(a_val, b, dampings, not self.reuse_allowed(a_val, b), atb)[2]
            return torch.from_numpy(x).to(dtype=a_val.dtype, device=a_val.device)
        return NormalSolve.apply(a_val, b, self, dampings, lin.detached_hessian)


class CholmodSolver(SparseCholeskySolver):
    """:class:`SparseCholeskySolver` that always factors with CHOLMOD."""

    def __init__(self, objective: th.Objective, *args, **kwargs):
        kwargs["backend"] = "cholmod"
        super().__init__(objective, *args, **kwargs)


class PardisoSolver(SparseCholeskySolver):
    """:class:`SparseCholeskySolver` that always factors with MKL PARDISO (needs the ``mkl``
    package and A's block structure)."""

    def __init__(self, objective: th.Objective, *args, **kwargs):
        kwargs["backend"] = "pardiso"
        super().__init__(objective, *args, **kwargs)
