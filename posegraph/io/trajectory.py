"""Trajectories: a sequence of SE(3) poses, with timestamps (TUM) or without (KITTI).

A :class:`Trajectory` is what TUM and KITTI files hold (:mod:`posegraph.io.tum`,
:mod:`posegraph.io.kitti`): poses ``(N, 3, 4) = [R | t]`` (float64, the Theseus SE3 layout),
and for TUM their timestamps (seconds). A pose graph becomes one with
:meth:`Trajectory.from_graph` (SE2 graphs as planar SE3 poses: ``z = 0``, rotation about z;
without a timestamp mapping a pose's timestamp is its vertex id), and a trajectory becomes a
vertex-only :class:`~posegraph.graph.PoseGraph` with :meth:`Trajectory.to_graph` (ids ``0 …
N−1``, for plotting).

File formats are chosen by extension (:func:`file_format`): ``.tum`` TUM, ``.kitti`` KITTI,
``.txt`` by its first data line (8 numbers TUM, 12 KITTI), anything else g2o; a format given
explicitly wins. The lines of both formats are read by :func:`read_rows` (``#`` comments, blank
lines, the bulk number conversion of :mod:`posegraph.io.numbers`, errors naming FILE:LINE).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import TrajectoryFormatError, read_text_input
from ..graph import PoseGraph
from .formats import FORMATS, TRAJECTORY_FORMATS
from .g2o import _number
from .numbers import parse_table

PathLike = Union[str, "os.PathLike[str]"]

#: numbers per line of each trajectory format
WIDTHS = {"tum": 8, "kitti": 12}


@dataclass(frozen=True)
class Trajectory:
    """Poses of one trajectory, in file order.

    Attributes:
        poses: ``(N, 3, 4)`` float64 SE(3) poses ``[R | t]`` (rotations orthonormal).
        timestamps: ``(N,)`` float64 seconds (TUM), or None (KITTI: a pose is known by its
            index).
        source: the file it was read from (for messages), if any.
        lines: the file line of each pose, if read from a file.
    """

    poses: np.ndarray
    timestamps: Optional[np.ndarray] = None
    source: Optional[str] = None
    lines: Optional[List[int]] = None

    def __len__(self) -> int:
        return int(self.poses.shape[0])

    def homogeneous(self) -> np.ndarray:
        """``(N, 4, 4)`` homogeneous matrices of the poses."""
        out = np.zeros((len(self), 4, 4))
        out[:, :3, :] = self.poses
        out[:, 3, 3] = 1.0
        return out

    @classmethod
    def from_graph(cls, graph: PoseGraph, timestamps: Optional[Sequence[float]] = None) -> "Trajectory":
        """The poses of an unbatched graph in increasing id order. SE2 poses become planar
        SE3 ones (``z = 0``, rotation by θ about z). ``timestamps`` (one per vertex, in the
        graph's storage order) default to the vertex ids."""
        if graph.poses is None:
            raise TrajectoryFormatError("expected a graph with poses (VERTEX lines), received edges only", graph.source)
        if graph.batch_size != 1:
            raise TrajectoryFormatError(f"expected one graph, received a batch of {graph.batch_size}", graph.source)
        p = graph.poses.detach().cpu().double().reshape(-1, *graph.element_shape).numpy()
        ids = graph.ids.cpu().numpy()
        stamps = ids.astype(np.float64) if timestamps is None else np.asarray(timestamps, dtype=np.float64)
        if stamps.shape != ids.shape:
            raise ValueError(f"from_graph: expected {ids.size} timestamps, received {stamps.shape}")
        if graph.kind == "SE3":
            poses = p.copy()
        else:  # [x, y, cos, sin] → [[c, −s, 0, x], [s, c, 0, y], [0, 0, 1, 0]] (unit (c, s))
            norm = np.hypot(p[:, 2], p[:, 3])
            c, s = p[:, 2] / norm, p[:, 3] / norm
            poses = np.zeros((p.shape[0], 3, 4))
            poses[:, 0, 0], poses[:, 0, 1], poses[:, 1, 0], poses[:, 1, 1] = c, -s, s, c
            poses[:, 2, 2] = 1.0
            poses[:, 0, 3], poses[:, 1, 3] = p[:, 0], p[:, 1]
        order = np.argsort(ids, kind="stable")
        return cls(poses=poses[order], timestamps=stamps[order], source=graph.source)

    def to_graph(self) -> PoseGraph:
        """A vertex-only SE3 :class:`PoseGraph` of the poses, ids ``0 … N−1`` in file order."""
        n = len(self)
        return PoseGraph(
            kind="SE3",
            ids=torch.arange(n, dtype=torch.long),
            poses=torch.as_tensor(self.poses, dtype=torch.float64),
            edges=torch.zeros(0, 2, dtype=torch.long),
            measurements=torch.zeros(0, 3, 4, dtype=torch.float64),
            information=torch.zeros(0, 6, 6, dtype=torch.float64),
            fixed=torch.zeros(n, dtype=torch.bool),
            source=self.source,
            vertex_lines=self.lines,
        )


def read_rows(
    path: PathLike, width: int, columns: Sequence[str], what: str
) -> Tuple[np.ndarray, List[int], List[str]]:
    """Data lines of a text file of ``width`` numbers each → ``((R, width) float64, line
    numbers, the lines' text without comments)`` (the text: for the printed precision of
    rotations, :func:`posegraph.lie.printed_precision`). ``#`` starts a comment; blank lines are skipped. Numbers are converted in bulk
    (:func:`~posegraph.io.numbers.parse_table`, bit-identical to ``float``); on anything unusual
    the lines are re-read one by one and the first bad one is reported as
    :class:`TrajectoryFormatError` naming FILE:LINE, the column (``columns``), expected and
    received. A file without data lines is an error too.
    """
    path = os.fspath(path)
    text = read_text_input(path, "file", f"a {what} file", TrajectoryFormatError)
    rows: List[str] = []
    lines: List[int] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if "#" in line:
            line = line.split("#", 1)[0]
        if line.strip():
            rows.append(line)
            lines.append(lineno)
    if not rows:
        raise TrajectoryFormatError(f"no poses found (expected lines of {width} numbers: {' '.join(columns)})", path)
    table = parse_table(rows, 0, width)
    if table is not None:
        return table[1], lines, rows
    out = np.empty((len(rows), width))
    for k, (row, lineno) in enumerate(zip(rows, lines)):
        toks = row.split()
        if len(toks) != width:
            raise TrajectoryFormatError(
                f"{what}: expected {width} numbers ({' '.join(columns)}), received {len(toks)}", path, lineno
            )
        for j, (tok, name) in enumerate(zip(toks, columns)):
            out[k, j] = _number(tok, path, lineno, name, error=TrajectoryFormatError)
    return out, lines, rows


def format_numbers(rows: np.ndarray) -> str:
    """Lines of space-separated numbers, each written as ``repr(float)`` (reads back exactly)."""
    return "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in rows)


def _sniff(path: str) -> str:
    """``tum`` or ``kitti`` from the number of tokens on the first data line of a ``.txt``."""
    text = read_text_input(path, "file", "a trajectory file (TUM or KITTI)", TrajectoryFormatError)
    for lineno, line in enumerate(text.splitlines(), start=1):
        toks = line.split("#", 1)[0].split()
        if not toks:
            continue
        for fmt, width in WIDTHS.items():
            if len(toks) == width:
                return fmt
        raise TrajectoryFormatError(
            f"cannot tell the trajectory format: expected 8 numbers (TUM) or 12 (KITTI) on the first line, "
            f"received {len(toks)}; name the format with --format",
            path,
            lineno,
        )
    raise TrajectoryFormatError("no poses found (an empty trajectory file)", path)


def file_format(path: PathLike, forced: Optional[str] = None) -> str:
    """The format of a file to read: ``forced`` when given, else by extension (``.tum``,
    ``.kitti``; ``.txt`` by its first data line: 8 numbers TUM, 12 KITTI), else g2o."""
    if forced is not None:
        if forced not in FORMATS:
            raise ValueError(f"file_format: expected one of {', '.join(FORMATS)}, received {forced!r}")
        return forced
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext in (".tum", ".kitti"):
        return ext[1:]
    if ext == ".txt":
        return _sniff(os.fspath(path))
    return "g2o"


def export_format(path: PathLike) -> str:
    """The format of a trajectory to write, by extension: ``.tum`` or ``.kitti``."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext not in (".tum", ".kitti"):
        raise TrajectoryFormatError(
            f"expected a trajectory file name ending in .tum or .kitti, received extension {ext or 'none'!r}",
            os.fspath(path),
        )
    return ext[1:]


def read_poses(path: PathLike, fmt: Optional[str] = None) -> Union[PoseGraph, Trajectory]:
    """A g2o graph (:func:`~posegraph.io.g2o.read_g2o`) or a TUM/KITTI :class:`Trajectory`,
    by :func:`file_format`."""
    fmt = file_format(path, fmt)
    if fmt == "tum":
        from .tum import read_tum

        return read_tum(path)
    if fmt == "kitti":
        from .kitti import read_kitti

        return read_kitti(path)
    from .g2o import read_g2o

    return read_g2o(path)


def write_trajectory(traj: Trajectory, path: PathLike, fmt: Optional[str] = None) -> None:
    """Write ``traj`` as TUM or KITTI (``fmt``, default by :func:`export_format`), atomically."""
    fmt = fmt or export_format(path)
    if fmt == "tum":
        from .tum import write_tum

        write_tum(traj, path)
    elif fmt == "kitti":
        from .kitti import write_kitti

        write_kitti(traj, path)
    else:
        raise ValueError(f"write_trajectory: expected one of {', '.join(TRAJECTORY_FORMATS)}, received {fmt!r}")


def export_graph(graph: PoseGraph, path: PathLike) -> Trajectory:
    """``optimize --export-trajectory``: the graph's poses in increasing id order
    (:meth:`Trajectory.from_graph`, timestamps = vertex ids) written as TUM or KITTI by the
    extension of ``path``. KITTI has no ids: when the ids are not ``0 … N−1`` a warning says
    that line ``k`` holds the ``k``-th pose in id order."""
    fmt = export_format(path)
    traj = Trajectory.from_graph(graph)
    ids = np.sort(graph.ids.cpu().numpy())
    if fmt == "kitti" and not np.array_equal(ids, np.arange(ids.size)):
        warnings.warn(
            f"{os.fspath(path)}: KITTI lines carry no ids; line k holds the k-th pose in increasing id order "
            f"(ids {ids[0]} … {ids[-1]})",
            stacklevel=2,
        )
    write_trajectory(traj, path, fmt)
    return traj


__all__ = ["Trajectory", "FORMATS", "read_poses", "read_rows", "file_format", "export_format",
           "write_trajectory", "export_graph", "format_numbers"]
