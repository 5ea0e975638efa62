"""``PoseGraph``: the one in-memory form every command shares (plain tensors, no Theseus).

Poses use Theseus' tensor layouts so they can be wrapped without copies: SE3 ``(N, 3, 4)``
(``[R | t]``), SE2 ``(N, 4)`` (``[x, y, cos θ, sin θ]``). A leading batch dimension
``(B, N, …)`` holds B graphs of one topology. Edges index poses by position (not by id).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Any, List, Optional, Tuple

import numpy as np
import scipy.sparse as sp
from scipy.sparse import csgraph
import theseus as th
import torch

from posegraph.errors import PoseGraphError

#: kind -> (Theseus class, element tensor shape, tangent dimension)
POSE_KINDS = {
    "SE3": (th.SE3, (3, 4), 6),
    "SE2": (th.SE2, (4,), 3),
}


@dataclass
class PoseGraph:
    """A pose graph as tensors.

    Attributes:
        kind: ``"SE2"`` or ``"SE3"``.
        ids: ``(N,)`` vertex ids (as in the file), in storage order.
        poses: ``([B,] N, *shape)`` pose estimates, or None before initialization
            (edge-only files).
        edges: ``(E, 2)`` long, pose indices ``(i, j)`` of each relative measurement.
        measurements: ``([B,] E, *shape)`` measured ``Zᵢⱼ`` (Xⱼ seen from Xᵢ).
        information: ``([B,] E, d, d)`` symmetric PSD information matrices Ω.
        fixed: ``(N,)`` bool, vertices held constant (g2o FIX lines).
        source: file the graph was read from (for messages), if any.
        edge_lines: line number of each edge in ``source``, if read from a file.
        landmarks: 3D points observed from SE3 poses (g2o ``VERTEX_TRACKXYZ`` /
            ``EDGE_SE3_TRACKXYZ``), or None.
    """

    kind: str
    ids: torch.Tensor
    poses: Optional[torch.Tensor]
    edges: torch.Tensor
    measurements: torch.Tensor
    information: torch.Tensor
    fixed: torch.Tensor
    source: Optional[str] = None
    edge_lines: Optional[List[int]] = None
    vertex_lines: Optional[List[int]] = None
    extras: dict = field(default_factory=dict)
    landmarks: Optional["Landmarks"] = None

    # -- sizes and kinds ----------------------------------------------------------------------
    @property
    def element_cls(self) -> type:
        """Theseus class of one pose: ``th.SE3`` or ``th.SE2``."""
        return POSE_KINDS[self.kind][0]

    @property
    def element_shape(self) -> Tuple[int, ...]:
        """Tensor shape of one pose: ``(3, 4)`` for SE3, ``(4,)`` for SE2 (Theseus' layouts)."""
        return POSE_KINDS[self.kind][1]

    @property
    def dof(self) -> int:
        """Degrees of freedom of one pose: 6 for SE3, 3 for SE2."""
        return POSE_KINDS[self.kind][2]

    @property
    def num_poses(self) -> int:
        """Number of poses (vertices)."""
        return int(self.ids.numel())

    @property
    def num_edges(self) -> int:
        """Number of edges."""
        return int(self.edges.shape[0])

    @property
    def has_poses(self) -> bool:
        """Whether the graph has pose estimates (edge-only files have none until initialized)."""
        return self.poses is not None

    @property
    def num_points(self) -> int:
        """Number of landmark points (0 without landmarks)."""
        return 0 if self.landmarks is None else self.landmarks.num_points

    @property
    def batch_size(self) -> int:
        """B when poses or measurements carry a batch dimension, else 1."""
        extra = len(self.element_shape) + 1
        for t in (self.poses, self.measurements):
            if t is not None and t.ndim == extra + 1:
                return t.shape[0]
        return 1

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the graph's tensors (that of ``measurements``)."""
        return self.measurements.dtype

    @property
    def device(self) -> torch.device:
        """Device of the graph's tensors (that of ``measurements``)."""
        return self.measurements.device

    # -- naming ---------------------------------------------------------------------------------
    def edge_tag(self) -> str:
        """The g2o tag of the graph's edges: ``EDGE_SE3:QUAT`` or ``EDGE_SE2``."""
        return "EDGE_SE3:QUAT" if self.kind == "SE3" else "EDGE_SE2"

    def edge_names(self) -> List[str]:
        """Stable per-edge names: ``"EDGE_SE3:QUAT 12 13"`` (the vertex ids), with a ``#k``
        suffix for repeated pairs."""
        tag = self.edge_tag()
        pairs = self.ids[self.edges].tolist()
        seen: dict = {}
        names = []
        for a, b in pairs:
            k = seen.get((a, b), 0)
            seen[(a, b)] = k + 1
            names.append(f"{tag} {a} {b}" + (f" #{k + 1}" if k else ""))
        return names

    def loop_closures(self) -> torch.Tensor:
        """``(E,)`` bool: edges whose vertex ids are not consecutive (see
        :func:`loop_closure_mask`); the others are odometry."""
        return loop_closure_mask(self.ids, self.edges)

    def where_edge(self, index: int) -> str:
        """``FILE:LINE`` (or the edge name) of edge ``index`` for messages."""
        if self.source and self.edge_lines:
            return f"{self.source}:{self.edge_lines[index]}"
        return self.edge_names()[index]

    # -- structure ------------------------------------------------------------------------------
    def components(self) -> np.ndarray:
        """Connected-component label ``(N,)`` of each pose (labels 0..C-1, by lowest index).

        Poses linked only through observed landmarks are in one component (the points fix
        their relative placement)."""
        edges = self.edges.cpu().numpy()
        if self.landmarks is None or self.landmarks.num_observations == 0:
            return connected_components(self.num_poses, edges)
        obs = self.landmarks.observations.cpu().numpy() + np.array([0, self.num_poses])
        labels = connected_components(self.num_poses + self.num_points, np.concatenate([edges, obs]))
        return np.unique(labels[: self.num_poses], return_inverse=True)[1].reshape(-1)

    def gauge_fixed(self, labels: Optional[np.ndarray] = None) -> torch.Tensor:
        """Vertices held constant: FIX'ed vertices, plus the lowest id of every connected
        component that has none (the gauge, as GTSAM's prior on pose 0 — but held exactly).

        ``labels``: :meth:`components`, when already computed."""
        fixed = self.fixed.clone().cpu()
        labels = self.components() if labels is None else labels
        ids = self.ids.cpu().numpy()
        for comp in np.unique(labels):
            members = np.flatnonzero(labels == comp)
            if not fixed[members].any():
                fixed[members[np.argmin(ids[members])]] = True
        return fixed

    # -- conversions ----------------------------------------------------------------------------
    def to(self, device=None, dtype=None) -> "PoseGraph":
        """Copy with float tensors moved/cast (index tensors keep their dtype)."""
        mv = functools.partial(_move, device=device, dtype=dtype)
        return replace(
            self,
            ids=mv(self.ids, False),
            poses=mv(self.poses, True),
            edges=mv(self.edges, False),
            measurements=mv(self.measurements, True),
            information=mv(self.information, True),
            fixed=mv(self.fixed, False),
            landmarks=None if self.landmarks is None else self.landmarks.to(device, dtype),
        )

    def with_poses(self, poses: torch.Tensor) -> "PoseGraph":
        """Copy with new pose estimates."""
        return replace(self, poses=poses)

    def with_points(self, points: torch.Tensor) -> "PoseGraph":
        """Copy with new landmark position estimates ``([B,] P, 3)``."""
        if self.landmarks is None:
            raise ValueError("the graph has no landmarks")
        return replace(self, landmarks=replace(self.landmarks, positions=points))


@dataclass
class Landmarks:
    """3D points and their observations from SE3 poses.

    An observation ``k`` of point ``p`` from pose ``X`` through a sensor offset ``O`` (an SE3
    pose of the sensor in the body frame, g2o's ``PARAMS_SE3OFFSET``) measures the point in
    the sensor frame: ``zₖ ≈ (X·O)⁻¹ p`` (g2o's ``EdgeSE3PointXYZ``).

    Attributes:
        ids: ``(P,)`` point vertex ids (one id space with the poses).
        positions: ``([B,] P, 3)`` estimates, or None (edge-only files).
        observations: ``(M, 2)`` long, ``(pose index, point index)`` of each observation.
        measurements: ``([B,] M, 3)`` measured points in the sensor frame.
        information: ``([B,] M, 3, 3)`` symmetric PSD information matrices.
        offsets: ``(M, 3, 4)`` sensor offset ``O`` of each observation (identity by default).
        offset_ids: ``(M,)`` long, g2o parameter id of each observation's offset.
        fixed: ``(P,)`` bool, points held constant (FIX lines).
        observation_lines, vertex_lines: line numbers in the source file, if read from one.
    """

    ids: torch.Tensor
    positions: Optional[torch.Tensor]
    observations: torch.Tensor
    measurements: torch.Tensor
    information: torch.Tensor
    offsets: torch.Tensor
    offset_ids: torch.Tensor
    fixed: torch.Tensor
    observation_lines: Optional[List[int]] = None
    vertex_lines: Optional[List[int]] = None

    @property
    def num_points(self) -> int:
        """Number of points."""
        return int(self.ids.numel())

    @property
    def num_observations(self) -> int:
        """Number of pose → point observations."""
        return int(self.observations.shape[0])

    def to(self, device=None, dtype=None) -> "Landmarks":
        """Copy with float tensors moved/cast (index tensors keep their dtype)."""
        mv = functools.partial(_move, device=device, dtype=dtype)
        return replace(
            self,
            ids=mv(self.ids, False),
            positions=mv(self.positions, True),
            observations=mv(self.observations, False),
            measurements=mv(self.measurements, True),
            information=mv(self.information, True),
            offsets=mv(self.offsets, True),
            offset_ids=mv(self.offset_ids, False),
            fixed=mv(self.fixed, False),
        )

    def observation_names(self, pose_ids: torch.Tensor) -> List[str]:
        """``"EDGE_SE3_TRACKXYZ 3 1001"`` per observation (pose id, point id)."""
        pairs = zip(pose_ids[self.observations[:, 0]].tolist(), self.ids[self.observations[:, 1]].tolist())
        return [f"EDGE_SE3_TRACKXYZ {a} {b}" for a, b in pairs]


def check_graph(what: str, graph: Any) -> "PoseGraph":
    """``graph`` when it is a :class:`PoseGraph`, else a :class:`PoseGraphError` naming
    ``what`` (the call and argument), expected and received."""
    if not isinstance(graph, PoseGraph):
        raise PoseGraphError(f"{what}: expected a posegraph.PoseGraph, received {type(graph).__name__}")
    return graph


def loop_closure_mask(ids: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """``(E,)`` bool: edges ``(i, j)`` whose vertex ids are not consecutive, ``|idᵢ − idⱼ| ≠ 1``
    — posegraph's one definition of a loop closure (odometry links consecutive ids)."""
    pair = ids.to(edges.device)[edges]
    return (pair[:, 0] - pair[:, 1]).abs() != 1


def _move(t: Optional[torch.Tensor], is_float: bool, device=None, dtype=None) -> Optional[torch.Tensor]:
    """``t`` on ``device``; cast to ``dtype`` only when it holds floats (None stays None)."""
    return None if t is None else t.to(device=device, dtype=dtype if is_float else None)


def connected_components(num_nodes: int, edges: np.ndarray) -> np.ndarray:
    """Component label per node (labels 0..C-1, numbered by each component's lowest node),
    by SciPy's graph search (``scipy.sparse.csgraph.connected_components``)."""
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    adjacency = sp.coo_matrix(
        (np.ones(len(edges), dtype=np.int8), (edges[:, 0], edges[:, 1])), shape=(num_nodes, num_nodes)
    )
    _, found = csgraph.connected_components(adjacency, directed=False)
    # Renumber by lowest node: the first node of each label, in node order.
    _, first = np.unique(found, return_index=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[found]
