"""TUM trajectory files: round trips, the g2o reader's rules, errors naming FILE:LINE, evo."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from posegraph.errors import PoseGraphError, TrajectoryFormatError
from posegraph.io.trajectory import Trajectory
from posegraph.io.tum import read_tum, write_tum

from conftest import random_poses


def _trajectory(n: int = 20, seed: int = 0) -> Trajectory:
    rng = np.random.default_rng(seed)
    stamps = 1305031102.175304 + 0.0333 * np.arange(n) + rng.uniform(0, 0.01, n)
    return Trajectory(poses=random_poses("SE3", n, rng)[:, :3, :], timestamps=stamps)


def test_round_trip_keeps_stamps_and_poses(tmp_path):
    traj = _trajectory()
    path = tmp_path / "t.tum"
    write_tum(traj, path)
    back = read_tum(path)
    np.testing.assert_array_equal(back.timestamps, traj.timestamps)  # repr: the same floats
    np.testing.assert_allclose(back.poses, traj.poses, rtol=0, atol=1e-14)
    assert back.source == str(path) and back.lines == list(range(1, len(traj) + 1))
    rot = back.poses[:, :, :3]
    np.testing.assert_allclose(np.swapaxes(rot, 1, 2) @ rot, np.broadcast_to(np.eye(3), rot.shape), atol=1e-15)


def test_comments_blank_lines_tabs_and_crlf(tmp_path):
    path = tmp_path / "t.tum"
    path.write_bytes(b"# timestamp tx ty tz qx qy qz qw\r\n\r\n1.0\t1 2 3 0 0 0 1 # first\r\n  2.5 4 5 6 0 0 1 0\r\n")
    traj = read_tum(path)
    np.testing.assert_array_equal(traj.timestamps, [1.0, 2.5])
    np.testing.assert_array_equal(traj.poses[0], [[1, 0, 0, 1], [0, 1, 0, 2], [0, 0, 1, 3]])
    np.testing.assert_allclose(traj.poses[1, :, :3], np.diag([-1.0, -1.0, 1.0]), atol=1e-16)  # π about z
    assert traj.lines == [3, 4]


def test_non_unit_quaternions_are_normalized_far_ones_with_a_warning(tmp_path):
    path = tmp_path / "t.tum"
    path.write_text("0 0 0 0 0 0 0 1.0000001\n1 0 0 0 0 0 0 2\n2 0 0 0 0 0 0 3\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traj = read_tum(path)
    assert len(caught) == 1 and caught[0].filename == __file__, [str(w.message) for w in caught]
    message = str(caught[0].message)
    for word in (f"{path}:2: quaternion (qx qy qz qw)", "|‖q‖ − 1| = 1", "beyond the precision 0.001",
                 "normalized", "2 rotations in all"):
        assert word in message, message
    np.testing.assert_allclose(traj.poses[:, :, :3], np.broadcast_to(np.eye(3), (3, 3, 3)), atol=1e-15)


def test_four_decimal_quaternions_read_without_a_warning(tmp_path):
    """Each component off by ≤ 5e-5: ‖q‖ within 1e-4 of 1 (posegraph.lie.printed_precision)."""
    rng = np.random.default_rng(7)
    q = rng.normal(size=(500, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    rows = np.concatenate([np.arange(500)[:, None], rng.normal(size=(500, 3)), q], axis=1)
    path = tmp_path / "four.tum"
    path.write_text("".join(" ".join(f"{v:.4f}" for v in row) + "\n" for row in rows))
    assert np.abs(np.linalg.norm(np.round(q, 4), axis=1) - 1).max() > 1e-5  # far beyond float64's 1e-6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        traj = read_tum(path)
    rot = traj.poses[:, :, :3]
    np.testing.assert_allclose(np.swapaxes(rot, 1, 2) @ rot, np.broadcast_to(np.eye(3), rot.shape), atol=1e-14)
    full = tmp_path / "full.tum"  # the same norm error with every digit printed: a warning
    full.write_text("0 0 0 0 0 0 0.6 0.8000123456789\n")
    with pytest.warns(UserWarning, match=r"full\.tum:1: .* = 9.88e-06, beyond the precision 1e-06"):
        read_tum(full)


GOOD = "0 0 0 0 0 0 0 1\n"
#: content, line at fault (None: the file), words in the message
BAD = [
    ("", None, ["no poses found", "8 numbers"]),
    ("# only a comment\n\n", None, ["no poses found"]),
    (GOOD + "1 0 0 0 0 0 1\n", 2, ["TUM line", "expected 8 numbers", "received 7"]),
    (GOOD + "1 0 0 0 0 0 0 1 9\n", 2, ["expected 8 numbers", "received 9"]),
    (GOOD + "1 0 zero 0 0 0 0 1\n", 2, ["ty: expected a number", "'zero'"]),
    (GOOD + "1 0 0 nan 0 0 0 1\n", 2, ["tz: expected a finite number", "'nan'"]),
    (GOOD + "inf 0 0 0 0 0 0 1\n", 2, ["timestamp: expected a finite number"]),
    (GOOD + "1 0 0 0 0 0 0 0\n", 2, ["zero quaternion"]),
    (GOOD + "2 0 0 0 0 0 0 1\n2 0 0 0 0 0 0 1\n", 3, ["timestamp", "greater than 2.0 (line 2)", "received 2.0"]),
    (GOOD + "-1 0 0 0 0 0 0 1\n", 2, ["timestamp", "greater than 0.0 (line 1)", "received -1.0"]),
]


@pytest.mark.parametrize("content,line,words", BAD)
def test_malformed_files_give_one_error_naming_file_and_line(tmp_path, content, line, words):
    path = tmp_path / "bad.tum"
    path.write_text(content)
    with pytest.raises(TrajectoryFormatError) as info:
        read_tum(path)
    where = f"{path}:{line}: " if line else f"{path}: "
    assert str(info.value).startswith(where), str(info.value)
    for word in words:
        assert word in str(info.value)


def test_missing_file_and_binary_data(tmp_path):
    with pytest.raises(TrajectoryFormatError, match="no such file"):
        read_tum(tmp_path / "none.tum")
    (tmp_path / "bin.tum").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TrajectoryFormatError, match="not UTF-8"):
        read_tum(tmp_path / "bin.tum")


def test_write_refuses_the_file_it_was_read_from(tmp_path):
    path = tmp_path / "t.tum"
    write_tum(_trajectory(3), path)
    traj = read_tum(path)
    with pytest.raises(PoseGraphError, match="input"):
        write_tum(traj, path)
    write_tum(traj, path, overwrite_input=True)


def test_same_as_evo_reader_and_writer(tmp_path):
    """Runs where evo is importable (``pip install --no-deps --target DIR evo``, ``PYTHONPATH=DIR``)."""
    pytest.importorskip("evo")
    from evo.tools import file_interface

    traj = _trajectory()
    ours = tmp_path / "ours.tum"
    write_tum(traj, ours)
    theirs = file_interface.read_tum_trajectory_file(str(ours))
    np.testing.assert_array_equal(theirs.timestamps, traj.timestamps)
    np.testing.assert_allclose(np.asarray(theirs.poses_se3)[:, :3, :], traj.poses, atol=1e-14)
    written = tmp_path / "evo.tum"
    file_interface.write_tum_trajectory_file(str(written), theirs)
    back = read_tum(written)
    np.testing.assert_allclose(back.timestamps, traj.timestamps, rtol=1e-15)
    np.testing.assert_allclose(back.poses, traj.poses, atol=1e-9)
