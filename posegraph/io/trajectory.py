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
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from posegraph.errors import TrajectoryFormatError, read_text_input
from posegraph.graph import PoseGraph
from posegraph.io.formats import FORMATS  # noqa: F401 (re-exported: older code imports it from here)
from posegraph.io.g2o_lines import _number
from posegraph.io.numbers import parse_table

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


__all__ = ["Trajectory", "FORMATS", "read_rows", "format_numbers"]
