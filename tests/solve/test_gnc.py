"""Outlier rejection by graduated non-convexity (posegraph.solve.gnc): TLS's weights and μ₀ against
the paper's formulas, the default threshold against the χ² distribution, planted false loop
closures rejected exactly with the clean optimum recovered, odometry kept as known inliers,
and the weights reaching the solver as scaled information."""

from __future__ import annotations

import math
import re
from dataclasses import replace

import pytest
import torch

from posegraph import build_problem, optimize, read_g2o
from posegraph.report.eval import evaluate
from posegraph.solve.gnc import (
    GncOptions,
    chi2_threshold,
    format_outliers,
    initial_mu,
    optimize_gnc,
    tls_weights,
    whitened_squared_residuals,
)
from posegraph.synthetic.hard_cases import with_false_loop_closures
from posegraph.model.robust import RobustSpecError
from posegraph.synthetic.graphs import grid_se2, sphere_se3

D = torch.float64


def _sphere():
    return sphere_se3(num_rings=4, poses_per_ring=10, seed=1).graph


def _clean_optimum(graph):
    problem = build_problem(graph)
    optimize(problem)
    return problem.poses.tensor.clone()


# -- formulas -----------------------------------------------------------------------------------


def test_tls_weights_follow_the_closed_form():
    c2, mu = 4.0, 0.5
    lower, upper = mu / (mu + 1) * c2, (mu + 1) / mu * c2  # 4/3 and 12
    r2 = torch.tensor([0.0, 1.0, lower, 2.0, 5.0, 11.9, upper, 50.0], dtype=D)
    w = tls_weights(r2, mu, c2)
    middle = math.sqrt(c2 * mu * (mu + 1)) / r2.sqrt() - mu
    expected = torch.where(r2 <= lower, torch.ones_like(r2), torch.where(r2 >= upper, torch.zeros_like(r2), middle))
    torch.testing.assert_close(w, expected, rtol=1e-14, atol=1e-14)
    assert w[0] == 1 and w[-1] == 0 and 0 < w[4] < 1
    # continuous at both ends of the transition, non-increasing in r²
    fine = torch.linspace(0, 20, 2001, dtype=D)
    wf = tls_weights(fine, mu, c2)
    assert (wf.diff() <= 1e-12).all() and wf.diff().abs().max() < 0.01
    # μ → ∞: TLS's binary weights, inliers within C² (here C = 2)
    big = tls_weights(torch.tensor([3.9, 4.1], dtype=D), 1e6, c2)
    assert big.tolist() == [1.0, 0.0]


def test_initial_mu_is_remark_5():
    assert initial_mu(10.0, 4.0) == pytest.approx(4.0 / (20.0 - 4.0))
    assert initial_mu(2.0, 4.0) is None  # 2 r²_max ≤ C²: nothing to reject
    assert initial_mu(1e12, 4.0) == 1e-6  # floor for huge residuals


@pytest.mark.parametrize("probability", [0.5, 0.9, 0.99])
def test_default_threshold_is_the_chi2_quantile(probability):
    # χ² CDFs in closed form for even degrees of freedom: 1 − e^{−x/2} Σ_{k<d/2} (x/2)^k / k!
    for dof in (2, 6):
        x = chi2_threshold(dof, probability) ** 2
        cdf = 1 - math.exp(-x / 2) * sum((x / 2) ** k / math.factorial(k) for k in range(dof // 2))
        assert cdf == pytest.approx(probability, abs=1e-12)
    assert chi2_threshold(6) == pytest.approx(4.1002, abs=1e-4)
    assert chi2_threshold(3) == pytest.approx(3.3682, abs=1e-4)


@pytest.mark.parametrize(
    "spec,threshold",
    [("gnc", None), ("GNC:2.5", 2.5), (" gnc:1e1 ", 10.0), (GncOptions(threshold=3.0), 3.0)],
)
def test_gnc_specs(spec, threshold):
    parsed = GncOptions.parse(spec, "loop-closures")
    assert parsed.threshold == threshold and parsed.edges == "loop-closures"
    assert GncOptions.is_spec(spec)


@pytest.mark.parametrize(
    "spec,words",
    [
        ("gnc:", ["expected a threshold", "''"]),
        ("gnc:abc", ["expected a threshold", "'abc'"]),
        ("gnc:-1", ["threshold > 0", "-1"]),
        ("gnc:0", ["threshold > 0"]),
        ("gnc:inf", ["finite threshold"]),
        ("gnc:nan", ["finite threshold"]),
    ],
)
def test_bad_gnc_specs_are_refused(spec, words):
    with pytest.raises(RobustSpecError) as err:
        GncOptions.parse(spec)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_build_problem_points_gnc_to_optimize_gnc():
    with pytest.raises(RobustSpecError, match="optimize_gnc"):
        build_problem(_sphere(), robust="gnc")


# -- runs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,fraction,edges",
    [(_sphere, 0.3, "loop-closures"), (_sphere, 0.5, "all"), (lambda: grid_se2(num_poses=80, seed=1).graph, 0.3, "loop-closures")],
    ids=["sphere-30%-loops", "sphere-50%-all", "grid-30%-loops"],
)
def test_gnc_rejects_planted_outliers_and_recovers_the_clean_optimum(make, fraction, edges):
    graph = make()
    clean = _clean_optimum(graph)
    corrupted = with_false_loop_closures(graph, fraction, seed=0)
    problem = build_problem(corrupted)
    plain = build_problem(corrupted)
    optimize(plain)
    result = optimize_gnc(problem, GncOptions(edges=edges))
    planted = corrupted.extras["outlier"]
    assert torch.equal(result.outliers, planted)
    assert result.stop_reason == "weights-converged" and result.outer_iterations > 1
    torch.testing.assert_close(problem.poses.tensor, clean, atol=1e-6, rtol=0)
    assert (plain.poses.tensor - clean).abs().max() > 1e-2  # least squares alone is pulled off
    # the result's error is the inliers' least-squares error, the clean graph's optimum
    clean_problem = build_problem(graph.with_poses(clean[0]))
    assert float(result.solve.final_error) == pytest.approx(float(clean_problem.error()), rel=1e-6)
    assert result.solve.iterations == result.solve.history[-1].iteration
    assert result.judged.sum() == (corrupted.loop_closures().sum() if edges == "loop-closures" else corrupted.num_edges)


def _with_bad_odometry(graph):
    """``graph`` with its odometry edge 5 → 6 measuring a 20 m jump."""
    loops = graph.loop_closures()
    k = int(torch.nonzero(~loops)[5])
    meas = graph.measurements.clone()
    meas[k, :, 3] += 20.0
    return replace(graph, measurements=meas), k


def test_loop_closure_mode_never_rejects_odometry():
    graph, k = _with_bad_odometry(_sphere())
    loops = with_false_loop_closures(graph, 0.3, seed=0)
    result = optimize_gnc(build_problem(loops), GncOptions(edges="loop-closures"))
    odometry = ~loops.loop_closures()
    assert not result.outliers[odometry].any()
    assert (result.weights[odometry] == 1).all()
    assert not result.judged[odometry].any()
    # judged like the others, the wrong odometry edge is an outlier
    every = optimize_gnc(build_problem(loops), GncOptions(edges="all"))
    assert every.outliers[k] and every.weights[k] == 0


def test_weights_scale_the_information():
    corrupted = with_false_loop_closures(_sphere(), 0.3, seed=0)
    problem = build_problem(corrupted)
    base = problem.between.weight.sqrt_information.tensor.clone()
    result = optimize_gnc(problem, GncOptions(threshold=3.0, edges="loop-closures"))
    torch.testing.assert_close(problem.between.weight.sqrt_information.tensor, base * result.weights.sqrt()[None, :, None, None])
    # same error as a problem built with information w Ω at the result
    weighted = replace(corrupted, information=corrupted.information * result.weights[:, None, None])
    scaled = build_problem(weighted.with_poses(problem.poses.tensor[0]))
    assert float(problem.error()) == pytest.approx(float(scaled.error()), rel=1e-12)
    r2 = whitened_squared_residuals(problem, base)
    torch.testing.assert_close(result.residuals, r2)
    assert (r2[result.outliers] > 9.0).all()  # rejected ones lie beyond C = 3


def test_clean_graph_keeps_every_edge():
    graph = _sphere()
    clean = _clean_optimum(graph)
    problem = build_problem(graph.with_poses(clean[0]))
    r2 = whitened_squared_residuals(problem, problem.between.weight.sqrt_information.tensor)
    assert r2.max() < 50  # χ²₆ residuals: none beyond C/√2 for C = 10
    result = optimize_gnc(problem, GncOptions(threshold=10.0, edges="all"))
    assert result.stop_reason == "all-inliers" and result.outer_iterations == 0
    assert not result.outliers.any() and (result.weights == 1).all()
    torch.testing.assert_close(problem.poses.tensor, clean, atol=1e-6, rtol=0)


def test_outliers_text_is_vertex_ids_in_file_order():
    corrupted = with_false_loop_closures(_sphere(), 0.3, seed=0)
    mask = corrupted.extras["outlier"]
    text = format_outliers(corrupted, mask)
    lines = text.splitlines()
    assert len(lines) == int(mask.sum()) and text.endswith("\n")
    expected = corrupted.ids[corrupted.edges[mask]].tolist()
    assert [list(map(int, line.split())) for line in lines] == expected
    assert format_outliers(corrupted, torch.zeros_like(mask)) == ""


@pytest.mark.slow
def test_sphere2500_false_loop_closures(datasets_dir):
    """The target: ATE ≤ 0.02 m against the clean optimum with 10% false loop closures."""
    graph = read_g2o(datasets_dir / "sphere2500.g2o")
    clean = build_problem(graph)
    optimize(clean)
    corrupted = with_false_loop_closures(graph, 0.1, seed=0)
    problem = build_problem(corrupted)
    result = optimize_gnc(problem, GncOptions(edges="loop-closures"))
    assert torch.equal(result.outliers, corrupted.extras["outlier"])
    ate = evaluate(problem.to_graph(), clean.to_graph())["ate"]["rmse"]
    assert ate <= 0.02


def test_outer_iteration_cap_and_nothing_to_judge():
    corrupted = with_false_loop_closures(_sphere(), 0.3, seed=0)
    seen = []
    result = optimize_gnc(build_problem(corrupted), GncOptions(max_iterations=2), on_outer_iteration=seen.append)
    assert result.stop_reason == "max-iterations" and result.outer_iterations == 2
    assert [it.iteration for it in seen] == [1, 2] and seen[1].mu == pytest.approx(1.4 * seen[0].mu)
    assert result.solve.converged  # the last weights' problem is solved to the options' tolerances
    chain = _sphere()
    chain = replace(chain, edges=chain.edges[~chain.loop_closures()], measurements=chain.measurements[~chain.loop_closures()],
                    information=chain.information[~chain.loop_closures()], edge_lines=None)
    result = optimize_gnc(build_problem(chain), GncOptions(edges="loop-closures"))
    assert result.stop_reason == "nothing-to-judge" and not result.judged.any() and not result.outliers.any()


def test_gnc_result_says_how_its_last_solve_stopped():
    from posegraph.solve.nonlinear import CRITERIA

    graph = with_false_loop_closures(sphere_se3(num_rings=4, poses_per_ring=12, seed=1).graph, 0.3, seed=1)
    result = optimize_gnc(build_problem(graph), "gnc")
    assert result.solve.status == ["converged"] and result.solve.stop_reason[0] in CRITERIA
    assert result.solve.problem_iterations == [result.solve.iterations]


def test_cli_warns_when_gnc_over_every_edge_rejects_odometry(tmp_path, capsys):
    """From the chordal start, GNC over every edge of a 200-pose grid with 30% false loop
    closures trades 16 true odometry edges for false loop closures (a worse minimum of its
    truncated cost, reported converged): the CLI says so and points to loop-closures mode,
    which rejects exactly the false ones here and gives no warning."""
    from posegraph.cli.main import main
    from posegraph.io.g2o_write import write_g2o

    noisy, _ = grid_se2(num_poses=200, seed=1)
    path = tmp_path / "bad.g2o"
    write_g2o(with_false_loop_closures(noisy, 0.3, seed=3), path)
    argv = ["optimize", str(path), "-o", str(tmp_path / "out.g2o"), "--robust", "gnc", "--init", "chordal"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert re.search(r"GNC rejected \d+ odometry edges", err) and "--robust-edges loop-closures" in err, err
    assert main(argv + ["--robust-edges", "loop-closures"]) == 0
    assert "odometry" not in capsys.readouterr().err
