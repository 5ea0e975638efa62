"""Poses that observe a mesh: a helix of SE3 poses around a mesh, each observing its nearest
vertices as 3D points (``VERTEX_TRACKXYZ`` landmarks), with the truth.
"""

from __future__ import annotations

import math
from dataclasses import replace
import numpy as np
import torch
from posegraph.synthetic.graphs import F64, Sigma, SyntheticGraph, _assemble, _sigmas


def _helix_poses(num_poses: int, radius: float, height: float, turns: float) -> torch.Tensor:
    """SE3 poses ``(N, 3, 4)`` on a helix around the z axis, each looking at the origin
    (z axis towards it, x axis along the direction of travel)."""
    a = 2 * math.pi * turns * np.arange(num_poses) / num_poses
    h = np.linspace(-height, height, num_poses)
    centers = np.stack([radius * np.cos(a), radius * np.sin(a), h], axis=1)
    forward = -centers / np.linalg.norm(centers, axis=1, keepdims=True)
    travel = np.stack([-np.sin(a), np.cos(a), np.zeros_like(a)], axis=1)
    x_axis = travel - (travel * forward).sum(1, keepdims=True) * forward
    x_axis /= np.linalg.norm(x_axis, axis=1, keepdims=True)
    y_axis = np.cross(forward, x_axis)
    rot = np.stack([x_axis, y_axis, forward], axis=2)  # columns: body axes in the world
    return torch.as_tensor(np.concatenate([rot, centers[:, :, None]], axis=2), dtype=F64)


def _pick_observations(verts: np.ndarray, centers: np.ndarray, per_pose: int) -> np.ndarray:
    """``(M, 2)`` (pose, vertex) pairs: each pose sees the ``per_pose`` vertices nearest its
    line of sight (largest ``v · c/‖c‖``: a cap of the sphere centred on the origin, as a camera
    looking at it sees a patch); every vertex left unseen is then observed from the pose whose
    line of sight is nearest to it. Sorted by pose, then vertex."""
    sight = verts @ (centers / np.linalg.norm(centers, axis=1, keepdims=True)).T  # (V, N)
    chosen = np.argsort(-sight, axis=0, kind="stable")[:per_pose]  # (per_pose, N)
    pairs = {(int(k), int(v)) for k in range(centers.shape[0]) for v in chosen[:, k]}
    seen = np.zeros(verts.shape[0], dtype=bool)
    seen[chosen.ravel()] = True
    best = np.argmax(sight, axis=1)
    pairs |= {(int(best[v]), int(v)) for v in np.flatnonzero(~seen)}
    return np.array(sorted(pairs), dtype=np.int64)


def mesh_observations(
    subdivisions: int = 3,
    num_poses: int = 60,
    orbit_radius: float = 2.5,
    orbit_height: float = 1.2,
    turns: float = 2.0,
    observations_per_pose: int = 40,
    point_sigma: float = 0.05,
    translation_sigma: Sigma = 0.02,
    rotation_sigma: Sigma = 0.005,
    point_id_base: int = 1000,
    seed: int = 3,
) -> SyntheticGraph:
    """A trajectory observing the vertices of a unit icosphere (poses + landmarks).

    Poses (ids ``0 … N−1``) follow a helix around the sphere, looking at its centre, linked
    by noisy odometry (:func:`_assemble`'s model; pose 0 true and fixed). Each pose observes
    the ``observations_per_pose`` vertices nearest its line of sight, every vertex at least
    once; an
    observation is the vertex in the pose's frame, ``z = Rᵀ(v − t) + n``, ``n ~ N(0, σ²I)``,
    information ``I/σ²`` (g2o's ``EDGE_SE3_TRACKXYZ`` with the identity sensor offset).
    Vertex ``k`` of :func:`posegraph.mesh.icosphere` ``(subdivisions)`` is the point with id
    ``point_id_base + k``; the mesh (true positions, faces) is in ``graph.extras["mesh"]``.

    The noisy graph's points start at the mean of their observations mapped through the
    initial (composed-odometry) poses, as :func:`posegraph.init.point_guess` computes them.
    """
    from posegraph.graph import Landmarks
    from posegraph.init.dispatch import point_guess
    from posegraph.mesh.shapes import icosphere

    if num_poses >= point_id_base:
        raise ValueError(f"point_id_base: expected > num_poses = {num_poses}, received {point_id_base}")
    rng = np.random.default_rng(seed)
    verts, faces = icosphere(subdivisions)
    true_poses = _helix_poses(num_poses, orbit_radius, orbit_height, turns)
    chain = np.stack([np.arange(num_poses - 1), np.arange(1, num_poses)], axis=1)
    sigmas = _sigmas("SE3", translation_sigma, rotation_sigma)
    noisy, truth = _assemble(
        "SE3", true_poses, chain, np.zeros(num_poses - 1, dtype=bool), sigmas, rng, "odometry",
        dict(generator="mesh_observations", mesh=(verts, faces)),
    )
    obs = _pick_observations(verts.numpy(), true_poses[:, :, 3].numpy(), observations_per_pose)
    rot, t = true_poses[obs[:, 0], :, :3], true_poses[obs[:, 0], :, 3]
    z_true = torch.einsum("mji,mj->mi", rot, verts[obs[:, 1]] - t)
    z = z_true + point_sigma * torch.as_tensor(rng.standard_normal(z_true.shape), dtype=F64)
    m = obs.shape[0]
    base = Landmarks(
        ids=point_id_base + torch.arange(verts.shape[0]),
        positions=verts.clone(),
        observations=torch.as_tensor(obs),
        measurements=z_true,
        information=torch.eye(3, dtype=F64).expand(m, 3, 3) * (1.0 / point_sigma) ** 2,
        offsets=torch.eye(3, 4, dtype=F64).expand(m, 3, 4).clone(),
        offset_ids=torch.zeros(m, dtype=torch.long),
        fixed=torch.zeros(verts.shape[0], dtype=torch.bool),
    )
    truth.landmarks = base
    noisy.landmarks = replace(base, measurements=z, positions=None)
    noisy.landmarks.positions = point_guess(noisy)
    return SyntheticGraph(noisy, truth)
