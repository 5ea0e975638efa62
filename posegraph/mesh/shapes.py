"""Test meshes: the icosphere (an icosahedron's faces subdivided, vertices pushed to the sphere).
"""

from __future__ import annotations

import math
from typing import Tuple
import torch
from posegraph.mesh.laplacian import _opposite_edges


# ---------------------------------------------------------------------------------------------
# generated meshes
# ---------------------------------------------------------------------------------------------
def _icosahedron() -> Tuple[torch.Tensor, torch.Tensor]:
    """Unit icosahedron (float64), faces oriented counter-clockwise seen from outside.

    Vertices are the cyclic permutations of ``(±1, ±φ, 0)``, ``φ = (1 + √5)/2`` (face list as
    in A. Kahler, "Creating an icosphere mesh in code", 2009).
    """
    t = (1.0 + math.sqrt(5.0)) / 2.0
    verts = torch.tensor(
        [
            [-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0],
            [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
            [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1],
        ],
        dtype=torch.float64,
    )
    faces = torch.tensor(
        [
            [0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11],
            [1, 5, 9], [5, 11, 4], [11, 10, 2], [10, 7, 6], [7, 1, 8],
            [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9],
            [4, 9, 5], [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1],
        ],
        dtype=torch.long,
    )
    return verts / verts.norm(dim=1, keepdim=True), faces


def _subdivide(verts: torch.Tensor, faces: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """One midpoint subdivision (each triangle → 4), midpoints projected to the unit sphere."""
    num_verts = verts.shape[0]
    edges, corner_edge = _opposite_edges(faces, num_verts)
    mid = verts[edges].mean(dim=1)
    verts = torch.cat([verts, mid / mid.norm(dim=1, keepdim=True)])
    m = corner_edge + num_verts  # m[:, k]: midpoint of the edge opposite corner k
    a, b, c = faces.unbind(1)
    m_bc, m_ca, m_ab = m.unbind(1)
    faces = torch.cat(
        [
            torch.stack([a, m_ab, m_ca], 1),
            torch.stack([b, m_bc, m_ab], 1),
            torch.stack([c, m_ca, m_bc], 1),
            torch.stack([m_ab, m_bc, m_ca], 1),
        ]
    )
    return verts, faces


def icosphere(
    subdivisions: int = 2, radius: float = 1.0, dtype: torch.dtype = torch.float64
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Geodesic sphere: an icosahedron, midpoint-subdivided ``subdivisions`` times, every new
    vertex projected to the sphere.

    Has ``10·4ⁿ + 2`` vertices and ``20·4ⁿ`` faces (``n = 5``: 10242 and 20480), faces oriented
    counter-clockwise seen from outside. Computed in float64, returned in ``dtype``.
    """
    if isinstance(subdivisions, bool) or not isinstance(subdivisions, int) or subdivisions < 0:
        raise ValueError(f"subdivisions: expected an integer >= 0, received {subdivisions!r}")
    if not (math.isfinite(radius) and radius > 0):
        raise ValueError(f"radius: expected a finite number > 0, received {radius!r}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype: expected a floating-point dtype, received {dtype}")
    verts, faces = _icosahedron()
    for _ in range(subdivisions):
        verts, faces = _subdivide(verts, faces)
    return (verts * radius).to(dtype), faces
