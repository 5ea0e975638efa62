"""Optimizer choice and the solve loop shared by the CLI and scripts.

Gauss–Newton and Levenberg–Marquardt are Theseus' own optimizers, run over the
:class:`~posegraph.solve.linearization.BlockSparseLinearization` with the
:class:`~posegraph.solve.sparse_cholesky.SparseCholeskySolver` on CPU (CHOLMOD or MKL PARDISO;
or Theseus' dense Cholesky solver, ``linear_solver="dense"``, for small problems).
LM uses adaptive damping ``λI`` with GTSAM's schedule, retrying rejected steps within the
iteration; the loop and its statuses are :mod:`posegraph.solve.nonlinear`'s.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional

import theseus as th
import torch

from posegraph.model.problem import PoseGraphProblem
from posegraph.errors import OptimizationError, PoseGraphError, check_integer, check_real
from posegraph.solve.batched import (
    ConjugateGradientSolver,
    DenseCholeskySolver,
    cuda_extensions_available,
    theseus_solver_unavailable,
)
from posegraph.solve.cholmod import CHOLMOD_MODES
from posegraph.solve.linearization import BlockSparseLinearization
from posegraph.solve.mkl import pardiso_available
from posegraph.solve.nonlinear import (
    CRITERIA,
    STATUSES,
    DampingRule,
    GaussNewton,
    LevenbergMarquardt,
    Outcome,
    ScalarOps,
    TruthfulLoop,
    decrease_criterion,
    predicted_decrease,
)
from posegraph.solve.sparse_cholesky import CholmodSolver, FactorStats, PardisoSolver, SparseCholeskySolver

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
#: residual rows (rows of A) on CPU: below it each torch operation is too small for a second
#: thread to pay for waking it, and beside other work the second thread waits for a core.
#: Measured per iteration against torch's two threads (docs/performance.md): beside one
#: CPU-bound process one thread saves parking-garage 6.2%, smallGrid3D 5.9%, sphere2500 4.2%;
#: on an idle machine no measurable difference. From 60k rows (10,000-pose SE2) on, two
#: threads were as fast or faster.
SINGLE_THREAD_MAX_ROWS = 50_000


@dataclass
class SolverOptions:
    """How to optimize.

    Attributes:
        solver: ``"gn"`` (Gauss–Newton) or ``"lm"`` (Levenberg–Marquardt).
        max_iterations: iteration cap.
        rel_tolerance / abs_tolerance: stop when the error's relative / absolute decrease
            after an accepted step falls below these, or the error below ``abs_tolerance``
            (on ½ Σ eᵀΩe; :mod:`posegraph.solve.nonlinear`).
        gradient_tolerance: stop when ``‖Aᵀb‖∞`` is at most this before a step (0: off).
        step_tolerance: stop when an accepted step's ``‖δ‖∞`` is at most this (0: off).
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
    gradient_tolerance: float = 0.0
    step_tolerance: float = 0.0
    linear_solver: str = "auto"
    damping: float = 1e-5
    cholmod_mode: str = "auto"
    reuse_factor: bool = True
    cg_max_iterations: Optional[int] = None
    threads: Optional[int] = None
    force_dense: bool = False

    def validate(self) -> None:
        """Raise ``ValueError`` for an option out of range or of the wrong type (integer
        options must be integers, not floats, strings or bools); a
        :class:`~posegraph.errors.PoseGraphError` (a ``ValueError``) for the numeric options and
        for a linear solver this machine lacks, with the reason."""
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
        missing = theseus_solver_unavailable(self.linear_solver)
        if missing is not None:
            raise PoseGraphError(f"linear_solver: {self.linear_solver!r} is not available on this machine: {missing}")
        if self.cholmod_mode not in CHOLMOD_MODES:
            raise ValueError(
                f"cholmod_mode: expected one of {', '.join(CHOLMOD_MODES)}, received {self.cholmod_mode!r}"
            )
        for name in ("rel_tolerance", "abs_tolerance", "gradient_tolerance", "step_tolerance", "damping"):
            value = check_real(name, getattr(self, name))
            if not (value >= 0 and value < float("inf")):
                raise PoseGraphError(f"{name}: expected a finite number ≥ 0, received {value!r}")
        check_integer("max_iterations", self.max_iterations, 0)
        check_integer("cg_max_iterations", self.cg_max_iterations, 1, allow_none=True)
        check_integer("threads", self.threads, 1, allow_none=True)


@dataclass
class IterationRecord:
    iteration: int
    error: float  # ½ Σ eᵀΩe, batch mean
    elapsed_s: float


@dataclass
class SolveResult:
    """What a solve did. Errors are GTSAM's ½ Σ eᵀΩe, per batch element.

    Attributes:
        status: per problem, one of :data:`~posegraph.solve.nonlinear.STATUSES`.
        stop_reason: per problem, why it stopped: the convergence criterion
            (:data:`~posegraph.solve.nonlinear.CRITERIA`), ``max-iterations``,
            ``damping-limit`` (stalled), ``non-finite-error``, ``non-finite-step`` or
            ``linear-solver-error`` (failed; ``detail`` has the solver's message).
        iterations: iterations taken (the most of any problem); ``problem_iterations`` per problem.
    """

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
    stop_reason: List[str] = field(default_factory=list)
    problem_iterations: List[int] = field(default_factory=list)
    detail: str = ""

    @property
    def converged(self) -> bool:
        """Whether every problem of the batch converged."""
        return all(s == "converged" for s in self.status)


IterationHook = Callable[[IterationRecord], None]


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
        optimizer = cls(problem.objective, **kwargs)
    optimizer.gradient_tolerance = options.gradient_tolerance
    optimizer.step_tolerance = options.step_tolerance
    return optimizer


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
            (e.g. :class:`posegraph.debug.DebugCallback`), called as well. When it has a
            ``check_initial(objective)`` method and has recorded nothing yet, that is called
            first, so a non-finite start is named at iteration 0.
        theseus_kwargs: passed to ``optimizer.optimize`` (e.g. ``backward_mode``).
    """
    if not isinstance(problem, PoseGraphProblem):
        raise PoseGraphError(
            f"optimize: problem: expected a PoseGraphProblem (posegraph.build_problem or "
            f"PoseGraphBuilder.build), received {type(problem).__name__}"
        )
    options = options or SolverOptions()
    options.validate()
    with _torch_threads(options.threads):
        optimizer = optimizer or make_optimizer(problem, options)
        with _torch_threads(iteration_threads(problem, options)):
            return _optimize(problem, options, on_iteration, end_iter_callback, optimizer, theseus_kwargs)


def iteration_threads(problem: PoseGraphProblem, options: SolverOptions) -> Optional[int]:
    """torch threads for the iterations beyond ``options.threads`` (``None``: no change): one
    for CPU problems of at most :data:`SINGLE_THREAD_MAX_ROWS` rows when ``options.threads``
    is ``None``.

    Measured (docs/performance.md, 'What each speed mechanism pays'): beside one CPU-bound process
    one thread saves 4.2–6.2% of an iteration (parking-garage 6.2%, smallGrid3D 5.9%); on an idle
    machine no measurable gain.
    """
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
    check_initial = getattr(end_iter_callback, "check_initial", None)
    if callable(check_initial) and not getattr(end_iter_callback, "records", None):
        check_initial(problem.objective)  # a debugging callback sees iteration 0 (the start) too
    kwargs = run_kwargs(options, **theseus_kwargs)
    if options.max_iterations == 0:
        info, outcome = None, Outcome(int(initial.numel()))
        outcome.stop(~torch.isfinite(initial).cpu().numpy(), "failed", "non-finite-error")
        outcome.finish()
    else:
        info = opt.optimize(end_iter_callback=callback, **kwargs)
        outcome = opt.outcome
    final = problem.error().detach().clone()
    problem.write_back()
    if hasattr(end_iter_callback, "record_outcome"):  # e.g. DebugCallback: the trace says it too
        end_iter_callback.record_outcome(outcome.status, outcome.stop_reason)
    return SolveResult(
        status=list(outcome.status),
        stop_reason=list(outcome.stop_reason),
        iterations=int(outcome.iterations.max(initial=0)),
        problem_iterations=outcome.iterations.tolist(),
        detail=outcome.detail,
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


__all__ = [
    "SolverOptions",
    "SolveResult",
    "IterationRecord",
    "optimize",
    "make_optimizer",
    "LevenbergMarquardt",
    "GaussNewton",
    "TruthfulLoop",
    "Outcome",
    "STATUSES",
    "CRITERIA",
    "DampingRule",
    "decrease_criterion",
    "predicted_decrease",
    "ScalarOps",
    "resolve_linear_solver",
    "check_dense_size",
    "tangent_columns",
    "DENSE_SOLVER_MAX_COLUMNS",
    "OptimizationError",
]
