"""``posegraph`` command line: ``optimize``, ``inspect``, ``info``, ``eval``, ``plot``
(see README.md, "Command line").

``posegraph optimize --config FILE.yaml`` reads options from a YAML file (keys are the
option names, :mod:`posegraph.config`); flags given on the command line win over the file.

Bad input never gives a traceback: one line ``error: FILE:LINE: what is wrong`` on stderr and
exit status 2 (1 when the optimization itself fails); no output file is written then.
Warnings (``warning: …`` lines) are held back while a command runs and printed only when it
succeeds, so that a refusal is exactly one line. ``--json`` output is always valid JSON: a
non-finite number is printed as ``null`` with a note in the object's ``"notes"`` list.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from typing import List, Optional

from .errors import PoseGraphError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _non_negative_int(text: str) -> int:
    """argparse type for ``--max-iters``: an integer ≥ 0 (a usage error otherwise)."""
    from .config import int_at_least

    return int_at_least(0)(text)


def _positive_int(text: str) -> int:
    """argparse type for ``--cg-max-iters``: an integer ≥ 1."""
    from .config import int_at_least

    return int_at_least(1)(text)


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
    o.add_argument("input", nargs="?", help="g2o file (SE2 or SE3); or 'input:' in --config")
    o.add_argument("--config", metavar="FILE.yaml", help="read options from a YAML file (flags win)")
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
    o.add_argument("--linear-solver", choices=["auto", "cholmod", "pardiso", "dense", "batched_dense", "cg"],
                   default="auto",
                   help="auto: sparse Cholesky with MKL PARDISO for dense-enough factors (3D graphs) when "
                        "the mkl package is installed, CHOLMOD otherwise")
    o.add_argument("--force-dense", action="store_true",
                   help="let --linear-solver dense / batched_dense run beyond their size limits "
                        "(2000 / 3000 tangent columns; slow: time grows as columns³)")
    o.add_argument("--cholmod-mode", choices=["auto", "supernodal", "simplicial"], default="auto",
                   help="CHOLMOD factorization (auto: from the estimated fill of the factor); setting it "
                        "makes --linear-solver auto use CHOLMOD")
    o.add_argument("--reuse-factor", action=argparse.BooleanOptionalAction, default=True,
                   help="serve a sparse Cholesky solve with the last factor through preconditioned CG while "
                        "that converges in a few iterations (default); --no-reuse-factor refactors "
                        "at every solve")
    o.add_argument("--cg-max-iters", type=_positive_int, default=None, metavar="N",
                   help="CG iterations a solve with the last factor may take before refactoring "
                        "(default: as many as cost one factorization, measured while solving, at most 10)")
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
    o.add_argument("--verbose", action="store_true", help="progress as one line per iteration")
    o.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu",
                   help="where to solve (auto: cuda when available; default cpu)")
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
    _add_info(sub)
    _add_eval(sub)
    _add_plot(sub)
    return p


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="counts, connectivity, information matrices and χ² of a g2o file")
    p.add_argument("input", help="g2o file (vertex-only and edge-only files too)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="ATE and RPE of an estimate against ground truth (as evo)")
    p.add_argument("estimate", help="g2o file with the estimated poses (VERTEX lines)")
    p.add_argument("--gt", required=True, metavar="GROUNDTRUTH.g2o", help="g2o file with the true poses")
    p.add_argument("--align", choices=["se3", "sim3", "none"], default="se3",
                   help="Umeyama alignment of the estimate onto the truth before ATE and RPE (default se3)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _add_plot(sub) -> None:
    from .config import int_at_least

    p = sub.add_parser("plot", help="draw trajectories before/after and the error history (PNG)")
    p.add_argument("input", help="g2o file (the initial graph)")
    p.add_argument("optimized", nargs="?", help="g2o file of the optimized graph")
    p.add_argument("-o", "--output", required=True, metavar="FIG.png", help="image to write (png, pdf, svg)")
    p.add_argument("--trace", metavar="TRACE.json", help="debug trace ('optimize --debug') for the error history")
    p.add_argument("--size", type=_image_size, default=None, metavar="WxH",
                   help="image size in pixels (default depends on the panels)")
    p.add_argument("--dpi", type=int_at_least(10), default=100, help="resolution (pixels per inch; default 100)")


def _image_size(text: str):
    """argparse type for ``--size``: ``WIDTHxHEIGHT`` in pixels."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels (e.g. 1200x800), received {text!r}") from None
    if w < 100 or h < 100 or w > 20000 or h > 20000:
        raise argparse.ArgumentTypeError(f"expected sizes in [100, 20000] pixels, received {text!r}")
    return w, h


class WarningBuffer:
    """The warnings of one command as ``warning: …`` lines, held until :meth:`flush` (the CLI
    flushes only when the command succeeds: a refusal is one ``error:`` line). Installed as
    ``warnings.showwarning``; with ``quiet`` nothing is kept."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.lines: List[str] = []

    def show(self, message, category=None, filename=None, lineno=None, file=None, line=None) -> None:
        """``warnings.showwarning``'s signature: keep ``warning: {message}``."""
        if not self.quiet:
            self.lines.append(f"warning: {message}")

    def flush(self) -> None:
        """Print the kept lines on stderr and forget them."""
        for text in self.lines:
            sys.stderr.write(text + "\n")
        self.lines.clear()


def _setup_warnings(quiet: bool) -> WarningBuffer:
    """Route warnings to a new :class:`WarningBuffer` (returned)."""
    warnings.filterwarnings("ignore", message="Vectorization is off by default")
    buffer = WarningBuffer(quiet)
    warnings.showwarning = buffer.show
    return buffer


def _json(obj, reasons=None) -> str:
    """The one JSON line of ``--json`` (:func:`posegraph.report.json_text`: never NaN or Infinity)."""
    from .report import json_text

    return json_text(obj, reasons) + "\n"


def cmd_optimize(args: argparse.Namespace) -> int:
    import torch

    from .builder import build_problem
    from .init import initialize
    from .io import read_g2o, write_g2o
    from .config import resolve_device
    from .report import ProgressBar, format_summary, summary
    from .solve.optimize import SolverOptions, optimize

    if not args.input:
        raise PoseGraphError("no input graph: give INPUT or 'input:' in the --config file", args.config)
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    graph = read_g2o(args.input)
    t_read = time.perf_counter()
    graph = initialize(graph, args.init)
    t1 = time.perf_counter()
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    mesh = _load_mesh(args, graph)
    problem = build_problem(graph, dtype=dtype, device=device, mesh=mesh, robust=args.robust, robust_edges=args.robust_edges)
    t2 = time.perf_counter()
    options = SolverOptions(
        solver=args.solver,
        max_iterations=args.max_iters,
        rel_tolerance=args.rel_tol,
        abs_tolerance=args.abs_tol,
        linear_solver=args.linear_solver,
        cholmod_mode=args.cholmod_mode,
        reuse_factor=args.reuse_factor,
        cg_max_iterations=args.cg_max_iters,
        force_dense=args.force_dense,
    )
    progress = _progress(args)
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
        if isinstance(progress, ProgressBar):
            progress.close()
        if debug is not None:
            debug.save(args.debug)  # the trace is written even when the run stopped
    nonfinite = None if debug is None else debug.first_nonfinite
    t3 = time.perf_counter()
    if "failed" in result.status:
        where = "" if nonfinite is None else f"; {nonfinite}"  # (one line: the trace's finding)
        sys.stderr.write(
            f"error: {args.input}: optimization failed after {result.iterations} iterations "
            f"(final error {float(result.final_error.mean()):.6g}); no output written{where}\n"
        )
        return EXIT_FAILED
    if nonfinite is not None:
        warnings.warn(f"{args.input}: {nonfinite}")
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
        sys.stdout.write(_json(s))
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


def _progress(args: argparse.Namespace):
    """Progress hook of ``optimize``: none with ``--quiet``, a table with ``--verbose``, else a
    bar that appears after a second."""
    from .report import ProgressBar, ProgressPrinter

    if args.quiet:
        return None
    if args.verbose:
        return ProgressPrinter()
    return ProgressBar(total=args.max_iters)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .debug import run_inspect

    return run_inspect(args.trace, out=sys.stdout, top=args.top)


def cmd_info(args: argparse.Namespace) -> int:
    from .info import format_info, graph_info
    from .io import read_g2o

    info = graph_info(read_g2o(args.input))
    sys.stdout.write(_json(info) if args.json else format_info(info) + "\n")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval import evaluate_files, format_evaluation

    result = evaluate_files(args.estimate, args.gt, align=args.align)
    sys.stdout.write(_json(result) if args.json else format_evaluation(result) + "\n")
    return EXIT_OK


def cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_files

    plot_files(args.input, args.optimized, args.output, trace=args.trace, size=args.size, dpi=args.dpi)
    return EXIT_OK


COMMANDS = {"optimize": cmd_optimize, "inspect": cmd_inspect, "info": cmd_info, "eval": cmd_eval, "plot": cmd_plot}


def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    """Parse the command line; ``--config FILE`` values become the sub-command's defaults, so
    flags win over the file (:func:`posegraph.config.parse_with_config`)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        from .config import parse_with_config, subcommand_parser

        args = parse_with_config(parser, argv, subcommand_parser(parser, args.command))
    return args


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``posegraph`` console script."""
    try:
        args = _parse_args(argv)
    except PoseGraphError as err:  # a bad --config file
        sys.stderr.write(f"error: {err}\n")
        return EXIT_BAD_INPUT
    previous = warnings.showwarning
    held = _setup_warnings(getattr(args, "quiet", False))
    try:
        code = _run(args)
        if code == EXIT_OK:
            held.flush()
        return code
    finally:
        warnings.showwarning = previous


def _run(args: argparse.Namespace) -> int:
    """Run the command; every failure becomes one ``error:`` line and an exit status."""
    from .errors import OptimizationError

    try:
        return COMMANDS[args.command](args)
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
