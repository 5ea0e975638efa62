"""What the builder produces: :class:`PoseGraphProblem` — the Theseus objective, its packed
poses and points, edge names, and the way back to the user's variables — and the objective
subclass that refuses costs over packed variables added after the build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple
import numpy as np
import theseus as th
import torch
from posegraph.errors import PoseGraphError
from posegraph.model.between import BetweenEdges
from posegraph.model.observations import PointObservations
from posegraph.graph import PoseGraph
from posegraph.model.edge import EdgeLinearization, edge_linearization
from posegraph.model.mesh_cost import LaplacianSmoothingCost
from posegraph.model.names import ElementNames
from posegraph.model.variables import ManifoldArray
from posegraph.model.checks import BuilderError


@dataclass
class PoseGraphProblem:
    """A built pose-graph problem: the Theseus objective and the handles to read it back.

    Attributes:
        objective: the ``th.Objective`` (vectorized edge cost + any user costs).
        poses: all poses packed in one ManifoldArray ``(B, N, *shape)``.
        between: the vectorized relative-pose cost.
        kind: ``"SE2"`` or ``"SE3"``.
        ids: vertex ids ``(N,)`` (file ids, or builder insertion order).
        pose_variables: the user's own pose variables (builder path), written back by
            :meth:`write_back`.
        graph: the source PoseGraph (file path), if any.
        points: all 3D points packed in one ManifoldArray ``(B, P, 3)`` (graphs with
            landmarks), else None; ``observations`` is their pose → point cost and
            ``mesh_cost`` the Laplacian regularizer over them, when built with a mesh.
        point_variables: the user's own ``th.Point3`` variables (builder path).
        user_costs: the user's own cost functions, as given (those over packed poses and
            points enter the objective wrapped in a :class:`~posegraph.model.user_costs.PackedCost`
            of the same name).
    """

    objective: th.Objective
    poses: ManifoldArray
    between: BetweenEdges
    kind: str
    ids: torch.Tensor
    pose_variables: Optional[List[th.Manifold]] = None
    graph: Optional[PoseGraph] = None
    user_costs: List[th.CostFunction] = field(default_factory=list)
    points: Optional[ManifoldArray] = None
    observations: Optional[PointObservations] = None
    mesh_cost: Optional[LaplacianSmoothingCost] = None
    point_variables: Optional[List[th.Point3]] = None

    @property
    def num_poses(self) -> int:
        """Number of poses, fixed ones included."""
        return self.poses.num_elements

    @property
    def num_edges(self) -> int:
        """Number of between edges."""
        return self.between.num_blocks

    def error(self) -> torch.Tensor:
        """GTSAM's error ½ Σ eᵀΩe (= Theseus' error metric) per batch element, ``(B,)``;
        with a robust kernel, ``½ Σ ρ(eᵀΩe)``."""
        return self.objective.error_metric()

    def pose_tensor(self) -> torch.Tensor:
        """Current poses ``(B, N, *shape)``."""
        return self.poses.tensor

    def write_back(self) -> None:
        """Copy the packed poses (and points) into the user's own variables (builder path)."""
        for k, var in enumerate(self.pose_variables or []):
            var.update(self.poses.tensor[:, k])
        if self.points is not None:
            for k, var in enumerate(self.point_variables or []):
                var.update(self.points.tensor[:, k])

    def edge(self, name: str) -> "EdgeLinearization":
        """The error and Jacobian blocks of one edge (``"EDGE_SE3:QUAT 12 13"``; any residual
        block or cost function by name) at the current poses, without the dense Jacobian
        (:func:`posegraph.debug.edge_linearization`); raises
        :class:`~posegraph.debug.UnknownEdgeError` naming ``name`` when there is none."""
        return edge_linearization(self.objective, name, ElementNames.for_problem(self))

    def point_tensor(self) -> Optional[torch.Tensor]:
        """Current points ``(B, P, 3)``, or None without landmarks."""
        return None if self.points is None else self.points.tensor

    def to_graph(self, batch_index: Optional[int] = None) -> PoseGraph:
        """A PoseGraph with the current poses (one batch element when ``batch_index`` given,
        or when the batch has a single element).

        ``batch_index``: an integer in ``[-B, B)`` (negative counts from the end, as in Python),
        or None; anything else is a :class:`~posegraph.errors.PoseGraphError` naming the valid range."""
        if self.graph is None:
            raise ValueError("this problem was not built from a PoseGraph")
        poses = self.poses.tensor.detach()
        points = None if self.points is None else self.points.tensor.detach()
        batch = poses.shape[0]
        if batch_index is not None:
            if isinstance(batch_index, (bool, np.bool_)) or not isinstance(batch_index, (int, np.integer)):
                raise PoseGraphError(
                    f"batch_index: expected an integer in [{-batch}, {batch}) or None, received "
                    f"{type(batch_index).__name__} {batch_index!r}"
                )
            if not -batch <= int(batch_index) < batch:
                raise PoseGraphError(
                    f"batch_index: expected an integer in [{-batch}, {batch}) (the problem's batch "
                    f"size is {batch}), received {int(batch_index)}"
                )
        if batch_index is not None or batch == 1:
            index = 0 if batch_index is None else int(batch_index)
            poses = poses[index]
            points = None if points is None else points[index]
        graph = self.graph.with_poses(poses)
        return graph if points is None else graph.with_points(points)


class _PackedObjective(th.Objective):
    """A ``th.Objective`` that refuses a cost over a variable the builder packed: Theseus would
    take it for a new variable, apart from the packed one, and the cost would have no effect
    on the solution (:meth:`PoseGraphBuilder.add_cost` is the way in)."""

    def __init__(self, dtype: Optional[torch.dtype] = None):
        super().__init__(dtype=dtype)
        #: ``id(user variable) → (variable, description)`` of every packed user variable.
        self.packed_variables: Dict[int, Tuple[th.Variable, str]] = {}

    def add(self, cost_function: th.CostFunction) -> None:
        """Theseus' ``add``, after checking that no variable of the cost is packed."""
        weight = getattr(cost_function, "weight", None)
        variables = list(cost_function.optim_vars) + list(cost_function.aux_vars)
        if weight is not None:
            variables += list(weight.optim_vars) + list(weight.aux_vars)
        for var in variables:
            hit = self.packed_variables.get(id(var))
            if hit is not None and hit[0] is var:
                raise BuilderError(
                    f"cost {cost_function.name!r}: uses {hit[1]}, which the builder packed into the "
                    "problem's variables; objective.add would treat it as a new variable, apart from "
                    "the optimized one: add the cost with PoseGraphBuilder.add_cost before build()"
                )
            self._check_unique_name(cost_function, var)
        super().add(cost_function)

    def _check_unique_name(self, cost_function: th.CostFunction, var: th.Variable) -> None:
        """Refuse ``var`` when another variable object of its name is in the objective already
        (Theseus tells variables apart by name, and refuses this with a bare ``ValueError``),
        naming both costs and the name."""
        existing = self._all_variables.get(var.name)
        if existing is None or existing is var:
            return
        users = self.functions_for_optim_vars.get(existing, []) + self.functions_for_aux_vars.get(existing, [])
        owners = []
        for fn in users:  # a cost, or a cost's weight: named by its cost
            cost = fn if isinstance(fn, th.CostFunction) else next(
                (c for c in self.cost_functions.values() if c.weight is fn), None
            )
            if cost is not None and repr(cost.name) not in owners:
                owners.append(repr(cost.name))
        other = f"cost {owners[0]}" if owners else "another cost"
        raise BuilderError(
            f"cost {cost_function.name!r}: variable {var.name!r}: expected a name no other variable "
            f"of the problem has (Theseus tells variables apart by name), received the name of a "
            f"different variable object of {other}; rename one of them, or let both costs use the "
            "same variable object"
        )
