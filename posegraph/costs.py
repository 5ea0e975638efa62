"""Vectorized cost functions: one Theseus cost function for a whole set of residual blocks.

A :class:`BlockSparseCostFunction` is an ordinary ``th.CostFunction`` (errors, Jacobians,
weights, names) whose error is ``R`` residual blocks of size ``d`` and whose Jacobian is known
to be block sparse. Besides the dense ``jacobians()`` Theseus asks of every cost, it exposes
the blocks themselves (:meth:`block_jacobians`) and where they sit (:meth:`block_layout`), so
that :class:`posegraph.solve.linearization.BlockSparseLinearization` places them all with one
index operation instead of a Python loop per edge.
"""

from __future__ import annotations

import abc
import operator
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import theseus as th
import torch

from . import geometry, native
from .variables import ManifoldArray, element_columns, element_dof
from .weights import BlockCostWeight, FullInformationWeight, LinearBlockWeight


@dataclass(frozen=True)
class JacobianBlocks:
    """Where ``K`` Jacobian blocks of a cost sit: block ``k`` is d(residual ``rows[k]``) /
    d(element ``elements[k]`` of ``variable``). ``variable`` is a ManifoldArray, or any other
    optimization variable as one element (index 0; see :func:`~posegraph.variables.element_columns`)."""

    variable: th.Manifold
    rows: torch.Tensor
    elements: torch.Tensor


class BlockSparseCostFunction(th.CostFunction, abc.ABC):
    """A cost made of ``num_blocks`` residual blocks of size ``block_dim`` over ManifoldArrays.

    Subclasses implement :meth:`block_layout` (static structure), :meth:`block_error` and
    :meth:`block_jacobians` (unweighted, one tensor per entry of the layout).
    """

    def __init__(
        self,
        weight: BlockCostWeight,
        block_dim: int,
        num_blocks: int,
        name: Optional[str] = None,
        block_names: Optional[Union[Sequence[str], Callable[[], Sequence[str]]]] = None,
    ):
        super().__init__(weight, name=name)
        if isinstance(weight, BlockCostWeight) and weight.block_dim != block_dim:
            raise ValueError(
                f"cost {self.name!r}: weight block size {weight.block_dim} does not match "
                f"residual block size {block_dim}"
            )
        self.block_dim = block_dim
        self.num_blocks = num_blocks
        # Names (or a function making them, called when a name is first asked for).
        self._block_names = block_names if block_names is None or callable(block_names) else list(block_names)

    # -- to implement ----------------------------------------------------------------------
    @abc.abstractmethod
    def block_layout(self) -> List[JacobianBlocks]:
        """Static placement of the Jacobian blocks (same for every evaluation)."""

    @abc.abstractmethod
    def block_error(self) -> torch.Tensor:
        """Unweighted error, ``(B, num_blocks, block_dim)``."""

    @abc.abstractmethod
    def block_jacobians(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Unweighted Jacobian blocks ``[(B, K_i, block_dim, element_dof_i)]`` in layout order,
        and the unweighted block error."""

    # -- derived -----------------------------------------------------------------------------
    def dim(self) -> int:
        """Length of the flat error: ``block_dim · num_blocks``."""
        return self.block_dim * self.num_blocks

    def error(self) -> torch.Tensor:
        """Unweighted error, flattened to ``(B, num_blocks · block_dim)``."""
        err = self.block_error()
        return err.reshape(err.shape[0], -1)

    def weighted_block_error(self) -> torch.Tensor:
        """Weighted error, ``(B, num_blocks, block_dim)``."""
        return self.weight.weight_block_error(self.block_error())

    def weighted_error(self) -> torch.Tensor:
        """Weighted error, flattened to ``(B, num_blocks · block_dim)``."""
        err = self.weighted_block_error()
        return err.reshape(err.shape[0], -1)

    def weighted_block_jacobians_error(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Weighted Jacobian blocks (layout order) and weighted block error."""
        jacs, err = self.block_jacobians()
        weight: BlockCostWeight = self.weight
        rows = [lay.rows for lay in self.block_layout()]
        return weight.weight_block_jacobians_and_error(jacs, rows, err)

    def place_weighted_block_jacobians(
        self, out: np.ndarray, slots: Sequence[BlockSlots], atb: Optional[np.ndarray] = None
    ) -> Optional[torch.Tensor]:
        """Write the weighted Jacobian blocks straight to A's CSR values ``out`` where ``slots``
        (one :class:`BlockSlots` per layout entry) puts them, and return the weighted block
        error; or ``None`` (nothing written) where this cost has no such route. With ``atb``
        (one value per column of A), also add this cost's rows' share of ``Aᵀb`` (``b = −W e``)
        to it, in place, summed in the order of A's rows. The linearization asks first, for one
        graph in float64 on CPU, and otherwise places :meth:`weighted_block_jacobians_error`'s
        blocks itself."""
        return None

    def jacobians(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Dense Jacobians ``(B, dim, var.dof())`` per optimization variable (Theseus' API).

        Size grows as residuals × variable dof: meant for small problems and inspection; the
        sparse solve path uses :meth:`block_jacobians` and never calls this.
        """
        return self._dense_jacobians(*self.block_jacobians())

    def _dense_jacobians(self, jacs: Sequence[torch.Tensor], err: torch.Tensor) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Dense ``(B, dim, var.dof())`` per optimization variable from Jacobian blocks in
        layout order and the block error ``(B, num_blocks, block_dim)``."""
        batch = err.shape[0]
        dense = {
            id(v): err.new_zeros(batch, self.num_blocks, self.block_dim, v.dof())
            for v in self.optim_vars
        }
        for jac, lay in zip(jacs, self.block_layout()):
            var, e = lay.variable, element_dof(lay.variable)
            col = element_columns(var).to(jac.device)[lay.elements]
            keep = col >= 0
            out = dense[id(var)].view(batch, self.num_blocks, self.block_dim, var.dof() // e, e)  # (not -1: may be empty)
            blk = jac.expand(batch, *jac.shape[1:])[:, keep]
            out.permute(1, 3, 0, 2, 4).index_put_(  # (R, N, B, d, e) view of out
                (lay.rows[keep], col[keep] // e),
                blk.permute(1, 0, 2, 3),  # (K, B, d, e)
                accumulate=True,
            )
        mats = [dense[id(v)].reshape(batch, self.dim(), v.dof()) for v in self.optim_vars]
        return mats, err.reshape(batch, -1)

    @property
    def block_names(self) -> Optional[List[str]]:
        """Per-block names, when given (made on first use when given as a function).

        Measured (docs/performance.md, 'What each speed mechanism pays'): naming edges only when
        asked saves 24–93% of an iteration once per build (parking-garage 87%, intel 93%).
        """
        if callable(self._block_names):
            self._block_names = list(self._block_names())
        return self._block_names

    def block_name(self, index: int) -> str:
        """Stable, meaningful name of residual block ``index`` (e.g. a g2o edge's ids)."""
        if self.block_names is not None:
            return self.block_names[index]
        return f"{self.name}[{index}]"


_version_of = operator.attrgetter("_version")


class EvaluationCache:
    """The last value computed from some tensors, reused while they are unchanged.

    The key is the tensors' identity (``is``; the cache holds references, so an id cannot be
    recycled by a new tensor) and their in-place version counters (``_version``; Theseus
    replaces a variable's tensor on update, an in-place edit bumps the version). The value's
    own tensors that are handed to callers (``outputs``) are checked the same way, so a caller
    editing one in place does not corrupt the next reuse. Only used while autograd is off:
    under autograd a value from another graph is never handed out, and nothing is stored.
    Tensors that track no versions (inference mode) are not cached.
    """

    def __init__(self) -> None:
        self._tensors: Tuple[torch.Tensor, ...] = ()
        self._ids: Tuple[int, ...] = ()  # of the key tensors
        self._versions: Tuple[int, ...] = ()
        self._value: Any = None
        #: Number of lookups answered from the cache (for tests and profiling).
        self.hits = 0

    @staticmethod
    def _usable(tensors: Sequence[torch.Tensor]) -> bool:
        return not torch.is_grad_enabled() and not any(t.is_inference() for t in tensors)

    def get(self, tensors: Sequence[torch.Tensor]) -> Any:
        """The value stored for exactly these tensors at their current versions, or None.
        (The key tensors were checked when stored: the same objects track versions.)"""
        if self._value is None or tuple(map(id, tensors)) != self._ids or torch.is_grad_enabled():
            return None
        if tuple(map(_version_of, self._tensors)) != self._versions:
            return None
        self.hits += 1
        return self._value

    def put(
        self, tensors: Sequence[torch.Tensor], value: Any, outputs: Sequence[torch.Tensor] = ()
    ) -> None:
        """Remember ``value`` for ``tensors``; ``outputs``: the value's tensors that callers
        receive (nothing is stored while autograd records)."""
        if self._usable(tensors):
            self._tensors = (*tensors, *outputs)
            self._ids = tuple(map(id, tensors))
            self._versions = tuple(map(_version_of, self._tensors))
            self._value = value

    def clear(self) -> None:
        """Forget the stored value (and release its tensors)."""
        self._tensors, self._ids, self._versions, self._value = (), (), (), None


@dataclass(frozen=True)
class BlockSlots:
    """Where the ``K`` blocks (``d × width``) of one layout entry go in A's CSR values: block
    ``k``'s row ``r`` fills ``width`` consecutive slots from ``rows[d·k + r]``, its first column
    is ``columns[k]`` (``−1``: the block is not A's, its element is fixed)."""

    rows: np.ndarray  # int64 (K·d,)
    columns: np.ndarray  # int64 (K,)
    width: int


@dataclass(frozen=True)
class _FusedInputs:
    """A between cost's fixed inputs to the fused compiled kernels: ``W``'s tensor (the key
    of the weighted error) and, as NumPy arrays, ``Z``, ``W`` and the edges' ends."""

    w_tensor: torch.Tensor
    z: np.ndarray
    w: np.ndarray
    ends_i: np.ndarray
    ends_j: np.ndarray


@dataclass(frozen=True)
class _BetweenKernels:
    """Hand-written kernels of one element class for ``e = Log(Z⁻¹ Xᵢ⁻¹ Xⱼ)``
    (:mod:`posegraph.geometry`)."""

    #: ``(Xᵢ, Xⱼ, Z) ↦ BetweenLogParts``: ``e``, ``Xᵢ⁻¹Xⱼ`` and the logarithm's scalars.
    log_parts: Callable[..., geometry.BetweenLogParts]
    #: ``BetweenLogParts ↦ ∂e/∂δⱼ = J_r⁻¹(e)``, without a second logarithm.
    jacobian: Callable[[geometry.BetweenLogParts], torch.Tensor]
    #: ``(M, Xᵢ⁻¹Xⱼ) ↦ M·Ad((Xᵢ⁻¹Xⱼ)⁻¹)``, so ``∂e/∂δᵢ = −∂e/∂δⱼ·Ad(Xⱼ⁻¹Xᵢ)``.
    mul_adjoint_inverse: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


_BETWEEN_KERNELS: Dict[type, _BetweenKernels] = {
    th.SE3: _BetweenKernels(
        geometry.se3_between_log_parts,
        geometry.se3_between_jacobian_from_parts,
        geometry.se3_mul_adjoint_inverse,
    ),
    th.SE2: _BetweenKernels(
        geometry.se2_between_log_parts,
        geometry.se2_between_jacobian_from_parts,
        geometry.se2_mul_adjoint_inverse,
    ),
}


class BetweenEdges(BlockSparseCostFunction):
    """Relative-pose edges ``e = Log(Z⁻¹ · Xᵢ⁻¹ · Xⱼ)`` for a whole edge set, as ``th.Between``.

    The residual follows Theseus' ``Between`` and GTSAM's ``BetweenFactor``: SE3 tangent order is
    (translation, rotation), SE2's is (x, y, θ). With right perturbations ``X ⊕ δ = X·Exp(δ)``,
    writing ``E = Z⁻¹ Xᵢ⁻¹ Xⱼ`` and ``J = ∂Log(E)/∂E`` (Theseus' ``log_map`` Jacobian):
    ``∂e/∂δⱼ = J`` and ``∂e/∂δᵢ = −J · Ad(Xⱼ⁻¹ Xᵢ)``, since
    ``Z⁻¹ (Xᵢ Exp(δ))⁻¹ Xⱼ = E · Exp(−Ad(E⁻¹ Z⁻¹) δ)`` and ``E⁻¹ Z⁻¹ = Xⱼ⁻¹ Xᵢ``
    (Solà et al. 2018, "A micro Lie theory for state estimation in robotics", eqs. 28–31).
    SE3 and SE2 edges use the hand-written kernels of :mod:`posegraph.geometry` (``J`` is
    the right Jacobian inverse ``J_r⁻¹(e)``); other element classes use Theseus' operations.

    With autograd off, the logarithm of the last evaluation (error, ``Xᵢ⁻¹Xⱼ``, its angle
    terms) is kept in :attr:`log_cache`, keyed by the pose, measurement and edge tensors: an
    LM step evaluates the error at ``x + δ`` and, once accepted, linearizes at that same
    point, so the linearization reuses it (and an error evaluation after a linearization
    reuses the linearization's); the weighted error of a linear weight is kept beside it
    (:attr:`weighted_cache`). For one graph with a ``FullInformationWeight`` in float64 on CPU,
    the weighted error and the weighted Jacobians each come from one fused compiled call
    (:mod:`posegraph.native`), with the separate kernels' values (to rounding in ``W``'s products).

    Args:
        poses: the packed poses (``th.SE3`` or ``th.SE2`` elements).
        edges: ``(E, 2)`` long tensor of element indices ``(i, j)``.
        measurements: ``th.Variable`` with tensor ``(B, E, *element_shape)`` (``Zᵢⱼ``).
        weight: a block weight with ``block_dim`` = pose dof (e.g. FullInformationWeight).
        edge_names: optional per-edge names, e.g. ``"EDGE_SE3:QUAT 12 13"``, or a function
            returning them (called when a name is first asked for).
    """

    def __init__(
        self,
        poses: ManifoldArray,
        edges: torch.Tensor,
        measurements: th.Variable,
        weight: BlockCostWeight,
        name: Optional[str] = None,
        edge_names: Optional[Union[Sequence[str], Callable[[], Sequence[str]]]] = None,
    ):
        super().__init__(weight, poses.element_dof, edges.shape[0], name, edge_names)
        self.poses = poses
        self.measurements = measurements
        self.edges = edges.to(device=poses.tensor.device, dtype=torch.long)
        self._ends = (self.edges[:, 0].contiguous(), self.edges[:, 1].contiguous())  # for index_select
        self._rows = torch.arange(edges.shape[0], device=self.edges.device)
        self.log_cache = EvaluationCache()
        #: The weighted error of the last evaluation, kept like :attr:`log_cache` for weights
        #: that are fixed linear maps (``LinearBlockWeight``), keyed also by their tensors:
        #: Theseus evaluates the error at the start and the end of a solve, where the LM loop
        #: just did, and the linearization reuses the error evaluation's.
        self.weighted_cache = EvaluationCache()
        self._fused_cache = EvaluationCache()  # _FusedInputs for the measurement and weight tensors
        self.register_optim_vars(["poses"])
        self.register_aux_vars(["measurements"])

    def block_layout(self) -> List[JacobianBlocks]:
        return [
            JacobianBlocks(self.poses, self._rows, self.edges[:, 0]),
            JacobianBlocks(self.poses, self._rows, self.edges[:, 1]),
        ]

    def _batch(self) -> int:
        return max(self.poses.tensor.shape[0], self.measurements.tensor.shape[0])

    def _endpoints(self, batch: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``Xᵢ``, ``Xⱼ``, ``Z`` per edge, each ``(batch, E, *element_shape)``."""
        x, z = self.poses.tensor, self.measurements.tensor
        xi = x.index_select(1, self._ends[0])
        xj = x.index_select(1, self._ends[1])
        size = (batch, self.num_blocks, *self.poses.element_shape)
        return xi.expand(size), xj.expand(size), z.expand(size)

    def _log_key(self) -> Tuple[torch.Tensor, ...]:
        """What the logarithm depends on: the :attr:`log_cache` key."""
        return (self.poses.tensor, self.measurements.tensor, self.edges)

    def _log_parts(self, kernels: _BetweenKernels) -> geometry.BetweenLogParts:
        """``Log(Z⁻¹ Xᵢ⁻¹ Xⱼ)`` with its intermediates, from :attr:`log_cache` when the pose,
        measurement and edge tensors are those of the last evaluation (autograd off).

        Measured (docs/performance.md, 'What each speed mechanism pays'): saves 4.7–12.1% of an
        iteration (sphere2500 4.7%, parking-garage 11.7%, intel 11.6%, smallGrid3D 12.1%).
        """
        key = self._log_key()
        parts = self.log_cache.get(key)
        if parts is None:
            parts = kernels.log_parts(*self._endpoints(self._batch()))
            self.log_cache.put(key, parts, outputs=(parts.err,))
        return parts

    def block_error(self) -> torch.Tensor:
        kernels = _BETWEEN_KERNELS.get(self.poses.element_cls)
        if kernels is None:
            return self._generic_error_jacobians(self._batch(), False)[1]
        return self._log_parts(kernels).err

    def weighted_block_error(self) -> torch.Tensor:
        fused = self._fused_inputs()
        if fused is None:
            return self._weighted(self.block_error())
        key = self._log_key()
        parts = self.log_cache.get(key)
        if parts is not None:
            return self._weighted(parts.err)
        err, rel, scalars, werr = native.between_weighted_error(
            self.poses.tensor, fused.ends_i, fused.ends_j, fused.z, fused.w, self.poses.element_shape
        )
        self.log_cache.put(key, geometry.BetweenLogParts(err, rel, scalars), outputs=(err,))
        self.weighted_cache.put((err, fused.w_tensor), werr, outputs=(werr,))
        return werr

    def _fused_inputs(self) -> Optional[_FusedInputs]:
        """The fused compiled kernels' fixed inputs when they apply, else ``None``
        (:func:`posegraph.native.between_weighted_error` and ``between_weighted_jacobians``:
        the logarithm with ``W e``, and ``J_r⁻¹`` with its weighting and adjoint product,
        each in one pass): SE(3) or SE(2) poses, a ``FullInformationWeight`` with one ``W``
        per edge, one graph (batch size 1 throughout), float64 CPU tensors with no gradient to
        record. The arrays are prepared once for the measurement and weight tensors (kept
        like :attr:`log_cache`, while autograd is off); only the poses are checked per call.

        Measured (docs/performance.md, 'What each speed mechanism pays'): the fused kernels save
        5.1–21.7% of an iteration (smallGrid3D 21.7%, intel 10.0%, parking-garage 9.4%); keeping
        their fixed inputs prepared saves 3.5% on smallGrid3D (intel 2.5%).
        """
        weight = self.weight
        if type(weight) is not FullInformationWeight or not native.enabled():
            return None
        z, w = self.measurements.tensor, weight.sqrt_information.tensor
        fused = self._fused_cache.get((z, w))
        if fused is None:
            fits = self.poses.element_cls in _BETWEEN_KERNELS and z.shape[0] == 1 and w.shape[:2] == (1, self.num_blocks)
            if not (fits and native.applies([z, w]) and all(e.device.type == "cpu" for e in self._ends)):
                return None
            ends_i, ends_j = (e.numpy() for e in self._ends)
            fused = _FusedInputs(w, native.as_array(z), native.as_array(w), ends_i, ends_j)
            self._fused_cache.put((z, w), fused)
        x = self.poses.tensor  # z and w were checked with the arrays
        return fused if x.shape[0] == 1 and native.applies([x]) else None

    def _weighted(self, err: torch.Tensor) -> torch.Tensor:
        """``W e`` for the block error ``err``, from :attr:`weighted_cache` when ``err`` (see
        :attr:`log_cache`) and a linear weight's tensors are those of the last evaluation
        (autograd off).

        Measured (docs/performance.md, 'What each speed mechanism pays'): keeping ``W e`` saves
        4.2% of an iteration on smallGrid3D (intel 2.9%, sphere2500 1.3%).
        """
        if not isinstance(self.weight, LinearBlockWeight):
            return self.weight.weight_block_error(err)
        key = (err, *(v.tensor for v in self.weight.aux_vars))
        werr = self.weighted_cache.get(key)
        if werr is None:
            werr = self.weight.weight_block_error(err)
            self.weighted_cache.put(key, werr, outputs=(werr,))
        return werr

    def block_jacobians(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        kernels = _BETWEEN_KERNELS.get(self.poses.element_cls)
        if kernels is None:
            return self._generic_error_jacobians(self._batch(), True)
        parts = self._log_parts(kernels)
        j_j = kernels.jacobian(parts)
        return [-kernels.mul_adjoint_inverse(j_j, parts.rel), j_j], parts.err

    def weighted_block_jacobians_error(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Weighted Jacobian blocks and error, weighting one Jacobian instead of two.

        A block weight acts on each residual block's Jacobian from the left (``W J``; a robust
        weight also scales the block by ``√ρ'``), so ``W ∂e/∂δᵢ = −(W ∂e/∂δⱼ) Ad(Xⱼ⁻¹ Xᵢ)``: the
        weighted ``∂e/∂δⱼ`` gives both.
        """
        kernels = _BETWEEN_KERNELS.get(self.poses.element_cls)
        if kernels is None:
            return super().weighted_block_jacobians_error()
        parts = self._log_parts(kernels)
        fused = self._fused_inputs()
        if fused is not None:
            j_i, j_j = native.between_weighted_jacobians(parts.err, parts.log_scalars, parts.rel, fused.w)
            return [j_i, j_j], self._weighted(parts.err)
        weight: BlockCostWeight = self.weight
        if isinstance(weight, LinearBlockWeight):  # W e as the error evaluation left it
            w_j, werr = weight.weight_block_jacobians(kernels.jacobian(parts), self._rows), self._weighted(parts.err)
        else:
            (w_j,), werr = weight.weight_block_jacobians_and_error([kernels.jacobian(parts)], [self._rows], parts.err)
        return [-kernels.mul_adjoint_inverse(w_j, parts.rel), w_j], werr

    def place_weighted_block_jacobians(
        self, out: np.ndarray, slots: Sequence[BlockSlots], atb: Optional[np.ndarray] = None
    ) -> Optional[torch.Tensor]:
        fused = self._fused_inputs()
        if fused is None or any(s.width != self.block_dim for s in slots):
            return None
        parts = self._log_parts(_BETWEEN_KERNELS[self.poses.element_cls])
        werr = self._weighted(parts.err)
        (i, j) = slots
        native.between_weighted_jacobians_into(
            parts.err, parts.log_scalars, parts.rel, fused.w, i.rows, j.rows, i.columns, j.columns, out, werr, atb
        )
        return werr

    def _generic_error_jacobians(self, batch: int, jacobians: bool):
        """Other element classes (points): Theseus' own group operations."""
        flat = [t.reshape(-1, *self.poses.element_shape) for t in self._endpoints(batch)]
        xi, xj, z = (self.poses.as_element(t) for t in flat)
        rel = xi.between(xj)  # Xi⁻¹ Xj
        jlog: List[torch.Tensor] = []
        err = z.between(rel).log_map(jacobians=jlog if jacobians else None)
        shape = (batch, self.num_blocks, self.block_dim)
        err = err.reshape(shape)
        if not jacobians:
            return None, err
        j_i = -jlog[0] @ rel.inverse().adjoint()
        return [j.reshape(*shape, self.block_dim) for j in (j_i, jlog[0])], err

    def _copy_impl(self, new_name: Optional[str] = None) -> "BetweenEdges":
        return BetweenEdges(
            self.poses.copy(),
            self.edges.clone(),
            self.measurements.copy(),
            self.weight.copy(),
            name=new_name,
            edge_names=self.block_names,
        )


def _skew(v: torch.Tensor) -> torch.Tensor:
    """``[v]×`` ``(..., 3, 3)`` with ``[v]× w = v × w``."""
    zero = torch.zeros_like(v[..., 0])
    x, y, z = v.unbind(-1)
    return torch.stack(
        [zero, -z, y, z, zero, -x, -y, x, zero], dim=-1
    ).reshape(*v.shape[:-1], 3, 3)


class PointObservations(BlockSparseCostFunction):
    """3D points observed from SE3 poses: ``r = (X·O)⁻¹ p − z`` per observation (g2o's
    ``EdgeSE3PointXYZ``, tags ``EDGE_SE3_TRACKXYZ``/``PARAMS_SE3OFFSET``).

    With ``X = [R | t]``, sensor offset ``O = [R_o | t_o]``, ``y = Rᵀ(p − t)`` (the point in
    the body frame) and the right perturbation ``X ⊕ δ = X · Exp(δ)``, ``δ = (ρ, φ)``
    (Theseus' order), to first order ``R ← R(I + [φ]×)`` and ``t ← t + Rρ``, so
    ``y ← y − ρ + [y]× φ``. Hence (Barfoot 2017, "State Estimation for Robotics", §7.3.1):
    ``∂r/∂δ = R_oᵀ [−I | [y]×]`` and ``∂r/∂p = R_oᵀ Rᵀ``.

    Args:
        poses: packed ``th.SE3`` poses.
        points: packed ``th.Point3`` points.
        observations: ``(M, 2)`` long, ``(pose element, point element)``.
        measurements: ``th.Variable`` ``(B, M, 3)``, the points in the sensor frame.
        offsets: ``th.Variable`` ``(1, M, 3, 4)``, the sensor offset of each observation.
        weight: a block weight with ``block_dim = 3`` (e.g. FullInformationWeight).
    """

    def __init__(
        self,
        poses: ManifoldArray,
        points: ManifoldArray,
        observations: torch.Tensor,
        measurements: th.Variable,
        offsets: th.Variable,
        weight: BlockCostWeight,
        name: Optional[str] = None,
        observation_names: Optional[Union[Sequence[str], Callable[[], Sequence[str]]]] = None,
    ):
        if poses.element_cls is not th.SE3 or points.element_cls is not th.Point3:
            raise TypeError(
                "PointObservations: expected th.SE3 poses and th.Point3 points, received "
                f"th.{poses.element_cls.__name__} and th.{points.element_cls.__name__}"
            )
        super().__init__(weight, 3, observations.shape[0], name, observation_names)
        self.poses = poses
        self.points = points
        self.measurements = measurements
        self.offsets = offsets
        self.observations = observations.to(device=poses.tensor.device, dtype=torch.long)
        self._rows = torch.arange(observations.shape[0], device=self.observations.device)
        self.register_optim_vars(["poses", "points"])
        self.register_aux_vars(["measurements", "offsets"])

    def block_layout(self) -> List[JacobianBlocks]:
        return [
            JacobianBlocks(self.poses, self._rows, self.observations[:, 0]),
            JacobianBlocks(self.points, self._rows, self.observations[:, 1]),
        ]

    def _terms(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``R (B,M,3,3)``, ``R_o (1,M,3,3)``, ``y (B,M,3)``, ``r (B,M,3)``."""
        x = self.poses.tensor.index_select(1, self.observations[:, 0].contiguous())
        p = self.points.tensor.index_select(1, self.observations[:, 1].contiguous())
        z = self.measurements.tensor
        batch = max(x.shape[0], p.shape[0], z.shape[0])
        rot, t = x[..., :3], x[..., 3]
        y = torch.einsum("bmji,bmj->bmi", rot, p - t).expand(batch, -1, -1)
        off = self.offsets.tensor
        rot_o, t_o = off[..., :3], off[..., 3]
        r = torch.einsum("bmji,bmj->bmi", rot_o, y - t_o) - z
        return rot, rot_o, y, r

    def block_error(self) -> torch.Tensor:
        return self._terms()[3]

    def block_jacobians(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        rot, rot_o, y, r = self._terms()
        rot_o_t = rot_o.transpose(-1, -2)
        j_pose = torch.cat([-rot_o_t.expand(y.shape[0], -1, -1, -1), rot_o_t @ _skew(y)], dim=-1)
        j_point = (rot_o_t @ rot.transpose(-1, -2)).expand(y.shape[0], -1, -1, -1)
        return [j_pose, j_point], r

    def _copy_impl(self, new_name: Optional[str] = None) -> "PointObservations":
        return PointObservations(
            self.poses.copy(),
            self.points.copy(),
            self.observations.clone(),
            self.measurements.copy(),
            self.offsets.copy(),
            self.weight.copy(),
            name=new_name,
            observation_names=self.block_names,
        )
