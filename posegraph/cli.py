"""``posegraph`` command line: ``posegraph optimize IN.g2o -o OUT.g2o [--json]``.

Bad input never gives a traceback: one line ``error: FILE:LINE: what is wrong`` on stderr and
exit status 2 (1 when the optimization itself fails); no output file is written then.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from typing import List, Optional

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _non_negative_int(text: str) -> int:
    """argparse type for ``--max-iters``: an integer ≥ 0 (a usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, received {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, received {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posegraph", description="Pose-graph optimization on Theseus.")
    sub = p.add_subparsers(dest="command", required=True)
    o = sub.add_parser("optimize", help="optimize a g2o pose graph and write the result")
    o.add_argument("input", help="g2o file (SE2 or SE3)")
    o.add_argument("-o", "--output", help="write the optimized graph here (g2o)")
    o.add_argument("--solver", choices=["gn", "lm"], default="lm", help="Gauss-Newton or Levenberg-Marquardt (default lm)")
    o.add_argument("--max-iters", type=_non_negative_int, default=100, metavar="N", help="iteration cap (default 100)")
    o.add_argument("--rel-tol", type=float, default=1e-10, help="relative error decrease to stop at (default 1e-10)")
    o.add_argument("--abs-tol", type=float, default=1e-10, help="absolute error decrease to stop at (default 1e-10)")
    o.add_argument("--init", choices=["auto", "file", "spanning-tree"], default="auto",
                   help="initial guess: file vertices when present, else spanning tree (auto)")
    o.add_argument("--linear-solver", choices=["auto", "cholmod", "dense", "batched_dense", "cg"], default="auto")
    o.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    o.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    o.add_argument("--quiet", action="store_true", help="no progress on stderr")
    o.add_argument("--debug", metavar="TRACE.json",
                   help="write a debug trace: per-iteration error, step, damping, per-edge error and "
                        "Jacobian norms, first non-finite value (see 'posegraph inspect')")
    o.add_argument("--debug-costs", metavar="PATTERN",
                   help="with --debug: record only edges matching this glob ('re:' prefix: regex)")
    o.add_argument("--debug-stop", action="store_true",
                   help="with --debug: stop at the first non-finite error or Jacobian")
    i = sub.add_parser("inspect", help="print a debug trace written by 'optimize --debug'")
    i.add_argument("trace", help="TRACE.json")
    i.add_argument("--top", type=_non_negative_int, default=10, metavar="N")
    return p


def _setup_warnings(quiet: bool) -> None:
    warnings.filterwarnings("ignore", message="Vectorization is off by default")

    def show(message, category, filename, lineno, file=None, line=None):
        if not quiet:
            sys.stderr.write(f"warning: {message}\n")

    warnings.showwarning = show


def cmd_optimize(args: argparse.Namespace) -> int:
    import torch

    from .builder import build_problem
    from .init import initialize
    from .io import read_g2o, write_g2o
    from .report import ProgressPrinter, format_summary, summary
    from .solve.optimize import SolverOptions, optimize

    t0 = time.perf_counter()
    graph = read_g2o(args.input)
    graph = initialize(graph, args.init)
    t1 = time.perf_counter()
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    problem = build_problem(graph, dtype=dtype)
    t2 = time.perf_counter()
    options = SolverOptions(
        solver=args.solver,
        max_iterations=args.max_iters,
        rel_tolerance=args.rel_tol,
        abs_tolerance=args.abs_tol,
        linear_solver=args.linear_solver,
    )
    progress = None if args.quiet else ProgressPrinter()
    debug = None
    if args.debug:
        from .debug import DebugCallback

        debug = DebugCallback.for_problem(
            problem, per_cost=True, pattern=args.debug_costs, stop_on_nonfinite=args.debug_stop
        )
    try:
        if debug is not None:
            debug.check_initial(problem.objective)
        with torch.no_grad():
            result = optimize(problem, options, on_iteration=progress, end_iter_callback=debug)
        if debug is not None:
            debug.check_final(problem.objective, iteration=result.iterations)
    finally:
        if debug is not None:
            debug.save(args.debug)  # the trace is written even when the run stopped
    if debug is not None and debug.first_nonfinite is not None:
        sys.stderr.write(f"warning: {args.input}: {debug.first_nonfinite}\n")
    t3 = time.perf_counter()
    if "failed" in result.status:
        sys.stderr.write(
            f"error: {args.input}: optimization failed after {result.iterations} iterations "
            f"(final error {float(result.final_error.mean()):.6g}); no output written\n"
        )
        return EXIT_FAILED
    if args.output:
        write_g2o(problem.to_graph().to(dtype=torch.float64), args.output)
    t4 = time.perf_counter()
    timings = {"parse": t1 - t0, "build": t2 - t1, "solve": t3 - t2, "write": t4 - t3, "total": t4 - t0}
    s = summary(graph, result, timings, output=args.output)
    if args.json:
        sys.stdout.write(json.dumps(s) + "\n")
    else:
        sys.stdout.write(format_summary(s) + "\n")
    return EXIT_OK


def cmd_inspect(args: argparse.Namespace) -> int:
    from .debug import run_inspect

    return run_inspect(args.trace, out=sys.stdout, top=args.top)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``posegraph`` console script."""
    from .errors import OptimizationError, PoseGraphError

    args = _parser().parse_args(argv)
    _setup_warnings(getattr(args, "quiet", False))
    try:
        return {"optimize": cmd_optimize, "inspect": cmd_inspect}[args.command](args)
    except PoseGraphError as err:
        sys.stderr.write(f"error: {err}\n")
        return EXIT_BAD_INPUT
    except (OptimizationError, RuntimeError) as err:
        sys.stderr.write(f"error: {getattr(args, 'input', '')}: optimization failed: {err}\n")
        return EXIT_FAILED
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except OSError as err:
        sys.stderr.write(f"error: {err.filename or ''}: {err.strerror}\n")
        return EXIT_BAD_INPUT
    except Exception as err:  # noqa: BLE001 - the CLI never shows a traceback
        sys.stderr.write(f"error: internal error ({type(err).__name__}): {err}\n")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
