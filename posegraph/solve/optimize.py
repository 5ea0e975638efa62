"""Optimizer choice and the solve loop shared by the CLI and scripts.

Gauss–Newton and Levenberg–Marquardt are Theseus' own optimizers, run over the
:class:`~posegraph.solve.linearization.BlockSparseLinearization` with the
:class:`~posegraph.solve.sparse_cholesky.SparseCholeskySolver` on CPU (CHOLMOD or MKL PARDISO;
or Theseus' dense Cholesky solver, ``linear_solver="dense"``, for small problems).
LM uses adaptive damping ``λI`` with step rejection (Theseus' rule, Nielsen/Gavin's ρ test),
as GTSAM's default LM damps with ``λI``.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

import theseus as th
import torch

from ..builder import PoseGraphProblem
from ..errors import OptimizationError, PoseGraphError
from .batched import BlockSparseSolver, ConjugateGradientSolver, DenseCholeskySolver, cuda_extensions_available
from .cholmod import CHOLMOD_MODES
from .linearization import BlockSparseLinearization
from .pardiso import pardiso_available
from .sparse_cholesky import CholmodSolver, FactorStats, PardisoSolver, SparseCholeskySolver, vector_dot

SOLVERS = ("gn", "lm")
LINEAR_SOLVERS = ("auto", "cholmod", "pardiso", "dense", "batched_dense", "cg", "lu_cuda", "baspacho")
#: What ``auto`` resolves to on CPU: :class:`SparseCholeskySolver` choosing its backend per
#: problem (reported as ``"cholmod"`` or ``"pardiso"``, see :func:`used_linear_solver`).
SPARSE_CHOLESKY = "sparse_cholesky"
_SPARSE_CHOLESKY_SOLVERS = {SPARSE_CHOLESKY: SparseCholeskySolver, "cholmod": CholmodSolver, "pardiso": PardisoSolver}
#: ``auto`` on an accelerator: dense Cholesky up to this many tangent columns, CG beyond.
DENSE_MAX_COLUMNS = 3000
#: On CPU the dense linear solvers refuse problems of more tangent columns than this (per
#: problem of a batch) unless ``SolverOptions.force_dense`` (``--force-dense``): their time
#: grows as the cube of the columns and their memory as the square, where sparse Cholesky
#: stays near linear on pose graphs. (On accelerators ``auto`` picks ``batched_dense`` only up
#: to :data:`DENSE_MAX_COLUMNS`, and an explicit choice is not limited.) Measured per LM iteration on a grid_se2 graph, one torch thread on the shared
#: 2-core CPU (load ~7, so noisy), ``dense`` / ``batched_dense``: 1497 columns 1.2 / 0.36 s,
#: 2097 columns 3.1 / 0.70 s, 2997 columns 8.3 / 1.7 s; a run of ~5–10 iterations at these
#: limits lasts about 10–20 s (intel, 5,184 columns, took 5.5 minutes with ``dense``).
DENSE_SOLVER_MAX_COLUMNS = {"dense": 2000, "batched_dense": 3000}
#: ``auto`` with Theseus' CUDA extension: its LU solver (dense per-cost Jacobians) up to this
#: many Jacobian entries per problem (rows × columns).
LU_CUDA_MAX_DENSE_ENTRIES = 2**24
#: With ``SolverOptions.threads=None`` the iterations run torch on one thread up to this many
#: residual rows (rows of A) on CPU. Below it each torch operation is too small for a second
#: thread to pay for waking it: measured per iteration, alternating in one process, one thread
#: against two: smallGrid3D −26%, intel −20%, manhattan −10%, parking-garage −8%, sphere2500
#: (30k rows) −2%; from 60k rows (10,000-pose SE2) on, two threads are as fast or faster.
SINGLE_THREAD_MAX_ROWS = 50_000


class ScalarOps:
    """The operations of LM's per-problem bookkeeping on one problem's values: NumPy float64
    scalars (IEEE arithmetic, as in arrays: a zero divisor gives ±inf or NaN), Python bools
    and ints, and one-dimensional rows. Each NumPy or torch call on a length-1 array costs
    1–3 µs, and the bookkeeping makes ~30 a step (on smallGrid3D ~0.1 ms of a 1.2 ms
    iteration); these cost ~0.1 µs. The namespace of :func:`_arrays` for one CPU problem."""

    abs = staticmethod(abs)
    isfinite = staticmethod(math.isfinite)

    @staticmethod
    def where(condition: Any, a: Any, b: Any) -> Any:
        return a if condition else b

    @staticmethod
    def clip(x: Any, low: float, high: float) -> Any:
        """``x`` within ``[low, high]``, of ``x``'s type (NaN stays NaN, as in ``np.clip``)."""
        if x < low:
            return type(x)(low)
        return type(x)(high) if x > high else x

    @staticmethod
    def logical_not(a: Any) -> bool:
        return not a

    @staticmethod
    def logical_and(a: Any, b: Any) -> bool:
        return bool(a) and bool(b)

    @staticmethod
    def logical_or(a: Any, b: Any) -> bool:
        return bool(a) or bool(b)


def _arrays(*tensors: torch.Tensor) -> Tuple[Any, List[Any]]:
    """The namespace LM's per-problem bookkeeping runs in, and ``tensors`` in it: for one
    problem on CPU (every tensor's first dimension 1), :class:`ScalarOps` with each tensor's
    only row (a scalar for ``(1,)``); for more on CPU, NumPy views (a NumPy operation costs
    ~1 µs, a torch one ~5 µs); else the tensors (detached)."""
    if all(t.device.type == "cpu" for t in tensors):
        arrays = [t.detach().numpy() if t.requires_grad else t.numpy() for t in tensors]
        if all(a.shape[0] == 1 for a in arrays):
            return ScalarOps, [a[0] for a in arrays]
        return np, arrays
    return torch, [t.detach() for t in tensors]


def _tensor(value: Any, like: torch.Tensor) -> torch.Tensor:
    """``value`` (from :func:`_arrays`' namespace) as a tensor on ``like``'s device (one
    problem's scalar as a ``(1,)`` tensor)."""
    if isinstance(value, torch.Tensor):
        return value.to(like.device)
    return torch.from_numpy(value if isinstance(value, np.ndarray) else np.asarray([value]))


def _quiet(xp: Any) -> Any:
    """NumPy's floating-point warnings off: a zero predicted decrease gives ``ρ = ±inf`` or
    NaN, which the rules handle (torch computes them silently)."""
    return contextlib.nullcontext() if xp is torch else np.errstate(all="ignore")


def count_rejections(xp: Any, reject: Any, count: Optional[Any], frozen: Optional[Any]) -> Any:
    """Consecutive rejected steps per problem after a step: ``count + 1`` where ``reject`` and
    the problem is not ``frozen``, else 0 (``count``: ``None`` before any step). Values of
    namespace ``xp`` (:func:`_arrays`), ``(B,)``."""
    if frozen is not None:
        reject = xp.logical_and(reject, xp.logical_not(frozen))
    return xp.where(reject, 1 if count is None else count + 1, 0)


def convergence_mask(
    xp: Any, err: Any, last_err: Any, rel_tol: float, abs_tol: float, rejections: Optional[Any], limit: int
) -> Any:
    """Theseus' convergence test per problem — the error, or its absolute or relative change,
    below the tolerances — except for problems whose last ``1 … limit − 1`` steps were
    rejected: they retry with more damping. Values of namespace ``xp`` (:func:`_arrays`), ``(B,)``."""
    change = xp.abs(last_err - err)
    small = xp.logical_or(xp.abs(err) < abs_tol, change < abs_tol)
    converged = xp.logical_or(small, xp.abs(change / last_err) < rel_tol)
    if rejections is not None:
        pending = xp.logical_and(rejections > 0, rejections < limit)
        converged = xp.logical_and(converged, xp.logical_not(pending))
    return converged


def predicted_decrease(xp: Any, delta: Any, damping: Any, atb: Any) -> Any:
    """LM's predicted decrease ``L(0) − L(δ) = ½ δᵀ(λδ + Aᵀb)`` per problem (Madsen, Nielsen
    & Tingleff 2004, "Methods for non-linear least squares problems", eq. 3.14), from the
    steps ``delta`` and ``Aᵀb`` ``(B, n)`` and the dampings ``(B,)`` — one problem's row and
    scalar under :class:`ScalarOps`."""
    if xp is ScalarOps:  # (not ndarray.dot: long ones go to BLAS's threads, see vector_dot)
        return delta.dtype.type(vector_dot(delta, damping * delta + atb) / 2)
    return (delta * (damping[:, None] * delta + atb)).sum(1) / 2


@dataclass(frozen=True)
class DampingRule:
    """LM's step test and damping schedule (GTSAM's defaults; :class:`LevenbergMarquardt`).

    A step is accepted when the gain ratio ``ρ = (F(x) − F(x+δ)) / (L(0) − L(δ))`` exceeds
    ``min_model_fidelity``, with the predicted decrease ``L(0) − L(δ) = ½ δᵀ(λδ + Aᵀb)``
    (:func:`predicted_decrease`); then ``λ /= lambda_factor``, else ``λ *= lambda_factor``,
    within ``bounds``.
    """

    min_model_fidelity: float = 1e-3
    lambda_factor: float = 10.0
    bounds: Tuple[float, float] = (0.0, 1e5)

    def update(
        self, xp: Any, delta: Any, damping: Any, atb: Any, new_err: Any, previous_err: Any, rel_tol: float, abs_tol: float
    ) -> Tuple[Any, Any]:
        """Whether each problem's step ``delta`` ``(B, n)`` is rejected, and the next damping,
        from the damping, ``Aᵀb`` ``(B, n)`` and the errors after and before the step (all
        ``(B,)``). A step whose predicted decrease is below the convergence tolerances
        (``rel_tol``, ``abs_tol``) is accepted: ρ is rounding noise there, so a converged
        problem stops instead of retrying, and Theseus' differentiated steps at the solution
        (truncated mode) take effect. Values of namespace ``xp`` (:func:`_arrays`)."""
        predicted = predicted_decrease(xp, delta, damping, atb)
        rho = (previous_err - new_err) / predicted
        reject = xp.logical_not(rho > self.min_model_fidelity)  # NaN/inf errors are rejected too
        negligible = xp.abs(predicted) <= rel_tol * xp.abs(previous_err) + abs_tol
        reject = xp.logical_and(reject, xp.logical_not(xp.logical_and(negligible, xp.isfinite(new_err))))
        scaled = xp.where(reject, damping * self.lambda_factor, damping / self.lambda_factor)
        return reject, xp.clip(scaled, *self.bounds)


class PerProblemConvergence:
    """Mixin for Theseus' nonlinear least-squares optimizers: decide convergence per problem
    of a batch, so a batched solve takes, for every problem, the steps it would take alone.

    Theseus 0.2.3 freezes problems once converged (``ignore_mask`` in its retraction), but
    (a) declares the whole batch converged when the batch *mean* error is below
    ``abs_err_tolerance``, and (b) counts a problem whose LM step was rejected as converged
    (its error did not change) — while alone, it would retry with more damping
    (``_MAX_ALL_REJECT_ATTEMPTS`` times). Here the absolute test is per problem and a
    rejected problem counts as converged only after that many rejections in a row
    (:func:`convergence_mask`). For a single problem both rules coincide with Theseus'.
    """

    _rejections: Optional[Any] = None  # consecutive rejections per problem (NumPy or torch)
    _frozen: Optional[torch.Tensor] = None
    _last_check: Optional[Tuple[Any, ...]] = None  # (err, last_err, rejections, result)

    def reset(self, **kwargs) -> None:
        super().reset(**kwargs)  # type: ignore[misc]
        self._rejections = None
        self._frozen = None
        self._last_check = None

    def _step(self, delta, previous_err, converged_indices, force_update, delta_forced_to_gn, **kwargs):
        self._frozen = None if force_update else converged_indices
        return super()._step(  # type: ignore[misc]
            delta, previous_err, converged_indices, force_update, delta_forced_to_gn, **kwargs
        )

    def _note_rejections(self, xp: Any, reject: Optional[Any]) -> None:
        """Count consecutive rejected steps per problem (``reject``: in namespace ``xp``;
        ``None``: no step test, the count is dropped)."""
        if reject is None:
            self._rejections = None
            return
        frozen = None if self._frozen is None else _arrays(self._frozen)[1][0]
        self._rejections = count_rejections(xp, reject, self._rejections, frozen)

    def _check_convergence(self, err: torch.Tensor, last_err: torch.Tensor) -> torch.Tensor:
        # (no autograd: the inputs are detached, _arrays)
        # Theseus asks twice per iteration with the same tensors (in _update_info and after it)
        last = self._last_check
        if last is not None and last[0] is err and last[1] is last_err and last[2] is self._rejections:
            return last[3]
        params = self.params  # type: ignore[attr-defined]
        xp, (err_a, last_a) = _arrays(err, last_err)
        with _quiet(xp):
            converged = convergence_mask(
                xp, err_a, last_a, params.rel_err_tolerance, params.abs_err_tolerance,
                self._rejections, self._MAX_ALL_REJECT_ATTEMPTS,  # type: ignore[attr-defined]
            )
        result = _tensor(converged, err)
        self._last_check = (err, last_err, self._rejections, result)
        return result


class GaussNewton(PerProblemConvergence, th.GaussNewton):
    """Theseus' Gauss–Newton with per-problem convergence (:class:`PerProblemConvergence`)."""


class LevenbergMarquardt(PerProblemConvergence, th.LevenbergMarquardt):
    """Theseus' LM with GTSAM's damping schedule (:class:`DampingRule`), for any of our linear
    solvers.

    Damping ``λI`` starts at ``1e-5``; a step is accepted when the gain ratio exceeds
    ``damping_rule.min_model_fidelity`` (GTSAM: 1e-3); then ``λ /= 10``, else ``λ *= 10``
    (GTSAM's ``lambdaFactor``, bounds ``[0, 1e5]``). Theseus' own rule floors λ at 1e-7, which
    stalls on graphs with very flat directions (parking-garage).
    """

    damping_rule = DampingRule()

    def __init__(self, objective: th.Objective, **kwargs):
        super().__init__(objective, **kwargs)
        if isinstance(self.linear_solver, BlockSparseSolver):
            self._allows_adaptive = True

    def reset(self, damping: float = 1e-5, adaptive_damping: bool = True, **kwargs) -> None:
        super().reset(damping=damping, adaptive_damping=adaptive_damping, **kwargs)

    def _complete_step(
        self,
        delta: torch.Tensor,
        new_err: torch.Tensor,
        previous_err: torch.Tensor,
        adaptive_damping: bool = True,
        **kwargs,
    ) -> Optional[torch.Tensor]:
        if not adaptive_damping:
            self._note_rejections(torch, None)
            return None
        lin = self.linear_solver.linearization
        xp, arrays = _arrays(delta, self._damping, lin.Atb[..., 0], new_err, previous_err)
        with _quiet(xp):
            reject, damping = self.damping_rule.update(
                xp, *arrays, self.params.rel_err_tolerance, self.params.abs_err_tolerance
            )
        self._damping = _tensor(damping, delta)
        self._note_rejections(xp, reject)
        return _tensor(reject, delta)


@dataclass
class SolverOptions:
    """How to optimize.

    Attributes:
        solver: ``"gn"`` (Gauss–Newton) or ``"lm"`` (Levenberg–Marquardt).
        max_iterations: iteration cap.
        rel_tolerance / abs_tolerance: stop when the error's relative / absolute decrease
            falls below these (Theseus' convergence test on ½ Σ eᵀΩe).
        linear_solver: ``"auto"`` (see :func:`resolve_linear_solver`), ``"cholmod"`` or
            ``"pardiso"`` (CPU sparse Cholesky with that backend; PARDISO needs the ``mkl``
            package), ``"dense"`` (Theseus' ``CholeskyDenseSolver`` + ``DenseLinearization``),
            ``"batched_dense"`` (our dense Cholesky from block-sparse A), ``"cg"`` (batched
            preconditioned conjugate gradients, any device), ``"lu_cuda"`` or ``"baspacho"``
            (Theseus' ``LUCudaSparseSolver`` / ``BaspachoSparseSolver``; need its compiled
            extensions, and form per-cost dense Jacobians: small graphs).
        damping: LM's initial λ.
        cholmod_mode: CHOLMOD's factorization, ``"auto"`` (from the estimated fill,
            :func:`~posegraph.solve.symbolic.choose_cholmod_mode`), ``"supernodal"`` or
            ``"simplicial"``; setting it makes ``"auto"`` factor with CHOLMOD.
        reuse_factor: let the sparse Cholesky solver serve a solve with the last factorization
            through preconditioned CG when that converges quickly (see
            :class:`~posegraph.solve.sparse_cholesky.SparseCholeskySolver`); ``False`` refactors
            every solve.
        cg_max_iterations: CG iterations an attempt with the last factor may take; ``None``
            (default): as many as cost one factorization, measured while solving (at most
            10; see the solver). An integer makes every run take the same path on any machine.
        force_dense: let ``"dense"`` and ``"batched_dense"`` run on problems beyond
            :data:`DENSE_SOLVER_MAX_COLUMNS` tangent columns (refused otherwise, with the size
            and the alternative; ``posegraph optimize --force-dense``).
        threads: torch intra-op threads while optimizing, setup included (restored
            afterwards). ``None``: the setup — and with it PARDISO's analysis, whose thread
            count its factorizations keep — runs on torch's setting, and the iterations run
            torch on one thread on CPU problems of at most :data:`SINGLE_THREAD_MAX_ROWS`
            residual rows (their per-edge tensors are too small for a second thread), else on
            torch's setting. ``threads=1`` keeps everything on one core (shared machines).
    """

    solver: str = "lm"
    max_iterations: int = 100
    rel_tolerance: float = 1e-10
    abs_tolerance: float = 1e-10
    linear_solver: str = "auto"
    damping: float = 1e-5
    cholmod_mode: str = "auto"
    reuse_factor: bool = True
    cg_max_iterations: Optional[int] = None
    threads: Optional[int] = None
    force_dense: bool = False

    def validate(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"solver: expected one of {', '.join(SOLVERS)}, received {self.solver!r}")
        if self.linear_solver not in LINEAR_SOLVERS:
            raise ValueError(
                f"linear_solver: expected one of {', '.join(LINEAR_SOLVERS)}, received {self.linear_solver!r}"
            )
        if self.linear_solver == "pardiso" and not pardiso_available():
            raise ValueError(
                "linear_solver: 'pardiso' needs MKL PARDISO, which is not installed "
                "(pip install mkl, or set POSEGRAPH_MKL_RT to libmkl_rt)"
            )
        if self.cholmod_mode not in CHOLMOD_MODES:
            raise ValueError(
                f"cholmod_mode: expected one of {', '.join(CHOLMOD_MODES)}, received {self.cholmod_mode!r}"
            )
        if self.max_iterations < 0:
            raise ValueError(f"max_iterations: expected ≥ 0, received {self.max_iterations}")
        if self.cg_max_iterations is not None and self.cg_max_iterations < 1:
            raise ValueError(f"cg_max_iterations: expected ≥ 1 or None, received {self.cg_max_iterations}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads: expected ≥ 1 or None, received {self.threads}")


@dataclass
class IterationRecord:
    iteration: int
    error: float  # ½ Σ eᵀΩe, batch mean
    elapsed_s: float


@dataclass
class SolveResult:
    """What a solve did. Errors are GTSAM's ½ Σ eᵀΩe, per batch element."""

    status: List[str]
    iterations: int
    initial_error: torch.Tensor
    final_error: torch.Tensor
    solver: str
    linear_solver: str
    device: str
    time_s: float
    history: List[IterationRecord] = field(default_factory=list)
    info: Optional[th.NonlinearOptimizerInfo] = None
    factor_stats: Optional[FactorStats] = None  # sparse Cholesky: factorizations, reused factors

    @property
    def converged(self) -> bool:
        return all(s == "converged" for s in self.status)


IterationHook = Callable[[IterationRecord], None]


def _status_name(status) -> str:
    return {
        th.NonlinearOptimizerStatus.CONVERGED: "converged",
        th.NonlinearOptimizerStatus.MAX_ITERATIONS: "max-iterations",
        th.NonlinearOptimizerStatus.FAIL: "failed",
        th.NonlinearOptimizerStatus.START: "max-iterations",
    }[status]


def mark_failed(status: List[str], final_error: torch.Tensor) -> List[str]:
    """``status`` with ``"failed"`` for every problem whose final error is not finite."""
    finite = torch.isfinite(final_error).cpu().tolist()
    return [s if ok else "failed" for s, ok in zip(status, finite)]


def resolve_linear_solver(
    name: str, device: torch.device, num_columns: int = 0, num_rows: int = 0
) -> str:
    """The linear solver ``name`` stands for on ``device`` for a problem of that size.

    ``auto``: ``sparse_cholesky`` on CPU (:class:`SparseCholeskySolver`, which picks CHOLMOD or
    PARDISO per problem); on an accelerator, Theseus' ``lu_cuda`` when its CUDA
    extension is importable and the per-cost dense Jacobians it needs stay under
    ``LU_CUDA_MAX_DENSE_ENTRIES``, else ``batched_dense`` up to ``DENSE_MAX_COLUMNS`` tangent
    columns and ``cg`` beyond. Other names are returned unchanged.
    """
    if name != "auto":
        return name
    if torch.device(device).type == "cpu":
        return SPARSE_CHOLESKY
    if cuda_extensions_available() and num_rows * num_columns <= LU_CUDA_MAX_DENSE_ENTRIES:
        return "lu_cuda"
    return "batched_dense" if num_columns <= DENSE_MAX_COLUMNS else "cg"


def _linear_solver_kwargs(linear: str, options: Optional["SolverOptions"] = None) -> Dict:
    """Theseus optimizer kwargs selecting linear solver ``linear`` (a resolved name), with
    ``options``' sparse Cholesky settings."""
    if linear == "dense":
        return dict(linear_solver_cls=th.CholeskyDenseSolver, linearization_cls=th.DenseLinearization)
    if linear in ("lu_cuda", "baspacho"):  # Theseus' compiled solvers, over its own linearization
        cls = th.LUCudaSparseSolver if linear == "lu_cuda" else th.BaspachoSparseSolver
        return dict(linear_solver_cls=cls, linearization_cls=th.SparseLinearization)
    cls = {**_SPARSE_CHOLESKY_SOLVERS, "batched_dense": DenseCholeskySolver, "cg": ConjugateGradientSolver}[linear]
    kwargs: Dict = dict(linear_solver_cls=cls, linearization_cls=BlockSparseLinearization)
    if linear in _SPARSE_CHOLESKY_SOLVERS and options is not None:
        kwargs["linear_solver_kwargs"] = dict(
            mode=options.cholmod_mode, reuse_factor=options.reuse_factor, cg_max_iterations=options.cg_max_iterations
        )
    return kwargs


def problem_linear_solver(problem: PoseGraphProblem, options: "SolverOptions") -> str:
    """The resolved linear solver for ``problem`` under ``options``."""
    poses = problem.poses
    return resolve_linear_solver(
        options.linear_solver, poses.tensor.device, poses.dof(), problem.objective.dim()
    )


def used_linear_solver(optimizer: th.NonlinearOptimizer, resolved: str) -> str:
    """The linear solver ``optimizer`` runs: for a sparse Cholesky solver its backend
    (``"cholmod"`` or ``"pardiso"``), else ``resolved`` (:func:`resolve_linear_solver`)."""
    solver = getattr(optimizer, "linear_solver", None)
    return solver.backend if isinstance(solver, SparseCholeskySolver) else resolved


def tangent_columns(problem: PoseGraphProblem) -> int:
    """Tangent columns of ``problem`` (free poses and points): the unknowns of its linear solves."""
    return sum(var.dof() for var in problem.objective.optim_vars.values())


def check_dense_size(problem: PoseGraphProblem, linear: str, force: bool = False) -> None:
    """Refuse a dense linear solver (``linear``, resolved) on a CPU problem beyond
    :data:`DENSE_SOLVER_MAX_COLUMNS` tangent columns, unless ``force``.

    Raises:
        PoseGraphError: naming the problem's file, its size, the limit and the alternatives.
    """
    limit = DENSE_SOLVER_MAX_COLUMNS.get(linear)
    columns = tangent_columns(problem)
    if force or limit is None or problem.poses.tensor.device.type != "cpu" or columns <= limit:
        return
    graph = getattr(problem, "graph", None)
    raise PoseGraphError(
        f"linear solver {linear!r}: {columns} tangent columns exceed its limit of {limit} "
        "(dense Cholesky time grows as the cube of the columns); use a sparse solver "
        "(--linear-solver auto, cholmod or pardiso), or force it with --force-dense "
        "(SolverOptions.force_dense)",
        getattr(graph, "source", None),
    )


def make_optimizer(problem: PoseGraphProblem, options: SolverOptions) -> th.NonlinearOptimizer:
    """Build the Theseus optimizer for ``problem``.

    Raises:
        PoseGraphError: a dense linear solver on a problem beyond its size limit
            (:func:`check_dense_size`).
    """
    options.validate()
    linear = problem_linear_solver(problem, options)
    check_dense_size(problem, linear, options.force_dense)
    kwargs: Dict = dict(
        max_iterations=max(options.max_iterations, 1),
        rel_err_tolerance=options.rel_tolerance,
        abs_err_tolerance=options.abs_tolerance,
    )
    kwargs.update(_linear_solver_kwargs(linear, options))
    cls = LevenbergMarquardt if options.solver == "lm" else GaussNewton
    with warnings.catch_warnings():  # vectorization is ours (packed costs), not Theseus'
        warnings.filterwarnings("ignore", message="Vectorization is off by default")
        return cls(problem.objective, **kwargs)


def run_kwargs(options: SolverOptions, **theseus_kwargs) -> Dict:
    """Keyword arguments for ``optimizer.optimize`` under ``options`` (LM: adaptive damping
    from ``options.damping``), plus ``theseus_kwargs``."""
    kwargs = dict(theseus_kwargs)
    if options.solver == "lm":
        kwargs.setdefault("adaptive_damping", True)
        kwargs.setdefault("damping", options.damping)
    return kwargs


def optimize(
    problem: PoseGraphProblem,
    options: Optional[SolverOptions] = None,
    on_iteration: Optional[IterationHook] = None,
    end_iter_callback: Optional[Callable] = None,
    optimizer: Optional[th.NonlinearOptimizer] = None,
    **theseus_kwargs,
) -> SolveResult:
    """Optimize ``problem`` in place (its pose variable holds the result) and report.

    Args:
        on_iteration: called after each accepted iteration with an :class:`IterationRecord`.
        end_iter_callback: a Theseus ``end_iter_callback(optimizer, info, delta, it)``
            (e.g. :class:`posegraph.debug.DebugCallback`), called as well.
        theseus_kwargs: passed to ``optimizer.optimize`` (e.g. ``backward_mode``).
    """
    options = options or SolverOptions()
    options.validate()
    with _torch_threads(options.threads):
        optimizer = optimizer or make_optimizer(problem, options)
        with _torch_threads(iteration_threads(problem, options)):
            return _optimize(problem, options, on_iteration, end_iter_callback, optimizer, theseus_kwargs)


def iteration_threads(problem: PoseGraphProblem, options: SolverOptions) -> Optional[int]:
    """torch threads for the iterations beyond ``options.threads`` (``None``: no change): one
    for CPU problems of at most :data:`SINGLE_THREAD_MAX_ROWS` rows when ``options.threads``
    is ``None``."""
    if options.threads is not None or problem.poses.tensor.device.type != "cpu":
        return None
    return 1 if problem.objective.dim() <= SINGLE_THREAD_MAX_ROWS else None


@contextlib.contextmanager
def _torch_threads(threads: Optional[int]) -> Iterator[None]:
    """Run with ``threads`` torch intra-op threads (``None``: unchanged), then restore."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _optimize(
    problem: PoseGraphProblem,
    options: SolverOptions,
    on_iteration: Optional[IterationHook],
    end_iter_callback: Optional[Callable],
    opt: th.NonlinearOptimizer,
    theseus_kwargs: Dict,
) -> SolveResult:
    linear = used_linear_solver(opt, problem_linear_solver(problem, options))
    start = time.perf_counter()
    with torch.no_grad():
        initial = problem.error().detach().clone()
    history = [IterationRecord(0, float(initial.mean()), 0.0)]

    def callback(optim, info, delta, it):
        err = info.last_err
        rec = IterationRecord(it + 1, err.item() if err.numel() == 1 else float(err.mean()), time.perf_counter() - start)
        history.append(rec)
        if on_iteration is not None:
            on_iteration(rec)
        if end_iter_callback is not None:
            end_iter_callback(optim, info, delta, it)

    if on_iteration is not None:
        on_iteration(history[0])
    kwargs = run_kwargs(options, **theseus_kwargs)
    if options.max_iterations == 0:
        info = None
        status = ["max-iterations"] * int(initial.numel())
        iterations = 0
    else:
        info = opt.optimize(end_iter_callback=callback, **kwargs)
        status = [_status_name(s) for s in info.status]
        iterations = _iterations_done(status, len(history) - 1)
    final = problem.error().detach().clone()
    if len(history) - 1 < iterations:  # Theseus does not call back on the converging step
        history.append(IterationRecord(iterations, float(final.mean()), time.perf_counter() - start))
        if on_iteration is not None:
            on_iteration(history[-1])
    status = mark_failed(status, final)
    problem.write_back()
    return SolveResult(
        status=status,
        iterations=iterations,
        initial_error=initial,
        final_error=final,
        solver=options.solver,
        linear_solver=linear,
        device=str(problem.poses.tensor.device),
        time_s=time.perf_counter() - start,
        history=history,
        info=info,
        factor_stats=getattr(opt.linear_solver, "stats", None),
    )


def _iterations_done(status: List[str], callbacks: int) -> int:
    """Theseus calls back after every iteration except the one that converges."""
    return callbacks + (1 if status and all(x == "converged" for x in status) else 0)


__all__ = [
    "SolverOptions",
    "SolveResult",
    "IterationRecord",
    "optimize",
    "make_optimizer",
    "LevenbergMarquardt",
    "GaussNewton",
    "PerProblemConvergence",
    "DampingRule",
    "convergence_mask",
    "count_rejections",
    "predicted_decrease",
    "ScalarOps",
    "resolve_linear_solver",
    "check_dense_size",
    "tangent_columns",
    "DENSE_SOLVER_MAX_COLUMNS",
    "OptimizationError",
]
