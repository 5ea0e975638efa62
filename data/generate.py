#!/usr/bin/env python3
"""Regenerate the synthetic g2o files of ``data/`` (see ``data/README.md``).

    .venv/bin/python data/generate.py --out data/          # write them
    .venv/bin/python data/generate.py --out data/ --check  # exit 1 if any file differs

Every file is a pure function of the parameters below (fixed seeds, float64, written with
:func:`posegraph.io.write_g2o`); ``tests/test_synthetic.py`` regenerates them and compares
with the committed copies, so change the parameters here and rerun rather than editing files.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional

from posegraph.io import write_g2o
from posegraph.io.g2o import format_g2o
from posegraph.graph import PoseGraph
from posegraph.synthetic import grid_se2, sphere_se3

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


def build() -> Dict[str, PoseGraph]:
    """File name → graph, in writing order."""
    sphere, sphere_gt = sphere_se3(**SPHERE)
    grid, grid_gt = grid_se2(**GRID)
    edges_only, _ = grid_se2(**GRID, initial=None)
    # Same seed, same draws: the edge-only file is grid_se2.g2o without its VERTEX lines.
    assert edges_only.poses is None and (edges_only.measurements == grid.measurements).all()
    return {
        "sphere_se3.g2o": sphere,
        "sphere_se3.gt.g2o": sphere_gt,
        "grid_se2.g2o": grid,
        "grid_se2.gt.g2o": grid_gt,
        "grid_se2_edges_only.g2o": edges_only,
    }


def render() -> Dict[str, str]:
    """File name → exact g2o text that :func:`main` writes."""
    return {name: format_g2o(graph) for name, graph in build().items()}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=HERE, help="output folder (default: the folder of this script)")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 when a file in --out differs from what would be written")
    args = p.parse_args(argv)
    graphs = build()
    stale = []
    if not args.check:
        os.makedirs(args.out, exist_ok=True)
    for name, graph in graphs.items():
        path = os.path.join(args.out, name)
        if args.check:
            try:
                with open(path, encoding="utf-8") as fh:
                    same = fh.read() == format_g2o(graph)
            except FileNotFoundError:
                same = False
            if not same:
                stale.append(path)
            continue
        write_g2o(graph, path)
        os.chmod(path, 0o644)  # the atomic writer's temporary file is private (0600)
        what = "edge-only" if graph.poses is None else f"{graph.num_poses} poses"
        print(f"wrote {path} ({graph.kind}, {what}, {graph.num_edges} edges, "
              f"{os.path.getsize(path)} bytes)")
    if stale:
        print("out of date: " + ", ".join(stale) + " (run data/generate.py)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
