"""Triangle meshes for surface-mapping SLAM: Laplacian weights (:mod:`~posegraph.mesh.laplacian`)
and smoothing (:mod:`~posegraph.mesh.smoothing`), OBJ files (:mod:`~posegraph.mesh.obj`),
icospheres (:mod:`~posegraph.mesh.shapes`). The Laplacian cost on Theseus vertices,
:class:`~posegraph.model.mesh_cost.LaplacianSmoothingCost`, is a cost and lives with the
others in :mod:`posegraph.model`.

Everything here works on plain tensors — vertices ``(V, 3)`` or batched ``(B, V, 3)``, faces
``(F, 3)`` int64 — and on edge lists: the (row-normalized) Laplacian is stored as three tensors
``rows, cols, w`` (one entry per *directed* mesh edge ``i → j``) and applied with ``index_add``.
No torch sparse tensor is ever built, so every function is differentiable on CPU and CUDA.
(PyTorch3D's ``taubin_smoothing`` multiplies by a sparse Laplacian and fails in backward as soon
as the vertices require grad: "The backward pass for this operation requires the 'self' tensor to
be strided, but a sparse tensor was given instead".)

Conventions shared by every function of this package:

* **Neighbours** of vertex ``i`` are the distinct vertices ``j ≠ i`` sharing a face edge with it
  (each undirected edge counts once however many faces share it; self-edges of faces with a
  repeated index are dropped). ``deg(i)`` is their number.
* **Laplacian residual** ``r_i = v_i − Σ_j w_ij v_j`` with ``Σ_j w_ij = 1`` — the vector from
  the weighted neighbour average to the vertex (Taubin 1995, "A signal processing approach to
  fair surface design", SIGGRAPH: ``Δv_i = Σ_j w_ij (v_j − v_i) = −r_i``).
* **Isolated vertices** (``deg(i) = 0``: not in any face, or only in fully degenerate index
  triples) have no weights; their residual is defined as ``r_i = 0``, so smoothing leaves them
  unchanged and :class:`LaplacianSmoothingCost` does not pull them anywhere (a naive
  ``v_i − 0`` would pull them to the origin; PyTorch3D's ``L = D⁻¹A − I`` does exactly that).

The vertices of a mesh enter an optimization as one packed
:class:`posegraph.model.variables.ManifoldArray` of ``th.Point3`` (tensor ``(B, V, 3)``), never as a
plain ``th.Variable`` whose vertex count Theseus would read as a batch size.
"""

from posegraph.mesh.laplacian import (
    LAPLACIAN_KINDS,
    LaplacianWeights,
    laplacian_weights,
    mesh_edges,
)
from posegraph.mesh.smoothing import (
    laplacian_residual,
    laplacian_smooth,
    taubin_smooth,
)
from posegraph.mesh.obj import (
    MeshFormatError,
    read_obj,
    write_obj,
)
from posegraph.mesh.shapes import (
    icosphere,
)

__all__ = [
    "LAPLACIAN_KINDS",
    "LaplacianWeights",
    "laplacian_weights",
    "mesh_edges",
    "laplacian_residual",
    "laplacian_smooth",
    "taubin_smooth",
    "MeshFormatError",
    "read_obj",
    "write_obj",
    "icosphere",
]


def __getattr__(name: str):
    """``posegraph.mesh.LaplacianSmoothingCost``: the cost lives in the model stage
    (:mod:`posegraph.model.mesh_cost`), imported on first use so that meshes stay below it."""
    if name == "LaplacianSmoothingCost":
        from posegraph.model.mesh_cost import LaplacianSmoothingCost

        return LaplacianSmoothingCost
    raise AttributeError(f"module 'posegraph.mesh' has no attribute {name!r}")
