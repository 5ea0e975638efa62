"""One edge's linearization by name: its error and Jacobian blocks at the current poses
(``problem.edge("EDGE_SE3:QUAT 12 13")``), without forming the dense Jacobian of the cost
that holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple
import theseus as th
import torch
from posegraph.model.costs import BlockSparseCostFunction
from posegraph.errors import PoseGraphError
from posegraph.model.names import ElementNames


def unwrap_cost(cost: th.CostFunction) -> th.CostFunction:
    """The user's cost behind Theseus' vectorization wrapper (``_CostFunctionWrapper``)."""
    return getattr(cost, "cost_fn", cost)


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
        cost = unwrap_cost(cost)
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
        if any(reverse in (unwrap_cost(c).block_names or []) for c in objective.cost_functions.values()
               if isinstance(unwrap_cost(c), BlockSparseCostFunction)):
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
