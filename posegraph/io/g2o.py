"""g2o text files ⇄ :class:`~posegraph.graph.PoseGraph`.

Tags read: ``VERTEX_SE2 id x y θ``, ``EDGE_SE2 i j x y θ I11 I12 I13 I22 I23 I33``,
``VERTEX_SE3:QUAT id x y z qx qy qz qw``,
``EDGE_SE3:QUAT i j x y z qx qy qz qw`` + the 21 upper-triangle entries of Ω (row-major), and
``FIX id [id …]``; 3D points observed from SE3 poses: ``VERTEX_TRACKXYZ id x y z``,
``EDGE_SE3_TRACKXYZ pose point param x y z`` + the 6 upper-triangle entries of Ω and
``PARAMS_SE3OFFSET param x y z qx qy qz qw`` (g2o's ``EdgeSE3PointXYZ``: the point measured in
the frame of the sensor at offset ``param`` from the pose). ``#`` starts a comment; blank lines, CRLF and tabs are accepted; vertex ids
need not be contiguous. Other tags are skipped with one warning per tag giving the count.
Format reference: g2o's ``types_slam2d``/``types_slam3d`` (Kümmerle et al. 2011) as used by
the SE-Sync/GTSAM datasets.

Quaternions follow posegraph's rotation rule (:mod:`posegraph.lie`, the same for every
rotation): the zero quaternion is an error; one whose norm is off by more than its printed
digits allow (:func:`~posegraph.lie.printed_precision`: 1e-4 for 4 decimals, at least 1e-6, at
most 1e-3) is normalized with a warning naming FILE:LINE of the first and the count (one for
the vertices, one for the edges); every other one is normalized silently.

Information matrices must be positive semidefinite, with entries of magnitude ≤ 1e150
(:mod:`posegraph.information`): a file with matrices that are not PSD is refused, the error
counting them all, unless ``read_g2o(path, repair_information=True)`` is asked to replace each
by its nearest PSD matrix; larger entries are refused on their line, naming the edge.

Lines end at ``\n`` only (``\r\n`` too: the ``\r`` is whitespace); other characters that
Python's ``str.splitlines`` breaks at (``\v \f \x1c–\x1e \x85 \u2028 \u2029``, a lone
``\r``) are whitespace inside a line, so line numbers are those of ``grep -n`` and a comment
runs to the ``\n``. A UTF-8 byte order mark at the start of the file is skipped.

Every problem is reported as :class:`~posegraph.errors.G2oFormatError` naming file and line.
Pose lines are converted in bulk (one vectorized conversion per tag, bit-identical to ``float``,
:mod:`posegraph.io.numbers`); on anything unusual the
file is re-read line by line by the reference parser, so errors are the same either way.
Writing (:mod:`posegraph.io.output`) is atomic and round-trips exactly in float64.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .. import lie
from ..errors import SHOWN_TOKEN_CHARS, G2oFormatError, shown
from ..graph import Landmarks, PoseGraph
from ..information import PSD_TOLERANCE  # noqa: F401  (re-exported: the reader's tolerance)
from ..information import first_oversized, information_bound, nearest_psd, psd_smallest_eigenvalues
from .numbers import parse_table
from .output import check_outputs, write_text_atomic  # noqa: F401 (write_text_atomic: older code imports it from here)

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class _Tag:
    role: str  # "vertex" | "edge"
    kind: str  # "SE2" | "SE3"
    num_ids: int
    num_values: int  # numbers after the ids


_TAGS: Dict[str, _Tag] = {
    "VERTEX_SE2": _Tag("vertex", "SE2", 1, 3),
    "VERTEX_SE3:QUAT": _Tag("vertex", "SE3", 1, 7),
    "EDGE_SE2": _Tag("edge", "SE2", 2, 3 + 6),
    "EDGE_SE3:QUAT": _Tag("edge", "SE3", 2, 7 + 21),
}
_DOF = {"SE2": 3, "SE3": 6}
#: vertex ids are stored as int64 tensors.
_ID_MIN, _ID_MAX = -(2**63), 2**63 - 1


#: UTF-8 encoding of the byte order mark U+FEFF, skipped at the start of a file
_BOM = b"\xef\xbb\xbf"


def split_lines(text: str) -> List[str]:
    """The lines of ``text``, split at ``\n`` only (see the module doc): unlike
    ``str.splitlines``, no other character starts a line, so line numbers match ``grep -n``
    and editors, and a comment ends only at ``\n``."""
    return text.split("\n")


def _decode(path: str, raw: bytes) -> str:
    """Bytes → text, refusing binary data with the line where it starts; a leading UTF-8
    byte order mark is dropped."""
    if raw.startswith(_BOM):
        raw = raw[len(_BOM):]
    nul = raw.find(b"\x00")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise G2oFormatError(
            f"not a g2o text file: undecodable byte 0x{raw[err.start]:02x}", path, line
        ) from None
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise G2oFormatError("not a g2o text file: binary data (NUL byte)", path, line)
    return text


def _number(tok: str, path: str, line: int, what: str, error: type = G2oFormatError) -> float:
    """``tok`` as a finite float, else ``error`` naming ``what``, the file and the line (the
    token cut to :data:`~posegraph.errors.SHOWN_TOKEN_CHARS`)."""
    try:
        value = float(tok)
    except ValueError:
        raise error(f"{what}: expected a number, received {shown(tok)}", path, line) from None
    if not math.isfinite(value):
        raise error(f"{what}: expected a finite number, received {shown(tok)}", path, line)
    return value


#: what ``int`` accepts (a token has no whitespace): sign, digits (any script), underscores
_INTEGER = re.compile(r"[+-]?\d+(?:_\d+)*")


def _long_integer(tok: str) -> Optional[int]:
    """The value of an integer token that ``int`` refuses for its length (more digits than
    ``sys.get_int_max_str_digits()``): its significant digits when at most 19 remain after
    leading zeros, else None (far outside int64)."""
    digits = [unicodedata.decimal(c) for c in tok.lstrip("+-") if c != "_"]
    first = next((k for k, d in enumerate(digits) if d), len(digits))
    if len(digits) - first > 19:
        return None
    value = int("".join(map(str, digits[first:])) or "0")
    return -value if tok.startswith("-") else value


def _vertex_id(tok: str, path: str, line: int, what: str) -> int:
    value: Optional[int]
    try:
        value = int(tok)
    except ValueError:
        if not _INTEGER.fullmatch(tok):
            raise G2oFormatError(
                f"{what}: expected an integer vertex id, received {shown(tok)}", path, line
            ) from None
        value = _long_integer(tok)  # more digits than int() converts
    if value is None or not _ID_MIN <= value <= _ID_MAX:
        raise G2oFormatError(
            f"{what}: expected a vertex id in [{_ID_MIN}, {_ID_MAX}] (int64), received {shown(tok)}",
            path,
            line,
        )
    return value


#: Pose values: the number tokens of each line (reference parser; :func:`_assemble` converts
#: them with :func:`_floats`, keeping its error order) or float64 rows (bulk parser, all finite).
_Values = Union[np.ndarray, List[List[str]]]


class _Records:
    """Records of one file. Pose vertices/edges are arrays with one row per line, in file order."""

    def __init__(self) -> None:
        self.kind: Optional[str] = None
        self.kind_line = 0
        self.vertex_ids = np.zeros(0, dtype=np.int64)  # (N,)
        self.vertex_values: _Values = []  # (N, 3|7)
        self.vertex_lines = np.zeros(0, dtype=np.int64)  # (N,)
        self.edge_ids = np.zeros((0, 2), dtype=np.int64)  # (E, 2)
        self.edge_values: _Values = []  # (E, 3+6 | 7+21)
        self.edge_lines = np.zeros(0, dtype=np.int64)  # (E,)
        self.fixed: List[Tuple[int, int]] = []  # (id, line)
        self.unknown: Counter = Counter()
        self.points = _PointRecords()
        self.text = ""  # the file's text (the printed digits of rotations, when needed)


class _PointRecords:
    """Raw VERTEX_TRACKXYZ / EDGE_SE3_TRACKXYZ / PARAMS_SE3OFFSET records, in file order."""

    def __init__(self) -> None:
        self.first_line = 0  # first line of any of these tags (for the SE3-only check)
        self.vertex_ids: List[int] = []
        self.vertex_values: List[List[float]] = []
        self.vertex_lines: List[int] = []
        self.obs_ids: List[Tuple[int, int]] = []
        self.obs_params: List[int] = []
        self.obs_values: List[List[float]] = []
        self.obs_lines: List[int] = []
        self.params: Dict[int, Tuple[List[float], int]] = {}  # id -> (x y z qx qy qz qw, line)

    def __bool__(self) -> bool:
        return bool(self.first_line)


#: point tags: name -> (number of integer ids, number of values after them)
_POINT_TAGS: Dict[str, Tuple[int, int]] = {
    "VERTEX_TRACKXYZ": (1, 3),
    "EDGE_SE3_TRACKXYZ": (3, 3 + 6),
    "PARAMS_SE3OFFSET": (1, 7),
}


def _parse_point_line(
    path: str, lineno: int, tag_name: str, toks: List[str], rec: "_PointRecords"
) -> None:
    """One VERTEX_TRACKXYZ / EDGE_SE3_TRACKXYZ / PARAMS_SE3OFFSET line into ``rec``."""
    num_ids, num_values = _POINT_TAGS[tag_name]
    if len(toks) - 1 != num_ids + num_values:
        raise G2oFormatError(
            f"{tag_name}: expected {num_ids + num_values} values after the tag, "
            f"received {len(toks) - 1}",
            path,
            lineno,
        )
    ids = [_vertex_id(t, path, lineno, tag_name) for t in toks[1 : 1 + num_ids]]
    values = [_number(t, path, lineno, tag_name) for t in toks[1 + num_ids :]]
    rec.first_line = rec.first_line or lineno
    if tag_name == "VERTEX_TRACKXYZ":
        rec.vertex_ids.append(ids[0])
        rec.vertex_values.append(values)
        rec.vertex_lines.append(lineno)
    elif tag_name == "EDGE_SE3_TRACKXYZ":
        rec.obs_ids.append((ids[0], ids[1]))
        rec.obs_params.append(ids[2])
        rec.obs_values.append(values)
        rec.obs_lines.append(lineno)
    else:
        if ids[0] in rec.params:
            raise G2oFormatError(
                f"PARAMS_SE3OFFSET: duplicate parameter id {ids[0]} "
                f"(first defined on line {rec.params[ids[0]][1]})",
                path,
                lineno,
            )
        rec.params[ids[0]] = (values, lineno)


def _parse_other_line(path: str, lineno: int, toks: List[str], rec: _Records) -> None:
    """One line whose tag is not a pose tag: FIX, a point tag, or an unknown tag (counted)."""
    tag_name = toks[0]
    if tag_name == "FIX":
        if len(toks) < 2:
            raise G2oFormatError("FIX: expected at least one vertex id", path, lineno)
        rec.fixed.extend((_vertex_id(t, path, lineno, "FIX"), lineno) for t in toks[1:])
    elif tag_name in _POINT_TAGS:
        _parse_point_line(path, lineno, tag_name, toks, rec.points)
    else:
        rec.unknown[tag_name] += 1


def _parse_lines(path: str, text: str) -> _Records:
    """The reference parser: line by line, raising on the first bad line in file order.

    Number values of pose lines are only split here; :func:`_assemble` converts them.
    """
    rec = _Records()
    rec.text = text
    vertex_ids: List[int] = []
    vertex_lines: List[int] = []
    edge_ids: List[Tuple[int, int]] = []
    edge_lines: List[int] = []
    vertex_values: List[List[str]] = []
    edge_values: List[List[str]] = []
    for lineno, raw_line in enumerate(split_lines(text), start=1):
        toks = (raw_line.split("#", 1)[0] if "#" in raw_line else raw_line).split()
        if not toks:
            continue
        tag_name = toks[0]
        tag = _TAGS.get(tag_name)
        if tag is None:
            _parse_other_line(path, lineno, toks, rec)
            continue
        expected = tag.num_ids + tag.num_values
        if len(toks) - 1 != expected:
            raise G2oFormatError(
                f"{tag_name}: expected {expected} values after the tag, received {len(toks) - 1}",
                path,
                lineno,
            )
        if rec.kind is None:
            rec.kind, rec.kind_line = tag.kind, lineno
        elif tag.kind != rec.kind:
            raise G2oFormatError(
                f"{tag_name}: {tag.kind} element in a file of {rec.kind} elements "
                f"(first on line {rec.kind_line}); mixing SE2 and SE3 is not supported",
                path,
                lineno,
            )
        if tag.role == "vertex":
            vertex_ids.append(_vertex_id(toks[1], path, lineno, tag_name))
            vertex_values.append(toks[2:])
            vertex_lines.append(lineno)
        else:
            a = _vertex_id(toks[1], path, lineno, tag_name)
            b = _vertex_id(toks[2], path, lineno, tag_name)
            if a == b:
                raise G2oFormatError(
                    f"{tag_name}: self-loop edge from vertex {a} to itself", path, lineno
                )
            edge_ids.append((a, b))
            edge_values.append(toks[3:])
            edge_lines.append(lineno)
    rec.vertex_ids = np.asarray(vertex_ids, dtype=np.int64)
    rec.vertex_lines = np.asarray(vertex_lines, dtype=np.int64)
    rec.edge_ids = np.asarray(edge_ids, dtype=np.int64).reshape(-1, 2)
    rec.edge_lines = np.asarray(edge_lines, dtype=np.int64)
    rec.vertex_values, rec.edge_values = vertex_values, edge_values
    return rec


def _parse_bulk(path: str, text: str) -> Optional[_Records]:
    """The fast parser: the same records as :func:`_parse_lines`, or None where it cannot tell.

    Pose lines are grouped by tag and each group is converted at once by
    :func:`~posegraph.io.numbers.parse_table` (exactly the expected column count, plain
    integer ids, values bit-identical to ``float``);
    every other line goes through :func:`_parse_other_line` as in the reference parser.
    Anything unusual (a conversion error, a non-finite value, a self-loop, SE2 mixed with
    SE3, or any error on another line) gives None, so that :func:`_parse_lines` reports the
    first problem in file order with its usual message.

    Measured (docs/performance.md, 'What each speed mechanism pays'): saves 54–323% of an iteration
    once per read against the reference parser (parking-garage 323%, intel 258%).
    """
    rec = _Records()
    rec.text = text
    groups: Dict[str, Tuple[List[str], List[int]]] = {name: ([], []) for name in _TAGS}
    try:
        for lineno, line in enumerate(split_lines(text), start=1):
            if "#" in line:
                line = line.split("#", 1)[0]
            head = line.split(None, 1)
            if not head:
                continue
            group = groups.get(head[0])
            if group is None:
                _parse_other_line(path, lineno, line.split(), rec)
            elif len(head) == 1:
                return None  # a tag without values
            else:
                group[0].append(head[1])
                group[1].append(lineno)
    except G2oFormatError:
        return None
    present = [name for name, (_, lines) in groups.items() if lines]
    if len({_TAGS[name].kind for name in present}) > 1:
        return None
    for name in present:
        tag = _TAGS[name]
        rows, lines = groups[name]
        table = _load_rows(rows, tag)
        if table is None:
            return None
        ids, values = table
        if tag.role == "vertex":
            rec.vertex_ids, rec.vertex_values = ids[:, 0].copy(), values
            rec.vertex_lines = np.asarray(lines, dtype=np.int64)
        else:
            if np.any(ids[:, 0] == ids[:, 1]):
                return None  # self-loop
            rec.edge_ids, rec.edge_values = ids, values
            rec.edge_lines = np.asarray(lines, dtype=np.int64)
    if present:
        rec.kind = _TAGS[present[0]].kind
        rec.kind_line = min(groups[name][1][0] for name in present)
    return rec


def _load_rows(rows: List[str], tag: _Tag) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """Lines of one pose tag (without the tag) → (int64 ids, finite float64 values), contiguous;
    None if a line has another token count, an id is not a plain int64, ``float`` refuses a
    value or a value is not finite (see :func:`~posegraph.io.numbers.parse_table`: values are
    bit-identical to ``float``; ids with ``1_0`` or non-ASCII digits, which ``int`` accepts,
    go to the reference parser)."""
    return parse_table(rows, tag.num_ids, tag.num_values)


def _floats(
    rows: List[List[str]], width: int, path: str, lines: Sequence[int], what: str
) -> np.ndarray:
    """Number tokens of many lines (or rows already converted by the bulk parser) →
    ``(len(rows), width)`` float64, in one numpy conversion.

    On a bad token (not a number, or not finite) the lines are re-read one number at a time,
    so the error names the first offending line and token, as :func:`_number` words it.
    """
    try:
        out = np.asarray(rows, dtype=np.float64).reshape(len(rows), width)
    except ValueError:
        out = None
    if out is None or not np.isfinite(out).all():
        first = 0 if out is None else int(np.flatnonzero(~np.isfinite(out).all(axis=1))[0])
        for row, line in zip(rows[first:], lines[first:]):
            for tok in row:
                _number(tok, path, line, what)
    assert out is not None
    return out


def _upper_to_symmetric(upper: np.ndarray, dim: int) -> np.ndarray:
    """Rows of the upper triangle in file (row-major) order → symmetric ``(n, dim, dim)``."""
    iu = np.triu_indices(dim)
    mats = np.zeros((upper.shape[0], dim, dim))
    mats[:, iu[0], iu[1]] = upper
    mats[:, iu[1], iu[0]] = upper
    return mats


def check_information(
    info: np.ndarray,
    path: str,
    lines: Sequence[int],
    names: Optional[Callable[[int], str]] = None,
    repair: bool = False,
    tag: str = "information",
) -> int:
    """Check the information matrices ``info`` ``(E, d, d)`` read from lines ``lines``.

    * An entry beyond :func:`~posegraph.information.information_bound` (``1e150``) is a
      :class:`G2oFormatError` on its line, naming the edge (``names(k)``, e.g.
      ``"EDGE_SE3:QUAT 12 13"``): such values overflow later, inside the solve.
    * Matrices that are not positive semidefinite are refused with one error on the line of
      the first, counting all of them; with ``repair`` each is replaced, in place, by its
      nearest PSD matrix (:func:`~posegraph.information.nearest_psd`, negative eigenvalues
      clipped to 0).

    ``tag`` names the matrices in the message (e.g. ``"EDGE_SE2"``). Returns the number of
    matrices repaired (0 without ``repair``).
    """
    if info.shape[0] == 0:
        return 0
    bound = information_bound(np.float64)
    over = first_oversized(info, bound)
    if over is not None:
        k, row, col, value = over
        edge = f"{names(k)}: " if names is not None else ""
        raise G2oFormatError(
            f"{edge}information entry (row {row}, column {col}) is {value:.6g}; expected a magnitude "
            f"≤ {bound:.0e} (larger information overflows the cost and its normal equations)",
            path,
            lines[k],
        )
    bad, smallest = psd_smallest_eigenvalues(info)
    if bad.size == 0:
        return 0
    if not repair:
        raise G2oFormatError(
            f"{bad.size} of {info.shape[0]} {tag} information matrices are not positive "
            f"semidefinite (expected eigenvalues ≥ 0; first at line {lines[bad[0]]}, smallest "
            f"eigenvalue {smallest[0]:.3g}); --repair-information (Python: read_g2o(..., "
            "repair_information=True)) clips their negative eigenvalues",
            path,
            lines[bad[0]],
        )
    info[bad] = nearest_psd(info[bad])
    return int(bad.size)


class _LineTokens:
    """The number tokens of a file's lines, for the rotation rule's precision of printed digits
    (:func:`posegraph.lie.printed_precision`): the text is split into lines only when asked,
    which happens only for rotations beyond float64's precision."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.lines: Optional[List[str]] = None

    def __call__(self, line: int, start: int, stop: int) -> List[str]:
        """Tokens ``start:stop`` of line ``line`` (1-based; the tag is token 0)."""
        if self.lines is None:
            self.lines = split_lines(self.text)
        text = self.lines[line - 1]
        return text.split("#", 1)[0].split()[start:stop]


def _poses_from_values(kind: str, values: np.ndarray) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float64)
    if kind == "SE3":
        return lie.g2o_to_se3(t)
    return lie.xytheta_to_se2(t)


def read_g2o(path: PathLike, repair_information: bool = False) -> PoseGraph:
    """Read a g2o pose-graph file (SE2 or SE3) into a float64 :class:`PoseGraph`.

    Edge-only files give ``poses=None``; initialize them with :mod:`posegraph.init`.

    Information matrices must be positive semidefinite. By default a file with any that are
    not is refused, the error counting them all. With ``repair_information=True`` each is
    replaced by its nearest positive semidefinite matrix (negative eigenvalues clipped to 0;
    Higham 1988, see :mod:`posegraph.information`), one warning gives the count, and
    ``graph.extras["repaired_information"]`` holds it (0 when none needed repair). Entries
    beyond ±1e150 are refused either way (:func:`check_information`).

    Raises:
        G2oFormatError: naming the file and line of the first problem.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise G2oFormatError("no such file", path) from None
    except IsADirectoryError:
        raise G2oFormatError("is a directory, expected a g2o file", path) from None
    except OSError as err:
        raise G2oFormatError(f"cannot read file: {err.strerror}", path) from None
    text = _decode(path, raw)
    rec = _parse_bulk(path, text)
    if rec is None:  # something unusual: the reference parser names the first problem
        rec = _parse_lines(path, text)
    for tag_name, count in sorted(rec.unknown.items()):
        warnings.warn(f"{path}: skipped {count} line(s) with unsupported tag {_tag_shown(tag_name)}")
    if rec.kind is None:
        if rec.points:
            raise G2oFormatError("3D points (TRACKXYZ) but no SE3 poses", path, rec.points.first_line)
        raise G2oFormatError("no pose graph found (no VERTEX or EDGE lines)", path)
    if rec.points and rec.kind != "SE3":
        raise G2oFormatError(
            f"3D points (TRACKXYZ) are observed from SE3 poses; this file has {rec.kind} "
            f"elements (first on line {rec.kind_line})",
            path,
            rec.points.first_line,
        )
    return _assemble(path, rec, repair_information)


class _IdIndex:
    """Vertex id → storage index, by a sorted copy of the ids (vectorized, no per-id dict).

    Assumes unique ids once :meth:`first_duplicate` has returned None.
    """

    def __init__(self, ids: np.ndarray) -> None:
        self.order = np.argsort(ids, kind="stable")  # equal ids keep file order
        self.sorted = ids[self.order]

    def first_duplicate(self) -> Optional[Tuple[int, int]]:
        """(position, position of the id's first occurrence) of the earliest repeat of an
        already seen id, in storage order; None if all ids are distinct."""
        repeat = np.flatnonzero(self.sorted[1:] == self.sorted[:-1]) + 1
        if repeat.size == 0:
            return None
        k = int(repeat[np.argmin(self.order[repeat])])
        first = int(np.searchsorted(self.sorted, self.sorted[k], side="left"))
        return int(self.order[k]), int(self.order[first])

    def find(self, query: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(storage index, found) for each id of ``query``; the index is meaningless where
        not found."""
        if self.sorted.size == 0:
            return np.zeros(query.shape, dtype=np.int64), np.zeros(query.shape, dtype=bool)
        pos = np.minimum(np.searchsorted(self.sorted, query), self.sorted.size - 1)
        return self.order[pos], self.sorted[pos] == query

    def __contains__(self, vid: int) -> bool:
        return bool(self.find(np.asarray([vid], dtype=np.int64))[1][0])

    def __getitem__(self, vid: int) -> int:
        index, found = self.find(np.asarray([vid], dtype=np.int64))
        if not found[0]:
            raise KeyError(vid)
        return int(index[0])


def _tag_shown(tag: str) -> str:
    """An unsupported tag as a warning shows it: as written, or cut (:func:`shown`) when long."""
    return tag if len(tag) <= SHOWN_TOKEN_CHARS else shown(tag)


def _unknown_pose(path: str, vid: int, line: int, point_ids: List[int]) -> G2oFormatError:
    what = "a 3D point (VERTEX_TRACKXYZ), expected a pose" if vid in point_ids else (
        "which has no VERTEX line"
    )
    return G2oFormatError(f"edge refers to vertex {vid}, {what}", path, line)


def _pose_index(path: str, rec: _Records) -> Tuple[np.ndarray, _IdIndex, List[int]]:
    """(pose ids in storage order, their index, point ids), checking duplicate ids and that
    every edge (then every point observation) refers to a pose with a VERTEX line."""
    pts = rec.points
    index = _IdIndex(rec.vertex_ids)
    dup = index.first_duplicate()
    if dup is not None:
        at, first = dup
        raise G2oFormatError(
            f"duplicate vertex id {int(rec.vertex_ids[at])} "
            f"(first defined on line {int(rec.vertex_lines[first])})",
            path,
            int(rec.vertex_lines[at]),
        )
    pose_lines = dict(zip(rec.vertex_ids.tolist(), rec.vertex_lines.tolist())) if pts else {}
    point_ids = _point_ids(path, pts, pose_lines)
    if rec.vertex_ids.size == 0:
        obs = np.asarray([a for a, _ in pts.obs_ids], dtype=np.int64)
        ids = np.unique(np.concatenate([rec.edge_ids.ravel(), obs]))
        return ids, _IdIndex(ids), point_ids
    _, found = index.find(rec.edge_ids)
    if not found.all():
        k = int(np.flatnonzero(~found.ravel())[0])  # row-major: file order, a before b
        raise _unknown_pose(
            path, int(rec.edge_ids.ravel()[k]), int(rec.edge_lines[k // 2]), point_ids
        )
    for (a, _), line in zip(pts.obs_ids, pts.obs_lines):
        if a not in index:
            raise _unknown_pose(path, a, line, point_ids)
    return rec.vertex_ids, index, point_ids


def _fixed_masks(
    path: str, rec: _Records, index: _IdIndex, point_index: Dict[int, int]
) -> Tuple[torch.Tensor, torch.Tensor]:
    """FIX lines → (pose, point) boolean masks; the first unknown id is an error."""
    fixed = torch.zeros(index.sorted.size, dtype=torch.bool)
    point_fixed = torch.zeros(len(point_index), dtype=torch.bool)
    if not rec.fixed:
        return fixed, point_fixed
    where, found = index.find(np.asarray([vid for vid, _ in rec.fixed], dtype=np.int64))
    fixed[torch.as_tensor(where[found])] = True
    for k in np.flatnonzero(~found).tolist():
        vid, line = rec.fixed[k]
        if vid not in point_index:
            raise G2oFormatError(f"FIX refers to unknown vertex {vid}", path, line)
        point_fixed[point_index[vid]] = True
    return fixed, point_fixed


def _assemble(path: str, rec: _Records, repair_information: bool = False) -> PoseGraph:
    """The graph of the records ``rec`` (checked); ``repair_information``: see :func:`read_g2o`."""
    kind = rec.kind
    assert kind is not None
    dof = _DOF[kind]
    pts = rec.points
    ids, index, point_ids = _pose_index(path, rec)
    point_index = {v: k for k, v in enumerate(point_ids)}
    _check_id_spaces(path, pts, index, point_index)
    fixed, point_fixed = _fixed_masks(path, rec, index, point_index)

    meas_len = 7 if kind == "SE3" else 3
    # explicit width: a file with vertices but no edges gives a (0, width) array
    edge_tag = "EDGE_SE3:QUAT" if kind == "SE3" else "EDGE_SE2"
    vertex_tag = "VERTEX_SE3:QUAT" if kind == "SE3" else "VERTEX_SE2"
    edge_lines = rec.edge_lines.tolist()
    ev = _floats(rec.edge_values, meas_len + dof * (dof + 1) // 2, path, edge_lines, edge_tag)
    tokens = _LineTokens(rec.text)
    if kind == "SE3":  # the rotation rule (posegraph.lie); the quaternions are normalized later
        ev[:, 3:7] = lie.check_rotations(
            ev[:, 3:7], "quaternion", lambda k: f"{edge_tag} {rec.edge_ids[k, 0]} {rec.edge_ids[k, 1]}",
            error=G2oFormatError, path=path, lines=edge_lines,
            printed=lambda k: tokens(edge_lines[k], 6, 10), stacklevel=3,
        )
    info = _upper_to_symmetric(ev[:, meas_len:], dof)
    edge_ids = rec.edge_ids
    repaired = check_information(
        info, path, edge_lines, lambda k: f"{edge_tag} {edge_ids[k, 0]} {edge_ids[k, 1]}",
        repair_information, edge_tag,
    )
    num_info = info.shape[0]

    poses = None
    vertex_lines = None
    if rec.vertex_ids.size:
        vertex_lines = rec.vertex_lines.tolist()
        vv = _floats(rec.vertex_values, meas_len, path, vertex_lines, vertex_tag)
        if kind == "SE3":
            vv[:, 3:7] = lie.check_rotations(
                vv[:, 3:7], "quaternion", lambda k: f"{vertex_tag} {rec.vertex_ids[k]}",
                error=G2oFormatError, path=path, lines=vertex_lines,
                printed=lambda k: tokens(vertex_lines[k], 5, 9), stacklevel=3,
            )
        poses = _poses_from_values(kind, vv)
    edges = torch.as_tensor(index.find(rec.edge_ids)[0], dtype=torch.long).reshape(-1, 2)
    measurements = _poses_from_values(kind, ev[:, :meas_len].reshape(-1, meas_len))
    landmarks = None
    if pts:
        landmarks, point_repaired = _landmarks(
            path, pts, index, point_ids, point_index, point_fixed, repair_information, tokens
        )
        repaired += point_repaired
        num_info += len(pts.obs_lines)
    graph = PoseGraph(
        kind=kind,
        ids=torch.as_tensor(ids, dtype=torch.long),
        poses=poses,
        edges=edges,
        measurements=measurements,
        information=torch.as_tensor(info),
        fixed=fixed,
        source=path,
        edge_lines=edge_lines,
        vertex_lines=vertex_lines,
        landmarks=landmarks,
    )
    if repair_information:
        graph.extras["repaired_information"] = repaired
        if repaired:
            warnings.warn(
                f"{path}: {repaired} of {num_info} information matrices were not positive "
                "semidefinite; each was replaced by its nearest positive semidefinite matrix "
                "(negative eigenvalues clipped to 0)",
                stacklevel=3,
            )
    return graph


def _point_ids(path: str, pts: _PointRecords, pose_lines: Dict[int, int]) -> List[int]:
    """Point ids in storage order: VERTEX_TRACKXYZ order, or sorted ids of an edge-only file.
    Checks duplicates (also against pose ids) and that observed points have VERTEX lines."""
    seen: Dict[int, int] = {}
    for vid, line in zip(pts.vertex_ids, pts.vertex_lines):
        first = seen.get(vid, pose_lines.get(vid))
        if first is not None:
            raise G2oFormatError(
                f"duplicate vertex id {vid} (first defined on line {first})", path, line
            )
        seen[vid] = line
    if not pts.vertex_ids:
        return sorted({b for _, b in pts.obs_ids})
    for (_, b), line in zip(pts.obs_ids, pts.obs_lines):
        if b not in seen:
            what = "a pose, expected a 3D point (VERTEX_TRACKXYZ)" if b in pose_lines else (
                "which has no VERTEX_TRACKXYZ line"
            )
            raise G2oFormatError(f"EDGE_SE3_TRACKXYZ refers to vertex {b}, {what}", path, line)
    return list(pts.vertex_ids)


def _check_id_spaces(
    path: str, pts: _PointRecords, pose_index: _IdIndex, point_index: Dict[int, int]
) -> None:
    """Edge-only files: an id cannot be both a pose and a point; params must exist."""
    for (a, b), param, line in zip(pts.obs_ids, pts.obs_params, pts.obs_lines):
        if b in pose_index:
            raise G2oFormatError(
                f"EDGE_SE3_TRACKXYZ: vertex {b} is a pose, expected a 3D point", path, line
            )
        if a in point_index:
            raise G2oFormatError(
                f"EDGE_SE3_TRACKXYZ: vertex {a} is a 3D point, expected a pose", path, line
            )
        if param not in pts.params:
            raise G2oFormatError(
                f"EDGE_SE3_TRACKXYZ refers to parameter {param}, which has no "
                "PARAMS_SE3OFFSET line",
                path,
                line,
            )


def _landmarks(
    path: str,
    pts: _PointRecords,
    pose_index: _IdIndex,
    point_ids: List[int],
    point_index: Dict[int, int],
    fixed: torch.Tensor,
    repair_information: bool,
    tokens: _LineTokens,
) -> Tuple[Landmarks, int]:
    """Tensors of the point records (checked by :func:`_point_ids`/:func:`_check_id_spaces`)
    and the number of their information matrices repaired (see :func:`check_information`);
    ``tokens``: the file's line tokens (for the precision of the offsets' quaternions)."""
    ov = np.asarray(pts.obs_values, dtype=np.float64).reshape(len(pts.obs_values), 3 + 6)
    info = _upper_to_symmetric(ov[:, 3:], 3)
    repaired = check_information(
        info, path, pts.obs_lines, lambda k: "EDGE_SE3_TRACKXYZ {} {}".format(*pts.obs_ids[k]),
        repair_information, "EDGE_SE3_TRACKXYZ",
    )
    param_ids = sorted(pts.params)
    pv = np.asarray([pts.params[k][0] for k in param_ids], dtype=np.float64).reshape(-1, 7)
    param_lines = [pts.params[k][1] for k in param_ids]
    pv[:, 3:7] = lie.check_rotations(
        pv[:, 3:7], "quaternion", lambda k: f"PARAMS_SE3OFFSET {param_ids[k]}",
        error=G2oFormatError, path=path, lines=param_lines,
        printed=lambda k: tokens(param_lines[k], 5, 9), stacklevel=4,
    )
    offsets = _poses_from_values("SE3", pv)
    slot = {k: n for n, k in enumerate(param_ids)}
    positions = None
    if pts.vertex_ids:
        positions = torch.as_tensor(np.asarray(pts.vertex_values, dtype=np.float64))
    landmarks = Landmarks(
        ids=torch.as_tensor(point_ids, dtype=torch.long),
        positions=positions,
        observations=torch.as_tensor(
            [[pose_index[a], point_index[b]] for a, b in pts.obs_ids], dtype=torch.long
        ).reshape(-1, 2),
        measurements=torch.as_tensor(ov[:, :3].copy()),
        information=torch.as_tensor(info),
        offsets=offsets[torch.as_tensor([slot[k] for k in pts.obs_params], dtype=torch.long)]
        if pts.obs_params
        else torch.zeros(0, 3, 4, dtype=torch.float64),
        offset_ids=torch.as_tensor(pts.obs_params, dtype=torch.long),
        fixed=fixed,
        observation_lines=list(pts.obs_lines),
        vertex_lines=list(pts.vertex_lines) if pts.vertex_ids else None,
    )
    return landmarks, repaired


def _fmt(values: np.ndarray) -> str:
    return " ".join(repr(float(v)) for v in values)


def format_g2o(graph: PoseGraph) -> str:
    """g2o text of an unbatched graph (vertices, FIX line, edges with full information)."""
    if graph.batch_size != 1 or (graph.poses is not None and graph.poses.ndim > 1 + len(graph.element_shape)):
        raise ValueError("format_g2o writes one graph; select a batch element first")
    g = graph.to(device="cpu", dtype=torch.float64)
    vtag, etag = ("VERTEX_SE3:QUAT", "EDGE_SE3:QUAT") if g.kind == "SE3" else ("VERTEX_SE2", "EDGE_SE2")
    to_values = lie.se3_to_g2o if g.kind == "SE3" else lie.se2_to_xytheta
    ids = g.ids.tolist()
    out: List[str] = []
    if g.poses is not None:
        vals = to_values(g.poses).numpy()
        out.extend(f"{vtag} {vid} {_fmt(v)}" for vid, v in zip(ids, vals))
    fixed_ids = [ids[k] for k in torch.nonzero(g.fixed).flatten().tolist()]
    if fixed_ids:
        out.append("FIX " + " ".join(map(str, fixed_ids)))
    meas = to_values(g.measurements).numpy()
    iu = np.triu_indices(g.dof)
    upper = g.information.numpy()[:, iu[0], iu[1]]
    pairs = g.ids[g.edges].tolist()
    out.extend(
        f"{etag} {a} {b} {_fmt(m)} {_fmt(u)}" for (a, b), m, u in zip(pairs, meas, upper)
    )
    if g.landmarks is not None:
        out[len(out) - len(pairs):len(out) - len(pairs)] = _format_point_vertices(g)
        out.extend(_format_point_edges(g))
    return "\n".join(out) + "\n"


def _format_point_vertices(g: PoseGraph) -> List[str]:
    """VERTEX_TRACKXYZ lines, FIX for fixed points, PARAMS_SE3OFFSET lines."""
    lm = g.landmarks
    assert lm is not None
    pids = lm.ids.tolist()
    out: List[str] = []
    if lm.positions is not None:
        out.extend(f"VERTEX_TRACKXYZ {vid} {_fmt(p)}" for vid, p in zip(pids, lm.positions.numpy()))
    fixed = [pids[k] for k in torch.nonzero(lm.fixed).flatten().tolist()]
    if fixed:
        out.append("FIX " + " ".join(map(str, fixed)))
    seen: Dict[int, int] = {}
    for k, pid in enumerate(lm.offset_ids.tolist()):
        seen.setdefault(pid, k)
    offsets = lie.se3_to_g2o(lm.offsets).numpy() if lm.num_observations else np.zeros((0, 7))
    out.extend(f"PARAMS_SE3OFFSET {pid} {_fmt(offsets[k])}" for pid, k in sorted(seen.items()))
    return out


def _format_point_edges(g: PoseGraph) -> List[str]:
    """EDGE_SE3_TRACKXYZ lines (pose id, point id, parameter id, point, Ω upper triangle)."""
    lm = g.landmarks
    assert lm is not None
    iu = np.triu_indices(3)
    upper = lm.information.numpy()[:, iu[0], iu[1]]
    pose_ids = g.ids[lm.observations[:, 0]].tolist()
    point_ids = lm.ids[lm.observations[:, 1]].tolist()
    return [
        f"EDGE_SE3_TRACKXYZ {a} {b} {p} {_fmt(z)} {_fmt(u)}"
        for a, b, p, z, u in zip(
            pose_ids, point_ids, lm.offset_ids.tolist(), lm.measurements.numpy(), upper
        )
    ]


def write_g2o(graph: PoseGraph, path: PathLike, *, overwrite_input: bool = False) -> None:
    """Write ``graph`` as a g2o file, atomically (:mod:`posegraph.io.output`). Ids, FIX lines
    and information are kept. The file ``graph`` was read from (``graph.source``) is refused
    as ``path`` unless ``overwrite_input=True``."""
    check_outputs([path], [graph.source], overwrite_input=overwrite_input)
    write_text_atomic(path, format_g2o(graph))
