"""The pose graph's edges as one cost: :class:`BetweenEdges`, the between residual
``Log(Zᵢⱼ⁻¹ Xᵢ⁻¹ Xⱼ)`` of every edge of one kind (SE3 or SE2) with its Jacobian blocks, from
the kernels of :mod:`posegraph.lie.geometry` (compiled for one float64 graph on CPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union
import numpy as np
import theseus as th
import torch
from posegraph.lie import geometry, native
from posegraph.model.variables import ManifoldArray
from posegraph.model.weights import BlockCostWeight, FullInformationWeight, LinearBlockWeight
from posegraph.model.costs import BlockSlots, BlockSparseCostFunction, EvaluationCache, JacobianBlocks


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
    (:mod:`posegraph.lie.geometry`)."""

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
    SE3 and SE2 edges use the hand-written kernels of :mod:`posegraph.lie.geometry` (``J`` is
    the right Jacobian inverse ``J_r⁻¹(e)``); other element classes use Theseus' operations.

    With autograd off, the logarithm of the last evaluation (error, ``Xᵢ⁻¹Xⱼ``, its angle
    terms) is kept in :attr:`log_cache`, keyed by the pose, measurement and edge tensors: an
    LM step evaluates the error at ``x + δ`` and, once accepted, linearizes at that same
    point, so the linearization reuses it (and an error evaluation after a linearization
    reuses the linearization's); the weighted error of a linear weight is kept beside it
    (:attr:`weighted_cache`). For one graph with a ``FullInformationWeight`` in float64 on CPU,
    the weighted error and the weighted Jacobians each come from one fused compiled call
    (:mod:`posegraph.lie.native`), with the separate kernels' values bit for bit.

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
        (:func:`posegraph.lie.native.between_weighted_error` and ``between_weighted_jacobians``:
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
