"""KITTI pose files: round trips, rotations made orthonormal, errors naming FILE:LINE, evo."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from posegraph.errors import PoseGraphError, TrajectoryFormatError
from posegraph.io.kitti import read_kitti, write_kitti
from posegraph.io.trajectory import Trajectory

from conftest import random_poses


def _trajectory(n: int = 20, seed: int = 0) -> Trajectory:
    return Trajectory(poses=random_poses("SE3", n, np.random.default_rng(seed))[:, :3, :])


def test_round_trip(tmp_path):
    traj = _trajectory()
    path = tmp_path / "t.kitti"
    write_kitti(traj, path)
    assert len(path.read_text().splitlines()[0].split()) == 12
    back = read_kitti(path)
    assert back.timestamps is None and back.lines == list(range(1, len(traj) + 1))
    np.testing.assert_array_equal(back.poses[:, :, 3], traj.poses[:, :, 3])  # translations: the same floats
    np.testing.assert_allclose(back.poses, traj.poses, rtol=0, atol=1e-15)


def test_kitti_precision_files_are_made_orthonormal_without_a_warning(tmp_path):
    """KITTI's own files carry 7 significant digits (``%e``): ~1e-7 from orthonormal."""
    traj = _trajectory(10, seed=3)
    path = tmp_path / "00.kitti"
    path.write_text("".join(" ".join(f"{v:e}" for v in pose.ravel()) + "\n" for pose in traj.poses))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = read_kitti(path)
    rot = back.poses[:, :, :3]
    np.testing.assert_allclose(np.swapaxes(rot, 1, 2) @ rot, np.broadcast_to(np.eye(3), rot.shape), atol=1e-15)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-15)
    np.testing.assert_allclose(back.poses, traj.poses, atol=2e-6)


@pytest.mark.parametrize("fmt", ["{:.5e}", "{:g}", "{:.6f}"], ids=["6-significant-e", "6-significant-g", "6-decimals"])
def test_six_digit_files_read_without_a_warning(tmp_path, fmt):
    """Rotations printed with 6 significant digits (or 6 decimals) are off by up to ~1e-5 from
    orthonormal, within their printed precision (posegraph.lie.printed_precision)."""
    traj = _trajectory(200, seed=4)
    poses = traj.poses.copy()
    poses[0] = np.eye(3, 4)  # whole numbers as %g prints them: "1", "0"
    path = tmp_path / "six.kitti"
    path.write_text("".join(" ".join(fmt.format(v) for v in pose.ravel()) + "\n" for pose in poses))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        back = read_kitti(path)
    np.testing.assert_allclose(back.poses, poses, atol=2e-5)
    rot = back.poses[:, :, :3]
    np.testing.assert_allclose(np.swapaxes(rot, 1, 2) @ rot, np.broadcast_to(np.eye(3), rot.shape), atol=3e-15)


def test_sheared_and_scaled_blocks_are_made_rotations_with_one_warning(tmp_path):
    path = tmp_path / "t.kitti"
    sheared = "1 0.01 0 0 0 1 0 0 0 0 1 0\n"  # max |RᵀR − I| = 0.01, det 1
    path.write_text("1 0 0 0 0 1 0 0 0 0 1 0\n" + sheared + "2 0 0 1 0 2 0 2 0 0 2 3\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traj = read_kitti(path)
    assert len(caught) == 1 and caught[0].filename == __file__
    message = str(caught[0].message)
    for word in (f"{path}:2: rotation (r11 … r33)", "max(|RᵀR − I|, |det R − 1|) = 0.01",
                 "beyond the precision 0.001", "nearest rotation", "2 rotations in all"):
        assert word in message, message
    np.testing.assert_allclose(traj.poses[2], [[1, 0, 0, 1], [0, 1, 0, 2], [0, 0, 1, 3]], atol=1e-15)
    # the nearest rotation (polar decomposition) of [[1, a, 0], [0, 1, 0], [0, 0, 1]]: a rotation
    # about z by −atan(a/2) (Higham 1986: U·Vᵀ of the 2×2 block's SVD)
    angle = -np.arctan(0.01 / 2)
    expected = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    np.testing.assert_allclose(traj.poses[1, :, :3], expected, atol=1e-15)


def test_beyond_printed_precision_is_a_warning_within_it_is_not(tmp_path):
    """Full-precision numbers (``repr``) are held to float64's 1e-6: a block 2.5e-5 from a
    rotation is reported; a block 1e-4 from one, printed with 4 decimals, is within their
    precision."""
    rot = np.eye(3) + np.diag([1.2345678901e-5, 0.0, 0.0])
    line = " ".join(repr(float(v)) for v in np.concatenate([rot, np.zeros((3, 1))], axis=1).ravel())
    path = tmp_path / "full.kitti"
    path.write_text(line + "\n")
    with pytest.warns(UserWarning, match=r"full\.kitti:1: .* = 2.47e-05, beyond the precision 1e-06 of its printed digits"):
        read_kitti(path)
    short = tmp_path / "short.kitti"
    short.write_text("1.0000 0.0000 0.0000 0 0.0000 1.0000 0.0000 0 0.0000 0.0000 0.9999 0\n")  # 1e-4 off
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_kitti(short)


GOOD = "1 0 0 0 0 1 0 0 0 0 1 0\n"
BAD = [
    ("", None, ["no poses found", "12 numbers"]),
    (GOOD + "1 0 0 0 0 1 0 0 0 0 1\n", 2, ["KITTI line", "expected 12 numbers", "received 11"]),
    (GOOD + "# comment\n1 0 0 x 0 1 0 0 0 0 1 0\n", 3, ["tx: expected a number", "'x'"]),
    (GOOD + "1 0 0 0 0 1 0 0 0 0 1 inf\n", 2, ["tz: expected a finite number"]),
    (GOOD + GOOD + "0 0 0 0 0 0 0 0 0 0 0 0\n", 3, ["rotation (r11 … r33): expected a rotation matrix (det R > 0)", "det R = 0 (singular)"]),
    (GOOD + "1 0 0 0 0 1 0 0 0 0 -1 0\n", 2, ["expected a rotation matrix (det R > 0)", "det R = -1 (a reflection)"]),
    (GOOD + "1 0 0 0 0 1 0 0 0 0.5 -1 0\n", 2, ["expected a rotation matrix (det R > 0)", "det R = -1 (a reflection)"]),
]


@pytest.mark.parametrize("content,line,words", BAD)
def test_malformed_files_give_one_error_naming_file_and_line(tmp_path, content, line, words):
    path = tmp_path / "bad.kitti"
    path.write_text(content)
    with pytest.raises(TrajectoryFormatError) as info:
        read_kitti(path)
    where = f"{path}:{line}: " if line else f"{path}: "
    assert str(info.value).startswith(where), str(info.value)
    for word in words:
        assert word in str(info.value)


def test_write_refuses_the_file_it_was_read_from(tmp_path):
    path = tmp_path / "t.kitti"
    write_kitti(_trajectory(3), path)
    with pytest.raises(PoseGraphError, match="input"):
        write_kitti(read_kitti(path), path)


def test_same_as_evo_reader_and_writer(tmp_path):
    """Runs where evo is importable (``pip install --no-deps --target DIR evo``, ``PYTHONPATH=DIR``)."""
    pytest.importorskip("evo")
    from evo.tools import file_interface

    traj = _trajectory()
    ours = tmp_path / "ours.kitti"
    write_kitti(traj, ours)
    theirs = file_interface.read_kitti_poses_file(str(ours))
    np.testing.assert_allclose(np.asarray(theirs.poses_se3)[:, :3, :], traj.poses, atol=1e-15)
    written = tmp_path / "evo.kitti"
    file_interface.write_kitti_poses_file(str(written), theirs)
    np.testing.assert_allclose(read_kitti(written).poses, traj.poses, atol=1e-9)
