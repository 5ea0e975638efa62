"""Any pose file, by format: g2o graphs, TUM and KITTI trajectories, told apart by extension
(``.g2o``, ``.tum``, ``.kitti``/``.txt``), by content, or by an explicit ``--format``; read
as a :class:`~posegraph.graph.PoseGraph` or a :class:`~posegraph.io.trajectory.Trajectory`,
written back, and a graph's poses exported as a trajectory.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional, Union
import numpy as np
from posegraph.errors import TrajectoryFormatError, read_text_input
from posegraph.graph import PoseGraph
from posegraph.io.g2o import read_g2o
from posegraph.io.kitti import read_kitti, write_kitti
from posegraph.io.tum import read_tum, write_tum
from posegraph.io.formats import FORMATS, TRAJECTORY_FORMATS
from posegraph.io.trajectory import PathLike, Trajectory, WIDTHS


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
        return read_tum(path)
    if fmt == "kitti":
        return read_kitti(path)
    return read_g2o(path)


def write_trajectory(traj: Trajectory, path: PathLike, fmt: Optional[str] = None) -> None:
    """Write ``traj`` as TUM or KITTI (``fmt``, default by :func:`export_format`), atomically."""
    fmt = fmt or export_format(path)
    if fmt == "tum":
        write_tum(traj, path)
    elif fmt == "kitti":
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
