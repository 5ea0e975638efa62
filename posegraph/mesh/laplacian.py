"""Laplacian weights of a triangle mesh (uniform or cotangent) as a directed edge list.

The conventions (neighbours, the residual, isolated vertices) are stated once in
:mod:`posegraph.mesh`; the input checks shared by the mesh functions live here too.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Tuple

import torch

#: Supported neighbour weightings.
LAPLACIAN_KINDS = ("uniform", "cotangent")


class LaplacianWeights(NamedTuple):
    """Row-normalized Laplacian neighbour weights as a directed edge list.

    Entry ``k`` is ``w_ij`` with ``i = rows[k]``, ``j = cols[k]``; entries are sorted by
    ``(row, col)``. For every vertex with neighbours ``Σ_j w_ij = 1``; isolated vertices own no
    entry.

    Attributes:
        rows: ``(K,)`` long, the vertex whose average is taken (``i``).
        cols: ``(K,)`` long, the neighbour (``j``).
        w: ``(K,)`` float (or ``(B, K)`` when computed from batched vertices).
    """

    rows: torch.Tensor
    cols: torch.Tensor
    w: torch.Tensor


# ---------------------------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------------------------
def _check_verts(verts: torch.Tensor, what: str = "verts") -> Tuple[torch.Tensor, bool]:
    """Validate ``(V, 3)`` or ``(B, V, 3)`` floating vertices; return ``((B, V, 3), batched)``."""
    if not isinstance(verts, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor, received {type(verts).__name__}")
    if not verts.is_floating_point():
        raise TypeError(f"{what}: expected a floating-point tensor, received {verts.dtype}")
    if verts.ndim not in (2, 3) or verts.shape[-1] != 3:
        raise ValueError(
            f"{what}: expected shape (V, 3) or (B, V, 3), received {tuple(verts.shape)}"
        )
    if verts.ndim == 2:
        return verts.unsqueeze(0), False
    return verts, True


def _check_faces(
    faces: torch.Tensor, num_verts: int, device: torch.device, what: str = "faces"
) -> torch.Tensor:
    """Validate ``(F, 3)`` integer faces with indices in ``[0, num_verts)``; return int64 on
    ``device``."""
    if not isinstance(faces, torch.Tensor):
        raise TypeError(f"{what}: expected a torch.Tensor, received {type(faces).__name__}")
    if faces.is_floating_point() or faces.is_complex() or faces.dtype == torch.bool:
        raise TypeError(f"{what}: expected an integer (int64) tensor, received {faces.dtype}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"{what}: expected shape (F, 3), received {tuple(faces.shape)}")
    faces = faces.to(device=device, dtype=torch.long)
    if faces.numel() > 0:
        lo, hi = int(faces.min()), int(faces.max())
        if lo < 0 or hi >= num_verts:
            raise ValueError(
                f"{what}: expected vertex indices in [0, {num_verts}), "
                f"received indices in [{lo}, {hi}]"
            )
    return faces


def _check_kind(kind: str, what: str = "kind") -> str:
    """Validate a Laplacian weighting name."""
    if kind not in LAPLACIAN_KINDS:
        raise ValueError(f"{what}: expected one of {LAPLACIAN_KINDS}, received {kind!r}")
    return kind


def _check_iterations(iterations: int) -> int:
    """Validate a non-negative integer iteration count."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations: expected an integer >= 0, received {iterations!r}")
    return iterations


def _check_step(value: float, what: str) -> float:
    """Validate a finite real step size."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{what}: expected a finite number, received {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# edge structure
# ---------------------------------------------------------------------------------------------
def _opposite_edges(faces: torch.Tensor, num_verts: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Unique undirected edges and, per face corner, the edge opposite it.

    Corner ``k`` of face ``(a0, a1, a2)`` faces the edge ``(a_{k+1}, a_{k+2})``.

    Returns:
        edges: ``(E, 2)`` long, ``edges[:, 0] < edges[:, 1]``, sorted lexicographically.
        corner_edge: ``(F, 3)`` long index into ``edges``, ``-1`` where the opposite "edge" is a
            self-edge (face with a repeated vertex index).
    """
    p = faces[:, [1, 2, 0]]
    q = faces[:, [2, 0, 1]]
    lo, hi = torch.minimum(p, q), torch.maximum(p, q)
    key = lo * num_verts + hi
    proper = lo != hi
    uniq, inverse = torch.unique(key[proper], sorted=True, return_inverse=True)
    corner_edge = torch.full_like(key, -1)
    corner_edge[proper] = inverse
    edges = torch.stack([uniq // num_verts, uniq % num_verts], dim=1)
    return edges, corner_edge


def mesh_edges(faces: torch.Tensor, num_verts: int) -> torch.Tensor:
    """Unique undirected edges ``(E, 2)`` (``i < j``, sorted) of a triangle mesh; self-edges of
    faces with a repeated index are dropped."""
    faces = _check_faces(faces, num_verts, faces.device)
    return _opposite_edges(faces, num_verts)[0]


def _directed(
    edges: torch.Tensor, num_verts: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Both directions of each undirected edge, sorted by ``(row, col)``.

    Returns ``rows, cols`` ``(2E,)`` and ``edge_of`` ``(2E,)``: the undirected edge of each entry.
    """
    e = edges.shape[0]
    rows = torch.cat([edges[:, 0], edges[:, 1]])
    cols = torch.cat([edges[:, 1], edges[:, 0]])
    edge_id = torch.arange(e, device=edges.device).repeat(2)
    order = torch.argsort(rows * num_verts + cols)
    return rows[order], cols[order], edge_id[order]


# ---------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------
def _corner_cotangents(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Cotangent of the angle at each face corner, ``(B, F, 3)``; 0 on degenerate triangles.

    With ``u``, ``w`` the two edge vectors leaving a corner, ``cot θ = (u·w) / ‖u × w‖``
    (``cos θ = u·w / (‖u‖‖w‖)``, ``sin θ = ‖u × w‖ / (‖u‖‖w‖)``); ``‖u × w‖ = 2·area`` is the same
    for the three corners.

    Degenerate triangles: a triangle with ``2·area ≤ √ε · Σ ℓ²`` (``ε`` the dtype's machine
    epsilon, ``ℓ`` its side lengths; an equilateral triangle has ``2·area ≈ 0.29 Σ ℓ²``) has an
    angle below about ``√ε`` radians whose cotangent (``≳ 1/√ε``) carries no accurate digits; such
    triangles — collinear or coincident corners included — contribute **no** cotangent weight.
    The branch uses ``torch.where`` with a safe denominator so gradients stay finite.
    """
    p = verts[:, faces]  # (B, F, 3 corners, 3)
    u = p.roll(-1, dims=2) - p  # corner k -> corner k+1
    w = p.roll(-2, dims=2) - p  # corner k -> corner k+2
    dot = (u * w).sum(-1)  # (B, F, 3)
    cross = torch.linalg.cross(u[:, :, 0], w[:, :, 0], dim=-1)  # (B, F, 3)
    cross2 = (cross * cross).sum(-1)  # (2·area)², (B, F)
    sum_len2 = (u * u).sum(-1).sum(-1)  # Σ ℓ² (u runs over the three sides), (B, F)
    tol = math.sqrt(torch.finfo(verts.dtype).eps)
    degenerate = cross2 <= (tol * sum_len2) ** 2
    twice_area = torch.sqrt(torch.where(degenerate, torch.ones_like(cross2), cross2))
    cot = dot / twice_area.unsqueeze(-1)
    return torch.where(degenerate.unsqueeze(-1), torch.zeros_like(cot), cot)


def _cotangent_edge_weights(
    verts: torch.Tensor, faces: torch.Tensor, corner_edge: torch.Tensor, num_edges: int
) -> torch.Tensor:
    """Unnormalized cotangent weight ``c_ij = max(0, (cot α_ij + cot β_ij) / 2)`` per undirected
    edge, ``(B, E)``.

    Pinkall & Polthier 1993 ("Computing discrete minimal surfaces and their conjugates") and
    Meyer et al. 2003 ("Discrete differential-geometry operators for triangulated 2-manifolds"):
    ``∂(Dirichlet energy)/∂v_i = ½ Σ_j (cot α_ij + cot β_ij)(v_i − v_j)``, with
    ``α_ij, β_ij`` the angles opposite edge ``ij`` in its two triangles.

    * Boundary edges (one triangle) get ``cot α / 2`` — the single-triangle term of the same sum.
      Non-manifold edges (more than two triangles) sum all their opposite angles.
    * Negative sums (``α + β > π``: a non-Delaunay edge, or an obtuse boundary angle) are
      clamped to 0 so that every smoothing step is a convex combination of neighbours.
    * Degenerate triangles contribute 0 (see :func:`_corner_cotangents`).
    """
    cot = _corner_cotangents(verts, faces).reshape(verts.shape[0], -1)  # (B, 3F)
    index = corner_edge.reshape(-1)
    keep = index >= 0
    c = cot.new_zeros(verts.shape[0], num_edges)
    c = c.index_add(1, index[keep], 0.5 * cot[:, keep])
    return c.clamp_min(0.0)


def _normalize_rows(
    c: torch.Tensor, rows: torch.Tensor, num_verts: int, uniform: torch.Tensor
) -> torch.Tensor:
    """Row-normalize directed weights ``c`` ``(B, K)``: ``w_ij = c_ij / Σ_k c_ik``.

    Rows whose sum is 0 (every incident weight clamped or degenerate) fall back to ``uniform``
    ``(K,)`` (``1/deg``), so every vertex with neighbours keeps ``Σ_j w_ij = 1``.
    """
    total = c.new_zeros(c.shape[0], num_verts).index_add(1, rows, c)[:, rows]  # (B, K)
    ok = total > 0
    safe = torch.where(ok, total, torch.ones_like(total))
    return torch.where(ok, c / safe, uniform.to(c.dtype).expand_as(c))


def _laplacian_parts(
    verts_b: torch.Tensor, faces: torch.Tensor, kind: str
) -> LaplacianWeights:
    """Weights for validated ``(B, V, 3)`` vertices and int64 faces; ``w`` is ``(K,)`` for
    uniform weights (they depend on faces only) and ``(B, K)`` for cotangent weights."""
    num_verts = verts_b.shape[1]
    edges, corner_edge = _opposite_edges(faces, num_verts)
    rows, cols, edge_of = _directed(edges, num_verts)
    deg = torch.bincount(rows, minlength=num_verts)
    uniform = 1.0 / deg[rows].to(verts_b.dtype)  # Taubin 1995: w_ij = 1/deg(i)
    if kind == "uniform":
        return LaplacianWeights(rows, cols, uniform)
    c = _cotangent_edge_weights(verts_b, faces, corner_edge, edges.shape[0])[:, edge_of]
    return LaplacianWeights(rows, cols, _normalize_rows(c, rows, num_verts, uniform))


def laplacian_weights(
    verts: torch.Tensor, faces: torch.Tensor, kind: str = "uniform"
) -> LaplacianWeights:
    """Row-normalized Laplacian neighbour weights ``(rows, cols, w)`` of a triangle mesh.

    Args:
        verts: ``(V, 3)`` floating vertices (``(B, V, 3)`` gives per-batch cotangent weights
            ``w`` of shape ``(B, K)``; uniform weights stay ``(K,)``).
        faces: ``(F, 3)`` integer vertex indices.
        kind: ``"uniform"`` — ``w_ij = 1/deg(i)`` (the "umbrella" operator, Taubin 1995);
            ``"cotangent"`` — ``w_ij ∝ (cot α_ij + cot β_ij)/2`` (Pinkall & Polthier 1993,
            Meyer et al. 2003), normalized per row, with boundary edges, negative weights and
            degenerate triangles handled as documented in :func:`_cotangent_edge_weights`.

    Returns:
        :class:`LaplacianWeights` ``(rows, cols, w)``: ``(K,)`` long, ``(K,)`` long, float, on the
        device of ``verts``; ``Σ_j w_ij = 1`` for each vertex with neighbours, isolated vertices
        have no entries. Cotangent weights are differentiable functions of ``verts``.
    """
    verts_b, batched = _check_verts(verts)
    faces = _check_faces(faces, verts_b.shape[1], verts_b.device)
    parts = _laplacian_parts(verts_b, faces, _check_kind(kind))
    if not batched and parts.w.ndim == 2:
        parts = parts._replace(w=parts.w[0])
    return parts


# ---------------------------------------------------------------------------------------------
# smoothing
# ---------------------------------------------------------------------------------------------
def _has_neighbours(rows: torch.Tensor, num_verts: int) -> torch.Tensor:
    """``(V,)`` bool: vertices that own at least one weight entry."""
    return torch.bincount(rows, minlength=num_verts) > 0


