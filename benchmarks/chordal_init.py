"""Time chordal initialization and compare the LM runs it starts with those from the file.

    .venv/bin/python benchmarks/chordal_init.py [--datasets DIR] [--only NAME ...] [--repeat N]

Per dataset it prints the chordal initialization time (``posegraph.chordal_initialization``,
best and median of ``--repeat`` runs, parsing excluded; GTSAM's ``InitializePose3`` takes
0.32 s on sphere2500 on the reference machine), then for ``--init file`` (or spanning tree for
edge-only files) and ``--init chordal``: the initial error, LM's final error, iterations and
solve time (errors are ½ Σ eᵀΩe, GTSAM's convention).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional

import posegraph as pg
import torch  # noqa: E402

warnings.filterwarnings("ignore")
DEFAULT_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "g2o"
FILES = ["sphere2500", "parking-garage", "smallGrid3D", "intel", "manhattan"]


def time_chordal(graph: pg.PoseGraph, repeat: int) -> List[float]:
    pg.chordal_initialization(graph)  # warm-up (imports, allocator)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        pg.chordal_initialization(graph)
        times.append(time.perf_counter() - t0)
    return times


def solve_from(graph: pg.PoseGraph, method: str) -> str:
    g = pg.initialize(graph, method)
    problem = pg.build_problem(g)
    t0 = time.perf_counter()
    with torch.no_grad():
        res = pg.optimize(problem)
    dt = time.perf_counter() - t0
    return (
        f"{method:>13}: initial {float(res.initial_error[0]):.10g} -> final "
        f"{float(res.final_error[0]):.10g} ({res.iterations} it, {res.status[0]}, solve {dt:.3f} s)"
    )


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=Path, default=Path(os.environ.get("POSEGRAPH_DATASETS", DEFAULT_DATASETS)))
    ap.add_argument("--only", nargs="*", default=None, metavar="NAME")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args(argv)
    for name in args.only or FILES:
        path = args.datasets / f"{name}.g2o"
        if not path.exists():
            print(f"{name}: {path} not found, skipped")
            continue
        graph = pg.read_g2o(path)
        times = time_chordal(graph, args.repeat)
        print(
            f"{name} ({graph.kind}, {graph.num_poses} poses, {graph.num_edges} edges): chordal init "
            f"best {min(times):.3f} s, median {statistics.median(times):.3f} s"
        )
        print("  " + solve_from(graph, "file" if graph.has_poses else "spanning-tree"))
        print("  " + solve_from(graph, "chordal"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
