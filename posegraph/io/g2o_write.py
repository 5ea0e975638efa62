"""PoseGraph → g2o text: vertices, edges with their upper-triangle information, FIX lines, 3D
points and their observations, each number written so that it reads back exactly
(``repr(float)``); files are written atomically (:mod:`posegraph.io.output`).
"""

from __future__ import annotations

import os
from typing import Dict, List, Union
import numpy as np
import torch
from posegraph import lie
from posegraph.graph import PoseGraph
from posegraph.io.output import check_outputs, write_text_atomic

PathLike = Union[str, "os.PathLike[str]"]


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
