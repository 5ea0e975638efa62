"""Trajectories: format by extension, pose graphs as trajectories (SE2 as planar SE3), export."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from posegraph.errors import TrajectoryFormatError
from posegraph.graph import PoseGraph
from posegraph.io import read_g2o, write_g2o
from posegraph.io.trajectory import Trajectory
from posegraph.io.poses import export_format, export_graph, file_format, read_poses
from posegraph.synthetic.graphs import grid_se2, sphere_se3


def test_format_by_extension_first_line_or_forced(tmp_path):
    assert file_format("a.tum") == "tum" and file_format("A.KITTI") == "kitti"
    assert file_format("a.g2o") == "g2o" and file_format("a") == "g2o"
    assert file_format("a.g2o", "tum") == "tum"
    (tmp_path / "t.txt").write_text("# header\n\n1 0 0 0 0 0 0 1\n")
    (tmp_path / "k.txt").write_text("1 0 0 0 0 1 0 0 0 0 1 0\n")
    (tmp_path / "x.txt").write_text("1 2 3\n")
    assert file_format(tmp_path / "t.txt") == "tum" and file_format(tmp_path / "k.txt") == "kitti"
    assert isinstance(read_poses(tmp_path / "k.txt"), Trajectory)
    with pytest.raises(TrajectoryFormatError, match=r"x\.txt:1: cannot tell .* received 3; name the format"):
        file_format(tmp_path / "x.txt")
    with pytest.raises(TrajectoryFormatError, match="extension '.g2o'"):
        export_format("out.g2o")


def test_se2_graph_is_a_planar_se3_trajectory_in_id_order():
    truth = grid_se2(num_poses=30, seed=1).truth
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    shuffled = PoseGraph(kind="SE2", ids=truth.ids[perm] + 7, poses=truth.poses[perm], edges=truth.edges[:0],
                         measurements=truth.measurements[:0], information=truth.information[:0],
                         fixed=truth.fixed[perm])
    traj = Trajectory.from_graph(shuffled)
    np.testing.assert_array_equal(traj.timestamps, np.arange(30) + 7.0)  # timestamps: the vertex ids
    p = truth.poses.numpy()
    theta = np.arctan2(p[:, 3], p[:, 2])
    np.testing.assert_allclose(traj.poses[:, :2, 3], p[:, :2], atol=0)
    np.testing.assert_array_equal(traj.poses[:, 2, :], np.tile([0.0, 0.0, 1.0, 0.0], (30, 1)))
    np.testing.assert_allclose(traj.poses[:, 0, 0], np.cos(theta), atol=1e-15)
    np.testing.assert_allclose(traj.poses[:, 1, 0], np.sin(theta), atol=1e-15)
    assert traj.to_graph().num_poses == 30


def test_export_graph_writes_id_order_and_warns_when_kitti_loses_ids(tmp_path):
    g = sphere_se3(num_rings=2, poses_per_ring=8).truth
    write_g2o(g, tmp_path / "g.g2o")
    export_graph(g, tmp_path / "g.tum")
    tum = read_poses(tmp_path / "g.tum")
    np.testing.assert_array_equal(tum.timestamps, g.ids.numpy().astype(float))
    np.testing.assert_allclose(tum.poses, g.poses.numpy(), atol=1e-15)
    shifted = read_g2o(tmp_path / "g.g2o")
    shifted.ids = shifted.ids + 100
    with pytest.warns(UserWarning, match=r"KITTI lines carry no ids.*ids 100 … 115"):
        export_graph(shifted, tmp_path / "s.kitti")
    np.testing.assert_allclose(read_poses(tmp_path / "s.kitti").poses, g.poses.numpy(), atol=1e-15)
    with pytest.raises(TrajectoryFormatError, match="edges only"):
        Trajectory.from_graph(PoseGraph(**{**shifted.__dict__, "poses": None}))
