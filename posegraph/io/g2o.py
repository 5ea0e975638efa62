"""g2o text files ⇄ :class:`~posegraph.graph.PoseGraph`.

Tags read: ``VERTEX_SE2 id x y θ``, ``EDGE_SE2 i j x y θ I11 I12 I13 I22 I23 I33``,
``VERTEX_SE3:QUAT id x y z qx qy qz qw``,
``EDGE_SE3:QUAT i j x y z qx qy qz qw`` + the 21 upper-triangle entries of Ω (row-major), and
``FIX id [id …]``; 3D points observed from SE3 poses: ``VERTEX_TRACKXYZ id x y z``,
``EDGE_SE3_TRACKXYZ pose point param x y z`` + the 6 upper-triangle entries of Ω and
``PARAMS_SE3OFFSET param x y z qx qy qz qw`` (g2o's ``EdgeSE3PointXYZ``: the point measured in
the frame of the sensor at offset ``param`` from the pose). ``#`` starts a comment; blank lines, CRLF and tabs are accepted; vertex ids
need not be contiguous. Other tags are skipped with one warning per tag giving the count.
Format reference: g2o's ``types_slam2d``/``types_slam3d`` (Kümmerle et al. 2011) as used by
the SE-Sync/GTSAM datasets.

Quaternions follow posegraph's rotation rule (:mod:`posegraph.lie`, the same for every
rotation): the zero quaternion is an error; one whose norm is off by more than its printed
digits allow (:func:`~posegraph.lie.printed_precision`: 1e-4 for 4 decimals, at least 1e-6, at
most 1e-3) is normalized with a warning naming FILE:LINE of the first and the count (one for
the vertices, one for the edges); every other one is normalized silently.

Information matrices must be positive semidefinite, with entries of magnitude ≤ 1e150
(:mod:`posegraph.information`): a file with matrices that are not PSD is refused, the error
counting them all, unless ``read_g2o(path, repair_information=True)`` is asked to replace each
by its nearest PSD matrix; larger entries are refused on their line, naming the edge.

Lines end at ``\n`` only (``\r\n`` too: the ``\r`` is whitespace); other characters that
Python's ``str.splitlines`` breaks at (``\v \f \x1c–\x1e \x85 \u2028 \u2029``, a lone
``\r``) are whitespace inside a line, so line numbers are those of ``grep -n`` and a comment
runs to the ``\n``. A UTF-8 byte order mark at the start of the file is skipped.

Every problem is reported as :class:`~posegraph.errors.G2oFormatError` naming file and line.
Pose lines are converted in bulk (one vectorized conversion per tag, bit-identical to ``float``,
:mod:`posegraph.io.numbers`); on anything unusual the
file is re-read line by line by the reference parser, so errors are the same either way.
Writing (:mod:`posegraph.io.output`) is atomic and round-trips exactly in float64.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from posegraph import lie
from posegraph.errors import SHOWN_TOKEN_CHARS, G2oFormatError, file_path, shown
from posegraph.graph import Landmarks, PoseGraph
from posegraph.information import first_oversized, information_bound, nearest_psd, psd_smallest_eigenvalues
from posegraph.io.g2o_write import format_g2o, write_g2o  # noqa: F401 (re-exported: the g2o module reads and writes)
from posegraph.io.output import write_text_atomic  # noqa: F401 (older code imports it from here)
from posegraph.io.g2o_lines import _DOF, _PointRecords, _Records, _decode, _floats, _parse_bulk, _parse_lines, split_lines

PathLike = Union[str, "os.PathLike[str]"]


#: Pose values: the number tokens of each line (reference parser; :func:`_assemble` converts
#: them with :func:`_floats`, keeping its error order) or float64 rows (bulk parser, all finite).


def _upper_to_symmetric(upper: np.ndarray, dim: int) -> np.ndarray:
    """Rows of the upper triangle in file (row-major) order → symmetric ``(n, dim, dim)``."""
    iu = np.triu_indices(dim)
    mats = np.zeros((upper.shape[0], dim, dim))
    mats[:, iu[0], iu[1]] = upper
    mats[:, iu[1], iu[0]] = upper
    return mats


def check_information(
    info: np.ndarray,
    path: str,
    lines: Sequence[int],
    names: Optional[Callable[[int], str]] = None,
    repair: bool = False,
    tag: str = "information",
) -> int:
    """Check the information matrices ``info`` ``(E, d, d)`` read from lines ``lines``.

    * An entry beyond :func:`~posegraph.information.information_bound` (``1e150``) is a
      :class:`G2oFormatError` on its line, naming the edge (``names(k)``, e.g.
      ``"EDGE_SE3:QUAT 12 13"``): such values overflow later, inside the solve.
    * Matrices that are not positive semidefinite are refused with one error on the line of
      the first, counting all of them; with ``repair`` each is replaced, in place, by its
      nearest PSD matrix (:func:`~posegraph.information.nearest_psd`, negative eigenvalues
      clipped to 0).

    ``tag`` names the matrices in the message (e.g. ``"EDGE_SE2"``). Returns the number of
    matrices repaired (0 without ``repair``).
    """
    if info.shape[0] == 0:
        return 0
    bound = information_bound(np.float64)
    over = first_oversized(info, bound)
    if over is not None:
        k, row, col, value = over
        edge = f"{names(k)}: " if names is not None else ""
        raise G2oFormatError(
            f"{edge}information entry (row {row}, column {col}) is {value:.6g}; expected a magnitude "
            f"≤ {bound:.0e} (larger information overflows the cost and its normal equations)",
            path,
            lines[k],
        )
    bad, smallest = psd_smallest_eigenvalues(info)
    if bad.size == 0:
        return 0
    if not repair:
        raise G2oFormatError(
            f"{bad.size} of {info.shape[0]} {tag} information matrices are not positive "
            f"semidefinite (expected eigenvalues ≥ 0; first at line {lines[bad[0]]}, smallest "
            f"eigenvalue {smallest[0]:.3g}); --repair-information (Python: read_g2o(..., "
            "repair_information=True)) clips their negative eigenvalues",
            path,
            lines[bad[0]],
        )
    info[bad] = nearest_psd(info[bad])
    return int(bad.size)


class _LineTokens:
    """The number tokens of a file's lines, for the rotation rule's precision of printed digits
    (:func:`posegraph.lie.printed_precision`): the text is split into lines only when asked,
    which happens only for rotations beyond float64's precision."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines: Optional[List[str]] = None

    def __call__(self, line: int, start: int, stop: int) -> List[str]:
        """Tokens ``start:stop`` of line ``line`` (1-based; the tag is token 0)."""
        if self.lines is None:
            self.lines = split_lines(self.text)
        text = self.lines[line - 1]
        return text.split("#", 1)[0].split()[start:stop]


def _poses_from_values(kind: str, values: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float64)
    if kind == "SE3":
        return lie.g2o_to_se3(t)
    return lie.xytheta_to_se2(t)


def read_g2o(path: PathLike, repair_information: bool = False) -> PoseGraph:
    """Read a g2o pose-graph file (SE2 or SE3) into a float64 :class:`PoseGraph`.

    Edge-only files give ``poses=None``; initialize them with :mod:`posegraph.init`.

    Information matrices must be positive semidefinite. By default a file with any that are
    not is refused, the error counting them all. With ``repair_information=True`` each is
    replaced by its nearest positive semidefinite matrix (negative eigenvalues clipped to 0;
    Higham 1988, see :mod:`posegraph.information`), one warning gives the count, and
    ``graph.extras["repaired_information"]`` holds it (0 when none needed repair). Entries
    beyond ±1e150 are refused either way (:func:`check_information`).

    Raises:
        G2oFormatError: naming the file and line of the first problem.
    """
    path = file_path("read_g2o: path", path, G2oFormatError)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise G2oFormatError("no such file", path) from None
    except IsADirectoryError:
        raise G2oFormatError("is a directory, expected a g2o file", path) from None
    except OSError as err:
        raise G2oFormatError(f"cannot read file: {err.strerror}", path) from None
    text = _decode(path, raw)
    rec = _parse_bulk(path, text)
    if rec is None:  # something unusual: the reference parser names the first problem
        rec = _parse_lines(path, text)
    for tag_name, count in sorted(rec.unknown.items()):
        warnings.warn(f"{path}: skipped {count} line(s) with unsupported tag {_tag_shown(tag_name)}")
    if rec.kind is None:
        if rec.points:
            raise G2oFormatError("3D points (TRACKXYZ) but no SE3 poses", path, rec.points.first_line)
        raise G2oFormatError("no pose graph found (no VERTEX or EDGE lines)", path)
    if rec.points and rec.kind != "SE3":
        raise G2oFormatError(
            f"3D points (TRACKXYZ) are observed from SE3 poses; this file has {rec.kind} "
            f"elements (first on line {rec.kind_line})",
            path,
            rec.points.first_line,
        )
    return _assemble(path, rec, repair_information)


class _IdIndex:
    """Vertex id → storage index, by a sorted copy of the ids (vectorized, no per-id dict).

    Assumes unique ids once :meth:`first_duplicate` has returned None.
    """

    def __init__(self, ids: np.ndarray) -> None:
        self.order = np.argsort(ids, kind="stable")  # equal ids keep file order
        self.sorted = ids[self.order]

    def first_duplicate(self) -> Optional[Tuple[int, int]]:
        """(position, position of the id's first occurrence) of the earliest repeat of an
        already seen id, in storage order; None if all ids are distinct."""
        repeat = np.flatnonzero(self.sorted[1:] == self.sorted[:-1]) + 1
        if repeat.size == 0:
            return None
        k = int(repeat[np.argmin(self.order[repeat])])
        first = int(np.searchsorted(self.sorted, self.sorted[k], side="left"))
        return int(self.order[k]), int(self.order[first])

    def find(self, query: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(storage index, found) for each id of ``query``; the index is meaningless where
        not found."""
        if self.sorted.size == 0:
            return np.zeros(query.shape, dtype=np.int64), np.zeros(query.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(self.sorted, query), self.sorted.size - 1)
        return self.order[pos], self.sorted[pos] == query

    def __contains__(self, vid: int) -> bool:
        return bool(self.find(np.asarray([vid], dtype=np.int64))[1][0])

    def __getitem__(self, vid: int) -> int:
        index, found = self.find(np.asarray([vid], dtype=np.int64))
        if not found[0]:
            raise KeyError(vid)
        return int(index[0])


def _tag_shown(tag: str) -> str:
    """An unsupported tag as a warning shows it: as written, or cut (:func:`shown`) when long."""
    return tag if len(tag) <= SHOWN_TOKEN_CHARS else shown(tag)


def _unknown_pose(path: str, vid: int, line: int, point_ids: List[int]) -> G2oFormatError:
    what = "a 3D point (VERTEX_TRACKXYZ), expected a pose" if vid in point_ids else (
        "which has no VERTEX line"
    )
    return G2oFormatError(f"edge refers to vertex {vid}, {what}", path, line)


def _pose_index(path: str, rec: _Records) -> Tuple[np.ndarray, _IdIndex, List[int]]:
    """(pose ids in storage order, their index, point ids), checking duplicate ids and that
    every edge (then every point observation) refers to a pose with a VERTEX line."""
    pts = rec.points
    index = _IdIndex(rec.vertex_ids)
    dup = index.first_duplicate()
    if dup is not None:
        at, first = dup
        raise G2oFormatError(
            f"duplicate vertex id {int(rec.vertex_ids[at])} "
            f"(first defined on line {int(rec.vertex_lines[first])})",
            path,
            int(rec.vertex_lines[at]),
        )
    pose_lines = dict(zip(rec.vertex_ids.tolist(), rec.vertex_lines.tolist())) if pts else {}
    point_ids = _point_ids(path, pts, pose_lines)
    if rec.vertex_ids.size == 0:
        obs = np.asarray([a for a, _ in pts.obs_ids], dtype=np.int64)
        ids = np.unique(np.concatenate([rec.edge_ids.ravel(), obs]))
        return ids, _IdIndex(ids), point_ids
    _, found = index.find(rec.edge_ids)
    if not found.all():
        k = int(np.flatnonzero(~found.ravel())[0])  # row-major: file order, a before b
        raise _unknown_pose(
            path, int(rec.edge_ids.ravel()[k]), int(rec.edge_lines[k // 2]), point_ids
        )
    for (a, _), line in zip(pts.obs_ids, pts.obs_lines):
        if a not in index:
            raise _unknown_pose(path, a, line, point_ids)
    return rec.vertex_ids, index, point_ids


def _fixed_masks(
    path: str, rec: _Records, index: _IdIndex, point_index: Dict[int, int]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """FIX lines → (pose, point) boolean masks; the first unknown id is an error."""
    fixed = torch.zeros(index.sorted.size, dtype=torch.bool)
    point_fixed = torch.zeros(len(point_index), dtype=torch.bool)
    if not rec.fixed:
        return fixed, point_fixed
    where, found = index.find(np.asarray([vid for vid, _ in rec.fixed], dtype=np.int64))
    fixed[torch.as_tensor(where[found])] = True
    for k in np.flatnonzero(~found).tolist():
        vid, line = rec.fixed[k]
        if vid not in point_index:
            raise G2oFormatError(f"FIX refers to unknown vertex {vid}", path, line)
        point_fixed[point_index[vid]] = True
    return fixed, point_fixed


def _assemble(path: str, rec: _Records, repair_information: bool = False) -> PoseGraph:
    """The graph of the records ``rec`` (checked); ``repair_information``: see :func:`read_g2o`."""
    kind = rec.kind
    assert kind is not None
    dof = _DOF[kind]
    pts = rec.points
    ids, index, point_ids = _pose_index(path, rec)
    point_index = {v: k for k, v in enumerate(point_ids)}
    _check_id_spaces(path, pts, index, point_index)
    fixed, point_fixed = _fixed_masks(path, rec, index, point_index)

    meas_len = 7 if kind == "SE3" else 3
    # explicit width: a file with vertices but no edges gives a (0, width) array
    edge_tag = "EDGE_SE3:QUAT" if kind == "SE3" else "EDGE_SE2"
    vertex_tag = "VERTEX_SE3:QUAT" if kind == "SE3" else "VERTEX_SE2"
    edge_lines = rec.edge_lines.tolist()
    ev = _floats(rec.edge_values, meas_len + dof * (dof + 1) // 2, path, edge_lines, edge_tag)
    tokens = _LineTokens(rec.text)
    if kind == "SE3":  # the rotation rule (posegraph.lie); the quaternions are normalized later
        ev[:, 3:7] = lie.check_rotations(
            ev[:, 3:7], "quaternion", lambda k: f"{edge_tag} {rec.edge_ids[k, 0]} {rec.edge_ids[k, 1]}",
            error=G2oFormatError, path=path, lines=edge_lines,
            printed=lambda k: tokens(edge_lines[k], 6, 10), stacklevel=3,
        )
    info = _upper_to_symmetric(ev[:, meas_len:], dof)
    edge_ids = rec.edge_ids
    repaired = check_information(
        info, path, edge_lines, lambda k: f"{edge_tag} {edge_ids[k, 0]} {edge_ids[k, 1]}",
        repair_information, edge_tag,
    )
    num_info = info.shape[0]

    poses = None
    vertex_lines = None
    if rec.vertex_ids.size:
        vertex_lines = rec.vertex_lines.tolist()
        vv = _floats(rec.vertex_values, meas_len, path, vertex_lines, vertex_tag)
        if kind == "SE3":
            vv[:, 3:7] = lie.check_rotations(
                vv[:, 3:7], "quaternion", lambda k: f"{vertex_tag} {rec.vertex_ids[k]}",
                error=G2oFormatError, path=path, lines=vertex_lines,
                printed=lambda k: tokens(vertex_lines[k], 5, 9), stacklevel=3,
            )
        poses = _poses_from_values(kind, vv)
    edges = torch.as_tensor(index.find(rec.edge_ids)[0], dtype=torch.long).reshape(-1, 2)
    measurements = _poses_from_values(kind, ev[:, :meas_len].reshape(-1, meas_len))
    landmarks = None
    if pts:
        landmarks, point_repaired = _landmarks(
            path, pts, index, point_ids, point_index, point_fixed, repair_information, tokens
        )
        repaired += point_repaired
        num_info += len(pts.obs_lines)
    graph = PoseGraph(
        kind=kind,
        ids=torch.as_tensor(ids, dtype=torch.long),
        poses=poses,
        edges=edges,
        measurements=measurements,
        information=torch.as_tensor(info),
        fixed=fixed,
        source=path,
        edge_lines=edge_lines,
        vertex_lines=vertex_lines,
        landmarks=landmarks,
    )
    if repair_information:
        graph.extras["repaired_information"] = repaired
        if repaired:
            warnings.warn(
                f"{path}: {repaired} of {num_info} information matrices were not positive "
                "semidefinite; each was replaced by its nearest positive semidefinite matrix "
                "(negative eigenvalues clipped to 0)",
                stacklevel=3,
            )
    return graph


def _point_ids(path: str, pts: _PointRecords, pose_lines: Dict[int, int]) -> List[int]:
    """Point ids in storage order: VERTEX_TRACKXYZ order, or sorted ids of an edge-only file.
    Checks duplicates (also against pose ids) and that observed points have VERTEX lines."""
    seen: Dict[int, int] = {}
    for vid, line in zip(pts.vertex_ids, pts.vertex_lines):
        first = seen.get(vid, pose_lines.get(vid))
        if first is not None:
            raise G2oFormatError(
                f"duplicate vertex id {vid} (first defined on line {first})", path, line
            )
        seen[vid] = line
    if not pts.vertex_ids:
        return sorted({b for _, b in pts.obs_ids})
    for (_, b), line in zip(pts.obs_ids, pts.obs_lines):
        if b not in seen:
            what = "a pose, expected a 3D point (VERTEX_TRACKXYZ)" if b in pose_lines else (
                "which has no VERTEX_TRACKXYZ line"
            )
            raise G2oFormatError(f"EDGE_SE3_TRACKXYZ refers to vertex {b}, {what}", path, line)
    return list(pts.vertex_ids)


def _check_id_spaces(
    path: str, pts: _PointRecords, pose_index: _IdIndex, point_index: Dict[int, int]
) -> None:
    """Edge-only files: an id cannot be both a pose and a point; params must exist."""
    for (a, b), param, line in zip(pts.obs_ids, pts.obs_params, pts.obs_lines):
        if b in pose_index:
            raise G2oFormatError(
                f"EDGE_SE3_TRACKXYZ: vertex {b} is a pose, expected a 3D point", path, line
            )
        if a in point_index:
            raise G2oFormatError(
                f"EDGE_SE3_TRACKXYZ: vertex {a} is a 3D point, expected a pose", path, line
            )
        if param not in pts.params:
            raise G2oFormatError(
                f"EDGE_SE3_TRACKXYZ refers to parameter {param}, which has no "
                "PARAMS_SE3OFFSET line",
                path,
                line,
            )


def _landmarks(
    path: str,
    pts: _PointRecords,
    pose_index: _IdIndex,
    point_ids: List[int],
    point_index: Dict[int, int],
    fixed: torch.Tensor,
    repair_information: bool,
    tokens: _LineTokens,
) -> Tuple[Landmarks, int]:
    """Tensors of the point records (checked by :func:`_point_ids`/:func:`_check_id_spaces`)
    and the number of their information matrices repaired (see :func:`check_information`);
    ``tokens``: the file's line tokens (for the precision of the offsets' quaternions)."""
    ov = np.asarray(pts.obs_values, dtype=np.float64).reshape(len(pts.obs_values), 3 + 6)
    info = _upper_to_symmetric(ov[:, 3:], 3)
    repaired = check_information(
        info, path, pts.obs_lines, lambda k: "EDGE_SE3_TRACKXYZ {} {}".format(*pts.obs_ids[k]),
        repair_information, "EDGE_SE3_TRACKXYZ",
    )
    param_ids = sorted(pts.params)
    pv = np.asarray([pts.params[k][0] for k in param_ids], dtype=np.float64).reshape(-1, 7)
    param_lines = [pts.params[k][1] for k in param_ids]
    pv[:, 3:7] = lie.check_rotations(
        pv[:, 3:7], "quaternion", lambda k: f"PARAMS_SE3OFFSET {param_ids[k]}",
        error=G2oFormatError, path=path, lines=param_lines,
        printed=lambda k: tokens(param_lines[k], 5, 9), stacklevel=4,
    )
    offsets = _poses_from_values("SE3", pv)
    slot = {k: n for n, k in enumerate(param_ids)}
    positions = None
    if pts.vertex_ids:
        positions = torch.as_tensor(np.asarray(pts.vertex_values, dtype=np.float64))
    landmarks = Landmarks(
        ids=torch.as_tensor(point_ids, dtype=torch.long),
        positions=positions,
        observations=torch.as_tensor(
            [[pose_index[a], point_index[b]] for a, b in pts.obs_ids], dtype=torch.long
        ).reshape(-1, 2),
        measurements=torch.as_tensor(ov[:, :3].copy()),
        information=torch.as_tensor(info),
        offsets=offsets[torch.as_tensor([slot[k] for k in pts.obs_params], dtype=torch.long)]
        if pts.obs_params
        else torch.zeros(0, 3, 4, dtype=torch.float64),
        offset_ids=torch.as_tensor(pts.obs_params, dtype=torch.long),
        fixed=fixed,
        observation_lines=list(pts.obs_lines),
        vertex_lines=list(pts.vertex_lines) if pts.vertex_ids else None,
    )
    return landmarks, repaired


