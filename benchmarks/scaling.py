"""How time per iteration grows with the graph: synthetic SE2 (and SE3) graphs, 1k–100k poses.

    .venv/bin/python benchmarks/scaling.py [--sizes 1000 3000 …] [--kind se2|se3|both]
                                            [--iterations 5] [--threads N] [--repeat N] [--json]

Per graph it prints: poses, edges, build time (objective + linearization structure + the
factorization's symbolic analysis), time per LM iteration (linearize, solve, re-evaluate the
error; a fixed number of iterations, tolerances 0), the factorization backend (CHOLMOD or
PARDISO), the share of the iteration spent in its numeric factorizations (with the assembly of
``AᵀA`` where the solver does it) and solves (CG with a reused factor included), the numeric
factorizations run (the other solves reused the last factor), the nonzeros of the Cholesky
factor, and peak RSS.
SE2 graphs are :func:`posegraph.synthetic.large_se2` (city10000-like); SE3 graphs are
:func:`posegraph.synthetic.sphere_se3` (sphere2500-like, ``rings × poses_per_ring``).
The per-iteration time should grow like the sparse factorization (``nnz(L)``), not worse.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's posegraph
import posegraph as pg  # noqa: E402
from posegraph.solve.optimize import make_optimizer  # noqa: E402
from posegraph.synthetic.graphs import large_se2, sphere_se3  # noqa: E402
import torch  # noqa: E402

warnings.filterwarnings("ignore")
DEFAULT_SIZES = [1000, 3000, 10000, 30000, 100000]


class _TimedFactorization:
    """Stands in for the solver's factorization (CHOLMOD's or PARDISO's) and times its numeric
    work: factorizations (with the assembly of ``AᵀA`` where the solver does it) and solves."""

    def __init__(self, factorization: Any):
        self._factorization = factorization
        self.seconds = 0.0
        self.nnz_l = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._factorization, name)

    def factorize(self, *args, **kwargs):
        t0 = time.perf_counter()
        factor = self._factorization.factorize(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        if not self.nnz_l:
            analysis = getattr(self._factorization, "analysis", None)
            self.nnz_l = analysis.factor_nonzeros if analysis is not None else int(factor.L().nnz)
        return _TimedFactor(factor, self)


class _TimedFactor:
    def __init__(self, factor: Any, owner: _TimedFactorization):
        self._factor, self._owner = factor, owner

    def __call__(self, rhs):
        t0 = time.perf_counter()
        out = self._factor(rhs)
        self._owner.seconds += time.perf_counter() - t0
        return out


def graph_of(kind: str, num_poses: int) -> pg.PoseGraph:
    if kind == "se2":
        return large_se2(num_poses=num_poses, seed=0)[0]
    per_ring = max(10, int(round(math.sqrt(num_poses))))
    rings = max(2, num_poses // per_ring)
    return sphere_se3(num_rings=rings, poses_per_ring=per_ring, seed=0)[0]


def run(kind: str, num_poses: int, iterations: int, threads: Optional[int] = None) -> Dict[str, Any]:
    graph = pg.initialize(graph_of(kind, num_poses))
    t0 = time.perf_counter()
    problem = pg.build_problem(graph)
    options = pg.SolverOptions(
        solver="lm", max_iterations=iterations, rel_tolerance=0.0, abs_tolerance=0.0, threads=threads
    )
    optimizer = make_optimizer(problem, options)
    build_s = time.perf_counter() - t0
    timed = _TimedFactorization(optimizer.linear_solver.factorization)
    optimizer.linear_solver.factorization = timed
    t1 = time.perf_counter()
    with torch.no_grad():
        res = pg.optimize(problem, options, optimizer=optimizer)
    solve_s = time.perf_counter() - t1
    its = max(res.iterations, 1)
    return {
        "kind": kind.upper(),
        "poses": graph.num_poses,
        "edges": graph.num_edges,
        "build_s": build_s,
        "per_iter_s": solve_s / its,
        "iterations": res.iterations,
        "backend": optimizer.linear_solver.backend,
        "factor_share": timed.seconds / solve_s if solve_s > 0 else 0.0,
        "factorizations": res.factor_stats.factorizations if res.factor_stats else its,
        "nnz_L": timed.nnz_l,
        "final_error": float(res.final_error[0]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=DEFAULT_SIZES)
    ap.add_argument("--kind", choices=["se2", "se3", "both"], default="se2")
    ap.add_argument("--iterations", type=int, default=5, help="LM iterations per graph")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for everything (default: torch's, and one for small graphs' iterations)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per graph, keep the fastest")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:  # otherwise torch's own default, as the CLI runs (an explicit call is not neutral)
        torch.set_num_threads(args.threads)
    kinds = ["se2", "se3"] if args.kind == "both" else [args.kind]
    rows = []
    if not args.json:
        print(f"{'kind':<5}{'poses':>8}{'edges':>8}{'build':>9}{'per-iter':>10}{'backend':>9}"
              f"{'share':>7}{'factors':>8}{'nnz(L)':>11}{'RSS MB':>8}")
    for kind in kinds:
        for n in args.sizes:
            runs = [run(kind, n, args.iterations, args.threads or None) for _ in range(max(1, args.repeat))]
            r = min(runs, key=lambda x: x["per_iter_s"])
            rows.append(r)
            if not args.json:
                print(f"{r['kind']:<5}{r['poses']:>8}{r['edges']:>8}{r['build_s']:>8.3f}s"
                      f"{r['per_iter_s']:>9.4f}s{r['backend']:>9}{100 * r['factor_share']:>6.0f}%"
                      f"{r['factorizations']:>8}"
                      f"{r['nnz_L']:>11}{r['peak_rss_mb']:>8.0f}", flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
