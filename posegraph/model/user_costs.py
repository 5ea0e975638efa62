"""Users' own Theseus cost functions over the poses and points the builder packs.

:class:`~posegraph.model.builder.PoseGraphBuilder` packs the user's ``th.SE3``/``th.SE2`` poses
and ``th.Point3`` points into one :class:`~posegraph.model.variables.ManifoldArray` each
(``"poses"``, ``"points"``), so a user's ``th.CostFunction`` over, say, ``x3`` cannot enter the
objective as it is: Theseus would see ``x3`` as a new variable, apart from the packed one.
:class:`PackedCost` is the bridge, through Theseus' ``CostFunction`` extension point:

* its optimization variables are the packed variables the user cost touches, plus the user
  cost's other optimization variables (the user's own, unpacked ones);
* before each evaluation it points each packed user variable at its row of the packed
  tensor (``x3.tensor = poses.tensor[:, k]``, a view: gradients flow back to the packed
  tensor), then evaluates the user cost as it is — its own weight, robust loss and Jacobians;
* it is a :class:`~posegraph.model.costs.BlockSparseCostFunction` of one residual block: each user
  Jacobian ``(B, dim, dof)`` is one Jacobian block at the element's columns, placed by
  :class:`~posegraph.solve.linearization.BlockSparseLinearization` like any edge's — never a
  dense Jacobian over all packed columns.

The tangent conventions agree: a ManifoldArray retracts each element with the element class's
own ``X ⊕ δ = X · Exp(δ)`` (points: ``x + δ``), the convention of the user cost's Jacobians.

:class:`PosePriors` and :class:`PositionPriors` are the builder's own priors
(``add_prior``, ``add_position_prior``), vectorized like the edges: one cost for all of them.
:class:`PositionPrior` is the same position residual as an ordinary Theseus cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple

import theseus as th
import torch

from posegraph.model.between import _BETWEEN_KERNELS
from posegraph.model.costs import BlockSparseCostFunction, JacobianBlocks
from posegraph.model.variables import ManifoldArray
from posegraph.model.weights import BlockCostWeight


@dataclass
class PriorTerms:
    """The builder's priors of one kind, handed to ``build_problem``: ``kind`` ``"pose"``
    (:class:`PosePriors`) or ``"position"`` (:class:`PositionPriors`), the pose of each
    ``elements`` ``(K,)``, ``values`` ``(B, K, …)``, ``information`` ``(B, K, d, d)`` and
    ``names``."""

    kind: str
    elements: torch.Tensor
    values: torch.Tensor
    information: torch.Tensor
    names: List[str]


@dataclass(frozen=True)
class PackedSlot:
    """Where a user variable lives in the problem: element ``element`` of the packed variable
    named ``packed`` (``"poses"`` or ``"points"``)."""

    packed: str
    element: int


class PackedCost(BlockSparseCostFunction):
    """A user's ``th.CostFunction`` evaluated on the rows of packed variables (module doc).

    Args:
        cost: the user's cost function, left unchanged (its weight is this cost's weight).
        slots: one per optimization variable of ``cost``, in its order: the
            :class:`PackedSlot` of a packed user variable, or ``None`` for the user's own.
        packed: the packed variables by name (``{"poses": ManifoldArray, …}``).
    """

    def __init__(
        self,
        cost: th.CostFunction,
        slots: Sequence[Optional[PackedSlot]],
        packed: Mapping[str, ManifoldArray],
    ):
        super().__init__(cost.weight, cost.dim(), 1, name=cost.name, block_names=[cost.name])
        self.cost = cost
        self.slots = list(slots)
        if len(self.slots) != cost.num_optim_vars():
            raise ValueError(f"cost {cost.name!r}: expected {cost.num_optim_vars()} slots, received {len(self.slots)}")
        for key in sorted({s.packed for s in self.slots if s is not None}):
            setattr(self, f"packed_{key}", packed[key])
            self.register_optim_var(f"packed_{key}")
        for i, slot in enumerate(self.slots):
            if slot is None:
                setattr(self, f"own_{i}", cost.optim_var_at(i))
                self.register_optim_var(f"own_{i}")
        for j, var in enumerate(cost.aux_vars):
            setattr(self, f"aux_{j}", var)
            self.register_aux_var(f"aux_{j}")
        self._row = torch.zeros(1, dtype=torch.long)

    # -- the user cost on the current packed values ---------------------------------------------
    def _sync(self) -> None:
        """Point the user cost's packed variables at their rows of the packed tensors, and its
        other variables at this cost's (the same objects, unless an objective copy replaced
        them)."""
        cost = self.cost
        for i, slot in enumerate(self.slots):
            if slot is None:
                own = getattr(self, f"own_{i}")
                if cost.optim_var_at(i) is not own:
                    cost.set_optim_var_at(i, own)
            else:
                packed = getattr(self, f"packed_{slot.packed}")
                cost.optim_var_at(i).tensor = packed.tensor[:, slot.element]
        for j in range(cost.num_aux_vars()):
            aux = getattr(self, f"aux_{j}")
            if cost.aux_var_at(j) is not aux:
                cost.set_aux_var_at(j, aux)

    def _as_blocks(self, jacs: Sequence[torch.Tensor], err: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """User Jacobians ``(B, dim, dof)`` and error ``(B, dim)`` as one residual block."""
        blocks = [j.reshape(j.shape[0], 1, self.block_dim, j.shape[-1]) for j in jacs]
        return blocks, err.reshape(err.shape[0], 1, self.block_dim)

    # -- BlockSparseCostFunction interface ------------------------------------------------------
    def block_layout(self) -> List[JacobianBlocks]:
        layout = []
        for i, slot in enumerate(self.slots):
            if slot is None:
                layout.append(JacobianBlocks(getattr(self, f"own_{i}"), self._row, self._row))
            else:
                var = getattr(self, f"packed_{slot.packed}")
                element = torch.tensor([slot.element], dtype=torch.long, device=var.tensor.device)
                layout.append(JacobianBlocks(var, self._row.to(var.tensor.device), element))
        return layout

    def block_error(self) -> torch.Tensor:
        self._sync()
        err = self.cost.error()
        return err.reshape(err.shape[0], 1, self.block_dim)

    def block_jacobians(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        self._sync()
        return self._as_blocks(*self.cost.jacobians())

    def weighted_error(self) -> torch.Tensor:
        """The user's cost's weighted error, at the packed variable's current values."""
        self._sync()
        return self.cost.weighted_error()

    def weighted_block_error(self) -> torch.Tensor:
        werr = self.weighted_error()
        return werr.reshape(werr.shape[0], 1, self.block_dim)

    def weighted_block_jacobians_error(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """The user cost's own weighted Jacobians and error (its weight, its robust loss)."""
        self._sync()
        return self._as_blocks(*self.cost.weighted_jacobians_error())

    def weighted_jacobians_error(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Dense weighted Jacobians per optimization variable (Theseus' dense linearizations)."""
        return self._dense_jacobians(*self.weighted_block_jacobians_error())

    def _copy_impl(self, new_name: Optional[str] = None) -> "PackedCost":
        packed = {s.packed: getattr(self, f"packed_{s.packed}").copy() for s in self.slots if s is not None}
        return PackedCost(self.cost.copy(new_name=new_name), self.slots, packed)


class PositionPrior(th.CostFunction):
    """A prior on a pose's position: error ``t(X) − p`` (``p`` of the pose's dimension).

    With the right perturbation ``X ⊕ δ = X · Exp(δ)``, ``δ = (ρ, φ)`` (Theseus' order), the
    position moves as ``t ← t + R ρ`` to first order, so ``∂e/∂δ = [R | 0]`` (Solà, Deray,
    Atchuthan 2018, "A micro Lie theory for state estimation in robotics", eq. 179 for
    ``X·p`` at ``p = 0``; the same for SE(2) with ``R`` 2×2).

    Args:
        pose: a ``th.SE3`` or ``th.SE2`` variable.
        position: a ``th.Variable`` ``(B|1, 3)`` (SE3) or ``(B|1, 2)`` (SE2).
        weight: any Theseus cost weight of dimension 3 (SE3) or 2 (SE2).
    """

    def __init__(self, pose: th.Manifold, position: th.Variable, weight: th.CostWeight, name: Optional[str] = None):
        super().__init__(weight, name=name)
        self.pose = pose
        self.position = position
        self.register_optim_vars(["pose"])
        self.register_aux_vars(["position"])

    def _rotation_translation(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return _rotation_translation(self.pose.tensor, type(self.pose))

    def error(self) -> torch.Tensor:
        """``t(X) − xyz``, ``(B, 3)`` (SE2: ``(B, 2)``)."""
        return self._rotation_translation()[1] - self.position.tensor

    def jacobians(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """``∂(t(X) − xyz)/∂δ = [R | 0]`` for the right perturbation ``X·Exp(δ)`` (translation
        first), and the error."""
        rot, t = self._rotation_translation()
        jac = torch.cat([rot, torch.zeros_like(rot[:, :, : self.pose.dof() - rot.shape[-1]])], dim=-1)
        err = t - self.position.tensor
        return [jac.expand(err.shape[0], -1, -1)], err

    def dim(self) -> int:
        """The residual's dimension: 3 (SE3) or 2 (SE2)."""
        return self.position.tensor.shape[-1]

    def _copy_impl(self, new_name: Optional[str] = None) -> "PositionPrior":
        return PositionPrior(self.pose.copy(), self.position.copy(), self.weight.copy(), name=new_name)


def _rotation_translation(x: torch.Tensor, element_cls: type) -> Tuple[torch.Tensor, torch.Tensor]:
    """``R`` ``(..., d, d)`` and ``t`` ``(..., d)`` of SE3 ``(..., 3, 4)`` or SE2 ``(..., 4)``
    tensors (SE2: ``R = [[c, −s], [s, c]]``)."""
    if element_cls is th.SE2:
        c, s = x[..., 2], x[..., 3]
        return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2), x[..., :2]
    return x[..., :3], x[..., 3]


class PosePriors(BlockSparseCostFunction):
    """Priors ``Zₖ`` on poses ``X_{e(k)}``: ``eₖ = Log(Zₖ⁻¹ X_{e(k)})`` (Theseus'
    ``th.Difference``, GTSAM's ``PriorFactor``), all in one cost.

    It is the between residual ``Log(Z⁻¹ Xᵢ⁻¹ Xⱼ)`` with ``Xᵢ = I``, so the edges' kernels give
    it and its Jacobian ``∂e/∂δ = J_r⁻¹(e)`` (see :class:`~posegraph.model.between.BetweenEdges`).

    Args:
        poses: the packed poses (``th.SE3`` or ``th.SE2`` elements).
        elements: ``(K,)`` the pose of each prior.
        measurements: ``th.Variable`` ``(B|1, K, *element_shape)``.
        weight: a block weight with ``block_dim`` = pose dof.
    """

    def __init__(
        self,
        poses: ManifoldArray,
        elements: torch.Tensor,
        measurements: th.Variable,
        weight: BlockCostWeight,
        name: Optional[str] = None,
        prior_names: Optional[Sequence[str]] = None,
    ):
        super().__init__(weight, poses.element_dof, int(elements.shape[0]), name, prior_names)
        self.poses = poses
        self.measurements = measurements
        self.elements = elements.to(device=poses.tensor.device, dtype=torch.long)
        self._rows = torch.arange(self.num_blocks, device=self.elements.device)
        self._kernels = _BETWEEN_KERNELS[poses.element_cls]
        identity = torch.eye(3, 4) if poses.element_cls is th.SE3 else torch.tensor([0.0, 0.0, 1.0, 0.0])
        self._identity = identity.to(poses.tensor)
        self.register_optim_vars(["poses"])
        self.register_aux_vars(["measurements"])

    def block_layout(self) -> List[JacobianBlocks]:
        return [JacobianBlocks(self.poses, self._rows, self.elements)]

    def _parts(self):
        x = self.poses.tensor.index_select(1, self.elements)
        z = self.measurements.tensor
        size = (max(x.shape[0], z.shape[0]), self.num_blocks, *self.poses.element_shape)
        return self._kernels.log_parts(self._identity.to(x).expand(size), x.expand(size), z.expand(size))

    def block_error(self) -> torch.Tensor:
        return self._parts().err

    def block_jacobians(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        parts = self._parts()
        return [self._kernels.jacobian(parts)], parts.err

    def _copy_impl(self, new_name: Optional[str] = None) -> "PosePriors":
        return PosePriors(
            self.poses.copy(), self.elements.clone(), self.measurements.copy(), self.weight.copy(),
            name=new_name, prior_names=self.block_names,
        )


class PositionPriors(BlockSparseCostFunction):
    """Priors on pose positions (GPS): ``eₖ = t(X_{e(k)}) − pₖ``, all in one cost, with
    ``∂e/∂δ = [R | 0]`` (see :class:`PositionPrior`).

    Args:
        poses: the packed poses (``th.SE3``: ``p`` in 3D; ``th.SE2``: in 2D).
        elements: ``(K,)`` the pose of each prior.
        positions: ``th.Variable`` ``(B|1, K, 3)`` (SE2: ``(B|1, K, 2)``).
        weight: a block weight with ``block_dim`` = 3 (SE2: 2).
    """

    def __init__(
        self,
        poses: ManifoldArray,
        elements: torch.Tensor,
        positions: th.Variable,
        weight: BlockCostWeight,
        name: Optional[str] = None,
        prior_names: Optional[Sequence[str]] = None,
    ):
        super().__init__(weight, positions.tensor.shape[-1], int(elements.shape[0]), name, prior_names)
        self.poses = poses
        self.positions = positions
        self.elements = elements.to(device=poses.tensor.device, dtype=torch.long)
        self._rows = torch.arange(self.num_blocks, device=self.elements.device)
        self.register_optim_vars(["poses"])
        self.register_aux_vars(["positions"])

    def block_layout(self) -> List[JacobianBlocks]:
        return [JacobianBlocks(self.poses, self._rows, self.elements)]

    def _terms(self) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.poses.tensor.index_select(1, self.elements)
        rot, t = _rotation_translation(x, self.poses.element_cls)
        return rot, t - self.positions.tensor

    def block_error(self) -> torch.Tensor:
        return self._terms()[1]

    def block_jacobians(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        rot, err = self._terms()
        zeros = rot.new_zeros(*rot.shape[:-1], self.poses.element_dof - rot.shape[-1])
        jac = torch.cat([rot, zeros], dim=-1).expand(err.shape[0], -1, -1, -1)
        return [jac], err

    def _copy_impl(self, new_name: Optional[str] = None) -> "PositionPriors":
        return PositionPriors(
            self.poses.copy(), self.elements.clone(), self.positions.copy(), self.weight.copy(),
            name=new_name, prior_names=self.block_names,
        )
