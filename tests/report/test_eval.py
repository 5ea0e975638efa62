"""ATE/RPE against ground truth (evo's definitions) and Umeyama alignment."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from posegraph import read_g2o
from posegraph.cli.optimize import EXIT_BAD_INPUT
from posegraph.cli.main import main
from posegraph.errors import PoseGraphError
from posegraph.io.trajectory import Trajectory
from posegraph.report.eval import align, ate_errors, evaluate, evaluate_files, rpe_errors, statistics, umeyama
from posegraph.graph import PoseGraph
from posegraph.lie.homogeneous import from_homogeneous
from posegraph.synthetic.metrics import translation_rmse

from conftest import random_poses, random_rotation

REPO = Path(__file__).resolve().parents[2]


def _rot2(a: float) -> np.ndarray:
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


def _trajectory(kind: str, poses: np.ndarray, ids=None, source="t.g2o") -> PoseGraph:
    n = poses.shape[0]
    ids = list(range(n)) if ids is None else list(ids)
    shape = (3, 4) if kind == "SE3" else (4,)
    return PoseGraph(
        kind=kind, ids=torch.as_tensor(ids), poses=from_homogeneous(kind, poses),
        edges=torch.zeros(0, 2, dtype=torch.long), measurements=torch.zeros(0, *shape, dtype=torch.float64),
        information=torch.zeros(0, 6 if kind == "SE3" else 3, 6 if kind == "SE3" else 3, dtype=torch.float64),
        fixed=torch.zeros(n, dtype=torch.bool), source=source,
    )


def _similarity(kind: str, rng, scale: float) -> tuple:
    d = 3 if kind == "SE3" else 2
    rot = random_rotation(rng) if d == 3 else _rot2(rng.uniform(-3, 3))
    return scale, rot, rng.normal(size=d) * 5


def _apply(poses, s, rot, t):
    d = rot.shape[0]
    out = poses.copy()
    out[:, :d, :d] = rot @ poses[:, :d, :d]
    out[:, :d, d] = s * poses[:, :d, d] @ rot.T + t
    return out


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("with_scale", [False, True])
def test_umeyama_recovers_a_known_transform(dim, with_scale):
    rng = np.random.default_rng(dim + 10 * with_scale)
    src = rng.normal(size=(40, dim)) * 3
    s = 2.5 if with_scale else 1.0
    rot = random_rotation(rng) if dim == 3 else _rot2(0.7)
    t = rng.normal(size=dim)
    dst = s * src @ rot.T + t
    s_hat, r_hat, t_hat = umeyama(src, dst, with_scale=with_scale)
    assert s_hat == pytest.approx(s, rel=1e-12)
    np.testing.assert_allclose(r_hat, rot, atol=1e-12)
    np.testing.assert_allclose(t_hat, t, atol=1e-11)


def test_umeyama_never_returns_a_reflection():
    rng = np.random.default_rng(3)
    src = rng.normal(size=(30, 3))
    dst = src * np.array([1.0, 1.0, -1.0])  # a mirror image: the best rotation, not the mirror
    _, r, _ = umeyama(src, dst)
    assert np.linalg.det(r) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="expected two"):
        umeyama(src[:1], dst[:1])


@pytest.mark.parametrize("kind", ["SE2", "SE3"])
def test_ate_zero_for_identical_and_for_aligned_copies(kind):
    rng = np.random.default_rng(1)
    truth = random_poses(kind, 25, rng)
    for method in ("none", "se3", "sim3"):
        aligned, _ = align(truth, truth, method)
        assert statistics(ate_errors(aligned, truth))["rmse"] < 1e-12
    moved = _apply(truth, *_similarity(kind, rng, 1.0))
    assert statistics(ate_errors(align(moved, truth, "se3")[0], truth))["rmse"] < 1e-10
    assert statistics(ate_errors(align(moved, truth, "none")[0], truth))["rmse"] > 1.0
    scaled = _apply(truth, *_similarity(kind, rng, 0.4))
    aligned, transform = align(scaled, truth, "sim3")
    assert transform["scale"] == pytest.approx(1 / 0.4, rel=1e-10)
    assert statistics(ate_errors(aligned, truth))["rmse"] < 1e-10
    assert statistics(ate_errors(align(scaled, truth, "se3")[0], truth))["rmse"] > 0.1
    # RPE is invariant to a rigid alignment, and zero for a rigidly moved copy
    rpe_t, rpe_r = rpe_errors(moved, truth)
    assert rpe_t.max() < 1e-10 and rpe_r.max() < 1e-7


def test_rpe_known_values():
    """Truth: unit steps along x, no rotation. Estimate: the same positions, yaw 0.05 k at
    pose k, so Eₖ = (Rz(0.05), Rz(−0.05k)·eₓ − eₓ): angle 0.05, translation 2 sin(0.025 k)."""
    n = 10
    truth = np.tile(np.eye(4), (n, 1, 1))
    truth[:, 0, 3] = np.arange(n)
    est = truth.copy()
    for k in range(n):
        c, s = math.cos(0.05 * k), math.sin(0.05 * k)
        est[k, :2, :2] = [[c, -s], [s, c]]
    rpe_t, rpe_r = rpe_errors(est, truth)
    np.testing.assert_allclose(rpe_r, 0.05, atol=1e-12)
    np.testing.assert_allclose(rpe_t, 2 * np.sin(0.025 * np.arange(n - 1)), atol=1e-12)
    # translation-only error: steps of 1.1 m instead of 1 m
    longer = truth.copy()
    longer[:, 0, 3] *= 1.1
    rpe_t, rpe_r = rpe_errors(longer, truth)
    np.testing.assert_allclose(rpe_t, 0.1, atol=1e-12)
    np.testing.assert_allclose(rpe_r, 0.0, atol=1e-12)
    ate = statistics(ate_errors(longer, truth))
    assert ate["rmse"] == pytest.approx(0.1 * math.sqrt(np.mean(np.arange(n) ** 2)))
    assert ate["max"] == pytest.approx(0.9) and ate["min"] == 0.0


def test_rpe_se2():
    truth = np.tile(np.eye(3), (4, 1, 1))
    truth[:, 0, 2] = np.arange(4)
    est = truth.copy()
    est[2:, :2, :2] = _rot2(-0.3)  # a rotation error between poses 1 and 2 only
    _, rpe_r = rpe_errors(est, truth)
    np.testing.assert_allclose(rpe_r, [0.0, 0.3, 0.0], atol=1e-12)


def test_poses_matched_by_id_in_any_order():
    rng = np.random.default_rng(5)
    truth = random_poses("SE3", 12, rng)
    ids = np.arange(100, 112)
    perm = rng.permutation(12)
    est = _trajectory("SE3", truth[perm], ids=ids[perm], source="est.g2o")
    ref = _trajectory("SE3", truth, ids=ids, source="gt.g2o")
    r = evaluate(est, ref, "none")
    assert r["ate"]["rmse"] < 1e-12 and r["rpe_translation"]["max"] < 1e-12
    assert r["poses"] == {"matched": 12, "estimate_only": 0, "truth_only": 0}


def test_mismatched_ids_use_the_intersection_with_a_warning():
    rng = np.random.default_rng(6)
    truth = random_poses("SE2", 10, rng)
    est = _trajectory("SE2", truth[:8], ids=range(8), source="est.g2o")
    ref = _trajectory("SE2", truth[2:], ids=range(2, 10), source="gt.g2o")
    with pytest.warns(UserWarning, match=r"2 only in the estimate, 2 only in the ground truth\); evaluating the 6 common ids"):
        r = evaluate(est, ref, "se3")
    assert r["poses"] == {"matched": 6, "estimate_only": 2, "truth_only": 2}
    assert r["ate"]["rmse"] < 1e-12
    far = _trajectory("SE2", truth[:3], ids=[50, 51, 52], source="far.g2o")
    with pytest.raises(PoseGraphError, match="far.g2o: expected at least 2 vertex ids shared with the ground truth gt.g2o, received 0"):
        evaluate(far, ref)


def test_bad_pairs_of_files():
    rng = np.random.default_rng(7)
    se2 = _trajectory("SE2", random_poses("SE2", 4, rng), source="a.g2o")
    se3 = _trajectory("SE3", random_poses("SE3", 4, rng), source="b.g2o")
    with pytest.raises(PoseGraphError, match="a.g2o: expected ground truth of the estimate's kind SE2, received SE3"):
        evaluate(se2, se3)
    edge_only = read_g2o(REPO / "data" / "grid_se2_edges_only.g2o")
    with pytest.raises(PoseGraphError, match="estimate: expected VERTEX lines"):
        evaluate(edge_only, se2)
    with pytest.raises(ValueError, match="align: expected one of se3, sim3, none"):
        evaluate(se2, se2, "affine")


def test_bundled_data_against_ground_truth():
    est, gt = REPO / "data" / "sphere_se3.g2o", REPO / "data" / "sphere_se3.gt.g2o"
    assert evaluate_files(str(gt), str(gt))["ate"]["rmse"] < 1e-9
    none = evaluate_files(str(est), str(gt), align="none")
    # pose 0 is the true pose 0 in both files: no alignment = the existing synthetic metric
    assert none["ate"]["rmse"] == pytest.approx(translation_rmse(read_g2o(est), read_g2o(gt), align=False), rel=1e-12)
    se3 = evaluate_files(str(est), str(gt), align="se3")
    sim3 = evaluate_files(str(est), str(gt), align="sim3")
    assert sim3["ate"]["rmse"] <= se3["ate"]["rmse"] <= none["ate"]["rmse"]  # each minimizes over more
    assert se3["rpe_translation"]["rmse"] == pytest.approx(none["rpe_translation"]["rmse"], rel=1e-9)


def test_cli_eval_text_json_and_vertex_only_files(tmp_path, capsys):
    gt = REPO / "data" / "grid_se2.gt.g2o"
    traj = tmp_path / "traj.g2o"  # VERTEX lines only
    traj.write_text("".join(l for l in (REPO / "data" / "grid_se2.g2o").read_text().splitlines(True) if l.startswith("VERTEX")))
    assert main(["eval", str(traj), "--gt", str(gt), "--json"]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert out.count("\n") == 1 and err == ""
    assert data["alignment"]["method"] == "se3" and data["poses"]["matched"] == 500
    assert {"rmse", "mean", "median", "std", "min", "max"} <= set(data["ate"])
    assert 0 < data["ate"]["rmse"] < 2.0  # composed odometry drifts ~2 m before alignment
    assert main(["eval", str(traj), "--gt", str(gt), "--align", "sim3"]) == 0
    out, _ = capsys.readouterr()
    for word in ("ATE", "RPE translation", "RPE rotation", "sim3", "500 matched"):
        assert word in out
    assert main(["eval", str(traj), "--gt", str(tmp_path / "none.g2o")]) == EXIT_BAD_INPUT
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: {tmp_path / 'none.g2o'}: no such file\n"


@pytest.mark.parametrize("method", ["none", "se3", "sim3"])
def test_matches_evo_when_installed(method):
    """The same numbers as evo's APE/RPE (runs where evo is importable, e.g.
    ``pip install --no-deps --target DIR evo`` and ``PYTHONPATH=DIR``)."""
    pytest.importorskip("evo")
    import copy

    from evo.core import metrics
    from evo.core.trajectory import PosePath3D

    from posegraph.lie.homogeneous import to_homogeneous

    est_path, gt_path = REPO / "data" / "sphere_se3.g2o", REPO / "data" / "sphere_se3.gt.g2o"
    est = PosePath3D(poses_se3=list(to_homogeneous("SE3", read_g2o(est_path).poses)))
    ref = PosePath3D(poses_se3=list(to_homogeneous("SE3", read_g2o(gt_path).poses)))
    if method != "none":
        est = copy.deepcopy(est)
        est.align(ref, correct_scale=method == "sim3")
    mine = evaluate_files(str(est_path), str(gt_path), method)
    relations = [
        ("ate", metrics.APE(metrics.PoseRelation.translation_part)),
        ("rpe_translation", metrics.RPE(metrics.PoseRelation.translation_part, 1, metrics.Unit.frames)),
        ("rpe_rotation_rad", metrics.RPE(metrics.PoseRelation.rotation_angle_rad, 1, metrics.Unit.frames)),
    ]
    for key, metric in relations:
        metric.process_data((ref, est))
        for stat in ("rmse", "mean", "median", "std", "min", "max"):
            theirs = metric.get_statistic(metrics.StatisticsType(stat))
            assert mine[key][stat] == pytest.approx(theirs, rel=1e-9, abs=1e-12), (key, stat)


def test_cli_eval_warns_on_stderr_for_mismatched_ids(tmp_path, capsys):
    lines = [l for l in (REPO / "data" / "grid_se2.gt.g2o").read_text().splitlines(True) if l.startswith("VERTEX")]
    est = tmp_path / "est.g2o"
    est.write_text("".join(lines[:-5]))  # the last 5 poses are missing
    assert main(["eval", str(est), "--gt", str(REPO / "data" / "grid_se2.gt.g2o"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["poses"] == {"matched": 495, "estimate_only": 0, "truth_only": 5}
    assert err.startswith(f"warning: {est}: vertex ids differ") and err.count("\n") == 1


# -- TUM and KITTI trajectories ------------------------------------------------------------------


def _files(tmp_path, synthetic, t0: float = 0.0, dt: float = 1.0):
    """The same estimate and truth poses as g2o (write_g2o), TUM (timestamp t0 + dt·id) and
    KITTI files."""
    from posegraph.io import Trajectory, write_g2o, write_trajectory

    paths = {}
    for role, graph in (("est", synthetic.graph), ("gt", synthetic.truth)):
        write_g2o(graph, tmp_path / f"{role}.g2o")
        traj = Trajectory.from_graph(graph)
        write_trajectory(Trajectory(traj.poses, t0 + dt * traj.timestamps), tmp_path / f"{role}.tum")
        write_trajectory(traj, tmp_path / f"{role}.kitti")
        paths[role] = {fmt: str(tmp_path / f"{role}.{fmt}") for fmt in ("g2o", "tum", "kitti")}
    return paths["est"], paths["gt"]


@pytest.mark.parametrize("method", ["se3", "sim3", "none"])
def test_tum_and_kitti_give_the_same_ate_as_g2o(tmp_path, method):
    from posegraph.synthetic.graphs import sphere_se3

    est, gt = _files(tmp_path, sphere_se3(num_rings=4, poses_per_ring=15, seed=2), t0=1305031102.175, dt=0.1)
    ref = evaluate_files(est["g2o"], gt["g2o"], method)
    assert ref["matched_by"] == "id" and ref["poses"]["matched"] == 60
    for e, g in (("tum", "tum"), ("kitti", "kitti"), ("kitti", "g2o"), ("g2o", "kitti")):
        res = evaluate_files(est[e], gt[g], method)
        assert res["matched_by"] == ("timestamp" if "tum" in (e, g) else "id")
        assert res["poses"] == ref["poses"]
        for key in ("ate", "rpe_translation", "rpe_rotation_rad"):
            for stat, value in ref[key].items():
                assert res[key][stat] == pytest.approx(value, rel=1e-10, abs=1e-13), (e, g, key, stat)


def test_g2o_estimate_against_tum_truth_uses_ids_as_timestamps(tmp_path):
    from posegraph.synthetic.graphs import grid_se2, sphere_se3

    est, gt = _files(tmp_path, sphere_se3(num_rings=3, poses_per_ring=10, seed=1))  # stamps = ids
    ref = evaluate_files(est["g2o"], gt["g2o"])
    mixed = evaluate_files(est["g2o"], gt["tum"])
    assert mixed["matched_by"] == "timestamp" and mixed["poses"]["matched"] == 30
    assert mixed["ate"]["rmse"] == pytest.approx(ref["ate"]["rmse"], rel=1e-12)
    # an SE2 graph against a TUM file: lifted to the plane z = 0, the same numbers as in 2D
    (tmp_path / "se2").mkdir()
    est2, gt2 = _files(tmp_path / "se2", grid_se2(num_poses=60, seed=3))
    planar = evaluate_files(est2["g2o"], gt2["g2o"])
    lifted = evaluate_files(est2["g2o"], gt2["tum"])
    assert planar["kind"] == "SE2" and lifted["kind"] == "SE3"
    for key in ("ate", "rpe_translation", "rpe_rotation_rad"):
        assert lifted[key]["rmse"] == pytest.approx(planar[key]["rmse"], rel=1e-9), key


def _timed(poses: np.ndarray, stamps: np.ndarray, source: str):
    from posegraph.io import Trajectory

    return Trajectory(poses=poses[:, :3, :], timestamps=stamps, source=source)


def test_association_with_jitter_and_missing_stamps():
    rng = np.random.default_rng(5)
    n = 80
    truth = random_poses("SE3", n, rng)
    t_truth = 100.0 + 0.05 * np.arange(n)
    noisy = truth.copy()
    noisy[:, :3, 3] += rng.normal(scale=0.05, size=(n, 3))
    keep = np.flatnonzero(np.arange(n) % 7 != 3)  # every 7th estimate pose is missing …
    t_est = t_truth[keep] + rng.uniform(-0.004, 0.004, keep.size)  # … the rest jittered by ≤ 4 ms
    t_est[5] += 0.02  # one stamp beyond the tolerance
    est = _timed(noisy[keep], t_est, "est.tum")
    with pytest.warns(UserWarning, match=r"est\.tum: timestamps differ by more than 0\.01 s .* evaluating the"):
        res = evaluate(est, _timed(truth, t_truth, "gt.tum"))
    matched = np.delete(keep, 5)
    assert res["poses"] == {"matched": matched.size, "estimate_only": 1, "truth_only": n - matched.size}
    aligned, _ = align(np.delete(noisy[keep], 5, axis=0), truth[matched], "se3")
    assert res["ate"]["rmse"] == pytest.approx(statistics(ate_errors(aligned, truth[matched]))["rmse"], rel=1e-12)
    # a tighter tolerance drops the stamps jittered by more than it
    with pytest.warns(UserWarning, match="more than 0.002 s"):
        tight = evaluate(est, _timed(truth, t_truth, "gt.tum"), max_diff=0.002)
    assert tight["poses"]["matched"] == int((np.abs(t_est - t_truth[keep]) <= 0.002).sum())


def test_associate_is_one_to_one_nearest_and_order_free():
    from posegraph.report.eval import associate

    ie, ir = associate(np.array([1.0, 1.004, 2.0, 5.0]), np.array([0.0, 1.001, 2.009, 3.0, 4.0, 6.0]))
    # 1.0 and 1.004 both pick 1.001: only the nearer (1.0) keeps it; 5.0 has no partner
    assert ie.tolist() == [0, 2] and ir.tolist() == [1, 2]
    ie, ir = associate(np.array([1.005]), np.array([1.0, 1.01]))  # a tie: the earlier stamp
    assert ie.tolist() == [0] and ir.tolist() == [0]
    ie, ir = associate(np.array([3.0, 1.0, 2.0]), np.array([2.0, 3.0, 1.0, 4.0, 5.0]))  # unsorted (g2o ids)
    assert ie.tolist() == [1, 2, 0] and ir.tolist() == [2, 0, 1]
    ie, ir = associate(np.array([1.0, 2.0, 3.0]), np.array([2.0]))  # the truth is shorter: it leads
    assert ie.tolist() == [1] and ir.tolist() == [0]


def test_too_few_timestamps_in_common_is_an_error():
    rng = np.random.default_rng(0)
    poses = random_poses("SE3", 5, rng)
    with pytest.raises(PoseGraphError, match=r"est\.tum: expected at least 2 poses matched by timestamp .* received 1"):
        evaluate(_timed(poses, np.arange(5.0), "est.tum"), _timed(poses, np.arange(5.0) + 4.0, "gt.tum"))


def test_association_matches_evo_when_installed():
    """Pairs as evo's ``sync.associate_trajectories`` where no stamp is claimed twice."""
    pytest.importorskip("evo")
    from evo.core import sync
    from evo.core.trajectory import PoseTrajectory3D

    from posegraph.report.eval import associate

    rng = np.random.default_rng(2)
    truth = random_poses("SE3", 50, rng)
    t_truth = 0.1 * np.arange(50)
    t_est = np.delete(t_truth, [3, 17]) + rng.uniform(-0.008, 0.008, 48)
    est_poses = np.delete(truth, [3, 17], axis=0)
    ref, est = sync.associate_trajectories(PoseTrajectory3D(poses_se3=list(truth), timestamps=t_truth),
                                           PoseTrajectory3D(poses_se3=list(est_poses), timestamps=t_est))
    ie, ir = associate(t_est, t_truth)
    np.testing.assert_array_equal(est.timestamps, t_est[ie])
    np.testing.assert_array_equal(ref.timestamps, t_truth[ir])


def _corrupt(graph: PoseGraph, how: str) -> PoseGraph:
    poses = graph.poses.clone()
    if how == "nan":
        poses[2, 0, 3] = float("nan")
    elif how == "inf":
        poses[2, 1, 3] = float("inf")
    elif how == "zero-rotation":
        poses[2, :, :3] = 0.0
    elif how == "2I":
        poses[2, :, :3] *= 2.0
    elif how == "reflection":
        poses[2, :, 2] *= -1.0
    return graph.with_poses(poses)


@pytest.mark.parametrize(
    "how,words",
    [("nan", "vertex 2 has a non-finite pose"), ("inf", "vertex 2 has a non-finite pose"),
     ("zero-rotation", r"vertex 2: expected a rotation matrix \(det R > 0\), received one with det R = 0"),
     ("reflection", r"vertex 2: expected a rotation matrix \(det R > 0\), received one with det R = -1")],
)
@pytest.mark.parametrize("side", ["estimate", "ground truth"])
def test_bad_pose_values_are_pose_graph_errors(how, words, side):
    """Never a raw NumPy error (SVD did not converge, singular matrix): the file and vertex."""
    rng = np.random.default_rng(3)
    good = _trajectory("SE3", random_poses("SE3", 5, rng), source="good.g2o")
    bad = _corrupt(good, how)
    bad.source = "bad.g2o"
    est, ref = (bad, good) if side == "estimate" else (good, bad)
    with pytest.raises(PoseGraphError, match=f"bad.g2o: {side}: {words}"):
        evaluate(est, ref, "se3")


def test_undefined_alignment_and_unknown_method_are_pose_graph_errors():
    rng = np.random.default_rng(4)
    poses = random_poses("SE2", 4, rng)
    poses[:, :2, 2] = 1.0  # every position the same: no Sim(3) scale
    same = _trajectory("SE2", poses, source="same.g2o")
    with pytest.raises(PoseGraphError, match="same.g2o: cannot align .* coincide"):
        evaluate(same, same, "sim3")
    with pytest.raises(PoseGraphError, match="same.g2o: align: expected one of se3, sim3, none, received 3"):
        evaluate(same, same, 3)


@pytest.mark.parametrize("side", ["estimate", "ground truth"])
def test_scaled_rotation_is_made_a_rotation_with_one_warning(side):
    """The rotation rule (posegraph.lie.check_rotations): 2·R evaluates as R, with a warning
    naming the input and the vertex; a trajectory's pose likewise."""
    rng = np.random.default_rng(3)
    good = _trajectory("SE3", random_poses("SE3", 5, rng), source="good.g2o")
    truth = _trajectory("SE3", random_poses("SE3", 5, rng), source="truth.g2o")
    expected = evaluate(good, truth, "se3")
    bad = _corrupt(good, "2I")
    bad.source = "bad.g2o"
    est, ref = (bad, truth) if side == "estimate" else (truth, bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate(est, ref, "se3")
    assert len(caught) == 1 and caught[0].filename == __file__
    assert f"bad.g2o: {side}: vertex 2: max(|RᵀR − I|, |det R − 1|) = 7" in str(caught[0].message)
    base = expected if side == "estimate" else evaluate(truth, good, "se3")
    for key in ("ate", "rpe_translation", "rpe_rotation_rad"):
        for stat, value in base[key].items():
            assert result[key][stat] == pytest.approx(value, rel=1e-12, abs=1e-12), (key, stat)
    traj = Trajectory.from_graph(bad)  # (N, 3, 4) with pose 2 at 2·R
    with pytest.warns(UserWarning, match=rf"{side}: pose 2: .* = 7, beyond the precision 1e-06 of float64"):
        again = evaluate(traj, Trajectory.from_graph(truth), "se3") if side == "estimate" else \
            evaluate(Trajectory.from_graph(truth), traj, "se3")
    assert again["ate"]["rmse"] == pytest.approx(base["ate"]["rmse"], rel=1e-12)



@pytest.mark.parametrize("align", ["se3", "sim3", "none"])
def test_positions_too_large_to_compare_are_refused(tmp_path, capsys, align):
    """Positions near 1e300 are finite, but their errors overflow: it printed NumPy's overflow
    warnings and ATE inf (null in --json; with sim3 a scale of 0 and a finite ATE), exit 0.
    Now one line naming the file, exit 2."""
    from posegraph.cli.main import main

    est, gt = tmp_path / "huge.tum", tmp_path / "gt.tum"
    est.write_text("".join(f"{k / 10} {k}e300 0 0 0 0 0 1\n" for k in range(10)))
    gt.write_text("".join(f"{k / 10} {k} 0 0 0 0 0 1\n" for k in range(10)))
    assert main(["eval", str(est), "--gt", str(gt), "--align", align, "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"error: {est}: positions too large to compare") and captured.err.count("\n") == 1, captured.err


def test_sim3_onto_coinciding_ground_truth_is_refused(tmp_path, capsys):
    """Every ground-truth position the same: Umeyama's scale is 0, the estimate collapses onto
    that point and the ATE was reported as 0 ("perfect"). Refused, as coinciding estimate
    positions already were."""
    from posegraph.cli.main import main

    est, gt = tmp_path / "est.tum", tmp_path / "gt.tum"
    est.write_text("".join(f"{k / 10} {k} {k % 3} 0 0 0 0 1\n" for k in range(10)))
    gt.write_text("".join(f"{k / 10} 1 2 3 0 0 0 1\n" for k in range(10)))
    assert main(["eval", str(est), "--gt", str(gt), "--align", "sim3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {est}: cannot align") and "destination points coincide" in err, err
    assert main(["eval", str(est), "--gt", str(gt), "--align", "se3"]) == 0  # a rigid alignment is defined


def test_umeyama_refuses_non_finite_points():
    """NaN coordinates gave NumPy's 'SVD did not converge' (LinAlgError)."""
    from posegraph.report.eval import umeyama

    good = np.random.default_rng(0).random((5, 3))
    bad = good.copy()
    bad[2, 1] = np.nan
    for src, dst in ((bad, good), (good, bad)):
        with pytest.raises(ValueError, match="umeyama: expected finite points"):
            umeyama(src, dst)
