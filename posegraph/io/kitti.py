"""KITTI odometry pose files ⇄ :class:`~posegraph.io.trajectory.Trajectory`.

One pose per line: the 3×4 matrix ``[R | t]`` row-major, 12 numbers
``r11 r12 r13 tx r21 r22 r23 ty r31 r32 r33 tz``; no timestamps, a pose is known by its index
(line ``k`` of data is pose ``k``). This is the format of the KITTI odometry benchmark's
``poses/NN.txt`` (Geiger et al. 2012, "Are we ready for autonomous driving? The KITTI vision
benchmark suite", CVPR; devkit ``readme.txt``) and of evo's ``kitti`` files
(``evo.tools.file_interface.read_kitti_poses_file``). ``#`` starts a comment; blank lines are
skipped.

Rotations follow posegraph's rotation rule (:mod:`posegraph.lie`), the g2o reader's rule for
quaternions: a block that cannot be made a rotation (``det R ≤ 0``: singular or a reflection)
is an error naming FILE:LINE; one further from a rotation than its printed digits allow
(``max(|RᵀR − I|, |det R − 1|)`` beyond :func:`~posegraph.lie.printed_precision`, e.g. a
sheared block) a warning naming the first FILE:LINE and the count; every block is replaced by
its nearest rotation (:func:`~posegraph.lie.nearest_rotation`, the polar decomposition).
KITTI's own files, written with 7 significant digits, are about 10⁻⁷ from orthonormal, and
files of 6 significant digits read without a warning too.

Writing is atomic (:mod:`posegraph.io.output`) and numbers are ``repr(float)``.
"""

from __future__ import annotations

import os
from typing import List, Union

import numpy as np

from posegraph import lie
from posegraph.errors import TrajectoryFormatError, file_path
from posegraph.io.output import check_outputs, write_text_atomic
from posegraph.io.trajectory import Trajectory, format_numbers, read_rows

PathLike = Union[str, "os.PathLike[str]"]

#: the columns of a KITTI line
COLUMNS = ("r11", "r12", "r13", "tx", "r21", "r22", "r23", "ty", "r31", "r32", "r33", "tz")
#: positions of the rotation's numbers on a KITTI line
_ROTATION_COLUMNS = (0, 1, 2, 4, 5, 6, 8, 9, 10)


def _rotations(mats: np.ndarray, path: str, lines: List[int], rows: List[str]) -> np.ndarray:
    """The rotation blocks of ``mats`` ``(N, 3, 4)`` by the rotation rule (error: ``det R ≤ 0``;
    a warning beyond the printed precision), each replaced by its nearest rotation (see the
    module doc)."""

    def printed(k: int) -> List[str]:
        tokens = rows[k].split()
        return [tokens[c] for c in _ROTATION_COLUMNS]

    rot = lie.check_rotations(
        mats[:, :, :3], "matrix", lambda k: "rotation (r11 … r33)", error=TrajectoryFormatError,
        path=path, lines=lines, printed=printed, stacklevel=3,
    )
    return lie.nearest_rotation(rot)


def read_kitti(path: PathLike) -> Trajectory:
    """Read a KITTI pose file (see the module doc); ``timestamps`` is None.

    Raises:
        TrajectoryFormatError: naming the file and line of the first problem.
    """
    path = file_path("read_kitti: path", path, TrajectoryFormatError)
    values, lines, rows = read_rows(path, len(COLUMNS), COLUMNS, "KITTI line")
    mats = values.reshape(-1, 3, 4).copy()
    mats[:, :, :3] = _rotations(mats, path, lines, rows)
    return Trajectory(poses=mats, timestamps=None, source=path, lines=lines)


def format_kitti(traj: Trajectory) -> str:
    """KITTI text of a trajectory (its timestamps, if any, are not written)."""
    poses = np.asarray(traj.poses, dtype=np.float64)
    return format_numbers(poses.reshape(-1, 12))


def write_kitti(traj: Trajectory, path: PathLike, *, overwrite_input: bool = False) -> None:
    """Write ``traj`` as a KITTI file, atomically; the file it was read from is refused unless
    ``overwrite_input=True``."""
    check_outputs([path], [traj.source], overwrite_input=overwrite_input)
    write_text_atomic(path, format_kitti(traj))


__all__ = ["read_kitti", "write_kitti", "format_kitti", "COLUMNS"]
