"""posegraph's compiled loops: the hot kernels of :mod:`posegraph.geometry` and the assembly
of the normal matrix (:mod:`posegraph.solve.normal`), on float64 CPU data.

``posegraph/lie/_native_geometry.c`` holds one loop per kernel that computes an element's whole
result — the same formulas and branches as the Python kernel of the same name — in registers.
The Python kernels are chains of tens of array operations, each one pass over memory with a
fixed per-call cost: on sphere2500's 4,949 edges the logarithm, ``J_r⁻¹`` and the adjoint
product take ~8 ms a linearization that way and under 1 ms compiled. For one graph whose edges
carry full information weights, :func:`between_weighted_error` and
:func:`between_weighted_jacobians` fuse those kernels with the weighting (and the gather of the
edges' poses; :func:`between_weighted_jacobians_into` writes the Jacobians straight to A's CSR
values and adds up ``Aᵀb``), :func:`retract_at` the retraction of the free poses with the copy of the rest:
the same arithmetic in one call, where each wrapper costs more than a small graph's loop.
``posegraph/_native_normal.c`` adds each residual block's Gram entries into ``AᵀA`` in one pass
(the array route gathers, multiplies in a batch, gathers and scatters).

Both are built when posegraph is installed (``setup.py``). They are optional: without a C
compiler the install goes on and posegraph computes the same on NumPy or torch.
:data:`AVAILABLE` says whether they loaded; setting :data:`ENABLED` to False turns the compiled
route off everywhere (to compare routes, or to rule it out while debugging).
Measured (docs/performance.md, 'What each speed mechanism pays'): the compiled route saves 56–140% of an iteration
(parking-garage 140%, smallGrid3D 102%, intel 75%, sphere2500 73%, manhattan 56%).

The geometry functions here take and return tensors; :func:`applies` says whether they may be
used (every tensor float64, on CPU, with no gradient to record). Inputs are broadcast over
their leading shapes and made contiguous; outputs are new tensors.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

try:
    from posegraph.lie import _native_geometry as _lib
    from posegraph.lie import _native_normal as _normal_lib
except ImportError:  # installed without a C compiler: the array routes only
    _lib = _normal_lib = None

#: Whether the compiled extensions loaded.
AVAILABLE: bool = _lib is not None
#: Whether posegraph uses them (where they apply).
ENABLED: bool = True


#: A tensor, or a NumPy array of the same data (for the inputs a caller keeps prepared).
Array = Union[Tensor, np.ndarray]


def enabled() -> bool:
    """Whether the compiled route is loaded and turned on."""
    return AVAILABLE and ENABLED


def plain_cpu_tensors(
    tensors: Sequence[object], dtypes: Sequence[torch.dtype], max_elements: Optional[int] = None
) -> bool:
    """Whether ``tensors`` may be read as plain arrays: all CPU tensors of one dtype among
    ``dtypes``, none over ``max_elements`` elements (when given), with no gradient to record.
    The test of both the compiled route (:func:`applies`) and
    :mod:`posegraph.lie.geometry`'s NumPy route."""
    first = tensors[0]
    if not isinstance(first, Tensor) or first.dtype not in dtypes:
        return False
    grad = torch.is_grad_enabled()
    for t in tensors:
        if not isinstance(t, Tensor) or not t.is_cpu or t.dtype != first.dtype:
            return False
        if (grad and t.requires_grad) or (max_elements is not None and t.numel() > max_elements):
            return False
    return True


def applies(tensors: Sequence[object]) -> bool:
    """Whether the compiled loops may compute a kernel on ``tensors``: the extension is
    loaded and enabled, and every argument is a float64 CPU tensor with no gradient to
    record (autograd needs the array routes' operations)."""
    return enabled() and plain_cpu_tensors(tensors, (torch.float64,))


def _lead(t: Tensor, element: Tuple[int, ...]) -> torch.Size:
    """``t``'s leading shape: all but its last ``len(element)`` dimensions."""
    return t.shape[: t.dim() - len(element)]


def _inputs(tensors: Sequence[Tensor], element_shapes: Sequence[Tuple[int, ...]]):
    """``tensors`` broadcast over their leading shapes (each keeps its element shape), made
    contiguous; with the common leading shape."""
    leads = [_lead(t, s) for t, s in zip(tensors, element_shapes)]
    lead = leads[0]
    if any(other != lead for other in leads[1:]):  # (torch.broadcast_shapes costs ~50 µs)
        lead = torch.broadcast_shapes(*leads)
    out = []
    for t, t_lead, shape in zip(tensors, leads, element_shapes):
        if t.requires_grad:
            t = t.detach()
        if t_lead != lead:
            t = t.expand(*lead, *shape)
        out.append(t.contiguous())
    return out, lead


def _np(t: Tensor):
    return t.numpy()


def between_log_parts(
    xi: Tensor, xj: Tensor, z: Tensor, element: Tuple[int, ...]
) -> Optional[Tuple[Tensor, Tensor, Tuple[Tensor, ...]]]:
    """``(e, Xᵢ⁻¹Xⱼ, log scalars)`` of ``e = Log(Z⁻¹ Xᵢ⁻¹ Xⱼ)``; ``element``: ``(3, 4)`` for
    SE(3) (scalars ``θ², sin θ, cos θ, α, β``) or ``(4,)`` for SE(2) (scalar ``α``).

    ``None`` when ``z`` has more leading entries than ``Xᵢ`` and ``Xⱼ`` together (the array
    routes then return ``Xᵢ⁻¹Xⱼ`` unbroadcast, which one loop over all elements does not)."""
    pair = (_lead(xi, element), _lead(xj, element))
    if _lead(z, element) != pair[0] and torch.broadcast_shapes(*pair, _lead(z, element)) != torch.broadcast_shapes(*pair):
        return None
    (xi, xj, z), lead = _inputs((xi, xj, z), (element,) * 3)
    se3 = element == (3, 4)
    err = xi.new_empty(*lead, 6 if se3 else 3)
    rel = torch.empty_like(xi)
    scalars = xi.new_empty(5 if se3 else 1, *lead)
    rows = scalars.unbind(0)
    (_lib.se3_between_log_parts if se3 else _lib.se2_between_log_parts)(*(_np(t) for t in (xi, xj, z, err, rel, *rows)))
    return err, rel, rows


def right_jacobian_inv(xi: Tensor, scalars: Sequence[Tensor]) -> Tensor:
    """``J_r⁻¹(ξ)`` from ``ξ`` and the scalars :func:`between_log_parts` returned with it."""
    dof = xi.shape[-1]
    (xi, *scalars), lead = _inputs((xi, *scalars), ((dof,),) + ((),) * len(scalars))
    out = xi.new_empty(*lead, dof, dof)
    arrays = [_np(xi)] + [_np(s) for s in scalars] + [_np(out)]
    (_lib.se3_jr_inv if dof == 6 else _lib.se2_jr_inv)(*arrays)
    return out


def mul_adjoint_inverse(m: Tensor, rel: Tensor) -> Tensor:
    """``M · Ad(rel⁻¹)`` for ``M`` ``(..., k, dof)``."""
    se3 = m.shape[-1] == 6
    element = (3, 4) if se3 else (4,)
    k = m.shape[-2]
    (m, rel), lead = _inputs((m, rel), ((k, m.shape[-1]), element))
    out = torch.empty_like(m)
    (_lib.se3_mul_adjoint_inverse if se3 else _lib.se2_mul_adjoint_inverse)(_np(m), _np(rel), k, _np(out))
    return out


def retract(x: Tensor, delta: Tensor) -> Tensor:
    """``X · Exp(δ)`` (SE(3) when ``δ`` has 6 entries, SE(2) with 3)."""
    se3 = delta.shape[-1] == 6
    element = (3, 4) if se3 else (4,)
    (x, delta), _ = _inputs((x, delta), (element, delta.shape[-1:]))
    out = torch.empty_like(x)
    (_lib.se3_retract if se3 else _lib.se2_retract)(_np(x), _np(delta), _np(out))
    return out


def as_array(t: Array) -> np.ndarray:
    """A contiguous NumPy array of ``t`` (a view of a contiguous CPU tensor; arrays as they
    are, for inputs a caller keeps prepared)."""
    if isinstance(t, np.ndarray):
        return np.ascontiguousarray(t)
    if t.requires_grad or not t.is_contiguous():
        t = t.detach().contiguous()
    return t.numpy()


def _packed(scalars: Union[Tensor, Sequence[Tensor]]) -> Tensor:
    """The log scalars as one ``(k, ...)`` tensor (:class:`~posegraph.lie.geometry.BetweenLogParts`
    holds them either way)."""
    return scalars if isinstance(scalars, Tensor) else torch.stack(list(scalars))


def between_weighted_error(
    poses: Tensor, ends_i: Array, ends_j: Array, z: Array, w: Array, element: Tuple[int, ...]
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``e = Log(Z⁻¹ Xᵢ⁻¹ Xⱼ)`` per edge with what :func:`between_log_parts` returns, and
    ``W e``, in one pass that gathers the endpoints itself, for one graph: ``poses`` ``(1, N,
    *element)``, ``ends_i``/``ends_j`` ``(E,)`` element indices, ``z`` ``(1, E, *element)``,
    ``w`` ``(1, E, d, d)`` (all but ``poses`` may be NumPy arrays: a cost keeps its fixed inputs
    prepared). Returns ``(e, Xᵢ⁻¹Xⱼ, log scalars, W e)`` with the same values, bit for bit, as
    :func:`between_log_parts` gives, and ``W e`` summed in index order — the log scalars stacked
    in one ``(k, 1, E)`` tensor, which unpacks into :func:`between_log_parts`' ``k``."""
    se3 = element == (3, 4)
    edges = ends_i.shape[0]
    dof = 6 if se3 else 3
    err, werr = torch.empty(1, edges, dof, dtype=torch.float64), torch.empty(1, edges, dof, dtype=torch.float64)
    rel = torch.empty(1, edges, *element, dtype=torch.float64)
    scalars = torch.empty(5 if se3 else 1, 1, edges, dtype=torch.float64)
    inputs = (as_array(t) for t in (poses, ends_i, ends_j, z, w))
    _lib.between_weighted_error(se3, *inputs, *(t.numpy() for t in (err, rel, scalars, werr)))
    return err, rel, scalars, werr


def between_weighted_jacobians(
    err: Tensor, scalars: Union[Tensor, Sequence[Tensor]], rel: Tensor, w: Array
) -> Tuple[Tensor, Tensor]:
    """``(−W J Ad(rel⁻¹), W J)`` with ``J = J_r⁻¹(e)`` per edge — the weighted between
    Jacobians ``∂(We)/∂δᵢ`` and ``∂(We)/∂δⱼ`` — in one pass, from ``e`` ``(..., d)``, the log
    scalars (a sequence, or stacked in one tensor) and ``rel`` that :func:`between_log_parts`
    returns, and ``w`` ``(..., d, d)`` of the same leading shape (the same values as the
    separate kernels, bit for bit, with ``W``'s products summed in index order)."""
    dof = err.shape[-1]
    lead = err.shape[:-1]
    out_i, out_j = err.new_empty(*lead, dof, dof), err.new_empty(*lead, dof, dof)
    inputs = (as_array(t) for t in (err, _packed(scalars), rel, w))
    _lib.between_weighted_jacobians(dof == 6, *inputs, out_i.numpy(), out_j.numpy())
    return out_i, out_j


def between_weighted_jacobians_into(
    err: Tensor, scalars: Union[Tensor, Sequence[Tensor]], rel: Tensor, w: Array,
    rows_i: np.ndarray, rows_j: np.ndarray, cols_i: np.ndarray, cols_j: np.ndarray, out: np.ndarray,
    werr: Optional[Array] = None, atb: Optional[np.ndarray] = None,
) -> None:
    """:func:`between_weighted_jacobians` written straight to A's CSR values ``out`` (float64,
    in place), without the block tensors: edge ``k``'s block ``∂(We)/∂δᵢ`` has its row ``r``
    at ``out[rows_i[d·k + r]]`` onward (``d`` consecutive slots) and its first column at
    ``cols_i[k]``, ``−1`` for a block that is not A's (a fixed element: not written); likewise
    ``∂(We)/∂δⱼ``. ``rows_*``: int64 ``(E·d,)``, ``cols_*``: int64 ``(E,)``.

    With ``atb`` (float64, one value per column of A, in place) and ``werr`` (``W e``) also adds
    these rows' share of ``Aᵀb``, ``b = −W e``, to ``atb``, A's rows in turn.

    Measured (docs/performance.md, 'What each speed mechanism pays'): writing the blocks in place
    with ``Aᵀb`` saves 4.8–15.0% of an iteration (parking-garage 15.0%, smallGrid3D 10.6%, intel
    7.9%).
    """
    inputs = [as_array(t) for t in (err, _packed(scalars), rel, w)]
    with_atb = (_EMPTY, _EMPTY) if atb is None else (as_array(werr), atb)
    _lib.between_weighted_jacobians_into(err.shape[-1] == 6, *inputs, rows_i, rows_j, cols_i, cols_j, out, *with_atb)


_EMPTY = np.empty(0)


def retract_at(x: Tensor, free: Tensor, delta: Tensor) -> Tensor:
    """``x`` with its elements ``free`` moved to ``X · Exp(δ)``, for one batch element: ``x``
    ``(1, N, *element)``, ``free`` ``(F,)`` element indices, ``δ`` ``(1, F·dof)`` (SE(3) when
    elements are ``(3, 4)``, SE(2) with ``(4,)``); the same values as :func:`retract` on the
    selected elements, bit for bit.

    Measured (docs/performance.md, 'What each speed mechanism pays'): saves 3.9% of an iteration on
    smallGrid3D (intel 2.8%, manhattan 1.9%).
    """
    out = torch.empty(x.shape, dtype=torch.float64)
    _lib.retract_at(x.dim() == 4, *(as_array(t) for t in (x, free, delta)), out.numpy())
    return out


def gram_scatter(
    a: np.ndarray, start: np.ndarray, ia: np.ndarray, ib: np.ndarray, slots: np.ndarray, d: int, width: int,
    out: np.ndarray,
) -> None:
    """``out[slots[g, p]] += Σ_r S_g[r, ia[p]] S_g[r, ib[p]]`` for the residual blocks ``g``
    whose ``d × width`` values ``S_g`` start at ``a[start[g]]`` (row-major), in place.
    ``a``, ``out``: float64; ``start``, ``ia``, ``ib``, ``slots`` ``(G, P)``: int64, contiguous.

    Measured (docs/performance.md, 'What each speed mechanism pays'): saves 20.9% of an iteration
    on sphere2500, 41.3% on parking-garage, 5.9% on smallGrid3D.
    """
    _normal_lib.gram_scatter(a, start, ia, ib, slots, d, width, out)
