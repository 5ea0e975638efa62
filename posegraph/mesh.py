"""Triangle meshes for surface-mapping SLAM: Laplacian weights and smoothing, a Laplacian cost,
OBJ files, icospheres.

Everything here works on plain tensors — vertices ``(V, 3)`` or batched ``(B, V, 3)``, faces
``(F, 3)`` int64 — and on edge lists: the (row-normalized) Laplacian is stored as three tensors
``rows, cols, w`` (one entry per *directed* mesh edge ``i → j``) and applied with ``index_add``.
No torch sparse tensor is ever built, so every function is differentiable on CPU and CUDA.
(PyTorch3D's ``taubin_smoothing`` multiplies by a sparse Laplacian and fails in backward as soon
as the vertices require grad: "The backward pass for this operation requires the 'self' tensor to
be strided, but a sparse tensor was given instead".)

Conventions shared by every function of this module:

* **Neighbours** of vertex ``i`` are the distinct vertices ``j ≠ i`` sharing a face edge with it
  (each undirected edge counts once however many faces share it; self-edges of faces with a
  repeated index are dropped). ``deg(i)`` is their number.
* **Laplacian residual** ``r_i = v_i − Σ_j w_ij v_j`` with ``Σ_j w_ij = 1`` — the vector from
  the weighted neighbour average to the vertex (Taubin 1995, "A signal processing approach to
  fair surface design", SIGGRAPH: ``Δv_i = Σ_j w_ij (v_j − v_i) = −r_i``).
* **Isolated vertices** (``deg(i) = 0``: not in any face, or only in fully degenerate index
  triples) have no weights; their residual is defined as ``r_i = 0``, so smoothing leaves them
  unchanged and :class:`LaplacianSmoothingCost` does not pull them anywhere (a naive
  ``v_i − 0`` would pull them to the origin; PyTorch3D's ``L = D⁻¹A − I`` does exactly that).

The vertices of a mesh enter an optimization as one packed
:class:`posegraph.variables.ManifoldArray` of ``th.Point3`` (tensor ``(B, V, 3)``), never as a
plain ``th.Variable`` whose vertex count Theseus would read as a batch size.
"""

from __future__ import annotations

import math
import os
from typing import List, NamedTuple, Optional, Tuple, Union

import theseus as th
import torch

from .costs import BlockSparseCostFunction, JacobianBlocks
from .errors import shown
from .variables import ManifoldArray
from .weights import BlockCostWeight, BlockScaleWeight

__all__ = [
    "LAPLACIAN_KINDS",
    "LaplacianWeights",
    "LaplacianSmoothingCost",
    "icosphere",
    "laplacian_residual",
    "laplacian_smooth",
    "laplacian_weights",
    "mesh_edges",
    "read_obj",
    "taubin_smooth",
    "write_obj",
]

#: Supported neighbour weightings.
LAPLACIAN_KINDS = ("uniform", "cotangent")

PathLike = Union[str, "os.PathLike[str]"]


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


# ---------------------------------------------------------------------------------------------
# Theseus cost
# ---------------------------------------------------------------------------------------------
def _describe(obj: object) -> str:
    """Short description of a would-be vertex variable for error messages."""
    if isinstance(obj, ManifoldArray):
        return f"ManifoldArray of th.{obj.element_cls.__name__}"
    if isinstance(obj, th.Variable):
        return f"th.{type(obj).__name__} with tensor shape {tuple(obj.tensor.shape)}"
    return type(obj).__name__


def _check_vertex_variable(verts: object) -> ManifoldArray:
    """Raise TypeError unless ``verts`` is a ManifoldArray of th.Point3."""
    if isinstance(verts, ManifoldArray) and verts.element_cls is th.Point3:
        return verts
    name = getattr(verts, "name", None)
    raise TypeError(
        f"LaplacianSmoothingCost: variable {name!r} must be a "
        f"posegraph.variables.ManifoldArray of th.Point3 (tensor (B, V, 3)); received "
        f"{_describe(verts)}. A plain th.Variable/th.Vector/th.Point3 of shape (V, 3) would "
        f"have its vertex count read as the batch size."
    )


def _make_weight(
    weight: Union[float, torch.Tensor, th.Variable, BlockCostWeight],
    num_verts: int,
    like: torch.Tensor,
    cost_name: Optional[str],
) -> BlockCostWeight:
    """Turn a scalar / per-vertex scale into a :class:`BlockScaleWeight` (block_dim 3)."""
    if isinstance(weight, BlockCostWeight):
        return weight
    if isinstance(weight, th.CostWeight):
        raise TypeError(
            f"LaplacianSmoothingCost {cost_name!r}: weight must be a float, a per-vertex tensor "
            f"or a posegraph.weights.BlockCostWeight; received {type(weight).__name__}"
        )
    if isinstance(weight, th.Variable):
        return BlockScaleWeight(weight, block_dim=3)
    scale = torch.as_tensor(weight, dtype=like.dtype, device=like.device)
    if scale.ndim > 2 or (scale.ndim >= 1 and scale.shape[-1] not in (1, num_verts)):
        raise ValueError(
            f"LaplacianSmoothingCost {cost_name!r}: weight must be a scalar, (V,) = "
            f"({num_verts},) or (B, {num_verts}); received shape {tuple(scale.shape)}"
        )
    return BlockScaleWeight(scale, block_dim=3)


def _check_precomputed(laplacian: LaplacianWeights, num_verts: int) -> LaplacianWeights:
    """Validate user-given ``(rows, cols, w)``: 1-D, equal lengths, indices in range."""
    rows, cols, w = laplacian
    if rows.ndim != 1 or cols.shape != rows.shape or w.shape != rows.shape:
        raise ValueError(
            "laplacian: expected rows, cols, w of one shape (K,); received "
            f"{tuple(rows.shape)}, {tuple(cols.shape)}, {tuple(w.shape)}"
        )
    if rows.numel() > 0:
        lo = int(torch.minimum(rows.min(), cols.min()))
        hi = int(torch.maximum(rows.max(), cols.max()))
        if lo < 0 or hi >= num_verts:
            raise ValueError(
                f"laplacian: expected indices in [0, {num_verts}), received [{lo}, {hi}]"
            )
    return LaplacianWeights(rows.long(), cols.long(), w)


def _check_elements(
    elements: Optional[torch.Tensor], num_elements: int, device: torch.device
) -> torch.Tensor:
    """Mesh vertex → variable element map: distinct indices in ``[0, num_elements)``."""
    if elements is None:
        return torch.arange(num_elements, device=device)
    elements = torch.as_tensor(elements)
    if elements.ndim != 1 or elements.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"elements: expected a 1-D integer tensor, received {elements.dtype} of shape "
            f"{tuple(elements.shape)}"
        )
    if elements.numel() and (int(elements.min()) < 0 or int(elements.max()) >= num_elements):
        raise ValueError(f"elements: expected indices in [0, {num_elements}), received "
                         f"[{int(elements.min())}, {int(elements.max())}]")
    if torch.unique(elements).numel() != elements.numel():
        raise ValueError("elements: expected distinct indices (one element per mesh vertex)")
    return elements.to(device=device, dtype=torch.long)


class LaplacianSmoothingCost(BlockSparseCostFunction):
    """Laplacian smoothness of mesh vertices: one residual block ``r_i`` per vertex.

    ``r_i = v_i − Σ_j w_ij v_j`` (``r_i = 0`` for isolated vertices), weighted by a scalar or
    per-vertex scale ``s_i``; the cost contributes ``Σ_i ‖s_i r_i‖²`` to the least-squares sum
    (Theseus' ``Objective.error_metric`` reports half of it). The residual is linear in the
    vertices, so its Jacobian is constant: a diagonal block ``I`` per vertex (``0`` for isolated
    vertices) and a block ``−w_ij I`` per directed edge ``i → j``.

    **Weights are fixed at construction** from a rest mesh — ``rest_verts`` if given, else batch
    element 0 of the variable's current tensor, detached — so moving the vertices during the
    solve does not change ``w`` (and the problem stays a linear least-squares problem).

    **Relation to PyTorch3D's** ``mesh_laplacian_smoothing(meshes, method="uniform")``: it uses
    ``L = D⁻¹A − I`` (``(Lv)_i = Σ_j v_j / deg(i) − v_i``, over the same distinct neighbours,
    with ``L`` held constant) and returns, for one mesh, ``(1/V) Σ_i ‖(Lv)_i‖`` — the mean of
    the Euclidean *norms*, not squared. Since ``(Lv)_i = −r_i`` for uniform weights, the per-
    vertex residuals agree up to sign and ``‖(Lv)_i‖ = ‖r_i‖``; this cost is instead the
    least-squares term ``Σ_i ‖r_i‖²`` (with ``s_i = 1``). Both vanish exactly when every vertex
    is its neighbours' centroid, but values and gradients differ: the derivative of a term
    with respect to ``r_i`` is ``r_i/‖r_i‖`` there (undefined at ``r_i = 0``) and ``2 r_i``
    here, and a uniform scale ``1/√V`` reproduces only the ``1/V`` factor, not the norm. For
    a batch of meshes PyTorch3D additionally averages over meshes. Isolated vertices differ too:
    PyTorch3D's diagonal ``−1`` gives them ``‖v_i‖``, here they contribute 0.

    Args:
        verts: the mesh vertices as a :class:`ManifoldArray` of ``th.Point3`` (``(B, V, 3)``);
            anything else (``th.Variable``, ``th.Vector``, ``th.Point3``, a ManifoldArray of
            another class) raises ``TypeError``. Fixed elements act as anchors.
        faces: ``(F, 3)`` integer vertex indices.
        weight: a float, a per-vertex tensor ``(V,)`` (or ``(B, V)``), a ``th.Variable``
            holding such a scale (all wrapped in ``BlockScaleWeight(scale, block_dim=3)``), or
            any :class:`~posegraph.weights.BlockCostWeight` with ``block_dim = 3``.
        kind: ``"uniform"`` or ``"cotangent"`` (see :func:`laplacian_weights`).
        rest_verts: optional ``(V, 3)`` rest mesh for the weights.
        laplacian: optional precomputed :class:`LaplacianWeights` with ``w`` of shape ``(K,)``
            (overrides ``kind`` / ``rest_verts``; used by :meth:`copy`, and to share one weight
            computation between costs).
        name: cost name.
        elements: optional ``(V,)`` indices: mesh vertex ``k`` is element ``elements[k]`` of
            ``verts`` (when the variable holds more points than the mesh, e.g. all landmarks of
            a pose graph); by default vertex ``k`` is element ``k``.
    """

    def __init__(
        self,
        verts: ManifoldArray,
        faces: torch.Tensor,
        weight: Union[float, torch.Tensor, th.Variable, BlockCostWeight] = 1.0,
        kind: str = "uniform",
        rest_verts: Optional[torch.Tensor] = None,
        laplacian: Optional[LaplacianWeights] = None,
        name: Optional[str] = None,
        elements: Optional[torch.Tensor] = None,
    ):
        verts = _check_vertex_variable(verts)
        self.elements = _check_elements(elements, verts.tensor.shape[1], verts.tensor.device)
        tensor = verts.tensor.index_select(1, self.elements)
        num_verts = tensor.shape[1]
        self.kind = _check_kind(kind)
        self.faces = _check_faces(faces, num_verts, tensor.device)
        if laplacian is not None:
            parts = _check_precomputed(laplacian, num_verts)
        else:
            parts = self._rest_weights(tensor, rest_verts, num_verts)
        block_names = [f"laplacian[v={i}]" for i in range(num_verts)]
        super().__init__(
            _make_weight(weight, num_verts, tensor, name),
            block_dim=3,
            num_blocks=num_verts,
            name=name,
            block_names=block_names,
        )
        self.verts = verts
        self.register_optim_vars(["verts"])
        self._set_constants(parts, tensor.dtype, tensor.device)

    # -- construction helpers ---------------------------------------------------------------
    def _rest_weights(
        self, tensor: torch.Tensor, rest_verts: Optional[torch.Tensor], num_verts: int
    ) -> LaplacianWeights:
        """Weights of the rest mesh (detached): ``rest_verts`` or batch element 0."""
        if rest_verts is None:
            rest = tensor[0]
        else:
            rest, batched = _check_verts(rest_verts, "rest_verts")
            if batched or rest.shape[1] != num_verts:
                raise ValueError(
                    f"rest_verts: expected shape ({num_verts}, 3), "
                    f"received {tuple(rest_verts.shape)}"
                )
            rest = rest[0].to(device=tensor.device)
        rest = rest.detach().to(tensor.dtype).unsqueeze(0)
        rows, cols, w = _laplacian_parts(rest, self.faces, self.kind)
        return LaplacianWeights(rows, cols, w[0] if w.ndim == 2 else w)

    def _set_constants(
        self, parts: LaplacianWeights, dtype: torch.dtype, device: torch.device
    ) -> None:
        """Store weights, index tensors and the constant Jacobian blocks on ``device``."""
        num_verts = self.num_blocks
        rows = parts.rows.to(device)
        cols = parts.cols.to(device)
        w = parts.w.detach().to(device=device, dtype=dtype)
        self.laplacian = LaplacianWeights(rows, cols, w)
        self._has = _has_neighbours(rows, num_verts)
        self._diag_index = torch.arange(num_verts, device=device)
        eye = torch.eye(3, dtype=dtype, device=device)
        if bool(self._has.all()):
            self._diag_block = eye.expand(1, num_verts, 3, 3)  # no memory: one 3×3 eye
        else:
            self._diag_block = self._has.to(dtype)[None, :, None, None] * eye
        self._neighbour_block = (-w)[None, :, None, None] * eye  # (1, K, 3, 3)

    def _sync(self) -> None:
        """Follow the variable if it was moved to another device or dtype."""
        tensor = self.verts.tensor
        w = self.laplacian.w
        if w.device != tensor.device or w.dtype != tensor.dtype:
            self.faces = self.faces.to(tensor.device)
            self.elements = self.elements.to(tensor.device)
            self._set_constants(self.laplacian, tensor.dtype, tensor.device)

    # -- BlockSparseCostFunction interface ----------------------------------------------------
    def block_layout(self) -> List[JacobianBlocks]:
        """Diagonal blocks (``rows = elements = arange(V)``) then neighbour blocks
        (``rows = laplacian.rows``, ``elements = laplacian.cols``)."""
        self._sync()
        return [
            JacobianBlocks(self.verts, self._diag_index, self.elements[self._diag_index]),
            JacobianBlocks(self.verts, self.laplacian.rows, self.elements[self.laplacian.cols]),
        ]

    def block_error(self) -> torch.Tensor:
        """``r`` ``(B, V, 3)`` via one gather and one ``index_add``."""
        self._sync()
        return laplacian_residual(self.verts.tensor.index_select(1, self.elements), self.laplacian, self._has)

    def block_jacobians(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Constant blocks ``[(B, V, 3, 3) I, (B, K, 3, 3) −w_ij I]`` and the block error.

        The blocks are cached and returned as ``expand``-ed views over the batch: treat them as
        read-only.
        """
        err = self.block_error()
        batch = err.shape[0]
        return [
            self._diag_block.expand(batch, -1, -1, -1),
            self._neighbour_block.expand(batch, -1, -1, -1),
        ], err

    def to(self, *args, **kwargs):
        """Move variables and weight (Theseus) and the cached constants."""
        super().to(*args, **kwargs)
        self._sync()

    def _copy_impl(self, new_name: Optional[str] = None) -> "LaplacianSmoothingCost":
        return LaplacianSmoothingCost(
            self.verts.copy(),
            self.faces.clone(),
            weight=self.weight.copy(),
            kind=self.kind,
            laplacian=LaplacianWeights(*(t.clone() for t in self.laplacian)),
            name=new_name,
            elements=self.elements.clone(),
        )


# ---------------------------------------------------------------------------------------------
# mesh files
# ---------------------------------------------------------------------------------------------
def _parse_vertex(tokens: List[str], where: str) -> Tuple[float, float, float]:
    """``v x y z [w | r g b]``: the first three numbers; extra values are ignored."""
    if len(tokens) < 4:
        raise ValueError(f"{where}: vertex needs 3 coordinates, received {len(tokens) - 1}")
    try:
        x, y, z = (float(t) for t in tokens[1:4])
    except ValueError:
        raise ValueError(
            f"{where}: vertex coordinates must be numbers, received {', '.join(map(shown, tokens[1:4]))}"
        ) from None
    if not all(math.isfinite(c) for c in (x, y, z)):
        raise ValueError(f"{where}: vertex coordinates must be finite, received {', '.join(map(shown, tokens[1:4]))}")
    return x, y, z


def _parse_face_index(token: str, num_verts: int, where: str) -> int:
    """0-based vertex index of one face entry ``a``, ``a/b``, ``a/b/c`` or ``a//c``.

    Positive indices are 1-based; negative ones are relative to the vertices read so far
    (``-1`` is the last one).
    """
    head = token.split("/", 1)[0]
    try:
        ref = int(head)
    except ValueError:
        raise ValueError(f"{where}: face entry {shown(token)} has no integer vertex index") from None
    if ref == 0:
        raise ValueError(f"{where}: face entry {shown(token)}: OBJ indices start at 1, received 0")
    if ref < 0:
        index = num_verts + ref
        if index < 0:
            raise ValueError(
                f"{where}: relative index {ref} points before the first vertex "
                f"({num_verts} vertices defined so far)"
            )
        return index
    return ref - 1


def read_obj(path: PathLike) -> Tuple[torch.Tensor, torch.Tensor]:
    """Read the triangle mesh of a Wavefront OBJ file.

    Supported: ``v x y z`` (extra values — ``w`` or vertex colours — ignored), ``f`` lines with
    entries ``a``, ``a/b``, ``a/b/c``, ``a//c``, positive (1-based) and negative (relative)
    indices, polygons with more than 3 vertices (fan-triangulated ``(a0, ak, ak+1)``),
    ``#`` comments and blank lines. Other statements (``vn``, ``vt``, ``o``, ``g``, ``s``,
    ``usemtl``, ``mtllib``, ``l``, …) are ignored.

    Returns:
        ``verts`` ``(V, 3)`` float64 and ``faces`` ``(F, 3)`` int64 (0-based).

    Raises:
        ValueError: ``"{path}:{lineno}: what is wrong"`` for malformed vertices or faces, faces
            with fewer than 3 vertices, index 0 and out-of-range indices.
    """
    verts: List[Tuple[float, float, float]] = []
    faces: List[Tuple[int, int, int]] = []
    positive_refs: List[Tuple[int, int]] = []  # (lineno, largest positive index) per face
    with open(path, "r", encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            tokens = raw.split("#", 1)[0].split()
            if not tokens:
                continue
            where = f"{path}:{lineno}"
            if tokens[0] == "v":
                verts.append(_parse_vertex(tokens, where))
            elif tokens[0] == "f":
                if len(tokens) < 4:
                    raise ValueError(
                        f"{where}: face needs at least 3 vertices, received {len(tokens) - 1}"
                    )
                idx = [_parse_face_index(t, len(verts), where) for t in tokens[1:]]
                positive_refs.append((lineno, max(idx)))
                faces.extend((idx[0], idx[k], idx[k + 1]) for k in range(1, len(idx) - 1))
    for lineno, top in positive_refs:
        if top >= len(verts):
            raise ValueError(
                f"{path}:{lineno}: face refers to vertex {top + 1}, the file has "
                f"{len(verts)} vertices"
            )
    return (
        torch.tensor(verts, dtype=torch.float64).reshape(-1, 3),
        torch.tensor(faces, dtype=torch.long).reshape(-1, 3),
    )


def format_obj(verts: torch.Tensor, faces: torch.Tensor) -> str:
    """Wavefront OBJ text of a triangle mesh (see :func:`write_obj`)."""
    verts_b, batched = _check_verts(verts)
    if batched:
        raise ValueError(f"verts: expected shape (V, 3), received {tuple(verts.shape)}")
    faces = _check_faces(faces, verts_b.shape[1], torch.device("cpu"))
    vlist = verts_b[0].detach().cpu().double().tolist()
    flist = (faces + 1).tolist()
    lines = [f"# posegraph.mesh.write_obj: {len(vlist)} vertices, {len(flist)} faces\n"]
    lines += [f"v {x!r} {y!r} {z!r}\n" for x, y, z in vlist]
    lines += [f"f {a} {b} {c}\n" for a, b, c in flist]
    return "".join(lines)


def write_obj(path: PathLike, verts: torch.Tensor, faces: torch.Tensor) -> None:
    """Write a triangle mesh as Wavefront OBJ, atomically (:mod:`posegraph.io.output`).

    Coordinates are written with Python's shortest round-trip ``repr``, so float64 vertices
    read back bit-exactly with :func:`read_obj`; faces are written 1-based.

    Args:
        path: destination file; its directory must exist.
        verts: ``(V, 3)`` floating vertices (any device; detached).
        faces: ``(F, 3)`` integer vertex indices in ``[0, V)``.
    """
    from .io.output import write_text_atomic

    write_text_atomic(path, format_obj(verts, faces))


# ---------------------------------------------------------------------------------------------
# generated meshes
# ---------------------------------------------------------------------------------------------
def _icosahedron() -> Tuple[torch.Tensor, torch.Tensor]:
    """Unit icosahedron (float64), faces oriented counter-clockwise seen from outside.

    Vertices are the cyclic permutations of ``(±1, ±φ, 0)``, ``φ = (1 + √5)/2`` (face list as
    in A. Kahler, "Creating an icosphere mesh in code", 2009).
    """
    t = (1.0 + math.sqrt(5.0)) / 2.0
    verts = torch.tensor(
        [
            [-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0],
            [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
            [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1],
        ],
        dtype=torch.float64,
    )
    faces = torch.tensor(
        [
            [0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11],
            [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6], [7, 1, 8],
            [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9],
            [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1],
        ],
        dtype=torch.long,
    )
    return verts / verts.norm(dim=1, keepdim=True), faces


def _subdivide(verts: torch.Tensor, faces: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One midpoint subdivision (each triangle → 4), midpoints projected to the unit sphere."""
    num_verts = verts.shape[0]
    edges, corner_edge = _opposite_edges(faces, num_verts)
    mid = verts[edges].mean(dim=1)
    verts = torch.cat([verts, mid / mid.norm(dim=1, keepdim=True)])
    m = corner_edge + num_verts  # m[:, k]: midpoint of the edge opposite corner k
    a, b, c = faces.unbind(1)
    m_bc, m_ca, m_ab = m.unbind(1)
    faces = torch.cat(
        [
            torch.stack([a, m_ab, m_ca], 1),
            torch.stack([b, m_bc, m_ab], 1),
            torch.stack([c, m_ca, m_bc], 1),
            torch.stack([m_ab, m_bc, m_ca], 1),
        ]
    )
    return verts, faces


def icosphere(
    subdivisions: int = 2, radius: float = 1.0, dtype: torch.dtype = torch.float64
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Geodesic sphere: an icosahedron, midpoint-subdivided ``subdivisions`` times, every new
    vertex projected to the sphere.

    Has ``10·4ⁿ + 2`` vertices and ``20·4ⁿ`` faces (``n = 5``: 10242 and 20480), faces oriented
    counter-clockwise seen from outside. Computed in float64, returned in ``dtype``.
    """
    if isinstance(subdivisions, bool) or not isinstance(subdivisions, int) or subdivisions < 0:
        raise ValueError(f"subdivisions: expected an integer >= 0, received {subdivisions!r}")
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius: expected a finite number > 0, received {radius!r}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating-point dtype, received {dtype}")
    verts, faces = _icosahedron()
    for _ in range(subdivisions):
        verts, faces = _subdivide(verts, faces)
    return (verts * radius).to(dtype), faces
