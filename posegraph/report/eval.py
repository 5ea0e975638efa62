"""Trajectory accuracy against ground truth: ATE (absolute) and RPE (relative), as evo.

Definitions (those of evo's ``evo_ape``/``evo_rpe``, M. Grupp, github.com/MichaelGrupp/evo,
and of Sturm et al. 2012, "A benchmark for the evaluation of RGB-D SLAM systems", IROS):

- Poses are matched **by vertex id**: ``Pₖ`` (estimate) and ``Qₖ`` (ground truth) for every id
  in both files, in increasing id order. When the id sets differ, the common ids are used and a
  warning says how many were dropped; fewer than 2 common ids is an error. A KITTI trajectory's
  poses are known by their index (``0 … N−1``), which plays the id.
- **By timestamp** when either side is a TUM trajectory (:mod:`posegraph.io.tum`; a g2o file's
  ids and a KITTI file's indices then serve as timestamps): as evo's
  ``sync.associate_trajectories`` (``--t_max_diff``), each pose of the trajectory with fewer
  poses (the estimate on a tie) is paired with the pose of the other whose stamp is nearest
  (the earlier on a tie), if ``|Δt| ≤ max_diff`` (default 0.01 s). Pairs are one-to-one:
  where two stamps pick the same partner (stamps closer than ``2·max_diff``), only the closer
  pair is kept (evo would keep both). See :func:`associate`.
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

SE2 files are evaluated in the plane (2D Umeyama, ``se3`` meaning a rigid 2D motion); an SE2
graph compared with a TUM or KITTI trajectory (always SE3) is lifted to planar SE3 poses
(:meth:`~posegraph.io.trajectory.Trajectory.from_graph`). Poses are homogeneous matrices here
(numpy float64); everything is a plain function.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch

from posegraph.errors import PoseGraphError
from posegraph.graph import PoseGraph
from posegraph.lie.homogeneous import to_homogeneous
from posegraph.io.trajectory import Trajectory
from posegraph.lie.rotation_rule import check_rotations

ALIGNMENTS = ("se3", "sim3", "none")
#: default ``max_diff`` of the association by timestamp, in seconds (evo's ``--t_max_diff``)
MAX_TIME_DIFF = 0.01
#: what :func:`evaluate` compares: a pose graph (g2o) or a trajectory (TUM, KITTI)
Poses = Union[PoseGraph, Trajectory]


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
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("umeyama: expected finite points, received NaN or infinite coordinates")
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
    if with_scale and not (xd * xd).sum() > 0:  # s = 0 would collapse src onto one point: "error 0"
        raise ValueError("umeyama: all destination points coincide, the scale would be 0 (no alignment)")
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


@dataclass
class _Side:
    """One side of an evaluation: homogeneous poses and the keys they are matched by."""

    source: Optional[str]
    kind: str  # SE2 | SE3
    mats: np.ndarray  # (n, k, k)
    keys: np.ndarray  # (n,) vertex ids, KITTI indices or TUM timestamps
    timed: bool  # keys are timestamps (TUM)


def _side(x: Poses, role: str) -> _Side:
    if isinstance(x, Trajectory):
        timed = x.timestamps is not None
        keys = np.asarray(x.timestamps) if timed else np.arange(len(x))
        poses = check_rotations(
            np.asarray(x.poses, dtype=np.float64), "SE3", lambda k: f"{role}: pose {k}",
            path=x.source, lines=x.lines, stacklevel=4,
        )
        traj = x if poses is x.poses else Trajectory(poses, x.timestamps, x.source, x.lines)
        return _Side(x.source, "SE3", traj.homogeneous(), keys, timed)
    if x.poses is None:
        raise PoseGraphError(f"{role}: expected VERTEX lines (poses), the file has only edges", x.source)
    if x.batch_size != 1:
        raise PoseGraphError(f"{role}: expected one graph, received a batch of {x.batch_size}", x.source)
    mats = to_homogeneous(x.kind, _checked_poses(x, role))
    return _Side(x.source, x.kind, mats, x.ids.cpu().numpy(), False)


def _lift(side: _Side, graph: Poses) -> _Side:
    """An SE2 graph's side as planar SE3 poses (ids kept, in storage order)."""
    assert isinstance(graph, PoseGraph)
    order = np.argsort(side.keys, kind="stable")
    mats = np.empty((side.keys.size, 4, 4))
    mats[order] = Trajectory.from_graph(graph).homogeneous()
    return _Side(side.source, "SE3", mats, side.keys, False)


def associate(estimate_stamps: np.ndarray, truth_stamps: np.ndarray,
              max_diff: float = MAX_TIME_DIFF) -> Tuple[np.ndarray, np.ndarray]:
    """Indices ``(ie, ir)`` of the estimate and truth poses paired by timestamp, in increasing
    time, one-to-one.

    As evo's ``sync.matching_time_indices``/``associate_trajectories`` (M. Grupp,
    github.com/MichaelGrupp/evo): each stamp of the shorter list (the estimate's on a tie) is
    paired with the nearest stamp of the other (the earlier on a tie, as ``argmin``) when
    ``|Δt| ≤ max_diff``; then, unlike evo, a stamp claimed twice keeps only its nearest claim
    (the earlier on a tie). Stamps need not be sorted.
    """
    est = np.asarray(estimate_stamps, dtype=np.float64)
    ref = np.asarray(truth_stamps, dtype=np.float64)
    swap = ref.size < est.size
    a, b = (ref, est) if swap else (est, ref)
    if a.size == 0 or b.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    oa, ob = np.argsort(a, kind="stable"), np.argsort(b, kind="stable")
    sa, sb = a[oa], b[ob]
    pos = np.searchsorted(sb, sa)
    left, right = np.clip(pos - 1, 0, sb.size - 1), np.clip(pos, 0, sb.size - 1)
    d_left, d_right = np.abs(sa - sb[left]), np.abs(sb[right] - sa)
    pick = np.where(d_right < d_left, right, left)
    diff = np.minimum(d_left, d_right)
    ia = np.flatnonzero(diff <= max_diff)
    ib, diff = pick[ia], diff[ia]
    order = np.lexsort((ia, diff, ib))  # by partner, then distance, then time
    first = np.ones(order.size, dtype=bool)
    first[1:] = ib[order][1:] != ib[order][:-1]
    keep = np.sort(order[first])
    ia, ib = oa[ia[keep]], ob[ib[keep]]
    return (ib, ia) if swap else (ia, ib)


def _matched_poses(estimate: Poses, truth: Poses, max_diff: float = MAX_TIME_DIFF
                   ) -> Tuple[np.ndarray, np.ndarray, Dict[str, int], str]:
    """Homogeneous poses of the matched pairs (increasing id or time), the counts and how
    they were matched (``"id"`` or ``"timestamp"``)."""
    est, ref = _side(estimate, "estimate"), _side(truth, "ground truth")
    if est.kind != ref.kind and (isinstance(estimate, Trajectory) or isinstance(truth, Trajectory)):
        est = _lift(est, estimate) if est.kind == "SE2" else est
        ref = _lift(ref, truth) if ref.kind == "SE2" else ref
    if est.kind != ref.kind:
        raise PoseGraphError(
            f"expected ground truth of the estimate's kind {est.kind}, received {ref.kind} ({ref.source})",
            est.source,
        )
    timed = est.timed or ref.timed
    if timed:
        ie, ir = associate(est.keys, ref.keys, max_diff)
        what = f"poses matched by timestamp (|Δt| ≤ {max_diff:g} s)"
    else:
        _, ie, ir = np.intersect1d(est.keys, ref.keys, assume_unique=True, return_indices=True)
        what = "vertex ids shared"
    counts = {"matched": int(ie.size), "estimate_only": int(est.keys.size - ie.size),
              "truth_only": int(ref.keys.size - ie.size)}
    if ie.size < 2:
        raise PoseGraphError(
            f"expected at least 2 {what} with the ground truth {ref.source}, received {ie.size}", est.source
        )
    if counts["estimate_only"] or counts["truth_only"]:
        differ = f"timestamps differ by more than {max_diff:g} s" if timed else "vertex ids differ"
        unit = "matched poses" if timed else "common ids"
        warnings.warn(
            f"{est.source}: {differ} from the ground truth {ref.source} "
            f"({counts['estimate_only']} only in the estimate, {counts['truth_only']} only in the ground truth); "
            f"evaluating the {ie.size} {unit}",
            stacklevel=3,
        )
    return est.mats[ie], ref.mats[ir], counts, "timestamp" if timed else "id"


def _checked_poses(graph: PoseGraph, role: str) -> torch.Tensor:
    """The graph's poses ``(N, *element shape)``: finite, else a PoseGraphError naming the
    vertex; rotations by posegraph's rotation rule (:func:`posegraph.lie.check_rotations`:
    refused, or made rotations with a warning, naming the input and the vertex)."""
    poses = graph.poses.reshape(-1, *graph.element_shape)
    finite = torch.isfinite(poses.reshape(poses.shape[0], -1)).all(dim=1)
    if not bool(finite.all()):
        k = int(torch.nonzero(~finite)[0])
        raise PoseGraphError(f"{role}: vertex {int(graph.ids[k])} has a non-finite pose", graph.source)
    ids = graph.ids.tolist()
    return check_rotations(
        poses, graph.kind, lambda k: f"{role}: vertex {ids[k]}", path=graph.source,
        lines=graph.vertex_lines, stacklevel=5,
    )


def evaluate(estimate: Poses, truth: Poses, align_method: str = "se3", max_diff: float = MAX_TIME_DIFF
             ) -> Dict[str, Any]:
    """ATE and RPE of ``estimate`` against ``truth`` (pose graphs or TUM/KITTI trajectories;
    see the module doc) as a JSON-ready dict: ``ate`` (meters), ``rpe_translation`` (meters),
    ``rpe_rotation_rad`` (each evo's statistics), ``alignment``, ``poses`` (matched /
    estimate_only / truth_only counts), ``matched_by`` (``"id"`` or ``"timestamp"``;
    ``max_diff`` seconds for the latter).

    Raises:
        PoseGraphError: naming the estimate's file, for an unknown ``align_method``, poses
            that cannot be compared, non-finite poses, rotations that cannot be made rotations
            (``det R ≤ 0``, a zero ``(cos, sin)``), or an alignment that is undefined (a Sim(3)
            scale of coinciding positions). Rotations beyond their precision are made
            rotations with a warning (:func:`posegraph.lie.check_rotations`).
    """
    if not isinstance(align_method, str) or align_method not in ALIGNMENTS:
        raise PoseGraphError(f"align: expected one of {', '.join(ALIGNMENTS)}, received {align_method!r}", estimate.source)
    est, ref, counts, matched_by = _matched_poses(estimate, truth, max_diff)
    with np.errstate(over="raise", invalid="raise"):  # positions near 1e300: refused, not inf
        try:
            aligned, transform = align(est, ref, align_method)
        except (ValueError, np.linalg.LinAlgError) as err:
            raise PoseGraphError(f"cannot align the estimate onto the ground truth {truth.source}: {err}", estimate.source) from None
        except FloatingPointError as err:
            raise _too_large(est, ref, truth.source, err, estimate.source) from None
        try:
            rpe_t, rpe_r = rpe_errors(aligned, ref)
            ate = statistics(ate_errors(aligned, ref))
            rpe_t_stats, rpe_r_stats = statistics(rpe_t), statistics(rpe_r)
        except FloatingPointError as err:
            raise _too_large(est, ref, truth.source, err, estimate.source) from None
    return {
        "estimate": estimate.source,
        "ground_truth": truth.source,
        "kind": "SE3" if est.shape[-1] == 4 else "SE2",
        "poses": counts,
        "matched_by": matched_by,
        **({"max_diff": max_diff} if matched_by == "timestamp" else {}),
        "alignment": transform,
        "ate": ate,
        "rpe_translation": rpe_t_stats,
        "rpe_rotation_rad": rpe_r_stats,
    }


def _too_large(est: np.ndarray, ref: np.ndarray, truth_source: Optional[str], err: FloatingPointError,
               source: Optional[str]) -> PoseGraphError:
    """The error for poses whose comparison overflows float64 (``err``: NumPy's)."""
    biggest = float(max(np.abs(est[:, :-1, -1]).max(), np.abs(ref[:, :-1, -1]).max()))
    return PoseGraphError(
        f"positions too large to compare with the ground truth {truth_source}: the largest "
        f"coordinate is {biggest:.3g}, and the errors overflow float64 ({err})", source
    )


def evaluate_files(estimate_path: str, truth_path: str, align: str = "se3", estimate_format: Optional[str] = None,
                   truth_format: Optional[str] = None, max_diff: float = MAX_TIME_DIFF) -> Dict[str, Any]:
    """:func:`evaluate` of two files: g2o (vertex-only files accepted), TUM or KITTI, each by
    its extension or the format given (:func:`posegraph.io.poses.file_format`)."""
    from posegraph.io.poses import read_poses

    return evaluate(read_poses(estimate_path, estimate_format), read_poses(truth_path, truth_format), align, max_diff)


def format_evaluation(result: Dict[str, Any], digits: int = 6) -> str:
    """Readable lines of :func:`evaluate`'s dict."""

    def row(name: str, s: Dict[str, float], unit: str) -> str:
        return (f"{name:<16} rmse {s['rmse']:.{digits}g} {unit}  mean {s['mean']:.{digits}g}  "
                f"median {s['median']:.{digits}g}  max {s['max']:.{digits}g}")

    a, p = result["alignment"], result["poses"]
    lines = [
        f"estimate     {result['estimate']} vs ground truth {result['ground_truth']} ({result['kind']})",
        f"poses        {p['matched']} matched by "
        + ("id" if result.get("matched_by", "id") == "id" else f"timestamp (|Δt| ≤ {result['max_diff']:g} s)")
        + (f" ({p['estimate_only']} only in the estimate, {p['truth_only']} only in the ground truth)"
           if p["estimate_only"] or p["truth_only"] else ""),
        f"alignment    {a['method']}" + (f" (Umeyama, scale {a['scale']:.{digits}g})" if a["method"] != "none" else ""),
        row("ATE", result["ate"], "m"),
        row("RPE translation", result["rpe_translation"], "m"),
        row("RPE rotation", result["rpe_rotation_rad"], "rad"),
    ]
    return "\n".join(lines)
