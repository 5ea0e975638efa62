"""The builder's input checks, shared by its two entrances (:class:`~posegraph.model.builder.PoseGraphBuilder`
and :func:`~posegraph.model.build.build_problem`): class, tensor shape as Theseus defines it,
batch size, dtype and device agreed by every input (:class:`_Consensus`), information
matrices, names. Each failure is a :class:`BuilderError` naming the argument, what was
expected and what was received.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple
import numpy as np
import theseus as th
import torch
from posegraph.errors import PoseGraphError
from posegraph.graph import POSE_KINDS
from posegraph.information import PSD_TOLERANCE, first_oversized, information_bound
from posegraph.lie.rotation_rule import _flat, check_rotations, refuse_rotations
from posegraph.model.variables import element_layout


_KIND_OF_CLASS = {cls: kind for kind, (cls, _, _) in POSE_KINDS.items()}


class BuilderError(PoseGraphError, TypeError):
    """Invalid input to the builder (a TypeError and a ValueError, for either ``except``)."""


def _shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _type_name(value: object) -> str:
    """``th.SE3``, ``torch.Tensor``, ``numpy.ndarray``, ``list``… for messages."""
    cls = type(value)
    module = cls.__module__.split(".")[0]
    if module == "theseus":
        return f"th.{cls.__name__}"
    return cls.__name__ if module == "builtins" else f"{module}.{cls.__name__}"


class _Consensus:
    """dtype, device and batch size every tensor of one graph must agree on.

    With ``batch`` given the batch size is fixed (:meth:`fix` may set it once more, from the
    first pose): every batched tensor has that batch size or 1. Without it, the first batch
    size other than 1 sets it (``build_problem`` and the layer, whose tensors are explicit).
    """

    def __init__(self, dtype: Optional[torch.dtype], device: Optional[torch.device], batch: Optional[int] = None):
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        self.fixed = batch is not None
        self.batch = 1 if batch is None else int(batch)
        self.batch_from: Optional[str] = None
        self.advice = ""

    def fix(self, batch: int, origin: str, advice: str = "") -> None:
        """Fix the batch size to ``batch``, set by ``origin`` (for messages)."""
        self.fixed, self.batch, self.batch_from, self.advice = True, int(batch), origin, advice

    def check(self, what: str, tensor: torch.Tensor, batched: bool = True, received: str = "", hint: str = "") -> None:
        """Refuse ``tensor`` (named ``what``) unless its batch size (leading dimension, when
        ``batched``), dtype and device agree with the others'; an empty batch is refused."""
        if batched and tensor.ndim:
            _check_batch_not_empty(what, tensor)
        if batched and self.fixed and tensor.ndim and tensor.shape[0] not in (1, self.batch):
            # first: a batch explosion matters more than a dtype
            expected = "1" if self.batch == 1 else f"{self.batch} or 1"
            raise BuilderError(
                f"{what}: expected batch size {expected} ({self.batch_from}{self.advice}), received "
                f"{received or 'a tensor'} of shape {_shape_str(tensor.shape)}{hint}"
            )
        if not tensor.is_floating_point():
            raise BuilderError(f"{what}: expected a floating-point tensor, received {tensor.dtype}")
        if self.dtype is None:
            self.dtype = tensor.dtype
        elif tensor.dtype != self.dtype:
            raise BuilderError(f"{what}: expected dtype {self.dtype}, received {tensor.dtype}")
        if self.device is None:
            self.device = tensor.device
        elif tensor.device != self.device:
            raise BuilderError(f"{what}: expected device {self.device}, received {tensor.device}")
        if not batched:
            return
        b = tensor.shape[0]
        if self.fixed:
            return
        if b != 1 and self.batch != 1 and b != self.batch:
            raise BuilderError(
                f"{what}: expected batch size {self.batch} (as {self.batch_from}) or 1, "
                f"received {b}"
            )
        if b != 1 and self.batch == 1:
            self.batch, self.batch_from = b, what


def _check_batch_not_empty(what: str, tensor: torch.Tensor) -> None:
    """Refuse a tensor of batch size 0 (leading dimension), naming ``what``: there would be no
    problem to solve, and torch's reductions over it fail deep inside the checks and the solve."""
    if tensor.shape[0] == 0:
        raise BuilderError(
            f"{what}: expected batch size ≥ 1, received 0 (a tensor of shape {_shape_str(tensor.shape)})"
        )


def _check_class(var: object, expected: Sequence[type], what: str) -> None:
    if type(var) not in expected:
        names = " or ".join(f"th.{c.__name__}" for c in expected)
        got = type(var).__module__.split(".")[0] + "." + type(var).__name__
        hint = ""
        if isinstance(var, th.Variable) and th.Point3 in expected:
            hint = (
                f"; a {type(var).__name__} of tensor shape {_shape_str(var.tensor.shape)} would "
                "have its first dimension read as the batch size"
            )
        name = getattr(var, "name", None)
        raise BuilderError(
            f"{what}{' ' + repr(name) if name else ''}: expected {names}, received {got}{hint}"
        )


def _check_element_tensor(tensor: torch.Tensor, cls: type, what: str, stacklevel: int = 1) -> torch.Tensor:
    """Shape ``(batch, *element shape)`` and finite values; for poses, the rotation rule
    (:func:`posegraph.lie.check_rotations`): returns ``tensor``, or a copy with the rotations
    beyond their precision made rotations (one warning; ``stacklevel``: frames above the
    caller it points at). Rotations that cannot be made ones are refused."""
    shape, _ = element_layout(cls)
    if tensor.ndim != 1 + len(shape) or tuple(tensor.shape[1:]) != shape:
        raise BuilderError(
            f"{what}: expected a th.{cls.__name__} tensor of shape (batch, "
            f"{', '.join(map(str, shape))}), received {_shape_str(tensor.shape)}"
        )
    _check_batch_not_empty(what, tensor)
    if not tensor.is_floating_point():
        raise BuilderError(f"{what}: expected a floating-point tensor, received {tensor.dtype}")
    if not _all_finite(tensor):
        raise BuilderError(f"{what}: tensor has non-finite values")
    if cls not in (th.SE3, th.SE2):
        return tensor
    batched = tensor.shape[0] > 1
    return check_rotations(
        tensor, _KIND_OF_CLASS[cls], lambda k: f"{what} (batch element {k})" if batched else what,
        error=BuilderError, stacklevel=stacklevel + 1,
    )


def _layer_element(what: str, tensor: torch.Tensor, batch: int, b: int, k: int) -> str:
    """``"problem b, pose k"`` (``"edge k"`` for other inputs than ``poses``) in ``tensor``
    ``(B|1, K, …)``, an input of :class:`~posegraph.solve.layer.PoseGraphLayer` (a tensor of
    batch 1 in a batch of ``batch`` > 1 is shared by every problem)."""
    noun = "pose" if what == "poses" else "edge"
    shared = " (shared by every problem)" if tensor.shape[0] == 1 and batch > 1 else ""
    return f"problem {b}{shared}, {noun} {k}"


def _check_finite(what: str, tensor: torch.Tensor, batch: int) -> None:
    """Refuse non-finite values in ``tensor`` ``(B|1, K, …)`` (an input of
    :class:`~posegraph.solve.layer.PoseGraphLayer`), naming the first problem and pose or edge
    that has one (:func:`_layer_element`)."""
    if torch.isfinite(tensor).all():
        return
    bad = ~torch.isfinite(tensor.detach()).reshape(tensor.shape[0], tensor.shape[1], -1).all(-1)
    b, k = (int(v) for v in torch.nonzero(bad)[0])
    raise BuilderError(f"{what}: non-finite values in {_layer_element(what, tensor, batch, b, k)}")


def _check_rotations(what: str, tensor: torch.Tensor, kind: str, batch: int) -> None:
    """Refuse the rotations the rotation rule refuses
    (:func:`~posegraph.lie.rotation_rule.refused_rotations`: ``(cos, sin) = (0, 0)``,
    ``det R ≤ 0``) in ``tensor`` ``(B|1, K, …)`` (poses or measurements of
    :class:`~posegraph.solve.layer.PoseGraphLayer`), naming the first problem and pose or
    edge, as the builder does; one batched pass in torch, on the inputs' device. Rotations are
    used as given otherwise (no projection: gradients flow to them)."""
    def name(k: int) -> str:
        return f"{what}: {_layer_element(what, tensor, batch, *divmod(k, tensor.shape[1]))}"

    refuse_rotations(tensor, kind, name, error=BuilderError)


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether every number of ``tensor`` is finite; one problem's tensor (batch 1, the
    per-call case) is summed in plain Python (a sum that overflows falls back to torch)."""
    if tensor.shape[0] == 1 and math.isfinite(sum(_flat(tensor.tolist()))):
        return True
    return bool(torch.isfinite(tensor).all())


def _one_information_accepted(rows: List[List[float]], bound: float) -> bool:
    """Whether one information matrix passes every check of :func:`_check_information` —
    finite, entries within ``bound``, not all zeros, symmetric to 1e-9, and positive definite
    by a Cholesky factorization (which proves it PSD within
    :data:`~posegraph.information.PSD_TOLERANCE`, as in
    :func:`~posegraph.information.psd_smallest_eigenvalues`) — in plain Python: the builder
    checks one matrix per call, where torch's calls on a 6×6 array cost ~4× more. False sends
    it to the batched checks, which accept it (PSD, singular) or name its problem."""
    d = len(rows)
    flat = [v for row in rows for v in row]
    if not math.isfinite(sum(flat)):
        return False
    largest = max(map(abs, flat))
    if not 0.0 < largest <= bound:
        return False
    asymmetry = 1e-9 * max(1.0, largest)
    if any(abs(rows[i][j] - rows[j][i]) > asymmetry for i in range(d) for j in range(i)):
        return False
    lower = [[0.0] * d for _ in range(d)]  # Cholesky (column by column), on the lower triangle
    for j in range(d):
        lj = lower[j]
        pivot = rows[j][j] - sum(v * v for v in lj[:j])
        if not pivot > 0.0:
            return False
        lj[j] = root = math.sqrt(pivot)
        for i in range(j + 1, d):
            li = lower[i]
            li[j] = (rows[i][j] - sum(a * b for a, b in zip(li[:j], lj[:j]))) / root
    return True


def _check_information(info: torch.Tensor, dof: int, what: str, noun: Optional[str] = None) -> torch.Tensor:
    """(d, d) or (B, d, d) symmetric PSD information → (B, d, d). ``noun``: what all-zero
    information would leave without effect (refused; the builder's calls), or None (the
    layer's batch of every edge's matrix: accepted). One matrix is checked in plain Python
    (:func:`_one_information_accepted`); the others, and any it does not accept, here."""
    received = info.shape
    if info.ndim == 2:
        info = info.unsqueeze(0)
    if info.ndim != 3 or tuple(info.shape[1:]) != (dof, dof):
        raise BuilderError(
            f"{what}: expected information of shape ({dof}, {dof}) or (batch, {dof}, {dof}), "
            f"received {_shape_str(received)}"
        )
    if not info.is_floating_point():
        raise BuilderError(f"{what}: expected a floating-point tensor, received {info.dtype}")
    _check_batch_not_empty(what, info)
    if info.shape[0] == 1 and _one_information_accepted(info.tolist()[0], information_bound(info.dtype)):
        return info
    if not torch.isfinite(info).all():
        raise BuilderError(f"{what}: information has non-finite values")
    over = first_oversized(info.detach(), information_bound(info.dtype))
    if over is not None:
        raise BuilderError(f"{what}: {_oversized_message(over, info.dtype)}")
    sym_err = (info - info.transpose(-1, -2)).abs().max()
    if sym_err > 1e-9 * max(1.0, float(info.abs().max())):
        raise BuilderError(f"{what}: information must be symmetric (asymmetry {float(sym_err):.3g})")
    lam = torch.linalg.eigvalsh(info.detach().double())  # (finite: entries are within the bound)
    if (lam[:, 0] < -PSD_TOLERANCE * lam.abs().max(dim=1).values.clamp_min(1.0)).any():
        raise BuilderError(
            f"{what}: information must be positive semidefinite "
            f"(smallest eigenvalue {float(lam[:, 0].min()):.6g})"
        )
    if noun is not None and not bool(info.any()):
        raise BuilderError(
            f"{what}: received all zeros, which would give the {noun} no effect; leave it out, "
            "or give a positive semidefinite matrix that is not zero"
        )
    return info


def _oversized_message(over: Tuple[int, int, int, float], dtype: torch.dtype) -> str:
    """Message for :func:`~posegraph.information.first_oversized`'s finding."""
    _, row, col, value = over
    return (
        f"information entry (row {row}, column {col}) is {value:.6g}; expected a finite "
        f"magnitude ≤ {information_bound(dtype):.0e} in {str(dtype).replace('torch.', '')} "
        "(larger information overflows the cost and its normal equations)"
    )


def _check_graph_information(
    info: torch.Tensor, dtype: torch.dtype, source: Optional[str], name, lines: Optional[Sequence[int]]
) -> None:
    """Refuse non-finite information, or entries beyond the bound of the solve's ``dtype``
    (:func:`~posegraph.information.information_bound`), naming the edge (``name(k)``) and its
    line. One vectorized pass over ``info`` ``([B,] E, d, d)``."""
    over = first_oversized(info.detach(), information_bound(dtype))
    if over is not None:
        k = over[0]
        raise PoseGraphError(
            f"{name(k)}: {_oversized_message(over, dtype)}", source, lines[k] if lines else None
        )


def _as_tensor(value: object, what: str, dtype: Optional[torch.dtype] = None, device=None) -> torch.Tensor:
    """The tensor of a tensor or ``th.Variable``; NumPy arrays and scalars, (nested) lists and
    tuples of numbers are converted (to ``dtype``/``device`` when given; float64 otherwise).
    Anything else — bools, strings, ragged lists — is a BuilderError naming ``what``."""
    if isinstance(value, th.Variable):
        return value.tensor
    if isinstance(value, torch.Tensor):
        return value
    if not isinstance(value, (np.ndarray, np.generic, list, tuple, int, float)) or isinstance(value, (bool, np.bool_)):
        raise BuilderError(f"{what}: expected a tensor, a th.Variable, a NumPy array or a list of numbers, received {_type_name(value)}")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        array = None
    if array is None or array.dtype.kind not in "fiu":
        raise BuilderError(
            f"{what}: expected numbers, received a {_type_name(value)} that is not a rectangular array of numbers"
            + ("" if array is None else f" ({array.dtype})")
        )
    if dtype is None:
        dtype = torch.float32 if array.dtype == np.float32 else torch.float64
    return torch.as_tensor(array.astype(np.float64), device=device).to(dtype)


def _lookup(ref: object, items: Sequence[th.Variable], index: Dict[str, int], noun: str, what: str) -> int:
    """Position of a variable given by object, name or position (a Python or NumPy integer)
    among ``items``; a bool is not a position."""
    if isinstance(ref, (bool, np.bool_)):
        raise BuilderError(f"{what}: expected a {noun} (variable, name or index), received the bool {ref!r}")
    if isinstance(ref, (int, np.integer)):
        ref = int(ref)
        if not 0 <= ref < len(items):
            raise BuilderError(f"{what}: expected a {noun} index in [0, {len(items)}), received {ref}")
        return ref
    if not isinstance(ref, (str, th.Variable)):
        raise BuilderError(f"{what}: expected a {noun} (variable, name or index), received {_type_name(ref)}")
    name = ref if isinstance(ref, str) else getattr(ref, "name", None)
    if name not in index or (not isinstance(ref, str) and items[index[name]] is not ref):
        raise BuilderError(f"{what}: refers to {name!r}, which is not a {noun} added to this builder")
    return index[name]


def _optional_name(name: object, what: str) -> Optional[str]:
    """``name`` when it is None or a non-empty str, else a BuilderError."""
    if name is not None and (not isinstance(name, str) or not name):
        raise BuilderError(f"{what} name: expected a non-empty str, received {_type_name(name)} {repr(name)[:40]}")
    return name
