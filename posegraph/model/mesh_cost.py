"""The Laplacian smoothing regularizer as a Theseus cost on a mesh's vertices.

:class:`LaplacianSmoothingCost` is one :class:`~posegraph.model.costs.BlockSparseCostFunction`
over a packed ``th.Point3`` variable (the mesh's vertices): residual ``W rᵢ`` per vertex, with
the Laplacian residual ``r`` of :mod:`posegraph.mesh.laplacian`, so that it enters the same
objective as the poses and is solved on the same sparse path.
"""

from __future__ import annotations

from typing import List, Optional, Tuple, Union
import theseus as th
import torch
from posegraph.model.costs import BlockSparseCostFunction, JacobianBlocks
from posegraph.model.variables import ManifoldArray
from posegraph.model.weights import BlockCostWeight, BlockScaleWeight
from posegraph.mesh.laplacian import LaplacianWeights, _check_faces, _check_kind, _check_verts, _has_neighbours, _laplacian_parts
from posegraph.mesh.smoothing import laplacian_residual


# ---------------------------------------------------------------------------------------------
# Theseus cost
# ---------------------------------------------------------------------------------------------
def _describe(obj: object) -> str:
    """Short description of a would-be vertex variable for error messages."""
    if isinstance(obj, ManifoldArray):
        return f"ManifoldArray of th.{obj.element_cls.__name__}"
    if isinstance(obj, th.Variable):
        return f"th.{type(obj).__name__} with tensor shape {tuple(obj.tensor.shape)}"
    return type(obj).__name__


def _check_vertex_variable(verts: object) -> ManifoldArray:
    """Raise TypeError unless ``verts`` is a ManifoldArray of th.Point3."""
    if isinstance(verts, ManifoldArray) and verts.element_cls is th.Point3:
        return verts
    name = getattr(verts, "name", None)
    raise TypeError(
        f"LaplacianSmoothingCost: variable {name!r} must be a "
        f"posegraph.model.variables.ManifoldArray of th.Point3 (tensor (B, V, 3)); received "
        f"{_describe(verts)}. A plain th.Variable/th.Vector/th.Point3 of shape (V, 3) would "
        f"have its vertex count read as the batch size."
    )


def _make_weight(
    weight: Union[float, torch.Tensor, th.Variable, BlockCostWeight],
    num_verts: int,
    like: torch.Tensor,
    cost_name: Optional[str],
) -> BlockCostWeight:
    """Turn a scalar / per-vertex scale into a :class:`BlockScaleWeight` (block_dim 3)."""
    if isinstance(weight, BlockCostWeight):
        return weight
    if isinstance(weight, th.CostWeight):
        raise TypeError(
            f"LaplacianSmoothingCost {cost_name!r}: weight must be a float, a per-vertex tensor "
            f"or a posegraph.model.weights.BlockCostWeight; received {type(weight).__name__}"
        )
    if isinstance(weight, th.Variable):
        return BlockScaleWeight(weight, block_dim=3)
    scale = torch.as_tensor(weight, dtype=like.dtype, device=like.device)
    if scale.ndim > 2 or (scale.ndim >= 1 and scale.shape[-1] not in (1, num_verts)):
        raise ValueError(
            f"LaplacianSmoothingCost {cost_name!r}: weight must be a scalar, (V,) = "
            f"({num_verts},) or (B, {num_verts}); received shape {tuple(scale.shape)}"
        )
    return BlockScaleWeight(scale, block_dim=3)


def _check_precomputed(laplacian: LaplacianWeights, num_verts: int) -> LaplacianWeights:
    """Validate user-given ``(rows, cols, w)``: 1-D, equal lengths, indices in range."""
    rows, cols, w = laplacian
    if rows.ndim != 1 or cols.shape != rows.shape or w.shape != rows.shape:
        raise ValueError(
            "laplacian: expected rows, cols, w of one shape (K,); received "
            f"{tuple(rows.shape)}, {tuple(cols.shape)}, {tuple(w.shape)}"
        )
    if rows.numel() > 0:
        lo = int(torch.minimum(rows.min(), cols.min()))
        hi = int(torch.maximum(rows.max(), cols.max()))
        if lo < 0 or hi >= num_verts:
            raise ValueError(
                f"laplacian: expected indices in [0, {num_verts}), received [{lo}, {hi}]"
            )
    return LaplacianWeights(rows.long(), cols.long(), w)


def _check_elements(
    elements: Optional[torch.Tensor], num_elements: int, device: torch.device
) -> torch.Tensor:
    """Mesh vertex → variable element map: distinct indices in ``[0, num_elements)``."""
    if elements is None:
        return torch.arange(num_elements, device=device)
    elements = torch.as_tensor(elements)
    if elements.ndim != 1 or elements.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"elements: expected a 1-D integer tensor, received {elements.dtype} of shape "
            f"{tuple(elements.shape)}"
        )
    if elements.numel() and (int(elements.min()) < 0 or int(elements.max()) >= num_elements):
        raise ValueError(f"elements: expected indices in [0, {num_elements}), received "
                         f"[{int(elements.min())}, {int(elements.max())}]")
    if torch.unique(elements).numel() != elements.numel():
        raise ValueError("elements: expected distinct indices (one element per mesh vertex)")
    return elements.to(device=device, dtype=torch.long)


class LaplacianSmoothingCost(BlockSparseCostFunction):
    """Laplacian smoothness of mesh vertices: one residual block ``r_i`` per vertex.

    ``r_i = v_i − Σ_j w_ij v_j`` (``r_i = 0`` for isolated vertices), weighted by a scalar or
    per-vertex scale ``s_i``; the cost contributes ``Σ_i ‖s_i r_i‖²`` to the least-squares sum
    (Theseus' ``Objective.error_metric`` reports half of it). The residual is linear in the
    vertices, so its Jacobian is constant: a diagonal block ``I`` per vertex (``0`` for isolated
    vertices) and a block ``−w_ij I`` per directed edge ``i → j``.

    **Weights are fixed at construction** from a rest mesh — ``rest_verts`` if given, else batch
    element 0 of the variable's current tensor, detached — so moving the vertices during the
    solve does not change ``w`` (and the problem stays a linear least-squares problem).

    **Relation to PyTorch3D's** ``mesh_laplacian_smoothing(meshes, method="uniform")``: it uses
    ``L = D⁻¹A − I`` (``(Lv)_i = Σ_j v_j / deg(i) − v_i``, over the same distinct neighbours,
    with ``L`` held constant) and returns, for one mesh, ``(1/V) Σ_i ‖(Lv)_i‖`` — the mean of
    the Euclidean *norms*, not squared. Since ``(Lv)_i = −r_i`` for uniform weights, the per-
    vertex residuals agree up to sign and ``‖(Lv)_i‖ = ‖r_i‖``; this cost is instead the
    least-squares term ``Σ_i ‖r_i‖²`` (with ``s_i = 1``). Both vanish exactly when every vertex
    is its neighbours' centroid, but values and gradients differ: the derivative of a term
    with respect to ``r_i`` is ``r_i/‖r_i‖`` there (undefined at ``r_i = 0``) and ``2 r_i``
    here, and a uniform scale ``1/√V`` reproduces only the ``1/V`` factor, not the norm. For
    a batch of meshes PyTorch3D additionally averages over meshes. Isolated vertices differ too:
    PyTorch3D's diagonal ``−1`` gives them ``‖v_i‖``, here they contribute 0.

    Args:
        verts: the mesh vertices as a :class:`ManifoldArray` of ``th.Point3`` (``(B, V, 3)``);
            anything else (``th.Variable``, ``th.Vector``, ``th.Point3``, a ManifoldArray of
            another class) raises ``TypeError``. Fixed elements act as anchors.
        faces: ``(F, 3)`` integer vertex indices.
        weight: a float, a per-vertex tensor ``(V,)`` (or ``(B, V)``), a ``th.Variable``
            holding such a scale (all wrapped in ``BlockScaleWeight(scale, block_dim=3)``), or
            any :class:`~posegraph.model.weights.BlockCostWeight` with ``block_dim = 3``.
        kind: ``"uniform"`` or ``"cotangent"`` (see :func:`laplacian_weights`).
        rest_verts: optional ``(V, 3)`` rest mesh for the weights.
        laplacian: optional precomputed :class:`LaplacianWeights` with ``w`` of shape ``(K,)``
            (overrides ``kind`` / ``rest_verts``; used by :meth:`copy`, and to share one weight
            computation between costs).
        name: cost name.
        elements: optional ``(V,)`` indices: mesh vertex ``k`` is element ``elements[k]`` of
            ``verts`` (when the variable holds more points than the mesh, e.g. all landmarks of
            a pose graph); by default vertex ``k`` is element ``k``.
    """

    def __init__(
        self,
        verts: ManifoldArray,
        faces: torch.Tensor,
        weight: Union[float, torch.Tensor, th.Variable, BlockCostWeight] = 1.0,
        kind: str = "uniform",
        rest_verts: Optional[torch.Tensor] = None,
        laplacian: Optional[LaplacianWeights] = None,
        name: Optional[str] = None,
        elements: Optional[torch.Tensor] = None,
    ):
        verts = _check_vertex_variable(verts)
        self.elements = _check_elements(elements, verts.tensor.shape[1], verts.tensor.device)
        tensor = verts.tensor.index_select(1, self.elements)
        num_verts = tensor.shape[1]
        self.kind = _check_kind(kind)
        self.faces = _check_faces(faces, num_verts, tensor.device)
        if laplacian is not None:
            parts = _check_precomputed(laplacian, num_verts)
        else:
            parts = self._rest_weights(tensor, rest_verts, num_verts)
        block_names = [f"laplacian[v={i}]" for i in range(num_verts)]
        super().__init__(
            _make_weight(weight, num_verts, tensor, name),
            block_dim=3,
            num_blocks=num_verts,
            name=name,
            block_names=block_names,
        )
        self.verts = verts
        self.register_optim_vars(["verts"])
        self._set_constants(parts, tensor.dtype, tensor.device)

    # -- construction helpers ---------------------------------------------------------------
    def _rest_weights(
        self, tensor: torch.Tensor, rest_verts: Optional[torch.Tensor], num_verts: int
    ) -> LaplacianWeights:
        """Weights of the rest mesh (detached): ``rest_verts`` or batch element 0."""
        if rest_verts is None:
            rest = tensor[0]
        else:
            rest, batched = _check_verts(rest_verts, "rest_verts")
            if batched or rest.shape[1] != num_verts:
                raise ValueError(
                    f"rest_verts: expected shape ({num_verts}, 3), "
                    f"received {tuple(rest_verts.shape)}"
                )
            rest = rest[0].to(device=tensor.device)
        rest = rest.detach().to(tensor.dtype).unsqueeze(0)
        rows, cols, w = _laplacian_parts(rest, self.faces, self.kind)
        return LaplacianWeights(rows, cols, w[0] if w.ndim == 2 else w)

    def _set_constants(
        self, parts: LaplacianWeights, dtype: torch.dtype, device: torch.device
    ) -> None:
        """Store weights, index tensors and the constant Jacobian blocks on ``device``."""
        num_verts = self.num_blocks
        rows = parts.rows.to(device)
        cols = parts.cols.to(device)
        w = parts.w.detach().to(device=device, dtype=dtype)
        self.laplacian = LaplacianWeights(rows, cols, w)
        self._has = _has_neighbours(rows, num_verts)
        self._diag_index = torch.arange(num_verts, device=device)
        eye = torch.eye(3, dtype=dtype, device=device)
        if bool(self._has.all()):
            self._diag_block = eye.expand(1, num_verts, 3, 3)  # no memory: one 3×3 eye
        else:
            self._diag_block = self._has.to(dtype)[None, :, None, None] * eye
        self._neighbour_block = (-w)[None, :, None, None] * eye  # (1, K, 3, 3)

    def _sync(self) -> None:
        """Follow the variable if it was moved to another device or dtype."""
        tensor = self.verts.tensor
        w = self.laplacian.w
        if w.device != tensor.device or w.dtype != tensor.dtype:
            self.faces = self.faces.to(tensor.device)
            self.elements = self.elements.to(tensor.device)
            self._set_constants(self.laplacian, tensor.dtype, tensor.device)

    # -- BlockSparseCostFunction interface ----------------------------------------------------
    def block_layout(self) -> List[JacobianBlocks]:
        """Diagonal blocks (``rows = elements = arange(V)``) then neighbour blocks
        (``rows = laplacian.rows``, ``elements = laplacian.cols``)."""
        self._sync()
        return [
            JacobianBlocks(self.verts, self._diag_index, self.elements[self._diag_index]),
            JacobianBlocks(self.verts, self.laplacian.rows, self.elements[self.laplacian.cols]),
        ]

    def block_error(self) -> torch.Tensor:
        """``r`` ``(B, V, 3)`` via one gather and one ``index_add``."""
        self._sync()
        return laplacian_residual(self.verts.tensor.index_select(1, self.elements), self.laplacian, self._has)

    def block_jacobians(self) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """Constant blocks ``[(B, V, 3, 3) I, (B, K, 3, 3) −w_ij I]`` and the block error.

        The blocks are cached and returned as ``expand``-ed views over the batch: treat them as
        read-only.
        """
        err = self.block_error()
        batch = err.shape[0]
        return [
            self._diag_block.expand(batch, -1, -1, -1),
            self._neighbour_block.expand(batch, -1, -1, -1),
        ], err

    def to(self, *args, **kwargs):
        """Move variables and weight (Theseus) and the cached constants."""
        super().to(*args, **kwargs)
        self._sync()

    def _copy_impl(self, new_name: Optional[str] = None) -> "LaplacianSmoothingCost":
        return LaplacianSmoothingCost(
            self.verts.copy(),
            self.faces.clone(),
            weight=self.weight.copy(),
            kind=self.kind,
            laplacian=LaplacianWeights(*(t.clone() for t in self.laplacian)),
            name=new_name,
            elements=self.elements.clone(),
        )
