"""CHOLMOD supernodal vs simplicial, and MKL PARDISO, factorization time against the estimated fill.

    .venv/bin/python benchmarks/cholmod_modes.py [--datasets DIR] [--repeat N] [--json]

For the shared datasets (when present) and generated sphere / 2D graphs of several sizes it
prints the factor's estimated flops and flops per nonzero of L
(:func:`posegraph.solve.symbolic.estimate_factor_cost`), the measured numeric factorization
time of ``AᵀA + λI`` (best of N): supernodal and simplicial in CHOLMOD's AMD ordering of
``AAᵀ``, and in the block-graph order the solver uses
(:func:`posegraph.solve.symbolic.block_fill_order`) simplicial from ``Aᵀ`` and supernodal on
the solver's assembled ``AᵀA`` (:class:`posegraph.solve.normal.NormalMatrix`, assembly
included) and MKL PARDISO on the same assembled ``AᵀA`` (when ``mkl`` is installed; assembly
included); the time to find each order (CHOLMOD's analysis of the scalar pattern; the block
order plus CHOLMOD's analysis in it), the faster of the solver's two CHOLMOD paths, the mode
:func:`posegraph.solve.symbolic.choose_cholmod_mode` picks and the backend
:func:`posegraph.solve.symbolic.plan_factorization` picks — the measurements behind
``SUPERNODAL_MIN_FLOPS_PER_NONZERO``, ``SUPERNODAL_MIN_FLOPS``,
``PARDISO_MIN_FLOPS_PER_NONZERO`` and the block order.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's posegraph
import posegraph as pg  # noqa: E402
from posegraph.solve import symbolic  # noqa: E402
from posegraph.solve.symbolic import OrderedTranspose  # noqa: E402
from posegraph.solve.optimize import make_optimizer  # noqa: E402
from posegraph.synthetic.graphs import large_se2, sphere_se3  # noqa: E402
from posegraph.solve.normal import NormalMatrix  # noqa: E402
from posegraph.solve.pardiso import PardisoAnalysis  # noqa: E402
from posegraph.solve.mkl import pardiso_available
from sksparse.cholmod import analyze, analyze_AAt  # noqa: E402

warnings.filterwarnings("ignore")
DEFAULT_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "g2o"
FILES = ["smallGrid3D", "intel", "manhattan", "parking-garage", "sphere2500"]


def best_ms(fn: Callable[[], Any], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def graphs(datasets: Path) -> Iterator[Tuple[str, pg.PoseGraph]]:
    for name in FILES:
        path = datasets / f"{name}.g2o"
        if path.exists():
            yield name, pg.read_g2o(path)
    for n in (300, 1000, 2500, 5000):
        per_ring = max(10, int(round(math.sqrt(n))))
        yield f"sphere-{n}", sphere_se3(num_rings=max(2, n // per_ring), poses_per_ring=per_ring, seed=0)[0]
    for rings, per_ring in ((4, 50), (10, 100)):
        yield f"sphere-{rings}x{per_ring}", sphere_se3(num_rings=rings, poses_per_ring=per_ring, seed=0)[0]
    for n in (3000, 10000):
        yield f"se2-{n}", large_se2(num_poses=n, seed=0)[0]


def measure(name: str, graph: pg.PoseGraph, repeat: int) -> Dict[str, Any]:
    problem = pg.build_problem(pg.initialize(graph))
    lin = make_optimizer(problem, pg.SolverOptions(linear_solver="cholmod")).linear_solver.linearization
    lin.linearize()
    values = lin.A_val[0].double().numpy()
    at = lin.structure().csc_transpose(values)
    cost = symbolic.estimate_factor_cost(lin)
    times = {}
    for mode in ("supernodal", "simplicial"):
        sym = analyze_AAt(at, mode=mode, ordering_method="amd")
        times[mode] = best_ms(lambda: sym.cholesky_AAt(at, beta=1e-6), repeat)
    block = symbolic.block_fill_order(lin)
    ordered = OrderedTranspose(lin, block.columns).transpose(values)
    sym = analyze_AAt(ordered, mode="simplicial", ordering_method="natural")
    times["block"] = best_ms(lambda: sym.cholesky_AAt(ordered, beta=1e-6), repeat)
    # The solver's supernodal path: AᵀA assembled in the block order, then factored.
    normal = NormalMatrix(lin, block.sizes, block.blocks)
    sym = analyze(normal.pattern(), mode="supernodal", ordering_method="natural")
    a_val = lin.A_val[0].double()
    times["assembled"] = best_ms(lambda: sym.cholesky(normal.matrix(a_val, 1e-6)), repeat)
    times["pardiso"] = float("nan")
    if pardiso_available():  # the same assembled AᵀA, in the same order
        analysis = PardisoAnalysis(normal.num_cols, normal.indptr, normal.indices)
        times["pardiso"] = best_ms(lambda: analysis.factorize(normal.values(a_val, 1e-6)), repeat)

    def block_analysis() -> None:
        order = symbolic.block_fill_order(lin)
        analyze_AAt(OrderedTranspose(lin, order.columns).pattern(), mode="simplicial", ordering_method="natural")

    return {
        "graph": name,
        "columns": lin.num_cols,
        "flops_m": cost.flops / 1e6,
        "flops_per_nonzero": cost.flops_per_nonzero,
        "supernodal_ms": times["supernodal"],
        "simplicial_ms": times["simplicial"],
        "simplicial_block_ms": times["block"],
        "supernodal_assembled_ms": times["assembled"],
        "pardiso_ms": times["pardiso"],
        "block_method": block.method,
        "analysis_ms": best_ms(lambda: analyze_AAt(at, mode="simplicial"), repeat),
        "block_analysis_ms": best_ms(block_analysis, repeat),
        "faster": "supernodal" if times["assembled"] < times["block"] else "simplicial",
        "chosen": symbolic.choose_cholmod_mode(lin),
        "backend": symbolic.plan_factorization(lin).backend,
    }


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=Path, default=Path(os.environ.get("POSEGRAPH_DATASETS", DEFAULT_DATASETS)))
    ap.add_argument("--repeat", type=int, default=3, help="factorizations per mode (best kept)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows = []
    for name, graph in graphs(args.datasets):
        rows.append(measure(name, graph, args.repeat))
        if not args.json:
            r = rows[-1]
            if len(rows) == 1:
                print(f"{'':<44}{'CHOLMOD order':^24}{'block order':^36}{'order found in':^20}")
                print(f"{'graph':<18}{'columns':>8}{'Mflop':>9}{'flop/nnz':>9}{'supernodal':>12}{'simplicial':>12}"
                      f"{'simplicial':>13}{'supernodal':>13}{'PARDISO':>10}{'CHOLMOD':>10}{'block':>10}"
                      f"  faster      chosen      backend")
            print(f"{r['graph']:<18}{r['columns']:>8}{r['flops_m']:>9.1f}{r['flops_per_nonzero']:>9.0f}"
                  f"{r['supernodal_ms']:>10.2f}ms{r['simplicial_ms']:>10.2f}ms{r['simplicial_block_ms']:>11.2f}ms"
                  f"{r['supernodal_assembled_ms']:>11.2f}ms{r['pardiso_ms']:>8.2f}ms"
                  f"{r['analysis_ms']:>8.2f}ms{r['block_analysis_ms']:>8.2f}ms  {r['faster']:<11} {r['chosen']:<11}"
                  f" {r['backend']}",
                  flush=True)
    if args.json:
        print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
