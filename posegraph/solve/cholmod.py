"""CHOLMOD linear solver for :class:`BlockSparseLinearization`, differentiable.

The normal equations ``(AᵀA + λI) δ = Aᵀb`` are factored with CHOLMOD (scikit-sparse). The
fill-reducing symbolic analysis of ``AAᵀ``'s pattern runs once per solver; each call does the
numeric factorization only (``Factor.cholesky_AAt``, which forms ``AᵀA`` inside CHOLMOD and
keeps its pattern even where values are exactly zero).

Gradients (Theseus' unroll / truncated / implicit modes) come from
:class:`CholmodNormalSolve`: with ``H = (AᵀA + λI)⁻¹ g`` for the incoming gradient ``g``,
``∂L/∂b = A H`` and ``∂L/∂A_rc = (b − A δ)_r H_c − (A H)_r δ_c`` on A's nonzeros
(the derivation in Theseus' ``CholmodSolveFunction``; Golub & Van Loan, "Matrix Computations",
§5.3 for the normal-equation perturbation). With a detached Hessian (implicit mode) the second
term vanishes: ``∂L/∂A_rc = b_r H_c``. Unlike Theseus' version it stays in float64 throughout
and computes the gradient with vectorized gathers, not a loop over rows.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Type, Union

import numpy as np
import theseus as th
import torch
from sksparse.cholmod import CholmodError, Factor, analyze_AAt
from theseus.optimizer import Linearization
from theseus.optimizer.linear import LinearSolver

from .linearization import BlockSparseLinearization

DampingType = Optional[Union[float, torch.Tensor]]


def _per_batch_damping(damping: DampingType, batch: int) -> List[float]:
    if damping is None:
        return [0.0] * batch
    if isinstance(damping, torch.Tensor):
        d = damping.detach().flatten().cpu().double()
        if d.numel() == 1:
            return [float(d[0])] * batch
        return [float(v) for v in d]
    return [float(damping)] * batch


class CholmodNormalSolve(torch.autograd.Function):
    """``δ = (AᵀA + λI)⁻¹ Aᵀ b`` for each batch element; A given by CSR values."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        A_val: torch.Tensor,
        b: torch.Tensor,
        solver: "CholmodSolver",
        dampings: Sequence[float],
        detach_hessian: bool,
    ) -> torch.Tensor:
        lin = solver.linearization
        structure = lin.structure()
        a_np = A_val.detach().cpu().double().numpy()
        b_np = b.detach().cpu().double().numpy()
        x_np = np.empty((a_np.shape[0], lin.num_cols))
        factors: List[Factor] = []
        for i in range(a_np.shape[0]):
            at = structure.csc_transpose(a_np[i])
            try:
                factor = solver.symbolic.cholesky_AAt(at, beta=dampings[i])
            except CholmodError as err:  # not positive definite, etc.
                raise RuntimeError(f"CHOLMOD factorization failed: {err}") from err
            x_np[i] = factor(at @ b_np[i])
            factors.append(factor)
        if not np.isfinite(x_np).all():
            raise RuntimeError("CHOLMOD solve produced non-finite values")
        ctx.save_for_backward(A_val, b)
        ctx.x_np, ctx.a_np, ctx.b_np = x_np, a_np, b_np
        ctx.factors, ctx.structure = factors, structure
        ctx.detach_hessian = detach_hessian
        ctx.lin = lin
        return torch.as_tensor(x_np).to(dtype=A_val.dtype, device=A_val.device)

    @staticmethod
    def backward(ctx: Any, grad_x: torch.Tensor):  # type: ignore[override]
        A_val, b = ctx.saved_tensors
        g = grad_x.detach().cpu().double().numpy()
        lin = ctx.lin
        rows = lin._row_of_nz.cpu().numpy()
        cols = lin.A_col_ind
        grad_a = np.empty_like(ctx.a_np)
        grad_b = np.empty_like(ctx.b_np)
        for i, factor in enumerate(ctx.factors):
            a = ctx.structure.csr_straight(ctx.a_np[i])
            h = factor(g[i])
            ah = a @ h
            grad_b[i] = ah
            if ctx.detach_hessian:
                grad_a[i] = ctx.b_np[i][rows] * h[cols]
            else:
                r = ctx.b_np[i] - a @ ctx.x_np[i]
                grad_a[i] = r[rows] * h[cols] - ah[rows] * ctx.x_np[i][cols]
        to = dict(dtype=A_val.dtype, device=A_val.device)
        return torch.as_tensor(grad_a).to(**to), torch.as_tensor(grad_b).to(**to), None, None, None


class CholmodSolver(LinearSolver):
    """Theseus ``LinearSolver`` over :class:`BlockSparseLinearization` using CHOLMOD.

    Supports Levenberg–Marquardt's scalar damping (``λI``, per batch element) — GTSAM's default
    damping; ellipsoidal damping (``λ diag(AᵀA)``) is not supported.
    """

    def __init__(
        self,
        objective: th.Objective,
        linearization_cls: Optional[Type[Linearization]] = None,
        linearization_kwargs: Optional[dict] = None,
        damping: float = 0.0,
        **kwargs,
    ):
        linearization_cls = linearization_cls or BlockSparseLinearization
        if not issubclass(linearization_cls, BlockSparseLinearization):
            raise TypeError(
                "CholmodSolver needs a BlockSparseLinearization, "
                f"received {linearization_cls.__name__}"
            )
        super().__init__(objective, linearization_cls, linearization_kwargs, **kwargs)
        self.linearization: BlockSparseLinearization = self.linearization
        self.symbolic = analyze_AAt(self.linearization.structure().mock_csc_transpose())
        self._damping = damping

    def reset(self, **kwargs) -> None:
        """Called by Theseus when an optimization starts: linearize afresh."""
        super().reset(**kwargs)
        self.linearization.invalidate()

    def solve(
        self,
        damping: DampingType = None,
        ellipsoidal_damping: bool = False,
        damping_eps: Optional[float] = None,
        **kwargs,
    ) -> torch.Tensor:
        if ellipsoidal_damping:
            raise NotImplementedError("CholmodSolver supports scalar (λI) damping only")
        lin = self.linearization
        batch = lin.A_val.shape[0]
        dampings = _per_batch_damping(damping if damping is not None else self._damping, batch)
        return CholmodNormalSolve.apply(lin.A_val, lin.b, self, dampings, lin.detached_hessian)

