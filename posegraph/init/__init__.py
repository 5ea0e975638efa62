"""Initial guesses: the file's vertices, a spanning tree of the measurements, or the chordal
relaxation, and the best of them (``initialize(graph, "auto")``).

- :mod:`posegraph.init.dispatch` — :func:`initialize` and the best-start choice.
- :mod:`posegraph.init.spanning_tree` — measurements composed along a spanning tree.
- :mod:`posegraph.init.chordal` — chordal rotations, then translations (Carlone et al. 2015).
"""

from posegraph.init.dispatch import (
    INIT_METHODS,
    InitChoice,
    edge_residuals,
    pose_graph_error,
    initialize,
    point_guess,
)
from posegraph.init.spanning_tree import (
    require_connected,
    spanning_tree_edges,
    spanning_tree,
)
from posegraph.init.chordal import (
    chordal_initialization,
)
from posegraph.lie.homogeneous import (
    to_homogeneous,
    from_homogeneous,
)

__all__ = [
    "INIT_METHODS",
    "InitChoice",
    "edge_residuals",
    "pose_graph_error",
    "initialize",
    "point_guess",
    "require_connected",
    "spanning_tree_edges",
    "spanning_tree",
    "chordal_initialization",
    "to_homogeneous",
    "from_homogeneous",
]
