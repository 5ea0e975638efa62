"""The spanning-tree initial guess: measurements composed along a tree of the graph's edges.

The tree is Kruskal's (union–find) over edges ordered by id gap ``|i − j|`` then file order,
so it follows the odometry chain (consecutive ids) wherever there is one — the usual
"odometry initialization" — and falls back to any connecting edge elsewhere. Going along an
edge ``Xⱼ = Xᵢ · Zᵢⱼ``, against it ``Xᵢ = Xⱼ · Zᵢⱼ⁻¹``; the lowest vertex id is the root.
"""

from __future__ import annotations

from collections import deque
from typing import List
import numpy as np
import torch
from posegraph.errors import GraphStructureError
from posegraph.graph import PoseGraph, connected_components
from posegraph.lie.homogeneous import from_homogeneous, to_homogeneous


def require_connected(graph: PoseGraph) -> np.ndarray:
    """Raise GraphStructureError unless the edges connect all vertices (an initial guess
    built from the edges needs a path from the root to every vertex); returns the component
    labels (all 0)."""
    labels = connected_components(graph.num_poses, graph.edges.cpu().numpy())
    if labels.max(initial=0) > 0:
        ids = graph.ids.tolist()
        other = int(np.flatnonzero(labels != labels[0])[0])
        raise GraphStructureError(
            f"the graph is disconnected ({labels.max() + 1} components; e.g. no path from "
            f"vertex {ids[0]} to vertex {ids[other]}): cannot build an initial guess from "
            "its edges",
            graph.source,
        )
    return labels


def spanning_tree_edges(graph: PoseGraph) -> List[int]:
    """Indices of the edges of the initialization tree (see module doc).

    Raises:
        GraphStructureError: when the edges do not connect all vertices.
    """
    require_connected(graph)
    edges = graph.edges.cpu().numpy()
    ids = graph.ids.cpu().numpy()
    gap = np.abs(ids[edges[:, 0]] - ids[edges[:, 1]])
    order = np.lexsort((np.arange(len(edges)), gap))
    parent = np.arange(graph.num_poses)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    tree = []
    for e in order.tolist():
        ra, rb = find(int(edges[e, 0])), find(int(edges[e, 1]))
        if ra != rb:
            parent[ra] = rb
            tree.append(e)
    return tree


def spanning_tree(graph: PoseGraph) -> torch.Tensor:
    """Poses ``(N, *shape)`` (float64, CPU) composed along the spanning tree; the lowest id
    gets the identity."""
    tree = spanning_tree_edges(graph)
    edges = graph.edges.cpu().numpy()
    meas = to_homogeneous(graph.kind, graph.measurements.reshape(-1, *graph.element_shape)[: graph.num_edges])
    adjacency: List[List[int]] = [[] for _ in range(graph.num_poses)]
    for e in tree:
        adjacency[edges[e, 0]].append(e)
        adjacency[edges[e, 1]].append(e)
    root = int(torch.argmin(graph.ids))
    k = meas.shape[-1]
    poses = np.zeros((graph.num_poses, k, k))
    poses[root] = np.eye(k)
    seen = np.zeros(graph.num_poses, dtype=bool)
    seen[root] = True
    queue = deque([root])
    while queue:
        a = queue.popleft()
        for e in adjacency[a]:
            i, j = edges[e]
            if i == a and not seen[j]:
                poses[j] = poses[i] @ meas[e]
                seen[j] = True
                queue.append(j)
            elif j == a and not seen[i]:
                poses[i] = poses[j] @ np.linalg.inv(meas[e])
                seen[i] = True
                queue.append(i)
    return from_homogeneous(graph.kind, poses)
