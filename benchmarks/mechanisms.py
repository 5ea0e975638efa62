"""What each speed mechanism pays: its share of one iteration, measured alternating with its plain version.

    .venv/bin/python benchmarks/mechanisms.py [MECHANISM ...] [--graphs NAME ...] [--pairs N]
                                              [--small-pairs N] [--busy N] [--datasets DIR] [--list]

For each mechanism and graph it runs the CLI's default solve (``posegraph optimize FILE``:
read, ``--init auto``, build, LM with the default options) in turns — with the mechanism, then
with its plain version (A B A B …) — and prints, as a share of one iteration, the paired median
of what the plain version costs more, with the middle half of the pairs. One iteration is the
fastest per-iteration time of the runs with the mechanism (the solve loop's time over its
iterations, as ``bench.py`` counts it).

Each mechanism is measured where it acts (``SCOPE``), so that the rest of the iteration's
noise stays out: this thread's CPU time inside the functions it changes (the error
evaluations and the linearization, the retraction, the LM bookkeeping), or the wall time of
the linear solves, the CG attempts, the assembly of ``AᵀA``; one-off mechanisms by the phase
they shorten (reading, the start's choice, building). ``--busy N`` runs N CPU-bound processes
beside the measurement (the condition the thread-count mechanisms are for).

The plain versions are set up here, by replacing a function or a setting for the plain runs
(nothing in posegraph changes): ``--list`` names them. Mechanisms measured differently are
described in docs/performance.md (the closed-form structure of A, the MKL library look-up, the
rotation test of the builder).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's posegraph
import numpy as np  # noqa: E402
import posegraph as pg  # noqa: E402
import theseus as th  # noqa: E402
import torch  # noqa: E402
from posegraph import information  # noqa: E402
from posegraph.lie import geometry, native  # noqa: E402
from posegraph.model import between, costs, variables  # noqa: E402
from posegraph.model import checks as builder_module  # noqa: E402
from posegraph.init.dispatch import initialize  # noqa: E402
from posegraph.io import g2o  # noqa: E402
from posegraph.solve import linearization, nonlinear, normal, pardiso, sparse_cholesky, symbolic  # noqa: E402
from posegraph.solve import optimize as optimize_module  # noqa: E402
from posegraph.solve.batched import BlockSparseSolver  # noqa: E402
from posegraph.solve.optimize import SolverOptions, make_optimizer, optimize  # noqa: E402

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "g2o"
GRAPHS = ["sphere2500", "parking-garage", "intel", "manhattan", "smallGrid3D"]
SMALL = {"intel", "smallGrid3D", "tinyGrid3D"}


# -- the plain versions -----------------------------------------------------------------------
class NoCache(costs.EvaluationCache):
    """An evaluation cache that keeps nothing: every lookup recomputes."""

    def get(self, tensors):
        return None

    def put(self, tensors, value, outputs=()):
        pass


def _retract_without_fused_pass(self, delta):
    batch = max(self.tensor.shape[0], delta.shape[0])
    retract = variables._RETRACTIONS.get(self.element_cls)
    d = delta.expand(batch, -1).reshape(batch * self.num_free, self.element_dof)
    moved = retract(self._free_flat(batch), d) if retract is not None else self.as_element(self._free_flat(batch)).retract(d).tensor
    moved = moved.reshape(batch, self.num_free, *self.element_shape)
    new = self.tensor.expand(batch, *self.tensor.shape[1:]).index_copy(1, self.free_index, moved)
    return type(self)(new, self.element_cls, self.fixed, name=self.name)


def _fresh_product_matrices(self, values):
    a = self.scipy_matrix(np.ascontiguousarray(values))
    return a, a.T


def _numpy_namespace(*tensors):
    if all(t.device.type == "cpu" for t in tensors):
        return np, [t.detach().numpy() for t in tensors]
    return torch, [t.detach() for t in tensors]


class _SolveFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a_val, b, solver, dampings, exact, atb):
        a_np, b_np, x_np, factors = solver.solve_batch(a_val, b, dampings, exact, atb)
        ctx.save_for_backward(a_val, b)
        ctx.x_np, ctx.factors = x_np, factors
        return torch.as_tensor(x_np).to(dtype=a_val.dtype, device=a_val.device)


def _solve_through_function(self, lam):
    lin = self.linearization
    a_val, b = lin.A_val, lin.b
    if lin.num_cols == 0:
        return a_val.new_zeros(a_val.shape[0], 0)
    dampings = lam.detach().reshape(-1).tolist()
    dampings = dampings * a_val.shape[0] if len(dampings) == 1 else dampings
    atb = lin.Atb[..., 0] if a_val.dtype == torch.float64 else None
    return _SolveFunction.apply(a_val, b, self, dampings, not self.reuse_allowed(a_val, b), atb)


_plan = sparse_cholesky.plan_factorization


def _plan_without_block_order(lin, mode="auto", backend="auto"):
    plan = _plan(lin, mode, backend)
    return symbolic.FactorizationPlan(plan.mode, None, plan.backend)


def _first_oversized_two_passes(info, bound):
    t = torch.as_tensor(info)
    if t.numel() == 0 or bool((t.abs() <= bound).all()):
        return None
    return information.first_oversized(info, bound)


_cost_init = costs.BlockSparseCostFunction.__init__


def _names_at_once(self, weight, block_dim, num_blocks, name=None, block_names=None):
    _cost_init(self, weight, block_dim, num_blocks, name, block_names() if callable(block_names) else block_names)


def _each_between(attribute: str) -> Callable[[Any], None]:
    def apply(problem) -> None:
        for cost in problem.objective.cost_functions.values():
            if isinstance(cost, between.BetweenEdges):
                setattr(cost, attribute, NoCache())
    return apply


# name: (what the plain version is, scope, {patch: [(object, attribute, value)], options, after_build, after_setup})
MECHANISMS: Dict[str, Tuple[str, str, Dict[str, Any]]] = {
    "compiled": ("native.ENABLED = False: NumPy / torch kernels", "iteration",
                 dict(patch=[(native, "ENABLED", False)])),
    "fused": ("the separate compiled kernels and weights instead of the fused ones", "nonsolve_cpu",
              dict(patch=[(between.BetweenEdges, "_fused_inputs", lambda self: None)])),
    "fused_into": ("weighted Jacobian blocks placed by the linearization, Aᵀb afterwards", "errlin_cpu",
                   dict(patch=[(between.BetweenEdges, "place_weighted_block_jacobians",
                                costs.BlockSparseCostFunction.place_weighted_block_jacobians)])),
    "retract_at": ("per-element compiled retraction and index_copy", "retract_cpu",
                   dict(patch=[(variables.ManifoldArray, "_retract_impl", _retract_without_fused_pass)])),
    "gram_scatter": ("AᵀA assembled by the torch route", "assembly",
                     dict(patch=[(normal, "native", types.SimpleNamespace(enabled=lambda: False))])),
    "log_cache": ("no cache of the last logarithm", "errlin_cpu", dict(after_build=_each_between("log_cache"))),
    "weighted_cache": ("no cache of W e", "errlin_cpu", dict(after_build=_each_between("weighted_cache"))),
    "fused_cache": ("the fused kernels' fixed inputs prepared on every call", "errlin_cpu",
                    dict(after_build=_each_between("_fused_cache"))),
    "product_matrices": ("new SciPy matrices for each CG attempt", "cg",
                         dict(patch=[(linearization.BlockSparseLinearization, "product_matrices", _fresh_product_matrices)])),
    "pardiso": ("--linear-solver cholmod", "solve", dict(options=dict(linear_solver="cholmod"))),
    "block_order": ("the backends' own fill-reducing orderings", "iteration",
                    dict(patch=[(sparse_cholesky, "plan_factorization", _plan_without_block_order)])),
    "amd_restart": ("AMD once (AMD_RESTARTS = 0)", "factorize", dict(patch=[(symbolic, "AMD_RESTARTS", 0)])),
    "factor_reuse": ("--no-reuse-factor", "solve", dict(options=dict(reuse_factor=False))),
    "cg_cost_limit": ("--cg-max-iters 10: every attempt made, 10 CG iterations at most", "solve",
                      dict(options=dict(cg_max_iterations=sparse_cholesky.CG_MAX_ITERATIONS))),
    "reuse_gate": ("the last factor tried after any fall of the error", "solve",
                   dict(after_setup=lambda opt: setattr(opt.linear_solver, "reuse_max_decrease", float("inf")))),
    "vector_dot": ("every dot product through BLAS", "solve",
                   dict(patch=[(sparse_cholesky, "vector_dot", lambda a, b: float(a.dot(b))),
                               (nonlinear, "vector_dot", lambda a, b: float(a.dot(b)))])),
    "scalar_ops": ("LM's bookkeeping on NumPy arrays", "bookkeeping_cpu",
                   dict(patch=[(nonlinear, "_arrays", _numpy_namespace)])),
    "direct_solve": ("the sparse solve through an autograd Function", "wrapper",
                     dict(patch=[(sparse_cholesky.SparseCholeskySolver, "_solve", _solve_through_function)])),
    "single_thread": ("the iterations on torch's thread count", "iteration",
                      dict(patch=[(optimize_module, "SINGLE_THREAD_MAX_ROWS", -1)])),
    "idle_cores": ("PARDISO on MKL's thread count", "solve",
                   dict(patch=[(pardiso, "idle_cores", lambda cores=None: 1 << 20)])),
    "parser": ("the reference (line by line) g2o parser", "read", dict(patch=[(g2o, "_parse_bulk", lambda path, text: None)])),
    "info_bound": ("the information bound tested entry by entry", "read_build",
                   dict(patch=[(g2o, "first_oversized", _first_oversized_two_passes),
                               (builder_module, "first_oversized", _first_oversized_two_passes)])),
    "lazy_names": ("edge names made when the problem is built", "build",
                   dict(patch=[(costs.BlockSparseCostFunction, "__init__", _names_at_once)])),
    "init_compiled": ("the start comparison's kernels on NumPy / torch", "init",
                      dict(patch=[(geometry, "_native", types.SimpleNamespace(applies=lambda tensors: False,
                                                                               plain_cpu_tensors=native.plain_cpu_tensors))])),
}
ONE_OFF = {"parser", "info_bound", "lazy_names", "init_compiled"}


# -- timing -------------------------------------------------------------------------------------
_SCOPED: Dict[str, List[float]] = {}
_INSIDE: Dict[str, bool] = {}


def _timed(scope: str, fn: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        if _INSIDE.get(scope):
            return fn(*args, **kwargs)
        _INSIDE[scope] = True
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            acc = _SCOPED.setdefault(scope, [0.0, 0.0])
            acc[0] += time.perf_counter() - wall
            acc[1] += time.thread_time() - cpu
            _INSIDE[scope] = False
    return wrapper


def _install_timers() -> None:
    """Time the functions the scopes are made of (the plain versions replace others)."""
    for scope, owner, name in [
        ("solve", BlockSparseSolver, "solve"),
        ("solve_batch", sparse_cholesky.SparseCholeskySolver, "solve_batch"),
        ("cg", sparse_cholesky.SparseCholeskySolver, "_lagged_solve"),
        ("factorize", sparse_cholesky.SparseCholeskySolver, "factorize"),
        ("assembly", normal.NormalMatrix, "values"),
        ("bookkeeping", nonlinear.LevenbergMarquardt, "_complete_step"),
        ("bookkeeping", nonlinear.TruthfulLoop, "_judge"),
        ("linearize", linearization.BlockSparseLinearization, "_linearize_hessian_impl"),
        ("atb", linearization.BlockSparseLinearization, "_atb_impl"),
        ("error", costs.BlockSparseCostFunction, "weighted_error"),
        ("retract", th.Objective, "retract_vars_sequence"),
    ]:
        setattr(owner, name, _timed(scope, owner.__dict__[name]))


@contextlib.contextmanager
def _patched(changes):
    saved = []
    try:
        for owner, name, value in changes:
            saved.append((owner, name, owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)))
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


_STARTS: Dict[str, pg.PoseGraph] = {}


def _path(name: str) -> Path:
    return DATASETS / f"{name}.g2o"


def _run(name: str, spec: Optional[Dict[str, Any]], one_off: bool) -> Dict[str, float]:
    """One CLI default solve of ``name`` (read and start chosen once per graph unless the
    mechanism acts there); with ``spec``, the plain version."""
    spec = spec or {}
    options = SolverOptions(**spec.get("options", {}))
    gc.collect()
    with _patched(spec.get("patch", [])):
        t0 = time.perf_counter()
        if one_off or name not in _STARTS:
            graph = pg.read_g2o(_path(name))
            t1 = time.perf_counter()
            graph = initialize(graph, "auto")
            _STARTS.setdefault(name, graph)
        else:
            graph = _STARTS[name]
            t1 = time.perf_counter()
        t2 = time.perf_counter()
        problem = pg.build_problem(graph)
        if "after_build" in spec:
            spec["after_build"](problem)
        t3 = time.perf_counter()
        optimizer = make_optimizer(problem, options)
        if "after_setup" in spec:
            spec["after_setup"](optimizer)
        _SCOPED.clear()
        t4, c4 = time.perf_counter(), time.thread_time()
        with torch.no_grad():
            result = optimize(problem, options, optimizer=optimizer)
        t5, c5 = time.perf_counter(), time.thread_time()
    n = max(result.iterations, 1)
    wall = {k: v[0] / n for k, v in _SCOPED.items()}
    cpu = {k: v[1] / n for k, v in _SCOPED.items()}
    return {
        "iteration": (t5 - t4) / n, "read": t1 - t0, "init": t2 - t1, "build": t3 - t2,
        "read_build": (t1 - t0) + (t3 - t2),
        "solve": wall.get("solve", 0.0), "cg": wall.get("cg", 0.0), "factorize": wall.get("factorize", 0.0),
        "assembly": wall.get("assembly", 0.0), "wrapper": wall.get("solve", 0.0) - wall.get("solve_batch", 0.0),
        "nonsolve_cpu": (c5 - c4) / n - cpu.get("solve", 0.0), "bookkeeping_cpu": cpu.get("bookkeeping", 0.0),
        "errlin_cpu": cpu.get("error", 0.0) + cpu.get("linearize", 0.0) + cpu.get("atb", 0.0),
        "retract_cpu": cpu.get("retract", 0.0), "iterations": result.iterations, "final": float(result.final_error[0]),
    }


def measure(mechanism: str, name: str, pairs: int) -> Dict[str, Any]:
    """``pairs`` alternating runs with the mechanism and with its plain version."""
    _, scope, spec = MECHANISMS[mechanism]
    one_off = mechanism in ONE_OFF
    _run(name, None, one_off), _run(name, spec, one_off)  # warm both
    with_it, plain = [], []
    for _ in range(pairs):
        with_it.append(_run(name, None, one_off))
        plain.append(_run(name, spec, one_off))
    iteration = min(r["iteration"] for r in with_it)
    saved = sorted((p[scope] - m[scope]) / iteration * 100 for m, p in zip(with_it, plain))
    whole = sorted((p["iteration"] - m["iteration"]) / iteration * 100 for m, p in zip(with_it, plain))
    q = len(saved) // 4
    same = all(r["iterations"] == with_it[0]["iterations"] for r in with_it + plain)
    return dict(iteration_ms=iteration * 1e3, saved=statistics.median(saved), low=saved[q], high=saved[-1 - q],
                whole=statistics.median(whole), same_iterations=same)


def main(argv: Optional[List[str]] = None) -> int:
    """Print each mechanism's paired median share of an iteration per graph."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mechanisms", nargs="*", default=list(MECHANISMS), metavar="MECHANISM")
    parser.add_argument("--graphs", nargs="+", default=GRAPHS)
    parser.add_argument("--pairs", type=int, default=15, help="pairs on the larger graphs (default 15)")
    parser.add_argument("--small-pairs", type=int, default=30, help="pairs on intel and smallGrid3D (default 30)")
    parser.add_argument("--busy", type=int, default=0, help="CPU-bound processes beside the runs")
    parser.add_argument("--datasets", type=Path, default=None, help="folder of the g2o files")
    parser.add_argument("--list", action="store_true", help="name each mechanism's plain version and scope")
    args = parser.parse_args(argv)
    global DATASETS
    DATASETS = args.datasets or DATASETS
    if args.list:
        for name, (plain, scope, _) in MECHANISMS.items():
            print(f"{name:17s} scope {scope:15s} plain: {plain}")
        return 0
    unknown = [m for m in args.mechanisms if m not in MECHANISMS]
    if unknown:
        parser.error(f"unknown mechanism(s) {', '.join(unknown)}; --list names them")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    atexit.register(lambda: [p.kill() for p in busy])
    _install_timers()
    print(f"{'mechanism':17s} {'graph':15s} {'iteration':>10s} {'saves (scope)':>14s} {'middle half':>17s} {'whole iter.':>12s}  pairs")
    for mechanism in args.mechanisms:
        for name in args.graphs:
            pairs = args.small_pairs if name in SMALL else args.pairs
            r = measure(mechanism, name, pairs)
            note = "" if r["same_iterations"] else "  (iteration counts differ)"
            print(f"{mechanism:17s} {name:15s} {r['iteration_ms']:8.2f}ms {r['saved']:+13.1f}% "
                  f"[{r['low']:+6.1f},{r['high']:+6.1f}]% {r['whole']:+11.1f}%  {pairs}{note}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
