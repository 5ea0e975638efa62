"""Trajectory accuracy against ground truth: ATE (absolute) and RPE (relative), as evo.

Definitions (those of evo's ``evo_ape``/``evo_rpe``, M. Grupp, github.com/MichaelGrupp/evo,
and of Sturm et al. 2012, "A benchmark for the evaluation of RGB-D SLAM systems", IROS):

- Poses are matched **by vertex id**: ``Pₖ`` (estimate) and ``Qₖ`` (ground truth) for every id
  in both files, in increasing id order. When the id sets differ, the common ids are used and a
  warning says how many were dropped; fewer than 2 common ids is an error.
- **Alignment** (``align``): the similarity ``S = (s, R, t)`` minimizing
  ``Σₖ ‖qₖ − (s R pₖ + t)‖²`` over the positions ``pₖ``, ``qₖ`` (Umeyama 1991, closed form, see
  :func:`umeyama`); ``"se3"`` fixes ``s = 1`` (``evo -a``), ``"sim3"`` estimates ``s``
  (``evo -as``), ``"none"`` uses ``S = I``. The estimate is replaced by ``S · Pₖ``
  (position ``s R pₖ + t``, rotation ``R Rₖ``) for both metrics.
- **ATE** (evo's APE, ``--pose_relation trans_part``): ``eₖ = ‖trans(Qₖ) − trans(S·Pₖ)‖``;
  reported as statistics of ``eₖ`` over the matched poses (``rmse = sqrt(mean eₖ²)``).
- **RPE** (evo's RPE, ``--delta 1 --delta_unit f``, pose relations ``trans_part`` and
  ``angle_rad``): for consecutive matched poses ``k, k+1`` (consecutive in id order, not
  necessarily ids differing by 1), ``Eₖ = (Qₖ⁻¹ Qₖ₊₁)⁻¹ (Pₖ⁻¹ Pₖ₊₁)``; translation error
  ``‖trans(Eₖ)‖``, rotation error the angle of ``rot(Eₖ)`` (radians;
  ``arccos((tr R − 1)/2)`` in 3D, ``|atan2(R₁₀, R₀₀)|`` in 2D). It is unchanged by an SE(3)
  alignment; a Sim(3) alignment scales its translations by ``s``.

SE2 files are evaluated in the plane (2D Umeyama, ``se3`` meaning a rigid 2D motion). Poses
are homogeneous matrices here (numpy float64); everything is a plain function.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from .errors import PoseGraphError
from .graph import PoseGraph
from .init import to_homogeneous
from .lie import first_invalid_rotation

ALIGNMENTS = ("se3", "sim3", "none")


def umeyama(src: np.ndarray, dst: np.ndarray, with_scale: bool = False) -> Tuple[float, np.ndarray, np.ndarray]:
    """Least-squares similarity ``dst ≈ s R src + t`` between point sets ``(n, d)``.

    S. Umeyama, "Least-squares estimation of transformation parameters between two point
    patterns", IEEE TPAMI 13(4):376–380, 1991: with means ``μ``, ``σ²_src`` the variance of
    ``src`` and ``Σ = (1/n) Σᵢ (dstᵢ − μ_dst)(srcᵢ − μ_src)ᵀ = U D Vᵀ`` (eq. 38),
    ``R = U S Vᵀ`` with ``S = diag(1, …, 1, det(U)·det(V))`` (eqs. 39–40: a reflection is never
    returned), ``s = tr(D S) / σ²_src`` (eq. 42, or 1 without scale) and
    ``t = μ_dst − s R μ_src`` (eq. 41).

    Returns:
        ``(s, R, t)``.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[0] < 2:
        raise ValueError(f"umeyama: expected two (n ≥ 2, d) point sets of one shape, received {src.shape} and {dst.shape}")
    n, d = src.shape
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    xs, xd = src - mu_s, dst - mu_d
    cov = xd.T @ xs / n
    u, dvals, vt = np.linalg.svd(cov)
    sign = np.ones(d)
    sign[-1] = 1.0 if np.linalg.det(u) * np.linalg.det(vt) >= 0 else -1.0
    rot = (u * sign) @ vt
    var_s = (xs * xs).sum() / n
    if with_scale and not var_s > 0:
        raise ValueError("umeyama: all source points coincide, the scale is undefined")
    scale = float((dvals * sign).sum() / var_s) if with_scale else 1.0
    trans = mu_d - scale * rot @ mu_s
    return scale, rot, trans


def apply_similarity(poses: np.ndarray, scale: float, rot: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """``S · P`` for homogeneous poses ``(n, k, k)``: position ``s R p + t``, rotation ``R Rₚ``
    (what evo's ``align``/``scale`` do to a trajectory)."""
    d = rot.shape[0]
    out = poses.copy()
    out[:, :d, :d] = rot @ poses[:, :d, :d]
    out[:, :d, d] = scale * poses[:, :d, d] @ rot.T + trans
    return out


def statistics(errors: np.ndarray) -> Dict[str, float]:
    """evo's statistics of an error vector: rmse, mean, median, std, min, max."""
    e = np.asarray(errors, dtype=np.float64)
    return {
        "rmse": float(np.sqrt(np.mean(e * e))),
        "mean": float(e.mean()),
        "median": float(np.median(e)),
        "std": float(e.std()),
        "min": float(e.min()),
        "max": float(e.max()),
    }


def _rotation_angle(rot: np.ndarray) -> np.ndarray:
    """Angle (radians) of rotations ``(n, d, d)``, d = 2 or 3."""
    if rot.shape[-1] == 2:
        return np.abs(np.arctan2(rot[:, 1, 0], rot[:, 0, 0]))
    cos = (np.trace(rot, axis1=1, axis2=2) - 1.0) / 2.0
    return np.arccos(np.clip(cos, -1.0, 1.0))


def ate_errors(estimate: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-pose ``‖trans(Qₖ) − trans(Pₖ)‖`` of homogeneous poses (already aligned)."""
    d = estimate.shape[-1] - 1
    return np.linalg.norm(truth[:, :d, d] - estimate[:, :d, d], axis=1)


def rpe_errors(estimate: np.ndarray, truth: np.ndarray, delta: int = 1) -> Tuple[np.ndarray, np.ndarray]:
    """Per-pair translation and rotation (radians) errors of
    ``Eₖ = (Qₖ⁻¹ Qₖ₊δ)⁻¹ (Pₖ⁻¹ Pₖ₊δ)`` (evo's RPE with ``delta`` frames)."""
    if estimate.shape[0] <= delta:
        raise ValueError(f"rpe: expected more than {delta} poses, received {estimate.shape[0]}")
    d = estimate.shape[-1] - 1
    inv = np.linalg.inv
    rel_est = inv(estimate[:-delta]) @ estimate[delta:]
    rel_ref = inv(truth[:-delta]) @ truth[delta:]
    e = inv(rel_ref) @ rel_est
    return np.linalg.norm(e[:, :d, d], axis=1), _rotation_angle(e[:, :d, :d])


def align(estimate: np.ndarray, truth: np.ndarray, method: str = "se3") -> Tuple[np.ndarray, Dict[str, Any]]:
    """The estimate aligned onto the truth (``method`` in se3, sim3, none; see module doc) and
    the transform used (``scale``, ``rotation``, ``translation`` as lists)."""
    if method not in ALIGNMENTS:
        raise ValueError(f"align: expected one of {', '.join(ALIGNMENTS)}, received {method!r}")
    d = estimate.shape[-1] - 1
    if method == "none":
        scale, rot, trans = 1.0, np.eye(d), np.zeros(d)
    else:
        scale, rot, trans = umeyama(estimate[:, :d, d], truth[:, :d, d], with_scale=method == "sim3")
    transform = {"method": method, "scale": scale, "rotation": rot.tolist(), "translation": trans.tolist()}
    return apply_similarity(estimate, scale, rot, trans), transform


def _matched_poses(estimate: PoseGraph, truth: PoseGraph) -> Tuple[np.ndarray, np.ndarray, np.ndarray, Dict[str, int]]:
    """Homogeneous poses of the ids in both graphs (increasing id order)."""
    for g, role in ((estimate, "estimate"), (truth, "ground truth")):
        if g.poses is None:
            raise PoseGraphError(f"{role}: expected VERTEX lines (poses), the file has only edges", g.source)
        if g.batch_size != 1:
            raise PoseGraphError(f"{role}: expected one graph, received a batch of {g.batch_size}", g.source)
        _check_poses(g, role)
    if estimate.kind != truth.kind:
        raise PoseGraphError(
            f"expected ground truth of the estimate's kind {estimate.kind}, received {truth.kind} ({truth.source})",
            estimate.source,
        )
    est_ids, ref_ids = estimate.ids.cpu().numpy(), truth.ids.cpu().numpy()
    common, ie, ir = np.intersect1d(est_ids, ref_ids, assume_unique=True, return_indices=True)
    counts = {"matched": int(common.size), "estimate_only": int(est_ids.size - common.size),
              "truth_only": int(ref_ids.size - common.size)}
    if common.size < 2:
        raise PoseGraphError(
            f"expected at least 2 vertex ids shared with the ground truth {truth.source}, received {common.size}",
            estimate.source,
        )
    if counts["estimate_only"] or counts["truth_only"]:
        warnings.warn(
            f"{estimate.source}: vertex ids differ from the ground truth {truth.source} "
            f"({counts['estimate_only']} only in the estimate, {counts['truth_only']} only in the ground truth); "
            f"evaluating the {common.size} common ids",
            stacklevel=3,
        )
    est = to_homogeneous(estimate.kind, estimate.poses.reshape(-1, *estimate.element_shape))[ie]
    ref = to_homogeneous(truth.kind, truth.poses.reshape(-1, *truth.element_shape))[ir]
    return common, est, ref, counts


def _check_poses(graph: PoseGraph, role: str) -> None:
    """Finite poses whose rotations pass posegraph's rotation rule
    (:func:`posegraph.lie.rotation_defect`), else a PoseGraphError naming the vertex."""
    poses = graph.poses.reshape(-1, *graph.element_shape)
    finite = torch.isfinite(poses.reshape(poses.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        k = int(torch.nonzero(~finite)[0])
        raise PoseGraphError(f"{role}: vertex {int(graph.ids[k])} has a non-finite pose", graph.source)
    k, defect = first_invalid_rotation(poses, graph.kind)
    if k >= 0:
        raise PoseGraphError(
            f"{role}: vertex {int(graph.ids[k])}: expected a rotation, received one with "
            f"max(|RᵀR − I|, |det R − 1|) = {defect:.3g}",
            graph.source,
        )


def evaluate(estimate: PoseGraph, truth: PoseGraph, align_method: str = "se3") -> Dict[str, Any]:
    """ATE and RPE of ``estimate`` against ``truth`` (see the module doc) as a JSON-ready dict:
    ``ate`` (meters), ``rpe_translation`` (meters), ``rpe_rotation_rad`` (each evo's
    statistics), ``alignment``, ``poses`` (matched / estimate_only / truth_only counts).

    Raises:
        PoseGraphError: naming the estimate's file, for an unknown ``align_method``, graphs
            that cannot be compared, non-finite poses, rotations that are not rotations, or an
            alignment that is undefined (a Sim(3) scale of coinciding positions).
    """
    if not isinstance(align_method, str) or align_method not in ALIGNMENTS:
        raise PoseGraphError(f"align: expected one of {', '.join(ALIGNMENTS)}, received {align_method!r}", estimate.source)
    ids, est, ref, counts = _matched_poses(estimate, truth)
    try:
        aligned, transform = align(est, ref, align_method)
    except (ValueError, np.linalg.LinAlgError) as err:
        raise PoseGraphError(f"cannot align the estimate onto the ground truth {truth.source}: {err}", estimate.source) from None
    rpe_t, rpe_r = rpe_errors(aligned, ref)
    return {
        "estimate": estimate.source,
        "ground_truth": truth.source,
        "kind": estimate.kind,
        "poses": counts,
        "alignment": transform,
        "ate": statistics(ate_errors(aligned, ref)),
        "rpe_translation": statistics(rpe_t),
        "rpe_rotation_rad": statistics(rpe_r),
    }


def evaluate_files(estimate_path: str, truth_path: str, align: str = "se3") -> Dict[str, Any]:
    """:func:`evaluate` of two g2o files (vertex-only files accepted)."""
    from .io import read_g2o

    return evaluate(read_g2o(estimate_path), read_g2o(truth_path), align)


def format_evaluation(result: Dict[str, Any], digits: int = 6) -> str:
    """Readable lines of :func:`evaluate`'s dict."""

    def row(name: str, s: Dict[str, float], unit: str) -> str:
        return (f"{name:<16} rmse {s['rmse']:.{digits}g} {unit}  mean {s['mean']:.{digits}g}  "
                f"median {s['median']:.{digits}g}  max {s['max']:.{digits}g}")

    a, p = result["alignment"], result["poses"]
    lines = [
        f"estimate     {result['estimate']} vs ground truth {result['ground_truth']} ({result['kind']})",
        f"poses        {p['matched']} matched by id"
        + (f" ({p['estimate_only']} only in the estimate, {p['truth_only']} only in the ground truth)"
           if p["estimate_only"] or p["truth_only"] else ""),
        f"alignment    {a['method']}" + (f" (Umeyama, scale {a['scale']:.{digits}g})" if a["method"] != "none" else ""),
        row("ATE", result["ate"], "m"),
        row("RPE translation", result["rpe_translation"], "m"),
        row("RPE rotation", result["rpe_rotation_rad"], "rad"),
    ]
    return "\n".join(lines)
