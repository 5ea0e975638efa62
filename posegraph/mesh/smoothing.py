"""Laplacian and Taubin smoothing of mesh vertices, differentiable on CPU and CUDA.

``laplacian_smooth`` moves each vertex a fraction ``λ`` of the way to its weighted neighbour
average, ``v ← v − λ r``; ``taubin_smooth`` alternates ``λ`` and ``μ < −λ`` steps, which
smooths without shrinking (Taubin 1995, "A signal processing approach to fair surface
design", SIGGRAPH). The residual ``r`` and the conventions are those of
:mod:`posegraph.mesh.laplacian`.
"""

from __future__ import annotations

from typing import Optional, Tuple
import torch
from posegraph.mesh.laplacian import LaplacianWeights, _check_faces, _check_iterations, _check_kind, _check_step, _check_verts, _has_neighbours, _laplacian_parts


def laplacian_residual(
    verts: torch.Tensor, weights: LaplacianWeights, has_neighbours: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``r_i = v_i − Σ_j w_ij v_j`` for ``(B, V, 3)`` vertices (``r_i = 0`` for isolated ones).

    Computed as a gather of ``v_j`` and an ``index_add`` over ``rows`` — no sparse matrix.

    Args:
        verts: ``(B, V, 3)``.
        weights: edge-list weights; ``w`` ``(K,)`` or ``(B, K)``.
        has_neighbours: optional precomputed ``(V,)`` bool mask (see :func:`_has_neighbours`).
    """
    rows, cols, w = weights
    num_verts = verts.shape[1]
    if has_neighbours is None:
        has_neighbours = _has_neighbours(rows, num_verts)
    contrib = w.unsqueeze(-1).to(verts.dtype) * verts[:, cols]  # (B, K, 3)
    average = verts.new_zeros(verts.shape).index_add(1, rows, contrib)
    own = torch.where(has_neighbours.unsqueeze(-1), verts, torch.zeros_like(verts))
    return own - average


def _smoothing_setup(
    verts: torch.Tensor, faces: torch.Tensor, iterations: int, weights: str
) -> Tuple[torch.Tensor, bool, LaplacianWeights, torch.Tensor]:
    """Validate smoothing inputs; weights are computed once, from the input mesh."""
    verts_b, batched = _check_verts(verts)
    faces = _check_faces(faces, verts_b.shape[1], verts_b.device)
    _check_iterations(iterations)
    parts = _laplacian_parts(verts_b, faces, _check_kind(weights, "weights"))
    return verts_b, batched, parts, _has_neighbours(parts.rows, verts_b.shape[1])


def laplacian_smooth(
    verts: torch.Tensor,
    faces: torch.Tensor,
    iterations: int = 1,
    lam: float = 0.5,
    weights: str = "uniform",
) -> torch.Tensor:
    """Explicit Laplacian smoothing ``v ← v + λ (Σ_j w_ij v_j − v)``, ``iterations`` times.

    The explicit Euler step of the diffusion ``∂v/∂t = λ Δv`` (Taubin 1995; Desbrun
    et al. 1999, "Implicit fairing of irregular meshes using diffusion and curvature flow").
    It shrinks closed surfaces (see :func:`taubin_smooth` for the volume-preserving variant).

    Weights are computed **once, from the input mesh**, and held fixed for all iterations, so the
    filter is the fixed linear operator ``(I − λ L)^n`` of Taubin's analysis (uniform weights
    depend on faces only anyway). Cotangent weights of a batched input are computed per batch
    element and stay differentiable functions of the input vertices.

    Args:
        verts: ``(V, 3)`` or ``(B, V, 3)`` floating vertices, any device, may require grad.
        faces: ``(F, 3)`` integer vertex indices (moved to the device of ``verts``).
        iterations: number of steps (``0`` returns the input).
        lam: step ``λ`` (``0 < λ ≤ 1`` keeps each step a convex combination).
        weights: ``"uniform"`` or ``"cotangent"`` (see :func:`laplacian_weights`).

    Returns:
        Smoothed vertices, same shape as ``verts``; isolated vertices unchanged.
    """
    lam = _check_step(lam, "lam")
    verts_b, batched, parts, has = _smoothing_setup(verts, faces, iterations, weights)
    for _ in range(iterations):
        verts_b = verts_b - lam * laplacian_residual(verts_b, parts, has)
    return verts_b if batched else verts_b[0]


def taubin_smooth(
    verts: torch.Tensor,
    faces: torch.Tensor,
    iterations: int = 10,
    lam: float = 0.5,
    mu: float = -0.53,
    weights: str = "uniform",
) -> torch.Tensor:
    """Taubin λ|μ smoothing: each iteration one shrinking step ``λ > 0`` then one inflating
    step ``μ < −λ``, ``v ← v + s (Σ_j w_ij v_j − v)`` for ``s = λ, μ``.

    Taubin 1995, "A signal processing approach to fair surface design" (SIGGRAPH): the
    transfer function ``f(k) = (1 − λk)(1 − μk)`` passes low frequencies ``k < k_PB`` with
    ``k_PB = 1/λ + 1/μ`` (≈ 0.113 for the defaults) and attenuates high ones, so noise is removed
    without the shrinkage of plain Laplacian smoothing. ``iterations = n`` does ``2n`` steps.

    Weights are computed **once, from the input mesh**, and held fixed for every λ and μ step:
    Taubin's frequency analysis assumes a fixed linear operator, and recomputing cotangent weights
    on the moving mesh would make the filter nonlinear. (PyTorch3D's ``taubin_smoothing``
    recomputes its inverse-edge-length weights before every step instead.) Uniform weights depend
    on faces only, so the choice only matters for ``"cotangent"``.

    Args:
        verts: ``(V, 3)`` or ``(B, V, 3)`` floating vertices, any device, may require grad.
        faces: ``(F, 3)`` integer vertex indices.
        iterations: number of λ|μ pairs.
        lam: shrinking step ``λ``.
        mu: inflating step ``μ`` (Taubin requires ``μ < −λ < 0``; not enforced).
        weights: ``"uniform"`` or ``"cotangent"``.

    Returns:
        Smoothed vertices, same shape as ``verts``; isolated vertices unchanged.
    """
    lam = _check_step(lam, "lam")
    mu = _check_step(mu, "mu")
    verts_b, batched, parts, has = _smoothing_setup(verts, faces, iterations, weights)
    for _ in range(iterations):
        verts_b = verts_b - lam * laplacian_residual(verts_b, parts, has)
        verts_b = verts_b - mu * laplacian_residual(verts_b, parts, has)
    return verts_b if batched else verts_b[0]
