"""Optimizer choice and the solve loop shared by the CLI and scripts.

Gauss–Newton and Levenberg–Marquardt are Theseus' own optimizers, run over the
:class:`~posegraph.solve.linearization.BlockSparseLinearization` with the
:class:`~posegraph.solve.cholmod.CholmodSolver` on CPU (or Theseus' dense Cholesky solver,
``linear_solver="dense"``, for small problems and devices without CHOLMOD).
LM uses adaptive damping ``λI`` with step rejection (Theseus' rule, Nielsen/Gavin's ρ test),
as GTSAM's default LM damps with ``λI``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional

import theseus as th
import torch

from ..builder import PoseGraphProblem
from ..errors import OptimizationError
from .cholmod import CholmodSolver
from .linearization import BlockSparseLinearization

SOLVERS = ("gn", "lm")
LINEAR_SOLVERS = ("auto", "cholmod", "dense")


class LevenbergMarquardt(th.LevenbergMarquardt):
    """Theseus' LM with GTSAM's damping schedule, for any of our linear solvers.

    Damping ``λI`` starts at ``1e-5``; a step is accepted when the gain ratio
    ``ρ = (F(x) − F(x+δ)) / (L(0) − L(δ))`` exceeds ``min_model_fidelity`` (GTSAM: 1e-3), with
    the predicted decrease ``L(0) − L(δ) = ½ δᵀ(λδ + Aᵀb)`` (Madsen, Nielsen & Tingleff 2004,
    "Methods for non-linear least squares problems", eq. 3.14); then ``λ /= 10``, else
    ``λ *= 10`` (GTSAM's ``lambdaFactor``, bounds ``[0, 1e5]``). Theseus' own rule floors λ at
    1e-7, which stalls on graphs with very flat directions (parking-garage).
    """

    min_model_fidelity = 1e-3
    lambda_factor = 10.0
    lambda_bounds = (0.0, 1e5)

    def __init__(self, objective: th.Objective, **kwargs):
        super().__init__(objective, **kwargs)
        if isinstance(self.linear_solver, CholmodSolver):
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
            return None
        with torch.no_grad():
            lin = self.linear_solver.linearization
            lam = self._damping.view(-1, 1)
            predicted = (delta * (lam * delta + lin.Atb.squeeze(2))).sum(dim=1) / 2
            rho = (previous_err - new_err) / predicted
            reject = ~(rho > self.min_model_fidelity)  # NaN/inf errors are rejected too
            scaled = torch.where(
                reject, self._damping * self.lambda_factor, self._damping / self.lambda_factor
            )
            self._damping = scaled.clamp(*self.lambda_bounds)
        return reject


@dataclass
class SolverOptions:
    """How to optimize.

    Attributes:
        solver: ``"gn"`` (Gauss–Newton) or ``"lm"`` (Levenberg–Marquardt).
        max_iterations: iteration cap.
        rel_tolerance / abs_tolerance: stop when the error's relative / absolute decrease
            falls below these (Theseus' convergence test on ½ Σ eᵀΩe).
        linear_solver: ``"auto"`` (CHOLMOD on CPU, dense Cholesky elsewhere), ``"cholmod"``
            or ``"dense"``.
        damping: LM's initial λ.
        threads: torch intra-op threads while optimizing (restored afterwards); ``None``
            leaves torch's setting alone. The per-edge tensors are small (~10⁵ values), so
            threads gain little on an idle machine and can stall every operation when the
            cores are shared with other jobs: ``threads=1`` is the robust choice there.
    """

    solver: str = "lm"
    max_iterations: int = 100
    rel_tolerance: float = 1e-10
    abs_tolerance: float = 1e-10
    linear_solver: str = "auto"
    damping: float = 1e-5
    threads: Optional[int] = None

    def validate(self) -> None:
        if self.solver not in SOLVERS:
            raise ValueError(f"solver: expected one of {', '.join(SOLVERS)}, received {self.solver!r}")
        if self.linear_solver not in LINEAR_SOLVERS:
            raise ValueError(
                f"linear_solver: expected one of {', '.join(LINEAR_SOLVERS)}, received {self.linear_solver!r}"
            )
        if self.max_iterations < 0:
            raise ValueError(f"max_iterations: expected ≥ 0, received {self.max_iterations}")
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


def resolve_linear_solver(name: str, device: torch.device) -> str:
    """``auto`` → ``cholmod`` on CPU, ``dense`` elsewhere."""
    if name == "auto":
        return "cholmod" if device.type == "cpu" else "dense"
    return name


def make_optimizer(problem: PoseGraphProblem, options: SolverOptions) -> th.NonlinearOptimizer:
    """Build the Theseus optimizer for ``problem``."""
    options.validate()
    device = problem.poses.tensor.device
    linear = resolve_linear_solver(options.linear_solver, device)
    kwargs: Dict = dict(
        max_iterations=max(options.max_iterations, 1),
        rel_err_tolerance=options.rel_tolerance,
        abs_err_tolerance=options.abs_tolerance,
    )
    if linear == "cholmod":
        kwargs.update(linear_solver_cls=CholmodSolver, linearization_cls=BlockSparseLinearization)
    else:
        kwargs.update(linear_solver_cls=th.CholeskyDenseSolver, linearization_cls=th.DenseLinearization)
    cls = LevenbergMarquardt if options.solver == "lm" else th.GaussNewton
    return cls(problem.objective, **kwargs)


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
        return _optimize(problem, options, on_iteration, end_iter_callback, optimizer, theseus_kwargs)


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
    optimizer: Optional[th.NonlinearOptimizer],
    theseus_kwargs: Dict,
) -> SolveResult:
    opt = optimizer or make_optimizer(problem, options)
    linear = resolve_linear_solver(options.linear_solver, problem.poses.tensor.device)
    start = time.perf_counter()
    with torch.no_grad():
        initial = problem.error().detach().clone()
    history = [IterationRecord(0, float(initial.mean()), 0.0)]

    def callback(optim, info, delta, it):
        rec = IterationRecord(it + 1, float(info.last_err.mean()), time.perf_counter() - start)
        history.append(rec)
        if on_iteration is not None:
            on_iteration(rec)
        if end_iter_callback is not None:
            end_iter_callback(optim, info, delta, it)

    if on_iteration is not None:
        on_iteration(history[0])
    kwargs = dict(theseus_kwargs)
    if options.solver == "lm":
        kwargs.setdefault("adaptive_damping", True)
        kwargs.setdefault("damping", options.damping)
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
    if not torch.isfinite(final).all():
        status = ["failed" if not torch.isfinite(f) else s for f, s in zip(final, status)]
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
    "OptimizationError",
]
