"""Wavefront OBJ meshes: vertices (``v x y z``) and triangular faces (``f i j k``, 1-based,
``i/t/n`` forms and negative indices accepted); other lines are skipped. Errors name the file
and line.
"""

from __future__ import annotations

import math
import os
from typing import List, Tuple, Union
import torch
from posegraph.errors import PoseGraphError, file_path, shown
from posegraph.mesh.laplacian import _check_faces, _check_verts

PathLike = Union[str, "os.PathLike[str]"]


class MeshFormatError(PoseGraphError):
    """A file that cannot be read as a Wavefront OBJ mesh; the message names the file (and
    the line)."""


# ---------------------------------------------------------------------------------------------
# mesh files
# ---------------------------------------------------------------------------------------------
def _parse_vertex(tokens: List[str], where: str) -> Tuple[float, float, float]:
    """``v x y z [w | r g b]``: the first three numbers; extra values are ignored."""
    if len(tokens) < 4:
        raise MeshFormatError(f"{where}: vertex needs 3 coordinates, received {len(tokens) - 1}")
    try:
        x, y, z = (float(t) for t in tokens[1:4])
    except ValueError:
        raise MeshFormatError(
            f"{where}: vertex coordinates must be numbers, received {', '.join(map(shown, tokens[1:4]))}"
        ) from None
    if not all(math.isfinite(c) for c in (x, y, z)):
        raise MeshFormatError(f"{where}: vertex coordinates must be finite, received {', '.join(map(shown, tokens[1:4]))}")
    return x, y, z


def _parse_face_index(token: str, num_verts: int, where: str) -> int:
    """0-based vertex index of one face entry ``a``, ``a/b``, ``a/b/c`` or ``a//c``.

    Positive indices are 1-based; negative ones are relative to the vertices read so far
    (``-1`` is the last one).
    """
    head = token.split("/", 1)[0]
    try:
        ref = int(head)
    except ValueError:
        raise MeshFormatError(f"{where}: face entry {shown(token)} has no integer vertex index") from None
    if ref == 0:
        raise MeshFormatError(f"{where}: face entry {shown(token)}: OBJ indices start at 1, received 0")
    if ref < 0:
        index = num_verts + ref
        if index < 0:
            raise MeshFormatError(
                f"{where}: relative index {ref} points before the first vertex "
                f"({num_verts} vertices defined so far)"
            )
        return index
    return ref - 1


def read_obj(path: PathLike) -> Tuple[torch.Tensor, torch.Tensor]:
    """Read the triangle mesh of a Wavefront OBJ file.

    Supported: ``v x y z`` (extra values — ``w`` or vertex colours — ignored), ``f`` lines with
    entries ``a``, ``a/b``, ``a/b/c``, ``a//c``, positive (1-based) and negative (relative)
    indices, polygons with more than 3 vertices (fan-triangulated ``(a0, ak, ak+1)``),
    ``#`` comments and blank lines. Other statements (``vn``, ``vt``, ``o``, ``g``, ``s``,
    ``usemtl``, ``mtllib``, ``l``, …) are ignored.

    Returns:
        ``verts`` ``(V, 3)`` float64 and ``faces`` ``(F, 3)`` int64 (0-based).

    Raises:
        MeshFormatError: ``"{path}:{lineno}: what is wrong"`` for malformed vertices or faces,
            faces with fewer than 3 vertices, index 0 and out-of-range indices;
            ``"{path}: …"`` for a missing or unreadable file, one that is not UTF-8 text, or
            one without vertices.
    """
    verts: List[Tuple[float, float, float]] = []
    faces: List[Tuple[int, int, int]] = []
    positive_refs: List[Tuple[int, int]] = []  # (lineno, largest positive index) per face
    path = file_path("read_obj: path", path, MeshFormatError)
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.readlines()
    except FileNotFoundError:
        raise MeshFormatError("no such file", path) from None
    except UnicodeDecodeError as err:
        raise MeshFormatError(f"not a Wavefront OBJ text file (not UTF-8: {err.reason} at byte {err.start})", path) from None
    except OSError as err:
        raise MeshFormatError(err.strerror or str(err), path) from None
    for lineno, raw in enumerate(lines, start=1):
        tokens = raw.split("#", 1)[0].split()
        if not tokens:
            continue
        where = f"{path}:{lineno}"
        if tokens[0] == "v":
            verts.append(_parse_vertex(tokens, where))
        elif tokens[0] == "f":
            if len(tokens) < 4:
                raise MeshFormatError(
                    f"{where}: face needs at least 3 vertices, received {len(tokens) - 1}"
                )
            idx = [_parse_face_index(t, len(verts), where) for t in tokens[1:]]
            positive_refs.append((lineno, max(idx)))
            faces.extend((idx[0], idx[k], idx[k + 1]) for k in range(1, len(idx) - 1))
    if not verts:
        raise MeshFormatError("no vertices ('v x y z' lines): not a Wavefront OBJ mesh", path)
    for lineno, top in positive_refs:
        if top >= len(verts):
            raise MeshFormatError(
                f"{path}:{lineno}: face refers to vertex {top + 1}, the file has "
                f"{len(verts)} vertices"
            )
    return (
        torch.tensor(verts, dtype=torch.float64).reshape(-1, 3),
        torch.tensor(faces, dtype=torch.long).reshape(-1, 3),
    )


def format_obj(verts: torch.Tensor, faces: torch.Tensor) -> str:
    """Wavefront OBJ text of a triangle mesh (see :func:`write_obj`)."""
    verts_b, batched = _check_verts(verts)
    if batched:
        raise ValueError(f"verts: expected shape (V, 3), received {tuple(verts.shape)}")
    faces = _check_faces(faces, verts_b.shape[1], torch.device("cpu"))
    vlist = verts_b[0].detach().cpu().double().tolist()
    flist = (faces + 1).tolist()
    lines = [f"# posegraph.mesh.write_obj: {len(vlist)} vertices, {len(flist)} faces\n"]
    lines += [f"v {x!r} {y!r} {z!r}\n" for x, y, z in vlist]
    lines += [f"f {a} {b} {c}\n" for a, b, c in flist]
    return "".join(lines)


def write_obj(path: PathLike, verts: torch.Tensor, faces: torch.Tensor) -> None:
    """Write a triangle mesh as Wavefront OBJ, atomically (:mod:`posegraph.io.output`).

    Coordinates are written with Python's shortest round-trip ``repr``, so float64 vertices
    read back bit-exactly with :func:`read_obj`; faces are written 1-based.

    Args:
        path: destination file; its directory must exist.
        verts: ``(V, 3)`` floating vertices (any device; detached).
        faces: ``(F, 3)`` integer vertex indices in ``[0, V)``.
    """
    from posegraph.io.output import write_text_atomic

    write_text_atomic(path, format_obj(verts, faces))
