"""``posegraph plot``: trajectories before/after optimization and the error history (report layer).

One panel per graph and view: SE2 graphs in a top view (x, y), SE3 graphs as three orthographic
views (XY, XZ, YZ). Odometry edges (between consecutive ids, ``|i − j| = 1``) are drawn as a
solid dark line, loop closures (all other edges) as thin translucent red segments, fixed
vertices as black triangles; a file with vertices but no edges (a trajectory, ground truth) is
drawn as a polyline in id order. An edge-only file is drawn at its spanning-tree initial guess
(:func:`posegraph.init.initialize`). With a debug trace (``optimize --debug``) a last panel
shows the error (χ²/2) per iteration on a log scale.

Needs matplotlib (``pip install 'posegraph[plot]'``); figures are drawn with the Agg backend
without touching pyplot's global state.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from posegraph.errors import PoseGraphError
from posegraph.graph import PoseGraph
from posegraph.report.info import edge_kinds
from posegraph.io.output import check_outputs, write_output

#: views per kind: (title, axis indices)
VIEWS = {"SE2": [("top view (x, y)", (0, 1))], "SE3": [("XY", (0, 1)), ("XZ", (0, 2)), ("YZ", (1, 2))]}
#: default pixels per panel
PANEL_SIZE = (520, 460)
ODOMETRY_STYLE = dict(colors="#1f3b73", linewidths=1.0, zorder=2)
LOOP_STYLE = dict(colors="#d62728", linewidths=0.5, alpha=0.35, zorder=1)


def _matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.collections import LineCollection
        from matplotlib.figure import Figure
    except ImportError:
        raise PoseGraphError(
            "plotting needs matplotlib, which is not installed: pip install 'posegraph[plot]' "
            "(or pip install matplotlib)"
        ) from None
    return Figure, FigureCanvasAgg, LineCollection


def positions(graph: PoseGraph) -> np.ndarray:
    """Vertex positions ``(N, 2|3)`` (float64, numpy) of an unbatched graph with poses."""
    p = graph.poses.detach().cpu().double()
    if p.ndim == len(graph.element_shape) + 2:
        p = p[0]
    return (p[:, :, 3] if graph.kind == "SE3" else p[:, :2]).numpy()


def _segments(xy: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.stack([xy[edges[:, 0]], xy[edges[:, 1]]], axis=1)


def draw_graph(ax, graph: PoseGraph, axes: Tuple[int, int], LineCollection) -> Dict[str, int]:
    """Draw one view of ``graph`` on ``ax``; returns the counts drawn (for the legend)."""
    xy = positions(graph)[:, list(axes)]
    edges = graph.edges.cpu().numpy().reshape(-1, 2)
    odo = edge_kinds(graph)
    counts = {"odometry": int(odo.sum()), "loop closures": int((~odo).sum())}
    if edges.shape[0] == 0:
        order = np.argsort(graph.ids.cpu().numpy(), kind="stable")
        ax.plot(xy[order, 0], xy[order, 1], color=ODOMETRY_STYLE["colors"], lw=1.0, label=f"trajectory ({len(order)} poses)")
    else:
        if (~odo).any():
            ax.add_collection(LineCollection(_segments(xy, edges[~odo]), label=f"loop closures ({counts['loop closures']})", **LOOP_STYLE))
        if odo.any():
            ax.add_collection(LineCollection(_segments(xy, edges[odo]), label=f"odometry ({counts['odometry']})", **ODOMETRY_STYLE))
    fixed = graph.fixed.cpu().numpy()
    if fixed.any():
        ax.plot(xy[fixed, 0], xy[fixed, 1], "k^", ms=6, zorder=3, label=f"fixed ({int(fixed.sum())})")
    ax.update_datalim(xy)  # collections do not update the data limits themselves
    ax.margins(0.05)
    ax.autoscale_view()
    ax.set_aspect("equal", adjustable="datalim")
    names = "xyz"
    ax.set_xlabel(names[axes[0]])
    ax.set_ylabel(names[axes[1]])
    ax.grid(True, lw=0.3, alpha=0.5)
    return counts


def draw_history(ax, trace: Dict[str, Any]) -> None:
    """Error (χ²/2) per iteration of a debug trace, log scale when all positive."""
    its = [(r["iteration"], r.get("error")) for r in trace["iterations"]]
    pts = [(i, e) for i, e in its if e is not None and np.isfinite(e)]
    if pts:
        x, y = zip(*pts)
        ax.plot(x, y, "o-", color="#1f3b73", ms=4)
        if min(y) > 0:
            ax.set_yscale("log")
    ax.set_title("error history (χ²/2)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("error")
    ax.grid(True, which="both", lw=0.3, alpha=0.5)


def _layout(kind: str, num_graphs: int, history: bool) -> Tuple[int, int, List[Tuple[int, int, int, int]], Optional[Tuple]]:
    """Grid shape, one (row, col, graph, view) per trajectory panel, and the history slot."""
    views = len(VIEWS[kind])
    if kind == "SE2":  # graphs side by side
        panels = [(0, g, g, 0) for g in range(num_graphs)]
        rows, cols = 1, num_graphs
    else:  # one row per graph, one column per view
        panels = [(g, v, g, v) for g in range(num_graphs) for v in range(views)]
        rows, cols = num_graphs, views
    slot = None
    if history:
        slot = (slice(0, rows), cols)
        cols += 1
    return rows, cols, panels, slot


def plot_graphs(
    graphs: Sequence[PoseGraph],
    path: str,
    titles: Optional[Sequence[str]] = None,
    trace: Optional[Dict[str, Any]] = None,
    size: Optional[Tuple[int, int]] = None,
    dpi: int = 100,
) -> Tuple[int, int]:
    """Draw ``graphs`` (e.g. before and after; same kind, with poses) and an optional trace's
    error history into the image ``path`` (format from the extension); returns its size in
    pixels (``size``, default :data:`PANEL_SIZE` per panel)."""
    Figure, FigureCanvasAgg, LineCollection = _matplotlib()
    kinds = {g.kind for g in graphs}
    if len(kinds) != 1:
        raise PoseGraphError(f"expected graphs of one kind, received {', '.join(sorted(kinds))}", graphs[-1].source)
    kind = kinds.pop()
    path = os.fspath(path)
    fmt = os.path.splitext(path)[1][1:].lower() or None  # None: matplotlib's default (png)
    if fmt is not None and fmt not in FigureCanvasAgg.get_supported_filetypes():
        known = ", ".join(sorted(FigureCanvasAgg.get_supported_filetypes()))
        raise PoseGraphError(f"cannot write the figure: unknown format {fmt!r} (known: {known})", path)
    rows, cols, panels, slot = _layout(kind, len(graphs), trace is not None)
    width, height = size or (PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows + 40)
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(rows, cols)
    titles = list(titles or [g.source or f"graph {k}" for k, g in enumerate(graphs)])
    for row, col, g, v in panels:
        ax = fig.add_subplot(grid[row, col])
        view_title, axes = VIEWS[kind][v]
        draw_graph(ax, graphs[g], axes, LineCollection)
        ax.set_title(f"{titles[g]}\n{view_title}" if kind == "SE3" else titles[g], fontsize=9)
        if v == 0:
            ax.legend(loc="best", fontsize=7, framealpha=0.8)
    if slot is not None:
        draw_history(fig.add_subplot(grid[slot[0], slot[1]]), trace)
    fig.tight_layout()
    try:
        write_output(path, lambda fh: fig.savefig(fh, format=fmt, dpi=dpi))
    except ValueError as err:  # refused by matplotlib
        if isinstance(err, PoseGraphError):
            raise
        raise PoseGraphError(f"cannot write the figure: {err}", path) from None
    return width, height


def _with_poses(graph: PoseGraph) -> Tuple[PoseGraph, str]:
    """The graph and a note; edge-only graphs get their spanning-tree initial guess."""
    if graph.poses is not None:
        return graph, ""
    from posegraph.init.dispatch import initialize

    return initialize(graph, "spanning-tree"), " (spanning-tree guess)"


def plot_files(
    initial: str,
    optimized: Optional[str],
    output: str,
    trace: Optional[str] = None,
    size: Optional[Tuple[int, int]] = None,
    dpi: int = 100,
    overwrite_input: bool = False,
    file_format: Optional[str] = None,
) -> Tuple[int, int]:
    """``posegraph plot``: read the files (and the trace) and write the figure. Inputs are g2o
    graphs or TUM/KITTI trajectories (drawn as polylines), by extension or ``file_format``
    (:func:`posegraph.io.poses.file_format`). An output that is one of the input files is
    refused (before anything is read) unless ``overwrite_input=True``."""
    from posegraph.debug.inspect_trace import load_trace
    from posegraph.io.trajectory import Trajectory
    from posegraph.io.poses import read_poses

    check_outputs([output], [initial, optimized, trace], overwrite_input=overwrite_input)

    graphs, titles = [], []
    for p, label in ((initial, "before"), (optimized, "after")):
        if p is None:
            continue
        poses = read_poses(p, file_format)
        g, note = _with_poses(poses.to_graph() if isinstance(poses, Trajectory) else poses)
        graphs.append(g)
        titles.append(f"{label if optimized else ''}{': ' if optimized else ''}{os.path.basename(p)}{note}")
    data = load_trace(trace) if trace else None
    return plot_graphs(graphs, output, titles=titles, trace=data, size=size, dpi=dpi)
