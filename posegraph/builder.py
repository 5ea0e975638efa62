"""The builder: the only place that turns data into Theseus objects and validates the Theseus
variables users hand in.

Two entrances, one product (:class:`PoseGraphProblem`):

* :class:`PoseGraphBuilder` — research scripts add their own ``th.SE3``/``th.SE2`` poses,
  ``th.Point3`` points, relative-pose measurements with full information matrices, and their own
  ``th.CostFunction`` terms. Every input is checked before anything is built (class, tensor
  shape as Theseus defines it, batch size, dtype, device, unique names, known endpoints, no
  self-loops); each error names the variable, what was expected and what was received.
* :func:`build_problem` — a :class:`~posegraph.graph.PoseGraph` read from a file, built
  without creating one Python object per pose or edge.

Both emit one vectorized :class:`~posegraph.costs.BetweenEdges` over one packed
:class:`~posegraph.variables.ManifoldArray` of poses, with a
:class:`~posegraph.weights.FullInformationWeight`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Type, Union

import theseus as th
import torch

from .costs import BetweenEdges, PointObservations
from .errors import PoseGraphError, check_device
from .graph import POSE_KINDS, Landmarks, PoseGraph
from .information import first_oversized, information_bound
from .mesh import LaplacianSmoothingCost
from .graph import POSE_KINDS, PoseGraph
from .robust import RobustKernel, robustify
from .variables import ManifoldArray, element_layout
from .weights import FullInformationWeight, cholesky_sqrt_information, symmetric_part

if TYPE_CHECKING:  # imported when used: debug reads problems
    from .debug import EdgeLinearization

TensorOrVar = Union[torch.Tensor, th.Variable]
_KIND_OF_CLASS = {cls: kind for kind, (cls, _, _) in POSE_KINDS.items()}


class BuilderError(PoseGraphError, TypeError):
    """Invalid input to the builder (a TypeError and a ValueError, for either ``except``)."""


@dataclass
class PoseGraphProblem:
    """A built pose-graph problem: the Theseus objective and the handles to read it back.

    Attributes:
        objective: the ``th.Objective`` (vectorized edge cost + any user costs).
        poses: all poses packed in one ManifoldArray ``(B, N, *shape)``.
        between: the vectorized relative-pose cost.
        kind: ``"SE2"`` or ``"SE3"``.
        ids: vertex ids ``(N,)`` (file ids, or builder insertion order).
        pose_variables: the user's own pose variables (builder path), written back by
            :meth:`write_back`.
        graph: the source PoseGraph (file path), if any.
        points: all 3D points packed in one ManifoldArray ``(B, P, 3)`` (graphs with
            landmarks), else None; ``observations`` is their pose → point cost and
            ``mesh_cost`` the Laplacian regularizer over them, when built with a mesh.
        point_variables: the user's own ``th.Point3`` variables (builder path).
    """

    objective: th.Objective
    poses: ManifoldArray
    between: BetweenEdges
    kind: str
    ids: torch.Tensor
    pose_variables: Optional[List[th.Manifold]] = None
    graph: Optional[PoseGraph] = None
    user_costs: List[th.CostFunction] = field(default_factory=list)
    points: Optional[ManifoldArray] = None
    observations: Optional[PointObservations] = None
    mesh_cost: Optional[LaplacianSmoothingCost] = None
    point_variables: Optional[List[th.Point3]] = None

    @property
    def num_poses(self) -> int:
        """Number of poses, fixed ones included."""
        return self.poses.num_elements

    @property
    def num_edges(self) -> int:
        """Number of between edges."""
        return self.between.num_blocks

    def error(self) -> torch.Tensor:
        """GTSAM's error ½ Σ eᵀΩe (= Theseus' error metric) per batch element, ``(B,)``;
        with a robust kernel, ``½ Σ ρ(eᵀΩe)``."""
        return self.objective.error_metric()

    def pose_tensor(self) -> torch.Tensor:
        """Current poses ``(B, N, *shape)``."""
        return self.poses.tensor

    def write_back(self) -> None:
        """Copy the packed poses (and points) into the user's own variables (builder path)."""
        for k, var in enumerate(self.pose_variables or []):
            var.update(self.poses.tensor[:, k])
        if self.points is not None:
            for k, var in enumerate(self.point_variables or []):
                var.update(self.points.tensor[:, k])

    def edge(self, name: str) -> "EdgeLinearization":
        """The error and Jacobian blocks of one edge (``"EDGE_SE3:QUAT 12 13"``; any residual
        block or cost function by name) at the current poses, without the dense Jacobian
        (:func:`posegraph.debug.edge_linearization`); raises
        :class:`~posegraph.debug.UnknownEdgeError` naming ``name`` when there is none."""
        from .debug import ElementNames, edge_linearization

        return edge_linearization(self.objective, name, ElementNames.for_problem(self))

    def point_tensor(self) -> Optional[torch.Tensor]:
        """Current points ``(B, P, 3)``, or None without landmarks."""
        return None if self.points is None else self.points.tensor

    def to_graph(self, batch_index: Optional[int] = None) -> PoseGraph:
        """A PoseGraph with the current poses (one batch element when ``batch_index`` given,
        or when the batch has a single element)."""
        if self.graph is None:
            raise ValueError("this problem was not built from a PoseGraph")
        poses = self.poses.tensor.detach()
        points = None if self.points is None else self.points.tensor.detach()
        if batch_index is not None or poses.shape[0] == 1:
            poses = poses[batch_index or 0]
            points = None if points is None else points[batch_index or 0]
        graph = self.graph.with_poses(poses)
        return graph if points is None else graph.with_points(points)


# -- checks shared by both entrances --------------------------------------------------------------


def _shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


class _Consensus:
    """dtype, device and batch size every tensor of one graph must agree on."""

    def __init__(self, dtype: Optional[torch.dtype], device: Optional[torch.device]):
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self.batch = 1
        self.batch_from: Optional[str] = None

    def check(self, what: str, tensor: torch.Tensor, batched: bool = True) -> None:
        if not tensor.is_floating_point():
            raise BuilderError(f"{what}: expected a floating-point tensor, received {tensor.dtype}")
        if self.dtype is None:
            self.dtype = tensor.dtype
        elif tensor.dtype != self.dtype:
            raise BuilderError(f"{what}: expected dtype {self.dtype}, received {tensor.dtype}")
        if self.device is None:
            self.device = tensor.device
        elif tensor.device != self.device:
            raise BuilderError(f"{what}: expected device {self.device}, received {tensor.device}")
        if not batched:
            return
        b = tensor.shape[0]
        if b != 1 and self.batch != 1 and b != self.batch:
            raise BuilderError(
                f"{what}: expected batch size {self.batch} (as {self.batch_from}) or 1, "
                f"received {b}"
            )
        if b != 1 and self.batch == 1:
            self.batch, self.batch_from = b, what


def _check_class(var: object, expected: Sequence[type], what: str) -> None:
    if type(var) not in expected:
        names = " or ".join(f"th.{c.__name__}" for c in expected)
        got = type(var).__module__.split(".")[0] + "." + type(var).__name__
        hint = ""
        if isinstance(var, th.Variable) and th.Point3 in expected:
            hint = (
                f"; a {type(var).__name__} of tensor shape {_shape_str(var.tensor.shape)} would "
                "have its first dimension read as the batch size"
            )
        name = getattr(var, "name", None)
        raise BuilderError(
            f"{what}{' ' + repr(name) if name else ''}: expected {names}, received {got}{hint}"
        )


def _check_element_tensor(tensor: torch.Tensor, cls: type, what: str) -> None:
    shape, _ = element_layout(cls)
    if tensor.ndim != 1 + len(shape) or tuple(tensor.shape[1:]) != shape:
        raise BuilderError(
            f"{what}: expected a th.{cls.__name__} tensor of shape (batch, "
            f"{', '.join(map(str, shape))}), received {_shape_str(tensor.shape)}"
        )
    if not torch.isfinite(tensor).all():
        raise BuilderError(f"{what}: tensor has non-finite values")


def _check_information(info: torch.Tensor, dof: int, what: str) -> torch.Tensor:
    """(d, d) or (B, d, d) symmetric PSD information → (B, d, d)."""
    received = info.shape
    if info.ndim == 2:
        info = info.unsqueeze(0)
    if info.ndim != 3 or tuple(info.shape[1:]) != (dof, dof):
        raise BuilderError(
            f"{what}: expected information of shape ({dof}, {dof}) or (batch, {dof}, {dof}), "
            f"received {_shape_str(received)}"
        )
    if not torch.isfinite(info).all():
        raise BuilderError(f"{what}: information has non-finite values")
    over = first_oversized(info.detach(), information_bound(info.dtype))
    if over is not None:
        raise BuilderError(f"{what}: {_oversized_message(over, info.dtype)}")
    sym_err = (info - info.transpose(-1, -2)).abs().max()
    if sym_err > 1e-9 * max(1.0, float(info.abs().max())):
        raise BuilderError(f"{what}: information must be symmetric (asymmetry {float(sym_err):.3g})")
    lam = torch.linalg.eigvalsh(info.detach().double())
    if (lam[:, 0] < -1e-9 * lam.abs().max(dim=1).values.clamp_min(1.0)).any():
        raise BuilderError(
            f"{what}: information must be positive semidefinite "
            f"(smallest eigenvalue {float(lam[:, 0].min()):.6g})"
        )
    return info


def _oversized_message(over: Tuple[int, int, int, float], dtype: torch.dtype) -> str:
    """Message for :func:`~posegraph.information.first_oversized`'s finding."""
    _, row, col, value = over
    return (
        f"information entry (row {row}, column {col}) is {value:.6g}; expected a finite "
        f"magnitude ≤ {information_bound(dtype):.0e} in {str(dtype).replace('torch.', '')} "
        "(larger information overflows the cost and its normal equations)"
    )


def _check_graph_information(
    info: torch.Tensor, dtype: torch.dtype, source: Optional[str], name, lines: Optional[Sequence[int]]
) -> None:
    """Refuse non-finite information, or entries beyond the bound of the solve's ``dtype``
    (:func:`~posegraph.information.information_bound`), naming the edge (``name(k)``) and its
    line. One vectorized pass over ``info`` ``([B,] E, d, d)``."""
    over = first_oversized(info.detach(), information_bound(dtype))
    if over is not None:
        k = over[0]
        raise PoseGraphError(
            f"{name(k)}: {_oversized_message(over, dtype)}", source, lines[k] if lines else None
        )


def _as_tensor(value: TensorOrVar) -> torch.Tensor:
    return value.tensor if isinstance(value, th.Variable) else value


def _lookup(ref: Union[th.Variable, str, int], items: Sequence[th.Variable], index: Dict[str, int], noun: str, what: str) -> int:
    """Position of a variable given by object, name or position among ``items``."""
    if isinstance(ref, int):
        if not 0 <= ref < len(items):
            raise BuilderError(f"{what}: expected a {noun} index in [0, {len(items)}), received {ref}")
        return ref
    name = ref if isinstance(ref, str) else getattr(ref, "name", None)
    if name not in index or (not isinstance(ref, str) and items[index[name]] is not ref):
        raise BuilderError(f"{what}: refers to {name!r}, which is not a {noun} added to this builder")
    return index[name]


# -- the builder -----------------------------------------------------------------------------------


class PoseGraphBuilder:
    """Collect and validate a pose graph made of Theseus variables, then build an objective.

    Example::

        b = PoseGraphBuilder()
        x0 = th.SE3(name="x0"); x1 = th.SE3(name="x1")
        b.add_pose(x0, fixed=True); b.add_pose(x1)
        b.add_between(x0, x1, measurement=th.SE3(...), information=torch.eye(6))
        problem = b.build()          # problem.objective is a th.Objective

    Args:
        dtype: required of every tensor; by default taken from the first one added.
        device: required of every tensor; by default taken from the first one added.
            An absent device (``cuda`` without CUDA, a CUDA index beyond the devices
            present) is refused here (:class:`~posegraph.errors.DeviceError`).
    """

    def __init__(self, dtype: Optional[torch.dtype] = None, device=None):
        if device is not None:
            device = check_device("PoseGraphBuilder: device", device, solve=False)
        self._consensus = _Consensus(dtype, device)
        self._kind: Optional[str] = None
        self._poses: List[th.Manifold] = []
        self._fixed: List[bool] = []
        self._index: Dict[str, int] = {}
        self._names: Dict[str, str] = {}  # name -> what it names
        self._edges: List[Tuple[int, int]] = []
        self._measurements: List[torch.Tensor] = []
        self._information: List[torch.Tensor] = []
        self._edge_names: List[str] = []
        self._costs: List[th.CostFunction] = []
        self._points: List[th.Point3] = []
        self._point_fixed: List[bool] = []
        self._point_index: Dict[str, int] = {}
        self._obs: List[Tuple[int, int]] = []
        self._obs_meas: List[torch.Tensor] = []
        self._obs_info: List[torch.Tensor] = []
        self._obs_offsets: List[torch.Tensor] = []

    # -- names ----------------------------------------------------------------------------------
    def _claim_name(self, name: str, what: str) -> None:
        if name in self._names:
            raise BuilderError(f"{what}: name {name!r} is already used by {self._names[name]}")
        self._names[name] = what

    # -- poses ----------------------------------------------------------------------------------
    def add_pose(self, pose: th.Manifold, fixed: bool = False) -> int:
        """Add a ``th.SE3`` or ``th.SE2`` pose (one kind per graph); returns its index.

        ``fixed`` poses are held constant (the gauge); when none is fixed, the first pose
        of every connected component is.
        """
        _check_class(pose, (th.SE3, th.SE2), "pose")
        kind = _KIND_OF_CLASS[type(pose)]
        what = f"pose {pose.name!r}"
        if self._kind is not None and kind != self._kind:
            raise BuilderError(f"{what}: expected th.{self._kind} like the other poses, received th.{kind}")
        index = self._register(pose, self._poses, self._index, self._fixed, fixed, what)
        self._kind = kind
        return index

    def _register(
        self,
        var: th.Manifold,
        items: List,
        index: Dict[str, int],
        fixed_flags: List[bool],
        fixed: bool,
        what: str,
    ) -> int:
        """Check a pose/point variable's tensor and name, then add it; returns its position."""
        _check_element_tensor(var.tensor, type(var), what)
        self._consensus.check(what, var.tensor)
        self._claim_name(var.name, what)
        index[var.name] = len(items)
        items.append(var)
        fixed_flags.append(bool(fixed))
        return len(items) - 1

    def _pose_index(self, ref: Union[th.Manifold, str, int], what: str) -> int:
        return _lookup(ref, self._poses, self._index, "pose", what)

    def _measurement_and_information(
        self,
        measurement: TensorOrVar,
        information: Optional[TensorOrVar],
        cls: type,
        dof: int,
        what: str,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Checked ``(B|1, *shape)`` measurement of class ``cls`` and ``(B|1, dof, dof)``
        information (identity if None)."""
        if isinstance(measurement, th.Variable):
            _check_class(measurement, (cls,), f"{what} measurement")
        meas = _as_tensor(measurement)
        if meas.ndim == len(element_layout(cls)[0]):
            meas = meas.unsqueeze(0)
        _check_element_tensor(meas, cls, f"{what} measurement")
        self._consensus.check(f"{what} measurement", meas)
        if information is None:
            info = torch.eye(dof, dtype=meas.dtype, device=meas.device).unsqueeze(0)
        else:
            info = _check_information(_as_tensor(information), dof, f"{what} information")
        self._consensus.check(f"{what} information", info)
        return meas, info

    def add_between(
        self,
        pose_i: Union[th.Manifold, str, int],
        pose_j: Union[th.Manifold, str, int],
        measurement: TensorOrVar,
        information: Optional[TensorOrVar] = None,
        name: Optional[str] = None,
    ) -> int:
        """Add a relative-pose measurement ``Zᵢⱼ`` (Xⱼ seen from Xᵢ), residual
        ``Log(Zᵢⱼ⁻¹ Xᵢ⁻¹ Xⱼ)``, weighted by the full information matrix (identity if None).

        ``measurement``: a pose variable of the graph's kind or its tensor ``(B|1, *shape)``;
        ``information``: ``(d, d)`` or ``(B|1, d, d)``. Returns the edge index.
        """
        k = len(self._edges)
        what = f"edge {name!r}" if name else f"edge #{k}"
        i = self._pose_index(pose_i, what)
        j = self._pose_index(pose_j, what)
        if i == j:
            raise BuilderError(f"{what}: self-loop on pose {self._poses[i].name!r}")
        assert self._kind is not None
        cls, _, dof = POSE_KINDS[self._kind]
        meas, info = self._measurement_and_information(measurement, information, cls, dof, what)
        edge_name = name or f"between {self._poses[i].name} {self._poses[j].name}"
        if name:
            self._claim_name(name, what)
        self._edges.append((i, j))
        self._measurements.append(meas)
        self._information.append(info)
        self._edge_names.append(edge_name)
        return k

    # -- points ---------------------------------------------------------------------------------
    def add_point(self, point: th.Point3, fixed: bool = False) -> int:
        """Add a ``th.Point3`` landmark (e.g. a mesh vertex); returns its index.

        Anything else — a ``th.Vector``/``th.Variable`` of shape ``(V, 3)`` in particular,
        whose vertex count Theseus would read as the batch size — is refused.
        """
        _check_class(point, (th.Point3,), "point")
        what = f"point {point.name!r}"
        return self._register(point, self._points, self._point_index, self._point_fixed, fixed, what)

    def _point_ref(self, ref: Union[th.Point3, str, int], what: str) -> int:
        return _lookup(ref, self._points, self._point_index, "point", what)

    def add_point_observation(
        self,
        pose: Union[th.Manifold, str, int],
        point: Union[th.Point3, str, int],
        measurement: TensorOrVar,
        information: Optional[TensorOrVar] = None,
        offset: Optional[TensorOrVar] = None,
        name: Optional[str] = None,
    ) -> int:
        """Add an observation of ``point`` from SE3 ``pose``: ``z ≈ (X·O)⁻¹ p``, residual
        ``(X·O)⁻¹ p − z`` weighted by ``information`` (3×3, identity if None).

        ``measurement``: ``(3,)``/``(B|1, 3)`` tensor or ``th.Point3``; ``offset``: the sensor
        pose ``O`` in the body frame, ``th.SE3`` or ``(3, 4)`` (identity if None).
        Returns the observation index.
        """
        k = len(self._obs)
        what = f"observation {name!r}" if name else f"observation #{k}"
        if self._kind != "SE3":
            got = f"th.{self._kind} poses" if self._kind else "no poses yet"
            raise BuilderError(f"{what}: points are observed from th.SE3 poses, the builder has {got}")
        i = self._pose_index(pose, what)
        j = self._point_ref(point, what)
        meas, info = self._measurement_and_information(measurement, information, th.Point3, 3, what)
        if offset is None:
            off = torch.eye(3, 4, dtype=meas.dtype, device=meas.device)
        else:
            if isinstance(offset, th.Variable):
                _check_class(offset, (th.SE3,), f"{what} offset")
            off = _as_tensor(offset)
            off = off.unsqueeze(0) if off.ndim == 2 else off
            _check_element_tensor(off, th.SE3, f"{what} offset")
            if off.shape[0] != 1:
                raise BuilderError(f"{what} offset: expected one sensor offset (1, 3, 4), received {_shape_str(off.shape)}")
            self._consensus.check(f"{what} offset", off)
            off = off[0]
        if name:
            self._claim_name(name, what)
        self._obs.append((i, j))
        self._obs_meas.append(meas)
        self._obs_info.append(info)
        self._obs_offsets.append(off)
        return k

    def _landmarks(self, batch: int) -> Optional[Landmarks]:
        if not self._points:
            return None
        num_obs = len(self._obs)
        dtype, device = self._consensus.dtype, self._consensus.device
        return Landmarks(
            ids=torch.arange(len(self._points)),
            positions=_stack_batch([p.tensor for p in self._points], batch),
            observations=torch.tensor(self._obs, dtype=torch.long).reshape(num_obs, 2),
            measurements=_stack_batch(self._obs_meas, batch, (3,), dtype, device),
            information=_stack_batch(self._obs_info, batch, (3, 3), dtype, device),
            offsets=torch.stack(self._obs_offsets) if num_obs else torch.zeros(0, 3, 4, dtype=dtype, device=device),
            offset_ids=torch.zeros(num_obs, dtype=torch.long),
            fixed=torch.tensor(self._point_fixed, dtype=torch.bool),
        )

    def add_cost(self, cost: th.CostFunction) -> None:
        """Add a user's own Theseus cost function over its own variables (not the poses
        added here, which are packed: use ``add_between`` for pose–pose terms)."""
        if not isinstance(cost, th.CostFunction):
            raise BuilderError(f"cost: expected a th.CostFunction, received {type(cost).__name__}")
        self._claim_name(cost.name, f"cost {cost.name!r}")
        for var in list(cost.optim_vars) + list(cost.aux_vars):
            if (var.name in self._index and self._poses[self._index[var.name]] is var) or (
                var.name in self._point_index and self._points[self._point_index[var.name]] is var
            ):
                raise BuilderError(
                    f"cost {cost.name!r}: uses {var.name!r}, which the builder packs with the other "
                    "poses/points; expected costs over other variables"
                )
            self._consensus.check(f"cost {cost.name!r} variable {var.name!r}", var.tensor)
        self._costs.append(cost)

    # -- build -----------------------------------------------------------------------------------
    def build(
        self, robust: Union[RobustKernel, str, None] = None, robust_edges: str = "all"
    ) -> PoseGraphProblem:
        """Validate the whole graph and build the Theseus objective (``robust``,
        ``robust_edges``: as :func:`build_problem`; ids are the insertion order)."""
        if not self._poses:
            raise BuilderError("graph: expected at least one pose, received none")
        if not self._edges:
            raise BuilderError("graph: expected at least one edge, received none")
        batch = self._consensus.batch
        poses = _stack_batch([p.tensor for p in self._poses], batch)
        meas = _stack_batch(self._measurements, batch)
        info = _stack_batch(self._information, batch)
        assert self._kind is not None
        graph = PoseGraph(
            kind=self._kind,
            ids=torch.arange(len(self._poses)),
            poses=poses,
            edges=torch.tensor(self._edges, dtype=torch.long),
            measurements=meas,
            information=info,
            fixed=torch.tensor(self._fixed, dtype=torch.bool),
            landmarks=self._landmarks(batch),
        )
        problem = build_problem(
            graph, edge_names=self._edge_names, extra_costs=self._costs, robust=robust,
            robust_edges=robust_edges,
        )
        problem.pose_variables = list(self._poses)
        problem.point_variables = list(self._points)
        problem.graph = None
        return problem


def _stack_batch(
    tensors: Sequence[torch.Tensor], batch: int, tail: Tuple[int, ...] = (), dtype=None, device=None
) -> torch.Tensor:
    """``(B|1, *s)`` tensors → ``(B, n, *s)``; an empty list gives ``(B, 0, *tail)``."""
    if not tensors:
        return torch.zeros(batch, 0, *tail, dtype=dtype, device=device)
    return torch.stack([t.expand(batch, *t.shape[1:]) for t in tensors], 1)


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
) -> PoseGraphProblem:
    """Build the Theseus objective of a PoseGraph (vectorized: no per-edge objects).

    The gauge is held by fixed vertices (``graph.gauge_fixed()``), not by a prior.
    ``robust``: a kernel such as ``"huber:1.0"`` / ``"cauchy:0.5"`` or a
    :class:`~posegraph.robust.RobustKernel`, applied to ``robust_edges`` (``"all"`` or
    ``"loop-closures"``, ids not consecutive); the error is then ``½ Σ ρ(‖W e‖²)``
    (:mod:`posegraph.robust`). Landmarks (``graph.landmarks``) add one
    :class:`~posegraph.costs.PointObservations` cost over a packed ``th.Point3`` variable;
    points that nothing observes (and no mesh ties) are held constant. ``mesh`` (see
    :func:`mesh_term`) adds a Laplacian regularizer over those points.
    """
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
    for what, t, expected in checks:
        if tuple(t.shape[1:]) != expected:
            raise PoseGraphError(
                f"{what}: expected shape (batch, {', '.join(map(str, expected))}), "
                f"received {_shape_str(t.shape)}",
                g.source,
            )
        consensus.check(what, t)
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
    objective = th.Objective(dtype=poses.dtype)
    objective.add(between)
    points, observations, mesh_cost = _landmark_costs(g, pose_var, consensus, mesh)
    for cost in (observations, mesh_cost, *extra_costs):
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
        user_costs=list(extra_costs),
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
    from .errors import GraphStructureError

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
    g: PoseGraph, pose_var: ManifoldArray, consensus: _Consensus, mesh: Optional[MeshTerm]
) -> Tuple[Optional[ManifoldArray], Optional[PointObservations], Optional[LaplacianSmoothingCost]]:
    """The points variable, their observation cost and the mesh regularizer (each or None)."""
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
    for what, t, expected in (
        ("points", pos, (num_points, 3)),
        ("point measurements", meas, (num_obs, 3)),
        ("point information", info, (num_obs, 3, 3)),
        ("point offsets", lm.offsets.unsqueeze(0), (num_obs, 3, 4)),
    ):
        if tuple(t.shape[1:]) != expected:
            raise PoseGraphError(
                f"{what}: expected shape (batch, {', '.join(map(str, expected))}), "
                f"received {_shape_str(t.shape)}",
                g.source,
            )
        consensus.check(what, t)
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
