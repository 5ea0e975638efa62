"""Packed optimization variables: many poses (or points) of one kind in one Theseus variable.

Stock Theseus keeps one ``th.SE3`` per pose, so every iteration walks thousands of Python
objects (retraction, updates, error evaluation). A :class:`ManifoldArray` holds all ``N``
elements of one manifold kind in a single tensor of shape ``(B, N, *element_shape)`` and
retracts them in one batched call to the element class's own ``retract``
(``X ⊕ δ = X · Exp(δ)`` for Lie groups, ``x + δ`` for points — Theseus' convention).

Elements can be *fixed* (the gauge anchor, FIX lines of a g2o file): they are part of the
tensor, costs read them, but they own no tangent columns — ``dof()`` counts free elements only.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Type

import theseus as th
import torch

from posegraph.lie import geometry, native

#: Element kinds a ManifoldArray can hold: (tensor shape of one element, tangent dimension).
ELEMENT_LAYOUTS: Dict[Type[th.Manifold], Tuple[Tuple[int, ...], int]] = {
    th.SE3: ((3, 4), 6),
    th.SE2: ((4,), 3),
    th.Point3: ((3,), 3),
    th.Point2: ((2,), 2),
}


#: Batched right retractions ``X ⊕ δ = X · Exp(δ)`` of :mod:`posegraph.lie.geometry`.
_RETRACTIONS = {th.SE3: geometry.se3_retract, th.SE2: geometry.se2_retract}


def element_layout(element_cls: Type[th.Manifold]) -> Tuple[Tuple[int, ...], int]:
    """Return ``(element_shape, element_dof)`` for a supported Theseus manifold class."""
    try:
        return ELEMENT_LAYOUTS[element_cls]
    except KeyError:
        names = ", ".join(f"th.{c.__name__}" for c in ELEMENT_LAYOUTS)
        raise TypeError(
            f"ManifoldArray holds one of {names}; received {element_cls!r}"
        ) from None


class ManifoldArray(th.Manifold):
    """``N`` elements of one Theseus manifold class, batched: tensor ``(B, N, *element_shape)``.

    Args:
        tensor: ``(B, N, *element_shape)`` element tensors in Theseus' own layout
            (SE3: ``(3, 4)`` = ``[R | t]``; SE2: ``(4,)`` = ``[x, y, cos, sin]``; Point3: ``(3,)``).
        element_cls: ``th.SE3``, ``th.SE2``, ``th.Point3`` or ``th.Point2``.
        fixed: optional bool mask ``(N,)``; fixed elements get no tangent columns.
        name: variable name (unique within an objective).
    """

    def __init__(
        self,
        tensor: torch.Tensor,
        element_cls: Type[th.Manifold],
        fixed: Optional[torch.Tensor] = None,
        name: Optional[str] = None,
    ):
        shape, dof = element_layout(element_cls)
        if tensor.ndim != 2 + len(shape) or tuple(tensor.shape[2:]) != shape:
            raise ValueError(
                f"ManifoldArray {name!r} of th.{element_cls.__name__}: expected a tensor of "
                f"shape (B, N, {', '.join(map(str, shape))}), received {tuple(tensor.shape)}"
            )
        self.element_cls = element_cls
        self.element_shape = shape
        self.element_dof = dof
        n = tensor.shape[1]
        if fixed is None:
            fixed = torch.zeros(n, dtype=torch.bool)
        fixed = fixed.to(device="cpu", dtype=torch.bool)
        if fixed.shape != (n,):
            raise ValueError(
                f"ManifoldArray {name!r}: fixed mask must have shape ({n},), "
                f"received {tuple(fixed.shape)}"
            )
        self.fixed = fixed
        self.free_index = torch.nonzero(~fixed).flatten().to(tensor.device)
        # Skip Manifold.__init__'s per-element projection checks: inputs are validated by
        # the builder, and the packed layout is not the element class's own layout.
        th.Variable.__init__(self, tensor, name=name)

    # -- sizes ------------------------------------------------------------------------
    @property
    def num_elements(self) -> int:
        """Number of elements ``N`` (fixed ones included)."""
        return self.tensor.shape[1]

    @property
    def num_free(self) -> int:
        """Number of elements that own tangent columns."""
        return int(self.free_index.numel())

    def dof(self) -> int:
        """Tangent dimension: ``element_dof`` per free element."""
        return self.num_free * self.element_dof

    def column_of_element(self) -> torch.Tensor:
        """``(N,)`` long tensor: first tangent column of each element within this variable,
        ``-1`` for fixed elements."""
        cols = torch.full((self.num_elements,), -1, dtype=torch.long)
        cols[self.free_index.cpu()] = (
            torch.arange(self.num_free, dtype=torch.long) * self.element_dof
        )
        return cols

    # -- element access -----------------------------------------------------------------
    def elements(self, index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Tensors of the selected elements, ``(B, K, *element_shape)`` (all when index is None)."""
        return self.tensor if index is None else self.tensor[:, index]

    def as_element(self, tensor: torch.Tensor) -> th.Manifold:
        """Wrap ``(M, *element_shape)`` tensors as one batched element-class variable."""
        if issubclass(self.element_cls, th.Vector):  # points: no manifold checks to skip
            return self.element_cls(tensor=tensor)
        return self.element_cls(tensor=tensor, disable_checks=True)

    # -- th.Manifold interface ----------------------------------------------------------
    @staticmethod
    def _init_tensor(*args) -> torch.Tensor:  # pragma: no cover - never used (see __init__)
        return torch.empty(0)

    @staticmethod
    def _check_tensor_impl(tensor: torch.Tensor) -> bool:
        return True

    @staticmethod
    def normalize(tensor: torch.Tensor) -> torch.Tensor:
        """Returns ``tensor`` unchanged: packed poses are kept on the manifold by the retraction (Theseus' ``Manifold.normalize``)."""
        return tensor

    def _free_flat(self, batch: int) -> torch.Tensor:
        x = self.tensor.index_select(1, self.free_index)
        x = x.expand(batch, *x.shape[1:])
        return x.reshape(batch * self.num_free, *self.element_shape)

    def _retract_impl(self, delta: torch.Tensor) -> "ManifoldArray":
        batch = max(self.tensor.shape[0], delta.shape[0])
        retract = _RETRACTIONS.get(self.element_cls)
        if batch == 1 and retract is not None and native.applies([self.tensor, delta]):
            # one compiled pass: copy, and move the free elements (same values as below)
            new = native.retract_at(self.tensor, self.free_index, delta)
            return type(self)(new, self.element_cls, self.fixed, name=self.name)
        d = delta.expand(batch, -1).reshape(batch * self.num_free, self.element_dof)
        if retract is not None:  # hand-written X·Exp(δ), same result as the class's retract
            moved = retract(self._free_flat(batch), d)
        else:
            moved = self.as_element(self._free_flat(batch)).retract(d).tensor
        moved = moved.reshape(batch, self.num_free, *self.element_shape)
        base = self.tensor.expand(batch, *self.tensor.shape[1:])
        new = base.index_copy(1, self.free_index, moved)
        return type(self)(new, self.element_cls, self.fixed, name=self.name)

    def _local_impl(
        self, variable2: th.Manifold, jacobians: Optional[List[torch.Tensor]] = None
    ) -> torch.Tensor:
        if jacobians is not None:
            raise NotImplementedError("ManifoldArray.local does not return jacobians")
        assert isinstance(variable2, ManifoldArray)
        batch = max(self.tensor.shape[0], variable2.tensor.shape[0])
        a = self.as_element(self._free_flat(batch))
        b = self.as_element(variable2._free_flat(batch))
        return a.local(b).reshape(batch, self.dof())

    def _project_impl(
        self, euclidean_grad: torch.Tensor, is_sparse: bool = False
    ) -> torch.Tensor:
        batch = euclidean_grad.shape[0]
        grad = euclidean_grad.index_select(1, self.free_index).reshape(
            batch * self.num_free, *self.element_shape
        )
        proj = self.as_element(self._free_flat(batch)).project(grad)
        return proj.reshape(batch, self.dof())

    def _copy_impl(self, new_name: Optional[str] = None) -> "ManifoldArray":
        return ManifoldArray(self.tensor.clone(), self.element_cls, self.fixed, name=new_name)

    def to(self, *args, **kwargs):
        """Moves the poses (Theseus' ``Variable.to``) and the index of free poses with them."""
        super().to(*args, **kwargs)
        self.free_index = self.free_index.to(self.tensor.device)
        return self


def element_columns(var: th.Manifold) -> torch.Tensor:
    """First tangent column of each element of ``var`` within it, ``-1`` for fixed elements:
    :meth:`ManifoldArray.column_of_element`, or ``[0]`` for any other variable (one element
    owning all its columns)."""
    if isinstance(var, ManifoldArray):
        return var.column_of_element()
    return torch.zeros(1, dtype=torch.long)


def element_dof(var: th.Manifold) -> int:
    """Tangent columns of one element of ``var``: ``var.element_dof`` for a ManifoldArray, the
    whole ``var.dof()`` for any other variable (one element)."""
    return var.element_dof if isinstance(var, ManifoldArray) else var.dof()
