"""The builder's second entrance: :func:`build_problem`, a :class:`~posegraph.graph.PoseGraph`
(read from a file) turned into a :class:`~posegraph.model.problem.PoseGraphProblem` without one
Python object per pose or edge — the gauge, landmarks, a mesh's Laplacian term
(:class:`MeshTerm`), priors and robust kernels included. :class:`~posegraph.model.builder.PoseGraphBuilder`
builds through it too.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union
import numpy as np
import theseus as th
import torch
from posegraph.model.between import BetweenEdges
from posegraph.model.costs import BlockSparseCostFunction
from posegraph.model.observations import PointObservations
from posegraph.errors import PoseGraphError, check_device
from posegraph.graph import POSE_KINDS, PoseGraph, check_graph, connected_components
from posegraph.model.mesh_cost import LaplacianSmoothingCost
from posegraph.model.robust import RobustKernel, robustify
from posegraph.model.user_costs import PackedCost, PackedSlot, PosePriors, PositionPriors, PriorTerms
from posegraph.model.variables import ManifoldArray
from posegraph.model.weights import FullInformationWeight
from posegraph.information import cholesky_sqrt_information, symmetric_part
from posegraph.model.checks import _Consensus, _check_graph_information, _shape_str
from posegraph.model.problem import PoseGraphProblem, _PackedObjective


#: Names of the costs the builder makes (users' costs may not take them).
_BUILT_COST_NAMES = ("between", "point_observations", "mesh_laplacian", "priors", "position_priors")


def _check_batched(
    checks: Sequence[Tuple[str, torch.Tensor, Tuple[int, ...]]], consensus: _Consensus, source: Optional[str]
) -> None:
    """Each ``(what, tensor, expected)``: shape ``(batch, *expected)`` and the dtype, device and
    batch size the graph's other tensors have (``consensus``); a :class:`PoseGraphError`
    naming ``what`` and ``source`` otherwise."""
    for what, t, expected in checks:
        if tuple(t.shape[1:]) != expected:
            raise PoseGraphError(
                f"{what}: expected shape (batch, {', '.join(map(str, expected))}), received {_shape_str(t.shape)}",
                source,
            )
        consensus.check(what, t)


def _prior_cost(pose_var: ManifoldArray, terms: PriorTerms, consensus: _Consensus) -> BlockSparseCostFunction:
    """The vectorized cost of one kind of prior (``"priors"`` or ``"position_priors"``)."""
    name = "priors" if terms.kind == "pose" else "position_priors"
    for what, t in ((f"{name} values", terms.values), (f"{name} information", terms.information)):
        consensus.check(what, t)
    weight = FullInformationWeight(
        th.Variable(cholesky_sqrt_information(symmetric_part(terms.information)), name=f"{name}_sqrt_information"),
        name=f"{name}_information",
    )
    cls = PosePriors if terms.kind == "pose" else PositionPriors
    values = th.Variable(terms.values, name=f"{name}_values")
    return cls(pose_var, terms.elements, values, weight, name=name, prior_names=terms.names)


def _gauge_with_costs(
    g: PoseGraph,
    labels: np.ndarray,
    packed_costs: Sequence[Tuple[th.CostFunction, Sequence[Optional[PackedSlot]]]],
    anchors: Sequence[int] = (),
) -> Tuple[np.ndarray, torch.Tensor]:
    """Components and gauge with users' costs over packed poses and priors: a cost over
    several poses joins their components; one over exactly one pose (a prior), and each of
    ``anchors`` (priors' poses), anchors its component, which then keeps only its FIX'ed poses
    fixed (none: the priors hold it, as in stock Theseus)."""
    links, anchored = [], list(anchors)
    for _, slots in packed_costs:
        poses = sorted({s.element for s in slots if s is not None and s.packed == "poses"})
        links += [(labels[a], labels[b]) for a, b in zip(poses[:-1], poses[1:])]
        if len(poses) == 1:
            anchored.append(poses[0])
    count = int(labels.max(initial=-1)) + 1
    if links:
        merged = connected_components(count, np.asarray(links, dtype=np.int64).reshape(-1, 2))
        labels = merged[labels]
    gauge = g.gauge_fixed(labels)
    auto = gauge & ~g.fixed.cpu()
    held = np.isin(labels, labels[anchored]) if anchored else np.zeros(len(labels), dtype=bool)
    gauge[torch.as_tensor(held) & auto] = False
    return labels, gauge


def _warn_disconnected(graph: PoseGraph, labels, gauge: torch.Tensor) -> None:
    """Warn when a graph of several connected components has components anchored only by the
    automatic gauge: their placement relative to each other is arbitrary (each keeps the
    initial pose of its lowest id)."""
    count = int(labels.max(initial=0)) + 1
    if count == 1:
        return
    auto = gauge & ~graph.fixed.cpu()
    if not auto.any():
        return  # every component has a FIX vertex: placed by the user
    anchors = graph.ids.cpu()[auto].tolist()
    shown = ", ".join(map(str, anchors[:5])) + (", …" if len(anchors) > 5 else "")
    where = f"{graph.source}: " if graph.source else ""
    warnings.warn(
        f"{where}the graph has {count} connected components; each is optimized on its own, "
        f"anchored at its lowest vertex id ({shown}), so their relative placement is that of "
        "the initial guess",
        stacklevel=3,
    )


def build_problem(
    graph: PoseGraph,
    edge_names: Optional[Sequence[str]] = None,
    extra_costs: Sequence[th.CostFunction] = (),
    dtype: Optional[torch.dtype] = None,
    device=None,
    mesh: Optional["MeshTerm"] = None,
    robust: Union[RobustKernel, str, None] = None,
    robust_edges: str = "all",
    packed_costs: Sequence[Tuple[th.CostFunction, Sequence[Optional[PackedSlot]]]] = (),
    priors: Sequence[PriorTerms] = (),
) -> PoseGraphProblem:
    """Build the Theseus objective of a PoseGraph (vectorized: no per-edge objects).

    The gauge is held by fixed vertices (``graph.gauge_fixed()``), not by a prior.
    ``robust``: a kernel such as ``"huber:1.0"`` / ``"cauchy:0.5"`` or a
    :class:`~posegraph.model.robust.RobustKernel`, applied to ``robust_edges`` (``"all"`` or
    ``"loop-closures"``, ids not consecutive); the error is then ``½ Σ ρ(‖W e‖²)``
    (:mod:`posegraph.model.robust`). Landmarks (``graph.landmarks``) add one
    :class:`~posegraph.model.observations.PointObservations` cost over a packed ``th.Point3`` variable;
    points that nothing observes (and no mesh ties) are held constant. ``mesh`` (see
    :func:`mesh_term`) adds a Laplacian regularizer over those points.

    ``packed_costs``: ``(cost, slots)`` pairs of Theseus costs over poses and points of the
    graph (``slots`` as :class:`~posegraph.model.user_costs.PackedCost`'s, element indices in
    storage order), added as PackedCosts. They join the components they touch; a component
    that one of them touches at exactly one pose (a prior) is anchored by it and gets no
    automatic gauge; the points they touch are optimized. ``priors``: pose and position
    priors (:class:`~posegraph.model.user_costs.PriorTerms`, element indices in storage order), one
    vectorized cost per kind (``"priors"``, ``"position_priors"``); they anchor their
    components as well.
    """
    check_graph("build_problem: graph", graph)
    kernel = RobustKernel.parse(robust)
    if graph.poses is None:
        raise PoseGraphError(
            "the graph has no pose estimates: initialize it first (posegraph.init)", graph.source
        )
    if graph.num_edges == 0:
        raise PoseGraphError("the graph has vertices but no edges: it cannot be optimized (no measurements)", graph.source)
    if device is not None:
        device = check_device("build_problem: device", device, solve=False)
    g = graph.to(device=device, dtype=dtype) if (dtype is not None or device is not None) else graph
    cls, shape, dof = POSE_KINDS[g.kind]
    n, e = g.num_poses, g.num_edges
    poses = g.poses if g.poses.ndim == len(shape) + 2 else g.poses.unsqueeze(0)
    meas = g.measurements if g.measurements.ndim == len(shape) + 2 else g.measurements.unsqueeze(0)
    info = g.information if g.information.ndim == 4 else g.information.unsqueeze(0)
    checks = [
        ("poses", poses, (n, *shape)),
        ("measurements", meas, (e, *shape)),
        ("information", info, (e, dof, dof)),
    ]
    consensus = _Consensus(None, None)
    _check_batched(checks, consensus, g.source)
    if g.edges.shape != (e, 2) or (g.edges < 0).any() or (g.edges >= n).any():
        raise PoseGraphError(f"edges: expected (E, 2) pose indices in [0, {n}), received {_shape_str(g.edges.shape)}", g.source)
    if (g.edges[:, 0] == g.edges[:, 1]).any():
        k = int(torch.nonzero(g.edges[:, 0] == g.edges[:, 1])[0])
        raise PoseGraphError(f"edge {k}: self-loop", g.source)
    _check_graph_information(  # the graph's own values: a conversion to float32 may overflow
        graph.information, g.dtype, g.source,
        lambda k: "{} {} {}".format(g.edge_tag(), *g.ids[g.edges[k]].tolist()), g.edge_lines,
    )
    edges = g.edges.to(poses.device)
    labels = g.components()
    if packed_costs or priors:
        anchors = [int(k) for terms in priors for k in terms.elements.tolist()]
        labels, gauge = _gauge_with_costs(g, labels, packed_costs, anchors)
    else:
        gauge = g.gauge_fixed(labels)
    _warn_disconnected(g, labels, gauge)
    pose_var = ManifoldArray(poses, cls, gauge, name="poses")
    meas_var = th.Variable(meas, name="measurements")
    weight = FullInformationWeight(
        th.Variable(cholesky_sqrt_information(symmetric_part(info)), name="sqrt_information"), name="information"
    )
    weight = robustify(weight, kernel, robust_edges, g.ids, g.edges)
    names = list(edge_names) if edge_names is not None else g.edge_names  # named when first asked
    between = BetweenEdges(pose_var, edges, meas_var, weight, name="between", edge_names=names)
    objective = _PackedObjective(dtype=poses.dtype)
    objective.add(between)
    touched = [s.element for _, slots in packed_costs for s in slots if s is not None and s.packed == "points"]
    points, observations, mesh_cost = _landmark_costs(g, pose_var, consensus, mesh, touched)
    packed = {"poses": pose_var, "points": points}
    wrapped = [PackedCost(cost, slots, packed) for cost, slots in packed_costs]
    prior_costs = [_prior_cost(pose_var, terms, consensus) for terms in priors]
    for cost in (observations, mesh_cost, *prior_costs, *extra_costs, *wrapped):
        if cost is not None:
            objective.add(cost)
    objective.to(device=poses.device)
    objective.update()
    return PoseGraphProblem(
        objective=objective,
        poses=pose_var,
        between=between,
        kind=g.kind,
        ids=g.ids,
        graph=graph,
        user_costs=list(extra_costs) + [cost for cost, _ in packed_costs],
        points=points,
        observations=observations,
        mesh_cost=mesh_cost,
    )


@dataclass
class MeshTerm:
    """A Laplacian smoothness regularizer over landmarks that are the vertices of a mesh
    (see :class:`~posegraph.mesh.LaplacianSmoothingCost`).

    Attributes:
        faces: ``(F, 3)`` vertex indices of the mesh.
        points: ``(V,)`` landmark index (position in ``graph.landmarks``) of each mesh vertex.
        weight: scale ``s`` of the residuals (the cost adds ``Σᵢ ‖s rᵢ‖²``).
        kind: ``"uniform"`` or ``"cotangent"`` Laplacian weights.
        rest_verts: ``(V, 3)`` rest mesh the weights are computed on (default: the landmarks'
            initial positions).
    """

    faces: torch.Tensor
    points: torch.Tensor
    weight: float = 1.0
    kind: str = "uniform"
    rest_verts: Optional[torch.Tensor] = None


def mesh_term(
    graph: PoseGraph,
    verts: torch.Tensor,
    faces: torch.Tensor,
    weight: float = 1.0,
    kind: str = "uniform",
    first_id: Optional[int] = None,
    source: Optional[str] = None,
) -> MeshTerm:
    """Tie a mesh to a graph's landmarks: mesh vertex ``k`` (0-based, file order) is the
    ``VERTEX_TRACKXYZ`` with id ``first_id + k``; ``first_id`` defaults to the smallest point id.

    Every id ``first_id … first_id + V − 1`` must be a point of the graph (other points may
    exist; they are not regularized). The mesh's own vertex positions are the rest shape for
    cotangent weights (uniform weights use its faces only).

    Raises:
        GraphStructureError: no landmarks, or a mesh vertex without its point; the message
            names the mesh file (``source``), the vertex and the id.
    """
    from posegraph.errors import GraphStructureError

    lm = graph.landmarks
    if lm is None or lm.num_points == 0:
        raise GraphStructureError(
            f"a mesh needs 3D points (VERTEX_TRACKXYZ) in the graph{_in(graph)}; it has none", source
        )
    num_verts = int(verts.shape[0])
    ids = lm.ids.tolist()
    first = min(ids) if first_id is None else int(first_id)
    slot = {vid: k for k, vid in enumerate(ids)}
    missing = [k for k in range(num_verts) if first + k not in slot]
    if missing:
        k = missing[0]
        raise GraphStructureError(
            f"mesh vertex {k} (1-based OBJ index {k + 1}) maps to point id {first + k}, which "
            f"is not a VERTEX_TRACKXYZ of the graph{_in(graph)} ({len(missing)} of {num_verts} "
            f"mesh vertices unmatched; vertex k ↔ id {first} + k)",
            source,
        )
    if kind not in ("uniform", "cotangent"):
        raise GraphStructureError(f"Laplacian weights: expected uniform or cotangent, received {kind!r}", source)
    return MeshTerm(
        faces=faces.long(),
        points=torch.as_tensor([slot[first + k] for k in range(num_verts)], dtype=torch.long),
        weight=float(weight),
        kind=kind,
        rest_verts=verts.double() if kind == "cotangent" else None,
    )


def _in(graph: PoseGraph) -> str:
    return f" {graph.source}" if graph.source else ""


def _landmark_costs(
    g: PoseGraph,
    pose_var: ManifoldArray,
    consensus: _Consensus,
    mesh: Optional[MeshTerm],
    touched: Sequence[int] = (),
) -> Tuple[Optional[ManifoldArray], Optional[PointObservations], Optional[LaplacianSmoothingCost]]:
    """The points variable, their observation cost and the mesh regularizer (each or None);
    ``touched`` points (of users' costs) are optimized even where nothing observes them."""
    lm = g.landmarks
    if lm is None:
        if mesh is not None:
            raise PoseGraphError("a mesh needs 3D points (VERTEX_TRACKXYZ); the graph has none", g.source)
        return None, None, None
    if lm.positions is None:
        raise PoseGraphError(
            "the graph's 3D points have no estimates: initialize it first (posegraph.init)", g.source
        )
    num_points, num_obs = lm.num_points, lm.num_observations
    pos = lm.positions if lm.positions.ndim == 3 else lm.positions.unsqueeze(0)
    meas = lm.measurements if lm.measurements.ndim == 3 else lm.measurements.unsqueeze(0)
    info = lm.information if lm.information.ndim == 4 else lm.information.unsqueeze(0)
    _check_batched(
        [
            ("points", pos, (num_points, 3)),
            ("point measurements", meas, (num_obs, 3)),
            ("point information", info, (num_obs, 3, 3)),
            ("point offsets", lm.offsets.unsqueeze(0), (num_obs, 3, 4)),
        ],
        consensus,
        g.source,
    )
    obs = lm.observations.to(pos.device)
    if obs.shape != (num_obs, 2) or (obs < 0).any() or (obs[:, 0] >= g.num_poses).any() or (
        obs[:, 1] >= num_points
    ).any():
        raise PoseGraphError(
            f"point observations: expected (M, 2) (pose, point) indices in [0, {g.num_poses}) × "
            f"[0, {num_points}), received {_shape_str(obs.shape)}",
            g.source,
        )
    _check_graph_information(
        info, info.dtype, g.source,
        lambda k: "EDGE_SE3_TRACKXYZ {} {}".format(
            int(g.ids[lm.observations[k, 0]]), int(lm.ids[lm.observations[k, 1]])
        ),
        lm.observation_lines,
    )
    fixed = lm.fixed.cpu().clone()
    held = torch.ones(num_points, dtype=torch.bool)
    held[obs[:, 1].cpu()] = False
    if mesh is not None:
        held[mesh.points.cpu()] = False
    held[torch.as_tensor(list(touched), dtype=torch.long)] = False
    points = ManifoldArray(pos, th.Point3, fixed | held, name="points")
    observations = PointObservations(
        pose_var,
        points,
        obs,
        th.Variable(meas, name="point_measurements"),
        th.Variable(lm.offsets.to(pos).unsqueeze(0), name="point_offsets"),
        FullInformationWeight(
            th.Variable(cholesky_sqrt_information(symmetric_part(info)), name="point_sqrt_information"),
            name="point_information",
        ),
        name="point_observations",
        observation_names=lambda: lm.observation_names(g.ids),  # named when first asked
    )
    mesh_cost = None
    if mesh is not None:
        mesh_cost = LaplacianSmoothingCost(
            points,
            mesh.faces.to(pos.device),
            weight=mesh.weight,
            kind=mesh.kind,
            rest_verts=None if mesh.rest_verts is None else mesh.rest_verts.to(pos),
            name="mesh_laplacian",
            elements=mesh.points.to(pos.device),
        )
    return points, observations, mesh_cost
