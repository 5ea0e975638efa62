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
term vanishes: ``∂L/∂A_rc = b_r H_c`` (:func:`~posegraph.solve.batched.normal_solve_gradients`,
shared with the batched CG solver). Unlike Theseus' version it stays in float64 throughout
and computes the gradient with vectorized gathers, not a loop over rows.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Type

import numpy as np
import theseus as th
import torch
from sksparse.cholmod import CholmodError, Factor, analyze_AAt
from theseus.optimizer import Linearization

from .batched import BlockSparseSolver, normal_solve_gradients

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
        ctx.factors = factors
        ctx.detach_hessian = detach_hessian
        ctx.lin = lin
        return torch.as_tensor(x_np).to(dtype=A_val.dtype, device=A_val.device)

    @staticmethod
    def backward(ctx: Any, grad_x: torch.Tensor):  # type: ignore[override]
        A_val, b = ctx.saved_tensors
        g = grad_x.detach().cpu().double().numpy()
        h = np.stack([factor(g[i]) for i, factor in enumerate(ctx.factors)])
        grad_a, grad_b = normal_solve_gradients(
            ctx.lin,
            torch.as_tensor(ctx.b_np),
            torch.as_tensor(ctx.x_np),
            torch.as_tensor(h),
            torch.as_tensor(ctx.a_np),
            ctx.detach_hessian,
        )
        to = dict(dtype=A_val.dtype, device=A_val.device)
        return grad_a.to(**to), grad_b.to(**to), None, None, None


class CholmodSolver(BlockSparseSolver):
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
        super().__init__(objective, linearization_cls, linearization_kwargs, **kwargs)
        self.symbolic = analyze_AAt(self.linearization.structure().mock_csc_transpose())
        self.default_damping = damping

    def _solve(self, lam: torch.Tensor) -> torch.Tensor:
        lin = self.linearization
        dampings = lam.flatten().double().cpu().expand(lin.A_val.shape[0]).tolist()  # (B|1, 1) → B
        return CholmodNormalSolve.apply(lin.A_val, lin.b, self, dampings, lin.detached_hessian)
