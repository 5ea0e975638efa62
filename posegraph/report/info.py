"""``posegraph info``: what a g2o file holds, before optimizing it.

Counts by kind (vertices, edges, odometry = edges between consecutive ids ``|i − j| = 1``,
loop closures = the other edges, fixed vertices), connectivity (connected components of the
edge graph, vertices without edges), a summary of the information matrices Ω (smallest and
largest eigenvalue over all edges, whether all are diagonal / all equal) and, when the file has
both vertices and edges, the initial χ² = Σ eᵀΩe of its vertices (and error = χ²/2).
``repaired_information`` counts the information matrices replaced by their nearest positive
semidefinite matrix (``posegraph info --repair-information``; 0 otherwise).
Vertex-only files (trajectories, ground truth) and edge-only files are accepted.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
import torch

from posegraph.graph import PoseGraph, check_graph


def edge_kinds(graph: PoseGraph) -> np.ndarray:
    """Per edge, True for odometry (vertex ids differ by 1), False for a loop closure."""
    return ~graph.loop_closures().cpu().numpy()


def information_summary(information: torch.Tensor) -> Dict[str, Any]:
    """Eigenvalue range of the Ω's, and whether they are all diagonal / all equal."""
    info = information.detach().cpu().double().reshape(-1, *information.shape[-2:]).numpy()
    if info.shape[0] == 0:
        return {"min_eigenvalue": None, "max_eigenvalue": None, "diagonal": None, "all_equal": None}
    lam = np.linalg.eigvalsh(info)
    off = info - np.einsum("eii->ei", info)[:, :, None] * np.eye(info.shape[-1])
    return {
        "min_eigenvalue": float(lam[:, 0].min()),
        "max_eigenvalue": float(lam[:, -1].max()),
        "diagonal": bool(np.all(off == 0)),
        "all_equal": bool(np.all(info == info[:1])),
    }


def initial_chi2(graph: PoseGraph) -> float:
    """χ² = Σ eᵀΩe of the graph's own poses (the graph must have poses and edges)."""
    from posegraph.model.build import build_problem
    from posegraph.init.dispatch import initialize

    problem = build_problem(initialize(graph, "file"), dtype=torch.float64)  # places points
    with torch.no_grad():
        return float(2 * problem.error().double().mean())


def graph_info(graph: PoseGraph) -> Dict[str, Any]:
    """The ``posegraph info`` report of ``graph`` as a JSON-ready dict."""
    check_graph("graph_info: graph", graph)
    odo = edge_kinds(graph)
    labels = graph.components()
    sizes = np.bincount(labels) if labels.size else np.zeros(0, dtype=np.int64)
    degree = np.bincount(graph.edges.cpu().numpy().ravel(), minlength=graph.num_poses)
    ids = graph.ids.cpu().numpy()
    has_both = graph.poses is not None and graph.num_edges > 0
    chi2 = initial_chi2(graph) if has_both else None
    return {
        "input": graph.source,
        "kind": graph.kind,
        "vertices": graph.num_poses,
        "has_vertex_poses": graph.poses is not None,
        "edges": graph.num_edges,
        "odometry_edges": int(odo.sum()),
        "loop_closures": int((~odo).sum()),
        "fixed": int(graph.fixed.sum()),
        "fixed_ids": ids[graph.fixed.cpu().numpy()].tolist()[:20],
        "id_range": [int(ids.min()), int(ids.max())] if ids.size else None,
        "components": int(sizes.size),
        "largest_component": int(sizes.max(initial=0)),
        "vertices_without_edges": int((degree == 0).sum()),
        "information": information_summary(graph.information),
        "initial_chi2": chi2,
        "initial_error": chi2 / 2 if chi2 is not None else None,
        "points": graph.num_points,
        "point_observations": 0 if graph.landmarks is None else graph.landmarks.num_observations,
        "repaired_information": int(graph.extras.get("repaired_information", 0)),
    }


def format_info(info: Dict[str, Any]) -> str:
    """Readable lines of :func:`graph_info`'s dict."""
    lines = [
        f"input        {info['input']} ({info['kind']})",
        f"vertices     {info['vertices']}" + ("" if info["has_vertex_poses"] else " (no VERTEX lines: edge-only file)")
        + (f", ids {info['id_range'][0]}..{info['id_range'][1]}" if info["id_range"] else ""),
        f"edges        {info['edges']} ({info['odometry_edges']} odometry, {info['loop_closures']} loop closures)",
        f"fixed        {info['fixed']}" + (f" (ids {', '.join(map(str, info['fixed_ids']))})" if info["fixed"] else ""),
    ]
    if info["points"]:
        lines.append(f"points       {info['points']} (TRACKXYZ), {info['point_observations']} observations")
    if info["edges"]:
        lines.append(
            f"components   {info['components']} (largest {info['largest_component']} vertices, "
            f"{info['vertices_without_edges']} without edges)"
        )
        inf = info["information"]
        form = "diagonal" if inf["diagonal"] else "full"
        same = ", all equal" if inf["all_equal"] else ""
        lines.append(
            f"information  {form}{same}; eigenvalues {inf['min_eigenvalue']:.6g} .. {inf['max_eigenvalue']:.6g}"
        )
    if info.get("repaired_information"):
        n = info["repaired_information"]
        lines.append(f"repaired     {n} information {'matrix' if n == 1 else 'matrices'} "
                     "(not positive semidefinite: negative eigenvalues clipped to 0)")
    if info["initial_chi2"] is not None:
        lines.append(f"initial chi2 {info['initial_chi2']:.10g} (error χ²/2 {info['initial_error']:.10g})")
    return "\n".join(lines)
