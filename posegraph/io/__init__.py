"""File formats → :class:`~posegraph.graph.PoseGraph` (g2o) or
:class:`~posegraph.io.trajectory.Trajectory` (TUM, KITTI) and back. Knows nothing of Theseus.

The names below are imported on first use (:mod:`posegraph._lazy`): atomic writing
(:mod:`posegraph.io.output`) does not load torch."""

from typing import TYPE_CHECKING

from posegraph._lazy import lazy_exports

_EXPORTS = {
    "posegraph.io.g2o_write": ["format_g2o", "write_g2o"],
    "posegraph.io.g2o": ["read_g2o"],
    "posegraph.io.kitti": ["read_kitti", "write_kitti"],
    "posegraph.io.output": ["OutputError", "check_outputs", "write_output", "write_text_atomic"],
    "posegraph.io.trajectory": ["Trajectory"],
    "posegraph.io.poses": ["read_poses", "write_trajectory"],
    "posegraph.io.tum": ["read_tum", "write_tum"],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and editors (tests/test_lazy_import.py)
    from posegraph.io.g2o_write import format_g2o, write_g2o
    from posegraph.io.g2o import read_g2o
    from posegraph.io.kitti import read_kitti, write_kitti
    from posegraph.io.output import OutputError, check_outputs, write_output, write_text_atomic
    from posegraph.io.trajectory import Trajectory
    from posegraph.io.poses import read_poses, write_trajectory
    from posegraph.io.tum import read_tum, write_tum

__all__ = ["read_g2o", "write_g2o", "format_g2o", "write_text_atomic", "write_output", "check_outputs", "OutputError",
           "Trajectory", "read_poses", "write_trajectory", "read_tum", "write_tum", "read_kitti", "write_kitti"]
