"""Locating the first non-finite value of an objective: which cost, which element, which
variables, error or Jacobian (:func:`locate_nonfinite`, :func:`check_initial`).

A solve that goes non-finite ends ``failed``; the report names the first edge whose error or
Jacobian is NaN or infinite, in the order the objective holds them, so that the user can look
at that line of the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
import numpy as np
import theseus as th
import torch
from posegraph.errors import OptimizationError
from posegraph.model.names import ElementNames, NameFilter
from posegraph.debug.catalog import _Catalog, _CostStats, _evaluate


ERROR = "error"


JACOBIAN = "jacobian"


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
        trial_step: the values were those of a trial step the optimizer refused (its error
            was not finite; the solve went on from the values before it).
    """

    iteration: int
    cost_function: str
    variables: List[str]
    quantity: str
    jacobian_of: List[str] = field(default_factory=list)
    cost_type: str = ""
    trial_step: bool = False

    def to_dict(self) -> Dict[str, Any]:
        """The report as a JSON-ready dict (a trace file's ``first_nonfinite``)."""
        return {
            "iteration": self.iteration,
            "cost_function": self.cost_function,
            "variables": list(self.variables),
            "quantity": self.quantity,
            "jacobian_of": list(self.jacobian_of),
            "cost_type": self.cost_type,
            "trial_step": self.trial_step,
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
            trial_step=data.get("trial_step") is True,
        )

    def __str__(self) -> str:
        what = f"non-finite {self.quantity} in cost function {self.cost_function!r}"
        if self.quantity == JACOBIAN and self.jacobian_of:
            what += f" (d/d {', '.join(self.jacobian_of)})"
        where = f"iteration {self.iteration}" + (" (a trial step, refused)" if self.trial_step else "")
        return f"{where}: {what}; variables: {', '.join(self.variables)}"


class NonFiniteError(OptimizationError):
    """Raised by :class:`DebugCallback` (``stop_on_nonfinite=True``) to stop an optimization
    at the first non-finite error or Jacobian; ``report`` says where."""

    def __init__(self, report: NonFiniteReport):
        self.report = report
        super().__init__(str(report))


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
