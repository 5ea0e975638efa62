"""Hard cases generated from a graph, seeded: the inputs a solver meets off the benchmark path.

Every generator takes an unbatched float64 CPU :class:`~posegraph.graph.PoseGraph` and returns a
new one (the input is not changed); all randomness comes from one
``numpy.random.Generator(PCG64(seed))``, so a seed names a case.

* :func:`perturb_vertices` — a bad start: every pose but the first moved by
  ``t += N(0, σ_t²)``, ``R ← R · Exp(N(0, σ_r²))`` (per axis).
* :func:`with_false_loop_closures` — outliers: added edges between random non-consecutive poses
  with a random relative pose, carrying the information of the graph's first loop closure
  (a confident false place-recognition match). ``extras["outlier"]`` marks them.
* :func:`with_indefinite_information` — information matrices with a negative eigenvalue, as
  some public files carry: for a fraction of the edges the smallest eigenvalue of ``Ω`` is
  replaced by ``−c · λ_max`` with ``c ~ U(0.001, 0.05)``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import theseus as th
import torch

from posegraph.graph import PoseGraph

F64 = torch.float64

__all__ = ["perturb_vertices", "with_false_loop_closures", "with_indefinite_information", "random_rotations"]


def _rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def random_rotations(kind: str, rng: np.random.Generator, count: int) -> torch.Tensor:
    """``count`` uniformly random rotations: SE3 ``(count, 3, 3)`` from normalized 4-D
    Gaussians (Shoemake 1992, "Uniform random rotations"), SE2 ``(count, 2)`` ``(cos, sin)``."""
    if kind == "SE3":
        q = rng.standard_normal((count, 4))
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        return th.SO3.unit_quaternion_to_SO3(torch.as_tensor(q, dtype=F64)).tensor
    a = rng.uniform(-math.pi, math.pi, count)
    return torch.as_tensor(np.column_stack([np.cos(a), np.sin(a)]), dtype=F64)


def perturb_vertices(
    graph: PoseGraph, translation_sigma: float, rotation_sigma: float, seed: int = 0
) -> PoseGraph:
    """``graph`` with every pose but the first perturbed: ``t += N(0, translation_sigma²)``
    per axis and ``R ← R · Exp(ω)``, ``ω ~ N(0, rotation_sigma²)`` per axis (radians; one
    angle in SE2)."""
    if graph.poses is None:
        raise ValueError("the graph has no poses to perturb")
    rng = _rng(seed)
    poses = graph.poses.to(F64).clone()
    n = poses.shape[0] - 1
    if graph.kind == "SE3":
        dt = torch.as_tensor(rng.normal(0.0, translation_sigma, (n, 3)), dtype=F64)
        omega = torch.as_tensor(rng.normal(0.0, rotation_sigma, (n, 3)), dtype=F64)
        rot = th.SO3.exp_map(omega).tensor
        poses[1:, :, :3] = poses[1:, :, :3] @ rot
        poses[1:, :, 3] += dt
    else:
        dt = torch.as_tensor(rng.normal(0.0, translation_sigma, (n, 2)), dtype=F64)
        angle = torch.atan2(poses[1:, 3], poses[1:, 2]) + torch.as_tensor(
            rng.normal(0.0, rotation_sigma, n), dtype=F64
        )
        poses[1:, :2] += dt
        poses[1:, 2], poses[1:, 3] = torch.cos(angle), torch.sin(angle)
    return graph.with_poses(poses.to(graph.poses.dtype))


def with_false_loop_closures(
    graph: PoseGraph, fraction: float, seed: int = 0, translation_range: float = 10.0
) -> PoseGraph:
    """``graph`` plus ``round(fraction · L)`` false loop closures, ``L`` its number of loop
    closures (edges whose ids are not consecutive): between random pairs with
    ``|i − j| > 1`` (by position), measuring a uniformly random rotation and a translation
    uniform in ``[−translation_range, translation_range]`` per axis, with the information of
    the first loop closure (the first edge when there is none). They are appended after the
    graph's edges; ``extras["outlier"]`` is the ``(E',)`` bool mask of the added edges."""
    if not fraction >= 0.0:
        raise ValueError(f"fraction: expected a number ≥ 0, received {fraction!r}")
    rng = _rng(seed)
    loops = graph.loop_closures().cpu().numpy()
    count = int(round(fraction * int(loops.sum())))
    n = graph.num_poses
    pairs = np.empty((0, 2), dtype=np.int64)
    while len(pairs) < count:
        draw = rng.integers(0, n, size=(2 * (count - len(pairs)) + 8, 2))
        draw = draw[np.abs(draw[:, 0] - draw[:, 1]) > 1]
        pairs = np.concatenate([pairs, draw])[:count]
    rot = random_rotations(graph.kind, rng, count)
    dim = 3 if graph.kind == "SE3" else 2
    t = torch.as_tensor(rng.uniform(-translation_range, translation_range, (count, dim)), dtype=F64)
    wrong = torch.cat([rot, t.unsqueeze(2)], dim=2) if graph.kind == "SE3" else torch.cat([t, rot], dim=1)
    first = int(np.flatnonzero(loops)[0]) if loops.any() else 0
    info = graph.information[first].expand(count, *graph.information.shape[1:])
    outlier = torch.cat([torch.zeros(graph.num_edges, dtype=torch.bool), torch.ones(count, dtype=torch.bool)])
    return replace(
        graph,
        edges=torch.cat([graph.edges, torch.as_tensor(pairs, dtype=graph.edges.dtype)]),
        measurements=torch.cat([graph.measurements, wrong.to(graph.measurements.dtype)]),
        information=torch.cat([graph.information, info.to(graph.information.dtype)]),
        edge_lines=None,
        source=None,
        extras=dict(graph.extras, outlier=outlier),
    )


def with_indefinite_information(graph: PoseGraph, fraction: float, seed: int = 0) -> PoseGraph:
    """``graph`` with ``round(fraction · E)`` random edges' information made indefinite: in
    ``Ω = V diag(λ) Vᵀ`` the smallest eigenvalue becomes ``−c · λ_max``, ``c ~ U(0.001, 0.05)``.
    ``extras["indefinite"]`` is the ``(E,)`` bool mask of those edges."""
    rng = _rng(seed)
    e = graph.num_edges
    picked = np.sort(rng.choice(e, size=int(round(fraction * e)), replace=False))
    info = graph.information.to(F64).clone()
    lam, vec = torch.linalg.eigh(info[picked])
    c = torch.as_tensor(rng.uniform(0.001, 0.05, len(picked)), dtype=F64)
    lam[:, 0] = -c * lam[:, -1]
    info[picked] = vec @ torch.diag_embed(lam) @ vec.transpose(-1, -2)
    info[picked] = (info[picked] + info[picked].transpose(-1, -2)) / 2
    mask = torch.zeros(e, dtype=torch.bool)
    mask[torch.as_tensor(picked, dtype=torch.long)] = True
    return replace(graph, information=info.to(graph.information.dtype), extras=dict(graph.extras, indefinite=mask))
