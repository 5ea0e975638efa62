"""Tests for posegraph.debug: the DebugCallback trace, the non-finite locator, normal equations
of every linearization, and ``run_inspect``."""

from __future__ import annotations

import io
import json
import math
import os
import re
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest
import theseus as th
import torch

from posegraph import (
    BlockSparseLinearization,
    CholmodSolver,
    OptimizationError,
    PoseGraphError,
    SolverOptions,
    build_problem,
    optimize,
    read_g2o,
)
from posegraph.debug.callback import DebugCallback
from posegraph.debug.nonfinite import NonFiniteError, check_initial, locate_nonfinite
from posegraph.debug.normal_matrix import jacobian_matrix, normal_matrix, normal_rhs
from posegraph.debug.inspect_trace import run_inspect
from posegraph.debug.inspect_trace import load_trace
from posegraph.solve.optimize import make_optimizer

DATASETS = Path(__file__).resolve().parents[2].parent / "shared" / "datasets" / "g2o"
D = torch.float64


# -- a planted cost function -----------------------------------------------------------------------


class PlantedCost(th.CostFunction):
    """Zero error/Jacobian over ``x`` until ``x > threshold``; then its error (mode "error")
    or its Jacobian (mode "jacobian") is NaN."""

    def __init__(self, x: th.Vector, threshold: float, mode: str, name: str = "planted"):
        super().__init__(th.ScaleCostWeight(torch.tensor(1.0, dtype=D)), name=name)
        self.x = x
        self.threshold = threshold
        self.mode = mode
        self.register_optim_vars(["x"])

    def dim(self) -> int:
        return 1

    def _bad(self) -> torch.Tensor:
        return self.x.tensor[:, :1] > self.threshold

    def error(self) -> torch.Tensor:
        e = torch.zeros_like(self.x.tensor[:, :1])
        return torch.where(self._bad(), float("nan"), e) if self.mode == "error" else e

    def jacobians(self):
        j = torch.zeros(self.x.tensor.shape[0], 1, self.x.dof(), dtype=D)
        if self.mode == "jacobian":
            j = torch.where(self._bad()[:, :, None], float("nan"), j)
        return [j], self.error()

    def _copy_impl(self, new_name: Optional[str] = None) -> "PlantedCost":
        return PlantedCost(self.x.copy(), self.threshold, self.mode, name=new_name)


LINEARIZATIONS = {
    "dense": (th.DenseLinearization, th.CholeskyDenseSolver),
    "sparse": (th.SparseLinearization, th.CholmodSparseSolver),
    "blocksparse": (BlockSparseLinearization, CholmodSolver),
}


def planted_optimizer(kind: str, mode: str):
    """GN with step 0.5 pulling x from 0 to 10: x = 5, 7.5, 8.75 (> 8: planted goes NaN at
    iteration 3), …"""
    x = th.Vector(tensor=torch.zeros(1, 1, dtype=D), name="x")
    target = th.Vector(tensor=torch.full((1, 1), 10.0, dtype=D), name="target")
    obj = th.Objective(dtype=D)
    obj.add(th.Difference(x, target, th.ScaleCostWeight(torch.tensor(1.0, dtype=D)), name="pull"))
    obj.add(PlantedCost(x, 8.0, mode))
    obj.update()
    lin_cls, solver_cls = LINEARIZATIONS[kind]
    opt = th.GaussNewton(
        obj,
        max_iterations=6,
        step_size=0.5,
        linearization_cls=lin_cls,
        linear_solver_cls=solver_cls,
        abs_err_tolerance=0.0,
        rel_err_tolerance=0.0,
    )
    return obj, x, opt


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("kind", sorted(LINEARIZATIONS))
@pytest.mark.parametrize("mode", ["error", "jacobian"])
@pytest.mark.parametrize("per_cost", [False, True])
def test_planted_nonfinite_named_at_its_iteration(kind, mode, per_cost):
    obj, x, opt = planted_optimizer(kind, mode)
    cb = DebugCallback(per_cost=per_cost)
    assert cb.check_initial(obj) is None
    with torch.no_grad():
        opt.optimize(end_iter_callback=cb)
    cb.check_final(obj)
    rep = cb.first_nonfinite
    assert rep is not None
    assert (rep.iteration, rep.cost_function, rep.quantity, rep.variables) == (3, "planted", mode, ["x"])
    if mode == "jacobian":
        assert rep.jacobian_of == ["x"]
    errors = [r["error"] for r in cb.records]
    assert [r["iteration"] for r in cb.records][:4] == [0, 1, 2, 3]
    assert errors[0] == pytest.approx(50.0) and errors[1] == pytest.approx(12.5)
    assert cb.records[1]["step_norm"] == pytest.approx(10.0)  # Theseus' delta (before step_size)
    assert cb.records[1]["damping"] is None  # Gauss-Newton
    if per_cost:
        assert set(cb.records[1]["cost_functions"]) == {"pull", "planted"}
        assert cb.records[1]["cost_functions"]["pull"]["jacobian_norms"] == [pytest.approx(1.0)]


@pytest.mark.parametrize("kind", sorted(LINEARIZATIONS))
def test_stop_on_nonfinite_stops_at_that_iteration(kind):
    obj, x, opt = planted_optimizer(kind, "error")
    cb = DebugCallback(stop_on_nonfinite=True)
    with pytest.raises(NonFiniteError) as exc:
        with torch.no_grad():
            opt.optimize(end_iter_callback=cb)
    assert isinstance(exc.value, OptimizationError)
    assert exc.value.report.iteration == 3 and exc.value.report.cost_function == "planted"
    assert "planted" in str(exc.value) and "iteration 3" in str(exc.value)
    assert cb.iteration == 3 and len(cb.records) == 3
    assert float(x.tensor) == pytest.approx(8.75)  # stopped at the bad state


# -- small g2o graphs ------------------------------------------------------------------------------


def _quat(rng: np.random.Generator) -> List[float]:
    q = rng.normal(size=4)
    return (q / np.linalg.norm(q)).tolist()


def write_graph(path: Path, n: int = 6, seed: int = 0, big_edge: Optional[int] = None) -> Path:
    """An SE3 chain with two loop closures, random poses/measurements/information; edge
    ``big_edge`` (index) gets translation 1e200."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        t = rng.uniform(-2, 2, size=3).tolist()
        lines.append(f"VERTEX_SE3:QUAT {i} " + " ".join(map(repr, t + _quat(rng))))
    pairs = [(i, i + 1) for i in range(n - 1)] + [(0, n - 1), (1, n - 2)]
    iu = np.triu_indices(6)
    for k, (a, b) in enumerate(pairs):
        t = rng.uniform(-1, 1, size=3).tolist()
        if k == big_edge:
            t = [1e200, 0.0, 0.0]
        m = rng.normal(size=(6, 6))
        info = m @ m.T + 6 * np.eye(6)
        vals = t + _quat(rng) + info[iu].tolist()
        lines.append(f"EDGE_SE3:QUAT {a} {b} " + " ".join(map(repr, vals)))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_overflowing_edge_named_at_iteration_zero(tmp_path):
    path = write_graph(tmp_path / "big.g2o", big_edge=3)  # edge 3: "3 4"
    problem = build_problem(read_g2o(path))
    rep = check_initial(problem.objective)
    assert rep is not None and rep.iteration == 0
    assert rep.cost_function == "EDGE_SE3:QUAT 3 4" and rep.quantity == "error"
    assert rep.variables == ["poses[3]", "poses[4]"]

    cb = DebugCallback.for_problem(problem)
    rep = cb.check_initial(problem.objective)
    assert rep.cost_function == "EDGE_SE3:QUAT 3 4"
    assert rep.variables == ["VERTEX_SE3:QUAT 3", "VERTEX_SE3:QUAT 4"]
    with torch.no_grad():  # a non-finite start fails at once, before any linear solve
        result = optimize(problem, SolverOptions(max_iterations=5), end_iter_callback=cb)
    cb.check_final(problem.objective, result.iterations)
    assert result.status == ["failed"] and result.stop_reason == ["non-finite-error"]
    assert result.iterations == 0
    data = cb.to_dict()
    assert data["first_nonfinite"]["iteration"] == 0
    assert data["first_nonfinite"]["cost_function"] == "EDGE_SE3:QUAT 3 4"
    assert data["iterations"][0]["error"] == "inf"
    assert data["status"] == ["failed"] and data["stop_reason"] == ["non-finite-error"]
    json.dumps(data, allow_nan=False)  # strict JSON

    # without check_initial, the end-of-run check names it too (the solver failed at once)
    problem = build_problem(read_g2o(path))
    cb = DebugCallback.for_problem(problem)
    with torch.no_grad():
        result = optimize(problem, SolverOptions(max_iterations=5), end_iter_callback=cb)
    rep = cb.check_final(problem.objective, result.iterations)
    assert (rep.iteration, rep.cost_function) == (0, "EDGE_SE3:QUAT 3 4")

    cb = DebugCallback.for_problem(problem, stop_on_nonfinite=True)
    with pytest.raises(NonFiniteError, match=re.escape("EDGE_SE3:QUAT 3 4")):
        cb.check_initial(problem.objective)


def test_optimize_with_callback_names_nonfinite_edge_at_iteration_zero(tmp_path):
    """``optimize(…, end_iter_callback=DebugCallback())`` checks the start itself: the
    overflowing edge is named at iteration 0 with no explicit ``check_initial``."""
    path = write_graph(tmp_path / "big.g2o", big_edge=3)  # edge 3: "3 4"
    problem = build_problem(read_g2o(path))
    cb = DebugCallback()
    with torch.no_grad():
        result = optimize(problem, SolverOptions(max_iterations=5), end_iter_callback=cb)
    assert result.status == ["failed"] and result.stop_reason == ["non-finite-error"]
    assert cb.records and cb.records[0]["iteration"] == 0
    rep = cb.first_nonfinite
    assert rep is not None and (rep.iteration, rep.cost_function, rep.quantity) == (0, "EDGE_SE3:QUAT 3 4", "error")

    # stop_on_nonfinite stops before the first step
    problem = build_problem(read_g2o(path))
    cb = DebugCallback.for_problem(problem, stop_on_nonfinite=True)
    with pytest.raises(NonFiniteError, match=re.escape("EDGE_SE3:QUAT 3 4")), torch.no_grad():
        optimize(problem, SolverOptions(max_iterations=5), end_iter_callback=cb)
    assert cb.first_nonfinite.variables == ["VERTEX_SE3:QUAT 3", "VERTEX_SE3:QUAT 4"]


def test_optimize_callback_after_explicit_check_initial_is_not_checked_twice(tmp_path):
    problem = build_problem(read_g2o(write_graph(tmp_path / "g.g2o", seed=2)))
    cb = DebugCallback()
    assert cb.check_initial(problem.objective) is None
    with torch.no_grad():
        result = optimize(problem, SolverOptions(max_iterations=3), end_iter_callback=cb)
    assert [r["iteration"] for r in cb.records] == list(range(len(cb.records)))
    assert cb.records[0]["iteration"] == 0 and len(cb.records) >= result.iterations


def test_problem_edge_gives_one_edges_error_and_jacobians(tmp_path):
    problem = build_problem(read_g2o(write_graph(tmp_path / "g.g2o", n=6, seed=4)))
    edge = problem.edge("EDGE_SE3:QUAT 2 3")
    assert (edge.cost_function, edge.cost_type, edge.index) == ("between", "BetweenEdges", 2)
    assert edge.variables == ["VERTEX_SE3:QUAT 2", "VERTEX_SE3:QUAT 3"] and edge.fixed == [False, False]
    # the same rows of Theseus' dense Jacobian and error of the whole cost
    cost = problem.between
    dense, err = cost.jacobians()
    werr = cost.weighted_error()
    rows = slice(2 * 6, 3 * 6)
    col = problem.poses.column_of_element()
    torch.testing.assert_close(edge.error, err[:, rows])
    torch.testing.assert_close(edge.weighted_error, werr[:, rows])
    for k, pose in enumerate((2, 3)):
        c = int(col[pose])
        torch.testing.assert_close(edge.jacobians[k], dense[0][:, rows, c : c + 6])
    a = jacobian_matrix(_linearized(problem)).toarray()
    for k, pose in enumerate((2, 3)):
        c = int(col[pose])
        np.testing.assert_allclose(edge.weighted_jacobians[k][0].numpy(), a[rows, c : c + 6], atol=1e-12)
    assert float(edge.cost[0]) == pytest.approx(0.5 * float(werr[0, rows].square().sum()))

    # the gauge pose's block is reported, marked fixed
    first = problem.edge("EDGE_SE3:QUAT 0 1")
    assert first.fixed == [True, False]


def test_problem_edge_unknown_name_is_named(tmp_path):
    from posegraph.model.edge import UnknownEdgeError

    problem = build_problem(read_g2o(write_graph(tmp_path / "g.g2o", n=6)))
    with pytest.raises(UnknownEdgeError, match=re.escape("'EDGE_SE3:QUAT 2 4'")) as info:
        problem.edge("EDGE_SE3:QUAT 2 4")
    assert "EDGE_SE3:QUAT 0 1" in str(info.value)  # how names look
    assert isinstance(info.value, PoseGraphError)
    with pytest.raises(UnknownEdgeError, match=re.escape("stored as 'EDGE_SE3:QUAT 2 3'")):
        problem.edge("EDGE_SE3:QUAT 3 2")


def _linearized(problem) -> BlockSparseLinearization:
    lin = BlockSparseLinearization(problem.objective)
    with torch.no_grad():
        lin.linearize()
    return lin


def _autograd_jacobian(problem) -> torch.Tensor:
    """Weighted error Jacobian w.r.t. the free tangent coordinates (X ⊕ δ = X·Exp(δ))."""
    poses = problem.poses
    base = poses.tensor.clone()

    def werr(d: torch.Tensor) -> torch.Tensor:
        poses.update(poses.retract(d[None]).tensor)
        e = problem.objective.error()[0]
        poses.update(base)
        return e

    return torch.autograd.functional.jacobian(werr, torch.zeros(poses.dof(), dtype=D))


def test_normal_equations_match_dense_and_autograd(tmp_path):
    problem = build_problem(read_g2o(write_graph(tmp_path / "g.g2o", n=6, seed=3)))
    J = _autograd_jacobian(problem).numpy()
    err = problem.objective.error()[0].detach().numpy()
    ref_ata, ref_atb = J.T @ J, -J.T @ err

    block = BlockSparseLinearization(problem.objective)
    block.linearize()
    ata = normal_matrix(block)
    assert ata.shape == (30, 30) and hasattr(ata, "tocsc")  # scipy sparse, 5 free poses
    scale = np.abs(ref_ata).max()
    np.testing.assert_allclose(ata.toarray(), ref_ata, atol=1e-8 * scale)
    np.testing.assert_allclose(normal_matrix(block, dense=True), ata.toarray())
    np.testing.assert_allclose(normal_rhs(block), ref_atb, atol=1e-8 * np.abs(ref_atb).max())
    np.testing.assert_allclose(normal_rhs(block), block.Atb[0, :, 0].numpy(), rtol=1e-12, atol=1e-9)

    dense = make_optimizer(problem, SolverOptions(linear_solver="dense")).linear_solver.linearization
    assert isinstance(dense, th.DenseLinearization)
    dense.linearize()
    np.testing.assert_allclose(normal_matrix(dense, dense=True), dense.AtA[0].numpy(), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(ata.toarray(), dense.AtA[0].numpy(), rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(normal_rhs(dense), dense.Atb[0, :, 0].numpy(), rtol=1e-10, atol=1e-9)

    sparse = th.SparseLinearization(problem.objective)
    sparse.linearize()
    with pytest.raises(NotImplementedError):
        sparse.AtA
    np.testing.assert_allclose(normal_matrix(sparse, dense=True), ata.toarray(), rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(normal_rhs(sparse), normal_rhs(block), rtol=1e-10, atol=1e-9)
    assert jacobian_matrix(sparse).shape == jacobian_matrix(block).shape == (42, 30)

    with pytest.raises(IndexError):
        normal_matrix(block, batch_index=1)
    with pytest.raises(ValueError, match="linearize"):
        normal_rhs(BlockSparseLinearization(problem.objective))


@pytest.mark.parametrize("value", ["5", 2.5, True, -1])
def test_max_records_must_be_an_integer(value):
    """max_records must be an integer ≥ 0 or None: a string, float or bool is refused at
    construction, naming it, not when the records are cut with a bare TypeError."""
    with pytest.raises(PoseGraphError, match=r"^max_records: expected an integer ≥ 0 or None, received"):
        DebugCallback(per_cost=True, max_records=value)
    assert DebugCallback(per_cost=True, max_records=np.int64(2)).max_records == 2


def test_pattern_aggregate_and_max_records(tmp_path):
    problem = build_problem(read_g2o(write_graph(tmp_path / "g.g2o", n=6, seed=1)))
    opts = SolverOptions(max_iterations=3, linear_solver="cholmod")
    start = problem.poses.tensor.clone()

    def run(**kw) -> DebugCallback:
        problem.poses.update(start.clone())
        cb = DebugCallback.for_problem(problem, per_cost=True, **kw)
        cb.check_initial(problem.objective)
        with torch.no_grad():
            optimize(problem, opts, end_iter_callback=cb)
        return cb

    cb = run(pattern="EDGE_SE3:QUAT 0 *")
    assert all(set(r["cost_functions"]) == {"EDGE_SE3:QUAT 0 1", "EDGE_SE3:QUAT 0 5"} for r in cb.records)
    cb = run(pattern=["re:^EDGE_SE3:QUAT 1 ", re.compile(r" 5$")])
    assert set(cb.records[-1]["cost_functions"]) == {"EDGE_SE3:QUAT 1 2", "EDGE_SE3:QUAT 1 4", "EDGE_SE3:QUAT 4 5", "EDGE_SE3:QUAT 0 5"}
    full = run()
    assert len(full.records[0]["cost_functions"]) == 7
    agg = run(aggregate="type")
    for r_full, r_agg in zip(full.records, agg.records):
        rec = r_agg["cost_functions"]["BetweenEdges"]
        norms = np.array([c["error_norm"] for c in r_full["cost_functions"].values()])
        assert rec["count"] == 7
        assert rec["error_norm"] == pytest.approx(np.sqrt(np.sum(norms**2)))
        # ½‖We‖² summed over all blocks is the objective error
        assert 0.5 * rec["error_norm"] ** 2 == pytest.approx(r_agg["error"], rel=1e-9)
        assert len(rec["jacobian_norms"]) == 2
    top = run(max_records=2)
    worst = sorted(full.records[-1]["cost_functions"].items(), key=lambda kv: -kv[1]["error_norm"])[:2]
    assert set(top.records[-1]["cost_functions"]) == {n for n, _ in worst}


@pytest.mark.parametrize("pattern", ["re:[", ["EDGE_SE3:QUAT 0 *", "re:(unclosed"], "re:a{2,1}"])
def test_invalid_regular_expression_pattern_is_a_clear_value_error(pattern):
    from posegraph.debug import NamePatternError

    bad = pattern if isinstance(pattern, str) else pattern[-1]
    with pytest.raises(NamePatternError) as err:
        DebugCallback(per_cost=True, pattern=pattern)
    assert isinstance(err.value, PoseGraphError) and isinstance(err.value, ValueError)
    message = str(err.value)
    assert message.startswith(f"name pattern: expected a regular expression after 're:', received {bad!r} (")
    assert str(re.error) not in message and re.compile(r"\(.+\)$").search(message)  # the regex's own error
    assert err.value.pattern == bad


@pytest.fixture(scope="module")
def tiny_grid() -> Path:
    path = DATASETS / "tinyGrid3D.g2o"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return path


def test_tinygrid_trace_and_inspect(tiny_grid, tmp_path):
    graph = read_g2o(tiny_grid)
    problem = build_problem(graph)
    cb = DebugCallback.for_problem(problem, per_cost=True)
    cb.check_initial(problem.objective)
    with torch.no_grad():
        result = optimize(problem, SolverOptions(), end_iter_callback=cb)
    cb.check_final(problem.objective, result.iterations)
    assert result.converged
    names = set(graph.edge_names())
    assert len(names) == 11
    trace_path = tmp_path / "trace.json"
    cb.save(trace_path)
    assert sorted(os.listdir(tmp_path)) == ["trace.json"]  # no temporary file left
    data = json.loads(trace_path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    iters = data["iterations"]
    assert [r["iteration"] for r in iters] == list(range(result.iterations + 1))
    assert data["first_nonfinite"] is None
    for rec in iters:
        assert set(rec["cost_functions"]) == names
        for c in rec["cost_functions"].values():
            assert c["error_norm"] >= 0 and len(c["jacobian_norms"]) == 2
        assert 0.5 * sum(c["error_norm"] ** 2 for c in rec["cost_functions"].values()) == pytest.approx(rec["error"], rel=1e-9)
    assert [r["error"] for r in iters] == pytest.approx([h.error for h in result.history], rel=1e-12)
    assert all(r["damping"] > 0 for r in iters[1:-1])  # LM; the converging step has no callback

    out = io.StringIO()
    assert run_inspect(str(trace_path), out=out, top=3) == 0
    text = out.getvalue()
    worst = max(iters[-1]["cost_functions"].items(), key=lambda kv: kv[1]["error_norm"])[0]
    assert "iteration" in text and "step norm" in text and "damping" in text
    assert "worst cost functions by error norm at iteration" in text and "(top 3 of 11)" in text
    assert worst in text and "jacobian norms per iteration" in text
    assert "first non-finite value: none" in text


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_inspect_shows_nonfinite_report(tmp_path):
    obj, x, opt = planted_optimizer("dense", "error")
    cb = DebugCallback(per_cost=True, stop_on_nonfinite=True)
    cb.check_initial(obj)
    with pytest.raises(NonFiniteError), torch.no_grad():
        opt.optimize(end_iter_callback=cb)
    path = tmp_path / "t.json"
    cb.save(path)
    trace = load_trace(path)
    assert math.isnan(trace["iterations"][3]["cost_functions"]["planted"]["error_norm"])
    out = io.StringIO()
    run_inspect(path, out=out)
    text = out.getvalue()
    assert "first non-finite value: error at iteration 3 in cost function 'planted'" in text
    assert "variables: x" in text
    assert re.search(r"^\s+1\s+planted\s+nan", text, re.M)  # NaN ranks worst


def test_inspect_bad_files(tmp_path):
    with pytest.raises(PoseGraphError) as exc:
        run_inspect(tmp_path / "missing.json", out=io.StringIO())
    assert exc.value.path == str(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PoseGraphError, match="invalid JSON"):
        run_inspect(bad, out=io.StringIO())
    bad.write_text('{"iterations": [{"iteration": "x"}]}')
    with pytest.raises(PoseGraphError, match="not a debug trace"):
        run_inspect(bad, out=io.StringIO())
    bad.write_text("[1, 2]")
    with pytest.raises(PoseGraphError, match="not a debug trace"):
        run_inspect(str(bad), out=io.StringIO())


def _small_trace() -> dict:
    """A trace as DebugCallback writes it: two iterations, one cost function, a non-finite report."""
    costs = {"EDGE_SE2 0 1": {"error_norm": 0.5, "jacobian_norms": [2.0, 1.5]}}
    return {
        "format": "posegraph-debug-trace", "version": 1,
        "settings": {"per_cost": True, "pattern": None, "aggregate": None, "max_records": None, "stop_on_nonfinite": False},
        "iterations": [{"iteration": k, "error": 1.0, "step_norm": 0.1, "damping": None, "cost_functions": costs}
                       for k in range(2)],
        "first_nonfinite": {"iteration": 1, "cost_function": "EDGE_SE2 0 1", "quantity": "error",
                            "variables": ["VERTEX_SE2 0", "VERTEX_SE2 1"], "jacobian_of": None},
        "status": ["converged"], "stop_reason": ["absolute-error"],
    }


#: a top-level field of a trace set to a value of the wrong type, and the error that names it
BAD_TRACE_FIELDS = [
    ("settings", "x", "settings: expected null or an object, received a string ('x')"),
    ("settings", [1], "settings: expected null or an object, received a list ([1])"),
    ("status", "converged", "status: expected null or a list of strings, received a string ('converged')"),
    ("status", 3, "status: expected null or a list of strings, received a number (3)"),
    ("status", [None], "status[0]: expected a string, received null"),
    ("stop_reason", {"a": 1}, "stop_reason: expected null or a list of strings, received an object ({'a': 1})"),
    ("first_nonfinite.variables", 7, "first_nonfinite.variables: expected null or a list, received a number (7)"),
    ("first_nonfinite.jacobian_of", "x", "first_nonfinite.jacobian_of: expected null or a list, received a string ('x')"),
]


@pytest.mark.parametrize("field,value,message", BAD_TRACE_FIELDS)
def test_inspect_refuses_fields_of_the_wrong_type(tmp_path, capsys, field, value, message):
    from posegraph.cli.main import main

    trace = _small_trace()
    path = tmp_path / "t.json"
    path.write_text(json.dumps(trace))
    assert main(["inspect", str(path)]) == 0  # the trace as written is fine, and so are nulls
    for key in ("settings", "status", "stop_reason", "first_nonfinite"):
        path.write_text(json.dumps({**trace, key: None}))
        assert main(["inspect", str(path)]) == 0
    capsys.readouterr()
    parent, _, key = field.rpartition(".")
    (trace[parent] if parent else trace)[key] = value
    path.write_text(json.dumps(trace))
    with pytest.raises(PoseGraphError) as exc:
        load_trace(path)
    assert str(exc.value) == f"{path}: not a debug trace: {message}"
    assert main(["inspect", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: {path}: not a debug trace: {message}\n"


def test_locate_nonfinite_generic_and_nan_pose(tmp_path):
    problem = build_problem(read_g2o(write_graph(tmp_path / "g.g2o", n=5, seed=2)))
    assert locate_nonfinite(problem.objective) is None
    t = problem.poses.tensor.clone()
    t[0, 2, 0, 3] = float("nan")  # pose 2's x: edges "1 2" (first) and "2 3" go NaN
    problem.poses.update(t)
    rep = locate_nonfinite(problem.objective, iteration=7)
    assert (rep.iteration, rep.cost_function, rep.quantity) == (7, "EDGE_SE3:QUAT 1 2", "error")
    assert rep.variables == ["poses[1]", "poses[2]"]


def test_linearization_locator_maps_rows_and_columns(tmp_path):
    """A non-finite entry of A (posegraph's CSR layout) is named by residual block and by the
    pose whose Jacobian block holds it, at the iteration the system was built."""
    from types import SimpleNamespace

    problem = build_problem(read_g2o(write_graph(tmp_path / "g.g2o", n=6, seed=4)))
    lin = BlockSparseLinearization(problem.objective)
    lin.linearize()
    a = jacobian_matrix(lin).tocoo()
    # an entry in residual row of edge 5 ("0 5": rows 30..35) in a column of pose 5
    pick = np.flatnonzero((a.row // 6 == 5) & (a.col // 6 == 4))[0]  # free poses 1..5 → col//6 = 4
    csr = jacobian_matrix(lin)
    slot = np.flatnonzero((np.repeat(np.arange(lin.num_rows), np.diff(csr.indptr)) == a.row[pick]) & (csr.indices == a.col[pick]))[0]
    lin.A_val[0, slot] = float("inf")
    cb = DebugCallback.for_problem(problem)
    opt = SimpleNamespace(objective=problem.objective, linear_solver=SimpleNamespace(linearization=lin))
    info = SimpleNamespace(last_err=problem.objective.error_metric())
    cb(opt, info, torch.zeros(1, 30, dtype=D), 0)
    rep = cb.first_nonfinite
    assert (rep.iteration, rep.cost_function, rep.quantity) == (0, "EDGE_SE3:QUAT 0 5", "jacobian")
    assert rep.variables == ["VERTEX_SE3:QUAT 0", "VERTEX_SE3:QUAT 5"]
    assert rep.jacobian_of == ["VERTEX_SE3:QUAT 5"]


def test_cli_debug_names_overflowing_edge_and_inspect_renders(tmp_path, capsys):
    from posegraph.cli.main import main

    path = write_graph(tmp_path / "big.g2o", big_edge=3)
    trace = tmp_path / "trace.json"
    out = tmp_path / "out.g2o"
    rc = main(["optimize", str(path), "-o", str(out), "--quiet", "--debug", str(trace)])
    err = capsys.readouterr().err
    assert rc != 0
    assert "EDGE_SE3:QUAT 3 4" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {path}: optimization failed")  # one line
    assert not out.exists()
    data = json.loads(trace.read_text())
    assert data["first_nonfinite"]["cost_function"] == "EDGE_SE3:QUAT 3 4"
    assert data["first_nonfinite"]["iteration"] == 0
    rc = main(["optimize", str(path), "--quiet", "--debug", str(trace), "--debug-stop"])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: ") and "EDGE_SE3:QUAT 3 4" in err
    assert main(["inspect", str(trace)]) == 0
    shown = capsys.readouterr().out
    assert "EDGE_SE3:QUAT 3 4" in shown and "non-finite" in shown


def _trap_problem():
    """Four SE2 poses in a chain and a user cost √(2.5 − x3.x)·0.01: finite at the start
    (x3.x = 0.3), NaN once a step moves x3 past 2.5 — which the first Gauss–Newton step does."""
    import posegraph as pg

    d = torch.float64
    b = pg.PoseGraphBuilder()
    xs = [th.SE2(x_y_theta=torch.tensor([[0.1 * k, 0.0, 0.0]], dtype=d), name=f"x{k}") for k in range(4)]
    for k, x in enumerate(xs):
        b.add_pose(x, fixed=(k == 0))
    z = th.SE2(x_y_theta=torch.tensor([[1.0, 0, 0]], dtype=d))
    for k in range(3):
        b.add_between(xs[k], xs[k + 1], measurement=z, information=torch.eye(3, dtype=d))

    def trap(optim_vars, aux_vars):
        return torch.sqrt(2.5 - optim_vars[0].tensor[:, 0:1]) * 0.01

    weight = th.ScaleCostWeight(torch.tensor(1.0, dtype=d))
    b.add_cost(th.AutoDiffCostFunction([xs[3]], trap, 1, name="trap_x3", cost_weight=weight))
    return b.build()


@pytest.mark.parametrize("solver", ["gn", "lm"])
def test_a_refused_nonfinite_step_is_located(tmp_path, solver):
    """The step is refused and undone before the callback runs: the callback saw finite values
    everywhere and named nothing (GN failed with non-finite-error, LM went on). It now names
    the cost at the refused step's values, marked as a trial step, and the trace keeps it."""
    problem = _trap_problem()
    callback = DebugCallback.for_problem(problem)
    result = optimize(problem, SolverOptions(solver=solver, max_iterations=5), end_iter_callback=callback)
    report = callback.first_nonfinite
    assert report is not None and report.cost_function == "trap_x3" and report.variables == ["x3"]
    assert report.iteration == 1 and report.trial_step and "(a trial step, refused)" in str(report)
    assert torch.isfinite(problem.pose_tensor()).all()  # the solve went on from finite values
    if solver == "gn":
        assert result.status == ["failed"] and result.stop_reason == ["non-finite-error"]
    path = tmp_path / "trace.json"
    callback.save(path)
    assert load_trace(path)["first_nonfinite"]["trial_step"] is True
    out = io.StringIO()
    assert run_inspect(path, out) == 0 and "trap_x3" in out.getvalue()
