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

from .errors import PoseGraphError

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


def _non_negative_float(text: str) -> float:
    """argparse type for weights: a finite number ≥ 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, received {text!r}") from None
    if not (value >= 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number ≥ 0, received {text!r}")
    return value


def _robust_kernel(text: str):
    """argparse type for ``--robust``: a :class:`~posegraph.robust.RobustKernel` or None."""
    from .robust import RobustKernel, RobustSpecError

    try:
        return RobustKernel.parse(text)
    except RobustSpecError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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
    o.add_argument("--init", choices=["auto", "file", "spanning-tree", "chordal"], default="auto",
                   help="initial guess: file vertices when present, else spanning tree (auto); "
                        "chordal: rotations then translations by linear least squares")
    o.add_argument("--robust", type=_robust_kernel, default=None, metavar="KERNEL:SCALE",
                   help="robust kernel: huber:C, cauchy:C (C in standard deviations) or none")
    o.add_argument("--robust-edges", choices=["all", "loop-closures"], default="all",
                   help="edges the kernel applies to; loop closures: ids not consecutive (default all)")
    o.add_argument("--linear-solver", choices=["auto", "cholmod", "dense"], default="auto")
    o.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    o.add_argument("--mesh", metavar="MESH.obj",
                   help="regularize the graph's 3D points with the Laplacian of this mesh: OBJ vertex k "
                        "(0-based, file order) is the VERTEX_TRACKXYZ with id FIRST+k")
    o.add_argument("--mesh-first-id", type=int, metavar="FIRST",
                   help="with --mesh: point id of the mesh's first vertex (default: smallest TRACKXYZ id)")
    o.add_argument("--laplacian-weight", type=_non_negative_float, default=1.0, metavar="W",
                   help="with --mesh: scale of the Laplacian residuals, cost Σ‖W rᵢ‖² (default 1)")
    o.add_argument("--laplacian", choices=["uniform", "cotangent"], default="uniform",
                   help="with --mesh: Laplacian weights (cotangent ones from the OBJ's positions)")
    o.add_argument("--mesh-output", metavar="OUT.obj", help="with --mesh: write the optimized mesh")
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
    t_read = time.perf_counter()
    graph = initialize(graph, args.init)
    t1 = time.perf_counter()
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    mesh = _load_mesh(args, graph)
    problem = build_problem(graph, dtype=dtype, mesh=mesh, robust=args.robust, robust_edges=args.robust_edges)
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
    if mesh is not None and args.mesh_output:
        from .mesh import write_obj

        verts = problem.points.tensor[0, mesh.points.to(problem.points.tensor.device)]
        write_obj(args.mesh_output, verts.detach().double().cpu(), mesh.faces)
    t4 = time.perf_counter()
    timings = {"parse": t_read - t0, "init": t1 - t_read, "build": t2 - t1, "solve": t3 - t2,
               "write": t4 - t3, "total": t4 - t0}
    s = summary(graph, result, timings, output=args.output)
    s["init"] = args.init
    if args.robust is not None:
        s["robust"] = {"kernel": str(args.robust), "edges": args.robust_edges}
    if args.json:
        sys.stdout.write(json.dumps(s) + "\n")
    else:
        sys.stdout.write(format_summary(s) + "\n")
    return EXIT_OK


def _load_mesh(args: argparse.Namespace, graph):
    """``--mesh``: read the OBJ and tie its vertices to the graph's points (or None)."""
    for flag, given in (("--mesh-output", args.mesh_output), ("--mesh-first-id", args.mesh_first_id)):
        if given is not None and not args.mesh:
            raise PoseGraphError(f"{flag} needs --mesh")
    if not args.mesh:
        return None
    from .builder import mesh_term
    from .mesh import read_obj

    try:
        verts, faces = read_obj(args.mesh)
    except FileNotFoundError:
        raise PoseGraphError("no such file", args.mesh) from None
    except (ValueError, OSError) as err:
        raise PoseGraphError(str(err)) from None
    if faces.shape[0] == 0:
        raise PoseGraphError("the mesh has no faces (f lines): nothing to regularize", args.mesh)
    return mesh_term(graph, verts, faces, args.laplacian_weight, args.laplacian, args.mesh_first_id, args.mesh)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .debug import run_inspect

    return run_inspect(args.trace, out=sys.stdout, top=args.top)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``posegraph`` console script."""
    from .errors import OptimizationError

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
