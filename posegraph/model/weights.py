"""Cost weights that act block by block: full information matrices and per-block scales.

Theseus ships scalar and diagonal weights only. A g2o edge carries a full information matrix
``Ω`` (6×6 for SE3, 3×3 for SE2); its cost is ``eᵀ Ω e = ‖W e‖²`` with any ``W`` such that
``Wᵀ W = Ω``. Both classes here work on errors made of ``R`` residual blocks of size ``d``
(error ``(B, R·d)``) so one weight serves a whole vectorized edge set; with ``R = 1`` they are
ordinary Theseus cost weights usable on any ``th.CostFunction``.
"""

from __future__ import annotations

import abc
from typing import List, Optional, Sequence, Tuple, Union

import theseus as th
import torch

from posegraph.information import sqrt_information


class BlockCostWeight(th.CostWeight, abc.ABC):
    """A cost weight applied independently to each residual block of size ``block_dim``.

    ``weight_block_error`` gives the error whose squared norm is the cost;
    ``weight_block_jacobians_and_error`` gives the Jacobian blocks and error the solver
    linearizes (the same weighting for linear weights; see :mod:`posegraph.model.robust` for
    weights where they differ).
    """

    block_dim: int

    @abc.abstractmethod
    def weight_block_error(self, error: torch.Tensor) -> torch.Tensor:
        """Weight a block error ``(B, R, d)``; returns ``(B, R, d)``."""

    @abc.abstractmethod
    def weight_block_jacobians_and_error(
        self, jacobians: Sequence[torch.Tensor], rows: Sequence[torch.Tensor], error: torch.Tensor
    ) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Weight Jacobian blocks ``[(B, K_i, d, e_i)]`` (block ``k`` of entry ``i`` belongs to
        residual block ``rows[i][k]``) and the block error ``(B, R, d)`` for linearization."""

    # -- th.CostWeight interface on flat (B, R·d) errors ------------------------------------
    def _as_blocks(self, flat: torch.Tensor) -> torch.Tensor:
        # explicit block count: ``-1`` is ambiguous for empty tensors (no columns)
        rows = flat.shape[1] // self.block_dim
        return flat.reshape(flat.shape[0], rows, self.block_dim, *flat.shape[2:])

    def weight_error(self, error: torch.Tensor) -> torch.Tensor:
        """Weighted flat error ``(B, R·d)``: Theseus' ``CostWeight.weight_error`` through :meth:`weight_block_error`."""
        return self.weight_block_error(self._as_blocks(error)).reshape(error.shape[0], -1)

    def weight_jacobians_and_error(
        self, jacobians: List[torch.Tensor], error: torch.Tensor
    ) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Weighted flat Jacobians and error: Theseus' ``CostWeight.weight_jacobians_and_error`` through :meth:`weight_block_jacobians_and_error`."""
        blocks = [self._as_blocks(jac) for jac in jacobians]  # (B, R, d, n) each
        rows = [torch.arange(b.shape[1], device=b.device) for b in blocks]
        wjacs, werr = self.weight_block_jacobians_and_error(blocks, rows, self._as_blocks(error))
        return [w.reshape(w.shape[0], *j.shape[1:]) for w, j in zip(wjacs, jacobians)], werr.reshape(
            werr.shape[0], -1
        )


class LinearBlockWeight(BlockCostWeight):
    """A block weight that is a fixed linear map of each block (independent of the error):
    Jacobians and errors are weighted alike."""

    @abc.abstractmethod
    def weight_block_jacobians(self, jac: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Weight Jacobian blocks ``(B, K, d, e)`` whose residual blocks are ``rows`` ``(K,)``."""

    def weight_block_jacobians_and_error(
        self, jacobians: Sequence[torch.Tensor], rows: Sequence[torch.Tensor], error: torch.Tensor
    ) -> Tuple[List[torch.Tensor], torch.Tensor]:
        wjacs = [self.weight_block_jacobians(j, r) for j, r in zip(jacobians, rows)]
        return wjacs, self.weight_block_error(error)


class FullInformationWeight(LinearBlockWeight):
    """Weight by full information matrices: ``e ↦ W e`` with ``Wᵀ W = Ω``, one W per block.

    Args:
        sqrt_information: ``(B, R, d, d)`` (or ``(R, d, d)``, or ``(d, d)`` for one block)
            square roots of the information matrices, as a tensor or a ``th.Variable`` (pass a
            Variable whose tensor requires grad to learn noise models through the solve).
    """

    def __init__(
        self,
        sqrt_information: Union[torch.Tensor, th.Variable],
        name: Optional[str] = None,
    ):
        super().__init__(name=name)
        var = sqrt_information if isinstance(sqrt_information, th.Variable) else None
        tensor = var.tensor if var is not None else sqrt_information
        while tensor.ndim < 4:
            tensor = tensor.unsqueeze(0)
        if tensor.shape[-1] != tensor.shape[-2]:
            raise ValueError(
                f"FullInformationWeight {self.name!r}: expected square (..., d, d) blocks, "
                f"received shape {tuple(tensor.shape)}"
            )
        if var is None:
            var = th.Variable(tensor, name=f"{self.name}__sqrt_information")
        else:
            var.tensor = tensor
        self.sqrt_information = var
        self.block_dim = tensor.shape[-1]
        self.register_aux_vars(["sqrt_information"])

    @classmethod
    def from_information(
        cls, information: torch.Tensor, name: Optional[str] = None
    ) -> "FullInformationWeight":
        """Build from information matrices ``Ω`` (``(..., d, d)``, symmetric PSD)."""
        return cls(sqrt_information(information), name=name)

    def information(self) -> torch.Tensor:
        """``Ω = Wᵀ W``, ``(B, R, d, d)``."""
        w = self.sqrt_information.tensor
        return w.transpose(-1, -2) @ w

    def is_zero(self) -> torch.Tensor:
        """Per problem: whether every entry of the square-root information is zero (Theseus' ``CostWeight.is_zero``)."""
        w = self.sqrt_information.tensor
        return (w == 0).reshape(w.shape[0], -1).all(dim=1)

    def weight_block_error(self, error: torch.Tensor) -> torch.Tensor:
        return (self.sqrt_information.tensor @ error.unsqueeze(-1)).squeeze(-1)

    def weight_block_jacobians(self, jac: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return self.sqrt_information.tensor.index_select(1, rows) @ jac

    def _copy_impl(self, new_name: Optional[str] = None) -> "FullInformationWeight":
        return FullInformationWeight(self.sqrt_information.copy(), name=new_name)


class BlockScaleWeight(LinearBlockWeight):
    """Scale each residual block by a scalar: ``e_r ↦ s_r e_r``.

    Args:
        scale: a float, or a tensor broadcastable to ``(B, R)`` (``(R,)`` per block, ``()`` for
            all), or a ``th.Variable`` holding such a tensor.
        block_dim: residual block size ``d``.
    """

    def __init__(
        self,
        scale: Union[float, torch.Tensor, th.Variable],
        block_dim: int,
        name: Optional[str] = None,
    ):
        super().__init__(name=name)
        var = scale if isinstance(scale, th.Variable) else None
        tensor = var.tensor if var is not None else torch.as_tensor(scale)
        while tensor.ndim < 2:
            tensor = tensor.unsqueeze(0)
        if var is None:
            var = th.Variable(tensor, name=f"{self.name}__scale")
        else:
            var.tensor = tensor
        self.scale = var
        self.block_dim = block_dim
        self.register_aux_vars(["scale"])

    def is_zero(self) -> torch.Tensor:
        """Per problem: whether every edge's scale is zero (Theseus' ``CostWeight.is_zero``)."""
        s = self.scale.tensor
        return (s == 0).all(dim=1)

    def weight_block_error(self, error: torch.Tensor) -> torch.Tensor:
        return error * self.scale.tensor.unsqueeze(-1)

    def weight_block_jacobians(self, jac: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        s = self.scale.tensor
        s = s.index_select(1, rows) if s.shape[1] > 1 else s
        return jac * s[..., None, None]

    def _copy_impl(self, new_name: Optional[str] = None) -> "BlockScaleWeight":
        return BlockScaleWeight(self.scale.copy(), self.block_dim, name=new_name)
