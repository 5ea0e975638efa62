"""PoseGraphBuilder (posegraph.model.builder): every input check names the variable, what was
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
from posegraph.model.checks import BuilderError

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
    with raises_builder_error("pose 'c'", "th.SE3", "batch size 2", "shape (3, 3, 4)"):
        b.add_pose(se3("c", batch=3))
    with raises_builder_error("measurement", "th.SE3", "batch size 2", "shape (3, 3, 4)"):
        b.add_between("a", "one", measurement=se3("z", batch=3))
    with raises_builder_error("information", "batch size 2", "torch.Tensor", "shape (4, 6, 6)"):
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
    target_is_packed = th.Difference(se3("free"), x1, th.ScaleCostWeight(torch.ones(1, 1, dtype=F64)), name="aux")
    with raises_builder_error("'aux'", "pose 'x1'", "auxiliary", "optimizes"):
        b.add_cost(target_is_packed)
    v = th.Vector(tensor=torch.zeros(1, 2, dtype=torch.float32), name="v")  # float32
    own = th.Difference(v, th.Vector(tensor=torch.ones(1, 2, dtype=torch.float32), name="t"), th.ScaleCostWeight(torch.ones(1, 1, dtype=torch.float32)), name="own")
    with raises_builder_error("'own'", "'v'", "torch.float64", "torch.float32"):
        b.add_cost(own)


def test_add_cost_refuses_a_weight_of_another_dimension():
    """A weight whose dimension is not the cost's error dimension is refused at add_cost,
    naming the cost, the expected and the received dimension (it failed with torch's
    broadcasting error inside the solve); Theseus' broadcasting cases stay accepted: a diagonal
    of length 1 and a scale weigh any dimension."""
    b, x0, x1 = two_pose_builder()
    z = th.SE3(tensor=se3("z", seed=4).tensor, name="z")
    with raises_builder_error("cost 'wrong'", "th.DiagonalCostWeight", "length 6", "received length 3"):
        b.add_cost(th.Difference(x1, z, th.DiagonalCostWeight(torch.ones(1, 3, dtype=F64)), name="wrong"))

    class HalfWeight(th.CostWeight):
        """A custom weight that drops half of the error."""

        def is_zero(self):
            return torch.zeros(1, dtype=torch.bool)

        def weight_error(self, error):
            return error[:, : error.shape[1] // 2]

        def weight_jacobians_and_error(self, jacobians, error):
            return [j[:, : error.shape[1] // 2] for j in jacobians], self.weight_error(error)

        def _copy_impl(self, new_name=None):
            return HalfWeight(name=new_name)

    with raises_builder_error("cost 'half'", "HalfWeight", "dimension 6", "received dimension 3"):
        b.add_cost(th.Difference(x1, z, HalfWeight(), name="half"))
    b.add_cost(th.Difference(x1, z, th.DiagonalCostWeight(torch.ones(1, 1, dtype=F64)), name="one"))
    b.add_cost(th.Difference(x1, z, th.DiagonalCostWeight(torch.ones(1, 6, dtype=F64)), name="six"))
    b.add_cost(th.Difference(x1, z, th.ScaleCostWeight(torch.ones(1, 1, dtype=F64)), name="scale"))
    b.add_between(x0, x1, measurement=z)
    optimize(b.build(), SolverOptions(max_iterations=5))


def test_two_variables_of_one_name_in_user_costs_are_refused_naming_both_costs():
    """Two different variable objects named "w" (the weights of two user costs) are refused at
    build, naming both costs and the name (Theseus raised a bare ValueError); one object
    shared by both costs is accepted."""
    b, x0, x1 = two_pose_builder()
    z = se3("z", seed=4)
    b.add_between(x0, x1, measurement=z)
    w1 = th.Variable(torch.ones(1, 1, dtype=F64), name="w")
    b.add_cost(th.Difference(x1, z, th.ScaleCostWeight(w1), name="first"))
    b.add_cost(th.Difference(x0, z, th.ScaleCostWeight(th.Variable(torch.ones(1, 1, dtype=F64), name="w")), name="second"))
    with raises_builder_error("cost 'second'", "variable 'w'", "cost 'first'"):
        b.build()
    b, x0, x1 = two_pose_builder()
    b.add_between(x0, x1, measurement=z)
    b.add_cost(th.Difference(x1, z, th.ScaleCostWeight(w1), name="first"))
    b.add_cost(th.Difference(x0, z, th.ScaleCostWeight(w1), name="second"))
    optimize(b.build(), SolverOptions(max_iterations=5))


def test_empty_batches_are_refused_naming_the_argument():
    """Batch-0 tensors given to the builder or to build_problem are refused naming the
    argument ("expected batch size ≥ 1, received 0"), not torch's reduction error."""
    e = torch.eye(3, 4, dtype=F64).expand(0, 3, 4)
    b = PoseGraphBuilder()
    with raises_builder_error("pose 'x0'", "expected batch size ≥ 1, received 0"):
        b.add_pose(th.SE3(tensor=e.clone(), name="x0"))
    b, x0, x1 = two_pose_builder()
    with raises_builder_error("measurement", "expected batch size ≥ 1, received 0"):
        b.add_between(x0, x1, measurement=e)
    with raises_builder_error("information", "expected batch size ≥ 1, received 0"):
        b.add_between(x0, x1, measurement=torch.eye(3, 4, dtype=F64), information=torch.eye(6, dtype=F64).expand(0, 6, 6))
    graph = PoseGraph(
        kind="SE3", ids=torch.arange(2), poses=torch.eye(3, 4, dtype=F64).expand(0, 2, 3, 4),
        edges=torch.tensor([[0, 1]]), measurements=torch.eye(3, 4, dtype=F64).expand(1, 3, 4),
        information=torch.eye(6, dtype=F64).expand(1, 6, 6), fixed=torch.tensor([True, False]),
    )
    with raises_builder_error("poses", "expected batch size ≥ 1, received 0"):
        build_problem(graph)


def test_to_graph_refuses_a_batch_index_out_of_range_or_not_an_integer():
    """``to_graph(batch_index)`` takes integers in [-B, B) (as Python indexing); others are a
    PoseGraphError naming the valid range (not IndexError/TypeError from torch)."""
    graph = PoseGraph(
        kind="SE2", ids=torch.arange(2), poses=torch.tensor([[0.0, 0, 1, 0], [1, 0, 1, 0]], dtype=F64).expand(3, 2, 4),
        edges=torch.tensor([[0, 1]]), measurements=torch.tensor([[[1.0, 0, 1, 0]]], dtype=F64),
        information=torch.eye(3, dtype=F64).expand(1, 1, 3, 3), fixed=torch.tensor([True, False]),
    )
    problem = build_problem(graph)
    for bad in (3, 5, -4):
        with pytest.raises(PoseGraphError, match=rf"batch_index: expected an integer in \[-3, 3\).*received {bad}$"):
            problem.to_graph(batch_index=bad)
    for bad in (1.0, "1", True):
        with pytest.raises(PoseGraphError, match=r"batch_index: expected an integer in \[-3, 3\) or None, received"):
            problem.to_graph(batch_index=bad)
    assert problem.to_graph(batch_index=-1).poses.shape == (2, 4)
    assert problem.to_graph(batch_index=np.int64(2)).poses.shape == (2, 4)
    assert problem.to_graph().poses.shape == (3, 2, 4)


# -- building and solving ----------------------------------------------------------------------------


def _chain_builder(s, init_noise_seed: int = 3, batch_meas=None, kind_cls=th.SE3):
    """Builder over a synthetic graph: user variables at perturbed truth, first pose fixed."""
    rng = np.random.default_rng(init_noise_seed)
    init = s.truth @ random_perturbation(s.kind, len(s.ids), 0.2, rng)
    init[0] = s.truth[0]
    b = PoseGraphBuilder(batch_size=None if batch_meas is None else batch_meas.shape[0])
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
    from posegraph.model.checks import _check_class

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
    b2 = PoseGraphBuilder()
    b2.add_pose(se3("xb", batch=2))
    with raises_builder_error("point 'p2'", "expected batch size 2", "th.Point3", "shape (3, 3)"):
        b2.add_point(th.Point3(tensor=torch.zeros(3, 3, dtype=F64), name="p2"))


def test_point_observation_needs_se3_poses():
    b = PoseGraphBuilder()
    b.add_pose(se2("a"))
    b.add_point(point("p", [0.0, 0.0, 0.0]))
    with raises_builder_error("observed from th.SE3 poses", "th.SE2"):
        b.add_point_observation("a", "p", torch.zeros(3, dtype=F64))


def test_batched_points_equal_separate_builds():
    truths = torch.tensor([[[1.0, 2.0, 3.0]], [[0.0, -1.0, 4.0]]], dtype=F64)

    def build(batch_index=None):
        b, x0, x1 = two_pose_builder(batch_size=2 if batch_index is None else None)
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


# -- users' own costs over the builder's poses and points ------------------------------------------


def _diag_info(kind: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    d = 6 if kind == "SE3" else 3
    return torch.diag(0.5 + 4.0 * torch.rand(d, generator=g, dtype=F64))


def _user_cost_graph(kind: str, fix_first: bool):
    """Poses, edges and user costs of a small loop, the same for posegraph and stock Theseus:
    ``make(cls)`` returns fresh user variables and costs over them."""
    cls = th.SE3 if kind == "SE3" else th.SE2
    n = 6
    edges = [(k, k + 1) for k in range(n - 1)] + [(0, 3), (5, 1)]
    gen = torch.Generator().manual_seed(10)
    dof = 6 if kind == "SE3" else 3

    def near(x, scale):  # x · Exp(δ), δ ~ scale · N(0, I)
        return x.compose(cls.exp_map(scale * torch.randn(1, dof, generator=gen, dtype=F64)))

    truth = [cls.rand(1, generator=gen, dtype=F64) for _ in range(n)]
    init = [near(x, 0.2).tensor for x in truth]
    meas = [near(truth[i].between(truth[j]), 0.05) for i, j in edges]
    infos = [_diag_info(kind, 70 + e) for e in range(len(edges))]
    prior_z = near(truth[3], 0.05)
    between_z = near(truth[1].between(truth[4]), 0.05)
    own_z = near(truth[5].between(truth[2]), 0.05)

    def make():
        poses = [cls(tensor=t.clone(), name=f"x{k}") for k, t in enumerate(init)]
        own = cls(tensor=init[1].clone(), name="own")
        dof = poses[0].dof()
        w = th.DiagonalCostWeight(torch.sqrt(torch.diag(_diag_info(kind, 3)))[None])
        costs = [
            th.Difference(poses[3], cls(tensor=prior_z.tensor.clone(), name="z_prior"), w, name="prior3"),
            th.Between(poses[1], poses[4], cls(tensor=between_z.tensor.clone(), name="z_b14"),
                       th.ScaleCostWeight(torch.tensor([[2.0]], dtype=F64)), name="b14"),
            # a cost over a packed pose and the user's own variable, and one over that alone
            th.Between(poses[5], own, cls(tensor=own_z.tensor.clone(), name="z_own"),
                       th.ScaleCostWeight(torch.tensor([[1.5]], dtype=F64)), name="b5own"),
            th.Difference(own, cls(tensor=init[2].clone(), name="z_own_prior"),
                          th.ScaleCostWeight(torch.tensor([[0.7]], dtype=F64)), name="own_prior"),
        ]
        assert all(c.dim() == dof for c in costs)
        return poses, own, costs

    return cls, edges, meas, infos, make


def _stock_edges(obj, poses, edges, meas, infos, fix_first):
    """Edges in plain Theseus: th.Between with the (diagonal) information's square root; an
    edge from the fixed pose x0 is th.Difference(xⱼ, x0·Z), the same residual
    Log(Z⁻¹ x0⁻¹ xⱼ) with x0 a constant."""
    for e, (i, j) in enumerate(edges):
        w = th.DiagonalCostWeight(torch.sqrt(torch.diag(infos[e]))[None])
        if fix_first and i == 0:
            target = poses[0].compose(meas[e])
            target.name = f"t{e}"
            obj.add(th.Difference(poses[j], target, w, name=f"e{e}"))
        else:
            assert j != 0 or not fix_first
            obj.add(th.Between(poses[i], poses[j], meas[e].copy(new_name=f"m{e}"), w, name=f"e{e}"))


def _stock_solve(kind, fix_first, edges, meas, infos, make):
    """The same objective in plain Theseus, Gauss–Newton with the dense Cholesky solver."""
    poses, own, costs = make()
    obj = th.Objective(dtype=F64)
    _stock_edges(obj, poses, edges, meas, infos, fix_first)
    for c in costs:
        obj.add(c)
    obj.update()
    opt = th.GaussNewton(obj, th.CholeskyDenseSolver, max_iterations=10, abs_err_tolerance=0.0, rel_err_tolerance=0.0)
    opt.optimize()
    return poses, own


@pytest.mark.parametrize(
    "kind,fix_first,linear_solver",
    [("SE3", True, "auto"), ("SE3", False, "auto"), ("SE2", True, "auto"), ("SE2", False, "auto"), ("SE3", True, "dense")],
    ids=["SE3-fixed", "SE3-anchored-by-prior", "SE2-fixed", "SE2-anchored-by-prior", "SE3-fixed-dense"],
)
def test_user_costs_over_packed_poses_equal_stock_theseus(kind, fix_first, linear_solver):
    """th.Difference / th.Between over builder poses (alone, and with the user's own
    variable) are optimized jointly; the optimum is stock Theseus' on the same objective.
    Without a fixed pose, the prior anchors the graph (no automatic gauge), as in Theseus."""
    cls, edges, meas, infos, make = _user_cost_graph(kind, fix_first)
    poses, own, costs = make()
    b = PoseGraphBuilder()
    for k, p in enumerate(poses):
        b.add_pose(p, fixed=fix_first and k == 0)
    for e, (i, j) in enumerate(edges):
        b.add_between(poses[i], poses[j], measurement=meas[e], information=infos[e])
    for c in costs:
        b.add_cost(c)
    problem = b.build()
    assert sorted(problem.objective.optim_vars) == ["own", "poses"]
    opts = SolverOptions(solver="gn", max_iterations=10, rel_tolerance=0.0, abs_tolerance=0.0, linear_solver=linear_solver)
    result = optimize(problem, opts)
    assert result.status[0] in ("converged", "max-iterations")
    stock_poses, stock_own = _stock_solve(kind, fix_first, edges, meas, infos, make)
    for k in range(len(poses)):
        torch.testing.assert_close(poses[k].tensor, stock_poses[k].tensor, atol=1e-8, rtol=0)
    torch.testing.assert_close(own.tensor, stock_own.tensor, atol=1e-8, rtol=0)
    # the prior moved x3 (it is not ignored): without it the optimum differs
    b2 = PoseGraphBuilder()
    poses2, _, costs2 = make()
    for k, p in enumerate(poses2):
        b2.add_pose(p, fixed=k == 0)
    for e, (i, j) in enumerate(edges):
        b2.add_between(poses2[i], poses2[j], measurement=meas[e], information=infos[e])
    optimize(b2.build(), opts)
    assert not torch.allclose(poses2[3].tensor, poses[3].tensor, atol=1e-4)


def test_builtin_priors_equal_stock_theseus():
    """add_prior is th.Difference with the full information; add_position_prior's Jacobian is
    checked against Theseus' own (SE3.transform_from at the origin) through the optimum."""
    cls, edges, meas, infos, make = _user_cost_graph("SE3", True)
    info = torch.tensor([[4.0, 0.5, 0, 0, 0, 0], [0.5, 3.0, 0, 0, 0, 0], [0, 0, 2.0, 0, 0, 0.3],
                         [0, 0, 0, 1.0, 0, 0], [0, 0, 0, 0, 1.5, 0], [0, 0, 0.3, 0, 0, 2.5]], dtype=F64)
    z = cls.rand(1, generator=torch.Generator().manual_seed(3), dtype=F64)
    xyz = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    pos_info = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, 0.0], [0.0, 0.0, 5.0]], dtype=F64)

    poses, _, _ = make()
    b = PoseGraphBuilder()
    for k, p in enumerate(poses):
        b.add_pose(p, fixed=k == 0)
    for e, (i, j) in enumerate(edges):
        b.add_between(poses[i], poses[j], measurement=meas[e], information=infos[e])
    b.add_prior(poses[2], z, info)
    b.add_position_prior("x4", xyz, pos_info)
    opts = SolverOptions(solver="gn", max_iterations=10, rel_tolerance=0.0, abs_tolerance=0.0)
    optimize(b.build(), opts)

    class StockPosition(th.CostFunction):
        def __init__(self, pose, weight):
            super().__init__(weight, name="stock_position")
            self.pose = pose
            self.register_optim_vars(["pose"])

        def error(self):
            return self.pose.transform_from(th.Point3(tensor=torch.zeros(1, 3, dtype=F64))).tensor - xyz

        def jacobians(self):
            jac = []
            out = self.pose.transform_from(th.Point3(tensor=torch.zeros(1, 3, dtype=F64)), jacobians=jac)
            return [jac[0]], out.tensor - xyz

        def dim(self):
            return 3

        def _copy_impl(self, new_name=None):
            raise NotImplementedError

    sp, _, _ = make()
    obj = th.Objective(dtype=F64)
    _stock_edges(obj, sp, edges, meas, infos, True)
    chol = lambda m: torch.linalg.cholesky(m).T[None]  # W with WᵀW = Ω
    from posegraph.model.weights import FullInformationWeight

    obj.add(th.Difference(sp[2], z.copy(new_name="zp"), FullInformationWeight(chol(info)), name="p"))
    obj.add(StockPosition(sp[4], FullInformationWeight(chol(pos_info))))
    obj.update()
    th.GaussNewton(obj, th.CholeskyDenseSolver, max_iterations=10, abs_err_tolerance=0.0, rel_err_tolerance=0.0).optimize()
    for k in range(len(poses)):
        torch.testing.assert_close(poses[k].tensor, sp[k].tensor, atol=1e-8, rtol=0)


def test_cost_over_unobserved_point_optimizes_it():
    b, x0, x1 = two_pose_builder()
    b.add_between(x0, x1, measurement=x0.between(x1))
    seen, lone = point("seen", [1.0, 2.0, 3.0]), point("lone", [0.0, 0.0, 0.0])
    b.add_point(seen)
    b.add_point(lone)
    b.add_point_observation(x0, seen, measurement=_observed(x0, seen.tensor[0]))
    target = th.Point3(tensor=torch.tensor([[4.0, -1.0, 2.0]], dtype=F64), name="target")
    b.add_cost(th.Difference(lone, target, th.ScaleCostWeight(torch.ones(1, 1, dtype=F64)), name="lone_prior"))
    optimize(b.build(), SolverOptions(solver="gn"))
    torch.testing.assert_close(lone.tensor, target.tensor, atol=1e-10, rtol=0)


def test_objective_add_with_packed_variable_is_refused():
    b, x0, x1 = two_pose_builder()
    b.add_between(x0, x1, measurement=se3("z", seed=4))
    p = point("p", [0.0, 0.0, 0.0])
    b.add_point(p)
    problem = b.build()
    cost = th.Difference(x1, se3("target"), th.ScaleCostWeight(torch.ones(1, 1, dtype=F64)), name="late")
    with raises_builder_error("'late'", "pose 'x1'", "add_cost"):
        problem.objective.add(cost)
    assert "x1" not in problem.objective.optim_vars and "late" not in problem.objective.cost_functions
    with raises_builder_error("point 'p'", "add_cost"):
        problem.objective.add(th.Difference(p, point("t", [1.0, 1.0, 1.0]), th.ScaleCostWeight(1.0), name="pp"))
    # costs over other variables are still welcome
    v = th.Vector(tensor=torch.zeros(1, 2, dtype=F64), name="v")
    problem.objective.add(th.Difference(v, th.Vector(tensor=torch.ones(1, 2, dtype=F64), name="t"), th.ScaleCostWeight(torch.ones(1, 1, dtype=F64)), name="ok"))


# -- batch sizes: no silent batch explosion ----------------------------------------------------------


def test_point_of_n_rows_on_one_problem_is_refused():
    b, x0, x1 = two_pose_builder()
    with raises_builder_error("point 'p'", "th.Point3", "expected batch size 1", "shape (5, 3)",
                              "5 problems", "add_points(positions of shape (5, 3))"):
        b.add_point(th.Point3(tensor=torch.randn(5, 3, dtype=F64), name="p"))


def test_issue_reproducers_in_default_dtype_name_the_batch():
    """The reproducers as a user types them (torch.randn: float32 on a float64 graph): the
    batch size is named first."""
    b, x0, x1 = two_pose_builder()
    with raises_builder_error("point", "5 problems", "add_points"):
        b.add_point(th.Point3(tensor=torch.randn(5, 3)))
    p = point("p", [0.0, 0.0, 0.0])
    b.add_point(p)
    with raises_builder_error("observation #0 measurement", "5 problems"):
        b.add_point_observation(x1, p, measurement=torch.randn(5, 3))


def test_observation_of_n_rows_on_one_problem_is_refused():
    b, x0, x1 = two_pose_builder()
    p = point("p", [0.0, 0.0, 0.0])
    b.add_point(p)
    with raises_builder_error("observation #0 measurement", "torch.Tensor", "expected batch size 1", "shape (5, 3)", "5 problems"):
        b.add_point_observation(x1, p, measurement=torch.randn(5, 3, dtype=F64))


def test_batched_inputs_on_one_problem_are_refused():
    b, x0, x1 = two_pose_builder()
    with raises_builder_error("pose 'x2'", "th.SE3", "expected batch size 1", "shape (3, 3, 4)", "batch_size"):
        b.add_pose(se3("x2", batch=3))
    with raises_builder_error("edge #0 measurement", "expected batch size 1", "shape (4, 3, 4)"):
        b.add_between(x0, x1, measurement=se3("z", batch=4))
    with raises_builder_error("edge #0 information", "expected batch size 1", "shape (2, 6, 6)"):
        b.add_between(x0, x1, measurement=se3("z"), information=torch.eye(6, dtype=F64).expand(2, 6, 6))
    # declared: accepted
    d = PoseGraphBuilder(batch_size=4)
    d.add_pose(se3("a"), fixed=True)
    d.add_pose(se3("b"))
    d.add_between("a", "b", measurement=se3("z", batch=4))
    assert d.build().pose_tensor().shape == (4, 2, 3, 4)
    with raises_builder_error("batch_size", "positive integer"):
        PoseGraphBuilder(batch_size=0)


def test_add_points():
    b, x0, x1 = two_pose_builder()
    b.add_between(x0, x1, measurement=x0.between(x1))
    truth = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 2.0], [0.0, 1.0, 4.0]], dtype=F64)
    pts = b.add_points(np.zeros((3, 3)))
    assert [p.name for p in pts] == ["point0", "point1", "point2"] and pts[0].tensor.shape == (1, 3)
    for k, p in enumerate(pts):
        b.add_point_observation(x0, p, measurement=_observed(x0, truth[k]))
        b.add_point_observation(x1, k, measurement=_observed(x1, truth[k]))
    optimize(b.build(), SolverOptions(solver="gn"))
    for k, p in enumerate(pts):
        torch.testing.assert_close(p.tensor[0], truth[k], atol=1e-8, rtol=0)
    with raises_builder_error("add_points positions", "(N, 3)", "received (3, 2)"):
        b.add_points(torch.zeros(3, 2, dtype=F64))
    with raises_builder_error("add_points names", "expected 2 names"):
        b.add_points(torch.zeros(2, 3, dtype=F64), names=["a"])


# -- rotations: one rule (posegraph.lie.check_rotations) ------------------------------------------


def _with_rotation(rot: torch.Tensor, name: str = "bad", dtype=F64, t=(0.0, 0.0, 0.0)) -> th.SE3:
    x = th.SE3(name=name, dtype=dtype)
    tensor = torch.zeros(1, 3, 4, dtype=dtype)
    tensor[0, :, :3] = rot
    tensor[0, :, 3] = torch.tensor(t, dtype=dtype)
    x.tensor = tensor  # Theseus accepts these: th.SE3(tensor=2·I) raises nothing
    return x


def _one_warning(*words: str):
    """pytest.warns for a UserWarning whose message contains every word (literally)."""
    return pytest.warns(UserWarning, match="(?s)" + "".join(f"(?=.*{re.escape(w)})" for w in words))


@pytest.mark.parametrize(
    "rot,words",
    [(torch.zeros(3, 3, dtype=F64), ["det R = 0", "singular"]),
     (torch.diag(torch.tensor([1.0, 1, -1], dtype=F64)), ["det R = -1", "a reflection"])],
    ids=["zero", "reflection"],
)
def test_rotations_that_cannot_be_made_rotations_are_refused(rot, words):
    with raises_builder_error("pose 'bad'", "expected a rotation matrix (det R > 0)", *words):
        PoseGraphBuilder().add_pose(_with_rotation(rot))
    b, x0, x1 = two_pose_builder()
    with raises_builder_error("edge #0 measurement", "expected a rotation matrix", *words):
        b.add_between(x0, x1, measurement=_with_rotation(rot, "z"))
    with raises_builder_error("prior #0 measurement", *words):
        b.add_prior(x1, _with_rotation(rot, "z").tensor)
    b.add_point(point("p", [0.0, 0.0, 0.0]))
    with raises_builder_error("observation #0 offset", *words):
        b.add_point_observation(x0, "p", torch.zeros(3, dtype=F64), offset=_with_rotation(rot, "o"))
    batch = torch.cat([_with_rotation(torch.eye(3, dtype=F64)).tensor, _with_rotation(rot).tensor])
    with raises_builder_error("pose 'two' (batch element 1)", *words):
        PoseGraphBuilder().add_pose(th.SE3(tensor=batch, name="two"))


def _square_problem(rotation_of_x1: torch.Tensor, measurement_scale: float = 1.0):
    """Three poses, x0 fixed; x1 starts at [rotation_of_x1 | (1, 0, 0)]; the edge x0 → x1
    measures a rotation scaled by ``measurement_scale``."""
    b = PoseGraphBuilder()
    x0 = _with_rotation(torch.eye(3, dtype=F64), "x0")
    x1 = _with_rotation(rotation_of_x1, "x1", t=(1.0, 0.0, 0.0))
    x2 = se3("x2", seed=4)
    b.add_pose(x0, fixed=True)
    b.add_pose(x1)
    b.add_pose(x2)
    z01 = th.SE3.exp_map(torch.tensor([[1.0, 0.1, 0.0, 0.0, 0.0, 0.3]], dtype=F64)).tensor
    z01[:, :, :3] *= measurement_scale
    b.add_between(x0, x1, measurement=z01)
    b.add_between(x1, x2, measurement=th.SE3.exp_map(torch.tensor([[0.5, 0.0, 0.2, 0.1, 0.0, 0.0]], dtype=F64)))
    b.add_between(x0, x2, measurement=th.SE3.exp_map(torch.tensor([[1.4, 0.2, 0.2, 0.1, 0.0, 0.3]], dtype=F64)))
    return b, x1


def test_two_identity_pose_is_made_the_identity_with_one_warning_and_solves_as_the_identity():
    """The issue's finding: a pose whose rotation is 2·I was taken and "converged" with error 0."""
    eye = torch.eye(3, dtype=F64)
    ref, _ = _square_problem(eye)
    ref_problem = ref.build()
    expected = optimize(ref_problem, SolverOptions(solver="lm"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        b, x1 = _square_problem(2 * eye)
    assert len(caught) == 1, [str(w.message) for w in caught]
    message = str(caught[0].message)
    for word in ("pose 'x1'", "max(|RᵀR − I|, |det R − 1|) = 7", "precision 1e-06 of float64", "polar"):
        assert word in message, message
    assert caught[0].filename == __file__  # points at the user's add_pose line (in _square_problem)
    assert torch.equal(x1.tensor[0, :, :3], 2 * eye)  # the user's tensor is not modified
    problem = b.build()
    torch.testing.assert_close(problem.pose_tensor()[0, 1, :, :3], eye, atol=1e-15, rtol=0)
    result = optimize(problem, SolverOptions(solver="lm"))
    assert float(result.final_error) > 1e-3  # not "converged with error 0"
    assert float(result.initial_error) == pytest.approx(float(expected.initial_error), rel=1e-12)
    assert float(result.final_error) == pytest.approx(float(expected.final_error), rel=1e-9)
    torch.testing.assert_close(problem.pose_tensor(), ref_problem.pose_tensor(), atol=1e-9, rtol=0)
    torch.testing.assert_close(x1.tensor[0, :, :3] @ x1.tensor[0, :, :3].T, eye, atol=1e-12, rtol=0)


def test_scaled_measurement_is_its_rotation_with_one_warning():
    """Polar decomposition: 2·R becomes R (a positive scale never changes the rotation)."""
    ref, _ = _square_problem(torch.eye(3, dtype=F64))
    expected = optimize(ref.build(), SolverOptions(solver="lm"))
    with _one_warning("edge #0 measurement", "= 7", "made a rotation"):
        b, _ = _square_problem(torch.eye(3, dtype=F64), measurement_scale=2.0)
    result = optimize(b.build(), SolverOptions(solver="lm"))
    assert float(result.final_error) == pytest.approx(float(expected.final_error), rel=1e-9)


def test_one_warning_per_call_names_the_first_and_the_count():
    rot = torch.stack([torch.eye(3, dtype=F64), 3 * torch.eye(3, dtype=F64), 2 * torch.eye(3, dtype=F64)])
    tensor = torch.cat([rot, torch.zeros(3, 3, 1, dtype=F64)], dim=-1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PoseGraphBuilder().add_pose(th.SE3(tensor=tensor, name="b3"))
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "pose 'b3' (batch element 1)" in message and "= 26" in message and "2 rotations in all" in message


def test_rotation_precision_per_dtype():
    from posegraph.lie.rotation_rule import rotation_defect

    eye, f32 = torch.eye(3, dtype=F64), torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # round-off scale: used as given, silently
        PoseGraphBuilder().add_pose(_with_rotation(eye + 1e-8, "ok"))
        PoseGraphBuilder().add_pose(_with_rotation(torch.eye(3, dtype=f32) + 1e-5, "ok32", f32))
    with _one_warning("pose 'far'", "precision 1e-06 of float64"):
        PoseGraphBuilder().add_pose(_with_rotation(eye + 1e-5, "far"))
    with _one_warning("pose 'far32'", "precision 0.0001 of float32"):
        PoseGraphBuilder().add_pose(_with_rotation(torch.eye(3, dtype=f32) + 1e-3, "far32", f32))
    b = PoseGraphBuilder()
    x = _with_rotation(eye + 1e-8, "given")
    b.add_pose(x, fixed=True)
    b.add_pose(se3("y"))
    b.add_between("given", "y", measurement=se3("z", seed=3))
    assert torch.equal(b.build().pose_tensor()[0, 0], x.tensor[0])  # within precision: as given
    assert float(rotation_defect(torch.tensor([0.0, 0.0, 2.0, 0.0]), "SE2")) == pytest.approx(3.0)
    # three SE2 poses have the shape of one SE3 pose: the kind decides
    three = torch.tensor([[0.0, 0.0, 1.0, 0.0]] * 3, dtype=F64)
    assert rotation_defect(three, "SE2").tolist() == [0.0, 0.0, 0.0]
    assert float(rotation_defect(three, "SE3")) > 0.5


def test_se2_cos_sin_is_normalized_or_refused():
    b = PoseGraphBuilder()
    b.add_pose(se2("a"), fixed=True)
    b.add_pose(se2("b"))
    with _one_warning("edge #0 measurement", "|cos² + sin² − 1| = 3", "(cos, sin) normalized"):
        b.add_between("a", "b", measurement=torch.tensor([[1.0, 0.0, 0.0, 2.0]], dtype=F64))
    packed = b.build().between.measurements.tensor
    assert torch.equal(packed, torch.tensor([[[1.0, 0.0, 0.0, 1.0]]], dtype=F64))
    with raises_builder_error("edge #1 measurement", "expected a rotation (cos, sin)", "received (0, 0)"):
        b.add_between("a", "b", measurement=torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=F64))


def test_a_pose_updated_after_add_pose_is_packed_as_updated():
    """The packed copy of a made-rotation pose is used only while the variable holds the tensor
    that was added."""
    b = PoseGraphBuilder()
    b.add_pose(se3("a"), fixed=True)
    x = _with_rotation(2 * torch.eye(3, dtype=F64), "x")
    with _one_warning("pose 'x'"):
        b.add_pose(x)
    b.add_between("a", "x", measurement=se3("z", seed=3))
    assert torch.equal(b.build().pose_tensor()[0, 1, :, :3], torch.eye(3, dtype=F64))
    later = se3("later", seed=9).tensor
    x.update(later)
    assert torch.equal(b.build().pose_tensor()[0, 1], later[0])


# -- Python types ------------------------------------------------------------------------------------


def test_numpy_and_list_inputs_are_converted():
    def solve(meas, info, ref):
        b, x0, x1 = two_pose_builder()
        b.add_between(x0, ref(b), measurement=meas, information=info)
        optimize(b.build(), SolverOptions(solver="gn"))
        return x1.tensor

    z = se3("z", seed=5)
    info = _diag_info("SE3", 1)
    expected = solve(z, info, lambda b: "x1")
    got = solve(z.tensor[0].tolist(), info.numpy(), lambda b: np.int64(1))
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    got = solve(z.tensor.numpy(), info.tolist(), lambda b: np.int32(1))
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


def test_numpy_inputs_take_the_builder_dtype():
    b = PoseGraphBuilder(dtype=torch.float32)
    b.add_pose(se3("a", dtype=torch.float32), fixed=True)
    b.add_pose(se3("b", dtype=torch.float32))
    b.add_between("a", "b", measurement=np.eye(3, 4), information=np.eye(6))
    assert b.build().pose_tensor().dtype == torch.float32


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (dict(measurement="z"), ["edge #0 measurement", "received str"]),
        (dict(measurement=[[1.0, 0.0], [0.0]]), ["edge #0 measurement", "not a rectangular array of numbers"]),
        (dict(measurement=np.array([["a"] * 4] * 3)), ["edge #0 measurement", "not a rectangular array"]),
        (dict(measurement=np.eye(3, 4), information=np.ones((5, 5))), ["edge #0 information", "(6, 6)", "received (5, 5)"]),
        (dict(measurement=np.eye(3, 4), information=np.zeros((6, 6))), ["edge #0 information", "all zeros"]),
        (dict(measurement=np.eye(3, 4), information=torch.zeros(6, 6, dtype=F64)), ["edge #0 information", "all zeros"]),
        (dict(measurement=np.eye(3, 4), information=True), ["edge #0 information", "received bool"]),
    ],
    ids=["str", "ragged", "strings", "info-shape", "numpy-zero-info", "zero-info", "bool-info"],
)
def test_bad_python_values_are_builder_errors(kwargs, words):
    b, x0, x1 = two_pose_builder()
    with raises_builder_error(*words):
        b.add_between(x0, x1, **kwargs)


@pytest.mark.parametrize("ref", [True, False, np.bool_(True), 1.0, None], ids=["True", "False", "np.bool_", "float", "None"])
def test_bools_and_other_objects_are_not_indices(ref):
    b, x0, x1 = two_pose_builder()
    with raises_builder_error("edge #0", "expected a pose (variable, name or index)"):
        b.add_between(ref, x1, measurement=se3("z"))


def test_numpy_integer_indices_and_out_of_range():
    b, x0, x1 = two_pose_builder()
    assert b.add_between(np.int64(0), np.uint8(1), measurement=se3("z")) == 0
    with raises_builder_error("pose index in [0, 2)", "received 7"):
        b.add_between(np.int64(7), 1, measurement=se3("z"))


def test_huge_information_is_a_builder_error():
    b, x0, x1 = two_pose_builder()
    with raises_builder_error("edge #0 information", "is 1e+308", "expected a finite magnitude ≤ 1e+150"):
        b.add_between(x0, x1, measurement=se3("z"), information=torch.full((6, 6), 1e308, dtype=F64))


@pytest.mark.parametrize("name", [["e"], np.array(["e"]), torch.zeros(2), 3, ""], ids=["list", "array", "tensor", "int", "empty"])
def test_names_must_be_strings(name):
    b, x0, x1 = two_pose_builder()
    with raises_builder_error("edge #0 name", "non-empty str"):
        b.add_between(x0, x1, measurement=se3("z"), name=name)
    with raises_builder_error("prior name", "non-empty str"):
        b.add_prior(x1, se3("z"), name=name)
    with raises_builder_error("add_points point 0 name", "non-empty str"):
        b.add_points(torch.zeros(1, 3, dtype=F64), names=[name])


def test_debug_callback_names_user_costs():
    from posegraph import DebugCallback

    b, x0, x1 = two_pose_builder()
    b.add_between(x0, x1, measurement=se3("z", seed=4))
    own = se3("own", seed=6)
    b.add_cost(th.Between(x1, own, se3("m", seed=7), th.ScaleCostWeight(torch.ones(1, 1, dtype=F64)), name="mine"))
    b.add_prior(x1, se3("zp", seed=8), name="gps")
    problem = b.build()
    cb = DebugCallback.for_problem(problem, per_cost=True)
    optimize(problem, SolverOptions(solver="lm", max_iterations=3), end_iter_callback=cb)
    costs = cb.records[0]["cost_functions"]
    assert len(costs["mine"]["jacobian_norms"]) == 2 and len(costs["gps"]["jacobian_norms"]) == 1
    assert costs["gps"]["error_norm"] > 0 and "between x0 x1" in costs


def test_builtin_prior_anchors_like_a_user_prior():
    """With no fixed pose, add_prior anchors the graph (no pose held), and gives the optimum of
    the same prior added as a th.Difference through add_cost."""
    cls, edges, meas, infos, make = _user_cost_graph("SE3", False)
    z = cls.rand(1, generator=torch.Generator().manual_seed(3), dtype=F64)
    info = _diag_info("SE3", 9)
    results = []
    for builtin in (True, False):
        poses, _, _ = make()
        b = PoseGraphBuilder()
        for p in poses:
            b.add_pose(p)
        for e, (i, j) in enumerate(edges):
            b.add_between(poses[i], poses[j], measurement=meas[e], information=infos[e])
        if builtin:
            assert b.add_prior("x2", z, info, name="gps") == 0
        else:
            w = th.DiagonalCostWeight(torch.sqrt(torch.diag(info))[None])
            b.add_cost(th.Difference(poses[2], z.copy(new_name="zz"), w, name="gps"))
        before = poses[0].tensor.clone()
        optimize(b.build(), SolverOptions(solver="gn", max_iterations=10, rel_tolerance=0.0, abs_tolerance=0.0))
        assert not torch.allclose(poses[0].tensor, before)  # not held: the prior anchors
        results.append(torch.stack([p.tensor for p in poses]))
    torch.testing.assert_close(results[0], results[1], atol=1e-9, rtol=0)


def test_builder_cost_names_are_reserved():
    b, x0, x1 = two_pose_builder()
    with raises_builder_error("'priors'", "already used"):
        b.add_cost(th.Difference(x1, se3("t"), th.ScaleCostWeight(torch.ones(1, 1, dtype=F64)), name="priors"))


# -- the per-call checks' plain-Python paths decide as the NumPy paths ----------------------------


def _outcome(check, *args):
    """("ok", returned) or ("error", message) of one check; warnings recorded as text."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out = check(*args)
        except BuilderError as err:
            return ("error", str(err)), []
    return ("ok", out), [str(w.message) for w in caught]


def _information_cases():
    rng = np.random.default_rng(31)
    a = rng.normal(size=(6, 6))
    pd = a @ a.T + 0.1 * np.eye(6)
    singular = np.diag([1.0, 2.0, 0.0, 3.0, 0.0, 1.0])  # PSD, not definite: Cholesky fails
    tiny_negative = np.diag([1.0, 1.0, 1.0, 1.0, 1.0, -1e-12])  # PSD within the tolerance
    indefinite = np.diag([1.0, 1.0, 1.0, 1.0, 1.0, -1e-3])
    asymmetric = pd.copy()
    asymmetric[0, 1] += 1e-3
    nearly_symmetric = pd.copy()
    nearly_symmetric[0, 1] += 1e-12
    nan, huge, overflow = pd.copy(), pd.copy(), np.full((6, 6), 1e200)
    nan[2, 2] = np.nan
    huge[1, 1] = 1e151
    return [pd, singular, tiny_negative, indefinite, asymmetric, nearly_symmetric, nan, huge, overflow,
            np.zeros((6, 6)), 1e-300 * np.eye(6), np.eye(6) * 1e149]


@pytest.mark.parametrize("case", range(12))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_information_matrix_is_decided_as_a_batch_of_them(case, dtype):
    """One matrix goes through plain Python (Cholesky accept), a batch of two through NumPy:
    the same acceptance, the same error."""
    from posegraph.model.checks import _check_information

    m = torch.as_tensor(_information_cases()[case]).to(dtype)
    one, _ = _outcome(_check_information, m, 6, "edge #0 information", "measurement")
    two, _ = _outcome(_check_information, torch.stack([m, m]), 6, "edge #0 information", "measurement")
    assert one[0] == two[0] and (one[0] == "ok" or one[1] == two[1]), (one, two)


def _rotation_cases():
    R = th.SO3.rand(1, generator=torch.Generator().manual_seed(5), dtype=F64).tensor[0]
    shear = torch.eye(3, dtype=F64)
    shear[0, 1] = 1e-3
    return [R, R + 1e-8, R + 1e-5, 2 * R, R @ shear, torch.zeros(3, 3, dtype=F64),
            torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=F64)), torch.full((3, 3), 1e200, dtype=F64)]


@pytest.mark.parametrize("case", range(8))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_rotation_is_decided_as_a_batch_of_them(case, dtype):
    """The rotation rule checks one pose in plain Python and a batch with NumPy: the same
    acceptance, projection, warning and error."""
    from posegraph.model.checks import _check_element_tensor

    rot = _rotation_cases()[case].to(dtype)
    one = torch.cat([rot, torch.ones(3, 1, dtype=dtype)], dim=1).unsqueeze(0)
    a, wa = _outcome(_check_element_tensor, one, th.SE3, "pose 'p'")
    b, wb = _outcome(_check_element_tensor, torch.cat([one, one]), th.SE3, "pose 'p'")
    assert a[0] == b[0], (a, b)
    if a[0] == "ok":
        assert torch.equal(a[1][0], b[1][0])
        assert (a[1] is one) == (not wa)  # used as given, or made a rotation with a warning
        assert [w.replace(" (batch element 0)", "").split("; 2 rotations")[0] for w in wb] == wa
    else:
        assert a[1] == b[1].replace(" (batch element 0)", "")
    se2 = torch.tensor([[1.0, 2.0, 0.6 * (case + 1), 0.8]], dtype=dtype)
    a, wa = _outcome(_check_element_tensor, se2, th.SE2, "pose 'q'")
    b, wb = _outcome(_check_element_tensor, torch.cat([se2, se2]), th.SE2, "pose 'q'")
    assert a[0] == b[0] == "ok" and torch.equal(a[1][0], b[1][0]) and len(wa) == len(wb)


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, "float64", float])
def test_builder_dtype_must_be_a_floating_torch_dtype(dtype):
    """It was accepted at construction, and only the first pose's check named the problem."""
    with pytest.raises(BuilderError, match=r"PoseGraphBuilder: dtype: expected a floating-point torch.dtype"):
        PoseGraphBuilder(dtype=dtype)
    PoseGraphBuilder(dtype=torch.float32)
