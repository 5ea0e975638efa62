"""Initial guesses for graphs without (or with poor) pose estimates.

``spanning_tree`` composes measurements along a spanning tree rooted at the lowest vertex id:
``Xⱼ = Xᵢ · Zᵢⱼ`` going along an edge, ``Xᵢ = Xⱼ · Zᵢⱼ⁻¹`` against it. The tree is Kruskal's
(union–find) over edges ordered by id gap ``|i − j|`` then file order, so it follows the
odometry chain (consecutive ids) wherever there is one — the usual "odometry initialization"
— and falls back to any connecting edge elsewhere.

``chordal`` (module :mod:`posegraph.init.chordal`) solves for all rotations at once, then for the
translations: slower to build than the tree but far closer to the optimum on noisy graphs.

``auto`` on a graph with poses is the *best start*: the file's poses or the chordal guess,
whichever has the lower cost ½ Σ eᵀΩe over the pose edges (:func:`pose_graph_error`); a file's
vertices can be far from the optimum (perturbed, or from a drifting front end), where no local
solver recovers, while the chordal guess is a global, linear one (0.05–0.1 s on sphere2500).
Poses that already fit their measurements — χ² = Σ eᵀΩe at most ``d·E``, the expectation of a
sum of E χ²_d variables at the truth — are kept without computing the guess: none can be
expected to start measurably better (parking-garage and intel's files are such). The choice
and the costs are in ``graph.extras["init"]`` (:class:`InitChoice`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Dict, List, Optional

import torch

from posegraph.errors import GraphStructureError, PoseGraphError
from posegraph.lie.geometry import se2_between_error, se3_between_error
from posegraph.graph import PoseGraph, check_graph
from posegraph.lie.homogeneous import to_homogeneous
from posegraph.init.spanning_tree import spanning_tree


#: the methods of :func:`initialize` (and of ``posegraph optimize --init``)
INIT_METHODS = ("auto", "file", "spanning-tree", "chordal")


@dataclass(frozen=True)
class InitChoice:
    """Which start ``initialize(graph, "auto")`` chose (``"file"``, ``"chordal"`` or
    ``"spanning-tree"``), per problem for a batch, and the cost ½ Σ eᵀΩe of each candidate
    (batch means). ``note`` says why a candidate was not available."""

    chosen: List[str]
    costs: Dict[str, float] = field(default_factory=dict)
    note: Optional[str] = None


def edge_residuals(graph: PoseGraph, poses: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Whitened squared residuals ``rᵢ² = eᵢᵀΩᵢeᵢ``, ``e = Log(Zᵢⱼ⁻¹ Xᵢ⁻¹ Xⱼ)``, of the pose
    edges at ``poses`` (default: the graph's): ``(B, E)`` float64 (``B = 1`` unbatched)."""
    x = (graph.poses if poses is None else poses).to(torch.float64)
    if x.ndim == len(graph.element_shape) + 1:
        x = x.unsqueeze(0)
    z = graph.measurements.to(torch.float64)
    info = graph.information.to(torch.float64)
    i, j = graph.edges[:, 0], graph.edges[:, 1]
    between = se3_between_error if graph.kind == "SE3" else se2_between_error
    out = []
    for b in range(x.shape[0]):
        zb = z if z.ndim == len(graph.element_shape) + 1 else z[b]
        ib = info if info.ndim == 3 else info[b]
        e = between(x[b, i], x[b, j], zb)
        out.append(torch.einsum("ei,eij,ej->e", e, ib, e))
    return torch.stack(out)


def pose_graph_error(graph: PoseGraph, poses: Optional[torch.Tensor] = None) -> torch.Tensor:
    """GTSAM's error ½ Σ eᵀΩe over the pose edges of ``poses`` (default: the graph's), per
    problem: ``(B,)`` float64 (``(1,)`` unbatched); see :func:`edge_residuals`."""
    return 0.5 * edge_residuals(graph, poses).sum(dim=1)


#: a cost of a graph's poses, per problem ``(B,)``: :func:`pose_graph_error`, or the cost a
#: solve will minimize (e.g. with a robust kernel)
StartCost = Callable[[PoseGraph], torch.Tensor]


def _best_start(graph: PoseGraph, cost: StartCost) -> PoseGraph:
    """``auto`` for a graph with poses: the file's poses or the chordal guess, per problem,
    whichever costs less (see the module doc)."""
    from posegraph.init.chordal import chordal_initialization  # (chordal.py builds on this module)

    file_cost = cost(graph).detach().double().cpu().reshape(-1)
    if bool((2.0 * file_cost <= graph.dof * graph.num_edges).all()):
        note = "the file's poses fit their measurements (χ² per edge ≤ its dimension): no chordal guess needed"
        choice = InitChoice(["file"] * len(file_cost), {"file": float(file_cost.mean())}, note)
        return replace(graph, extras=dict(graph.extras, init=choice))
    try:
        guess = chordal_initialization(graph).to(dtype=graph.dtype, device=graph.device)
    except PoseGraphError as err:
        choice = InitChoice(["file"] * len(file_cost), {"file": float(file_cost.mean())}, f"no chordal guess: {err}")
        return replace(graph, extras=dict(graph.extras, init=choice))
    chordal_cost = cost(graph.with_poses(guess)).detach().double().cpu().reshape(-1)
    better = chordal_cost < file_cost  # (a NaN cost is never better)
    poses = graph.poses
    if better.any():
        mask = better.view(-1, *([1] * len(graph.element_shape))).to(graph.device)
        poses = torch.where(mask, guess.reshape(poses.shape) if poses.ndim == guess.ndim else guess, poses)
    costs = {"file": float(file_cost.mean()), "chordal": float(chordal_cost.mean())}
    choice = InitChoice(["chordal" if b else "file" for b in better.tolist()], costs)
    return replace(graph.with_poses(poses), extras=dict(graph.extras, init=choice))


def initialize(graph: PoseGraph, method: str = "auto", cost: Optional[StartCost] = None) -> PoseGraph:
    """Return ``graph`` with initial poses.

    ``cost`` (for ``"auto"``): how candidate starts are compared, a function of a graph giving
    its cost per problem; default :func:`pose_graph_error`. Pass the cost the solve minimizes
    when it is another (a robust kernel's ``build_problem(g, robust=…).error()``).

    ``"auto"``: with poses, the best start — the file's poses or the chordal guess, whichever
    has the lower cost (``graph.extras["init"]``, an :class:`InitChoice`) —; without, the
    spanning tree; ``"file"``: the
    file's vertices (an error for edge-only files); ``"spanning-tree"``: always composed;
    ``"chordal"``: rotations then translations by linear least squares
    (:func:`posegraph.init.chordal.chordal_initialization`, anchored at the gauge).
    """
    check_graph("initialize: graph", graph)
    if method == "auto" and graph.has_poses and graph.num_edges > 0:
        return _with_point_guess(_best_start(graph, cost or pose_graph_error))
    if method == "auto":
        method = "file" if graph.has_poses else "spanning-tree"
    if method == "file":
        if not graph.has_poses:
            raise GraphStructureError(
                "the file has no VERTEX lines: use --init spanning-tree", graph.source
            )
        return _with_point_guess(graph)
    if method == "spanning-tree":
        poses = spanning_tree(graph).to(dtype=graph.dtype, device=graph.device)
        return _with_point_guess(graph.with_poses(poses))
    if method == "chordal":
        from posegraph.init.chordal import chordal_initialization  # (chordal.py builds on this module)

        poses = chordal_initialization(graph).to(dtype=graph.dtype, device=graph.device)
        return _with_point_guess(graph.with_poses(poses))
    raise ValueError(
        f"unknown initialization {method!r}: expected one of {', '.join(INIT_METHODS)}"
    )


def point_guess(graph: PoseGraph) -> torch.Tensor:
    """Landmark positions ``(P, 3)`` from the poses: the mean over each point's observations
    of ``X · O · z`` (the measured point mapped to the world); unobserved points get 0."""
    lm = graph.landmarks
    assert lm is not None and graph.poses is not None
    poses = graph.poses if graph.poses.ndim == 3 else graph.poses[0]
    x = torch.as_tensor(to_homogeneous("SE3", poses[lm.observations[:, 0]]))
    o = torch.as_tensor(to_homogeneous("SE3", lm.offsets))
    z = lm.measurements if lm.measurements.ndim == 2 else lm.measurements[0]
    zh = torch.cat([z.double().cpu(), torch.ones(z.shape[0], 1, dtype=torch.float64)], dim=1)
    world = (x @ o @ zh.unsqueeze(-1))[:, :3, 0]
    point = lm.observations[:, 1].cpu()
    total = torch.zeros(lm.num_points, 3, dtype=torch.float64).index_add_(0, point, world)
    count = torch.zeros(lm.num_points, dtype=torch.float64).index_add_(
        0, point, torch.ones_like(point, dtype=torch.float64)
    )
    return total / count.clamp_min(1.0).unsqueeze(1)


def _with_point_guess(graph: PoseGraph) -> PoseGraph:
    """Fill in landmark positions a file did not give (VERTEX_TRACKXYZ lines missing)."""
    if graph.landmarks is None or graph.landmarks.positions is not None:
        return graph
    return graph.with_points(point_guess(graph).to(dtype=graph.dtype, device=graph.device))
