"""Debugging a diverging or non-finite optimization: per-iteration traces, a non-finite
locator, and the normal equations of any linearization.

The pieces
----------
:class:`DebugCallback`
    A Theseus ``end_iter_callback(optimizer, info, delta, it)`` for any nonlinear optimizer
    (Gauss–Newton, LM; dense, sparse or block-sparse linearization), also accepted by
    :func:`posegraph.solve.optimize.optimize` (``end_iter_callback=cb``). Per iteration it
    records the objective error, ``‖δ‖`` and LM's damping; with ``per_cost=True`` also, per
    cost function, the weighted error norm and the norm of each Jacobian block. A
    :class:`~posegraph.costs.BlockSparseCostFunction` (one Theseus cost holding many edges)
    is reported per *residual block*, named by ``cost.block_name(i)`` (``"EDGE_SE3:QUAT 12
    13"``), with one Jacobian norm per layout entry (``[‖J_i‖, ‖J_j‖]`` for an edge).
    The trace is saved as JSON (:meth:`DebugCallback.save`) and printed by
    :func:`run_inspect`.
:func:`locate_nonfinite` / :meth:`DebugCallback.check_initial`
    Name the first cost function (residual block) whose error or Jacobian is NaN/inf, with
    its variables (for a block: its elements, e.g. ``"VERTEX_SE3:QUAT 12"``).
:func:`edge_linearization` (``problem.edge(name)``)
    One residual block's (an edge's) error and Jacobian blocks, unweighted and weighted, at
    the current state (:class:`EdgeLinearization`), without a dense Jacobian.
:func:`normal_matrix` / :func:`normal_rhs` / :func:`jacobian_matrix`
    ``AᵀA``, ``Aᵀb`` and ``A`` of one batch element as SciPy matrices for posegraph's
    :class:`~posegraph.solve.linearization.BlockSparseLinearization` and Theseus'
    ``SparseLinearization`` (whose ``AtA`` raises ``NotImplementedError``) and
    ``DenseLinearization``.

Iterations are numbered as in :class:`posegraph.solve.optimize.IterationRecord`: iteration
``0`` is the initial guess, iteration ``n`` the state after ``n`` steps (the ``n``-th call of
the callback, Theseus' ``it + 1``).

Non-finite means: a residual block whose contribution ``½‖W e‖²`` to the objective is NaN or
±inf (this includes errors so large that their square overflows, e.g. a measurement
translation of 1e200), or a Jacobian block with a NaN/inf entry.

Cost
----
With ``per_cost=False`` an iteration costs one ``isfinite(...).all()`` over the objective
error and over the linearization's ``A``/``b`` plus one device→host copy of a handful of
scalars; cost functions are evaluated only once something is non-finite, to locate it.
``per_cost=True`` evaluates every cost's weighted error and Jacobians once more per
iteration (vectorized per cost function, one device→host copy for all of them).
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.sparse as sp
import theseus as th
import torch

from .costs import BlockSparseCostFunction
from .errors import OptimizationError, PoseGraphError
from .variables import ManifoldArray

#: ``"format"`` and ``"version"`` of saved traces.
TRACE_FORMAT = "posegraph-debug-trace"
TRACE_VERSION = 1

ERROR = "error"
JACOBIAN = "jacobian"

NamePattern = Union[None, str, "re.Pattern[str]", Sequence[Union[str, "re.Pattern[str]"]]]


# -- reports ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NonFiniteReport:
    """Where an optimization first went non-finite.

    Attributes:
        iteration: the iteration (0 = initial guess) whose state gave the non-finite value.
        cost_function: the cost function's name, or the residual block's name
            (``cost.block_name(i)``) for a BlockSparseCostFunction.
        variables: names of its optimization variables (for a block: its elements).
        quantity: ``"error"`` or ``"jacobian"``.
        jacobian_of: for ``"jacobian"``, the variables whose Jacobian block is non-finite.
        cost_type: class name of the cost function.
    """

    iteration: int
    cost_function: str
    variables: List[str]
    quantity: str
    jacobian_of: List[str] = field(default_factory=list)
    cost_type: str = ""

    def to_dict(self) -> Dict[str, Any]:
        """The report as a JSON-ready dict (a trace file's ``first_nonfinite``)."""
        return {
            "iteration": self.iteration,
            "cost_function": self.cost_function,
            "variables": list(self.variables),
            "quantity": self.quantity,
            "jacobian_of": list(self.jacobian_of),
            "cost_type": self.cost_type,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "NonFiniteReport":
        """The report stored by :meth:`to_dict` (as read back from a trace file)."""
        return cls(
            iteration=int(data["iteration"]),
            cost_function=str(data["cost_function"]),
            variables=[str(v) for v in data.get("variables", [])],
            quantity=str(data["quantity"]),
            jacobian_of=[str(v) for v in data.get("jacobian_of", [])],
            cost_type=str(data.get("cost_type", "")),
        )

    def __str__(self) -> str:
        what = f"non-finite {self.quantity} in cost function {self.cost_function!r}"
        if self.quantity == JACOBIAN and self.jacobian_of:
            what += f" (d/d {', '.join(self.jacobian_of)})"
        return f"iteration {self.iteration}: {what}; variables: {', '.join(self.variables)}"


class NonFiniteError(OptimizationError):
    """Raised by :class:`DebugCallback` (``stop_on_nonfinite=True``) to stop an optimization
    at the first non-finite error or Jacobian; ``report`` says where."""

    def __init__(self, report: NonFiniteReport):
        self.report = report
        super().__init__(str(report))


# -- naming ----------------------------------------------------------------------------------------


class ElementNames:
    """Names of the elements of packed variables (:class:`ManifoldArray`) for reports.

    Args:
        names: ``{variable name: [name of element 0, name of element 1, …]}``; elements of
            other variables are called ``"VAR[k]"`` (``k`` the element index).
    """

    def __init__(self, names: Optional[Mapping[str, Sequence[str]]] = None):
        self._names = {k: list(v) for k, v in (names or {}).items()}

    @classmethod
    def for_problem(cls, problem: Any) -> "ElementNames":
        """Pose names of a :class:`~posegraph.builder.PoseGraphProblem`: the user's pose
        variable names (builder path) or ``"VERTEX_SE3:QUAT <id>"`` (g2o graphs)."""
        var = problem.poses
        if problem.pose_variables is not None:
            names = [v.name for v in problem.pose_variables]
        else:
            tag = "VERTEX_SE3:QUAT" if problem.kind == "SE3" else "VERTEX_SE2"
            names = [f"{tag} {int(i)}" for i in problem.ids.tolist()]
        return cls({var.name: names})

    def __call__(self, var: th.Variable, element: int) -> str:
        names = self._names.get(var.name)
        if names is not None and 0 <= element < len(names):
            return names[element]
        return f"{var.name}[{element}]"


class NameFilter:
    """Which cost functions / residual blocks get per-cost records.

    ``None`` selects all. A string is an ``fnmatch`` glob (case-sensitive, e.g.
    ``"EDGE_SE3:QUAT 12 *"``) unless it starts with ``"re:"`` (a regular expression, searched);
    a compiled ``re.Pattern`` is searched; a sequence selects what any of its items selects.
    A block is selected when its own name or its cost function's name matches.
    """

    def __init__(self, pattern: NamePattern = None):
        self.pattern = pattern
        items: List[Union[str, "re.Pattern[str]"]]
        if pattern is None:
            items = []
        elif isinstance(pattern, (str, re.Pattern)):
            items = [pattern]
        else:
            items = list(pattern)
        self._tests: List[Callable[[str], bool]] = [self._compile(p) for p in items]

    @staticmethod
    def _compile(p: Union[str, "re.Pattern[str]"]) -> Callable[[str], bool]:
        if isinstance(p, re.Pattern):
            return lambda name: p.search(name) is not None
        if not isinstance(p, str):
            raise TypeError(f"name pattern: expected a str or re.Pattern, received {type(p).__name__}")
        if p.startswith("re:"):
            rx = re.compile(p[3:])
            return lambda name: rx.search(name) is not None
        return lambda name: fnmatch.fnmatchcase(name, p)

    @property
    def selects_all(self) -> bool:
        """Whether the filter selects every name (no pattern given)."""
        return not self._tests

    def __call__(self, *names: str) -> bool:
        if not self._tests:
            return True
        return any(t(n) for t in self._tests for n in names)

    def describe(self) -> Optional[Union[str, List[str]]]:
        """The pattern as given, for a trace file: ``None`` (all), one string or a list (regular expressions as ``re:PATTERN``)."""
        if self.pattern is None:
            return None
        items = [self.pattern] if isinstance(self.pattern, (str, re.Pattern)) else self.pattern
        out = [f"re:{p.pattern}" if isinstance(p, re.Pattern) else str(p) for p in items]
        return out[0] if len(out) == 1 else out


# -- static catalog of an objective's cost functions -----------------------------------------------


def _unwrap(cost: th.CostFunction) -> th.CostFunction:
    """The user's cost behind Theseus' vectorization wrapper (``_CostFunctionWrapper``)."""
    return getattr(cost, "cost_fn", cost)


@dataclass
class _LayoutEntry:
    variable: th.Variable
    rows: np.ndarray
    elements: np.ndarray
    direct: bool  # rows == arange(num_blocks): one Jacobian block per residual block


@dataclass
class _CostEntry:
    """Static facts about one cost function of an objective."""

    cost: th.CostFunction
    block: bool
    names: List[str]  # one per residual block (generic costs: [cost.name])
    type_name: str
    num_jacobians: int
    layout: List[_LayoutEntry]
    selected: np.ndarray  # indices of blocks that get per-cost records

    @property
    def num_blocks(self) -> int:
        return len(self.names)

    def block_of_row(self, local_row: int) -> int:
        return local_row // self.cost.block_dim if self.block else 0

    def variables(self, block: int, names: ElementNames, entries: Optional[Iterable[int]] = None) -> List[str]:
        """Names of the variables (elements) of residual block ``block`` (optionally only
        those of the given layout entries / optimization variable positions)."""
        keep = None if entries is None else set(entries)
        out: List[str] = []
        if not self.block:
            for k, var in enumerate(self.cost.optim_vars):
                if keep is None or k in keep:
                    out.append(var.name)
            return out
        for k, lay in enumerate(self.layout):
            if keep is not None and k not in keep:
                continue
            for el in lay.elements[lay.rows == block].tolist():
                name = names(lay.variable, int(el))
                if name not in out:
                    out.append(name)
        return out


class _Catalog:
    """Names, layout and selection of every cost function of an objective (built once)."""

    def __init__(self, objective: th.Objective, names: ElementNames, name_filter: NameFilter):
        self.objective = objective
        self.version = objective.current_version
        self.element_names = names
        self.entries: List[_CostEntry] = []
        self.by_id: Dict[int, _CostEntry] = {}
        used: Dict[str, int] = {}

        def unique(name: str) -> str:
            count = used.get(name, 0) + 1
            used[name] = count
            return name if count == 1 else f"{name} ({count})"

        for cost in objective.cost_functions.values():
            cost = _unwrap(cost)
            block = isinstance(cost, BlockSparseCostFunction)
            layout: List[_LayoutEntry] = []
            if block:
                cnames = [unique(cost.block_name(i)) for i in range(cost.num_blocks)]
                for lay in cost.block_layout():
                    rows = lay.rows.detach().cpu().numpy()
                    direct = len(rows) == cost.num_blocks and bool(
                        (rows == np.arange(cost.num_blocks)).all()
                    )
                    layout.append(
                        _LayoutEntry(lay.variable, rows, lay.elements.detach().cpu().numpy(), direct)
                    )
                num_jac = len(layout)
                selected = np.array(
                    [i for i, n in enumerate(cnames) if name_filter(n, cost.name)], dtype=np.int64
                ) if not name_filter.selects_all else np.arange(len(cnames))
            else:
                cnames = [unique(cost.name)]
                num_jac = len(list(cost.optim_vars))
                selected = np.arange(1) if name_filter(cost.name) else np.zeros(0, dtype=np.int64)
            entry = _CostEntry(cost, block, cnames, type(cost).__name__, num_jac, layout, selected)
            self.entries.append(entry)
            self.by_id[id(cost)] = entry

    def fresh_for(self, objective: th.Objective) -> bool:
        return objective is self.objective and objective.current_version == self.version


# -- per-cost evaluation ---------------------------------------------------------------------------


def _safe_norm(x: torch.Tensor, dims: Tuple[int, ...]) -> torch.Tensor:
    """2-norm over ``dims`` without overflow for huge finite entries (NaN stays NaN, inf inf)."""
    if x.numel() == 0:
        return x.new_zeros(x.shape[: x.ndim - len(dims)])
    scale = x.detach().abs().amax(dim=dims, keepdim=True)
    ok = torch.isfinite(scale) & (scale > 0)
    scale = torch.where(ok, scale, torch.ones_like(scale))
    norm = torch.linalg.vector_norm(x / scale, dim=dims)
    return norm * scale.reshape(norm.shape)


def _np_hypot(values: np.ndarray) -> float:
    """Overflow-safe ``sqrt(Σ v²)`` of a 1-D array (NaN/inf propagate)."""
    if values.size == 0:
        return 0.0
    if not np.isfinite(values).all():
        return float("nan") if np.isnan(values).any() else float("inf")
    m = float(np.abs(values).max())
    if m == 0.0:
        return 0.0
    return m * float(np.sqrt(np.sum(np.square(values / m))))


@dataclass
class _CostStats:
    """One cost function's per-block norms and non-finite flags (CPU, batch-reduced)."""

    entry: _CostEntry
    error_norm: np.ndarray  # (R,) mean over batch of ‖W e‖
    error_bad: np.ndarray  # (R,) ½‖We‖² non-finite in some batch element
    jac_norm: np.ndarray  # (R, L) mean over batch of ‖J‖ per layout entry / variable
    jac_bad: np.ndarray  # (R, L) a non-finite Jacobian entry in some batch element


def _block_tensors(entry: _CostEntry) -> List[torch.Tensor]:
    cost: BlockSparseCostFunction = entry.cost  # type: ignore[assignment]
    jacs, err = cost.weighted_block_jacobians_error()  # [(Bj, K, d, e)], (B, R, d)
    r = cost.num_blocks
    e_norm = _safe_norm(err, (-1,)).mean(0)
    e_bad = (~torch.isfinite(err.square().sum(-1))).any(0)
    norms, bads = [], []
    for jac, lay in zip(jacs, entry.layout):
        n = _safe_norm(jac, (-2, -1))  # (Bj, K)
        bad = (~torch.isfinite(jac)).flatten(-2).any(-1)  # (Bj, K)
        if lay.direct:
            norms.append(n.mean(0))
            bads.append(bad.any(0))
        else:  # several (or no) Jacobian blocks per residual block: combine per row
            rows = torch.as_tensor(lay.rows, device=jac.device)
            sq = n.new_zeros(n.shape[0], r).index_add(1, rows, n.square())
            norms.append(sq.sqrt().mean(0))
            cnt = n.new_zeros(n.shape[0], r).index_add(1, rows, bad.to(n.dtype))
            bads.append((cnt > 0).any(0))
    jn = torch.stack(norms, 1) if norms else err.new_zeros(r, 0)
    jb = torch.stack(bads, 1) if bads else torch.zeros(r, 0, dtype=torch.bool, device=err.device)
    return [e_norm, e_bad, jn, jb]


def _generic_tensors(entry: _CostEntry) -> List[torch.Tensor]:
    jacs, err = entry.cost.weighted_jacobians_error()  # [(B, dim, dof)], (B, dim)
    e_norm = _safe_norm(err, (-1,)).mean(0, keepdim=True)
    e_bad = (~torch.isfinite(err.square().sum(-1))).any(0, keepdim=True)
    if jacs:
        jn = torch.stack([_safe_norm(j, (-2, -1)).mean(0) for j in jacs]).unsqueeze(0)
        jb = torch.stack([(~torch.isfinite(j)).any() for j in jacs]).unsqueeze(0)
    else:
        jn = err.new_zeros(1, 0)
        jb = torch.zeros(1, 0, dtype=torch.bool, device=err.device)
    return [e_norm, e_bad, jn, jb]


def _evaluate(catalog: _Catalog) -> List[_CostStats]:
    """Weighted errors and Jacobians of every cost at the current state → per-block stats,
    with one device→host copy for all cost functions."""
    pieces: List[torch.Tensor] = []
    shapes: List[Tuple[int, int]] = []
    with torch.no_grad():
        for entry in catalog.entries:
            t = _block_tensors(entry) if entry.block else _generic_tensors(entry)
            r, l = t[2].shape
            shapes.append((r, l))
            pieces.extend(x.detach().reshape(-1).to(torch.float64) for x in t)
        if not pieces:
            return []
        flat = torch.cat([p.to(pieces[0].device) for p in pieces]).cpu().numpy()
    out: List[_CostStats] = []
    pos = 0
    for entry, (r, l) in zip(catalog.entries, shapes):
        parts = []
        for size in (r, r, r * l, r * l):
            parts.append(flat[pos : pos + size])
            pos += size
        out.append(
            _CostStats(
                entry,
                parts[0],
                parts[1] > 0,
                parts[2].reshape(r, l),
                parts[3].reshape(r, l) > 0,
            )
        )
    return out


def _first_bad(stats: Sequence[_CostStats], iteration: int, names: ElementNames) -> Optional[NonFiniteReport]:
    """The first non-finite error (any cost, in objective order), else the first non-finite
    Jacobian."""
    for s in stats:
        if s.error_bad.any():
            i = int(np.flatnonzero(s.error_bad)[0])
            return NonFiniteReport(
                iteration, s.entry.names[i], s.entry.variables(i, names), ERROR,
                cost_type=s.entry.type_name,
            )
    for s in stats:
        rows = s.jac_bad.any(1) if s.jac_bad.size else np.zeros(len(s.error_bad), dtype=bool)
        if rows.any():
            i = int(np.flatnonzero(rows)[0])
            bad_entries = np.flatnonzero(s.jac_bad[i]).tolist()
            return NonFiniteReport(
                iteration,
                s.entry.names[i],
                s.entry.variables(i, names),
                JACOBIAN,
                jacobian_of=s.entry.variables(i, names, bad_entries),
                cost_type=s.entry.type_name,
            )
    return None


def _largest_error(stats: Sequence[_CostStats], iteration: int, names: ElementNames) -> Optional[NonFiniteReport]:
    """When only the sum overflows (every block finite): the block with the largest error."""
    best: Optional[Tuple[float, _CostStats, int]] = None
    for s in stats:
        if s.error_norm.size:
            i = int(np.argmax(s.error_norm))
            if best is None or s.error_norm[i] > best[0]:
                best = (float(s.error_norm[i]), s, i)
    if best is None:
        return None
    _, s, i = best
    return NonFiniteReport(iteration, s.entry.names[i], s.entry.variables(i, names), ERROR, cost_type=s.entry.type_name)


def locate_nonfinite(
    objective: th.Objective,
    iteration: int = 0,
    element_names: Optional[ElementNames] = None,
) -> Optional[NonFiniteReport]:
    """Evaluate every cost function's weighted error and Jacobians at the current state and
    name the first non-finite one (errors before Jacobians); None when all are finite."""
    names = element_names or ElementNames()
    catalog = _Catalog(objective, names, NameFilter(None))
    stats = _evaluate(catalog)
    report = _first_bad(stats, iteration, names)
    if report is None:
        with torch.no_grad():
            total_ok = bool(torch.isfinite(objective.error_metric()).all())
        if not total_ok:
            report = _largest_error(stats, iteration, names)
    return report


def check_initial(
    objective: th.Objective, element_names: Optional[ElementNames] = None
) -> Optional[NonFiniteReport]:
    """:func:`locate_nonfinite` at the initial guess (iteration 0)."""
    return locate_nonfinite(objective, 0, element_names)


# -- one edge ---------------------------------------------------------------------------------------


class UnknownEdgeError(PoseGraphError):
    """:func:`edge_linearization`: no residual block or cost function of that name."""


@dataclass(frozen=True)
class EdgeLinearization:
    """One residual block (a g2o edge, an observation) or one cost function, evaluated at the
    current state: what the solver's linearization holds for it, without building the whole
    (dense) Jacobian. Tensors are detached, batch first.

    Attributes:
        name: the block's name (``"EDGE_SE3:QUAT 12 13"``) or the cost function's.
        cost_function: the cost function holding it (``"between"``) and ``cost_type`` its class.
        index: the block's index within that cost function (None for an ordinary cost).
        variables: the variables (pose names for packed poses), one per Jacobian block.
        fixed: per variable, whether it is held fixed (its Jacobian block is not in ``A``).
        error: unweighted error ``e``, ``(B, d)``; ``weighted_error`` is ``W e``.
        jacobians: unweighted ``∂e/∂δ`` per variable, ``(B, d, dof)`` (tangent order of the
            variable: translation then rotation for poses); ``weighted_jacobians``: ``W ∂e/∂δ``,
            the block of ``A`` (a robust weight's ``√ρ'`` included).
    """

    name: str
    cost_function: str
    cost_type: str
    index: Optional[int]
    variables: List[str]
    fixed: List[bool]
    error: torch.Tensor
    weighted_error: torch.Tensor
    jacobians: List[torch.Tensor]
    weighted_jacobians: List[torch.Tensor]

    @property
    def cost(self) -> torch.Tensor:
        """``½‖W e‖²`` per batch element, ``(B,)`` (without a robust kernel's ρ)."""
        return 0.5 * self.weighted_error.square().sum(-1)


def _find_block(objective: th.Objective, name: str) -> Tuple[th.CostFunction, Optional[int]]:
    """The cost function holding the residual block (or being the cost) called ``name``."""
    examples: List[str] = []
    for cost in objective.cost_functions.values():
        cost = _unwrap(cost)
        if isinstance(cost, BlockSparseCostFunction):
            names = cost.block_names or [cost.block_name(i) for i in range(cost.num_blocks)]
            try:
                return cost, names.index(name)
            except ValueError:
                pass
            if names:
                examples.append(names[0])
        elif cost.name == name:
            return cost, None
        else:
            examples.append(cost.name)
    hint = ""
    parts = name.rsplit(" ", 2)
    if len(parts) == 3:  # an edge written the other way round?
        reverse = f"{parts[0]} {parts[2]} {parts[1]}"
        if any(reverse in (_unwrap(c).block_names or []) for c in objective.cost_functions.values()
               if isinstance(_unwrap(c), BlockSparseCostFunction)):
            hint = f"; the edge is stored as {reverse!r}"
    if not hint and examples:
        hint = "; names look like " + ", ".join(repr(e) for e in examples[:3])
    raise UnknownEdgeError(f"edge {name!r}: expected the name of an edge or cost function of this problem, "
                           f"found none{hint}")


def edge_linearization(
    objective: th.Objective, name: str, element_names: Optional[ElementNames] = None
) -> EdgeLinearization:
    """The error and Jacobian blocks of the residual block or cost function ``name`` at the
    current state (:class:`EdgeLinearization`); what ``problem.edge(name)`` returns.

    Evaluates the cost function that holds it once (vectorized over its blocks) and keeps that
    block: no dense Jacobian is formed (Theseus' ``cost.jacobians()`` on posegraph's one
    ``"between"`` cost is ``num_edges·d × num_poses·d``, 3.8 GB on sphere2500).

    Raises:
        UnknownEdgeError: no block or cost function of that name (the message says how the
            names look, or that the edge is stored the other way round).
    """
    names = element_names or ElementNames()
    cost, index = _find_block(objective, name)
    with torch.no_grad():
        if index is None:
            jacs, err = cost.jacobians()
            wjacs, werr = cost.weighted_jacobians_error()
            variables = [v.name for v in cost.optim_vars]
            return EdgeLinearization(
                name, cost.name, type(cost).__name__, None, variables, [False] * len(variables),
                err.detach(), werr.detach(), [j.detach() for j in jacs], [j.detach() for j in wjacs],
            )
        jacs, err = cost.block_jacobians()
        wjacs, werr = cost.weighted_block_jacobians_error()
        variables: List[str] = []
        fixed: List[bool] = []
        blocks: List[torch.Tensor] = []
        wblocks: List[torch.Tensor] = []
        for jac, wjac, lay in zip(jacs, wjacs, cost.block_layout()):
            for k in torch.nonzero(lay.rows.cpu() == index).flatten().tolist():
                element = int(lay.elements[k])
                variables.append(names(lay.variable, element))
                fixed.append(bool(lay.variable.fixed[element]))
                blocks.append(jac[:, k].detach())
                wblocks.append(wjac[:, k].detach())
        return EdgeLinearization(
            name, cost.name, type(cost).__name__, index, variables, fixed,
            err[:, index].detach(), werr[:, index].detach(), blocks, wblocks,
        )


# -- linearizations: A, AᵀA, Aᵀb ------------------------------------------------------------------


def _csr_parts(lin: Any) -> Optional[Tuple[torch.Tensor, np.ndarray, np.ndarray]]:
    a_val = getattr(lin, "A_val", None)
    if isinstance(a_val, torch.Tensor) and hasattr(lin, "A_col_ind") and hasattr(lin, "A_row_ptr"):
        return a_val, np.asarray(lin.A_col_ind), np.asarray(lin.A_row_ptr)
    return None


def _check_batch(tensor: torch.Tensor, batch_index: int) -> None:
    if not -tensor.shape[0] <= batch_index < tensor.shape[0]:
        raise IndexError(f"batch_index {batch_index} out of range for batch size {tensor.shape[0]}")


def jacobian_matrix(linearization: Any, batch_index: int = 0) -> sp.csr_matrix:
    """The weighted Jacobian ``A`` of one batch element as a SciPy CSR matrix (float64).

    Works for any linearized CSR linearization (posegraph's BlockSparseLinearization, Theseus'
    SparseLinearization: ``A_val``/``A_col_ind``/``A_row_ptr``) and Theseus'
    DenseLinearization (``A``). Call ``linearization.linearize()`` first.
    """
    lin = linearization
    csr = _csr_parts(lin)
    if csr is not None:
        a_val, col_ind, row_ptr = csr
        _check_batch(a_val, batch_index)
        val = a_val[batch_index].detach().cpu().double().numpy()
        return sp.csr_matrix((val, col_ind, row_ptr), shape=(lin.num_rows, lin.num_cols))
    a = getattr(lin, "A", None)
    if isinstance(a, torch.Tensor):
        _check_batch(a, batch_index)
        return sp.csr_matrix(a[batch_index].detach().cpu().double().numpy())
    raise ValueError(
        f"{type(lin).__name__}: no Jacobian available (not linearized yet, or not a "
        "CSR/dense linearization); call linearize() first"
    )


def normal_matrix(
    linearization: Any, batch_index: int = 0, dense: bool = False
) -> Union[sp.csr_matrix, np.ndarray]:
    """``AᵀA`` (Gauss–Newton Hessian, undamped) of one batch element.

    A SciPy CSR matrix (float64) for every linearization — Theseus' SparseLinearization
    included, whose ``AtA`` is not implemented; a dense ``ndarray`` only with ``dense=True``.
    """
    try:
        a = jacobian_matrix(linearization, batch_index)
    except ValueError:
        full = linearization.AtA  # other linearizations: their own (dense) AᵀA
        if not isinstance(full, torch.Tensor):
            raise
        _check_batch(full, batch_index)
        ata = sp.csr_matrix(full[batch_index].detach().cpu().double().numpy())
    else:
        ata = (a.T @ a).tocsr()
    ata.sort_indices()
    return ata.toarray() if dense else ata


def normal_rhs(linearization: Any, batch_index: int = 0) -> np.ndarray:
    """``Aᵀb`` of one batch element, ``(num_cols,)`` float64, with Theseus' ``b = −W e``
    (the same vector as ``linearization.Atb[batch_index, :, 0]``)."""
    b = getattr(linearization, "b", None)
    if not isinstance(b, torch.Tensor):
        raise ValueError(f"{type(linearization).__name__}: not linearized yet; call linearize() first")
    _check_batch(b, batch_index)
    a = jacobian_matrix(linearization, batch_index)
    return np.asarray(a.T @ b[batch_index].detach().cpu().double().numpy()).ravel()


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
        cost = _unwrap(cost)
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
        if max_records is not None and max_records < 0:
            raise ValueError(f"max_records: expected ≥ 0 or None, received {max_records}")
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
        """A callback naming the poses of a :class:`~posegraph.builder.PoseGraphProblem` by
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
        if candidates:
            self._found(min(candidates, key=lambda r: (r.iteration, r.quantity != ERROR)))

    # -- the trace -----------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        """The trace as strict-JSON-ready data: ``{"format", "version", "settings",
        "iterations": [{"iteration", "error", "step_norm", "damping", "cost_functions":
        {NAME: {"error_norm", "jacobian_norms": [...]}}}], "first_nonfinite", "status",
        "stop_reason"}`` (the last two per problem, null before the solve ended); non-finite
        floats are written as the strings ``"nan"``, ``"inf"``, ``"-inf"``
        (:func:`posegraph.inspect_trace.load_trace` turns them back into floats)."""
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
        from .io.output import write_text_atomic

        write_text_atomic(path, json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")


from .inspect_trace import load_trace, run_inspect  # noqa: E402  (re-exported)

__all__ = [
    "DebugCallback",
    "NonFiniteReport",
    "NonFiniteError",
    "EdgeLinearization",
    "UnknownEdgeError",
    "edge_linearization",
    "ElementNames",
    "NameFilter",
    "locate_nonfinite",
    "check_initial",
    "jacobian_matrix",
    "normal_matrix",
    "normal_rhs",
    "load_trace",
    "run_inspect",
    "TRACE_FORMAT",
    "TRACE_VERSION",
]
