"""GTSAM's Levenberg–Marquardt on a :class:`~posegraph.graph.PoseGraph`: the reference the tests
and benchmarks compare posegraph with, where GTSAM is installed (``pip install gtsam``; the
``posegraph[bench]`` extra).

The problem is the one of ``../shared/datasets/README.md``: ``BetweenFactorPose3`` /
``BetweenFactorPose2`` with the file's full information, a tight prior on the gauge poses
(the FIX'ed ones, else the first), LM with at most ``max_iterations`` iterations and relative
and absolute tolerance 1e-10. GTSAM's ``Pose3`` tangent is (rotation, translation), posegraph's
and g2o's (translation, rotation): the information is permuted accordingly (``_PERMUTE_SE3``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from posegraph.errors import PoseGraphError
from posegraph.graph import PoseGraph

#: posegraph's SE3 tangent order (t, ω) → GTSAM's (ω, t)
_PERMUTE_SE3 = np.array([3, 4, 5, 0, 1, 2])
#: the prior's sigma on the gauge poses
PRIOR_SIGMA = 1e-6


@dataclass
class GtsamResult:
    """GTSAM's run: final error ½ Σ eᵀΩe over the graph's edges (the prior left out),
    iterations, wall time of the optimization (in-process) and the poses (posegraph's layout)."""

    initial_error: float
    final_error: float
    iterations: int
    time_s: float
    poses: torch.Tensor


def _gtsam() -> Any:
    try:
        import gtsam
    except ImportError:
        raise PoseGraphError(
            "GTSAM is not installed: pip install 'posegraph[bench]' (or pip install gtsam)"
        ) from None
    return gtsam


def _values(gtsam: Any, kind: str, poses: np.ndarray) -> Any:
    values = gtsam.Values()
    for k, x in enumerate(poses):
        if kind == "SE3":
            values.insert(k, gtsam.Pose3(gtsam.Rot3(x[:, :3]), x[:, 3]))
        else:
            values.insert(k, gtsam.Pose2(x[0], x[1], float(np.arctan2(x[3], x[2]))))
    return values


def _factors(gtsam: Any, graph: PoseGraph) -> Any:
    factors = gtsam.NonlinearFactorGraph()
    z = graph.measurements.detach().double().cpu().numpy()
    info = graph.information.detach().double().cpu().numpy()
    for e, (i, j) in enumerate(graph.edges.tolist()):
        if graph.kind == "SE3":
            p = _PERMUTE_SE3
            noise = gtsam.noiseModel.Gaussian.Information(info[e][np.ix_(p, p)])
            meas = gtsam.Pose3(gtsam.Rot3(z[e][:, :3]), z[e][:, 3])
            factors.add(gtsam.BetweenFactorPose3(i, j, meas, noise))
        else:
            noise = gtsam.noiseModel.Gaussian.Information(info[e])
            meas = gtsam.Pose2(z[e][0], z[e][1], float(np.arctan2(z[e][3], z[e][2])))
            factors.add(gtsam.BetweenFactorPose2(i, j, meas, noise))
    return factors


def _to_tensor(gtsam: Any, kind: str, values: Any, n: int) -> torch.Tensor:
    if kind == "SE3":
        out = np.stack([values.atPose3(k).matrix()[:3, :] for k in range(n)])
    else:
        p = [values.atPose2(k) for k in range(n)]
        out = np.array([[q.x(), q.y(), np.cos(q.theta()), np.sin(q.theta())] for q in p])
    return torch.as_tensor(out, dtype=torch.float64)


def gtsam_optimize(graph: PoseGraph, max_iterations: int = 100, tolerance: float = 1e-10) -> GtsamResult:
    """Run GTSAM's LM on ``graph`` (unbatched, with poses) from its poses; see the module doc.

    Raises:
        PoseGraphError: when GTSAM is not installed, or the graph has no poses.
    """
    gtsam = _gtsam()
    if graph.poses is None:
        raise PoseGraphError("the graph has no poses to start GTSAM from", graph.source)
    poses = graph.poses.detach().double().cpu().numpy()
    values = _values(gtsam, graph.kind, poses)
    factors = _factors(gtsam, graph)
    plain_error = factors.error
    gauge = np.flatnonzero(graph.fixed.cpu().numpy()) if bool(graph.fixed.any()) else np.array([0])
    dim = 6 if graph.kind == "SE3" else 3
    prior_noise = gtsam.noiseModel.Isotropic.Sigma(dim, PRIOR_SIGMA)
    for k in gauge.tolist():
        prior = gtsam.PriorFactorPose3 if graph.kind == "SE3" else gtsam.PriorFactorPose2
        pose = values.atPose3(k) if graph.kind == "SE3" else values.atPose2(k)
        factors.add(prior(k, pose, prior_noise))
    params = gtsam.LevenbergMarquardtParams()
    params.setMaxIterations(max_iterations)
    params.setRelativeErrorTol(tolerance)
    params.setAbsoluteErrorTol(tolerance)
    start = time.perf_counter()
    optimizer = gtsam.LevenbergMarquardtOptimizer(factors, values, params)
    result = optimizer.optimize()
    elapsed = time.perf_counter() - start
    return GtsamResult(
        initial_error=float(plain_error(values)),
        final_error=float(plain_error(result)),
        iterations=int(optimizer.iterations()),
        time_s=elapsed,
        poses=_to_tensor(gtsam, graph.kind, result, graph.num_poses),
    )


__all__ = ["gtsam_optimize", "GtsamResult"]
