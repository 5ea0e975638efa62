"""The trajectory formats by name, without loading torch: the CLI's parser offers them
(``posegraph eval --format``) and builds for every command, ``batch``'s torch-free client too."""

#: the formats :func:`posegraph.io.trajectory.read_poses` reads (``--format``)
FORMATS = ("g2o", "tum", "kitti")
#: the formats a trajectory is written in (``--export-trajectory``)
TRAJECTORY_FORMATS = ("tum", "kitti")
