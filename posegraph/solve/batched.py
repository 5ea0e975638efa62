"""Linear solvers for batches of problems on any device, with no compiled code of ours.

Both solve the (damped) normal equations ``(AᵀA + λI) δ = Aᵀb`` of a
:class:`~posegraph.solve.linearization.BlockSparseLinearization`, for all ``B`` problems of a
batch at once, in plain torch ops (so CUDA runs them as batched kernels):

* :class:`DenseCholeskySolver` — forms ``AᵀA`` densely (``(B, n, n)``, from row pairs of A's
  nonzeros) and factors it with ``torch.linalg.cholesky``; gradients by autograd. For small
  graphs (memory grows as n²).
* :class:`ConjugateGradientSolver` — Jacobi-preconditioned conjugate gradients on the normal
  equations (CGLS-style: ``AᵀA`` is never formed, only ``A v`` and ``Aᵀ u``; Hestenes &
  Stiefel 1952; Saad, "Iterative Methods for Sparse Linear Systems", 2003, alg. 9.1). Memory
  grows as nnz(A). Its backward is implicit (:class:`CGNormalSolve`): one more CG solve with
  the incoming gradient, then the same closed-form ``∂L/∂A``, ``∂L/∂b`` as the CHOLMOD solve.

Both take Levenberg–Marquardt's scalar damping ``λI`` (per batch element) only.
"""

from __future__ import annotations

import abc
import importlib
from typing import Any, Optional, Tuple, Type, Union

import theseus as th
import torch
from theseus.optimizer import Linearization
from theseus.optimizer.linear import LinearSolver

from posegraph.solve.linearization import BlockSparseLinearization

DampingType = Optional[Union[float, torch.Tensor]]


def cuda_extensions_available() -> bool:
    """Whether Theseus was built with its CUDA sparse solver extension
    (``theseus.extlib.cusolver_lu_solver``) and a CUDA device is present."""
    if not torch.cuda.is_available():
        return False
    try:
        from theseus.extlib.cusolver_lu_solver import CusolverLUSolver  # noqa: F401
    except Exception:
        return False
    return True


#: Theseus' compiled linear solvers: the extension module each needs, and whether it needs CUDA.
_THESEUS_EXTENSIONS = {
    "lu_cuda": ("theseus.extlib.cusolver_lu_solver", True),
    "baspacho": ("theseus.extlib.baspacho_solver", False),
}


def theseus_solver_unavailable(name: str) -> Optional[str]:
    """Why Theseus' compiled linear solver ``name`` (``"lu_cuda"`` or ``"baspacho"``) cannot
    run on this machine — its extension module is not importable (a Theseus build without
    it), or it needs CUDA and ``torch.cuda.is_available()`` is False — else None (also for
    any other name)."""
    if name not in _THESEUS_EXTENSIONS:
        return None
    module, needs_cuda = _THESEUS_EXTENSIONS[name]
    if needs_cuda and not torch.cuda.is_available():
        return f"it needs a CUDA device, and torch.cuda.is_available() is False (torch {torch.__version__})"
    try:
        importlib.import_module(module)
    except Exception as err:  # ImportError, or OSError from a library the extension links
        return (
            f"it needs Theseus' compiled extension {module}, which cannot be imported "
            f"({type(err).__name__}: {err}); install a Theseus build that includes it"
        )
    return None


def _damping_column(damping: DampingType, like: torch.Tensor) -> torch.Tensor:
    """Damping as a ``(B, 1)`` (or ``(1, 1)``) tensor of ``like``'s dtype/device, no grad."""
    if damping is None:
        damping = 0.0
    lam = damping.detach() if isinstance(damping, torch.Tensor) else torch.as_tensor(damping)
    if lam.dtype != like.dtype or lam.device != like.device:
        lam = lam.to(dtype=like.dtype, device=like.device)
    return lam.reshape(-1, 1)


class BlockSparseSolver(LinearSolver):
    """Base of posegraph's linear solvers: over a :class:`BlockSparseLinearization`, with
    Levenberg–Marquardt's scalar damping ``λI`` (per problem; ``default_damping`` when the
    optimizer passes none). Subclasses implement :meth:`_solve`."""

    default_damping: float = 0.0

    def __init__(
        self,
        objective: th.Objective,
        linearization_cls: Optional[Type[Linearization]] = None,
        linearization_kwargs: Optional[dict] = None,
        **kwargs,
    ):
        linearization_cls = linearization_cls or BlockSparseLinearization
        if not issubclass(linearization_cls, BlockSparseLinearization):
            raise TypeError(
                f"{type(self).__name__} needs a BlockSparseLinearization, "
                f"received {linearization_cls.__name__}"
            )
        super().__init__(objective, linearization_cls, linearization_kwargs)
        self.linearization: BlockSparseLinearization = self.linearization

    def solve(
        self,
        damping: DampingType = None,
        ellipsoidal_damping: bool = False,
        damping_eps: Optional[float] = None,
        **kwargs,
    ) -> torch.Tensor:
        """``δ`` ``(B, n)`` solving ``(AᵀA + λI) δ = Aᵀb`` (scalar damping λ per problem)."""
        if ellipsoidal_damping:
            raise NotImplementedError(f"{type(self).__name__} supports scalar (λI) damping only")
        lam = self.default_damping if damping is None else damping
        return self._solve(_damping_column(lam, self.linearization.b))

    @abc.abstractmethod
    def _solve(self, lam: torch.Tensor) -> torch.Tensor:
        """Solve with damping ``lam`` ``(B|1, 1)``."""


class DenseCholeskySolver(BlockSparseSolver):
    """Batched dense Cholesky on ``AᵀA + λI`` (Golub & Van Loan, "Matrix Computations", §4.2).

    ``AᵀA`` comes from :meth:`BlockSparseLinearization.AtA` (detached in Theseus' implicit
    step, like its ``DenseLinearization``); the solve is differentiable through torch.
    A factorization failure (not positive definite) raises ``RuntimeError``, which Theseus'
    optimizers report as a failed solve.
    """

    def _solve(self, lam: torch.Tensor) -> torch.Tensor:
        lin = self.linearization
        ata = lin.AtA
        lam = lam.unsqueeze(-1)
        eye = torch.eye(ata.shape[-1], dtype=ata.dtype, device=ata.device)
        lower, info = torch.linalg.cholesky_ex(ata + lam * eye)
        if bool((info != 0).any()):
            bad = torch.nonzero(info).flatten().tolist()
            raise RuntimeError(f"dense Cholesky failed (not positive definite) for batch elements {bad}")
        return torch.cholesky_solve(lin.Atb, lower).squeeze(2)


def _jacobi_cg(
    lin: BlockSparseLinearization,
    a_val: torch.Tensor,
    rhs: torch.Tensor,
    lam: torch.Tensor,
    max_iterations: int,
    tolerance: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Solve ``(AᵀA + λI) x = rhs`` per batch element by preconditioned CG (no grad).

    Preconditioner ``M = diag(AᵀA) + λ`` (Jacobi). Stops an element once
    ``‖r‖ ≤ tolerance·‖rhs‖`` (its iterate is then left unchanged); returns the solution and
    the iterations each element took.
    """
    with torch.no_grad():
        diag = lin.column_sums(a_val * a_val) + lam  # diag(AᵀA) + λ
        inv_m = torch.where(diag > 0, 1.0 / diag, torch.ones_like(diag))

        def op(v: torch.Tensor) -> torch.Tensor:
            return lin.Atv(lin.Av(v, a_val), a_val) + lam * v

        x = torch.zeros_like(rhs)
        r = rhs.clone()
        z = inv_m * r
        p = z.clone()
        rz = (r * z).sum(1, keepdim=True)
        goal = tolerance * rhs.norm(dim=1, keepdim=True)
        iters = torch.zeros(rhs.shape[0], dtype=torch.long, device=rhs.device)
        for _ in range(max_iterations):
            active = r.norm(dim=1, keepdim=True) > goal
            if not bool(active.any()):
                break
            iters += active.squeeze(1).long()
            q = op(p)
            pq = (p * q).sum(1, keepdim=True)
            alpha = torch.where(active & (pq > 0), rz / torch.where(pq > 0, pq, 1.0), 0.0)
            x = x + alpha * p
            r = r - alpha * q
            z = inv_m * r
            rz_new = (r * z).sum(1, keepdim=True)
            beta = torch.where(active & (rz > 0), rz_new / torch.where(rz > 0, rz, 1.0), 0.0)
            p = torch.where(active, z + beta * p, p)
            rz = torch.where(active, rz_new, rz)
        return x, iters


def normal_solve_gradients(
    lin: BlockSparseLinearization,
    b: torch.Tensor,
    x: torch.Tensor,
    h: torch.Tensor,
    a_val: torch.Tensor,
    detach_hessian: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Gradients of ``x = (AᵀA + λI)⁻¹ Aᵀb`` given ``h = (AᵀA + λI)⁻¹ g`` (g: ∂L/∂x).

    ``∂L/∂b = A h``; on A's nonzeros ``∂L/∂A_rc = (b − A x)_r h_c − (A h)_r x_c``, or
    ``b_r h_c`` when the Hessian is held constant (implicit mode). Same derivation as
    :class:`~posegraph.solve.sparse_cholesky.NormalSolve`.
    """
    rows, cols = lin._row_of_nz, lin._col_of_nz
    ah = lin.Av(h, a_val)
    if detach_hessian:
        grad_a = b.index_select(1, rows) * h.index_select(1, cols)
    else:
        r = b - lin.Av(x, a_val)
        grad_a = r.index_select(1, rows) * h.index_select(1, cols) - ah.index_select(1, rows) * x.index_select(1, cols)
    return grad_a, ah


class CGNormalSolve(torch.autograd.Function):
    """``δ = (AᵀA + λI)⁻¹ Aᵀ b`` by CG; backward by one more CG solve (implicit)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        A_val: torch.Tensor,
        b: torch.Tensor,
        solver: "ConjugateGradientSolver",
        lam: torch.Tensor,
        detach_hessian: bool,
    ) -> torch.Tensor:
        lin = solver.linearization
        a, bb = A_val.detach(), b.detach()
        x, iters = _jacobi_cg(lin, a, lin.Atv(bb, a), lam, solver.max_iterations, solver.tolerance)
        solver.last_iterations = iters
        ctx.save_for_backward(a, bb, x, lam)
        ctx.solver, ctx.detach_hessian = solver, detach_hessian
        return x

    @staticmethod
    def backward(ctx: Any, grad_x: torch.Tensor):  # type: ignore[override]
        a, b, x, lam = ctx.saved_tensors
        solver = ctx.solver
        lin = solver.linearization
        h, _ = _jacobi_cg(lin, a, grad_x.detach(), lam, solver.max_iterations, solver.tolerance)
        grad_a, grad_b = normal_solve_gradients(lin, b, x, h, a, ctx.detach_hessian)
        return grad_a, grad_b, None, None, None


class ConjugateGradientSolver(BlockSparseSolver):
    """Batched Jacobi-preconditioned CG on the normal equations, differentiable (implicit).

    Args:
        max_iterations: CG iteration cap per solve (default ``max(100, n)`` capped at 2000,
            n = number of tangent columns).
        tolerance: relative residual ``‖Aᵀb − (AᵀA+λI)x‖ / ‖Aᵀb‖`` at which an element stops
            (default 1e-10 in float64, 1e-6 in lower precision).
    """

    def __init__(
        self,
        objective: th.Objective,
        linearization_cls: Optional[Type[Linearization]] = None,
        linearization_kwargs: Optional[dict] = None,
        max_iterations: Optional[int] = None,
        tolerance: Optional[float] = None,
        **kwargs,
    ):
        super().__init__(objective, linearization_cls, linearization_kwargs, **kwargs)
        n = self.linearization.num_cols
        self.max_iterations = max_iterations or min(max(100, n), 2000)
        if tolerance is None:
            tolerance = 1e-10 if objective.dtype == torch.float64 else 1e-6
        self.tolerance = tolerance
        self.last_iterations: Optional[torch.Tensor] = None

    def _solve(self, lam: torch.Tensor) -> torch.Tensor:
        lin = self.linearization
        return CGNormalSolve.apply(lin.A_val, lin.b, self, lam, lin.detached_hessian)


__all__ = [
    "BlockSparseSolver",
    "DenseCholeskySolver",
    "ConjugateGradientSolver",
    "CGNormalSolve",
    "cuda_extensions_available",
    "normal_solve_gradients",
]
