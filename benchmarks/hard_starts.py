"""Hard cases off the benchmark path, generated (seeded) from sphere2500: posegraph as users run
it, and GTSAM's LM where it is installed.

    .venv/bin/python benchmarks/hard_starts.py [--datasets DIR] [--cases perturbed outliers indefinite]
                                               [--quick] [--no-gtsam]

Cases (``posegraph.synthetic.hard_cases``):

* ``perturbed``: every vertex but the first moved by ``t += N(0, σ_t²)``,
  ``R ← R·Exp(N(0, σ_r²))``, at two noise levels;
* ``outliers``: 10%, 30% and 50% false loop closures added (random pairs ``|i − j| > 1``, a
  random relative pose, the first loop closure's information);
* ``indefinite``: 30% of the information matrices made indefinite (``--repair-information``).

Each posegraph run is the CLI's own path in-process (``posegraph optimize FILE --json`` with the
run's flags, output read back); each row prints the start chosen, the final error (the cost
the run minimized, as ``--json`` reports it: ½ Σ eᵀΩe, or the kernel's / GNC's weighted cost
for robust runs), the ATE against the clean optimum (SE(3)-aligned RMSE of positions, as
``posegraph eval``), status, iterations and time (in-process, parse to write). GTSAM starts
from the file's vertices with the dataset README's settings.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import posegraph as pg
import torch

from posegraph.cli.main import _parse_args
from posegraph.cli.optimize import optimize_file
from posegraph.report.eval import evaluate
from posegraph.synthetic.hard_cases import (
    perturb_vertices,
    with_false_loop_closures,
    with_indefinite_information,
)
from posegraph.init.dispatch import pose_graph_error
from posegraph.io import read_g2o, write_g2o

warnings.filterwarnings("ignore")
DEFAULT_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "g2o"
HEADER = f"{'case':<26} {'run':<28} {'start':<8} {'final error':>14} {'ATE m':>9} {'status':<30} {'iters':>5} {'time s':>7}"


def posegraph_run(path: str, flags: List[str], clean: pg.PoseGraph, workdir: str) -> Dict:
    """``posegraph optimize PATH FLAGS --json`` in-process; the summary plus ``ate``."""
    out = os.path.join(workdir, "out.g2o")
    args = _parse_args(["optimize", path, "--json", "--quiet", "-o", out, *flags])
    try:
        summary = optimize_file(args)
    except pg.PoseGraphError as err:
        return {"refused": str(err)}
    except Exception as err:  # noqa: BLE001 (a failed run is a row, not the end of the benchmark)
        return {"refused": f"{type(err).__name__}: {err}"}
    result = read_g2o(out, repair_information=True)
    summary["ate"] = evaluate(result, clean)["ate"]["rmse"]
    return summary


def gtsam_run(graph: pg.PoseGraph, clean: pg.PoseGraph) -> Optional[Dict]:
    try:
        from posegraph.synthetic.gtsam_reference import gtsam_optimize
        import gtsam  # noqa: F401
    except ImportError:
        return None
    r = gtsam_optimize(graph)
    estimate = graph.with_poses(r.poses)
    status = "max-iterations" if r.iterations >= 100 else "converged"
    return {"start": "file", "final_error": r.final_error, "ate": evaluate(estimate, clean)["ate"]["rmse"],
            "status": status, "stop_reason": "", "iterations": r.iterations, "time_s": {"total": r.time_s}}


def row(case: str, run: str, s: Optional[Dict]) -> str:
    if s is None:
        return f"{case:<26} {run:<28} (GTSAM not installed)"
    if "refused" in s:
        return f"{case:<26} {run:<28} refused: {s['refused'][:110]}"
    start = s.get("start", {})
    chosen = start.get("chosen", s.get("init", "")) if isinstance(start, dict) else start
    status = s["status"] + (f" ({s['stop_reason']})" if s.get("stop_reason") and s["stop_reason"] != s["status"] else "")
    return (f"{case:<26} {run:<28} {chosen:<8} {s['final_error']:>14.7f} {s['ate']:>9.4f} {status:<30} "
            f"{s['iterations']:>5} {s['time_s']['total']:>7.2f}")


PERTURBED_RUNS = [
    ("lm --init file", ["--init", "file"]),
    ("lm --init auto", []),
    ("gn --init file", ["--init", "file", "--solver", "gn"]),
    ("gn --init auto", ["--solver", "gn"]),
]
OUTLIER_RUNS = [
    ("lm file, no kernel", ["--init", "file"]),
    ("lm file, huber:1", ["--init", "file", "--robust", "huber:1"]),
    ("lm file, cauchy:1", ["--init", "file", "--robust", "cauchy:1"]),
    ("lm file, gnc", ["--init", "file", "--robust", "gnc", "--robust-edges", "loop-closures"]),
    ("lm auto, gnc", ["--robust", "gnc", "--robust-edges", "loop-closures"]),
    ("gn file, gnc", ["--init", "file", "--solver", "gn", "--robust", "gnc", "--robust-edges", "loop-closures"]),
]
INDEFINITE_RUNS = [
    ("lm (no repair)", []),
    ("lm --repair-information", ["--repair-information"]),
    ("lm file --repair-information", ["--init", "file", "--repair-information"]),
]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", type=Path, default=Path(os.environ.get("POSEGRAPH_DATASETS", DEFAULT_DATASETS)))
    ap.add_argument("--cases", nargs="*", default=["perturbed", "outliers", "indefinite"])
    ap.add_argument("--quick", action="store_true", help="one noise level, 10%% and 30%% outliers")
    ap.add_argument("--no-gtsam", action="store_true")
    args = ap.parse_args(argv)
    path = args.datasets / "sphere2500.g2o"
    if not path.exists():
        print(f"sphere2500.g2o not found in {args.datasets} (set POSEGRAPH_DATASETS)")
        return 0
    graph = read_g2o(path)
    clean_problem = pg.build_problem(graph)
    with torch.no_grad():
        pg.optimize(clean_problem)
    clean = clean_problem.to_graph()
    print(f"clean optimum of {path.name}: error {float(pose_graph_error(clean)):.7f}\n")
    print(HEADER)
    cases = []
    if "perturbed" in args.cases:
        levels = [(2.0, 1.5)] if args.quick else [(0.5, 0.3), (2.0, 1.5)]
        for st, sr in levels:
            cases.append((f"perturbed σt={st} σr={sr}", perturb_vertices(graph, st, sr, seed=0), PERTURBED_RUNS, False))
    if "outliers" in args.cases:
        for fraction in ((0.1, 0.3) if args.quick else (0.1, 0.3, 0.5)):
            cases.append((f"{fraction:.0%} false loop closures", with_false_loop_closures(graph, fraction, seed=0),
                          OUTLIER_RUNS, False))
    if "indefinite" in args.cases:
        cases.append(("30% indefinite Ω", with_indefinite_information(graph, 0.3, seed=0), INDEFINITE_RUNS, True))
    with tempfile.TemporaryDirectory() as workdir:
        for name, case_graph, runs, repaired in cases:
            case_path = os.path.join(workdir, "case.g2o")
            write_g2o(case_graph, case_path)
            for run_name, flags in runs:
                t0 = time.perf_counter()
                summary = posegraph_run(case_path, flags, clean, workdir)
                if "time_s" in summary:
                    summary["time_s"]["total"] = time.perf_counter() - t0
                print(row(name, run_name, summary), flush=True)
            if not args.no_gtsam:
                reference = read_g2o(case_path, repair_information=True) if repaired else case_graph
                print(row(name, "gtsam lm (file)", gtsam_run(reference, clean)), flush=True)
            print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
