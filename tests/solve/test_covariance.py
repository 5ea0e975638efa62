"""Marginal covariances (posegraph.solve.covariance): against the inverse of the reduced normal
matrix, the tangent convention, subsets and fixed poses, GTSAM's Marginals, and the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import theseus as th
import torch

import posegraph as pg
from posegraph.cli.main import main
from posegraph.debug.normal_matrix import normal_matrix
from posegraph.solve.covariance import CovarianceError, marginal_covariances
from posegraph.solve.linearization import BlockSparseLinearization

from conftest import make_synthetic


def _problem_from_text(tmp_path, text: str) -> pg.PoseGraphProblem:
    path = tmp_path / "graph.g2o"
    path.write_text(text)
    return pg.build_problem(pg.read_g2o(path))


def _dense_reference(problem: pg.PoseGraphProblem) -> np.ndarray:
    """Diagonal pose blocks of the inverse of the (reduced: fixed poses left out) AᵀA."""
    lin = BlockSparseLinearization(problem.objective)
    with torch.no_grad():
        lin.linearize()
    sigma = np.linalg.inv(normal_matrix(lin, dense=True))
    var = problem.poses
    d = var.element_dof
    start = lin.var_start_cols[lin.ordering.index_of(var.name)]
    out = np.zeros((var.num_elements, d, d))
    for k, col in enumerate(var.column_of_element().tolist()):
        if col >= 0:
            out[k] = sigma[start + col : start + col + d, start + col : start + col + d]
    return out


def test_small_grid_equals_inverse_of_reduced_normal_matrix(datasets_dir):
    problem = pg.build_problem(pg.read_g2o(datasets_dir / "smallGrid3D.g2o"))
    assert pg.optimize(problem).converged
    cov = marginal_covariances(problem)
    ref = _dense_reference(problem)
    assert cov.shape == (125, 6, 6) and cov.dtype == torch.float64
    np.testing.assert_allclose(cov.numpy(), ref, rtol=0, atol=1e-9 * np.abs(ref).max())
    assert np.abs(ref).max() > 1e-3  # not a trivially small comparison


@pytest.mark.parametrize("kind", ["SE2", "SE3"])
def test_synthetic_graphs_and_subsets(tmp_path, kind):
    g = make_synthetic(kind, n=12, loops=((0, 6), (3, 9), (11, 2), (5, 10)), noise=0.05, seed=3)
    problem = _problem_from_text(tmp_path, g.text(fixed=[4]))
    pg.optimize(problem)
    ref = _dense_reference(problem)
    cov = marginal_covariances(problem)
    np.testing.assert_allclose(cov.numpy(), ref, rtol=0, atol=1e-10 * np.abs(ref).max())
    fixed = problem.poses.fixed.nonzero().flatten().tolist()
    assert fixed and all(float(cov[k].abs().max()) == 0.0 for k in fixed)
    for k in set(range(12)) - set(fixed):
        assert np.all(np.linalg.eigvalsh(cov[k].numpy()) > 0)
    subset = [7, fixed[0], -1, 2]
    np.testing.assert_allclose(marginal_covariances(problem, subset).numpy(), ref[[7, fixed[0], 11, 2]],
                               rtol=0, atol=1e-10 * np.abs(ref).max())
    np.testing.assert_allclose(marginal_covariances(problem, torch.tensor([3])).numpy(), ref[[3]],
                               rtol=0, atol=1e-10 * np.abs(ref).max())


def test_tangent_order_translation_then_rotation(tmp_path):
    """One free pose, one consistent edge: J = I at zero error, so Σ = Ω⁻¹ in the g2o
    information's order (translation then rotation)."""
    info = np.diag([1.0, 2.0, 4.0, 100.0, 200.0, 400.0])
    upper = " ".join(repr(float(info[i, j])) for i in range(6) for j in range(i, 6))
    text = ("VERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\nVERTEX_SE3:QUAT 1 1 2 3 0 0 0.6 0.8\n"
            f"EDGE_SE3:QUAT 0 1 1 2 3 0 0 0.6 0.8 {upper}\n")
    cov = marginal_covariances(_problem_from_text(tmp_path, text))
    assert float(cov[0].abs().max()) == 0.0  # the fixed gauge pose
    np.testing.assert_allclose(cov[1].numpy(), np.linalg.inv(info), atol=1e-12)


def test_bad_arguments_are_named(tmp_path, se2_text):
    problem = _problem_from_text(tmp_path, se2_text)
    with pytest.raises(CovarianceError, match=r"poses: expected indices in \[-3, 3\) \(negative: from the end\), received 3"):
        marginal_covariances(problem, [0, 3])
    with pytest.raises(CovarianceError, match=r"received -4"):
        marginal_covariances(problem, [-4])
    torch.testing.assert_close(marginal_covariances(problem, [-1]), marginal_covariances(problem, [2]))
    with pytest.raises(CovarianceError, match="integer pose indices"):
        marginal_covariances(problem, [0.5])
    with pytest.raises(CovarianceError, match="batch_index"):
        marginal_covariances(problem, batch_index=2)


def test_unconstrained_pose_is_refused(tmp_path):
    """A free pose whose only edge carries zero information leaves AᵀA singular."""
    zero = " ".join(["0"] * 21)
    text = ("VERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\nVERTEX_SE3:QUAT 1 1 0 0 0 0 0 1\n"
            f"EDGE_SE3:QUAT 0 1 1 0 0 0 0 0 1 {zero}\n")
    try:
        problem = _problem_from_text(tmp_path, text)
    except pg.PoseGraphError:
        pytest.skip("zero information is refused when reading")
    with pytest.raises(CovarianceError, match="not positive definite"):
        marginal_covariances(problem)


def test_matches_gtsam_marginals(datasets_dir):
    gtsam = pytest.importorskip("gtsam")
    path = datasets_dir / "tinyGrid3D.g2o"
    problem = pg.build_problem(pg.read_g2o(path))
    assert pg.optimize(problem).converged
    cov = marginal_covariances(problem).numpy()

    graph, _ = gtsam.readG2o(str(path), True)
    values = gtsam.Values()
    poses = problem.poses.tensor[0].double().numpy()  # (N, 3, 4)
    for key, pose in zip(problem.ids.tolist(), poses):
        values.insert(int(key), gtsam.Pose3(gtsam.Rot3(pose[:, :3]), pose[:, 3]))
    fixed = int(problem.ids[problem.poses.fixed.nonzero()[0, 0]])
    # A tight prior stands for the fixed pose (its own covariance, 1e-12, is negligible).
    graph.add(gtsam.PriorFactorPose3(fixed, values.atPose3(fixed), gtsam.noiseModel.Isotropic.Sigma(6, 1e-6)))
    marginals = gtsam.Marginals(graph, values)
    swap = np.r_[3:6, 0:3]  # GTSAM's Pose3 tangent is (rotation, translation)
    for k, key in enumerate(problem.ids.tolist()):
        if key == fixed:
            continue
        ref = marginals.marginalCovariance(int(key))[np.ix_(swap, swap)]
        np.testing.assert_allclose(cov[k], ref, rtol=0, atol=1e-7 * np.abs(ref).max())


def test_cli_writes_covariances_atomically(tmp_path, capsys, leftovers):
    g = make_synthetic("SE3", n=8, noise=0.02, seed=1)
    src = tmp_path / "in.g2o"
    src.write_text(g.text())
    out = tmp_path / "cov.npz"
    code = main(["optimize", str(src), "--quiet", "--init", "file", "--covariances", str(out)])
    capsys.readouterr()
    assert code == 0
    with np.load(out) as data:
        ids, covs, tangent = data["ids"], data["covariances"], str(data["tangent"])
    assert tangent == "tx ty tz rx ry rz"
    problem = _problem_from_text(tmp_path, g.text())
    pg.optimize(problem)
    np.testing.assert_array_equal(ids, problem.ids.numpy())
    np.testing.assert_allclose(covs, _dense_reference(problem), rtol=1e-6, atol=1e-12)
    assert leftovers(tmp_path) == {}


def test_landmarks_are_marginalized_out():
    """Poses (6 columns) and points (3 columns) in one normal matrix: the pose blocks of its
    inverse, with the points marginalized out."""
    gen = torch.Generator().manual_seed(5)
    b = pg.PoseGraphBuilder()
    poses = []
    for k in range(5):
        pose = th.SE3.exp_map(torch.cat([torch.randn(1, 3, generator=gen, dtype=torch.float64),
                                         0.3 * torch.randn(1, 3, generator=gen, dtype=torch.float64)], -1))
        pose = th.SE3(tensor=pose.tensor, name=f"x{k}")
        b.add_pose(pose, fixed=k == 0)
        poses.append(pose)
    for k in range(4):
        b.add_between(poses[k], poses[k + 1], poses[k].between(poses[k + 1]), torch.eye(6, dtype=torch.float64))
    for j in range(6):
        point = th.Point3(tensor=torch.randn(1, 3, generator=gen, dtype=torch.float64) * 3, name=f"p{j}")
        b.add_point(point)
        for k in (j % 5, (j + 2) % 5):
            seen = poses[k].inverse().transform_from(point).tensor
            b.add_point_observation(poses[k], point, seen + 0.01, torch.eye(3, dtype=torch.float64))
    problem = b.build()
    assert problem.points is not None and problem.points.num_elements == 6
    pg.optimize(problem)
    ref = _dense_reference(problem)
    np.testing.assert_allclose(marginal_covariances(problem).numpy(), ref, rtol=0, atol=1e-10 * np.abs(ref).max())


def test_cli_covariances_unwritable_is_one_error_line(tmp_path, capsys, leftovers):
    src = tmp_path / "in.g2o"
    src.write_text(make_synthetic("SE2", n=8, seed=2).text())
    code = main(["optimize", str(src), "--quiet", "--covariances", str(tmp_path / "missing" / "cov.npz")])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "cov.npz" in err
    assert leftovers(tmp_path) == {}
