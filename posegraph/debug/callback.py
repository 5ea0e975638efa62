""":class:`DebugCallback`: a Theseus ``end_iter_callback`` that records each iteration — error,
step, damping, per-cost error and Jacobian norms — finds the first non-finite value, and saves
the trace as JSON (read back by :mod:`posegraph.debug.inspect_trace`).

Cost
----
With ``per_cost=False`` an iteration costs one ``isfinite(...).all()`` over the objective
error and over the linearization's ``A``/``b`` plus one device→host copy of a handful of
scalars; cost functions are evaluated only once something is non-finite, to locate it.
``per_cost=True`` evaluates every cost's weighted error and Jacobians once more per
iteration (vectorized per cost function, one device→host copy for all of them).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import theseus as th
import torch

from posegraph.errors import check_integer
from posegraph.model.variables import ManifoldArray
from posegraph.debug.catalog import _Catalog, _CostStats, _evaluate, _np_hypot
from posegraph.model.edge import unwrap_cost
from posegraph.model.names import ElementNames, NameFilter, NamePattern
from posegraph.debug.nonfinite import ERROR, JACOBIAN, NonFiniteError, NonFiniteReport, _first_bad, _largest_error
from posegraph.debug.normal_matrix import _csr_parts

#: ``"format"`` and ``"version"`` of saved traces.
TRACE_FORMAT = "posegraph-debug-trace"
TRACE_VERSION = 1


# -- where a non-finite value sits in the linearization --------------------------------------------


def _linearization_of(optimizer: Any) -> Any:
    solver = getattr(optimizer, "linear_solver", None)
    return getattr(solver, "linearization", None)


def _linearization_tensors(lin: Any) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """(A values or dense A, b) of a linearized linearization, or Nones."""
    csr = _csr_parts(lin)
    a = csr[0] if csr is not None else getattr(lin, "A", None)
    b = getattr(lin, "b", None)
    return (a if isinstance(a, torch.Tensor) else None, b if isinstance(b, torch.Tensor) else None)


def _locate_in_linearization(
    lin: Any, iteration: int, catalog: _Catalog
) -> Optional[NonFiniteReport]:
    """Map non-finite entries of a linearization's ``b`` (errors) or ``A`` (Jacobians) back to
    cost functions / residual blocks through the row layout (costs in linearization order)."""
    a, b = _linearization_tensors(lin)
    names = catalog.element_names
    bad_row: Optional[int] = None
    bad_cols: np.ndarray = np.zeros(0, dtype=np.int64)
    quantity = ERROR
    if b is not None:
        rows = torch.nonzero((~torch.isfinite(b.detach())).any(0)).flatten().cpu().numpy()
        if rows.size:
            bad_row = int(rows[0])
    if bad_row is None and a is not None:
        quantity = JACOBIAN
        csr = _csr_parts(lin)
        if csr is not None:
            nz = torch.nonzero((~torch.isfinite(a.detach())).any(0)).flatten().cpu().numpy()
            if nz.size:
                row_of = np.repeat(np.arange(lin.num_rows), np.diff(csr[2]))
                rows_of_bad = row_of[nz]
                bad_row = int(rows_of_bad.min())
                bad_cols = csr[1][nz[rows_of_bad == bad_row]]
        else:
            mask = (~torch.isfinite(a.detach())).any(0).cpu().numpy()
            rr, cc = np.nonzero(mask)
            if rr.size:
                bad_row = int(rr.min())
                bad_cols = cc[rr == bad_row]
    if bad_row is None:
        return None
    offset = 0
    for cost in lin.objective._get_jacobians_iter():
        cost = unwrap_cost(cost)
        dim = cost.dim()
        if offset <= bad_row < offset + dim:
            entry = catalog.by_id.get(id(cost))
            if entry is None:  # a cost the catalog has not seen: name it plainly
                return NonFiniteReport(iteration, cost.name, [v.name for v in cost.optim_vars], quantity, cost_type=type(cost).__name__)
            blk = entry.block_of_row(bad_row - offset)
            of = [_column_name(lin, int(c), names) for c in bad_cols]
            of = list(dict.fromkeys(of))
            return NonFiniteReport(
                iteration,
                entry.names[blk],
                entry.variables(blk, names),
                quantity,
                jacobian_of=of if quantity == JACOBIAN else [],
                cost_type=entry.type_name,
            )
        offset += dim
    return None


def _column_name(lin: Any, col: int, names: ElementNames) -> str:
    """Name of the variable (element, for packed variables) owning column ``col`` of A."""
    starts = list(lin.var_start_cols)
    k = int(np.searchsorted(starts, col, side="right")) - 1
    var = lin.ordering[k]
    if isinstance(var, ManifoldArray):
        free = (col - starts[k]) // var.element_dof
        return names(var, int(var.free_index[free]))
    return var.name


# -- the callback ----------------------------------------------------------------------------------


def _json_float(x: Optional[float]) -> Union[None, float, str]:
    """Floats for strict JSON: NaN/±inf become the strings "nan", "inf", "-inf"."""
    if x is None:
        return None
    x = float(x)
    if math.isfinite(x):
        return x
    return "nan" if math.isnan(x) else ("inf" if x > 0 else "-inf")


class DebugCallback:
    """Per-iteration trace and non-finite locator; a Theseus ``end_iter_callback``.

    Use it with any Theseus nonlinear optimizer (``optimizer.optimize(end_iter_callback=cb)``)
    or with :func:`posegraph.solve.optimize.optimize` (``end_iter_callback=cb``), which calls
    :meth:`check_initial` itself before the first step. With a Theseus optimizer, call
    :meth:`check_initial` before the run; call :meth:`check_final` after it to cover a run
    that ends because the linear solver failed on a non-finite system.

    Args:
        per_cost: also record, per cost function (per residual block for a
            BlockSparseCostFunction), the weighted error norm and each Jacobian block's norm.
        pattern: which cost functions / blocks to record (see :class:`NameFilter`: fnmatch
            glob, ``"re:…"`` / ``re.Pattern`` regex, or a sequence of them). Non-finite
            detection always covers every cost.
        aggregate: ``None`` (per cost / block) or ``"type"``: one record per cost-function
            class (``"BetweenEdges"``), norms combined as ``sqrt(Σ ‖·‖²)`` over its blocks,
            with a ``"count"``.
        max_records: keep only this many records per iteration, the largest errors (non-finite
            first); None keeps all.
        stop_on_nonfinite: raise :class:`NonFiniteError` at the first non-finite value, which
            stops the optimization there.
        element_names: names of packed elements (:class:`ElementNames`); see
            :meth:`for_problem`.
    """

    def __init__(
        self,
        per_cost: bool = False,
        pattern: NamePattern = None,
        aggregate: Optional[str] = None,
        max_records: Optional[int] = None,
        stop_on_nonfinite: bool = False,
        element_names: Optional[ElementNames] = None,
    ):
        if aggregate not in (None, "type"):
            raise ValueError(f"aggregate: expected None or 'type', received {aggregate!r}")
        max_records = check_integer("max_records", max_records, 0, allow_none=True)
        self.per_cost = per_cost
        self.name_filter = NameFilter(pattern)
        self.aggregate = aggregate
        self.max_records = max_records
        self.stop_on_nonfinite = stop_on_nonfinite
        self.element_names = element_names or ElementNames()
        self._catalog: Optional[_Catalog] = None
        self.reset()

    @classmethod
    def for_problem(cls, problem: Any, **kwargs: Any) -> "DebugCallback":
        """A callback naming the poses of a :class:`~posegraph.model.problem.PoseGraphProblem` by
        vertex id (``"VERTEX_SE3:QUAT 12"``) or by the user's pose variable names."""
        kwargs.setdefault("element_names", ElementNames.for_problem(problem))
        return cls(**kwargs)

    def reset(self) -> None:
        """Forget recorded iterations and the non-finite report (to reuse the callback)."""
        self.records: List[Dict[str, Any]] = []
        self.first_nonfinite: Optional[NonFiniteReport] = None
        self.status: Optional[List[str]] = None
        self.stop_reason: Optional[List[str]] = None
        self._iteration = 0

    def record_outcome(self, status: Sequence[str], stop_reason: Sequence[str]) -> None:
        """Keep how the solve stopped, per problem (``SolveResult.status`` and
        ``stop_reason``), for the trace; :func:`posegraph.optimize` calls it."""
        self.status, self.stop_reason = list(status), list(stop_reason)

    @property
    def iteration(self) -> int:
        """The last iteration recorded (0 before any step)."""
        return self._iteration

    # -- helpers ---------------------------------------------------------------------------
    def _catalog_for(self, objective: th.Objective) -> _Catalog:
        if self._catalog is None or not self._catalog.fresh_for(objective):
            self._catalog = _Catalog(objective, self.element_names, self.name_filter)
        return self._catalog

    def _cost_records(self, stats: Sequence[_CostStats]) -> Dict[str, Dict[str, Any]]:
        rows: List[Tuple[str, str, float, List[float]]] = []  # (name, type, error, jac norms)
        for s in stats:
            sel = s.entry.selected
            if sel.size == 0:
                continue
            err = s.error_norm[sel].tolist()
            jac = s.jac_norm[sel].tolist()
            for k, i in enumerate(sel.tolist()):
                rows.append((s.entry.names[i], s.entry.type_name, err[k], jac[k]))
        if self.aggregate == "type":
            groups: Dict[str, List[Tuple[float, List[float]]]] = {}
            for _, tname, e, j in rows:
                groups.setdefault(tname, []).append((e, j))
            out: Dict[str, Dict[str, Any]] = {}
            for tname, items in groups.items():
                width = max(len(j) for _, j in items)
                jac = np.full((len(items), width), 0.0)
                for r, (_, j) in enumerate(items):
                    jac[r, : len(j)] = j
                out[tname] = {
                    "error_norm": _np_hypot(np.array([e for e, _ in items])),
                    "jacobian_norms": [_np_hypot(jac[:, k]) for k in range(width)],
                    "count": len(items),
                }
            records = out
        else:
            records = {n: {"error_norm": e, "jacobian_norms": j} for n, _, e, j in rows}
        if self.max_records is not None and len(records) > self.max_records:
            def badness(item: Tuple[str, Dict[str, Any]]) -> Tuple[int, float]:
                e = item[1]["error_norm"]
                return (0, 0.0) if math.isnan(e) else (1, -e)

            records = dict(sorted(records.items(), key=badness)[: self.max_records])
        return records

    def _record(
        self,
        iteration: int,
        error: Optional[float],
        step_norm: Optional[float],
        damping: Optional[float],
        stats: Optional[Sequence[_CostStats]],
    ) -> None:
        self.records.append(
            {
                "iteration": iteration,
                "error": error,
                "step_norm": step_norm,
                "damping": damping,
                "cost_functions": self._cost_records(stats) if stats is not None else {},
            }
        )

    def _found(self, report: Optional[NonFiniteReport]) -> None:
        if report is None or self.first_nonfinite is not None:
            return
        self.first_nonfinite = report
        if self.stop_on_nonfinite:
            raise NonFiniteError(report)

    # -- before / after the run ----------------------------------------------------------------
    def check_initial(self, objective: th.Objective) -> Optional[NonFiniteReport]:
        """Record iteration 0 (the initial guess) and locate any non-finite error or Jacobian
        there; returns the report (None when all is finite). Raises :class:`NonFiniteError`
        with ``stop_on_nonfinite``. Costs one evaluation of every error and Jacobian."""
        if self.records:
            raise ValueError("check_initial: iterations are already recorded (call reset() first)")
        return self._check_state(objective, 0, record=True)

    def check_final(self, objective: th.Objective, iteration: Optional[int] = None) -> Optional[NonFiniteReport]:
        """Locate a non-finite error or Jacobian at the final state, if none was found yet.

        Theseus stops without calling back when the linear solver fails (often on the
        non-finite system of the last state) and on the converging step; pass the number of
        iterations done (``SolveResult.iterations``) as ``iteration`` so that a final state
        past the last callback is recorded (``step_norm`` and ``damping`` null) and named.
        Returns :attr:`first_nonfinite` (None when nothing was non-finite); raises
        :class:`NonFiniteError` for a new finding with ``stop_on_nonfinite``.
        """
        it = self._iteration if iteration is None else int(iteration)
        record = it > self._iteration or not self.records
        if not record and self.first_nonfinite is not None:
            return self.first_nonfinite
        return self._check_state(objective, it, record=record)

    def _check_state(self, objective: th.Objective, iteration: int, record: bool) -> Optional[NonFiniteReport]:
        catalog = self._catalog_for(objective)
        stats = _evaluate(catalog)
        with torch.no_grad():
            err = objective.error_metric().detach()
            error = float(err.to(torch.float64).mean())
        report = _first_bad(stats, iteration, self.element_names)
        if report is None and not math.isfinite(error):
            report = _largest_error(stats, iteration, self.element_names)
        if record:
            self._iteration = iteration
            self._record(iteration, error, 0.0 if iteration == 0 else None, None, stats if self.per_cost else None)
        self._found(report)
        return self.first_nonfinite

    # -- the Theseus callback ------------------------------------------------------------------
    def __call__(self, optimizer: Any, info: Any, delta: torch.Tensor, it: int) -> None:
        """``end_iter_callback(optimizer, info, delta, it)``: record iteration ``n`` (the
        number of calls so far; Theseus' ``it + 1`` in one run) and check for non-finite
        values."""
        n = self._iteration + 1
        self._iteration = n
        objective = optimizer.objective
        lin = _linearization_of(optimizer)
        look = self.first_nonfinite is None
        with torch.no_grad():
            err = info.last_err.detach()
            values = [err.mean(), torch.linalg.vector_norm(delta.detach(), dim=-1).mean()]
            values.append(torch.isfinite(err).all())
            a, b = _linearization_tensors(lin) if (look and lin is not None) else (None, None)
            lin_ok = torch.ones((), dtype=torch.bool, device=err.device)
            for t in (a, b):
                if t is not None:
                    lin_ok = lin_ok & torch.isfinite(t.detach()).all().to(err.device)
            values.append(lin_ok)
            damping = getattr(optimizer, "_damping", None)
            if isinstance(damping, torch.Tensor):
                values.append(damping.detach().to(err.device).mean())
            packed = torch.stack([v.to(torch.float64) for v in values]).cpu().tolist()
        error, step, err_ok, lin_ok_f = packed[0], packed[1], packed[2] > 0, packed[3] > 0
        if isinstance(damping, torch.Tensor):
            damping_f: Optional[float] = packed[4]
        elif isinstance(damping, (int, float)):
            damping_f = float(damping)
        else:
            damping_f = None

        stats: Optional[List[_CostStats]] = None
        catalog: Optional[_Catalog] = None
        if self.per_cost or (look and not (err_ok and lin_ok_f)):
            catalog = self._catalog_for(objective)
        if catalog is not None and (self.per_cost or not err_ok):
            stats = _evaluate(catalog)
        self._record(n, error, step, damping_f, stats if self.per_cost else None)
        if not look:
            return
        candidates: List[NonFiniteReport] = []
        if not lin_ok_f:  # the system solved at iteration n-1 was non-finite
            rep = _locate_in_linearization(lin, n - 1, catalog)  # type: ignore[arg-type]
            if rep is not None:
                candidates.append(rep)
        if stats is not None:
            rep = _first_bad(stats, n, self.element_names)
            if rep is None and not err_ok:
                rep = _largest_error(stats, n, self.element_names)
            if rep is not None:
                candidates.append(rep)
        stepped = getattr(optimizer, "nonfinite_step", None)
        if not candidates and stepped is not None:  # a refused step: the costs where it went
            rep = self._locate_in_step(objective, stepped, n)
            if rep is not None:
                candidates.append(rep)
        if candidates:
            self._found(min(candidates, key=lambda r: (r.iteration, r.quantity != ERROR)))

    def _locate_in_step(self, objective: th.Objective, stepped: Dict[str, torch.Tensor], n: int) -> Optional[NonFiniteReport]:
        """The first cost that is not finite at the values of a refused trial step
        (``stepped``, :attr:`posegraph.solve.nonlinear.TruthfulLoop.nonfinite_step`) of
        iteration ``n``; the variables are put back as they were."""
        current = {name: objective.get_optim_var(name).tensor for name in stepped}
        objective.update(stepped)
        try:
            stats = _evaluate(self._catalog_for(objective))
        finally:
            objective.update(current)
        report = _first_bad(stats, n, self.element_names) or _largest_error(stats, n, self.element_names)
        return None if report is None else dataclasses.replace(report, trial_step=True)

    # -- the trace -----------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        """The trace as strict-JSON-ready data: ``{"format", "version", "settings",
        "iterations": [{"iteration", "error", "step_norm", "damping", "cost_functions":
        {NAME: {"error_norm", "jacobian_norms": [...]}}}], "first_nonfinite", "status",
        "stop_reason"}`` (the last two per problem, null before the solve ended); non-finite
        floats are written as the strings ``"nan"``, ``"inf"``, ``"-inf"``
        (:func:`posegraph.debug.inspect_trace.load_trace` turns them back into floats)."""
        iterations = []
        for rec in self.records:
            costs = {
                name: {
                    **{k: v for k, v in c.items() if k not in ("error_norm", "jacobian_norms")},
                    "error_norm": _json_float(c["error_norm"]),
                    "jacobian_norms": [_json_float(x) for x in c["jacobian_norms"]],
                }
                for name, c in rec["cost_functions"].items()
            }
            iterations.append(
                {
                    "iteration": rec["iteration"],
                    "error": _json_float(rec["error"]),
                    "step_norm": _json_float(rec["step_norm"]),
                    "damping": _json_float(rec["damping"]),
                    "cost_functions": costs,
                }
            )
        return {
            "format": TRACE_FORMAT,
            "version": TRACE_VERSION,
            "settings": {
                "per_cost": self.per_cost,
                "pattern": self.name_filter.describe(),
                "aggregate": self.aggregate,
                "max_records": self.max_records,
                "stop_on_nonfinite": self.stop_on_nonfinite,
            },
            "iterations": iterations,
            "first_nonfinite": self.first_nonfinite.to_dict() if self.first_nonfinite else None,
            "status": self.status,
            "stop_reason": self.stop_reason,
        }

    def save(self, path: Union[str, "os.PathLike[str]"]) -> None:
        """Write the trace as JSON, atomically (:mod:`posegraph.io.output`)."""
        from posegraph.io.output import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
