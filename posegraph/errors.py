"""Errors for bad input: each names the file, the line where one line is at fault, and what is
wrong (expected vs received)."""

from __future__ import annotations

import os
from typing import Any, Optional


#: tokens echoed in error messages are cut to this many characters (:func:`shown`)
SHOWN_TOKEN_CHARS = 80


def shown(token: object, limit: int = SHOWN_TOKEN_CHARS) -> str:
    """``repr(token)`` for an error message, cut to about ``limit`` characters: a longer token
    shows its first ``limit`` characters, an ellipsis and its length, e.g.
    ``'1111…' (5000 characters)``, so that one bad token cannot make a one-line error
    megabytes long."""
    if isinstance(token, str) and len(token) > limit:
        return f"{token[:limit]!r}"[:-1] + f"…{repr(token)[-1]} ({len(token)} characters)"
    text = repr(token)
    if len(text) > limit + 2:  # lists, bytes: cut their representation
        return f"{text[:limit]}… ({len(text)} characters)"
    return text


class PoseGraphError(ValueError):
    """Bad input: a file, a graph, or variables handed to the builder.

    ``str(err)`` is ``"FILE:LINE: message"`` (``FILE`` and ``LINE`` when known), the form the
    CLI prints after ``error:``.
    """

    def __init__(self, message: str, path: Optional[str] = None, line: Optional[int] = None):
        self.message = message
        self.path = path
        self.line = line
        super().__init__(self._format())

    def _format(self) -> str:
        where = ""
        if self.path is not None:
            where = f"{self.path}:{self.line}: " if self.line is not None else f"{self.path}: "
        return where + self.message


class G2oFormatError(PoseGraphError):
    """A g2o file that cannot be read as a pose graph."""


class TrajectoryFormatError(PoseGraphError):
    """A trajectory file (TUM, KITTI) that cannot be read, or a trajectory that cannot be
    written in the format asked for."""


class GraphStructureError(PoseGraphError):
    """A graph whose structure cannot be optimized (disconnected edge-only graph, no edges…)."""


class DeviceError(PoseGraphError):
    """A device the solve cannot run on: CUDA asked for where torch has none, a CUDA index
    beyond the devices present, or a device type other than ``cpu`` and ``cuda``."""


def check_integer(what: str, value: Any, minimum: int, allow_none: bool = False) -> Optional[int]:
    """``value`` as an ``int`` when it is an integer (a Python or NumPy integer, not a bool)
    of at least ``minimum`` (or None, with ``allow_none``), else a :class:`PoseGraphError`
    naming ``what``: ``"max_iterations: expected an integer ≥ 1, received 1.5"``. Options
    counted in whole numbers (iterations, records, threads) are checked here before anything
    runs, where ``range(1.5)`` or ``"5" < 1`` would fail later as a bare ``TypeError``."""
    import numpy as np

    if value is None and allow_none:
        return None
    expected = f"an integer ≥ {minimum}{' or None' if allow_none else ''}"
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        kind = "" if isinstance(value, (int, float)) and not isinstance(value, bool) else f"{type(value).__name__} "
        raise PoseGraphError(f"{what}: expected {expected}, received {kind}{shown(value)}")
    if int(value) < minimum:
        raise PoseGraphError(f"{what}: expected {expected}, received {int(value)}")
    return int(value)


def check_real(what: str, value: Any) -> float:
    """``value`` as a ``float`` when it is a real number (not a bool, not a string), else a
    :class:`PoseGraphError` naming ``what``; ranges are the caller's to check."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise PoseGraphError(f"{what}: expected a number, received {type(value).__name__} {shown(value)}")
    return float(value)


#: The device types posegraph solves on (Theseus' and posegraph's solvers run on these only).
SOLVE_DEVICE_TYPES = ("cpu", "cuda")


def file_path(what: str, path: Any, error: Optional[type] = None) -> str:
    """``path`` — a ``str`` or ``os.PathLike`` naming a file — as a string, else ``error``
    (default :class:`PoseGraphError`) naming ``what``, what was expected and what was received:
    ``None``, a number (``open`` would take an integer as a file descriptor), bytes, an empty
    name, or one with a NUL character (which no file name holds)."""
    error = error or PoseGraphError
    if not isinstance(path, (str, os.PathLike)):
        raise error(f"{what}: expected a file path (str or os.PathLike), received {type(path).__name__} {shown(path)}", None)
    text = os.fspath(path)
    if not isinstance(text, str):
        raise error(f"{what}: expected a file path as text, received {type(text).__name__} {shown(text)}", None)
    if not text or "\0" in text:
        raise error(f"{what}: expected a file path, received {'an empty one' if not text else 'one with a NUL character: ' + shown(text)}", None)
    return text


def check_device(what: str, device: Any, solve: bool = True) -> Any:
    """``device`` as a ``torch.device`` when it is present (and, with ``solve``, posegraph can
    solve on it), else :class:`DeviceError` naming ``what`` (the input or call), the device
    expected and the one received.

    Refused: ``cuda`` while ``torch.cuda.is_available()`` is False, ``cuda:K`` with K beyond
    ``torch.cuda.device_count()``, and with ``solve`` types other than
    :data:`SOLVE_DEVICE_TYPES` (e.g. ``meta``, ``mps``). Checking at the call that names the
    device (a builder, a layer's ``.to``) replaces torch's later, anonymous ``AssertionError``.
    """
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise DeviceError(f"{what}: expected a device (cpu or cuda), received {device!r} ({err})") from None
    if solve and dev.type not in SOLVE_DEVICE_TYPES:
        raise DeviceError(
            f"{what}: expected a device of type {' or '.join(SOLVE_DEVICE_TYPES)}, received {dev} "
            "(posegraph's solvers run on these only)"
        )
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                f"{what}: expected an available device, received {dev}, but torch.cuda.is_available() "
                f"is False (torch {torch.__version__}); use cpu"
            )
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"{what}: expected cuda:0 … cuda:{count - 1}, received {dev}")
    return dev


class OptimizationError(RuntimeError):
    """The optimization could not proceed (solver failure, non-finite values)."""


def read_text_input(path: str, noun: str, expected: str, error: type = PoseGraphError) -> str:
    """Text of a UTF-8 input file, or ``error`` with one clear message: ``no such {noun}``,
    ``is a directory, expected {expected}``, ``not {expected}: not UTF-8 text``, ``cannot read
    {noun}: …`` (e.g. ``noun="trace file"``, ``expected="a trace file (JSON)"``)."""
    try:
        with open(path, "r", encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        raise error(f"no such {noun}", path) from None
    except IsADirectoryError:
        raise error(f"is a directory, expected {expected}", path) from None
    except UnicodeDecodeError:
        raise error(f"not {expected}: not UTF-8 text", path) from None
    except OSError as err:
        raise error(f"cannot read {noun}: {err.strerror}", path) from None
