"""Outlier rejection by graduated non-convexity (GNC) with the truncated-least-squares cost.

Truncated least squares (TLS) gives each edge the cost ``min(rᵢ², C²)``, where
``rᵢ² = eᵢᵀ Ωᵢ eᵢ = ‖Wᵢ eᵢ‖²`` is the edge's whitened squared residual: an edge whose residual
lies within ``C`` whitened standard deviations (``rᵢ ≤ C``, i.e. ``rᵢ² ≤ C²``) is an inlier and
costs what it does in least squares; any other edge costs the constant ``C²`` and so pulls on
nothing — an outlier. That cost has many local minima. Graduated non-convexity (Yang,
Antonante, Tzoumas, Carlone, "Graduated Non-Convexity for Robust Spatial Perception: From
Non-Minimal Solvers to Global Outlier Rejection", RA-L 5(2), 2020; GTSAM's ``GncOptimizer``
implements it) minimizes a sequence of surrogates ``ρ_μ`` that start convex (``μ → 0``) and
tend to TLS (``μ → ∞``), each by weighted least squares with per-edge weights ``wᵢ ∈ [0, 1]``
(Black–Rangarajan duality):

1. Residuals ``rᵢ²`` at the given poses. (The paper's Algorithm 1 and GTSAM start from the
   least-squares solution with every weight 1 instead. With false loop closures that solution
   is itself wrong and slow to reach: on sphere2500 with 10% false loop closures LM stops at
   its 100-iteration cap 49 m (ATE) from the clean optimum, while the file's vertices separate
   inliers from outliers well enough for GNC to reject exactly the false ones.)
2. ``μ₀ = C² / (2 r²_max − C²)`` (the paper's Remark 5, ``r²_max`` the largest residual of the
   edges whose weights GNC updates; at least 1e-6, GTSAM's floor); when ``r²_max ≤ C²/2``
   every edge is already an inlier and GNC stops.
3. Repeat: weights from the residuals at the current poses by TLS's closed form (the paper's
   eq. 14)::

       wᵢ = 1                              if rᵢ² ≤ μ/(μ+1) · C²
       wᵢ = C/rᵢ · √(μ(μ+1)) − μ           if μ/(μ+1) · C² < rᵢ² < (μ+1)/μ · C²
       wᵢ = 0                              if rᵢ² ≥ (μ+1)/μ · C²

   then solve the least squares whose edge ``i`` has information ``wᵢ Ωᵢ`` (warm-started from
   the previous poses, with :func:`~posegraph.solve.optimize.optimize`, to a relative error
   decrease of ``inner_tolerance``, GTSAM's LM default 1e-5); stop when every weight is
   within ``weights_tolerance`` of 0 or 1, or when the weighted cost ``½ Σ wᵢ rᵢ²`` changed by
   less than ``cost_tolerance`` relative to the previous one, or after ``max_iterations``
   outer iterations; else ``μ ← 1.4 μ`` (GTSAM's ``muStep``).
4. Solve once more with the last weights to the caller's tolerances.

The stopping rules and their defaults (``weightsTol`` 1e-4, ``relativeCostTol`` 1e-5,
``maxIterations`` 100) are GTSAM's. An edge is reported as an outlier when its final weight is
below ½. With ``edges="loop-closures"`` only loop closures (vertex ids not consecutive, as
:func:`~posegraph.graph.loop_closure_mask`) are judged; odometry edges are known inliers with
weight 1 throughout (GTSAM's ``knownInliers``).

``C`` defaults to ``√χ²_d(p)``, the ``p = 0.99`` quantile of the χ² distribution with ``d``
degrees of freedom (6 for SE3, 3 for SE2): a correctly modelled inlier lies within it with
probability 0.99. (GTSAM's ``barcSq`` is the same bound on its factor error ``½ r²``:
``barcSq = C²/2``, its default ``0.5 · Chi2inv(0.99, d)``.)

The weights scale the edges' square-root information in place (``√wᵢ Wᵢ``), so each outer
iteration solves the same problem on the fused fast path of
:class:`~posegraph.model.between.BetweenEdges`, with one optimizer (and its symbolic analysis) for the
whole run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional, Union

import theseus as th
import torch

from posegraph.model.problem import PoseGraphProblem
from posegraph.errors import PoseGraphError
from posegraph.graph import PoseGraph, loop_closure_mask
from posegraph.init.dispatch import edge_residuals
from posegraph.model.robust import ROBUST_EDGES, RobustSpecError
from posegraph.solve.optimize import (
    IterationRecord,
    SolveResult,
    SolverOptions,
    _torch_threads,
    iteration_threads,
    make_optimizer,
    optimize,
)
from posegraph.solve.sparse_cholesky import FactorStats
from posegraph.model.weights import FullInformationWeight

#: The inlier probability the default threshold comes from (GTSAM's default, 0.99).
DEFAULT_PROBABILITY = 0.99

__all__ = [
    "GncOptions",
    "GncIteration",
    "GncResult",
    "chi2_threshold",
    "tls_weights",
    "initial_mu",
    "whitened_squared_residuals",
    "optimize_gnc",
    "format_outliers",
    "gnc_summary",
    "format_outer_iteration",
    "DEFAULT_PROBABILITY",
]


def chi2_threshold(dof: int, probability: float = DEFAULT_PROBABILITY) -> float:
    """``C = √χ²_dof(probability)``: the whitened residual norm a correctly modelled inlier
    stays within with that probability (``χ²_dof`` the chi-squared quantile function, SciPy's
    ``chi2.ppf(p, dof)``, computed as the inverse upper tail ``chdtri(dof, 1 − p)`` of
    ``scipy.special``, much quicker to import than ``scipy.stats``). 4.1002 for SE3 (6 dof) and
    3.3682 for SE2 (3 dof) at 0.99."""
    from scipy.special import chdtri

    if not 0.0 < probability < 1.0:
        raise ValueError(f"probability: expected a number in (0, 1), received {probability!r}")
    return math.sqrt(float(chdtri(dof, 1.0 - probability)))


def tls_weights(r2: torch.Tensor, mu: float, c2: float) -> torch.Tensor:
    """TLS's GNC weights of whitened squared residuals ``r2`` at control parameter ``mu`` with
    the squared threshold ``c2 = C²`` (Yang et al. 2020, eq. 14; see the module doc)."""
    lower = mu / (mu + 1.0) * c2
    upper = (mu + 1.0) / mu * c2
    middle = (c2 * mu * (mu + 1.0) / r2.clamp_min(1e-300)).sqrt() - mu
    w = torch.where(r2 <= lower, torch.ones_like(r2), middle.clamp(0.0, 1.0))
    return torch.where(r2 >= upper, torch.zeros_like(r2), w)


def initial_mu(r2_max: float, c2: float) -> Optional[float]:
    """``μ₀ = C² / (2 r²_max − C²)`` (Yang et al. 2020, Remark 5: ``ρ_μ`` is convex over the
    residuals seen), at least 1e-6 (GTSAM's floor, for huge residuals); ``None`` when
    ``2 r²_max ≤ C²``: every residual is within the threshold, nothing to reject."""
    excess = 2.0 * r2_max - c2
    if not excess > 0.0:
        return None
    return max(c2 / excess, 1e-6)


@dataclass(frozen=True)
class GncOptions:
    """How GNC runs (see the module doc for the algorithm).

    Attributes:
        threshold: the inlier threshold ``C`` in whitened standard deviations: an edge is an
            inlier when ``√(eᵀΩe) ≤ C``. ``None``: ``√χ²_d(probability)``
            (:func:`chi2_threshold`; ``d`` = 6 for SE3, 3 for SE2).
        probability: the χ² probability of the default threshold.
        edges: ``"all"`` or ``"loop-closures"`` (odometry edges, consecutive ids, are then
            known inliers: weight 1, never rejected).
        mu_step: factor ``μ`` grows by per outer iteration (GTSAM's ``muStep``).
        max_iterations: cap on outer iterations.
        weights_tolerance: stop when every weight is this close to 0 or 1.
        cost_tolerance: stop when the weighted cost changes by less than this, relatively.
        inner_tolerance: relative error decrease the weighted solves stop at (at least the
            solver options' own); the last solve uses the solver options'.
    """

    threshold: Optional[float] = None
    probability: float = DEFAULT_PROBABILITY
    edges: str = "all"
    mu_step: float = 1.4
    max_iterations: int = 100
    weights_tolerance: float = 1e-4
    cost_tolerance: float = 1e-5
    inner_tolerance: float = 1e-5

    def __post_init__(self) -> None:
        if self.threshold is not None and not (
            isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold) and self.threshold > 0
        ):
            raise RobustSpecError(f"gnc: expected a finite threshold > 0, received {self.threshold!r}")
        if self.edges not in ROBUST_EDGES:
            raise RobustSpecError(f"gnc edges: expected one of {', '.join(ROBUST_EDGES)}, received {self.edges!r}")
        if not 0.0 < self.probability < 1.0:
            raise RobustSpecError(f"gnc probability: expected a number in (0, 1), received {self.probability!r}")
        if not self.mu_step > 1.0:
            raise RobustSpecError(f"gnc mu_step: expected a number > 1, received {self.mu_step!r}")
        if self.max_iterations < 1:
            raise RobustSpecError(f"gnc max_iterations: expected ≥ 1, received {self.max_iterations!r}")


    def threshold_for(self, dof: int) -> float:
        """``C`` for residuals of ``dof`` dimensions."""
        return self.threshold if self.threshold is not None else chi2_threshold(dof, self.probability)

    def __str__(self) -> str:
        return "gnc" if self.threshold is None else f"gnc:{self.threshold:g}"

    @staticmethod
    def is_spec(spec: object) -> bool:
        """Whether ``spec`` names GNC (``GncOptions``, or text ``gnc`` / ``gnc:…``)."""
        if isinstance(spec, GncOptions):
            return True
        return isinstance(spec, str) and spec.strip().lower().partition(":")[0] == "gnc"

    @classmethod
    def parse(cls, spec: Union[str, "GncOptions"], edges: str = "all") -> "GncOptions":
        """``"gnc"`` (threshold from the χ² quantile) or ``"gnc:C"`` (``C`` > 0, whitened
        standard deviations), for ``edges``. Raises :class:`~posegraph.model.robust.RobustSpecError`
        on anything else."""
        if isinstance(spec, GncOptions):
            return spec if spec.edges == edges else replace(spec, edges=edges)
        text = str(spec).strip().lower()
        name, sep, value = text.partition(":")
        if name != "gnc":
            raise RobustSpecError(f"gnc: expected 'gnc' or 'gnc:C', received {spec!r}")
        if not sep:
            return cls(edges=edges)
        try:
            threshold = float(value)
        except ValueError:
            raise RobustSpecError(
                f"gnc {spec!r}: expected a threshold in standard deviations after ':', received {value!r}"
            ) from None
        return cls(threshold=threshold, edges=edges)


@dataclass
class GncIteration:
    """One outer iteration: its ``mu``, the weighted cost ``½ Σ wᵢ rᵢ²`` after its solve, how
    many edges have weight below ½ (``outliers``) or strictly between 0 and 1 (``undecided``,
    beyond ``weights_tolerance``), and the inner solve's iterations and status."""

    iteration: int
    mu: float
    cost: float
    outliers: int
    undecided: int
    inner_iterations: int
    status: str
    elapsed_s: float


@dataclass
class GncResult:
    """What :func:`optimize_gnc` did.

    Attributes:
        solve: the run as one :class:`~posegraph.solve.optimize.SolveResult`: ``initial_error``
            the least-squares error at the given poses (every weight 1), ``final_error`` the
            weighted error ``½ Σ wᵢ eᵢᵀΩᵢeᵢ`` at the result (the inliers' error once the weights
            are binary), ``iterations`` the inner iterations of all solves, ``status`` the last
            solve's, ``time_s`` the whole run's.
        weights: ``(E,)`` final weights ``wᵢ ∈ [0, 1]``.
        outliers: ``(E,)`` bool, the rejected edges (``wᵢ < ½``).
        judged: ``(E,)`` bool, the edges GNC weighs (all, or the loop closures).
        residuals: ``(E,)`` whitened squared residuals ``rᵢ² = eᵢᵀΩᵢeᵢ`` at the result.
        threshold: ``C`` used (whitened standard deviations).
        outer_iterations: outer iterations run (0 when no residual at the given poses exceeds
            ``C/√2``: the final solve is then plain least squares).
        mu: the last ``μ`` used.
        stop_reason: ``"weights-converged"``, ``"cost-converged"``, ``"max-iterations"``,
            ``"all-inliers"`` (no residual to reject after least squares), ``"nothing-to-judge"``
            (no edge to weigh) or ``"failed"`` (a solve ended non-finite).
        history: one :class:`GncIteration` per outer iteration.
    """

    solve: SolveResult
    weights: torch.Tensor
    outliers: torch.Tensor
    judged: torch.Tensor
    residuals: torch.Tensor
    threshold: float
    outer_iterations: int
    mu: float
    stop_reason: str
    history: List[GncIteration] = field(default_factory=list)

    @property
    def num_outliers(self) -> int:
        """How many edges GNC rejected."""
        return int(self.outliers.sum())


def whitened_squared_residuals(problem: PoseGraphProblem, sqrt_information: torch.Tensor) -> torch.Tensor:
    """``rᵢ² = ‖Wᵢ eᵢ‖²`` ``(E,)`` of the between edges at the problem's current poses, with the
    unscaled square roots ``W`` ``(1, E, d, d)`` (one graph)."""
    with torch.no_grad():
        err = problem.between.block_error()  # (1, E, d), unweighted
        werr = (sqrt_information @ err.unsqueeze(-1)).squeeze(-1)
        return werr.square().sum(-1)[0]


def _check_problem(problem: PoseGraphProblem) -> FullInformationWeight:
    weight = problem.between.weight
    if type(weight) is not FullInformationWeight:
        raise PoseGraphError(
            "gnc: expected a problem built without a robust kernel (its edges weighted by their "
            f"information), received edges weighted by {type(weight).__name__}"
        )
    if weight.sqrt_information.tensor.shape[0] != 1 or problem.poses.tensor.shape[0] != 1:
        raise PoseGraphError("gnc: expected one graph, received a batch (run GNC graph by graph)")
    return weight


@torch.no_grad()
def optimize_gnc(
    problem: PoseGraphProblem,
    gnc: Union[GncOptions, str, None] = None,
    options: Optional[SolverOptions] = None,
    on_iteration: Optional[Callable[[IterationRecord], None]] = None,
    on_outer_iteration: Optional[Callable[[GncIteration], None]] = None,
    end_iter_callback: Optional[Callable] = None,
) -> GncResult:
    """Reject outlier edges by GNC with the TLS cost and optimize the rest (module doc).

    ``problem`` is built without a robust kernel (``build_problem(graph)``) from one graph and
    is optimized in place: its poses hold the result, its edges' information the final
    weights (``wᵢ Ωᵢ``). Each weighted least squares is solved by
    :func:`~posegraph.solve.optimize.optimize` under ``options`` (default
    ``SolverOptions()``), warm-started from the previous poses, without autograd (GNC's
    weights are not differentiable).

    Args:
        gnc: :class:`GncOptions`, or a spec ``"gnc"`` / ``"gnc:C"`` (on all edges).
        on_iteration: called with every inner iteration's record, numbered across the run.
        on_outer_iteration: called after each outer iteration.
        end_iter_callback: a Theseus ``end_iter_callback`` (e.g.
            :class:`~posegraph.debug.DebugCallback`), called in every inner solve.

    Example::

        problem = build_problem(graph)
        result = optimize_gnc(problem, GncOptions(edges="loop-closures"))
        rejected = graph.ids[graph.edges[result.outliers]]  # (K, 2) vertex ids
    """
    if not isinstance(gnc, GncOptions):
        gnc = GncOptions.parse(gnc or "gnc")
    options = options or SolverOptions()
    options.validate()
    _check_problem(problem)
    # threads as optimize() sets them: the setup (PARDISO's analysis) on options.threads, the
    # iterations — and GNC's own per-edge steps between the solves, as switching torch's thread
    # count costs more than they do — on iteration_threads
    with _torch_threads(options.threads):
        optimizer = make_optimizer(problem, options)
        with _torch_threads(iteration_threads(problem, options)):
            return _run(problem, gnc, options, optimizer, on_iteration, on_outer_iteration, end_iter_callback)


def _run(
    problem: PoseGraphProblem,
    gnc: GncOptions,
    options: SolverOptions,
    optimizer: th.NonlinearOptimizer,
    on_iteration: Optional[Callable[[IterationRecord], None]],
    on_outer_iteration: Optional[Callable[[GncIteration], None]],
    end_iter_callback: Optional[Callable],
) -> GncResult:
    """:func:`optimize_gnc`'s loop (arguments checked), every solve by ``optimizer``."""
    weight: FullInformationWeight = problem.between.weight
    start = time.perf_counter()
    base = weight.sqrt_information.tensor
    threshold = gnc.threshold_for(problem.between.block_dim)
    c2 = threshold * threshold
    num_edges = problem.num_edges
    if gnc.edges == "loop-closures":
        judged = loop_closure_mask(problem.ids, problem.between.edges).cpu()
    else:
        judged = torch.ones(num_edges, dtype=torch.bool)
    judged_dev = judged.to(base.device)
    records: List[IterationRecord] = []  # every solve's, numbered across the run

    def solve(opts: SolverOptions) -> SolveResult:
        first = records[-1].iteration if records else 0
        optimizer.set_params(rel_err_tolerance=opts.rel_tolerance)  # Theseus' optimizer parameters

        def record(rec: IterationRecord) -> None:
            if rec.iteration > 0 or not records:
                records.append(IterationRecord(first + rec.iteration, rec.error, time.perf_counter() - start))
                if on_iteration is not None:
                    on_iteration(records[-1])

        result = optimize(problem, opts, on_iteration=record, end_iter_callback=end_iter_callback, optimizer=optimizer)
        if result.factor_stats is not None:  # the solver starts new counts at every solve
            result.factor_stats = replace(result.factor_stats)
        return result

    inner_options = replace(options, rel_tolerance=max(options.rel_tolerance, gnc.inner_tolerance))
    weights = torch.ones(num_edges, dtype=base.dtype, device=base.device)
    initial_error = problem.error().detach().clone()
    solves: List[SolveResult] = []
    r2 = whitened_squared_residuals(problem, base)
    prev_cost = 0.5 * float(r2.sum())
    history: List[GncIteration] = []
    first_mu = initial_mu(float(r2[judged_dev].max()), c2) if bool(judged.any()) else None
    mu = float("nan") if first_mu is None else first_mu
    stop: Optional[str] = None  # why the outer loop ended (None: it runs)
    if not bool(judged.any()):
        stop = "nothing-to-judge"
    elif not math.isfinite(prev_cost):
        stop = "failed"
    elif first_mu is None:
        stop = "all-inliers"
    while stop is None and len(history) < gnc.max_iterations:
        weights = torch.where(judged_dev, tls_weights(r2, mu, c2), torch.ones_like(r2))
        weight.sqrt_information.update(base * weights.sqrt()[None, :, None, None])
        inner = solve(inner_options)
        solves.append(inner)
        r2 = whitened_squared_residuals(problem, base)
        cost = 0.5 * float((weights * r2).sum())
        decided = (weights - weights.round()).abs() <= gnc.weights_tolerance
        history.append(
            GncIteration(
                iteration=len(history) + 1,
                mu=mu,
                cost=cost,
                outliers=int((weights < 0.5).sum()),
                undecided=int((~decided).sum()),
                inner_iterations=inner.iterations,
                status=inner.status[0],
                elapsed_s=time.perf_counter() - start,
            )
        )
        if on_outer_iteration is not None:
            on_outer_iteration(history[-1])
        if "failed" in inner.status:
            stop = "failed"
        elif bool(decided.all()):
            stop = "weights-converged"
        elif abs(cost - prev_cost) / max(prev_cost, 1e-7) < gnc.cost_tolerance:
            stop = "cost-converged"
        else:
            mu *= gnc.mu_step
            prev_cost = cost
    stop = stop or "max-iterations"
    if stop != "failed" or not solves:  # the last weights' problem to the caller's tolerances
        solves.append(solve(options))
        r2 = whitened_squared_residuals(problem, base)
    last = solves[-1]
    solve_result = SolveResult(
        status=last.status,
        stop_reason=last.stop_reason,
        detail=last.detail,
        iterations=sum(s.iterations for s in solves),
        problem_iterations=[sum(s.iterations for s in solves)],
        initial_error=initial_error,
        final_error=problem.error().detach().clone(),
        solver=last.solver,
        linear_solver=last.linear_solver,
        device=last.device,
        time_s=time.perf_counter() - start,
        history=records,
        info=last.info,
        factor_stats=_total_stats(solves),
    )
    return GncResult(
        solve=solve_result,
        weights=weights.detach().cpu(),
        outliers=(weights < 0.5).cpu() & judged,
        judged=judged,
        residuals=r2.detach().cpu(),
        threshold=threshold,
        outer_iterations=len(history),
        mu=mu,
        stop_reason=stop,
        history=history,
    )


def _total_stats(solves: List[SolveResult]) -> Optional[FactorStats]:
    """The sparse Cholesky counts of all solves added up (None without such a solver)."""
    stats = [s.factor_stats for s in solves if s.factor_stats is not None]
    if not stats:
        return None
    return replace(
        stats[-1],
        factorizations=sum(s.factorizations for s in stats),
        reused=sum(s.reused for s in stats),
        cg_iterations=sum(s.cg_iterations for s in stats),
    )


def truncated_cost(graph: PoseGraph, gnc: "GncOptions") -> torch.Tensor:
    """The truncated-least-squares cost GNC minimizes, of the graph's poses, per problem:
    ``½ Σ min(rᵢ², C²)`` over the judged edges plus ``½ Σ rᵢ²`` over the others (odometry with
    ``edges="loop-closures"``) — how ``--init auto`` compares starts for a GNC run: a start
    that fits the inliers wins, whatever its outliers' residuals."""
    r2 = edge_residuals(graph)
    threshold = gnc.threshold_for(graph.dof)
    judged = loop_closure_mask(graph.ids, graph.edges) if gnc.edges == "loop-closures" else torch.ones_like(r2[0], dtype=torch.bool)
    capped = torch.where(judged.to(r2.device), r2.clamp_max(threshold * threshold), r2)
    return 0.5 * capped.sum(dim=1)


def format_outliers(graph: PoseGraph, outliers: torch.Tensor) -> str:
    """The rejected edges as text: one ``ID_I ID_J`` line (g2o vertex ids) per edge marked in
    ``outliers`` ``(E,)``, in the graph's (file) order; empty when none."""
    pairs = graph.ids.cpu()[graph.edges.cpu()[outliers.cpu()]].tolist()
    return "".join(f"{a} {b}\n" for a, b in pairs)


def gnc_summary(result: GncResult, outliers_file: Optional[str] = None) -> Dict[str, Any]:
    """The run summary's GNC fields (JSON-ready): ``outliers`` (count), ``outer_iterations``
    and ``gnc`` (``threshold``, ``judged_edges``, ``stop_reason``, ``mu``, ``outliers_file``)."""
    return {
        "outliers": result.num_outliers,
        "outer_iterations": result.outer_iterations,
        "gnc": {
            "threshold": result.threshold,
            "judged_edges": int(result.judged.sum()),
            "stop_reason": result.stop_reason,
            "mu": None if math.isnan(result.mu) else result.mu,
            "outliers_file": outliers_file,
        },
    }


def format_outer_iteration(it: GncIteration) -> str:
    """One progress line for an outer iteration."""
    return (
        f"gnc {it.iteration:>3}  mu {it.mu:<10.4g} weighted chi2 {2 * it.cost:<14.10g} "
        f"outliers {it.outliers:<6} undecided {it.undecided:<6} inner iterations {it.inner_iterations} "
        f"({it.status})  {it.elapsed_s:.3f}s"
    )
