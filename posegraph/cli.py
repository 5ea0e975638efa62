"""``posegraph`` command line: ``optimize``, ``inspect``, ``info``, ``eval``, ``plot``
(see docs/cli.md).

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
from typing import List, Optional, Tuple

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
    """argparse type for ``--robust``: a :class:`~posegraph.robust.RobustKernel`, a
    :class:`~posegraph.gnc.GncOptions` (``gnc``, ``gnc:C``; its edges come from
    ``--robust-edges``) or None."""
    from .gnc import GncOptions
    from .robust import RobustKernel, RobustSpecError

    try:
        return GncOptions.parse(text) if GncOptions.is_spec(text) else RobustKernel.parse(text)
    except RobustSpecError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_solve_options(o: argparse.ArgumentParser) -> None:
    """Add the options of one graph's solve (solver, tolerances, initialization, robust kernel,
    linear solver, dtype, device) to ``o``: ``posegraph optimize`` and ``posegraph batch`` share
    them, and so their configuration keys (:mod:`posegraph.config`)."""
    o.add_argument("--solver", choices=["gn", "lm"], default="lm", help="Gauss-Newton or Levenberg-Marquardt (default lm)")
    o.add_argument("--max-iters", type=_non_negative_int, default=100, metavar="N", help="iteration cap (default 100)")
    o.add_argument("--rel-tol", type=float, default=1e-10, help="relative error decrease to stop at (default 1e-10)")
    o.add_argument("--abs-tol", type=float, default=1e-10, help="absolute error decrease to stop at (default 1e-10)")
    o.add_argument("--grad-tol", type=_non_negative_float, default=0.0, metavar="G",
                   help="also stop when ‖Aᵀb‖∞ ≤ G before a step (default 0: off, as GTSAM)")
    o.add_argument("--step-tol", type=_non_negative_float, default=0.0, metavar="S",
                   help="also stop when an accepted step's ‖δ‖∞ ≤ S (default 0: off)")
    o.add_argument("--init", choices=["auto", "file", "spanning-tree", "chordal"], default="auto",
                   help="initial guess. auto: with vertices, the file's or the chordal guess, whichever "
                        "has the lower cost; without, the spanning tree. file: the file's vertices. "
                        "chordal: rotations then translations by linear least squares")
    _add_repair_information(o)
    o.add_argument("--robust", type=_robust_kernel, default=None, metavar="KERNEL:SCALE",
                   help="robust kernel: huber:C, cauchy:C (C in standard deviations), dcs:PHI (PHI on the "
                        "squared whitened norm), none; or gnc / gnc:C: reject outliers by graduated "
                        "non-convexity with truncated least squares, inliers within C standard deviations "
                        "(default: the 0.99 chi-squared quantile, 4.10 for SE3, 3.37 for SE2)")
    o.add_argument("--robust-edges", choices=["all", "loop-closures"], default="all",
                   help="edges the kernel applies to; loop closures: ids not consecutive (default all); "
                        "with gnc the others are known inliers")
    o.add_argument("--outliers", metavar="FILE",
                   help="with --robust gnc: write the rejected edges, one 'ID_I ID_J' line each (file order)")
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
    o.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu",
                   help="where to solve (auto: cuda when available; default cpu)")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posegraph", description="Pose-graph optimization on Theseus.")
    sub = p.add_subparsers(dest="command", required=True)
    o = sub.add_parser("optimize", help="optimize a g2o pose graph and write the result")
    o.add_argument("input", nargs="?", help="g2o file (SE2 or SE3); or 'input:' in --config")
    o.add_argument("--config", metavar="FILE.yaml", help="read options from a YAML file (flags win)")
    o.add_argument("-o", "--output", help="write the optimized graph here (g2o)")
    o.add_argument("--overwrite-input", action="store_true",
                   help="allow an output file (-o, --mesh-output, --debug) to be an input file")
    add_solve_options(o)
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
    o.add_argument("--covariances", metavar="FILE.npz",
                   help="write the optimized poses' marginal covariances (arrays ids, covariances (N, d, d); "
                        "translation then rotation; zeros for fixed poses)")
    o.add_argument("--export-trajectory", metavar="OUT.tum|OUT.kitti",
                   help="also write the optimized poses as a TUM or KITTI trajectory, in id order (timestamp: "
                        "the vertex id; SE2 graphs as planar SE3 poses)")
    o.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    o.add_argument("--quiet", action="store_true", help="no progress on stderr")
    o.add_argument("--verbose", action="store_true", help="progress as one line per iteration")
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
    _add_batch(sub)
    _add_info(sub)
    _add_eval(sub)
    _add_plot(sub)
    return p


def _add_batch(sub) -> None:
    from .config import int_at_least

    b = sub.add_parser("batch", help="optimize many g2o files in parallel on Dask workers (posegraph[distributed])")
    b.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="g2o files, glob patterns or folders (their *.g2o); or 'inputs:' in --config")
    b.add_argument("--config", metavar="FILE.yaml", help="read options from a YAML file (flags win)")
    b.add_argument("--out-dir", metavar="DIR",
                   help="write NAME.optimized.g2o per input and results.jsonl (one JSON line per input) here")
    b.add_argument("--workers", type=int_at_least(1), default=None, metavar="N",
                   help="worker processes of the local cluster (default: one per core), each with cores/N threads")
    b.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on the Dask cluster of this scheduler (e.g. tcp://host:8786) instead of a local one")
    b.add_argument("--resume", action="store_true",
                   help="skip inputs whose output and result line are already in DIR")
    b.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    add_solve_options(b)


def _add_repair_information(p: argparse.ArgumentParser) -> None:
    """``--repair-information``, shared by ``optimize`` and ``info``."""
    p.add_argument("--repair-information", action="store_true",
                   help="replace information matrices that are not positive semidefinite by their "
                        "nearest PSD matrix (negative eigenvalues clipped to 0) instead of refusing "
                        "the file; the count is reported")


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="counts, connectivity, information matrices and χ² of a g2o file")
    p.add_argument("input", help="g2o file (vertex-only and edge-only files too)")
    _add_repair_information(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="ATE and RPE of an estimate against ground truth (as evo)")
    p.add_argument("estimate", help="estimated poses: g2o (VERTEX lines), TUM (.tum) or KITTI (.kitti); "
                                    ".txt: TUM or KITTI by its column count")
    p.add_argument("--gt", required=True, metavar="GROUNDTRUTH", help="the true poses (formats as the estimate)")
    _add_format_options(p)
    p.add_argument("--align", choices=["se3", "sim3", "none"], default="se3",
                   help="Umeyama alignment of the estimate onto the truth before ATE and RPE (default se3)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")


def _add_format_options(p) -> None:
    """``eval``'s ``--format``, ``--gt-format`` and ``--t-max-diff``."""
    from .io.formats import FORMATS

    p.add_argument("--format", choices=FORMATS, default=None, help="format of the estimate (default: by extension)")
    p.add_argument("--gt-format", choices=FORMATS, default=None,
                   help="format of the ground truth (default: by extension)")
    p.add_argument("--t-max-diff", type=_non_negative_float, default=0.01, metavar="SECONDS",
                   help="TUM files: pair poses whose timestamps differ by at most this (default 0.01, as evo); "
                        "g2o ids and KITTI indices serve as timestamps against a TUM file")


def _add_plot(sub) -> None:
    from .config import int_at_least

    p = sub.add_parser("plot", help="draw trajectories before/after and the error history (PNG)")
    p.add_argument("input", help="g2o file (the initial graph), or a TUM/KITTI trajectory")
    p.add_argument("optimized", nargs="?", help="g2o file of the optimized graph, or a TUM/KITTI trajectory")
    p.add_argument("--format", choices=("g2o", "tum", "kitti"), default=None,
                   help="format of the inputs (default: by extension; .txt: TUM or KITTI by its column count)")
    p.add_argument("-o", "--output", required=True, metavar="FIG.png", help="image to write (png, pdf, svg)")
    p.add_argument("--overwrite-input", action="store_true", help="allow the image to replace an input file")
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


class OptimizationFailed(RuntimeError):
    """The solver ran but reported failure; ``str(err)`` is the CLI's whole error line
    (``FILE: optimization failed after N iterations …``)."""


def cmd_optimize(args: argparse.Namespace) -> int:
    """``posegraph optimize``: solve one file, print its summary (text or ``--json``)."""
    from .report import format_summary

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
    (:func:`posegraph.report.summary`). Used in-process by ``posegraph batch``'s workers.

    Raises:
        PoseGraphError: bad input (nothing written).
        OptimizationFailed: the solver failed (nothing written).
    """
    import torch

    from .builder import build_problem
    from .gnc import format_outliers, gnc_summary, optimize_gnc
    from .init import initialize
    from .io import check_outputs, read_g2o, write_g2o, write_text_atomic
    from .config import resolve_device
    from .report import ProgressBar, summary
    from .solve.optimize import SolverOptions, optimize

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
        from .debug import DebugCallback

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
        from .report import STOP_REASONS

        reason = next(r for s, r in zip(result.status, result.stop_reason) if s == "failed")
        why = STOP_REASONS.get(reason, reason) + (f": {result.detail}" if result.detail else "")
        raise OptimizationFailed(
            f"{args.input}: optimization failed after {result.iterations} iterations ({why}; "
            f"final error {float(result.final_error.mean()):.6g}); no output written"
            + ("" if nonfinite is None else f"; {nonfinite}")  # (one line: the trace's finding)
        )
    covariances = None
    if args.covariances:  # computed before anything is written: a failure leaves no output
        from .solve.covariance import marginal_covariances

        covariances = marginal_covariances(problem)
    if nonfinite is not None:
        warnings.warn(f"{args.input}: {nonfinite}")
    if args.output:
        write_g2o(problem.to_graph().to(dtype=torch.float64), args.output, overwrite_input=args.overwrite_input)
    if gnc is not None and args.outliers:
        write_text_atomic(args.outliers, format_outliers(graph, gnc_result.outliers))
    if mesh is not None and args.mesh_output:
        from .mesh import write_obj

        verts = problem.points.tensor[0, mesh.points.to(problem.points.tensor.device)]
        write_obj(args.mesh_output, verts.detach().double().cpu(), mesh.faces)
    if covariances is not None:
        from .solve.covariance import save_covariances

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
        from .io.trajectory import export_format

        export_format(args.export_trajectory)


def _export_trajectory(args: argparse.Namespace, problem) -> None:
    """``--export-trajectory``: write the optimized poses as TUM or KITTI."""
    if args.export_trajectory:
        import torch

        from .io.trajectory import export_graph

        export_graph(problem.to_graph().to(dtype=torch.float64), args.export_trajectory)


def _start_cost(args: argparse.Namespace):
    """How ``--init auto`` compares starts: the cost the solve minimizes (None: the plain
    ½ Σ eᵀΩe; with ``--robust``, the kernel's; with GNC, the truncated least squares')."""
    if args.robust is None:
        return None
    import torch

    from .builder import build_problem
    from .gnc import GncOptions, truncated_cost

    if isinstance(args.robust, GncOptions):
        gnc = _gnc_options(args)
        return lambda graph: truncated_cost(graph, gnc)

    def cost(graph):
        with torch.no_grad():
            return build_problem(graph, robust=args.robust, robust_edges=args.robust_edges).error()

    return cost


def _gnc_options(args: argparse.Namespace):
    """``--robust gnc[:C]`` with ``--robust-edges`` as :class:`~posegraph.gnc.GncOptions`, or
    None for other kernels; ``--outliers`` without GNC is refused."""
    from dataclasses import replace

    from .gnc import GncOptions

    if not isinstance(args.robust, GncOptions):
        if args.outliers:
            raise PoseGraphError("--outliers needs --robust gnc (or gnc:C): only GNC rejects edges")
        return None
    return replace(args.robust, edges=args.robust_edges)


def _outer_progress(args: argparse.Namespace, progress):
    """GNC's progress per outer iteration: a line on stderr with ``--verbose`` (beside the
    inner iterations' lines), the bar's step otherwise (None: nothing per outer iteration)."""
    from .gnc import format_outer_iteration
    from .report import ProgressBar
    from .solve.optimize import IterationRecord

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


def _progress(args: argparse.Namespace, gnc=None):
    """Progress hook of ``optimize``: none with ``--quiet``, a table with ``--verbose``, else a
    bar that appears after a second (with GNC, over its outer iterations)."""
    from .report import ProgressBar, ProgressPrinter

    if args.quiet:
        return None
    if args.verbose:
        return ProgressPrinter()
    if gnc is not None:
        return ProgressBar(total=gnc.max_iterations, desc="gnc")
    return ProgressBar(total=args.max_iters)


def cmd_inspect(args: argparse.Namespace) -> int:
    from .debug import run_inspect

    return run_inspect(args.trace, out=sys.stdout, top=args.top)


def cmd_info(args: argparse.Namespace) -> int:
    from .info import format_info, graph_info
    from .io import read_g2o

    info = graph_info(read_g2o(args.input, repair_information=args.repair_information))
    sys.stdout.write(_json(info) if args.json else format_info(info) + "\n")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval import evaluate_files, format_evaluation

    result = evaluate_files(args.estimate, args.gt, align=args.align, estimate_format=args.format,
                            truth_format=args.gt_format, max_diff=args.t_max_diff)
    sys.stdout.write(_json(result) if args.json else format_evaluation(result) + "\n")
    return EXIT_OK


def cmd_plot(args: argparse.Namespace) -> int:
    from .plot import plot_files

    plot_files(args.input, args.optimized, args.output, trace=args.trace, size=args.size, dpi=args.dpi,
               overwrite_input=args.overwrite_input, file_format=args.format)
    return EXIT_OK


def cmd_batch(args: argparse.Namespace) -> int:
    """``posegraph batch`` (:mod:`posegraph.batch`)."""
    from .batch import cmd_batch as run_batch

    return run_batch(args)


COMMANDS = {"optimize": cmd_optimize, "batch": cmd_batch, "inspect": cmd_inspect, "info": cmd_info, "eval": cmd_eval, "plot": cmd_plot}


def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    """Parse the command line; ``--config FILE`` values become the sub-command's defaults, so
    flags win over the file (:func:`posegraph.config.parse_with_config`)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        from .config import parse_with_config, subcommand_parser

        args = parse_with_config(parser, argv, subcommand_parser(parser, args.command))
    return args


def error_line(err: BaseException, input_path: Optional[str] = "") -> Tuple[int, str]:
    """The CLI's exit status and one-line message (without ``error:``) for an exception raised
    while running a command on ``input_path``: bad input 2, a failed optimization 1, an internal
    error 1. ``posegraph batch`` records the same lines per input."""
    from .errors import OptimizationError

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
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI never shows a traceback
        code, line = error_line(err, getattr(args, "input", ""))
        sys.stderr.write(f"error: {line}\n")
        return code


if __name__ == "__main__":
    sys.exit(main())
