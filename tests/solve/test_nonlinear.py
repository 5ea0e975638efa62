"""The solve loop's semantics off the benchmark path: hard starts, stalls, non-finite starts,
batches mixing good and bad problems — statuses that tell the truth, and GTSAM's answers
(where GTSAM is installed) from the same start."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch

import posegraph as pg
from posegraph.synthetic.hard_cases import perturb_vertices
from posegraph.report.console import ProgressPrinter
from posegraph.solve.nonlinear import CRITERIA, DampingRule
from posegraph.solve.optimize import make_optimizer
from posegraph.synthetic.graphs import grid_se2, sphere_se3

warnings.filterwarnings("ignore", message="Vectorization is off by default")


def hard_start(kind: str = "SE3", seed: int = 0):
    """A small graph whose vertices are perturbed as in the benchmark's hard starts (pose 0
    kept; t += N(0, 2²), R ← R·Exp(N(0, 1.5²))): LM's first steps are rejected."""
    if kind == "SE3":
        graph = sphere_se3(num_rings=4, poses_per_ring=12, seed=seed).graph
        return perturb_vertices(graph, 2.0, 1.5, seed=seed)
    return perturb_vertices(grid_se2(num_poses=120, seed=seed).graph, 2.0, 1.0, seed=seed)


def solve(graph, **options):
    problem = pg.build_problem(graph)
    errors = []
    result = pg.optimize(problem, pg.SolverOptions(**options), on_iteration=lambda r: errors.append(r.error))
    return problem, result, errors


def test_rejected_first_step_is_retried_not_called_convergence():
    """The perturbed start's first LM steps are rejected: the damping rises within the
    iteration until a step lowers the cost; the error never stays where it started."""
    graph = hard_start()
    seen = []
    problem = pg.build_problem(graph)
    opt = make_optimizer(problem, pg.SolverOptions())
    damping = lambda o, info, delta, it: seen.append(float(o._damping))
    result = pg.optimize(problem, pg.SolverOptions(), optimizer=opt, end_iter_callback=damping)
    assert seen[0] > 1e-5  # the first iteration's accepted step needed more damping than the start's
    assert float(result.final_error) < 0.05 * float(result.initial_error)
    assert result.iterations > 1 and result.history[1].error < result.history[0].error
    assert result.status == ["converged"] and result.stop_reason[0] in CRITERIA
    # converged means converged: neither GN nor LM from the answer lowers it further
    for solver in ("gn", "lm"):
        _, again, _ = solve(problem.to_graph(), solver=solver)
        assert float(again.final_error) >= float(result.final_error) * (1 - 1e-9)


def test_every_accepted_lm_step_lowers_the_cost():
    for kind in ("SE3", "SE2"):
        _, result, errors = solve(hard_start(kind, seed=1), max_iterations=40)
        assert all(b < a for a, b in zip(errors, errors[1:]))
        assert result.status[0] in ("converged", "max-iterations")


@pytest.mark.parametrize("kind", ["SE3", "SE2"])
def test_same_answer_and_iterations_as_gtsam_from_a_hard_start(kind):
    gtsam_reference = pytest.importorskip("posegraph.synthetic.gtsam_reference")
    pytest.importorskip("gtsam")
    graph = hard_start(kind, seed=2)
    reference = gtsam_reference.gtsam_optimize(graph)
    _, result, _ = solve(graph)
    assert float(result.final_error) == pytest.approx(reference.final_error, rel=1e-9)
    assert result.iterations == reference.iterations
    expected = "max-iterations" if reference.iterations == 100 else "converged"
    assert result.status == [expected]


def test_stalled_when_no_damping_lowers_the_cost():
    """With the damping's upper bound too low for this start, no step is accepted: the
    problem stalls at its start (not 'converged'), its poses untouched."""
    graph = hard_start()
    problem = pg.build_problem(graph)
    start = problem.pose_tensor().clone()
    opt = make_optimizer(problem, pg.SolverOptions())
    opt.damping_rule = DampingRule(bounds=(0.0, 1e-3))
    result = pg.optimize(problem, pg.SolverOptions(), optimizer=opt)
    assert result.status == ["stalled"] and result.stop_reason == ["damping-limit"]
    assert result.iterations == 1
    assert float(result.final_error) == float(result.initial_error)
    torch.testing.assert_close(problem.pose_tensor(), start, rtol=0, atol=0)


def test_gauss_newton_rise_is_shown_and_never_convergence():
    graph = hard_start(seed=0)
    stream = io.StringIO()
    problem = pg.build_problem(graph)
    printer = ProgressPrinter(stream)
    result = pg.optimize(problem, pg.SolverOptions(solver="gn", max_iterations=5), on_iteration=printer)
    errors = [r.error for r in result.history]
    rises = [k for k in range(1, len(errors)) if errors[k] > errors[k - 1]]
    assert rises, "this start's first GN step raises the cost"
    lines = stream.getvalue().splitlines()[1:]
    for k in range(1, len(errors)):
        assert lines[k].endswith("cost rose") == (k in rises)
    assert result.status == ["max-iterations"]


def test_nonfinite_start_fails_at_once():
    graph = sphere_se3(num_rings=2, poses_per_ring=6, seed=0).graph
    graph.poses[4, :, 3] = 1e200  # finite, but its squared error overflows
    problem = pg.build_problem(graph)
    result = pg.optimize(problem, pg.SolverOptions())
    assert result.status == ["failed"] and result.stop_reason == ["non-finite-error"]
    assert result.iterations == 0


def test_tolerance_criteria_are_named():
    graph = hard_start("SE2", seed=0)
    _, result, _ = solve(graph, gradient_tolerance=1e300)
    assert (result.status, result.stop_reason, result.iterations) == (["converged"], ["gradient-norm"], 0)
    _, result, _ = solve(graph, step_tolerance=1e300)
    assert (result.status, result.stop_reason, result.iterations) == (["converged"], ["step-norm"], 1)
    _, result, _ = solve(graph, max_iterations=2)
    assert result.status == ["max-iterations"] and result.stop_reason == ["max-iterations"]
    with pytest.raises(ValueError, match="gradient_tolerance"):
        pg.SolverOptions(gradient_tolerance=-1.0).validate()


@pytest.mark.parametrize("solver", ["lm", "gn"])
def test_batch_mixing_good_and_bad_problems(solver):
    """A batch of a solved problem, a hard start and a stalling one (LM): each problem's
    status, iterations and answer are the ones it gets alone, and with LM no problem ends
    worse than it started."""
    good = sphere_se3(num_rings=4, poses_per_ring=12, seed=2).graph
    bad = perturb_vertices(good, 2.0, 1.5, seed=2)
    problem = pg.build_problem(good)
    pg.optimize(problem)
    solved = problem.pose_tensor()[0]
    poses = torch.stack([solved, bad.poses, good.poses])
    layer = pg.PoseGraphLayer(good, options=pg.SolverOptions(solver=solver, max_iterations=30, cg_max_iterations=10))
    out, info = layer(poses, backward_mode="unroll")
    for b in range(3):
        alone, info_b = layer(poses[b : b + 1], backward_mode="unroll")
        assert info.status[b] == info_b.status[0] and info.stop_reason[b] == info_b.stop_reason[0]
        assert int(info.iterations[b]) == int(info_b.iterations[0])
        torch.testing.assert_close(out[b : b + 1], alone, rtol=0, atol=1e-8)
    assert info.status[0] == "converged" and int(info.iterations[0]) <= 2
    if solver == "lm":
        assert (info.final_error <= info.initial_error).all()
        assert info.status[1] in ("converged", "max-iterations")


def test_cli_json_summary_and_trace_say_the_same(tmp_path, capsys):
    import json

    from posegraph.cli.main import main
    from posegraph.io import write_g2o

    path = tmp_path / "hard.g2o"
    write_g2o(hard_start(), path)
    trace = tmp_path / "t.json"
    argv = ["optimize", str(path), "--init", "file", "--max-iters", "7", "--quiet"]
    assert main(argv + ["--json", "--debug", str(trace)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["status"], data["stop_reason"], data["iterations"]) == ("max-iterations", "max-iterations", 7)
    saved = json.loads(trace.read_text())
    assert saved["status"] == ["max-iterations"] and saved["stop_reason"] == ["max-iterations"]
    assert main(argv) == 0
    assert "status       max-iterations after 7 iterations" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["implicit", "truncated", "unroll"])
def test_layer_never_returns_worse_than_its_input_with_lm(mode):
    """A stalled problem (damping bound too low for its start) beside a solvable one: in every
    backward mode the stalled one comes back as it went in, and the other one improves."""
    good = sphere_se3(num_rings=3, poses_per_ring=10, seed=4).graph
    bad = perturb_vertices(good, 2.0, 1.5, seed=4)
    layer = pg.PoseGraphLayer(good, options=pg.SolverOptions(max_iterations=20))
    poses = torch.stack([good.poses, bad.poses])
    kw = {"backward_num_iterations": 2} if mode == "truncated" else {}
    compiled = layer.compiled(poses.device, poses.dtype)
    compiled.layer.optimizer.damping_rule = DampingRule(bounds=(0.0, 1e-3))
    meas = good.measurements.clone().requires_grad_(True)
    out, info = layer(poses, meas, backward_mode=mode, **kw)
    assert info.status[1] == "stalled"
    assert (info.final_error <= info.initial_error).all()
    torch.testing.assert_close(out[1].detach(), bad.poses, rtol=0, atol=0)
    out[0, :, :, 3].sum().backward()
    assert meas.grad is not None and meas.grad.abs().sum() > 0


@pytest.mark.parametrize("linear_solver", ["auto", "cholmod", "dense"])
def test_overflowing_start_fails_at_once(linear_solver):
    """A finite start whose normal equations would overflow (½eᵀΩe ≈ 4.5e306): 'failed' before
    any linear solve, with autograd on or off, never a raw error; the poses untouched."""
    graph = sphere_se3(num_rings=2, poses_per_ring=6, seed=0).graph
    graph.poses[4, :, 3] = 1e152
    for grad in (True, False):
        problem = pg.build_problem(graph)
        start = problem.pose_tensor().clone()
        with torch.set_grad_enabled(grad):
            result = pg.optimize(problem, pg.SolverOptions(linear_solver=linear_solver))
        assert result.status == ["failed"] and result.stop_reason == ["overflowing-error"]
        assert result.iterations == 0
        torch.testing.assert_close(problem.pose_tensor(), start, rtol=0, atol=0)


@pytest.mark.parametrize("grad", [True, False])
def test_failed_factorization_is_a_status_not_an_exception(grad, monkeypatch):
    """A factorization that fails (CHOLMOD: 'not positive definite') ends the solve 'failed'
    with the solver's message in the result, never with the raw error."""
    from posegraph.solve.sparse_cholesky import SparseCholeskySolver

    def refuse(self, *args, **kwargs):
        raise RuntimeError("CHOLMOD factorization failed: not positive definite")

    monkeypatch.setattr(SparseCholeskySolver, "solve_one", refuse)
    problem = pg.build_problem(hard_start())
    start = problem.pose_tensor().clone()
    with torch.set_grad_enabled(grad):
        result = pg.optimize(problem)
    assert result.status == ["failed"] and result.stop_reason == ["linear-solver-error"]
    assert "not positive definite" in result.detail and result.iterations == 0
    torch.testing.assert_close(problem.pose_tensor(), start, rtol=0, atol=0)


def test_nonfinite_system_fails_its_problem_alone():
    """In a batch, a problem whose linear system is not finite gets a NaN step and fails alone
    (the sparse solver does not factor it); the other problem is solved as alone."""
    good = sphere_se3(num_rings=3, poses_per_ring=8, seed=6).graph
    layer = pg.PoseGraphLayer(good, options=pg.SolverOptions(max_iterations=30))
    poses = torch.stack([good.poses, good.poses])
    poses[1, 5, :, 3] = 1e200  # its error is not finite
    out, info = layer(poses, backward_mode="unroll")
    alone, alone_info = layer(good.poses, backward_mode="unroll")
    assert info.status == ["converged", "failed"] and info.stop_reason[1] == "non-finite-error"
    torch.testing.assert_close(out[:1], alone, rtol=0, atol=1e-8)


def test_cli_failed_solve_names_the_reason(tmp_path, capsys):
    from posegraph.cli.main import main
    from posegraph.io import write_g2o

    graph = sphere_se3(num_rings=2, poses_per_ring=6, seed=0).graph
    graph.poses[4, :, 3] = 1e152
    path, out = tmp_path / "big.g2o", tmp_path / "out.g2o"
    write_g2o(graph, path)
    argv = ["optimize", str(path), "--init", "file", "--quiet", "-o", str(out), "--linear-solver", "dense"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "(the initial error is beyond √(largest float)" in err[0]
    assert err[0].startswith(f"error: {path}: optimization failed after 0 iterations")
    assert not out.exists()


def _ill_conditioned_information(graph, low: float, seed: int = 1) -> torch.Tensor:
    """Each edge's information with a random orthonormal basis and eigenvalues log-uniform in
    ``[low, 1e4]`` (``low = 0``: three of the six are zero, rank 3)."""
    gen = torch.Generator().manual_seed(seed)
    e = graph.num_edges
    q, _ = torch.linalg.qr(torch.randn(e, 6, 6, dtype=torch.float64, generator=gen))
    if low > 0:
        lam = 10 ** (torch.rand(e, 6, dtype=torch.float64, generator=gen) * (4 - math.log10(low)) + math.log10(low))
    else:
        lam = torch.cat([torch.rand(e, 3, dtype=torch.float64, generator=gen) + 0.5, torch.zeros(e, 3, dtype=torch.float64)], 1)
    info = q @ torch.diag_embed(lam) @ q.transpose(1, 2)
    return (info + info.transpose(1, 2)) / 2


@pytest.mark.parametrize("low", [1e-8, 0.0])
def test_implicit_mode_returns_the_solvers_solution(low):
    """Implicit differentiation's Gauss–Newton step at the solution is taken for its derivative
    only: on ill-conditioned (eigenvalues 1e-8 … 1e4) or rank-3 information its value undid the
    converged solve (error 0.016 → 79,224; 1e-11 → 1e8), still called converged. The layer in
    implicit mode now returns unroll's poses, status and iterations, with a gradient."""
    g = perturb_vertices(sphere_se3(num_rings=3, poses_per_ring=10, seed=0).graph, 0.3, 0.3, seed=0)
    info = _ill_conditioned_information(g, low).unsqueeze(0)
    results = {}
    for mode in ("implicit", "unroll"):
        meas = g.measurements.unsqueeze(0).clone().requires_grad_(True)
        # (exact factorizations: unroll, which records gradients, never reuses a factor)
        layer = pg.PoseGraphLayer(g, options=pg.SolverOptions(reuse_factor=False), backward_mode=mode)
        poses, out = layer(g.poses.unsqueeze(0), meas, info)
        poses[..., :3, 3].sum().backward()
        assert torch.isfinite(meas.grad).all() and meas.grad.abs().sum() > 0
        results[mode] = (poses.detach(), out)
    with torch.no_grad():  # the same solve, nothing differentiated
        solver = pg.PoseGraphLayer(g, options=pg.SolverOptions(reuse_factor=False))
        p_solve, _ = solver(g.poses.unsqueeze(0), g.measurements.unsqueeze(0), info)
    (p_imp, imp), (p_unr, unr) = results["implicit"], results["unroll"]
    assert imp.status == unr.status == ["converged"]
    assert imp.iterations.tolist() == unr.iterations.tolist()
    torch.testing.assert_close(p_imp, p_solve, rtol=0, atol=0)  # the step moved nothing
    # unroll's autograd arithmetic rounds otherwise; the flat directions take it up (≤ 1e-5 m)
    assert abs(float(imp.final_error[0]) - float(unr.final_error[0])) <= 1e-6 * float(unr.final_error[0]) + 1e-9


def test_implicit_mode_uses_every_iteration_and_never_rises():
    """max_iterations=1 from a hard start: Theseus' implicit mode spends the one iteration on an
    undamped Gauss–Newton step (error 3.6e7 → 9.0e7); here the LM iteration is taken, as in
    unroll mode, and the status is max-iterations."""
    g = perturb_vertices(sphere_se3(num_rings=3, poses_per_ring=10, seed=0).graph, 2.0, 1.5, seed=3)
    outs = {}
    for mode in ("implicit", "unroll"):
        options = pg.SolverOptions(max_iterations=1, reuse_factor=False)
        poses, out = pg.PoseGraphLayer(g, options=options, backward_mode=mode)(g)
        outs[mode] = (poses, out)
    (p_imp, imp), (p_unr, unr) = outs["implicit"], outs["unroll"]
    assert imp.status == unr.status == ["max-iterations"] and imp.iterations.tolist() == [1]
    assert float(imp.final_error[0]) < float(imp.initial_error[0])
    torch.testing.assert_close(float(imp.final_error[0]), float(unr.final_error[0]), rtol=1e-9, atol=0)


@pytest.mark.parametrize("solver", ["gn", "lm"])
def test_a_problem_that_cannot_be_factored_fails_alone(solver):
    """A batch of two: the second has zero information on every edge at pose 7 (its system is
    singular, CHOLMOD refuses it). It fails alone with linear-solver-error; the first is solved
    as alone (with GN both failed after 0 iterations)."""
    g = perturb_vertices(sphere_se3(num_rings=3, poses_per_ring=10, seed=0).graph, 0.3, 0.3, seed=0)
    bad = g.information.clone()
    bad[(g.edges == 7).any(1)] = 0
    layer = pg.PoseGraphLayer(g, options=pg.SolverOptions(solver=solver, linear_solver="cholmod"), backward_mode="unroll")
    p, z = g.poses.unsqueeze(0), g.measurements.unsqueeze(0)
    with torch.no_grad():
        alone_poses, alone = layer(p, z, g.information.unsqueeze(0))
        poses, batch = layer(p.expand(2, -1, -1, -1), z.expand(2, -1, -1, -1), torch.stack([g.information, bad]))
    assert batch.status[0] == alone.status[0] == "converged"
    assert batch.iterations[0] == alone.iterations[0]
    torch.testing.assert_close(poses[:1], alone_poses, rtol=0, atol=1e-8)
    if solver == "gn":  # (LM's damping makes the singular system factorable)
        assert (batch.status[1], batch.stop_reason[1]) == ("failed", "linear-solver-error")
        assert "problem 1" in batch.detail and "CHOLMOD" in batch.detail
        torch.testing.assert_close(poses[1], p[0], rtol=0, atol=0)


def test_a_factorization_failing_in_a_retried_step_fails_that_problem_alone(monkeypatch):
    """LM retries a rejected step with more damping; when that retry's factorization fails, the
    problem fails there (linear-solver-error) and is not retried again; the other is solved
    as alone."""
    from posegraph.solve.sparse_cholesky import SparseCholeskySolver

    good = sphere_se3(num_rings=3, poses_per_ring=8, seed=2).graph
    hard = perturb_vertices(good, 2.0, 1.5, seed=2)  # its first steps are rejected and retried
    layer = pg.PoseGraphLayer(good, options=pg.SolverOptions(linear_solver="cholmod", reuse_factor=False))
    with torch.no_grad():
        alone_poses, alone = layer(good.poses.unsqueeze(0))
    real, calls = SparseCholeskySolver.solve_one, {"n": 0}

    def refuse_retries(self, index, a_values, b_values, rhs, beta, exact):
        if index == 1 and beta > 1e-5:  # only with more than the initial damping: a retry
            calls["n"] += 1
            raise RuntimeError("CHOLMOD factorization failed: not positive definite")
        return real(self, index, a_values, b_values, rhs, beta, exact)

    monkeypatch.setattr(SparseCholeskySolver, "solve_one", refuse_retries)
    with torch.no_grad():
        poses, info = layer(torch.stack([good.poses, hard.poses]))
    assert calls["n"] == 1
    assert (info.status[1], info.stop_reason[1]) == ("failed", "linear-solver-error")
    assert info.status[0] == alone.status[0] and info.iterations[0] == alone.iterations[0]
    torch.testing.assert_close(poses[:1], alone_poses, rtol=0, atol=1e-8)
    assert torch.isfinite(poses).all()
