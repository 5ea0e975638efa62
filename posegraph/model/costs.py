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
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import theseus as th
import torch

from posegraph.model.variables import element_columns, element_dof
from posegraph.model.weights import BlockCostWeight


@dataclass(frozen=True)
class JacobianBlocks:
    """Where ``K`` Jacobian blocks of a cost sit: block ``k`` is d(residual ``rows[k]``) /
    d(element ``elements[k]`` of ``variable``). ``variable`` is a ManifoldArray, or any other
    optimization variable as one element (index 0; see :func:`~posegraph.model.variables.element_columns`)."""

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


