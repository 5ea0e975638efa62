"""File formats → :class:`~posegraph.graph.PoseGraph` (g2o) or
:class:`~posegraph.io.trajectory.Trajectory` (TUM, KITTI) and back. Knows nothing of Theseus."""

from .g2o import format_g2o, read_g2o, write_g2o
from .kitti import read_kitti, write_kitti
from .output import OutputError, check_outputs, write_output, write_text_atomic
from .trajectory import Trajectory, read_poses, write_trajectory
from .tum import read_tum, write_tum

__all__ = ["read_g2o", "write_g2o", "format_g2o", "write_text_atomic", "write_output", "check_outputs", "OutputError",
           "Trajectory", "read_poses", "write_trajectory", "read_tum", "write_tum", "read_kitti", "write_kitti"]
