"""Landmarks seen from poses as one cost: :class:`PointObservations`, the residual
``Rᵢᵀ (p − tᵢ) − z`` (the point in the sensor frame against its measurement) of every
pose → point observation, with its Jacobian blocks.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union
import theseus as th
import torch
from posegraph.model.variables import ManifoldArray
from posegraph.model.weights import BlockCostWeight
from posegraph.model.costs import BlockSparseCostFunction, JacobianBlocks


def _skew(v: torch.Tensor) -> torch.Tensor:
    """``[v]×`` ``(..., 3, 3)`` with ``[v]× w = v × w``."""
    zero = torch.zeros_like(v[..., 0])
    x, y, z = v.unbind(-1)
    return torch.stack(
        [zero, -z, y, z, zero, -x, -y, x, zero], dim=-1
    ).reshape(*v.shape[:-1], 3, 3)


class PointObservations(BlockSparseCostFunction):
    """3D points observed from SE3 poses: ``r = (X·O)⁻¹ p − z`` per observation (g2o's
    ``EdgeSE3PointXYZ``, tags ``EDGE_SE3_TRACKXYZ``/``PARAMS_SE3OFFSET``).

    With ``X = [R | t]``, sensor offset ``O = [R_o | t_o]``, ``y = Rᵀ(p − t)`` (the point in
    the body frame) and the right perturbation ``X ⊕ δ = X · Exp(δ)``, ``δ = (ρ, φ)``
    (Theseus' order), to first order ``R ← R(I + [φ]×)`` and ``t ← t + Rρ``, so
    ``y ← y − ρ + [y]× φ``. Hence (Barfoot 2017, "State Estimation for Robotics", §7.3.1):
    ``∂r/∂δ = R_oᵀ [−I | [y]×]`` and ``∂r/∂p = R_oᵀ Rᵀ``.

    Args:
        poses: packed ``th.SE3`` poses.
        points: packed ``th.Point3`` points.
        observations: ``(M, 2)`` long, ``(pose element, point element)``.
        measurements: ``th.Variable`` ``(B, M, 3)``, the points in the sensor frame.
        offsets: ``th.Variable`` ``(1, M, 3, 4)``, the sensor offset of each observation.
        weight: a block weight with ``block_dim = 3`` (e.g. FullInformationWeight).
    """

    def __init__(
        self,
        poses: ManifoldArray,
        points: ManifoldArray,
        observations: torch.Tensor,
        measurements: th.Variable,
        offsets: th.Variable,
        weight: BlockCostWeight,
        name: Optional[str] = None,
        observation_names: Optional[Union[Sequence[str], Callable[[], Sequence[str]]]] = None,
    ):
        if poses.element_cls is not th.SE3 or points.element_cls is not th.Point3:
            raise TypeError(
                "PointObservations: expected th.SE3 poses and th.Point3 points, received "
                f"th.{poses.element_cls.__name__} and th.{points.element_cls.__name__}"
            )
        super().__init__(weight, 3, observations.shape[0], name, observation_names)
        self.poses = poses
        self.points = points
        self.measurements = measurements
        self.offsets = offsets
        self.observations = observations.to(device=poses.tensor.device, dtype=torch.long)
        self._rows = torch.arange(observations.shape[0], device=self.observations.device)
        self.register_optim_vars(["poses", "points"])
        self.register_aux_vars(["measurements", "offsets"])

    def block_layout(self) -> List[JacobianBlocks]:
        return [
            JacobianBlocks(self.poses, self._rows, self.observations[:, 0]),
            JacobianBlocks(self.points, self._rows, self.observations[:, 1]),
        ]

    def _terms(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``R (B,M,3,3)``, ``R_o (1,M,3,3)``, ``y (B,M,3)``, ``r (B,M,3)``."""
        x = self.poses.tensor.index_select(1, self.observations[:, 0].contiguous())
        p = self.points.tensor.index_select(1, self.observations[:, 1].contiguous())
        z = self.measurements.tensor
        batch = max(x.shape[0], p.shape[0], z.shape[0])
        rot, t = x[..., :3], x[..., 3]
        y = torch.einsum("bmji,bmj->bmi", rot, p - t).expand(batch, -1, -1)
        off = self.offsets.tensor
        rot_o, t_o = off[..., :3], off[..., 3]
        r = torch.einsum("bmji,bmj->bmi", rot_o, y - t_o) - z
        return rot, rot_o, y, r

    def block_error(self) -> torch.Tensor:
        return self._terms()[3]

    def block_jacobians(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        rot, rot_o, y, r = self._terms()
        rot_o_t = rot_o.transpose(-1, -2)
        j_pose = torch.cat([-rot_o_t.expand(y.shape[0], -1, -1, -1), rot_o_t @ _skew(y)], dim=-1)
        j_point = (rot_o_t @ rot.transpose(-1, -2)).expand(y.shape[0], -1, -1, -1)
        return [j_pose, j_point], r

    def _copy_impl(self, new_name: Optional[str] = None) -> "PointObservations":
        return PointObservations(
            self.poses.copy(),
            self.points.copy(),
            self.observations.clone(),
            self.measurements.copy(),
            self.offsets.copy(),
            self.weight.copy(),
            name=new_name,
            observation_names=self.block_names,
        )
