"""Vectorized costs (posegraph.costs): PointObservations' residual matches g2o's definition and
its analytic Jacobians match autograd through Theseus' own retraction."""

from __future__ import annotations

import pytest
import theseus as th
import torch

from posegraph import ManifoldArray, PointObservations
from posegraph.weights import FullInformationWeight, sqrt_information

F64 = torch.float64


def _observation_cost(batch: int = 1, seed: int = 0, dtype=F64) -> PointObservations:
    g = torch.Generator().manual_seed(seed)
    poses = th.SE3.rand(batch * 4, generator=g, dtype=dtype).tensor.reshape(batch, 4, 3, 4)
    points = torch.randn(batch, 5, 3, generator=g, dtype=dtype)
    obs = torch.tensor([[0, 0], [0, 1], [1, 1], [2, 3], [3, 4], [1, 2], [3, 0]])
    meas = torch.randn(batch, obs.shape[0], 3, generator=g, dtype=dtype)
    offsets = th.SE3.rand(obs.shape[0], generator=g, dtype=dtype).tensor.unsqueeze(0)
    a = torch.randn(obs.shape[0], 3, 3, generator=g, dtype=dtype)
    info = (a @ a.transpose(-1, -2) + torch.eye(3, dtype=dtype)).unsqueeze(0)
    fixed = torch.tensor([True, False, False, False])
    return PointObservations(
        ManifoldArray(poses, th.SE3, fixed, name="poses"),
        ManifoldArray(points, th.Point3, name="points"),
        obs,
        th.Variable(meas, name="meas"),
        th.Variable(offsets, name="offsets"),
        FullInformationWeight(th.Variable(sqrt_information(info), name="w")),
    )


def test_residual_is_point_in_sensor_frame_minus_measurement():
    cost = _observation_cost()
    x = cost.poses.tensor[0]
    p = cost.points.tensor[0]
    for k, (i, j) in enumerate(cost.observations.tolist()):
        xh = torch.cat([x[i], torch.tensor([[0, 0, 0, 1.0]], dtype=F64)])
        oh = torch.cat([cost.offsets.tensor[0, k], torch.tensor([[0, 0, 0, 1.0]], dtype=F64)])
        q = torch.linalg.inv(xh @ oh) @ torch.cat([p[j], torch.ones(1, dtype=F64)])
        torch.testing.assert_close(cost.block_error()[0, k], q[:3] - cost.measurements.tensor[0, k])


@pytest.mark.parametrize("batch", [1, 3])
def test_jacobians_match_autograd(batch):
    cost = _observation_cost(batch)
    jacs, err = cost.block_jacobians()
    x0, p0 = cost.poses.tensor.clone(), cost.points.tensor.clone()

    def error_at(dx: torch.Tensor, dp: torch.Tensor) -> torch.Tensor:
        # right perturbation X·Exp(δ) with Theseus' own exp map, points x + δ
        exp = th.SE3.exp_map(dx.reshape(-1, 6)).tensor.reshape(x0.shape)
        cost.poses.update(th.SE3(tensor=x0.reshape(-1, 3, 4)).compose(th.SE3(tensor=exp.reshape(-1, 3, 4))).tensor.reshape(x0.shape))
        cost.points.update(p0 + dp)
        return cost.block_error()

    dx = torch.zeros(batch, 4, 6, dtype=F64)
    dp = torch.zeros(batch, 5, 3, dtype=F64)
    jx, jp = torch.autograd.functional.jacobian(error_at, (dx, dp))  # (B, M, 3, B, 4, 6), (B, M, 3, B, 5, 3)
    obs = cost.observations
    for b in range(batch):
        for k, (i, j) in enumerate(obs.tolist()):
            torch.testing.assert_close(jacs[0][b, k], jx[b, k, :, b, i], atol=1e-10, rtol=1e-8)
            torch.testing.assert_close(jacs[1][b, k], jp[b, k, :, b, j], atol=1e-10, rtol=1e-8)


def test_dense_jacobians_drop_fixed_pose_columns():
    cost = _observation_cost()
    (jx, jp), _ = cost.jacobians()
    assert jx.shape == (1, 7 * 3, 3 * 6)  # pose 0 is fixed: no columns
    assert jp.shape == (1, 7 * 3, 5 * 3)
    blocks, _ = cost.block_jacobians()
    torch.testing.assert_close(jx[0, 6:9, 0:6], blocks[0][0, 2])  # observation 2 sees pose 1
    assert not jx[0, 0:6].any()  # observations 0, 1 see the fixed pose 0


def test_refuses_wrong_element_classes():
    cost = _observation_cost()
    with pytest.raises(TypeError, match="th.SE3 poses and th.Point3 points"):
        PointObservations(cost.points, cost.poses, cost.observations, cost.measurements, cost.offsets, cost.weight)
