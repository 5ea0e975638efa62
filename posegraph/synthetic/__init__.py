"""Generated problems with known answers, for tests, examples and benchmarks.

- :mod:`~posegraph.synthetic.graphs` — pose graphs with ground truth (spheres, grids, meshes).
- :mod:`~posegraph.synthetic.hard_cases` — hard starts and bad data: perturbed vertices, false
  loop closures, indefinite information (seeded).
- :mod:`~posegraph.synthetic.gtsam_reference` — GTSAM's answer on the same problem, where GTSAM is
  installed.
"""

from posegraph.synthetic.landmarks import mesh_observations
from posegraph.synthetic.metrics import align_to_first, rotation_rmse, translation_rmse
from posegraph.synthetic.graphs import (
    SyntheticGraph,
    sphere_se3,
    grid_se2,
    large_se2,
    with_wrong_loop_closures,
)

__all__ = [
    "SyntheticGraph",
    "sphere_se3",
    "grid_se2",
    "large_se2",
    "mesh_observations",
    "align_to_first",
    "translation_rmse",
    "rotation_rmse",
    "with_wrong_loop_closures",
]
