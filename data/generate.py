#!/usr/bin/env python3
"""Regenerate the synthetic g2o files of ``data/`` (see ``data/README.md``).

    .venv/bin/python data/generate.py --out data/          # write them
    .venv/bin/python data/generate.py --out data/ --check  # exit 1 if any file differs

Every file is a pure function of the parameters below (fixed seeds, float64, written with
:func:`posegraph.io.write_g2o`); ``tests/synthetic/test_synthetic.py`` regenerates them and compares
with the committed copies, so change the parameters here and rerun rather than editing files.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional

from posegraph.io.g2o_write import format_g2o
from posegraph.io.output import write_text_atomic
from posegraph.graph import PoseGraph
from posegraph.mesh.obj import format_obj
from posegraph.synthetic.graphs import grid_se2, sphere_se3
from posegraph.synthetic.landmarks import mesh_observations

HERE = os.path.dirname(os.path.abspath(__file__))

#: Parameters of each dataset (the README documents the same values).
SPHERE = dict(
    num_rings=10, poses_per_ring=50, radius=100.0, loop_closures=True,
    translation_sigma=0.1, rotation_sigma=0.01, seed=1,
)
GRID = dict(
    width=4, height=4, num_poses=500, block_length=5, step=1.0, turn_probability=0.5,
    closure_radius=1.0, min_gap=10, max_closures_per_pose=1, closure_probability=1.0,
    translation_sigma=0.05, rotation_sigma=0.01, seed=2,
)
MESH = dict(
    subdivisions=3, num_poses=60, orbit_radius=2.5, orbit_height=1.2, turns=2.0,
    observations_per_pose=40, point_sigma=0.05, translation_sigma=0.02, rotation_sigma=0.005,
    point_id_base=1000, seed=3,
)


def build() -> Dict[str, PoseGraph]:
    """File name → graph, in writing order."""
    sphere, sphere_gt = sphere_se3(**SPHERE)
    grid, grid_gt = grid_se2(**GRID)
    edges_only, _ = grid_se2(**GRID, initial=None)
    # Same seed, same draws: the edge-only file is grid_se2.g2o without its VERTEX lines.
    assert edges_only.poses is None and (edges_only.measurements == grid.measurements).all()
    mesh, mesh_gt = mesh_observations(**MESH)
    return {
        "sphere_se3.g2o": sphere,
        "sphere_se3.gt.g2o": sphere_gt,
        "grid_se2.g2o": grid,
        "grid_se2.gt.g2o": grid_gt,
        "grid_se2_edges_only.g2o": edges_only,
        "mesh_demo.g2o": mesh,
        "mesh_demo.gt.g2o": mesh_gt,
    }


def render() -> Dict[str, str]:
    """File name → exact text that :func:`main` writes (the g2o graphs and the demo's mesh)."""
    graphs = build()
    texts = {name: format_g2o(graph) for name, graph in graphs.items()}
    verts, faces = graphs["mesh_demo.gt.g2o"].extras["mesh"]
    texts["icosphere.obj"] = format_obj(verts, faces)
    return texts


def describe(name: str, graph: Optional[PoseGraph]) -> str:
    """One line about a written file."""
    if graph is None:
        return "mesh"
    what = "edge-only" if graph.poses is None else f"{graph.num_poses} poses"
    points = f", {graph.num_points} points" if graph.landmarks is not None else ""
    return f"{graph.kind}, {what}, {graph.num_edges} edges{points}"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=HERE, help="output folder (default: the folder of this script)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when a file in --out differs from what would be written")
    args = p.parse_args(argv)
    graphs = build()
    texts = render()
    stale = []
    if not args.check:
        os.makedirs(args.out, exist_ok=True)
    for name, text in texts.items():
        path = os.path.join(args.out, name)
        if args.check:
            try:
                with open(path, encoding="utf-8") as fh:
                    same = fh.read() == text
            except FileNotFoundError:
                same = False
            if not same:
                stale.append(path)
            continue
        write_text_atomic(path, text)
        os.chmod(path, 0o644)  # the atomic writer's temporary file is private (0600)
        print(f"wrote {path} ({describe(name, graphs.get(name))}, {os.path.getsize(path)} bytes)")
    if stale:
        print("out of date: " + ", ".join(stale) + " (run data/generate.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
