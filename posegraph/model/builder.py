"""The builder: the only place that turns data into Theseus objects and validates the Theseus
variables users hand in.

Two entrances, one product (:class:`~posegraph.model.problem.PoseGraphProblem`):

* :class:`PoseGraphBuilder` — research scripts add their own ``th.SE3``/``th.SE2`` poses,
  ``th.Point3`` points, relative-pose measurements with full information matrices, priors, and
  their own ``th.CostFunction`` terms, over the builder's poses and points or their own
  variables (:mod:`posegraph.model.user_costs`). Every input is checked before anything is built
  (class, tensor shape as Theseus defines it, batch size, dtype, device, unique names, known
  endpoints, no self-loops, rotations by :func:`posegraph.lie.check_rotations`' rule); NumPy
  arrays, lists and NumPy integers are converted, bools refused; each error is a
  :class:`~posegraph.model.checks.BuilderError` that names the argument, what was expected and what was received.
* :func:`~posegraph.model.build.build_problem` — a :class:`~posegraph.graph.PoseGraph` read from a file, built
  without creating one Python object per pose or edge.

Both emit one vectorized :class:`~posegraph.model.between.BetweenEdges` over one packed
:class:`~posegraph.model.variables.ManifoldArray` of poses, with a
:class:`~posegraph.model.weights.FullInformationWeight`.

One module because :class:`PoseGraphBuilder` is one class (~470 lines) whose methods share its
state — the agreed batch size, dtype and device, the name index, the packed slots; its checks
(:mod:`~posegraph.model.checks`), its product (:mod:`~posegraph.model.problem`) and the
PoseGraph entrance (:mod:`~posegraph.model.build`) live apart.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import theseus as th
import torch

from posegraph.errors import check_device
from posegraph.graph import POSE_KINDS, Landmarks, PoseGraph
from posegraph.model.robust import RobustKernel
from posegraph.model.user_costs import PackedSlot, PriorTerms
from posegraph.model.variables import element_layout
from posegraph.model.checks import (
    _KIND_OF_CLASS,
    BuilderError,
    _as_tensor,
    _check_class,
    _check_element_tensor,
    _check_information,
    _Consensus,
    _lookup,
    _optional_name,
    _shape_str,
    _type_name,
)
from posegraph.model.problem import PoseGraphProblem, _PackedObjective
from posegraph.model.build import _BUILT_COST_NAMES, build_problem


TensorOrVar = Union[torch.Tensor, th.Variable]


# -- checks shared by both entrances --------------------------------------------------------------


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
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise BuilderError(f"PoseGraphBuilder: dtype: expected a floating-point torch.dtype, received {dtype!r}")
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
        (:class:`~posegraph.model.user_costs.PosePriors`, named ``"priors"``; each block named
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
        (:class:`~posegraph.model.user_costs.PositionPriors`, named ``"position_priors"``). Returns
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
        (:class:`~posegraph.model.user_costs.PackedCost`).

        Poses and points added here must be among the cost's optimization variables (not its
        auxiliary, constant, ones: they are optimized). The cost's weight must weigh an error
        of the cost's dimension (a ``th.DiagonalCostWeight`` of length ``cost.dim()`` or 1, any
        ``th.ScaleCostWeight``); another is refused here, naming the cost and both dimensions.
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
        _check_weight_dim(cost, what)
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


def _check_weight_dim(cost: th.CostFunction, what: str) -> None:
    """The cost's weight must weigh an error of the cost's dimension ``cost.dim()``.

    Theseus multiplies the error ``(B, dim)`` by a ``th.DiagonalCostWeight``'s diagonal
    ``(B|1, d)`` elementwise (``theseus/core/cost_weight.py``, ``weight_error``), so ``d`` must be
    ``dim`` or 1 (broadcast: a scale); a ``th.ScaleCostWeight`` ``(B|1, 1)`` weighs any
    dimension. Any other weight is tried on a zero error of the cost's dimension: it must
    return an error of that dimension. A mismatch would otherwise surface as torch's
    broadcasting error in the middle of the solve."""
    weight = cost.weight
    if not isinstance(weight, th.CostWeight):
        return
    dim = int(cost.dim())
    wname = f"th.{type(weight).__name__}" if type(weight).__module__.startswith("theseus") else type(weight).__name__
    if isinstance(weight, th.DiagonalCostWeight):
        d = int(weight.diagonal.tensor.shape[-1])
        if d not in (dim, 1):
            raise BuilderError(
                f"{what}: weight {wname}: expected a diagonal of length {dim} (the cost's error "
                f"dimension) or 1, received length {d} (diagonal of shape "
                f"{_shape_str(weight.diagonal.tensor.shape)})"
            )
        return
    if isinstance(weight, th.ScaleCostWeight):
        return
    tensors = [v.tensor for v in weight.aux_vars] + [v.tensor for v in weight.optim_vars]
    like = next((t for t in tensors if t.is_floating_point()), None)
    zero = torch.zeros(1, dim) if like is None else torch.zeros(1, dim, dtype=like.dtype, device=like.device)
    try:
        with torch.no_grad():
            out = weight.weight_error(zero)
    except (RuntimeError, ValueError, IndexError) as err:
        raise BuilderError(
            f"{what}: weight {wname}: expected a weight of an error of dimension {dim} (the "
            f"cost's), received one that cannot weigh it ({err})"
        ) from None
    if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[-1] != dim:
        raise BuilderError(
            f"{what}: weight {wname}: expected a weighted error of dimension {dim} (the cost's), "
            f"received dimension {out.shape[-1]}"
        )


def _stack_batch(
    tensors: Sequence[torch.Tensor], batch: int, tail: Tuple[int, ...] = (), dtype=None, device=None
) -> torch.Tensor:
    """``(B|1, *s)`` tensors → ``(B, n, *s)``; an empty list gives ``(B, 0, *tail)``."""
    if not tensors:
        return torch.zeros(batch, 0, *tail, dtype=dtype, device=device)
    return torch.stack([t.expand(batch, *t.shape[1:]) for t in tensors], 1)


