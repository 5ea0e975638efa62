"""The geometry everything else builds on: rotations, SE(3)/SE(2) kernels, homogeneous matrices.

- :mod:`posegraph.lie.rotations` — stable rotation ↔ quaternion conversions, g2o's pose vectors.
- :mod:`posegraph.lie.theseus_patch` — those conversions patched into Theseus (:func:`patch_theseus`).
- :mod:`posegraph.lie.rotation_rule` — the one rule for rotations handed in as numbers
  (:func:`check_rotations`, :func:`rotation_defect`, :func:`rotation_tolerance`).
- :mod:`posegraph.lie.geometry` — vectorized SE(3)/SE(2) between residuals, their Jacobians,
  exponential and logarithm, in Theseus' layouts and tangent order (translation, rotation).
- :mod:`posegraph.lie.native` — the compiled loops of the hot kernels (float64, CPU), with
  their C sources beside them.
- :mod:`posegraph.lie.homogeneous` — Theseus layouts ↔ homogeneous matrices.

Nothing here imports the stages above (models, solvers, reports).
"""

from posegraph.lie import geometry, homogeneous  # noqa: F401 (submodules, as attributes: posegraph.geometry)
from posegraph.lie.rotation_rule import (
    ROTATION_TOLERANCE,
    PRINTED_PRECISION_CAP,
    ROTATION_KINDS,
    rotation_tolerance,
    rotation_defect,
    check_rotations,
    printed_precision,
    nearest_rotation,
)
from posegraph.lie.theseus_patch import (
    patch_theseus,
    unpatch_theseus,
    is_theseus_patched,
    theseus_patched,
)
from posegraph.lie.rotations import (
    matrix_to_quaternion,
    quaternion_to_matrix,
    se3_to_g2o,
    g2o_to_se3,
    se2_to_xytheta,
    xytheta_to_se2,
)

__all__ = [
    "matrix_to_quaternion",
    "quaternion_to_matrix",
    "se3_to_g2o",
    "g2o_to_se3",
    "se2_to_xytheta",
    "xytheta_to_se2",
    "patch_theseus",
    "unpatch_theseus",
    "is_theseus_patched",
    "theseus_patched",
    "ROTATION_TOLERANCE",
    "PRINTED_PRECISION_CAP",
    "ROTATION_KINDS",
    "rotation_tolerance",
    "rotation_defect",
    "check_rotations",
    "printed_precision",
    "nearest_rotation",
]
