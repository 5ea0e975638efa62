"""Chordal initialization: rotations by linear least squares, then translations.

Two sparse linear least-squares problems, each solved once with CHOLMOD (Carlone, Tron,
Daniilidis & Dellaert 2015, "Initialization techniques for 3D SLAM: a survey on rotation
estimation and its use in pose graph optimization", ICRA: the chordal relaxation for the
rotations, then the translations given the rotations):

1. **Rotations.** Relax ``Rᵢ ∈ SO(k)`` to any ``k×k`` matrix and minimize
   ``Σₑ κₑ ‖Rᵢ Zᵢⱼ − Rⱼ‖²_F`` (the chordal distance). Row ``r`` of ``Rᵢ Zᵢⱼ = Rⱼ`` reads
   ``Zᵢⱼᵀ rᵢ − rⱼ = 0`` for the column vectors ``rᵢ = Rᵢ[r, :]ᵀ``: the ``k`` rows decouple and
   share one ``kN × kN`` normal matrix, solved with ``k`` right-hand sides. Each estimate is
   then projected to the nearest rotation in Frobenius norm, ``R = U diag(1, …, det(U Vᵀ))
   Vᵀ`` from the SVD ``U S Vᵀ`` (the det term keeps ``det R = +1``; Umeyama 1991, "Least-squares
   estimation of transformation parameters between two point patterns", PAMI).
2. **Translations.** With the rotations fixed, the translation part of the residual
   ``Log(Z⁻¹ Xᵢ⁻¹ Xⱼ)`` is linear in the translations, ``R_Zᵀ (Rᵢᵀ (tⱼ − tᵢ) − t_Z)``
   (exact where the rotation residual vanishes); minimize its squared norm weighted by the
   translation block ``Ω_tt`` of each information matrix (the information of the
   translation given the rotation).

Weighting of the rotation step (``weighting``): ``"information"`` (default) gives edge ``e``
the scalar ``κₑ = tr(Ω_RR)/m``, the mean precision of its rotation block (``m`` = 3 for SE3,
1 for SE2); ``"isotropic"`` gives every edge ``κₑ = 1``. A scalar per edge keeps the rows
decoupled; a full ``Ω_RR`` would couple them.

Gauge and anchors: the vertices the optimizer holds fixed (``PoseGraph.gauge_fixed``: FIX'ed
vertices, else the lowest id) keep their poses from the file; edge-only graphs anchor the
lowest id at the identity. Their entries are moved to the right-hand side.

Regularization: the columns of each system are scaled to unit norm (Jacobi scaling) and
``regularization · I`` is added to the scaled normal matrix, i.e. ``AᵀA + ε·diag(AᵀA)``
(Tikhonov, relative to each unknown's own scale), so that graphs whose weights span many
orders of magnitude, or vertices whose edges carry no rotation information, still factor;
the relative bias this adds is of order ``ε`` times the condition number of the graph.

Scale: both problems are unchanged when every information matrix is multiplied by one
constant (their objectives scale, their minimizers do not; the Jacobi scaling cancels it too),
so the information matrices are first divided by an even power of two near their largest
entry (:func:`unit_scale`: exact, and bit-identical results). Entries near the float64 limit
(1e308) then no longer overflow in ``tr(Ω_RR)``, the Cholesky factors or the normal matrices.
Where the solution is still not finite (positions or measurements near the float64 limit), a
:class:`~posegraph.errors.PoseGraphError` names the file.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
import scipy.sparse as sp
import torch
from sksparse.cholmod import cholesky_AAt

from posegraph.errors import PoseGraphError
from posegraph.graph import PoseGraph
from posegraph.lie.homogeneous import from_homogeneous, to_homogeneous
from posegraph.init.spanning_tree import require_connected
from posegraph.lie.rotation_rule import nearest_rotation
from posegraph.information import cholesky_sqrt_information

WEIGHTINGS = ("information", "isotropic")
DEFAULT_REGULARIZATION = 1e-12


def _solve_anchored(
    rows: np.ndarray,
    cols: np.ndarray,
    vals: np.ndarray,
    rhs: np.ndarray,
    num_unknowns: int,
    known: np.ndarray,
    known_values: np.ndarray,
    regularization: float,
) -> np.ndarray:
    """Solve ``min ‖A x − rhs‖²`` (A given as COO triplets) with the unknowns ``known``
    (bool ``(n,)``) held at ``known_values`` (``(n, m)``, rows read where ``known``).

    Returns ``x`` ``(n, m)``. Unknown columns are Jacobi-scaled, then Tikhonov-regularized
    with ``regularization · I`` (see the module doc).
    """
    free = ~known
    new_col = np.cumsum(free) - 1  # index among free unknowns
    is_free = free[cols]
    a_known = sp.csr_matrix(
        (vals[~is_free], (rows[~is_free], cols[~is_free])), shape=(rhs.shape[0], num_unknowns)
    )
    # (values near the float64 limit may overflow here: chordal_initialization refuses a
    # non-finite result with the file's name, so NumPy's overflow warnings are not shown)
    with np.errstate(over="ignore", invalid="ignore"):
        b = rhs - a_known @ np.where(known[:, None], known_values, 0.0)
    x = np.array(known_values, dtype=np.float64, copy=True)
    num_free = int(free.sum())
    if num_free == 0:
        return x
    r, c, v = rows[is_free], new_col[cols[is_free]], vals[is_free]
    norms = np.sqrt(np.bincount(c, weights=v * v, minlength=num_free))
    scale = 1.0 / np.where(norms > 0, norms, 1.0)
    a_free = sp.csr_matrix((v * scale[c], (r, c)), shape=(rhs.shape[0], num_free))
    at = a_free.T.tocsc()
    factor = cholesky_AAt(at, beta=regularization)
    with np.errstate(over="ignore", invalid="ignore"):
        x[free] = factor(at @ b) * scale[:, None]
    return x


def _edge_blocks(edges: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COO row/column indices of the ``k×k`` blocks of every edge at its vertices
    ``i`` and ``j``: ``rows (E, k, k)``, ``cols_i (E, k, k)``, ``cols_j (E, k, k)``."""
    a = np.arange(k)
    rows = np.broadcast_to(
        np.arange(edges.shape[0])[:, None, None] * k + a[None, :, None], (edges.shape[0], k, k)
    )
    cols_i = np.broadcast_to(edges[:, 0, None, None] * k + a[None, None, :], rows.shape)
    cols_j = np.broadcast_to(edges[:, 1, None, None] * k + a[None, None, :], rows.shape)
    return rows, cols_i, cols_j


def _linear_system(
    edges: np.ndarray, block_i: np.ndarray, block_j: np.ndarray
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """COO triplets of the matrix whose edge ``e`` rows are ``[… block_i[e] … block_j[e] …]``
    at the columns of vertices ``i`` and ``j`` (blocks ``(E, k, k)``)."""
    k = block_i.shape[-1]
    rows, cols_i, cols_j = _edge_blocks(edges, k)
    return (
        np.concatenate([rows.ravel(), rows.ravel()]),
        np.concatenate([cols_i.ravel(), cols_j.ravel()]),
        np.concatenate([block_i.ravel(), block_j.ravel()]),
    )


def project_to_rotations(mats: np.ndarray) -> np.ndarray:
    """Nearest rotations (Frobenius norm) to ``(n, k, k)`` matrices, via the SVD with the
    determinant fixed to +1 (see the module doc): :func:`posegraph.lie.nearest_rotation`, the
    projection of the rotation rule too."""
    return nearest_rotation(mats)


def rotation_weights(information: np.ndarray, kind: str, weighting: str) -> np.ndarray:
    """Scalar weight ``κₑ`` of each edge's rotation residual (see the module doc)."""
    if weighting == "isotropic":
        return np.ones(information.shape[0])
    rot = slice(3, 6) if kind == "SE3" else slice(2, 3)
    block = information[:, rot, rot]
    return np.trace(block, axis1=1, axis2=2) / block.shape[-1]


def chordal_rotations(
    edges: np.ndarray,
    rel_rotations: np.ndarray,
    kappa: np.ndarray,
    known: np.ndarray,
    known_rotations: np.ndarray,
    regularization: float = DEFAULT_REGULARIZATION,
) -> np.ndarray:
    """Rotations ``(N, k, k)`` minimizing ``Σ κₑ ‖Rᵢ Zᵢⱼ − Rⱼ‖²_F``, projected to SO(k).

    Args:
        edges: ``(E, 2)`` vertex indices; rel_rotations: ``(E, k, k)`` measured ``Zᵢⱼ``
            rotations; kappa: ``(E,)`` weights ≥ 0; known: ``(N,)`` bool anchors;
            known_rotations: ``(N, k, k)`` (read where ``known``).
    """
    n, k = known.shape[0], rel_rotations.shape[-1]
    w = np.sqrt(np.maximum(kappa, 0.0))[:, None, None]
    eye = np.broadcast_to(np.eye(k), rel_rotations.shape)
    rows, cols, vals = _linear_system(edges, w * rel_rotations.transpose(0, 2, 1), -w * eye)
    # unknown (vertex a, entry b) of right-hand side r is Rₐ[r, b]
    known_values = np.repeat(known, k)
    values = known_rotations.transpose(0, 2, 1).reshape(n * k, k)
    x = _solve_anchored(
        rows, cols, vals, np.zeros((edges.shape[0] * k, k)), n * k, known_values, values,
        regularization,
    )
    estimate = x.reshape(n, k, k).transpose(0, 2, 1)
    out = project_to_rotations(estimate)
    out[known] = known_rotations[known]
    return out


def chordal_translations(
    edges: np.ndarray,
    measurements: np.ndarray,
    sqrt_info_tt: np.ndarray,
    rotations: np.ndarray,
    known: np.ndarray,
    known_translations: np.ndarray,
    regularization: float = DEFAULT_REGULARIZATION,
) -> np.ndarray:
    """Translations ``(N, k)`` minimizing ``Σ ‖W (R_Zᵀ (Rᵢᵀ (tⱼ − tᵢ) − t_Z))‖²`` with the
    rotations fixed; ``measurements`` homogeneous ``(E, k+1, k+1)``, ``sqrt_info_tt``
    ``(E, k, k)`` with ``Wᵀ W = Ω_tt``."""
    n, k = known.shape[0], rotations.shape[-1]
    rz, tz = measurements[:, :k, :k], measurements[:, :k, k]
    ri = rotations[edges[:, 0]]
    wrz = sqrt_info_tt @ rz.transpose(0, 2, 1)  # W R_Zᵀ
    m = wrz @ ri.transpose(0, 2, 1)  # W R_Zᵀ Rᵢᵀ
    rows, cols, vals = _linear_system(edges, -m, m)
    rhs = (wrz @ tz[:, :, None]).reshape(-1, 1)
    x = _solve_anchored(
        rows, cols, vals, rhs, n * k, np.repeat(known, k), known_translations.reshape(n * k, 1),
        regularization,
    )
    return x.reshape(n, k)


def unit_scale(information: np.ndarray) -> np.ndarray:
    """``information`` divided by ``4^k``, the even power of two nearest above its largest
    absolute entry (unchanged when that is 0 or not finite): exact, and the chordal solution
    does not change (see the module doc), while every entry is at most 1."""
    top = float(np.abs(information).max()) if information.size else 0.0
    if not (0.0 < top < np.inf):
        return information
    exponent = int(np.frexp(top)[1])  # top < 2**exponent
    return np.ldexp(information, -(exponent + exponent % 2))


def _anchors(graph: PoseGraph, labels: np.ndarray, batch_index: int) -> Tuple[np.ndarray, np.ndarray]:
    """Anchored vertices (bool ``(N,)``) and all poses as homogeneous matrices (the anchors'
    rows are meaningful): the gauge with its file poses, or the lowest id at the identity."""
    k = 4 if graph.kind == "SE3" else 3
    if graph.poses is not None:
        poses = graph.poses if graph.poses.ndim == len(graph.element_shape) + 1 else graph.poses[batch_index]
        return graph.gauge_fixed(labels).numpy(), to_homogeneous(graph.kind, poses)
    known = np.zeros(graph.num_poses, dtype=bool)
    known[int(torch.argmin(graph.ids))] = True
    return known, np.broadcast_to(np.eye(k), (graph.num_poses, k, k)).copy()


def _require_finite(graph: PoseGraph, poses: np.ndarray) -> None:
    """PoseGraphError naming the file (and the first vertex) where a chordal pose is not finite."""
    bad = np.flatnonzero(~np.isfinite(poses.reshape(poses.shape[0], -1)).all(axis=1))
    if bad.size:
        raise PoseGraphError(
            f"chordal initialization: the pose of vertex {int(graph.ids[bad[0]])} is not finite "
            f"({bad.size} of {poses.shape[0]} vertices): positions or measurements overflow "
            "float64; use values of a smaller scale",
            graph.source,
        )


def chordal_initialization(
    graph: PoseGraph,
    weighting: str = "information",
    regularization: float = DEFAULT_REGULARIZATION,
) -> torch.Tensor:
    """Chordal initial poses of ``graph`` (float64, CPU): ``(N, *shape)``, or ``(B, N, *shape)``
    for a batched graph (one solve per batch element).

    Raises:
        GraphStructureError: when the graph is disconnected.
        ValueError: for an unknown ``weighting`` or a negative ``regularization``.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting: expected one of {', '.join(WEIGHTINGS)}, received {weighting!r}")
    if not regularization >= 0:
        raise ValueError(f"regularization: expected a number ≥ 0, received {regularization!r}")
    labels = require_connected(graph)
    edges = graph.edges.cpu().numpy()
    shape = graph.element_shape
    batched = graph.batch_size > 1
    out = []
    for b in range(graph.batch_size):
        meas = graph.measurements if graph.measurements.ndim == len(shape) + 1 else graph.measurements[b]
        info = graph.information if graph.information.ndim == 3 else graph.information[b]
        z = to_homogeneous(graph.kind, meas)
        info_np = unit_scale(info.detach().cpu().double().numpy())
        k = z.shape[-1] - 1
        known, anchor = _anchors(graph, labels, b)
        try:
            rot = chordal_rotations(
                edges, z[:, :k, :k], rotation_weights(info_np, graph.kind, weighting), known,
                anchor[:, :k, :k], regularization,
            )
        except np.linalg.LinAlgError as err:  # (an SVD of non-finite estimates)
            raise PoseGraphError(
                f"chordal initialization: the rotation estimates are not finite ({err}); "
                "use --init spanning-tree",
                graph.source,
            ) from None
        w_tt = cholesky_sqrt_information(torch.as_tensor(info_np[:, :k, :k])).numpy()
        trans = chordal_translations(edges, z, w_tt, rot, known, anchor[:, :k, k], regularization)
        poses = anchor.copy()
        poses[:, :k, :k], poses[:, :k, k] = rot, trans
        _require_finite(graph, poses)
        out.append(from_homogeneous(graph.kind, poses))
        if not batched:
            return out[0]
    return torch.stack(out)
