"""Theseus' rotation → quaternion conversions replaced by the stable ones of
:mod:`posegraph.lie.rotations` (``SO3.to_quaternion``, ``SE3.to_x_y_z_quaternion``), and back.

:func:`patch_theseus` swaps the methods on the classes (thread-safe, idempotent),
:func:`unpatch_theseus` restores exactly what was there, :func:`theseus_patched` does both
around a block. Why: see :mod:`posegraph.lie.rotations` (upstream Theseus issue #670).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Dict, Iterator, List, Tuple
import torch
from torch import Tensor
from posegraph.lie.rotations import matrix_to_quaternion


def _stable_so3_to_quaternion(self: Any) -> Tensor:
    """Stable replacement for ``theseus.SO3.to_quaternion`` (installed by ``patch_theseus``).

    Same semantics as the original: returns a new ``(batch, 4)`` tensor,
    ``[w x y z]`` convention, ``w >= 0``; computed with
    :func:`posegraph.lie.matrix_to_quaternion`.
    """
    return matrix_to_quaternion(self.tensor)


def _stable_se3_to_x_y_z_quaternion(self: Any) -> Tensor:
    """Stable replacement for ``theseus.SE3.to_x_y_z_quaternion`` (installed by ``patch_theseus``).

    Same semantics as the original: a new ``(batch, 7)`` tensor
    ``[x, y, z, qw, qx, qy, qz]`` (Theseus' layout, scalar first -- *not*
    g2o's, see :func:`se3_to_g2o`).
    """
    T = self.tensor
    return torch.cat([T[..., :, 3], matrix_to_quaternion(T[..., :, :3])], dim=-1)


def _patch_targets() -> List[Tuple[type, str, Callable[..., Tensor]]]:
    """(class, attribute, replacement) triples; imports Theseus lazily."""
    import theseus as th

    return [
        (th.SO3, "to_quaternion", _stable_so3_to_quaternion),
        (th.SE3, "to_x_y_z_quaternion", _stable_se3_to_x_y_z_quaternion),
    ]


_MISSING = object()


_lock = threading.RLock()


# (class, attribute) -> what was in the class __dict__ before patching.
_originals: Dict[Tuple[type, str], Any] = {}


def is_theseus_patched() -> bool:
    """True if every stable replacement is currently installed on Theseus."""
    with _lock:
        return all(
            cls.__dict__.get(name) is new for cls, name, new in _patch_targets()
        )


def patch_theseus() -> None:
    """Install the stable conversions on Theseus' classes (idempotent).

    Replaces ``theseus.SO3.to_quaternion`` and
    ``theseus.SE3.to_x_y_z_quaternion`` (whose original already routes
    through ``SO3.to_quaternion``; it is replaced too so it does not depend
    on that detail).  Only these methods are swapped; no Theseus code is
    copied.  Calling it again while patched does nothing.  Process-global:
    affects every thread and every user of Theseus until
    :func:`unpatch_theseus`.
    """
    with _lock:
        for cls, name, new in _patch_targets():
            current = cls.__dict__.get(name, _MISSING)
            if current is new:
                continue
            _originals[(cls, name)] = current
            setattr(cls, name, new)


def unpatch_theseus() -> None:
    """Restore the original Theseus methods (the same function objects).

    Harmless if not patched.  An attribute that someone else replaced after
    :func:`patch_theseus` (i.e. no longer ours) is left alone.
    """
    with _lock:
        for cls, name, new in _patch_targets():
            key = (cls, name)
            if key not in _originals:
                continue
            original = _originals.pop(key)
            if cls.__dict__.get(name, _MISSING) is not new:
                continue
            if original is _MISSING:
                delattr(cls, name)
            else:
                setattr(cls, name, original)


@contextlib.contextmanager
def theseus_patched() -> Iterator[None]:
    """Context manager: patch Theseus on entry, restore the prior state on exit.

    Nests correctly: if Theseus was already patched on entry, it stays
    patched on exit.
    """
    with _lock:
        was_patched = is_theseus_patched()
        patch_theseus()
    try:
        yield
    finally:
        if not was_patched:
            unpatch_theseus()
