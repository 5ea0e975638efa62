"""Synthetic pose graphs with known ground truth, for tests, examples and benchmarks.

Every generator returns a :class:`SyntheticGraph` ``(graph, truth)`` — a named tuple, so
``noisy, truth = sphere_se3(...)`` works — of two float64 CPU :class:`~posegraph.graph.PoseGraph`
with the same ids, edges, information and FIX flags:

* ``graph``: measurements with noise, and the initial guess a real dataset would carry: the
  noisy odometry composed from the first pose (``X₀ = truth``, ``Xₖ₊₁ = Xₖ · Zₖ,ₖ₊₁``), or no
  poses at all (``initial=None``: an edge-only graph, as g2o files without VERTEX lines).
* ``truth``: the true poses and the true (noise-free) relative measurements.

Noise model (matching the residual ``e = Log(Z⁻¹ · Xᵢ⁻¹ · Xⱼ)`` of
:class:`~posegraph.model.between.BetweenEdges`, right perturbation): ``Z = Z_true · Exp(n)`` with
``n ~ N(0, diag(σ²))`` in the tangent order of Theseus — SE3 (translation, rotation), SE2
(x, y, θ) — so that at the truth ``e = −n`` and the information ``Ω = diag(1/σ²)`` (same order,
as g2o stores it) whitens it exactly. A zero σ means noise-free along that axis; its
information is then 1 (a finite stand-in for ``1/0``).

Determinism: all randomness (walk, loop-closure choice, noise) comes from one
``numpy.random.Generator(PCG64(seed))`` drawn in a fixed order, and the noise is always drawn
(then scaled by σ), so the same seed gives the same topology for every noise level and
σ = 0 gives exactly the true measurements.

Generators:

* :func:`sphere_se3` — g2o's ``create_sphere``: poses on a sphere in rings (a spiral from
  pole to pole), odometry between consecutive poses, loop closures to the previous
  ring.
* :func:`grid_se2` — a Manhattan-like world: a robot walks the streets of a grid, turning at
  random at intersections, one pose per unit step; loop closures when it comes back near an
  older pose.
* :func:`large_se2` — the same at city10000 scale (~10 000 poses, ~20 000 edges), for benchmarks.

Helpers: :func:`align_to_first`, :func:`translation_rmse`, :func:`rotation_rmse` compare an
estimate with the truth; :func:`with_wrong_loop_closures` injects outlier loop closures.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import theseus as th
import torch

from posegraph.lie.homogeneous import from_homogeneous, to_homogeneous
from posegraph.graph import POSE_KINDS, PoseGraph

Sigma = Union[float, Sequence[float]]
F64 = torch.float64

__all__ = [
    "SyntheticGraph",
    "sphere_se3",
    "grid_se2",
    "large_se2",
    "with_wrong_loop_closures",
]


class SyntheticGraph(NamedTuple):
    """A generated graph and its ground truth (unpacks as ``noisy, truth``)."""

    graph: PoseGraph
    truth: PoseGraph


# -- group operations on Theseus tensors (batched) -------------------------------------------------


def _wrap(kind: str, tensor: torch.Tensor) -> th.LieGroup:
    return POSE_KINDS[kind][0](tensor=tensor, disable_checks=True)


def _between(kind: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a⁻¹ · b`` elementwise."""
    return _wrap(kind, a).between(_wrap(kind, b)).tensor


def _compose(kind: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _wrap(kind, a).compose(_wrap(kind, b)).tensor


def _exp(kind: str, tangent: torch.Tensor) -> torch.Tensor:
    return POSE_KINDS[kind][0].exp_map(tangent).tensor


def _compose_chain(kind: str, first: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """``X₀ = first``, ``Xₖ₊₁ = Xₖ · stepsₖ``: poses ``(len(steps) + 1, *shape)``."""
    h = to_homogeneous(kind, torch.cat([first.unsqueeze(0), steps], dim=0))
    out = np.empty_like(h)
    out[0] = h[0]
    for k in range(1, h.shape[0]):
        out[k] = out[k - 1] @ h[k]
    return from_homogeneous(kind, out)


# -- shared assembly --------------------------------------------------------------------------------


def _sigmas(kind: str, translation_sigma: Sigma, rotation_sigma: Sigma) -> np.ndarray:
    """Per-axis σ in tangent order: SE3 (tx, ty, tz, rx, ry, rz), SE2 (x, y, θ)."""
    nt, nr = (3, 3) if kind == "SE3" else (2, 1)

    def expand(value: Sigma, n: int, what: str) -> List[float]:
        vals = [float(value)] * n if np.isscalar(value) else [float(v) for v in value]  # type: ignore[union-attr]
        if len(vals) != n:
            raise ValueError(f"{what}: expected a number or {n} numbers, received {len(vals)}")
        if any(not math.isfinite(v) or v < 0 for v in vals):
            raise ValueError(f"{what}: expected finite values ≥ 0, received {vals}")
        return vals

    return np.array(
        expand(translation_sigma, nt, "translation_sigma") + expand(rotation_sigma, nr, "rotation_sigma")
    )


def _assemble(
    kind: str,
    true_poses: torch.Tensor,
    edges: np.ndarray,
    is_loop: np.ndarray,
    sigmas: np.ndarray,
    rng: np.random.Generator,
    initial: Optional[str],
    extras: Dict[str, Any],
) -> SyntheticGraph:
    """Measurements, information and initial guess from the true poses and the edge list.

    The first ``N − 1`` edges must be the odometry chain ``(k, k + 1)``.
    """
    if initial not in ("odometry", "truth", None):
        raise ValueError(f"initial: expected 'odometry', 'truth' or None, received {initial!r}")
    n = true_poses.shape[0]
    e_idx = torch.as_tensor(edges, dtype=torch.long).reshape(-1, 2)
    assert torch.equal(e_idx[: n - 1, 0], torch.arange(n - 1)) and torch.equal(
        e_idx[: n - 1, 1], torch.arange(1, n)
    ), "the first N-1 edges must be the odometry chain"
    dof = POSE_KINDS[kind][2]
    z_true = _between(kind, true_poses[e_idx[:, 0]], true_poses[e_idx[:, 1]])
    # Always draw the noise (then scale) so the stream does not depend on σ.
    tangent = torch.as_tensor(rng.standard_normal((e_idx.shape[0], dof)) * sigmas, dtype=F64)
    z = _compose(kind, z_true, _exp(kind, tangent)) if (sigmas > 0).any() else z_true.clone()
    # (1/σ)² rather than 1/σ²: exact for σ = 0.1, 0.05, … (100.0, not 99.99999999999999).
    weights = np.where(sigmas > 0, (1.0 / np.where(sigmas > 0, sigmas, 1.0)) ** 2, 1.0)
    info = torch.diag_embed(torch.as_tensor(weights, dtype=F64)).expand(e_idx.shape[0], dof, dof).clone()

    if initial == "odometry":
        poses: Optional[torch.Tensor] = _compose_chain(kind, true_poses[0], z[: n - 1])
    elif initial == "truth":
        poses = true_poses.clone()
    else:
        poses = None

    ids = torch.arange(n, dtype=torch.long)
    fixed = torch.zeros(n, dtype=torch.bool)
    fixed[0] = True
    extras = dict(extras)
    extras.update(
        num_odometry=int(n - 1),
        num_loop_closures=int(is_loop.sum()),
        loop_closure=torch.as_tensor(is_loop, dtype=torch.bool),
        sigmas=sigmas.tolist(),
    )
    noisy = PoseGraph(
        kind=kind, ids=ids, poses=poses, edges=e_idx, measurements=z, information=info,
        fixed=fixed, extras=dict(extras),
    )
    truth = PoseGraph(
        kind=kind, ids=ids.clone(), poses=true_poses.clone(), edges=e_idx.clone(),
        measurements=z_true, information=info.clone(), fixed=fixed.clone(),
        extras=dict(extras, truth=True),
    )
    return SyntheticGraph(noisy, truth)


# -- SE3 sphere ----------------------------------------------------------------------------------------


def sphere_se3(
    num_rings: int = 10,
    poses_per_ring: int = 50,
    radius: float = 100.0,
    loop_closures: bool = True,
    translation_sigma: Sigma = 0.1,
    rotation_sigma: Sigma = 0.01,
    seed: int = 0,
    initial: Optional[str] = "odometry",
    closure_offsets: Sequence[int] = (0,),
) -> SyntheticGraph:
    """Poses on a sphere, as g2o's ``create_sphere`` (``-laps num_rings -nodesPerLevel …``).

    Pose ``k`` (ring ``f = k // P``, index ``m = k % P`` with ``P = poses_per_ring``) has
    rotation ``Rz(−π + 2πm/P) · Ry(−π/2 + (k+1)π/N)`` (``N = num_rings · P``) and translation
    ``R · (radius, 0, 0)``: its x axis points out of the sphere, and the poses spiral from
    near ``z = +radius`` down to ``z = −radius`` (g2o's placement, pose ids included). Edges: odometry ``(k, k+1)`` for every k, then (if
    ``loop_closures``) ``(k, k + P + o)`` for every pose ``k`` of rings ``0…num_rings−2`` and
    every offset ``o`` in ``closure_offsets`` that stays in range (g2o uses ``(-1, 0, 1)``;
    the default ``(0,)`` is the same index on the next ring).

    Args:
        translation_sigma: translation noise σ (meters), a number or one per axis.
        rotation_sigma: rotation noise σ (radians), a number or one per axis.
        seed: seed of the noise.
        initial: ``"odometry"`` (composed noisy odometry, the default), ``"truth"``, or
            ``None`` for an edge-only graph (``poses=None``).

    Returns:
        ``SyntheticGraph(graph, truth)``: ``N`` poses, ``N − 1 + (num_rings − 1) · P ·
        len(closure_offsets)`` edges (minus offsets out of range), vertex 0 FIXed.
    """
    if num_rings < 1 or poses_per_ring < 2:
        raise ValueError(f"expected num_rings ≥ 1 and poses_per_ring ≥ 2, received {num_rings}, {poses_per_ring}")
    rng = np.random.Generator(np.random.PCG64(seed))
    sigmas = _sigmas("SE3", translation_sigma, rotation_sigma)
    p = poses_per_ring
    n = num_rings * p
    k = np.arange(n)
    yaw = -math.pi + 2.0 * math.pi * (k % p) / p
    pitch = -0.5 * math.pi + (k + 1) * math.pi / n
    cz, sz, cy, sy = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    zero = np.zeros(n)
    # Rz(yaw) · Ry(pitch), written out (no BLAS) so the truth is reproducible bit for bit.
    rot = np.stack(
        [
            np.stack([cz * cy, -sz, cz * sy], axis=-1),
            np.stack([sz * cy, cz, sz * sy], axis=-1),
            np.stack([-sy, zero, cy], axis=-1),
        ],
        axis=-2,
    )
    trans = radius * rot[:, :, 0]
    true_poses = torch.as_tensor(np.concatenate([rot, trans[:, :, None]], axis=2), dtype=F64)

    edges = [(i, i + 1) for i in range(n - 1)]
    loops: List[Tuple[int, int]] = []
    if loop_closures:
        for i in range(n - p):
            for off in closure_offsets:
                j = i + p + int(off)
                if 0 <= j < n and abs(j - i) > 1:
                    loops.append((i, j))
    is_loop = np.array([False] * len(edges) + [True] * len(loops))
    params = dict(
        num_rings=num_rings, poses_per_ring=poses_per_ring, radius=radius,
        loop_closures=loop_closures, translation_sigma=translation_sigma,
        rotation_sigma=rotation_sigma, seed=seed, initial=initial,
        closure_offsets=tuple(closure_offsets),
    )
    return _assemble(
        "SE3", true_poses, np.array(edges + loops), is_loop, sigmas, rng, initial,
        dict(generator="sphere_se3", params=params),
    )


# -- SE2 Manhattan-like grid world ----------------------------------------------------------------------

_DIRECTIONS = ((1, 0), (0, 1), (-1, 0), (0, -1))  # E, N, W, S: heading index × 90°


def _grid_walk(
    rng: np.random.Generator,
    width: int,
    height: int,
    block_length: int,
    num_poses: int,
    turn_probability: float,
) -> Tuple[np.ndarray, np.ndarray]:
    """Cells ``(N, 2)`` (integer steps) and headings ``(N,)`` (0..3) of a random street walk.

    Streets run along ``x = a·L`` and ``y = b·L`` (``L = block_length``) inside
    ``[0, width·L] × [0, height·L]``. Pose k stands at cell ``pₖ`` facing ``dₖ``, the
    direction it drives next: ``pₖ₊₁ = pₖ + dₖ``. Pose 0 is the identity (corner ``(0, 0)``,
    facing +x). Away from intersections it drives straight; at a later intersection it turns left or right with probability ``turn_probability`` (split
    evenly) or goes straight, among the directions that stay on the map (a U-turn only at a
    dead end, which a grid of ≥ 1 × 1 blocks does not have).
    """
    size = (width * block_length, height * block_length)
    cells = np.zeros((num_poses, 2), dtype=np.int64)
    heads = np.zeros(num_poses, dtype=np.int64)
    pos, head = (0, 0), 0
    for k in range(num_poses):
        x, y = pos
        if k > 0 and x % block_length == 0 and y % block_length == 0:
            options = [(head, 1.0 - turn_probability), ((head + 1) % 4, turn_probability / 2),
                       ((head + 3) % 4, turn_probability / 2)]
            valid = [(h, w) for h, w in options if _on_map(pos, h, size)]
            if not valid:
                valid = [((head + 2) % 4, 1.0)]
            weights = np.array([w for _, w in valid], dtype=np.float64)
            u = rng.random()
            total = weights.sum()
            pick = len(valid) - 1
            if total > 0:
                pick = int(min(np.searchsorted(np.cumsum(weights) / total, u, side="right"), len(valid) - 1))
            head = valid[pick][0]
        elif not _on_map(pos, head, size):  # cannot happen on streets; kept as a guard
            head = (head + 2) % 4
        cells[k] = pos
        heads[k] = head
        dx, dy = _DIRECTIONS[head]
        pos = (x + dx, y + dy)
    return cells, heads


def _on_map(pos: Tuple[int, int], head: int, size: Tuple[int, int]) -> bool:
    dx, dy = _DIRECTIONS[head]
    x, y = pos[0] + dx, pos[1] + dy
    return 0 <= x <= size[0] and 0 <= y <= size[1]


def _grid_closures(
    rng: np.random.Generator,
    cells: np.ndarray,
    radius_cells_sq: int,
    min_gap: int,
    max_closures_per_pose: int,
    closure_probability: float,
) -> List[Tuple[int, int]]:
    """Loop closures ``(j, k)``, ``j < k − min_gap``, ``|pⱼ − pₖ|² ≤ radius²`` (in cells).

    For each pose k (in order) with at least one such older pose: with probability
    ``closure_probability``, up to ``max_closures_per_pose`` of them chosen uniformly without
    replacement (sorted by index).
    """
    reach = int(math.isqrt(radius_cells_sq))
    offsets = [(dx, dy) for dx in range(-reach, reach + 1) for dy in range(-reach, reach + 1)
               if dx * dx + dy * dy <= radius_cells_sq]
    visits: Dict[Tuple[int, int], List[int]] = {}
    loops: List[Tuple[int, int]] = []
    for k in range(cells.shape[0]):
        x, y = int(cells[k, 0]), int(cells[k, 1])
        old = k - min_gap - 1  # poses ≤ old are eligible
        if old >= 0:
            cand = sorted(
                j for dx, dy in offsets for j in visits.get((x + dx, y + dy), ()) if j <= old
            )
            if cand:
                u = rng.random()
                if u < closure_probability:
                    m = min(max_closures_per_pose, len(cand))
                    chosen = rng.choice(len(cand), size=m, replace=False)
                    loops.extend((cand[c], k) for c in sorted(chosen.tolist()))
        visits.setdefault((x, y), []).append(k)
    return loops


def grid_se2(
    width: int = 4,
    height: int = 4,
    num_poses: int = 500,
    block_length: int = 5,
    step: float = 1.0,
    turn_probability: float = 0.5,
    closure_radius: float = 1.0,
    min_gap: int = 10,
    max_closures_per_pose: int = 1,
    closure_probability: float = 1.0,
    translation_sigma: Sigma = 0.05,
    rotation_sigma: Sigma = 0.01,
    seed: int = 0,
    initial: Optional[str] = "odometry",
) -> SyntheticGraph:
    """A Manhattan-like 2D world (as Olson's M3500): a robot driving a grid of streets.

    The map has ``width × height`` blocks of ``block_length`` steps of ``step`` meters; the
    robot starts at the corner ``(0, 0)`` facing +x (pose 0 is the identity) and takes ``num_poses − 1`` steps of one
    cell (see :func:`_grid_walk` for the turns), each pose facing the direction it drives next
    — so odometry is ``(step, 0)`` with a rotation of 0 or ±90°. Loop closures join pose k to
    older poses (more than ``min_gap`` poses back) within ``closure_radius`` meters (decided on
    the integer cell grid, so exactly), with any relative heading.

    Args:
        translation_sigma: noise σ of (x, y) (meters; a number or two).
        rotation_sigma: noise σ of θ (radians).
        seed: seeds the walk, the loop-closure choice and the noise.
        initial: ``"odometry"`` (default), ``"truth"`` or ``None`` (edge-only graph).

    Returns:
        ``SyntheticGraph(graph, truth)``; edges: the odometry chain ``(k, k+1)`` first, then the
        loop closures ``(j, k)`` ordered by ``k`` then ``j``; vertex 0 FIXed.
    """
    if width < 1 or height < 1 or block_length < 1 or num_poses < 2:
        raise ValueError(
            "expected width, height, block_length ≥ 1 and num_poses ≥ 2, received "
            f"{width}, {height}, {block_length}, {num_poses}"
        )
    if not 0.0 <= turn_probability <= 1.0 or not 0.0 <= closure_probability <= 1.0:
        raise ValueError("turn_probability and closure_probability must lie in [0, 1]")
    if step <= 0 or closure_radius < 0 or min_gap < 1 or max_closures_per_pose < 0:
        raise ValueError("expected step > 0, closure_radius ≥ 0, min_gap ≥ 1, max_closures_per_pose ≥ 0")
    rng = np.random.Generator(np.random.PCG64(seed))
    sigmas = _sigmas("SE2", translation_sigma, rotation_sigma)
    cells, heads = _grid_walk(rng, width, height, block_length, num_poses, turn_probability)
    radius_cells_sq = int(math.floor((closure_radius / step) ** 2 + 1e-9))
    loops = _grid_closures(rng, cells, radius_cells_sq, min_gap, max_closures_per_pose, closure_probability)

    cos_sin = np.array(_DIRECTIONS, dtype=np.float64)[heads]  # exact 0/±1
    true_poses = torch.as_tensor(
        np.concatenate([cells.astype(np.float64) * step, cos_sin], axis=1), dtype=F64
    )
    odometry = [(k, k + 1) for k in range(num_poses - 1)]
    edges = np.array(odometry + loops, dtype=np.int64).reshape(-1, 2)
    is_loop = np.array([False] * len(odometry) + [True] * len(loops))
    params = dict(
        width=width, height=height, num_poses=num_poses, block_length=block_length, step=step,
        turn_probability=turn_probability, closure_radius=closure_radius, min_gap=min_gap,
        max_closures_per_pose=max_closures_per_pose, closure_probability=closure_probability,
        translation_sigma=translation_sigma, rotation_sigma=rotation_sigma, seed=seed,
        initial=initial,
    )
    extras = dict(generator="grid_se2", params=params, cells=torch.as_tensor(cells))
    return _assemble("SE2", true_poses, edges, is_loop, sigmas, rng, initial, extras)


def large_se2(
    num_poses: int = 10000,
    width: Optional[int] = None,
    height: Optional[int] = None,
    max_closures_per_pose: int = 1,
    translation_sigma: Sigma = 0.05,
    rotation_sigma: Sigma = 0.01,
    seed: int = 0,
    initial: Optional[str] = "odometry",
    **grid_kwargs: Any,
) -> SyntheticGraph:
    """A city10000-like benchmark graph: :func:`grid_se2` with ``num_poses`` poses (default
    10 000, about 19 000–20 000 edges) on a map scaled with it (``width = height =
    round(√(num_poses / 100))`` blocks of 5 steps unless given), so the robot keeps
    revisiting streets and nearly every pose after the first pass gets a loop closure.

    Generated on the fly (about a second); not stored under ``data/``. Other keyword
    arguments go to :func:`grid_se2`.
    """
    side = max(2, int(round(math.sqrt(num_poses / 100.0))))
    result = grid_se2(
        width=width or side,
        height=height or side,
        num_poses=num_poses,
        max_closures_per_pose=max_closures_per_pose,
        translation_sigma=translation_sigma,
        rotation_sigma=rotation_sigma,
        seed=seed,
        initial=initial,
        **grid_kwargs,
    )
    for g in result:
        g.extras["generator"] = "large_se2"
    return result


# -- poses observing a mesh ------------------------------------------------------------------------------


# -- outliers ---------------------------------------------------------------------------------------------


def with_wrong_loop_closures(
    graph: PoseGraph,
    fraction: float = 0.1,
    seed: int = 0,
    translation_range: float = 10.0,
) -> PoseGraph:
    """A copy of ``graph`` where a ``fraction`` of its loop closures (edges with
    ``|idᵢ − idⱼ| ≠ 1``) measure a wrong relative pose: a uniformly random rotation (a
    normalized 4-D Gaussian as unit quaternion; a uniform angle in SE2) and a translation
    uniform in ``[−translation_range, translation_range]`` per axis, keeping their
    information — as false place-recognition matches. ``extras["outlier"]`` is the ``(E,)``
    bool mask of the corrupted edges. Unbatched graphs; deterministic in ``seed``.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction: expected a number in [0, 1], received {fraction!r}")
    rng = np.random.Generator(np.random.PCG64(seed))
    loops = np.flatnonzero(graph.loop_closures().cpu().numpy())
    picked = np.sort(rng.choice(loops, size=int(round(fraction * len(loops))), replace=False))
    m = len(picked)
    from posegraph.synthetic.hard_cases import random_rotations  # (hard_cases builds on graph only)

    rot = random_rotations(graph.kind, rng, m)
    if graph.kind == "SE3":
        t = torch.as_tensor(rng.uniform(-translation_range, translation_range, (m, 3, 1)), dtype=F64)
        wrong = torch.cat([rot, t], dim=2)
    else:
        t = torch.as_tensor(rng.uniform(-translation_range, translation_range, (m, 2)), dtype=F64)
        wrong = torch.cat([t, rot], dim=1)
    meas = graph.measurements.clone()
    meas[torch.as_tensor(picked, dtype=torch.long)] = wrong.to(meas.dtype)
    outlier = torch.zeros(graph.num_edges, dtype=torch.bool)
    outlier[torch.as_tensor(picked, dtype=torch.long)] = True
    return replace(graph, measurements=meas, extras=dict(graph.extras, outlier=outlier))


# -- comparing with the truth ----------------------------------------------------------------------------


