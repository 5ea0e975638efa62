"""Benchmark posegraph against GTSAM and stock Theseus on the same g2o files, in one run.

    .venv/bin/python benchmarks/bench.py [--datasets DIR] [--only NAME ...] [--stock] [--json]
                                         [--threads N] [--repeat N] [--stock-repeat N]

Per dataset it prints: posegraph's time (parse + build + solve, in-process), iterations,
time per iteration (the solve loop only, after the one-time structure and symbolic analysis;
with ``--repeat N`` the fastest of the N runs' iterations, as for stock Theseus),
the numeric factorizations it took (PARDISO or CHOLMOD; the other solves reuse the last factor,
see ``posegraph.solve.sparse_cholesky.SparseCholeskySolver``), initial and final error (½ Σ eᵀΩe, GTSAM's convention), peak RSS of the process so far, the
ratio to GTSAM (when `gtsam` is importable: `pip install gtsam`, an optional `bench` extra — never
a runtime dependency), and with ``--stock`` the per-iteration and build ratios to stock Theseus
(its example-style objective: one ``th.Between`` per edge, ``DiagonalCostWeight`` from Ω's
diagonal, ``CholmodSparseSolver``; two iterations are timed, as it is slow; ``--stock-repeat N``
keeps the fastest of N such runs, as ``--repeat N`` does for posegraph; the runs of the two
alternate, so both see the same stretches of a machine whose speed drifts).
A generated 10000-pose SE2 graph (``posegraph.synthetic.large_se2``) stands in for city10000.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import gc
import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's posegraph
import posegraph as pg  # noqa: E402
from posegraph.solve.optimize import make_optimizer  # noqa: E402
import torch  # noqa: E402

warnings.filterwarnings("ignore")
DEFAULT_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "g2o"
FILES = ["sphere2500", "parking-garage", "smallGrid3D", "tinyGrid3D", "intel", "manhattan"]
#: GTSAM 4.3's published times (parse + build + solve, LM 1e-10; ../shared/datasets/README.md,
#: measured on the 2-core development machine), used for "vs GTSAM" when gtsam is not importable
#: (the ratio is then printed with a trailing "*"). city10000's 0.99 s stands in for the
#: generated 10000-pose SE2 graph.
GTSAM_REFERENCE_S = {"sphere2500": 0.57, "parking-garage": 0.28, "smallGrid3D": 0.03,
                     "tinyGrid3D": 0.001, "intel": 0.08, "manhattan": 0.22, "synthetic-se2-10000": 0.99}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


#: the start of every run: the file's vertices, as GTSAM's (``--init auto`` may start from the
#: chordal guess instead, and take fewer iterations)
FROM_GTSAMS_START = "file"


def run_posegraph(path: Optional[Path], graph: Optional[pg.PoseGraph] = None, threads: Optional[int] = None) -> Dict[str, Any]:
    """One run, timed by phase; ``threads``: ``SolverOptions.threads`` (``None``: posegraph's
    default, one torch thread for the iterations of small graphs)."""
    t0 = time.perf_counter()
    g = graph if graph is not None else pg.read_g2o(path)
    g = pg.initialize(g, FROM_GTSAMS_START if g.has_poses else "spanning-tree")
    t1 = time.perf_counter()
    problem = pg.build_problem(g)
    t2 = time.perf_counter()
    options = pg.SolverOptions(solver="lm", threads=threads)
    optimizer = make_optimizer(problem, options)  # sparsity structure + symbolic analysis
    t_setup = time.perf_counter()
    with torch.no_grad():
        res = pg.optimize(problem, options, optimizer=optimizer)
    t3 = time.perf_counter()
    return {
        "time_s": t3 - t0,
        "parse_s": t1 - t0,
        "build_s": t2 - t1,
        "setup_s": t_setup - t2,
        "solve_s": t3 - t2,
        "per_iter_s": (t3 - t_setup) / max(res.iterations, 1),
        "iterations": res.iterations,
        "initial_error": float(res.initial_error[0]),
        "final_error": float(res.final_error[0]),
        "status": res.status[0],
        "factorization": dataclasses.asdict(res.factor_stats) if res.factor_stats else None,
    }


def fastest(runs: Sequence[Dict[str, Any]], key: str = "time_s", also: Sequence[str] = ()) -> Dict[str, Any]:
    """The fastest of ``runs`` by ``key`` (timings on a shared machine are noisy), with each
    timing named in ``also`` the fastest of its own over the runs."""
    best = dict(min(runs, key=lambda r: r[key]))
    for name in also:
        best[name] = min(r[name] for r in runs)
    return best


def best_of(repeat: int, fn, *args, key: str = "time_s", also: Sequence[str] = ()) -> Dict[str, Any]:
    """:func:`fastest` of ``repeat`` runs of ``fn(*args)``."""
    return fastest([fn(*args) for _ in range(max(1, repeat))], key, also)


def in_turns(*plans: Tuple[int, Callable[[], Dict[str, Any]]]) -> List[List[Dict[str, Any]]]:
    """Each ``(count, fn)``'s ``count`` runs, taken in turns (a, b, a, b, …) so that both
    sample the same stretches of a machine whose speed drifts (the ratio of their fastest
    iterations is then measured under the same conditions), with a garbage collection after
    each run outside its timing (stock Theseus leaves ~10⁵ objects behind); the runs of each."""
    runs: List[List[Dict[str, Any]]] = [[] for _ in plans]
    for k in range(max(max(1, count) for count, _ in plans)):
        for (count, fn), out in zip(plans, runs):
            if k < max(1, count):
                out.append(fn())
                gc.collect()
    return runs


def run_gtsam(path: Path) -> Optional[Dict[str, Any]]:
    try:
        import gtsam  # type: ignore
    except ImportError:
        return None
    t0 = time.perf_counter()
    is3d = "SE3" in open(path).read(4096) or "VERTEX_SE3" in open(path).read(4096)
    graph, initial = gtsam.readG2o(str(path), is3d)
    if is3d:
        graph.add(gtsam.PriorFactorPose3(0, initial.atPose3(0), gtsam.noiseModel.Isotropic.Sigma(6, 1e-6)))
    else:
        graph.add(gtsam.PriorFactorPose2(0, initial.atPose2(0), gtsam.noiseModel.Isotropic.Sigma(3, 1e-6)))
    params = gtsam.LevenbergMarquardtParams()
    params.setRelativeErrorTol(1e-10)
    params.setAbsoluteErrorTol(1e-10)
    params.setMaxIterations(100)
    opt = gtsam.LevenbergMarquardtOptimizer(graph, initial, params)
    result = opt.optimize()
    return {"time_s": time.perf_counter() - t0, "final_error": graph.error(result), "iterations": opt.iterations()}


def run_stock_theseus(path: Path) -> Dict[str, Any]:
    """Stock Theseus: one th.SE3 per pose, one th.Between per edge (diagonal weights)."""
    import theseus as th

    g = pg.read_g2o(path)
    g = pg.initialize(g, FROM_GTSAMS_START if g.has_poses else "spanning-tree")
    cls = g.element_cls
    t0 = time.perf_counter()
    poses = [cls(tensor=g.poses[k : k + 1].clone(), name=f"x{k}") for k in range(g.num_poses)]
    fixed = g.gauge_fixed()
    obj = th.Objective(dtype=torch.float64)
    for k, (i, j) in enumerate(g.edges.tolist()):
        z = cls(tensor=g.measurements[k : k + 1].clone(), name=f"z{k}")
        w = th.DiagonalCostWeight(torch.diagonal(g.information[k]).sqrt().unsqueeze(0))
        obj.add(th.Between(poses[i], poses[j], z, w, name=f"e{k}"))
    for k in torch.nonzero(fixed).flatten().tolist():  # hold the gauge with a strong prior
        obj.add(th.Difference(poses[k], poses[k].copy(new_name=f"a{k}"), th.ScaleCostWeight(torch.tensor(1e6, dtype=torch.float64)), name=f"p{k}"))
    opt = th.GaussNewton(obj, linear_solver_cls=th.CholmodSparseSolver, max_iterations=2, vectorize=True)
    obj.update()
    t1 = time.perf_counter()
    with torch.no_grad():
        opt.optimize()
    t2 = time.perf_counter()
    return {"build_s": t1 - t0, "per_iter_s": (t2 - t1) / 2}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=Path, default=Path(os.environ.get("POSEGRAPH_DATASETS", DEFAULT_DATASETS)))
    ap.add_argument("--only", nargs="*", help="dataset names (file stems) to run")
    ap.add_argument("--stock", action="store_true", help="also time stock Theseus (slow)")
    ap.add_argument("--no-synthetic", action="store_true", help="skip the generated 10000-pose graph")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads for everything (default: torch's, and one for small graphs' iterations)")
    ap.add_argument("--repeat", type=int, default=1, help="run posegraph N times, keep the fastest")
    ap.add_argument("--stock-repeat", type=int, default=1,
                    help="with --stock, time stock Theseus N times and keep the fastest iteration")
    args = ap.parse_args(argv)
    if args.threads:  # otherwise torch's own default, as the CLI runs (an explicit call is not neutral)
        torch.set_num_threads(args.threads)
    run = functools.partial(run_posegraph, threads=args.threads or None)
    rows = []
    names = args.only or FILES
    for name in names:
        path = args.datasets / f"{name}.g2o"
        if not path.exists():
            print(f"skipping {name}: {path} not found", file=sys.stderr)
            continue
        plans = [(args.repeat, functools.partial(run, path))]
        if args.stock:  # posegraph and stock Theseus in turns
            plans.append((args.stock_repeat, functools.partial(run_stock_theseus, path)))
        ours, *stock = in_turns(*plans)
        row: Dict[str, Any] = {"dataset": name, "posegraph": fastest(ours, also=("per_iter_s",))}
        row["gtsam"] = run_gtsam(path)
        if stock:
            row["stock_theseus"] = fastest(stock[0], key="per_iter_s")
        row["peak_rss_mb"] = peak_rss_mb()
        rows.append(row)
    if not args.no_synthetic and not args.only:
        try:
            from posegraph.synthetic.graphs import large_se2

            noisy, _ = large_se2(num_poses=10000, seed=0)
            rows.append({"dataset": "synthetic-se2-10000", "posegraph": best_of(args.repeat, run, None, noisy, also=("per_iter_s",)),
                         "gtsam": None, "peak_rss_mb": peak_rss_mb()})
        except ImportError:
            pass
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    hdr = f"{'dataset':<22}{'time':>8}{'iters':>6}{'initial':>14}{'final':>16}{'per-iter':>10}{'factors':>8}{'vs GTSAM':>9}{'vs stock/it':>12}{'build x':>8}{'RSS MB':>8}"
    print(hdr)
    for r in rows:
        p = r["posegraph"]
        gt = r.get("gtsam")
        st = r.get("stock_theseus")
        ref = GTSAM_REFERENCE_S.get(r["dataset"])
        ratio = f"{p['time_s'] / gt['time_s']:.2f}" if gt else (f"{p['time_s'] / ref:.2f}*" if ref else "—")
        sratio = f"{st['per_iter_s'] / p['per_iter_s']:.1f}" if st else "—"
        bratio = f"{st['build_s'] / p['build_s']:.0f}" if st else "—"
        chol = p.get("factorization")
        factors = f"{chol['factorizations']}" if chol else "—"
        print(f"{r['dataset']:<22}{p['time_s']:>7.3f}s{p['iterations']:>6}{p['initial_error']:>14.6g}"
              f"{p['final_error']:>16.10g}{p['per_iter_s'] * 1e3:>8.2f}ms{factors:>8}{ratio:>9}{sratio:>12}{bratio:>8}{r['peak_rss_mb']:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
