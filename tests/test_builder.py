"""PoseGraphBuilder (posegraph.builder): every input check names the variable, what was
expected and what was received; built problems optimize, write back into the user's own
variables, and batch exactly like separate builds."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import theseus as th
import torch

from posegraph import (
    PoseGraph,
    PoseGraphBuilder,
    PoseGraphError,
    SolverOptions,
    build_problem,
    optimize,
)
from posegraph.builder import BuilderError

from conftest import homogeneous_to_theseus, make_synthetic, random_perturbation

F64 = torch.float64


def se3(name: str, batch: int = 1, seed: int = 0, dtype=F64) -> th.SE3:
    g = torch.Generator().manual_seed(seed)
    return th.SE3(tensor=th.SE3.rand(batch, generator=g, dtype=dtype).tensor, name=name)


def se2(name: str, batch: int = 1, seed: int = 0) -> th.SE2:
    g = torch.Generator().manual_seed(seed)
    return th.SE2(tensor=th.SE2.rand(batch, generator=g, dtype=F64).tensor, name=name)


def two_pose_builder(**kwargs):
    b = PoseGraphBuilder(**kwargs)
    x0, x1 = se3("x0", seed=1), se3("x1", seed=2)
    b.add_pose(x0, fixed=True)
    b.add_pose(x1)
    return b, x0, x1


def raises_builder_error(*words: str):
    """pytest.raises for BuilderError whose message contains every word (literally)."""
    return pytest.raises(BuilderError, match="(?s)" + "".join(f"(?=.*{re.escape(w)})" for w in words))


# -- classes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,received",
    [
        (lambda: th.Point3(tensor=torch.zeros(1, 3, dtype=F64), name="p"), "Point3"),
        (lambda: th.Vector(tensor=torch.zeros(1, 6, dtype=F64), name="p"), "Vector"),
        (lambda: th.Variable(torch.zeros(1, 3, 4, dtype=F64), name="p"), "Variable"),
        (lambda: th.SO3(name="p", dtype=F64), "SO3"),
    ],
    ids=["Point3", "Vector", "Variable", "SO3"],
)
def test_add_pose_rejects_other_classes(make, received):
    b = PoseGraphBuilder()
    with raises_builder_error("'p'", "th.SE3 or th.SE2", received) as exc:
        b.add_pose(make())
    assert isinstance(exc.value, TypeError) and isinstance(exc.value, ValueError)
    assert isinstance(exc.value, PoseGraphError)


def test_add_pose_rejects_plain_tensor():
    with raises_builder_error("th.SE3 or th.SE2", "Tensor"):
        PoseGraphBuilder().add_pose(torch.zeros(1, 3, 4, dtype=F64))


def test_mixing_se2_and_se3_poses():
    b = PoseGraphBuilder()
    b.add_pose(se3("a"))
    with raises_builder_error("'b'", "expected th.SE3", "received th.SE2"):
        b.add_pose(se2("b"))
    b = PoseGraphBuilder()
    b.add_pose(se2("a"))
    with raises_builder_error("'b'", "expected th.SE2", "received th.SE3"):
        b.add_pose(se3("b"))


def test_measurement_of_the_other_kind():
    b, x0, x1 = two_pose_builder()
    with raises_builder_error("measurement", "th.SE3", "SE2"):
        b.add_between(x0, x1, measurement=se2("z"))
    with raises_builder_error("measurement", "th.SE3", "Vector"):
        b.add_between(x0, x1, measurement=th.Vector(tensor=torch.zeros(1, 12, dtype=F64)))


# -- shapes --------------------------------------------------------------------------------------


def test_pose_tensor_shape_and_values():
    x = se3("bad")
    x.tensor = torch.zeros(1, 3, 3, dtype=F64)  # bypasses Theseus' own checks
    with raises_builder_error("'bad'", "(batch, 3, 4)", "received (1, 3, 3)"):
        PoseGraphBuilder().add_pose(x)
    y = se3("nan")
    y.tensor = y.tensor.clone()
    y.tensor[0, 0, 3] = float("nan")
    with raises_builder_error("'nan'", "non-finite"):
        PoseGraphBuilder().add_pose(y)


def test_measurement_tensor_shapes():
    b, x0, x1 = two_pose_builder()
    with raises_builder_error("edge 'e'", "measurement", "(batch, 3, 4)", "received (1, 4, 4)"):
        b.add_between(x0, x1, measurement=torch.eye(4, dtype=F64)[None], name="e")
    with raises_builder_error("measurement", "received (2, 2, 3, 4)"):
        b.add_between(x0, x1, measurement=torch.zeros(2, 2, 3, 4, dtype=F64))
    # an unbatched (3, 4) tensor is accepted as batch 1
    b.add_between(x0, x1, measurement=se3("z").tensor[0])


@pytest.mark.parametrize(
    "info,words",
    [
        (torch.eye(5, dtype=F64), ["information", "(6, 6) or (batch, 6, 6)", "received (5, 5)"]),
        (torch.eye(6, dtype=F64)[None, None], ["information", "received (1, 1, 6, 6)"]),
        (torch.diag(torch.tensor([1.0, 1, 1, 1, 1, -1], dtype=F64)), ["information", "positive semidefinite", "-1"]),
        (torch.eye(6, dtype=F64) + torch.triu(torch.ones(6, 6, dtype=F64), 1), ["information", "symmetric"]),
        (torch.full((6, 6), float("inf"), dtype=F64), ["information", "non-finite"]),
        (torch.eye(6, dtype=F64).index_put((torch.tensor(2), torch.tensor(2)), torch.tensor(float("nan"), dtype=F64)),
         ["information", "non-finite"]),
        (torch.eye(6, dtype=F64) * 1e308, ["information", "(row 0, column 0) is 1e+308", "≤ 1e+150 in float64"]),
        (torch.eye(6) * 1e20, ["information", "(row 0, column 0) is 1e+20", "≤ 1e+15 in float32"]),
    ],
    ids=["shape", "ndim", "not-psd", "asymmetric", "inf", "nan", "huge", "huge-float32"],
)
def test_information_checks(info, words):
    b, x0, x1 = two_pose_builder()
    with raises_builder_error("edge 'odo'", *words):
        b.add_between(x0, x1, measurement=se3("z"), information=info, name="odo")


def test_information_as_variable_and_psd_singular_accepted():
    b, x0, x1 = two_pose_builder()
    info = torch.diag(torch.tensor([1.0, 1, 1, 0, 0, 0], dtype=F64))
    b.add_between(x0, x1, measurement=se3("z"), information=th.Variable(info[None]))


# -- batch sizes ---------------------------------------------------------------------------------


def test_batch_size_mismatch():
    b = PoseGraphBuilder()
    b.add_pose(se3("a", batch=2))
    b.add_pose(se3("one", batch=1))  # batch 1 broadcasts
    with raises_builder_error("'c'", "batch size 2", "received 3"):
        b.add_pose(se3("c", batch=3))
    with raises_builder_error("measurement", "batch size 2", "received 3"):
        b.add_between("a", "one", measurement=se3("z", batch=3))
    with raises_builder_error("information", "batch size 2", "received 4"):
        b.add_between("a", "one", measurement=se3("z", batch=2), information=torch.eye(6, dtype=F64).expand(4, 6, 6))
    b.add_between("a", "one", measurement=se3("z", batch=2), information=torch.eye(6, dtype=F64).expand(2, 6, 6))
    problem = b.build()
    assert problem.pose_tensor().shape == (2, 2, 3, 4)


# -- dtype and device ----------------------------------------------------------------------------


def test_dtype_must_match():
    b = PoseGraphBuilder()
    b.add_pose(se3("a"))
    with raises_builder_error("'b'", "expected dtype torch.float64", "received torch.float32"):
        b.add_pose(se3("b", dtype=torch.float32))
    b.add_pose(se3("c"))
    with raises_builder_error("measurement", "torch.float64", "torch.float32"):
        b.add_between("a", "c", measurement=se3("z", dtype=torch.float32))
    with raises_builder_error("information", "torch.float64", "torch.float32"):
        b.add_between("a", "c", measurement=se3("z"), information=torch.eye(6, dtype=torch.float32))
    fixed = PoseGraphBuilder(dtype=torch.float32)
    with raises_builder_error("'a'", "expected dtype torch.float32", "received torch.float64"):
        fixed.add_pose(se3("a"))


def test_device_must_match():
    b = PoseGraphBuilder(device="meta")
    with raises_builder_error("'a'", "expected device meta", "received cpu"):
        b.add_pose(se3("a"))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_mismatch_cpu_cuda():
    b = PoseGraphBuilder()
    b.add_pose(se3("a"))
    x = th.SE3(tensor=se3("b").tensor.cuda(), name="b")
    with raises_builder_error("'b'", "expected device cpu", "received cuda"):
        b.add_pose(x)


# -- names and endpoints ---------------------------------------------------------------------------


def test_unique_names():
    b, x0, x1 = two_pose_builder()
    with raises_builder_error("'x1'", "already used"):
        b.add_pose(se3("x1"))
    b.add_between(x0, x1, measurement=se3("z"), name="odo")
    with raises_builder_error("'odo'", "already used"):
        b.add_between(x0, x1, measurement=se3("z"), name="odo")
    with raises_builder_error("'x0'", "already used"):
        b.add_between(x0, x1, measurement=se3("z"), name="x0")
    with raises_builder_error("'odo'", "already used"):
        b.add_pose(se3("odo"))


def test_edges_only_between_known_poses():
    b, x0, x1 = two_pose_builder()
    stranger = se3("stranger")
    with raises_builder_error("'stranger'", "not a pose added"):
        b.add_between(x0, stranger, measurement=se3("z"))
    impostor = se3("x1")  # same name, different object
    with raises_builder_error("'x1'", "not a pose added"):
        b.add_between(x0, impostor, measurement=se3("z"))
    with raises_builder_error("'nope'", "not a pose added"):
        b.add_between("x0", "nope", measurement=se3("z"))
    with raises_builder_error("pose index in [0, 2)", "received 5"):
        b.add_between(0, 5, measurement=se3("z"))
    # by object, name and index all work
    assert b.add_between(x0, "x1", measurement=se3("z")) == 0
    assert b.add_between(1, 0, measurement=se3("z")) == 1


@pytest.mark.parametrize("ref", ["object", "name", "index"])
def test_self_loop(ref):
    b, x0, x1 = two_pose_builder()
    r = {"object": x1, "name": "x1", "index": 1}[ref]
    with raises_builder_error("self-loop", "'x1'"):
        b.add_between(r, x1, measurement=se3("z"))


def test_build_needs_poses_and_edges():
    with raises_builder_error("at least one pose"):
        PoseGraphBuilder().build()
    b, _, _ = two_pose_builder()
    with raises_builder_error("at least one edge"):
        b.build()


def test_add_cost_checks():
    b, x0, x1 = two_pose_builder()
    with raises_builder_error("th.CostFunction", "str"):
        b.add_cost("not a cost")
    cost = th.Difference(x1, se3("target"), th.ScaleCostWeight(torch.ones(1, 1, dtype=F64)), name="prior")
    with raises_builder_error("'prior'", "'x1'", "packs"):
        b.add_cost(cost)
    v = th.Vector(tensor=torch.zeros(1, 2, dtype=torch.float32), name="v")  # float32
    own = th.Difference(v, th.Vector(tensor=torch.ones(1, 2, dtype=torch.float32), name="t"), th.ScaleCostWeight(torch.ones(1, 1, dtype=torch.float32)), name="own")
    with raises_builder_error("'own'", "'v'", "torch.float64", "torch.float32"):
        b.add_cost(own)


# -- building and solving ----------------------------------------------------------------------------


def _chain_builder(s, init_noise_seed: int = 3, batch_meas=None, kind_cls=th.SE3):
    """Builder over a synthetic graph: user variables at perturbed truth, first pose fixed."""
    rng = np.random.default_rng(init_noise_seed)
    init = s.truth @ random_perturbation(s.kind, len(s.ids), 0.2, rng)
    init[0] = s.truth[0]
    b = PoseGraphBuilder()
    poses = [
        kind_cls(tensor=homogeneous_to_theseus(s.kind, init[k : k + 1]), name=f"x{vid}")
        for k, vid in enumerate(s.ids)
    ]
    for k, p in enumerate(poses):
        b.add_pose(p, fixed=(k == 0))
    pos = {vid: k for k, vid in enumerate(s.ids)}
    for e, (a, c) in enumerate(s.edges):
        meas = homogeneous_to_theseus(s.kind, s.measurements[e : e + 1]) if batch_meas is None else batch_meas[:, e]
        b.add_between(poses[pos[a]], poses[pos[c]], measurement=meas, information=torch.as_tensor(s.information[e]))
    return b, poses, init


@pytest.mark.parametrize("kind", ["SE3", "SE2"])
def test_built_problem_optimizes_and_writes_back(kind):
    s = make_synthetic(kind=kind, n=6, loops=((0, 3), (5, 1)), seed=8, noise=0.02)
    cls = th.SE3 if kind == "SE3" else th.SE2
    b, poses, init = _chain_builder(s, kind_cls=cls)
    before = [p.tensor.clone() for p in poses]
    problem = b.build()
    assert problem.num_poses == 6 and problem.num_edges == 7 and problem.kind == kind
    assert problem.pose_variables == poses
    result = optimize(problem, SolverOptions(solver="lm"))
    assert result.converged and float(result.final_error) < 0.1 * float(result.initial_error)
    for k, p in enumerate(poses):
        assert p.tensor.shape == before[k].shape
        torch.testing.assert_close(p.tensor, problem.pose_tensor()[:, k], atol=0, rtol=0)
    assert torch.equal(poses[0].tensor, before[0])  # the fixed pose is kept
    assert not torch.equal(poses[1].tensor, before[1])
    # the same graph through the PoseGraph path reaches the same optimum
    graph = PoseGraph(
        kind=kind,
        ids=torch.tensor(s.ids),
        poses=homogeneous_to_theseus(kind, init),
        edges=torch.tensor([[s.ids.index(a), s.ids.index(c)] for a, c in s.edges]),
        measurements=homogeneous_to_theseus(kind, s.measurements),
        information=torch.as_tensor(s.information),
        fixed=torch.tensor([True] + [False] * 5),
    )
    other = optimize(build_problem(graph), SolverOptions(solver="lm"))
    assert float(other.final_error) == pytest.approx(float(result.final_error), rel=1e-9)


@pytest.mark.parametrize("solver", ["gn", "lm"])
def test_batched_build_equals_separate_builds(solver):
    s = make_synthetic(kind="SE3", n=6, loops=((0, 3), (5, 1)), seed=21, noise=0.0)
    rng = np.random.default_rng(5)
    e = len(s.edges)
    noisy = np.stack([s.measurements @ random_perturbation("SE3", e, 0.05, rng) for _ in range(3)])
    batch_meas = torch.stack([homogeneous_to_theseus("SE3", m) for m in noisy])  # (3, E, 3, 4)
    options = SolverOptions(solver=solver, max_iterations=50)

    b, poses, _ = _chain_builder(s, batch_meas=batch_meas)
    problem = b.build()
    assert problem.pose_tensor().shape == (3, 6, 3, 4)
    result = optimize(problem, options)
    assert result.final_error.shape == (3,)
    assert poses[1].tensor.shape == (3, 3, 4)  # written back with the batch
    for k in range(3):
        bk, poses_k, _ = _chain_builder(s, batch_meas=batch_meas[k : k + 1])
        pk = bk.build()
        rk = optimize(pk, options)
        torch.testing.assert_close(pk.pose_tensor()[0], problem.pose_tensor()[k], atol=1e-8, rtol=0)
        torch.testing.assert_close(rk.final_error[0], result.final_error[k], atol=1e-8, rtol=1e-8)
    # the three measurement sets differ, so do the solutions
    assert not torch.allclose(problem.pose_tensor()[0], problem.pose_tensor()[1], atol=1e-6)


def test_built_problem_has_no_graph_and_default_information():
    b, x0, x1 = two_pose_builder()
    b.add_between(x0, x1, measurement=se3("z", seed=5))
    problem = b.build()
    with pytest.raises(ValueError):
        problem.to_graph()
    result = optimize(problem, SolverOptions(solver="gn"))
    assert float(result.final_error) < 1e-16
    # x1 = x0 · z
    expected = (th.SE3(tensor=x0.tensor).compose(se3("z", seed=5))).tensor
    torch.testing.assert_close(x1.tensor, expected, atol=1e-10, rtol=0)


def test_build_problem_rejects_bad_graphs(write_file, se2_text):
    from posegraph import read_g2o

    g = read_g2o(write_file("a.g2o", se2_text))
    with pytest.raises(PoseGraphError, match="initialize"):
        build_problem(g.with_poses(None))
    with pytest.raises(PoseGraphError, match="poses: expected shape"):
        build_problem(g.with_poses(g.poses[:2]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        p = build_problem(g, dtype=torch.float32)
    assert p.pose_tensor().dtype == torch.float32


@pytest.mark.parametrize(
    "value,dtype,words",
    [
        (float("nan"), None, ["is nan", "finite magnitude ≤ 1e+150 in float64"]),
        (1e200, None, ["is 1e+200", "≤ 1e+150 in float64"]),
        (1e40, torch.float32, ["is 1e+40", "≤ 1e+15 in float32"]),  # would become inf in float32
    ],
    ids=["nan", "huge", "float32-overflow"],
)
def test_build_problem_refuses_information_that_overflows(write_file, se2_text, value, dtype, words):
    """Information that is not finite, or that overflows in the solve's dtype, is an error
    naming the file, line and edge, before any eigen-decomposition or solve."""
    from posegraph import read_g2o

    path = write_file("a.g2o", se2_text)
    g = read_g2o(path)
    g.information[1, 1, 1] = value
    with pytest.raises(PoseGraphError) as exc:
        build_problem(g, dtype=dtype)
    assert str(exc.value).startswith(f"{path}:{g.edge_lines[1]}: EDGE_SE2 1 2: information entry (row 1, column 1) ")
    for w in words:
        assert w in str(exc.value), (w, str(exc.value))


def test_user_cost_over_own_variables_is_optimized():
    b, x0, x1 = two_pose_builder()
    b.add_between(x0, x1, measurement=se3("z", seed=4))
    v = th.Vector(tensor=torch.zeros(1, 2, dtype=F64), name="v")
    target = th.Vector(tensor=torch.tensor([[1.0, -2.0]], dtype=F64), name="t")
    b.add_cost(th.Difference(v, target, th.ScaleCostWeight(torch.ones(1, 1, dtype=F64)), name="own"))
    problem = b.build()
    assert len(problem.user_costs) == 1
    result = optimize(problem, SolverOptions(solver="gn"))
    assert float(result.final_error) < 1e-16
    torch.testing.assert_close(v.tensor, target.tensor, atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "make,received",
    [
        (lambda: th.Vector(tensor=torch.zeros(4, 3, dtype=F64), name="p"), "Vector"),
        (lambda: th.Variable(torch.zeros(4, 3, dtype=F64), name="p"), "Variable"),
        (lambda: se3("p"), "SE3"),
    ],
    ids=["Vector", "Variable", "SE3"],
)
def test_point_class_checks(make, received):
    """Where a th.Point3 is expected, a th.Vector/th.Variable is refused (its first dimension
    would be read as the batch size)."""
    if not hasattr(PoseGraphBuilder, "add_point"):
        pytest.skip("PoseGraphBuilder.add_point not implemented yet")
    b, _, _ = two_pose_builder()
    with raises_builder_error("'p'", "th.Point3", received):
        b.add_point(make())


def test_point_class_check_message():
    from posegraph.builder import _check_class

    v = th.Vector(tensor=torch.zeros(4, 3, dtype=F64), name="landmarks")
    with raises_builder_error("point 'landmarks'", "expected th.Point3", "received theseus.Vector", "batch size"):
        _check_class(v, (th.Point3,), "point")


def test_disconnected_builder_graph_warns_and_keeps_isolated_pose():
    b, x0, x1 = two_pose_builder()
    lone = se3("lone", seed=9)
    before = lone.tensor.clone()
    b.add_pose(lone)
    b.add_between(x0, x1, measurement=se3("z"))
    with pytest.warns(UserWarning, match=r"2 connected components.*\(2\)"):
        problem = b.build()
    optimize(problem, SolverOptions(solver="gn"))
    assert torch.equal(lone.tensor, before)


# -- points ------------------------------------------------------------------------------------------


def point(name: str, xyz, batch: int = 1) -> th.Point3:
    return th.Point3(tensor=torch.tensor([xyz], dtype=F64).expand(batch, 3).clone(), name=name)


def _observed(x: th.SE3, p: torch.Tensor) -> torch.Tensor:
    """The point in the pose's frame, Rᵀ(p − t)."""
    m = x.tensor[0]
    return m[:, :3].T @ (p - m[:, 3])


def test_points_and_poses_optimized_together():
    b, x0, x1 = two_pose_builder()
    b.add_between(x0, x1, measurement=x0.between(x1), information=torch.eye(6, dtype=F64))
    truth = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0]], dtype=F64)
    pts = [point("p0", [0.0, 0.0, 0.0]), point("p1", [5.0, 5.0, 5.0])]
    for p in pts:
        b.add_point(p)
    for k, p in enumerate(pts):
        b.add_point_observation(x0, p, measurement=_observed(x0, truth[k]))
        b.add_point_observation("x1", p.name, measurement=_observed(x1, truth[k]), information=4 * torch.eye(3, dtype=F64))
    x1_before = x1.tensor.clone()
    problem = b.build()
    assert problem.points.tensor.shape == (1, 2, 3)
    result = optimize(problem, SolverOptions(solver="lm"))
    assert float(result.final_error) < 1e-16
    for k, p in enumerate(pts):  # written back into the user's own variables
        torch.testing.assert_close(p.tensor[0], truth[k], atol=1e-8, rtol=0)
    torch.testing.assert_close(x1.tensor, x1_before, atol=1e-8, rtol=0)


def test_point_observation_with_sensor_offset():
    b, x0, x1 = two_pose_builder()
    b.add_between(x0, x1, measurement=x0.between(x1))
    p = point("p", [0.0, 0.0, 0.0])
    b.add_point(p)
    offset = se3("offset", seed=5)
    truth = torch.tensor([0.3, -0.2, 1.5], dtype=F64)
    sensor = x0.compose(offset)
    b.add_point_observation(x0, p, measurement=_observed(sensor, truth), offset=offset)
    optimize(b.build(), SolverOptions(solver="gn"))
    torch.testing.assert_close(p.tensor[0], truth, atol=1e-10, rtol=0)


def test_point_observation_checks():
    b, x0, x1 = two_pose_builder()
    p = point("p", [0.0, 0.0, 0.0])
    b.add_point(p)
    with raises_builder_error("observation #0", "not a point added"):
        b.add_point_observation(x0, point("q", [0.0, 0.0, 0.0]), torch.zeros(3, dtype=F64))
    with raises_builder_error("observation #0 measurement", "shape (batch, 3)", "(1, 4)"):
        b.add_point_observation(x0, p, torch.zeros(4, dtype=F64))
    with raises_builder_error("observation #0 information", "(3, 3)", "(6, 6)"):
        b.add_point_observation(x0, p, torch.zeros(3, dtype=F64), information=torch.eye(6, dtype=F64))
    with raises_builder_error("observation #0 offset", "th.SE3", "SE2"):
        b.add_point_observation(x0, p, torch.zeros(3, dtype=F64), offset=se2("o"))
    with raises_builder_error("observation #0 measurement", "dtype torch.float64", "torch.float32"):
        b.add_point_observation(x0, p, torch.zeros(3, dtype=torch.float32))
    b.add_pose(se3("xb", batch=2))
    with raises_builder_error("point 'p2'", "expected batch size 2", "received 3"):
        b.add_point(th.Point3(tensor=torch.zeros(3, 3, dtype=F64), name="p2"))


def test_point_observation_needs_se3_poses():
    b = PoseGraphBuilder()
    b.add_pose(se2("a"))
    b.add_point(point("p", [0.0, 0.0, 0.0]))
    with raises_builder_error("observed from th.SE3 poses", "th.SE2"):
        b.add_point_observation("a", "p", torch.zeros(3, dtype=F64))


def test_batched_points_equal_separate_builds():
    truths = torch.tensor([[[1.0, 2.0, 3.0]], [[0.0, -1.0, 4.0]]], dtype=F64)

    def build(batch_index=None):
        b, x0, x1 = two_pose_builder()
        b.add_between(x0, x1, measurement=x0.between(x1))
        p = point("p", [0.0, 0.0, 0.0])
        b.add_point(p)
        sel = truths if batch_index is None else truths[batch_index : batch_index + 1]
        z = torch.stack([_observed(x0, t[0]) for t in sel])
        b.add_point_observation(x0, p, measurement=z)
        return b.build()

    batched = build()
    optimize(batched, SolverOptions(solver="gn"))
    for k in range(2):
        single = build(k)
        optimize(single, SolverOptions(solver="gn"))
        torch.testing.assert_close(batched.points.tensor[k], single.points.tensor[0], atol=1e-12, rtol=0)
