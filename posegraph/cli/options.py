"""The command line's parser: every sub-command's options and their argument types.

The one definition of the options: the CLI parses with it, run configurations
(:mod:`posegraph.cli.config`) validate YAML keys against it, and ``posegraph batch`` passes
``optimize``'s options on to its workers.
"""

from __future__ import annotations

import argparse


def int_at_least(minimum: int):
    """argparse type: an integer ≥ ``minimum`` (a usage error otherwise)."""

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer ≥ {minimum}, received {text!r}")
        return value

    convert.__name__ = f"integer ≥ {minimum}"
    return convert


def _non_negative_int(text: str) -> int:
    """argparse type for ``--max-iters``: an integer ≥ 0 (a usage error otherwise)."""
    return int_at_least(0)(text)


def _positive_int(text: str) -> int:
    """argparse type for ``--cg-max-iters``: an integer ≥ 1."""
    return int_at_least(1)(text)


def _non_negative_float(text: str) -> float:
    """argparse type for weights and tolerances: a finite number ≥ 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number ≥ 0, received {text!r}") from None
    if not (value >= 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number ≥ 0, received {text!r}")
    return value


def _name_pattern(text: str) -> str:
    """argparse type for ``--debug-costs``: a glob, or ``re:`` and a valid regular expression
    (:class:`~posegraph.model.names.NameFilter`); returned as given."""
    from posegraph.model.names import NameFilter, NamePatternError

    try:
        NameFilter(text)
    except NamePatternError as err:
        raise argparse.ArgumentTypeError(err.detail) from None
    return text


def _robust_kernel(text: str):
    """argparse type for ``--robust``: a :class:`~posegraph.model.robust.RobustKernel`, a
    :class:`~posegraph.solve.gnc.GncOptions` (``gnc``, ``gnc:C``; its edges come from
    ``--robust-edges``) or None."""
    from posegraph.solve.gnc import GncOptions
    from posegraph.model.robust import RobustKernel, RobustSpecError

    try:
        return GncOptions.parse(text) if GncOptions.is_spec(text) else RobustKernel.parse(text)
    except RobustSpecError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


#: the solve options (:func:`add_solve_options`) whose value names a file the solve writes:
#: ``posegraph batch`` accepts them for one input only (every input would write the same file)
SOLVE_OUTPUT_FILE_OPTIONS = ("outliers",)


def add_solve_options(o: argparse.ArgumentParser) -> None:
    """Add the options of one graph's solve (solver, tolerances, initialization, robust kernel,
    linear solver, dtype, device) to ``o``: ``posegraph optimize`` and ``posegraph batch`` share
    them, and so their configuration keys (:mod:`posegraph.cli.config`)."""
    o.add_argument("--solver", choices=["gn", "lm"], default="lm", help="Gauss-Newton or Levenberg-Marquardt (default lm)")
    o.add_argument("--max-iters", type=_non_negative_int, default=100, metavar="N", help="iteration cap (default 100)")
    o.add_argument("--rel-tol", type=_non_negative_float, default=1e-10,
                   help="relative error decrease to stop at (default 1e-10)")
    o.add_argument("--abs-tol", type=_non_negative_float, default=1e-10,
                   help="absolute error decrease to stop at (default 1e-10)")
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
    o.add_argument("--debug-costs", type=_name_pattern, metavar="PATTERN",
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
    from posegraph.io.formats import FORMATS

    p.add_argument("--format", choices=FORMATS, default=None, help="format of the estimate (default: by extension)")
    p.add_argument("--gt-format", choices=FORMATS, default=None,
                   help="format of the ground truth (default: by extension)")
    p.add_argument("--t-max-diff", type=_non_negative_float, default=0.01, metavar="SECONDS",
                   help="TUM files: pair poses whose timestamps differ by at most this (default 0.01, as evo); "
                        "g2o ids and KITTI indices serve as timestamps against a TUM file")


def _add_plot(sub) -> None:
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
