"""``posegraph optimize``: one g2o file read, solved and written, with its summary.

:func:`optimize_file` is the whole command short of printing; ``posegraph batch`` runs it on
its workers. :func:`error_line` turns any failure into the CLI's one ``error:`` line and exit
status. Warnings are held in a :class:`WarningBuffer` until the command succeeds.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from typing import List, Optional, Tuple
from posegraph.errors import PoseGraphError

#: exit statuses: success, a failed optimization (or an internal error), bad input
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


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
    from posegraph.report.console import json_text

    return json_text(obj, reasons) + "\n"


class OptimizationFailed(RuntimeError):
    """The solver ran but reported failure; ``str(err)`` is the CLI's whole error line
    (``FILE: optimization failed after N iterations …``)."""


def cmd_optimize(args: argparse.Namespace) -> int:
    """``posegraph optimize``: solve one file, print its summary (text or ``--json``)."""
    from posegraph.report.console import format_summary

    try:
        s = optimize_file(args)
    except OptimizationFailed as err:
        sys.stderr.write(f"error: {err}\n")
        return EXIT_FAILED
    if args.json:
        sys.stdout.write(_json(s))
    else:
        sys.stdout.write(format_summary(s) + "\n")
    return EXIT_OK


def optimize_file(args: argparse.Namespace) -> dict:
    """Read, initialize, solve and write one graph as ``posegraph optimize`` does with the
    options in ``args`` (the optimize parser's namespace); returns the run summary
    (:func:`posegraph.report.console.summary`). Used in-process by ``posegraph batch``'s workers.

    Raises:
        PoseGraphError: bad input (nothing written).
        OptimizationFailed: the solver failed (nothing written).
    """
    import torch

    from posegraph.model.build import build_problem
    from posegraph.solve.gnc import format_outliers, gnc_summary, optimize_gnc
    from posegraph.init.dispatch import initialize
    from posegraph.io import check_outputs, read_g2o, write_g2o, write_text_atomic
    from posegraph.cli.config import resolve_device
    from posegraph.report.console import ProgressBar, summary
    from posegraph.solve.optimize import SolverOptions, optimize

    if not args.input:
        raise PoseGraphError("no input graph: give INPUT or 'input:' in the --config file", args.config)
    check_outputs([args.output, args.mesh_output, args.debug, args.covariances, args.outliers,
                   args.export_trajectory], [args.input, args.mesh, args.config],
                  overwrite_input=args.overwrite_input)  # before any work: a refusal writes nothing
    _check_export(args)
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    graph = read_g2o(args.input, repair_information=args.repair_information)
    t_read = time.perf_counter()
    graph = initialize(graph, args.init, cost=_start_cost(args))
    t1 = time.perf_counter()
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    mesh = _load_mesh(args, graph)
    gnc = _gnc_options(args)
    kernel = None if gnc is not None else args.robust
    problem = build_problem(graph, dtype=dtype, device=device, mesh=mesh, robust=kernel, robust_edges=args.robust_edges)
    t2 = time.perf_counter()
    options = SolverOptions(
        solver=args.solver,
        max_iterations=args.max_iters,
        rel_tolerance=args.rel_tol,
        abs_tolerance=args.abs_tol,
        gradient_tolerance=args.grad_tol,
        step_tolerance=args.step_tol,
        linear_solver=args.linear_solver,
        cholmod_mode=args.cholmod_mode,
        reuse_factor=args.reuse_factor,
        cg_max_iterations=args.cg_max_iters,
        force_dense=args.force_dense,
    )
    progress = _progress(args, gnc)
    debug = None
    if args.debug:
        from posegraph.debug.callback import DebugCallback

        debug = DebugCallback.for_problem(
            problem, per_cost=True, pattern=args.debug_costs, stop_on_nonfinite=args.debug_stop
        )
    try:
        with torch.no_grad():  # optimize() checks the start with the debug callback
            if gnc is None:
                result = optimize(problem, options, on_iteration=progress, end_iter_callback=debug)
            else:
                on_outer = _outer_progress(args, progress)
                gnc_result = optimize_gnc(problem, gnc, options, on_iteration=None if on_outer else progress,
                                          on_outer_iteration=on_outer, end_iter_callback=debug)
                result = gnc_result.solve
                _warn_rejected_odometry(args.input, graph, gnc, gnc_result)
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
        from posegraph.report.console import STOP_REASONS

        reason = next(r for s, r in zip(result.status, result.stop_reason) if s == "failed")
        why = STOP_REASONS.get(reason, reason) + (f": {result.detail}" if result.detail else "")
        raise OptimizationFailed(
            f"{args.input}: optimization failed after {result.iterations} iterations ({why}; "
            f"final error {float(result.final_error.mean()):.6g}); no output written"
            + ("" if nonfinite is None else f"; {nonfinite}")  # (one line: the trace's finding)
        )
    covariances = None
    if args.covariances:  # computed before anything is written: a failure leaves no output
        from posegraph.solve.covariance import CovarianceError, marginal_covariances

        try:
            covariances = marginal_covariances(problem)
        except CovarianceError as err:  # about this input's graph: named as its other errors are
            raise CovarianceError(f"--covariances: {err.message}", err.path or args.input, err.line) from None
    if nonfinite is not None:
        warnings.warn(f"{args.input}: {nonfinite}")
    if args.output:
        write_g2o(problem.to_graph().to(dtype=torch.float64), args.output, overwrite_input=args.overwrite_input)
    if gnc is not None and args.outliers:
        write_text_atomic(args.outliers, format_outliers(graph, gnc_result.outliers))
    if mesh is not None and args.mesh_output:
        from posegraph.mesh.obj import write_obj

        verts = problem.points.tensor[0, mesh.points.to(problem.points.tensor.device)]
        write_obj(args.mesh_output, verts.detach().double().cpu(), mesh.faces)
    if covariances is not None:
        from posegraph.solve.covariance import save_covariances

        save_covariances(args.covariances, problem.ids, covariances, problem.kind)
    _export_trajectory(args, problem)
    t4 = time.perf_counter()
    timings = {"parse": t_read - t0, "init": t1 - t_read, "build": t2 - t1, "solve": t3 - t2,
               "write": t4 - t3, "total": t4 - t0}
    s = summary(graph, result, timings, output=args.output)
    s["init"] = args.init
    choice = graph.extras.get("init")
    if choice is not None:
        s["start"] = {"chosen": choice.chosen[0] if len(choice.chosen) == 1 else choice.chosen,
                      "costs": choice.costs, **({"note": choice.note} if choice.note else {})}
    if args.robust is not None:
        s["robust"] = {"kernel": str(args.robust), "edges": args.robust_edges}
    if gnc is not None:
        s.update(gnc_summary(gnc_result, args.outliers))
    return s


def _check_export(args: argparse.Namespace) -> None:
    """``--export-trajectory``: the name must end in .tum or .kitti (checked before any work)."""
    if args.export_trajectory:
        from posegraph.io.poses import export_format

        export_format(args.export_trajectory)


def _export_trajectory(args: argparse.Namespace, problem) -> None:
    """``--export-trajectory``: write the optimized poses as TUM or KITTI."""
    if args.export_trajectory:
        import torch

        from posegraph.io.poses import export_graph

        export_graph(problem.to_graph().to(dtype=torch.float64), args.export_trajectory)


def _start_cost(args: argparse.Namespace):
    """How ``--init auto`` compares starts: the cost the solve minimizes (None: the plain
    ½ Σ eᵀΩe; with ``--robust``, the kernel's; with GNC, the truncated least squares')."""
    if args.robust is None:
        return None
    import torch

    from posegraph.model.build import build_problem
    from posegraph.solve.gnc import GncOptions, truncated_cost

    if isinstance(args.robust, GncOptions):
        gnc = _gnc_options(args)
        return lambda graph: truncated_cost(graph, gnc)

    def cost(graph):
        with torch.no_grad():
            return build_problem(graph, robust=args.robust, robust_edges=args.robust_edges).error()

    return cost


def _gnc_options(args: argparse.Namespace):
    """``--robust gnc[:C]`` with ``--robust-edges`` as :class:`~posegraph.solve.gnc.GncOptions`, or
    None for other kernels; ``--outliers`` without GNC is refused."""
    from dataclasses import replace

    from posegraph.solve.gnc import GncOptions

    if not isinstance(args.robust, GncOptions):
        if args.outliers:
            raise PoseGraphError("--outliers needs --robust gnc (or gnc:C): only GNC rejects edges")
        return None
    return replace(args.robust, edges=args.robust_edges)


def _outer_progress(args: argparse.Namespace, progress):
    """GNC's progress per outer iteration: a line on stderr with ``--verbose`` (beside the
    inner iterations' lines), the bar's step otherwise (None: nothing per outer iteration)."""
    from posegraph.solve.gnc import format_outer_iteration
    from posegraph.report.console import ProgressBar
    from posegraph.solve.optimize import IterationRecord

    if args.quiet:
        return None
    if isinstance(progress, ProgressBar):
        return lambda it: progress(IterationRecord(it.iteration, it.cost, it.elapsed_s))

    def show(it) -> None:
        sys.stderr.write(format_outer_iteration(it) + "\n")
        sys.stderr.flush()

    return show


def _load_mesh(args: argparse.Namespace, graph):
    """``--mesh``: read the OBJ and tie its vertices to the graph's points (or None)."""
    for flag, given in (("--mesh-output", args.mesh_output), ("--mesh-first-id", args.mesh_first_id)):
        if given is not None and not args.mesh:
            raise PoseGraphError(f"{flag} needs --mesh")
    if not args.mesh:
        return None
    from posegraph.model.build import mesh_term
    from posegraph.mesh.obj import read_obj

    try:
        verts, faces = read_obj(args.mesh)
    except FileNotFoundError:
        raise PoseGraphError("no such file", args.mesh) from None
    except (ValueError, OSError) as err:
        raise PoseGraphError(str(err)) from None
    if faces.shape[0] == 0:
        raise PoseGraphError("the mesh has no faces (f lines): nothing to regularize", args.mesh)
    return mesh_term(graph, verts, faces, args.laplacian_weight, args.laplacian, args.mesh_first_id, args.mesh)


def _progress(args: argparse.Namespace, gnc=None):
    """Progress hook of ``optimize``: none with ``--quiet``, a table with ``--verbose``, else a
    bar that appears after a second (with GNC, over its outer iterations)."""
    from posegraph.report.console import ProgressBar, ProgressPrinter

    if args.quiet:
        return None
    if args.verbose:
        return ProgressPrinter()
    if gnc is not None:
        return ProgressBar(total=gnc.max_iterations, desc="gnc")
    return ProgressBar(total=args.max_iters)


def _warn_rejected_odometry(path: Optional[str], graph, gnc, result) -> None:
    """A warning when GNC over every edge rejected odometry edges (consecutive vertex ids):
    GNC may then have traded true odometry for false loop closures (a worse local minimum of
    its truncated cost), and judging loop closures only keeps odometry."""
    if gnc.edges != "all":
        return
    rejected = int((result.outliers.cpu() & ~graph.loop_closures().cpu()).sum())
    if rejected:
        warnings.warn(
            f"{path}: GNC rejected {rejected} odometry edge{'s' if rejected > 1 else ''} (consecutive vertex ids); "
            "if only loop closures can be false, --robust-edges loop-closures keeps odometry"
        )


def error_line(err: BaseException, input_path: Optional[str] = "") -> Tuple[int, str]:
    """The CLI's exit status and one-line message (without ``error:``) for an exception raised
    while running a command on ``input_path``: bad input 2, a failed optimization 1, an internal
    error 1. ``posegraph batch`` records the same lines per input."""
    from posegraph.errors import OptimizationError

    if isinstance(err, PoseGraphError):
        return EXIT_BAD_INPUT, str(err)
    if isinstance(err, OptimizationFailed):
        return EXIT_FAILED, str(err)
    if isinstance(err, (OptimizationError, RuntimeError)):
        return EXIT_FAILED, f"{input_path or ''}: optimization failed: {err}"
    if isinstance(err, OSError):
        where = f"{err.filename}: " if err.filename else ""
        return EXIT_BAD_INPUT, f"{where}{err.strerror or err}"
    return EXIT_FAILED, f"internal error ({type(err).__name__}): {err}"
