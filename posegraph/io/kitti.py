"""KITTI odometry pose files ⇄ :class:`~posegraph.io.trajectory.Trajectory`.

One pose per line: the 3×4 matrix ``[R | t]`` row-major, 12 numbers
``r11 r12 r13 tx r21 r22 r23 ty r31 r32 r33 tz``; no timestamps, a pose is known by its index
(line ``k`` of data is pose ``k``). This is the format of the KITTI odometry benchmark's
``poses/NN.txt`` (Geiger et al. 2012, "Are we ready for autonomous driving? The KITTI vision
benchmark suite", CVPR; devkit ``readme.txt``) and of evo's ``kitti`` files
(``evo.tools.file_interface.read_kitti_poses_file``). ``#`` starts a comment; blank lines are
skipped.

Rotations get the rule the g2o reader gives quaternions (:mod:`posegraph.io.g2o`): a block
that is not a rotation (``det R ≤ 0``: singular or a reflection) is an error naming FILE:LINE;
one far from orthonormal (``max |RᵀR − I| > 10⁻³``) a warning; every block is replaced by a
rotation, through the stable conversions of :mod:`posegraph.lie` (Shepperd's quaternion of
``R``, :func:`~posegraph.lie.matrix_to_quaternion`, back to the matrix of the normalized
quaternion, :func:`~posegraph.lie.quaternion_to_matrix`). KITTI's own files, written with 7
significant digits, are about 10⁻⁷ from orthonormal.

Writing is atomic (:mod:`posegraph.io.output`) and numbers are ``repr(float)``.
"""

from __future__ import annotations

import os
import warnings
from typing import Union

import numpy as np
import torch

from .. import lie
from ..errors import TrajectoryFormatError
from .output import check_outputs, write_text_atomic
from .trajectory import Trajectory, format_numbers, read_rows

PathLike = Union[str, "os.PathLike[str]"]

#: the columns of a KITTI line
COLUMNS = ("r11", "r12", "r13", "tx", "r21", "r22", "r23", "ty", "r31", "r32", "r33", "tz")
#: max |RᵀR − I| above this is reported (the rotation is made orthonormal either way); the
#: counterpart of the g2o reader's quaternion norm tolerance
ORTHONORMAL_TOLERANCE = 1e-3


def _rotations(mats: np.ndarray, path: str, lines) -> np.ndarray:
    """Check the rotation blocks (error: det ≤ 0; warning: far from orthonormal) and return
    them made orthonormal through the quaternion (see the module doc)."""
    rot = mats[:, :, :3]
    det = np.linalg.det(rot)
    bad = np.flatnonzero(~(det > 0))
    if bad.size:
        k = int(bad[0])
        raise TrajectoryFormatError(
            f"rotation (r11 … r33): expected a rotation matrix (det > 0), received one with det {det[k]:.6g}",
            path,
            lines[k],
        )
    off = np.abs(np.swapaxes(rot, 1, 2) @ rot - np.eye(3)).max(axis=(1, 2))
    far = np.flatnonzero(off > ORTHONORMAL_TOLERANCE)
    if far.size:
        warnings.warn(
            f"{path}:{lines[far[0]]}: {far.size} rotation(s) far from orthonormal "
            f"(e.g. max |RᵀR − I| = {off[far[0]]:.6g}); made orthonormal",
            stacklevel=3,
        )
    return lie.quaternion_to_matrix(lie.matrix_to_quaternion(torch.as_tensor(rot))).numpy()


def read_kitti(path: PathLike) -> Trajectory:
    """Read a KITTI pose file (see the module doc); ``timestamps`` is None.

    Raises:
        TrajectoryFormatError: naming the file and line of the first problem.
    """
    path = os.fspath(path)
    values, lines = read_rows(path, len(COLUMNS), COLUMNS, "KITTI line")
    mats = values.reshape(-1, 3, 4).copy()
    mats[:, :, :3] = _rotations(mats, path, lines)
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
