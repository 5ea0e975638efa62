"""The builder: the only place that turns data into Theseus objects and validates the Theseus
variables users hand in.

Two entrances, one product (:class:`PoseGraphProblem`):

* :class:`PoseGraphBuilder` — research scripts add their own ``th.SE3``/``th.SE2`` poses,
  ``th.Point3`` points, relative-pose measurements with full information matrices, priors, and
  their own ``th.CostFunction`` terms, over the builder's poses and points or their own
  variables (:mod:`posegraph.user_costs`). Every input is checked before anything is built
  (class, tensor shape as Theseus defines it, batch size, dtype, device, unique names, known
  endpoints, no self-loops, rotations by :func:`posegraph.lie.check_rotations`' rule); NumPy
  arrays, lists and NumPy integers are converted, bools refused; each error is a
  :class:`BuilderError` that names the argument, what was expected and what was received.
* :func:`build_problem` — a :class:`~posegraph.graph.PoseGraph` read from a file, built
  without creating one Python object per pose or edge.

Both emit one vectorized :class:`~posegraph.costs.BetweenEdges` over one packed
:class:`~posegraph.variables.ManifoldArray` of poses, with a
:class:`~posegraph.weights.FullInformationWeight`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import theseus as th
import torch

from .costs import BetweenEdges, BlockSparseCostFunction, PointObservations
from .errors import PoseGraphError, check_device
from .graph import POSE_KINDS, Landmarks, PoseGraph, connected_components
from .information import PSD_TOLERANCE, first_oversized, information_bound
from .lie import _flat, check_rotations
from .mesh import LaplacianSmoothingCost
from .robust import RobustKernel, robustify
from .user_costs import PackedCost, PackedSlot, PosePriors, PositionPriors, PriorTerms
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
        user_costs: the user's own cost functions, as given (those over packed poses and
            points enter the objective wrapped in a :class:`~posegraph.user_costs.PackedCost`
            of the same name).
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


def _type_name(value: object) -> str:
    """``th.SE3``, ``torch.Tensor``, ``numpy.ndarray``, ``list``… for messages."""
    cls = type(value)
    module = cls.__module__.split(".")[0]
    if module == "theseus":
        return f"th.{cls.__name__}"
    return cls.__name__ if module == "builtins" else f"{module}.{cls.__name__}"


class _Consensus:
    """dtype, device and batch size every tensor of one graph must agree on.

    With ``batch`` given the batch size is fixed (:meth:`fix` may set it once more, from the
    first pose): every batched tensor has that batch size or 1. Without it, the first batch
    size other than 1 sets it (``build_problem`` and the layer, whose tensors are explicit).
    """

    def __init__(self, dtype: Optional[torch.dtype], device: Optional[torch.device], batch: Optional[int] = None):
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self.fixed = batch is not None
        self.batch = 1 if batch is None else int(batch)
        self.batch_from: Optional[str] = None
        self.advice = ""

    def fix(self, batch: int, origin: str, advice: str = "") -> None:
        """Fix the batch size to ``batch``, set by ``origin`` (for messages)."""
        self.fixed, self.batch, self.batch_from, self.advice = True, int(batch), origin, advice

    def check(self, what: str, tensor: torch.Tensor, batched: bool = True, received: str = "", hint: str = "") -> None:
        if batched and self.fixed and tensor.ndim and tensor.shape[0] not in (1, self.batch):
            # first: a batch explosion matters more than a dtype
            expected = "1" if self.batch == 1 else f"{self.batch} or 1"
            raise BuilderError(
                f"{what}: expected batch size {expected} ({self.batch_from}{self.advice}), received "
                f"{received or 'a tensor'} of shape {_shape_str(tensor.shape)}{hint}"
            )
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
        if self.fixed:
            return
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


def _check_element_tensor(tensor: torch.Tensor, cls: type, what: str, stacklevel: int = 1) -> torch.Tensor:
    """Shape ``(batch, *element shape)`` and finite values; for poses, the rotation rule
    (:func:`posegraph.lie.check_rotations`): returns ``tensor``, or a copy with the rotations
    beyond their precision made rotations (one warning; ``stacklevel``: frames above the
    caller it points at). Rotations that cannot be made ones are refused."""
    shape, _ = element_layout(cls)
    if tensor.ndim != 1 + len(shape) or tuple(tensor.shape[1:]) != shape:
        raise BuilderError(
            f"{what}: expected a th.{cls.__name__} tensor of shape (batch, "
            f"{', '.join(map(str, shape))}), received {_shape_str(tensor.shape)}"
        )
    if not tensor.is_floating_point():
        raise BuilderError(f"{what}: expected a floating-point tensor, received {tensor.dtype}")
    if not _all_finite(tensor):
        raise BuilderError(f"{what}: tensor has non-finite values")
    if cls not in (th.SE3, th.SE2):
        return tensor
    batched = tensor.shape[0] > 1
    return check_rotations(
        tensor, _KIND_OF_CLASS[cls], lambda k: f"{what} (batch element {k})" if batched else what,
        error=BuilderError, stacklevel=stacklevel + 1,
    )


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether every number of ``tensor`` is finite; one problem's tensor (batch 1, the
    per-call case) is summed in plain Python (a sum that overflows falls back to torch)."""
    if tensor.shape[0] == 1 and math.isfinite(sum(_flat(tensor.tolist()))):
        return True
    return bool(torch.isfinite(tensor).all())


def _one_information_accepted(rows: List[List[float]], bound: float) -> bool:
    """Whether one information matrix passes every check of :func:`_check_information` —
    finite, entries within ``bound``, not all zeros, symmetric to 1e-9, and positive definite
    by a Cholesky factorization (which proves it PSD within
    :data:`~posegraph.information.PSD_TOLERANCE`, as in
    :func:`~posegraph.information.psd_smallest_eigenvalues`) — in plain Python: the builder
    checks one matrix per call, where torch's calls on a 6×6 array cost ~4× more. False sends
    it to the batched checks, which accept it (PSD, singular) or name its problem."""
    d = len(rows)
    flat = [v for row in rows for v in row]
    if not math.isfinite(sum(flat)):
        return False
    largest = max(map(abs, flat))
    if not 0.0 < largest <= bound:
        return False
    asymmetry = 1e-9 * max(1.0, largest)
    if any(abs(rows[i][j] - rows[j][i]) > asymmetry for i in range(d) for j in range(i)):
        return False
    lower = [[0.0] * d for _ in range(d)]  # Cholesky (column by column), on the lower triangle
    for j in range(d):
        lj = lower[j]
        pivot = rows[j][j] - sum(v * v for v in lj[:j])
        if not pivot > 0.0:
            return False
        lj[j] = root = math.sqrt(pivot)
        for i in range(j + 1, d):
            li = lower[i]
            li[j] = (rows[i][j] - sum(a * b for a, b in zip(li[:j], lj[:j]))) / root
    return True


def _check_information(info: torch.Tensor, dof: int, what: str, noun: Optional[str] = None) -> torch.Tensor:
    """(d, d) or (B, d, d) symmetric PSD information → (B, d, d). ``noun``: what all-zero
    information would leave without effect (refused; the builder's calls), or None (the
    layer's batch of every edge's matrix: accepted). One matrix is checked in plain Python
    (:func:`_one_information_accepted`); the others, and any it does not accept, here."""
    received = info.shape
    if info.ndim == 2:
        info = info.unsqueeze(0)
    if info.ndim != 3 or tuple(info.shape[1:]) != (dof, dof):
        raise BuilderError(
            f"{what}: expected information of shape ({dof}, {dof}) or (batch, {dof}, {dof}), "
            f"received {_shape_str(received)}"
        )
    if not info.is_floating_point():
        raise BuilderError(f"{what}: expected a floating-point tensor, received {info.dtype}")
    if info.shape[0] == 1 and _one_information_accepted(info.tolist()[0], information_bound(info.dtype)):
        return info
    if not torch.isfinite(info).all():
        raise BuilderError(f"{what}: information has non-finite values")
    over = first_oversized(info.detach(), information_bound(info.dtype))
    if over is not None:
        raise BuilderError(f"{what}: {_oversized_message(over, info.dtype)}")
    sym_err = (info - info.transpose(-1, -2)).abs().max()
    if sym_err > 1e-9 * max(1.0, float(info.abs().max())):
        raise BuilderError(f"{what}: information must be symmetric (asymmetry {float(sym_err):.3g})")
    lam = torch.linalg.eigvalsh(info.detach().double())  # (finite: entries are within the bound)
    if (lam[:, 0] < -PSD_TOLERANCE * lam.abs().max(dim=1).values.clamp_min(1.0)).any():
        raise BuilderError(
            f"{what}: information must be positive semidefinite "
            f"(smallest eigenvalue {float(lam[:, 0].min()):.6g})"
        )
    if noun is not None and not bool(info.any()):
        raise BuilderError(
            f"{what}: received all zeros, which would give the {noun} no effect; leave it out, "
            "or give a positive semidefinite matrix that is not zero"
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


def _as_tensor(value: object, what: str, dtype: Optional[torch.dtype] = None, device=None) -> torch.Tensor:
    """The tensor of a tensor or ``th.Variable``; NumPy arrays and scalars, (nested) lists and
    tuples of numbers are converted (to ``dtype``/``device`` when given; float64 otherwise).
    Anything else — bools, strings, ragged lists — is a BuilderError naming ``what``."""
    if isinstance(value, th.Variable):
        return value.tensor
    if isinstance(value, torch.Tensor):
        return value
    if not isinstance(value, (np.ndarray, np.generic, list, tuple, int, float)) or isinstance(value, (bool, np.bool_)):
        raise BuilderError(f"{what}: expected a tensor, a th.Variable, a NumPy array or a list of numbers, received {_type_name(value)}")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        array = None
    if array is None or array.dtype.kind not in "fiu":
        raise BuilderError(
            f"{what}: expected numbers, received a {_type_name(value)} that is not a rectangular array of numbers"
            + ("" if array is None else f" ({array.dtype})")
        )
    if dtype is None:
        dtype = torch.float32 if array.dtype == np.float32 else torch.float64
    return torch.as_tensor(array.astype(np.float64), device=device).to(dtype)


def _lookup(ref: object, items: Sequence[th.Variable], index: Dict[str, int], noun: str, what: str) -> int:
    """Position of a variable given by object, name or position (a Python or NumPy integer)
    among ``items``; a bool is not a position."""
    if isinstance(ref, (bool, np.bool_)):
        raise BuilderError(f"{what}: expected a {noun} (variable, name or index), received the bool {ref!r}")
    if isinstance(ref, (int, np.integer)):
        ref = int(ref)
        if not 0 <= ref < len(items):
            raise BuilderError(f"{what}: expected a {noun} index in [0, {len(items)}), received {ref}")
        return ref
    if not isinstance(ref, (str, th.Variable)):
        raise BuilderError(f"{what}: expected a {noun} (variable, name or index), received {_type_name(ref)}")
    name = ref if isinstance(ref, str) else getattr(ref, "name", None)
    if name not in index or (not isinstance(ref, str) and items[index[name]] is not ref):
        raise BuilderError(f"{what}: refers to {name!r}, which is not a {noun} added to this builder")
    return index[name]


def _optional_name(name: object, what: str) -> Optional[str]:
    """``name`` when it is None or a non-empty str, else a BuilderError."""
    if name is not None and (not isinstance(name, str) or not name):
        raise BuilderError(f"{what} name: expected a non-empty str, received {_type_name(name)} {repr(name)[:40]}")
    return name


class _PackedObjective(th.Objective):
    """A ``th.Objective`` that refuses a cost over a variable the builder packed: Theseus would
    take it for a new variable, apart from the packed one, and the cost would have no effect
    on the solution (:meth:`PoseGraphBuilder.add_cost` is the way in)."""

    def __init__(self, dtype: Optional[torch.dtype] = None):
        super().__init__(dtype=dtype)
        #: ``id(user variable) → (variable, description)`` of every packed user variable.
        self.packed_variables: Dict[int, Tuple[th.Variable, str]] = {}

    def add(self, cost_function: th.CostFunction) -> None:
        """Theseus' ``add``, after checking that no variable of the cost is packed."""
        weight = getattr(cost_function, "weight", None)
        variables = list(cost_function.optim_vars) + list(cost_function.aux_vars)
        if weight is not None:
            variables += list(weight.optim_vars) + list(weight.aux_vars)
        for var in variables:
            hit = self.packed_variables.get(id(var))
            if hit is not None and hit[0] is var:
                raise BuilderError(
                    f"cost {cost_function.name!r}: uses {hit[1]}, which the builder packed into the "
                    "problem's variables; objective.add would treat it as a new variable, apart from "
                    "the optimized one: add the cost with PoseGraphBuilder.add_cost before build()"
                )
        super().add(cost_function)


# -- the builder -----------------------------------------------------------------------------------


class PoseGraphBuilder:
    """Collect and validate a pose graph made of Theseus variables, then build an objective.

    Example::

        b = PoseGraphBuilder()
        x0 = th.SE3(name="x0"); x1 = th.SE3(name="x1")
        b.add_pose(x0, fixed=True); b.add_pose(x1)
        b.add_between(x0, x1, measurement=th.SE3(...), information=torch.eye(6))
        b.add_prior(x1, measurement=th.SE3(...), information=torch.eye(6))
        problem = b.build()          # problem.objective is a th.Objective

    Inputs: tensors, ``th.Variable``s, NumPy arrays and lists of numbers (converted to the
    builder's dtype); indices as Python or NumPy integers (not bools).

    Batch size: ``batch_size`` problems are solved at once; every tensor has that batch size
    or 1 (one value shared by every problem). Without ``batch_size``, the first pose added
    sets it (its tensor's first dimension) — so a ``th.Point3`` of shape ``(N, 3)`` or a
    measurement of ``N`` rows on a single problem is refused rather than read as ``N``
    problems (use :meth:`add_points` for ``N`` points).

    Rotations of poses, measurements and sensor offsets follow :mod:`posegraph.lie`'s rotation
    rule (:func:`~posegraph.lie.check_rotations`): within :func:`~posegraph.lie.rotation_tolerance`
    (1e-6 in float64, 1e-4 in float32) they are used as given; beyond it they are made rotations
    in the packed copy (``2·I`` becomes ``I``; the user's variable is left as it is), with one
    warning per call naming the argument; a zero matrix, a reflection (``det R ≤ 0``) or a zero
    ``(cos, sin)`` is refused.

    Args:
        dtype: required of every tensor; by default taken from the first one added.
        device: required of every tensor; by default taken from the first one added.
            An absent device (``cuda`` without CUDA, a CUDA index beyond the devices
            present) is refused here (:class:`~posegraph.errors.DeviceError`).
        batch_size: number of problems (default: that of the first pose).
    """

    def __init__(self, dtype: Optional[torch.dtype] = None, device=None, batch_size: Optional[int] = None):
        if batch_size is not None and (isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1):
            raise BuilderError(f"batch_size: expected a positive integer, received {batch_size!r}")
        if device is not None:
            device = check_device("PoseGraphBuilder: device", device, solve=False)
        self._consensus = _Consensus(dtype, device, batch=1 if batch_size is None else int(batch_size))
        if batch_size is None:
            self._consensus.batch_from = "one problem until the first pose sets the batch size"
        else:
            self._consensus.batch_from = f"PoseGraphBuilder(batch_size={int(batch_size)})"
        self._batch_declared = batch_size is not None
        self._kind: Optional[str] = None
        self._poses: List[th.Manifold] = []
        self._fixed: List[bool] = []
        self._index: Dict[str, int] = {}
        self._names: Dict[str, str] = {}  # name -> what it names
        self._edges: List[Tuple[int, int]] = []
        self._measurements: List[torch.Tensor] = []
        self._information: List[torch.Tensor] = []
        self._edge_names: List[str] = []
        self._costs: List[Tuple[th.CostFunction, List[Optional[PackedSlot]]]] = []
        #: (pose index, value, information, name) of each add_prior / add_position_prior
        self._priors: Dict[str, List[Tuple[int, torch.Tensor, torch.Tensor, str]]] = {"pose": [], "position": []}
        for own in _BUILT_COST_NAMES:
            self._names[own] = "a cost the builder makes"
        self._points: List[th.Point3] = []
        self._point_fixed: List[bool] = []
        self._point_index: Dict[str, int] = {}
        self._obs: List[Tuple[int, int]] = []
        self._obs_meas: List[torch.Tensor] = []
        self._obs_info: List[torch.Tensor] = []
        self._obs_offsets: List[torch.Tensor] = []
        #: ``id(pose variable) → (its tensor when added, that tensor with its rotations made
        #: rotations)``: the packed copy uses the latter while the variable still holds the former
        self._made_rotations: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}

    # -- names ----------------------------------------------------------------------------------
    def _claim_name(self, name: str, what: str) -> None:
        if name in self._names:
            raise BuilderError(f"{what}: name {name!r} is already used by {self._names[name]}")
        self._names[name] = what

    def _tensor(self, value: object, what: str) -> torch.Tensor:
        """:func:`_as_tensor` in the builder's dtype and device (when known)."""
        return _as_tensor(value, what, self._consensus.dtype, self._consensus.device)

    # -- poses ----------------------------------------------------------------------------------
    def add_pose(self, pose: th.Manifold, fixed: bool = False) -> int:
        """Add a ``th.SE3`` or ``th.SE2`` pose (one kind per graph); returns its index.

        ``fixed`` poses are held constant (the gauge). When none of a connected component
        is fixed, its first pose is — unless a prior (:meth:`add_prior`,
        :meth:`add_position_prior`, or an :meth:`add_cost` cost over exactly one pose)
        anchors it: then none is, as in stock Theseus.
        """
        _check_class(pose, (th.SE3, th.SE2), "pose")
        kind = _KIND_OF_CLASS[type(pose)]
        what = f"pose {pose.name!r}"
        if self._kind is not None and kind != self._kind:
            raise BuilderError(f"{what}: expected th.{self._kind} like the other poses, received th.{kind}")
        if not self._poses and not self._batch_declared and pose.tensor.ndim >= 1:
            self._consensus.fix(
                pose.tensor.shape[0],
                f"the batch size of the first pose {pose.name!r}",
                "; declare PoseGraphBuilder(batch_size=B) to solve B problems",
            )
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
        hint: str = "",
    ) -> int:
        """Check a pose/point variable's tensor and name, then add it; returns its position."""
        if isinstance(fixed, (np.bool_, np.integer)):
            fixed = bool(fixed)
        if not isinstance(fixed, (bool, int)):
            raise BuilderError(f"{what} fixed: expected a bool, received {_type_name(fixed)}")
        packed = _check_element_tensor(var.tensor, type(var), what, stacklevel=3)
        self._consensus.check(what, var.tensor, received=f"a {_type_name(var)}", hint=hint)
        self._claim_name(var.name, what)
        if packed is not var.tensor:  # rotations made rotations: the packed copy, not the user's
            self._made_rotations[id(var)] = (var.tensor, packed)
        index[var.name] = len(items)
        items.append(var)
        fixed_flags.append(bool(fixed))
        return len(items) - 1

    def _pose_index(self, ref: Union[th.Manifold, str, int], what: str) -> int:
        return _lookup(ref, self._poses, self._index, "pose", what)

    def _measurement_and_information(
        self,
        measurement: object,
        information: object,
        cls: type,
        dof: int,
        what: str,
        hint: str = "",
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Checked ``(B|1, *shape)`` measurement of class ``cls`` and ``(B|1, dof, dof)``
        information (identity if None; all-zero information is refused: the measurement
        would have no effect)."""
        if isinstance(measurement, th.Variable):
            _check_class(measurement, (cls,), f"{what} measurement")
        meas = self._tensor(measurement, f"{what} measurement")
        if meas.ndim == len(element_layout(cls)[0]):
            meas = meas.unsqueeze(0)
        meas = _check_element_tensor(meas, cls, f"{what} measurement", stacklevel=3)
        self._consensus.check(f"{what} measurement", meas, received=f"a {_type_name(measurement)}", hint=hint)
        if information is None:
            info = torch.eye(dof, dtype=meas.dtype, device=meas.device).unsqueeze(0)
        else:
            info = self._tensor(information, f"{what} information")
            info = _check_information(info, dof, f"{what} information", "measurement")
        self._consensus.check(f"{what} information", info, received=f"a {_type_name(information)}")
        return meas, info

    def add_between(
        self,
        pose_i: Union[th.Manifold, str, int],
        pose_j: Union[th.Manifold, str, int],
        measurement: object,
        information: object = None,
        name: Optional[str] = None,
    ) -> int:
        """Add a relative-pose measurement ``Zᵢⱼ`` (Xⱼ seen from Xᵢ), residual
        ``Log(Zᵢⱼ⁻¹ Xᵢ⁻¹ Xⱼ)``, weighted by the full information matrix (identity if None).

        ``measurement``: a pose variable of the graph's kind or its tensor ``(B|1, *shape)``;
        ``information``: ``(d, d)`` or ``(B|1, d, d)``. Returns the edge index.
        """
        k = len(self._edges)
        name = _optional_name(name, f"edge #{k}")
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

    # -- priors -----------------------------------------------------------------------------------
    def _prior_what(self, name: object, noun: str) -> Tuple[Optional[str], str]:
        """The checked name and the ``what`` of a prior's messages."""
        name = _optional_name(name, noun)
        k = len(self._priors["pose" if noun == "prior" else "position"])
        return name, f"{noun} {name!r}" if name else f"{noun} #{k}"

    def add_prior(
        self,
        pose: Union[th.Manifold, str, int],
        measurement: object,
        information: object = None,
        name: Optional[str] = None,
    ) -> int:
        """Add a prior ``Z`` on a pose: residual ``Log(Z⁻¹ X)`` (Theseus' ``th.Difference``,
        GTSAM's ``PriorFactor``), weighted by the full information matrix (identity if None,
        translation then rotation as for edges). All priors are one vectorized cost
        (:class:`~posegraph.user_costs.PosePriors`, named ``"priors"``; each block named
        ``name`` or ``"prior <pose name>"``). A prior anchors its pose's component: no pose of
        it is held automatically. Returns the prior's index."""
        name, what = self._prior_what(name, "prior")
        i = self._pose_index(pose, what)
        assert self._kind is not None
        cls, _, dof = POSE_KINDS[self._kind]
        meas, info = self._measurement_and_information(measurement, information, cls, dof, what)
        if name:
            self._claim_name(name, what)
        self._priors["pose"].append((i, meas, info, name or f"prior {self._poses[i].name}"))
        return len(self._priors["pose"]) - 1

    def add_position_prior(
        self,
        pose: Union[th.Manifold, str, int],
        xyz: object,
        information: object = None,
        name: Optional[str] = None,
    ) -> int:
        """Add a prior on a pose's position (GPS): residual ``t(X) − xyz``, ``xyz`` of shape
        ``(3,)``/``(B|1, 3)`` for SE3 poses and ``(2,)``/``(B|1, 2)`` for SE2, weighted by
        ``information`` (3×3 or 2×2, identity if None). The orientation stays free: a
        component anchored by position priors alone needs them on three poses not on a line
        (SE3; two distinct ones for SE2). All are one vectorized cost
        (:class:`~posegraph.user_costs.PositionPriors`, named ``"position_priors"``). Returns
        the prior's index."""
        name, what = self._prior_what(name, "position prior")
        i = self._pose_index(pose, what)
        dim = 3 if self._kind == "SE3" else 2
        pos = self._tensor(xyz, f"{what} xyz")
        pos = pos.unsqueeze(0) if pos.ndim == 1 else pos
        if pos.ndim != 2 or pos.shape[1] != dim:
            raise BuilderError(f"{what} xyz: expected shape ({dim},) or (batch, {dim}), received {_shape_str(pos.shape)}")
        self._consensus.check(f"{what} xyz", pos, received=f"a {_type_name(xyz)}")
        if not torch.isfinite(pos).all():
            raise BuilderError(f"{what} xyz: non-finite values")
        if information is None:
            info = torch.eye(dim, dtype=pos.dtype, device=pos.device).unsqueeze(0)
        else:
            info = _check_information(self._tensor(information, f"{what} information"), dim, f"{what} information", "prior")
            self._consensus.check(f"{what} information", info, received=f"a {_type_name(information)}")
        if name:
            self._claim_name(name, what)
        self._priors["position"].append((i, pos, info, name or f"position prior {self._poses[i].name}"))
        return len(self._priors["position"]) - 1

    def _prior_terms(self, batch: int) -> List[PriorTerms]:
        terms = []
        for kind, items in self._priors.items():
            if items:
                elements = torch.tensor([i for i, _, _, _ in items], dtype=torch.long)
                values = _stack_batch([v for _, v, _, _ in items], batch)
                info = _stack_batch([w for _, _, w, _ in items], batch)
                terms.append(PriorTerms(kind, elements, values, info, [n for _, _, _, n in items]))
        return terms

    # -- points ---------------------------------------------------------------------------------
    def add_point(self, point: th.Point3, fixed: bool = False) -> int:
        """Add a ``th.Point3`` landmark (e.g. a mesh vertex); returns its index.

        Anything else — a ``th.Vector``/``th.Variable`` of shape ``(V, 3)`` in particular,
        whose vertex count Theseus would read as the batch size — is refused, and so is a
        ``th.Point3`` of shape ``(N, 3)`` on a problem of another batch size (use
        :meth:`add_points` for ``N`` points).
        """
        _check_class(point, (th.Point3,), "point")
        what = f"point {point.name!r}"
        n = point.tensor.shape[0] if point.tensor.ndim == 2 else 1
        hint = ""
        if self._consensus.batch == 1 and n > 1:
            hint = (
                f": it would be read as {n} problems; to add {n} points, use "
                f"add_points(positions of shape ({n}, 3))"
            )
        return self._register(point, self._points, self._point_index, self._point_fixed, fixed, what, hint)

    def add_points(
        self, positions: object, fixed: bool = False, names: Optional[Sequence[str]] = None
    ) -> List[th.Point3]:
        """Add ``N`` points at once from positions of shape ``(N, 3)`` (or ``(B, N, 3)`` for
        ``B`` problems); returns the new ``th.Point3`` variables (named ``names``, by default
        ``"point<k>"`` with ``k`` the point's index), which the solve writes back into."""
        pos = self._tensor(positions, "add_points positions")
        if pos.ndim not in (2, 3) or pos.shape[-1] != 3:
            raise BuilderError(f"add_points positions: expected shape (N, 3) or (batch, N, 3), received {_shape_str(pos.shape)}")
        if pos.ndim == 2:
            pos = pos.unsqueeze(0)
        n = pos.shape[1]
        if names is not None and (isinstance(names, str) or not hasattr(names, "__len__") or len(names) != n):
            raise BuilderError(f"add_points names: expected {n} names, received {repr(names)[:80]}")
        for k in range(n if names is not None else 0):
            _optional_name(names[k], f"add_points point {k}")
        first = len(self._points)
        points = [
            th.Point3(tensor=pos[:, k].clone(), name=names[k] if names is not None else f"point{first + k}")
            for k in range(n)
        ]
        for p in points:
            self.add_point(p, fixed=fixed)
        return points

    def _point_ref(self, ref: Union[th.Point3, str, int], what: str) -> int:
        return _lookup(ref, self._points, self._point_index, "point", what)

    def add_point_observation(
        self,
        pose: Union[th.Manifold, str, int],
        point: Union[th.Point3, str, int],
        measurement: object,
        information: object = None,
        offset: object = None,
        name: Optional[str] = None,
    ) -> int:
        """Add an observation of ``point`` from SE3 ``pose``: ``z ≈ (X·O)⁻¹ p``, residual
        ``(X·O)⁻¹ p − z`` weighted by ``information`` (3×3, identity if None).

        ``measurement``: ``(3,)``/``(B|1, 3)`` tensor or ``th.Point3``; ``offset``: the sensor
        pose ``O`` in the body frame, ``th.SE3`` or ``(3, 4)`` (identity if None).
        Returns the observation index.
        """
        k = len(self._obs)
        name = _optional_name(name, f"observation #{k}")
        what = f"observation {name!r}" if name else f"observation #{k}"
        if self._kind != "SE3":
            got = f"th.{self._kind} poses" if self._kind else "no poses yet"
            raise BuilderError(f"{what}: points are observed from th.SE3 poses, the builder has {got}")
        i = self._pose_index(pose, what)
        j = self._point_ref(point, what)
        rows = tuple(_as_tensor(measurement, f"{what} measurement").shape)
        hint = ""
        if self._consensus.batch == 1 and len(rows) == 2 and rows[0] > 1:
            hint = f": it would be read as {rows[0]} problems; one observation takes one measurement of shape (3,)"
        meas, info = self._measurement_and_information(measurement, information, th.Point3, 3, what, hint)
        if offset is None:
            off = torch.eye(3, 4, dtype=meas.dtype, device=meas.device)
        else:
            if isinstance(offset, th.Variable):
                _check_class(offset, (th.SE3,), f"{what} offset")
            off = self._tensor(offset, f"{what} offset")
            off = off.unsqueeze(0) if off.ndim == 2 else off
            off = _check_element_tensor(off, th.SE3, f"{what} offset", stacklevel=2)
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

    # -- users' own costs --------------------------------------------------------------------------
    def _packed_slot(self, var: th.Variable) -> Optional[PackedSlot]:
        """Where ``var`` lives when it is a pose or point added here (the same object)."""
        k = self._index.get(var.name)
        if k is not None and self._poses[k] is var:
            return PackedSlot("poses", k)
        k = self._point_index.get(var.name)
        if k is not None and self._points[k] is var:
            return PackedSlot("points", k)
        return None

    def add_cost(self, cost: th.CostFunction) -> None:
        """Add any Theseus cost function — ``th.Difference``, ``th.Between``, ``th.eb.*``, a
        ``th.AutoDiffCostFunction``, a ``th.RobustCostFunction``… — over the poses and points
        added here and/or the user's own variables. Everything is optimized jointly: the cost
        is evaluated on the current packed poses and points, with its own weight and
        Jacobians, and its Jacobian blocks enter the sparse system beside the edges'
        (:class:`~posegraph.user_costs.PackedCost`).

        Poses and points added here must be among the cost's optimization variables (not its
        auxiliary, constant, ones: they are optimized).
        """
        if not isinstance(cost, th.CostFunction):
            raise BuilderError(f"cost: expected a th.CostFunction, received {_type_name(cost)}")
        what = f"cost {cost.name!r}"
        slots = [self._packed_slot(var) for var in cost.optim_vars]
        for var, slot in zip(cost.optim_vars, slots):
            if slot is None:
                self._consensus.check(f"{what} variable {var.name!r}", var.tensor, received=f"a {_type_name(var)}")
        weight_vars = list(cost.weight.aux_vars) if isinstance(cost.weight, th.CostWeight) else []
        for var in list(cost.aux_vars) + weight_vars:
            slot = self._packed_slot(var)
            if slot is not None:
                noun = "pose" if slot.packed == "poses" else "point"
                raise BuilderError(
                    f"{what}: uses {noun} {var.name!r} as an auxiliary (constant) variable, but the "
                    f"builder optimizes it; expected it among the cost's optimization variables"
                )
            self._consensus.check(f"{what} variable {var.name!r}", var.tensor, received=f"a {_type_name(var)}")
        self._claim_name(cost.name, what)
        self._costs.append((cost, slots))

    # -- build -----------------------------------------------------------------------------------
    def _packed_tensor(self, var: th.Manifold) -> torch.Tensor:
        """The tensor a pose enters the packed poses with: its rotations made rotations when
        :meth:`add_pose` made them so (and the variable was not updated since)."""
        made = self._made_rotations.get(id(var))
        return made[1] if made is not None and made[0] is var.tensor else var.tensor

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
        poses = _stack_batch([self._packed_tensor(p) for p in self._poses], batch)
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
        own = [c for c, slots in self._costs if all(s is None for s in slots)]
        packed = [(c, slots) for c, slots in self._costs if any(s is not None for s in slots)]
        problem = build_problem(
            graph, edge_names=self._edge_names, extra_costs=own, robust=robust,
            robust_edges=robust_edges, packed_costs=packed, priors=self._prior_terms(batch),
        )
        problem.pose_variables = list(self._poses)
        problem.point_variables = list(self._points)
        problem.user_costs = [c for c, _ in self._costs]
        problem.graph = None
        guard = problem.objective
        if isinstance(guard, _PackedObjective):
            for var in self._poses:
                guard.packed_variables[id(var)] = (var, f"pose {var.name!r}")
            for var in self._points:
                guard.packed_variables[id(var)] = (var, f"point {var.name!r}")
        return problem


def _stack_batch(
    tensors: Sequence[torch.Tensor], batch: int, tail: Tuple[int, ...] = (), dtype=None, device=None
) -> torch.Tensor:
    """``(B|1, *s)`` tensors → ``(B, n, *s)``; an empty list gives ``(B, 0, *tail)``."""
    if not tensors:
        return torch.zeros(batch, 0, *tail, dtype=dtype, device=device)
    return torch.stack([t.expand(batch, *t.shape[1:]) for t in tensors], 1)


#: Names of the costs the builder makes (users' costs may not take them).
_BUILT_COST_NAMES = ("between", "point_observations", "mesh_laplacian", "priors", "position_priors")


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
    :class:`~posegraph.robust.RobustKernel`, applied to ``robust_edges`` (``"all"`` or
    ``"loop-closures"``, ids not consecutive); the error is then ``½ Σ ρ(‖W e‖²)``
    (:mod:`posegraph.robust`). Landmarks (``graph.landmarks``) add one
    :class:`~posegraph.costs.PointObservations` cost over a packed ``th.Point3`` variable;
    points that nothing observes (and no mesh ties) are held constant. ``mesh`` (see
    :func:`mesh_term`) adds a Laplacian regularizer over those points.

    ``packed_costs``: ``(cost, slots)`` pairs of Theseus costs over poses and points of the
    graph (``slots`` as :class:`~posegraph.user_costs.PackedCost`'s, element indices in
    storage order), added as PackedCosts. They join the components they touch; a component
    that one of them touches at exactly one pose (a prior) is anchored by it and gets no
    automatic gauge; the points they touch are optimized. ``priors``: pose and position
    priors (:class:`~posegraph.user_costs.PriorTerms`, element indices in storage order), one
    vectorized cost per kind (``"priors"``, ``"position_priors"``); they anchor their
    components as well.
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
