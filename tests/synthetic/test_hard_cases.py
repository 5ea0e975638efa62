"""Hard-case generators: seeded, input untouched, and each case is what its name says."""

import numpy as np
import torch

from posegraph.synthetic.hard_cases import (
    perturb_vertices,
    with_false_loop_closures,
    with_indefinite_information,
)
from posegraph.synthetic.graphs import sphere_se3, grid_se2


def test_perturb_keeps_first_pose_and_is_seeded():
    for graph in (sphere_se3(num_rings=3, poses_per_ring=10, seed=1).graph, grid_se2(num_poses=30, seed=1).graph):
        before = graph.poses.clone()
        a = perturb_vertices(graph, 2.0, 1.5, seed=3)
        b = perturb_vertices(graph, 2.0, 1.5, seed=3)
        assert torch.equal(graph.poses, before)
        assert torch.equal(a.poses, b.poses)
        assert torch.equal(a.poses[0], before[0])
        assert (a.poses[1:] - before[1:]).abs().max() > 0.5
        if graph.kind == "SE3":
            rot = a.poses[:, :, :3]
            eye = torch.eye(3, dtype=rot.dtype).expand_as(rot)
            assert torch.allclose(rot.transpose(1, 2) @ rot, eye, atol=1e-12)
        else:
            assert torch.allclose(a.poses[:, 2:].norm(dim=1), torch.ones(30, dtype=torch.float64))


def test_false_loop_closures_are_added_non_consecutive_with_loop_information():
    graph = sphere_se3(num_rings=4, poses_per_ring=15, seed=2).graph
    loops = int(graph.loop_closures().sum())
    out = with_false_loop_closures(graph, 0.5, seed=0)
    added = out.num_edges - graph.num_edges
    assert added == round(0.5 * loops) and added > 0
    assert out.extras["outlier"].sum() == added and not out.extras["outlier"][: graph.num_edges].any()
    new = out.edges[graph.num_edges:]
    assert ((new[:, 0] - new[:, 1]).abs() > 1).all()
    first = int(np.flatnonzero(graph.loop_closures().numpy())[0])
    assert torch.equal(out.information[-1], graph.information[first])


def test_indefinite_information_has_negative_eigenvalues_where_marked():
    graph = grid_se2(num_poses=40, seed=0).graph
    out = with_indefinite_information(graph, 0.3, seed=0)
    smallest = torch.linalg.eigvalsh(out.information)[:, 0]
    mask = out.extras["indefinite"]
    assert mask.sum() == round(0.3 * graph.num_edges)
    assert (smallest[mask] < 0).all() and (smallest[~mask] > 0).all()
    assert torch.allclose(out.information, out.information.transpose(1, 2))
