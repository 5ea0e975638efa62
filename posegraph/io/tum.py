"""TUM trajectory files ⇄ :class:`~posegraph.io.trajectory.Trajectory`.

One pose per line: ``timestamp tx ty tz qx qy qz qw`` (seconds; position; unit quaternion,
scalar last), the format of the TUM RGB-D benchmark (Sturm et al. 2012, "A benchmark for the
evaluation of RGB-D SLAM systems", IROS; cvg.cit.tum.de/data/datasets/rgbd-dataset/file_formats)
and of evo's ``tum`` files (``evo.tools.file_interface.read_tum_trajectory_file``). ``#``
starts a comment; blank lines are skipped.

Reading follows the g2o reader's rules (:mod:`posegraph.io.g2o`): numbers are converted as
``float`` converts them and must be finite; quaternions follow posegraph's rotation rule
(:mod:`posegraph.lie`): a zero quaternion is an error, one whose norm is off by more than its
printed digits allow (:func:`~posegraph.lie.printed_precision`; a file of 4-decimal
quaternions reads silently) a warning, and every quaternion is normalized
(:func:`posegraph.lie.g2o_to_se3`, whose ``x y z qx qy qz qw`` layout is the TUM line after
its timestamp). Timestamps must increase
strictly (association by timestamp needs one pose per stamp). Every problem is one
:class:`~posegraph.errors.TrajectoryFormatError` naming FILE:LINE, expected and received.

Writing is atomic (:mod:`posegraph.io.output`), quaternions come from
:func:`posegraph.lie.se3_to_g2o` (``qw ≥ 0``) and numbers are ``repr(float)``, so a file
written then read gives back the same floats.
"""

from __future__ import annotations

import os
from typing import Union

import numpy as np
import torch

from posegraph import lie
from posegraph.errors import TrajectoryFormatError, file_path
from posegraph.io.output import check_outputs, write_text_atomic
from posegraph.io.trajectory import Trajectory, format_numbers, read_rows

PathLike = Union[str, "os.PathLike[str]"]

#: the columns of a TUM line
COLUMNS = ("timestamp", "tx", "ty", "tz", "qx", "qy", "qz", "qw")


def read_tum(path: PathLike) -> Trajectory:
    """Read a TUM trajectory file (see the module doc).

    Raises:
        TrajectoryFormatError: naming the file and line of the first problem.
    """
    path = file_path("read_tum: path", path, TrajectoryFormatError)
    values, lines, rows = read_rows(path, len(COLUMNS), COLUMNS, "TUM line")
    values[:, 4:8] = lie.check_rotations(  # the rotation rule; g2o_to_se3 normalizes below
        values[:, 4:8], "quaternion", lambda k: "quaternion (qx qy qz qw)",
        error=TrajectoryFormatError, path=path, lines=lines,
        printed=lambda k: rows[k].split()[4:8], stacklevel=2,
    )
    stamps = values[:, 0].copy()
    bad = np.flatnonzero(stamps[1:] <= stamps[:-1])
    if bad.size:
        k = int(bad[0])
        raise TrajectoryFormatError(
            f"timestamp: expected one greater than {float(stamps[k])!r} (line {lines[k]}), received {float(stamps[k + 1])!r}",
            path,
            lines[k + 1],
        )
    poses = lie.g2o_to_se3(torch.as_tensor(values[:, 1:8].copy())).numpy()
    return Trajectory(poses=poses, timestamps=stamps, source=path, lines=lines)


def format_tum(traj: Trajectory) -> str:
    """TUM text of a trajectory; one without timestamps (KITTI) is numbered ``0, 1, …``."""
    n = len(traj)
    stamps = np.arange(n, dtype=np.float64) if traj.timestamps is None else np.asarray(traj.timestamps, np.float64)
    values = lie.se3_to_g2o(torch.as_tensor(np.asarray(traj.poses, dtype=np.float64))).numpy()
    return format_numbers(np.concatenate([stamps.reshape(n, 1), values.reshape(n, 7)], axis=1))


def write_tum(traj: Trajectory, path: PathLike, *, overwrite_input: bool = False) -> None:
    """Write ``traj`` as a TUM file, atomically; the file it was read from is refused unless
    ``overwrite_input=True``."""
    check_outputs([path], [traj.source], overwrite_input=overwrite_input)
    write_text_atomic(path, format_tum(traj))


__all__ = ["read_tum", "write_tum", "format_tum", "COLUMNS"]
