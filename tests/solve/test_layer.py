"""PoseGraphLayer: batched, differentiable solving; linear solver choice; input errors."""

from __future__ import annotations

import pytest
import theseus as th
import torch

import posegraph as pg
from posegraph.model.checks import BuilderError
from posegraph.errors import DeviceError
from posegraph.solve import batched as batched_mod
from posegraph.solve import optimize as optimize_mod
from posegraph.solve.layer import PoseGraphLayer, differentiable_sqrt_information
from posegraph.solve.optimize import make_optimizer, resolve_linear_solver

F64 = torch.float64
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def loop_graph(kind: str = "SE2", n: int = 6, noise: float = 0.05, seed: int = 0, batch: int = 1):
    """Ground truth on a circle, noisy measurements (B copies), odometry-composed initial guess
    perturbed; returns (graph with batched tensors, true poses)."""
    gen = torch.Generator().manual_seed(seed)
    cls, shape, dof = pg.graph.POSE_KINDS[kind]
    step = torch.zeros(dof, dtype=F64)
    step[0] = 1.0
    step[dof - 1] = 2 * torch.pi / n  # last tangent coordinate: rotation (about z for SE3)
    truth = [cls(dtype=F64)]
    for _ in range(n - 1):
        truth.append(truth[-1].compose(cls.exp_map(step.unsqueeze(0))))
    true = torch.cat([t.tensor for t in truth])
    edges = torch.tensor([(k, k + 1) for k in range(n - 1)] + [(0, n - 1), (1, n - 2)])
    e = edges.shape[0]

    def noisy(x: torch.Tensor, sigma: float) -> torch.Tensor:
        d = sigma * torch.randn(x.shape[0], dof, generator=gen, dtype=F64)
        return cls(tensor=x).compose(cls.exp_map(d)).tensor

    z_true = cls(tensor=true[edges[:, 0]]).between(cls(tensor=true[edges[:, 1]])).tensor
    meas = torch.stack([noisy(z_true, noise) for _ in range(batch)])
    init = torch.stack([noisy(true, 0.1) for _ in range(batch)])
    a = torch.randn(e, dof, dof, generator=gen, dtype=F64)
    info = (a @ a.transpose(-1, -2) + dof * torch.eye(dof, dtype=F64)).expand(batch, e, dof, dof).clone()
    graph = pg.PoseGraph(
        kind=kind, ids=torch.arange(n), poses=init, edges=edges, measurements=meas,
        information=info, fixed=torch.zeros(n, dtype=torch.bool),
    )
    return graph, true


def options(**kw) -> pg.SolverOptions:
    kw.setdefault("max_iterations", 50)
    return pg.SolverOptions(**kw)


# -- forward: same as the CLI path, per problem of a batch ---------------------------------------------


@pytest.mark.parametrize("kind", ["SE2", "SE3"])
def test_forward_matches_optimize(kind):
    g, _ = loop_graph(kind, seed=1)
    layer = PoseGraphLayer(g, options=options())
    out, info = layer(g.poses, g.measurements, g.information)
    assert info.status == ["converged"] and info.linear_solver == "cholmod"
    ref = pg.build_problem(g)
    res = pg.optimize(ref, options(), backward_mode="implicit")  # the layer's default mode
    torch.testing.assert_close(out, ref.pose_tensor(), rtol=0, atol=1e-8)
    torch.testing.assert_close(info.final_error, res.final_error, rtol=1e-10, atol=1e-12)
    assert int(info.iterations[0]) == res.iterations
    assert float(info.final_error) < float(info.initial_error)


@pytest.mark.parametrize("solver", ["lm", "gn"])
def test_batch_equals_each_alone(solver):
    """B graphs of one topology in one call = each solved alone (1e-8), each problem stopping
    at its own convergence (different iteration counts, LM rejections included)."""
    g, _ = loop_graph("SE3", n=7, noise=0.05, seed=2, batch=5)
    far = 2.0 if solver == "lm" else 0.3  # far start: LM rejects steps and creeps (61 iterations); GN: nearer
    gen = torch.Generator().manual_seed(0)
    g.poses[3] = th.SE3(tensor=g.poses[3]).compose(th.SE3.exp_map(far * torch.randn(7, 6, generator=gen, dtype=F64))).tensor
    # A fixed CG limit: with the measured one (timings), whether a solve reuses the last factor
    # — exact only to the CG tolerance — may differ between the batch and a problem alone.
    layer = PoseGraphLayer(g, options=options(solver=solver, cg_max_iterations=10, max_iterations=100))
    out, info = layer(g.poses, g.measurements, g.information)
    assert info.converged
    for b in range(5):
        alone, info_b = layer(g.poses[b : b + 1], g.measurements[b : b + 1], g.information[b : b + 1])
        torch.testing.assert_close(out[b : b + 1], alone, rtol=0, atol=1e-8)
        assert int(info.iterations[b]) == int(info_b.iterations[0])
        assert info.stop_reason[b] == info_b.stop_reason[0]
    assert len(set(info.iterations.tolist())) > 1  # problems stopped at different iterations


def test_converged_problems_stop_changing():
    """A problem already at its optimum is not moved while the others iterate."""
    g, _ = loop_graph("SE2", seed=3, batch=3)
    layer = PoseGraphLayer(g, options=options())
    solved, _ = layer(g.poses[:1], g.measurements[:1], g.information[:1])
    poses = g.poses.clone()
    poses[0] = solved[0]
    seen = []
    cb = lambda opt, info, delta, it: seen.append(opt.objective.get_optim_var("poses").tensor[0].clone())
    out, info = layer(poses, g.measurements, g.information, end_iter_callback=cb)
    assert int(info.iterations[0]) <= 1 and int(info.iterations[1]) > 1
    for x in seen:
        torch.testing.assert_close(x, seen[0], rtol=0, atol=0)


def test_shared_measurements_broadcast_and_unbatched_inputs():
    g, _ = loop_graph("SE2", seed=4, batch=2)
    layer = PoseGraphLayer(g, options=options())
    out, info = layer(g.poses, g.measurements[0], g.information[0])  # (E, ...) shared by B=2
    assert out.shape == g.poses.shape and len(info.status) == 2
    one, _ = layer(g.poses[1], g.measurements[0], g.information[0])
    torch.testing.assert_close(out[1:], one, rtol=0, atol=1e-8)


def test_construct_from_kind_edges_fixed():
    g, _ = loop_graph("SE2", seed=5)
    fixed = torch.zeros(g.num_poses, dtype=torch.bool)
    fixed[2] = True
    layer = PoseGraphLayer("SE2", g.edges, fixed, options=options())
    out, info = layer(g.poses, g.measurements, g.information)
    assert info.converged
    torch.testing.assert_close(out[0, 2], g.poses[0, 2], rtol=0, atol=0)  # held
    ref = pg.build_problem(pg.PoseGraph(**{**g.__dict__, "fixed": fixed}))
    pg.optimize(ref, options(), backward_mode="implicit")
    torch.testing.assert_close(out, ref.pose_tensor(), rtol=0, atol=1e-8)


# -- gradients ---------------------------------------------------------------------------------------


def small_problem(seed: int = 0):
    g, true = loop_graph("SE2", n=4, noise=0.02, seed=seed)
    g.edges = torch.tensor([[0, 1], [1, 2], [2, 3], [0, 3]])
    g.measurements = g.measurements[:, :4]
    g.information = g.information[:, :4]
    return g, true


def test_gradcheck_through_solve_unroll():
    """Finite differences vs autograd through the whole solve (f64)."""
    g, _ = small_problem()
    layer = PoseGraphLayer(g, options=options(solver="gn", rel_tolerance=1e-14, abs_tolerance=1e-14, max_iterations=30),
                           backward_mode="unroll")
    dof = 3
    z0 = g.measurements.clone()

    def solve(tangent, sqrt_info):
        z = th.SE2(tensor=z0[0]).compose(th.SE2.exp_map(tangent.reshape(-1, dof))).tensor.unsqueeze(0)
        out, _ = layer(g.poses, z, sqrt_information=sqrt_info)
        return out[..., :2]  # positions

    tangent = torch.zeros(4 * dof, dtype=F64, requires_grad=True)
    w = differentiable_sqrt_information(g.information).detach().requires_grad_(True)
    assert torch.autograd.gradcheck(solve, (tangent, w), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradcheck_implicit_on_consistent_graph():
    """With zero residual at the solution (noise-free loop), Theseus' implicit gradient is exact."""
    g, true = loop_graph("SE2", n=4, noise=0.0, seed=1)
    g.edges = torch.tensor([[0, 1], [1, 2], [2, 3], [0, 3]])
    z0 = th.SE2(tensor=true[g.edges[:, 0]]).between(th.SE2(tensor=true[g.edges[:, 1]])).tensor
    layer = PoseGraphLayer("SE2", g.edges, options=options(solver="gn"), backward_mode="implicit")
    info = g.information[:, :4]

    def solve(tangent):
        # perturb the odometry chain consistently: the graph stays noise-free
        moved = th.SE2(tensor=true[1:2]).compose(th.SE2.exp_map(tangent.reshape(1, 3))).tensor
        poses = torch.cat([true[:1], moved, true[2:]])
        z = th.SE2(tensor=poses[g.edges[:, 0]]).between(th.SE2(tensor=poses[g.edges[:, 1]])).tensor
        out, _ = layer(g.poses, z.unsqueeze(0), info)
        return out[..., :2]

    tangent = torch.zeros(3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(solve, (tangent,), eps=1e-6, atol=1e-6, rtol=1e-5)


def grads(mode: str, k=None, linear="cholmod"):
    g, true = small_problem(seed=3)
    layer = PoseGraphLayer(g, options=options(linear_solver=linear, rel_tolerance=1e-14, abs_tolerance=1e-14),
                           backward_mode=mode, backward_num_iterations=k)
    z = g.measurements.clone().requires_grad_(True)
    info = g.information.clone().requires_grad_(True)
    init = g.poses.clone().requires_grad_(True)
    out, res = layer(init, z, info)
    loss = (out[..., :2] - true[..., :2]).pow(2).sum()
    loss.backward()
    return z.grad, info.grad, init.grad, res


def test_implicit_and_unroll_gradients_agree():
    gi = grads("implicit")
    gu = grads("unroll")
    for a, b in zip(gi[:2], gu[:2]):
        assert torch.isfinite(a).all() and a.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=0, atol=2e-2 * float(b.abs().max()))


def test_truncated_runs_and_is_close():
    gt = grads("truncated", k=3)
    gu = grads("unroll")
    assert gt[3].backward_mode == "truncated" and gt[3].converged
    torch.testing.assert_close(gt[0], gu[0], rtol=0, atol=5e-2 * float(gu[0].abs().max()))


def test_gradients_reach_initial_poses_and_learnable_weights():
    z_grad, info_grad, init_grad, _ = grads("unroll")
    assert init_grad is not None and torch.isfinite(init_grad).all()
    # the gauge pose (index 0, fixed automatically) moves the whole solution
    assert init_grad[0, 0].abs().max() > 1e-3
    g, true = small_problem(seed=4)
    layer = PoseGraphLayer(g, weights="kind", edge_kinds=torch.tensor([0, 0, 0, 1]), options=options())
    out, _ = layer()
    (out[..., :2] - true[..., :2]).pow(2).sum().backward()
    assert layer.log_weight.grad is not None and layer.log_weight.grad.abs().max() > 0
    edge_layer = PoseGraphLayer(g, weights="edge", options=options())
    assert edge_layer.log_weight.shape == (4,)


def test_backward_mode_validation():
    g, _ = small_problem()
    with pytest.raises(ValueError, match="backward_num_iterations"):
        PoseGraphLayer(g, backward_mode="truncated")
    with pytest.raises(ValueError, match="backward_mode"):
        PoseGraphLayer(g, backward_mode="dlm")
    with pytest.raises(ValueError, match="edge_kinds"):
        PoseGraphLayer(g, weights="kind")


@pytest.mark.parametrize("k", ["3", 2.5, True, 0])
def test_backward_num_iterations_must_be_an_integer(k):
    """backward_num_iterations must be an integer ≥ 1 (not a string, float or bool), refused at
    construction and at the call, naming it, instead of a bare TypeError in the solve."""
    g, _ = small_problem()
    with pytest.raises(pg.PoseGraphError, match=r"^backward_num_iterations: expected an integer ≥ 1"):
        PoseGraphLayer(g, backward_mode="truncated", backward_num_iterations=k)
    layer = PoseGraphLayer(g, options=options())
    with pytest.raises(pg.PoseGraphError, match=r"^backward_num_iterations: expected an integer ≥ 1"):
        layer(backward_mode="truncated", backward_num_iterations=k)


# -- input errors ---------------------------------------------------------------------------------------


def test_input_mismatch_errors_name_input_expected_received():
    g, _ = loop_graph("SE2", seed=6, batch=2)
    layer = PoseGraphLayer(g)
    with pytest.raises(BuilderError, match=r"measurements: expected dtype torch.float64, received torch.float32"):
        layer(g.poses, g.measurements.float(), g.information)
    with pytest.raises(BuilderError, match=r"information: expected device cpu, received meta"):
        layer(g.poses, g.measurements, g.information.to("meta"))
    with pytest.raises(BuilderError, match=r"measurements: expected batch size 2 \(as poses\) or 1, received 3"):
        layer(g.poses, g.measurements[[0, 1, 1]], g.information)
    with pytest.raises(BuilderError, match=r"poses: expected shape \(batch, 6, 4\) or \(6, 4\), received \(2, 5, 4\)"):
        layer(g.poses[:, :5])
    with pytest.raises(BuilderError, match=r"sqrt_information: expected shape \(batch, 7, 3, 3\)"):
        layer(g.poses, sqrt_information=torch.ones(2, 8, 3, 2, dtype=F64))
    bad = g.information.clone()
    bad[0, 0, 0, 1] += 1.0
    with pytest.raises(BuilderError, match="information.*symmetric"):
        layer(g.poses, g.measurements, bad)
    with pytest.raises(BuilderError, match="non-finite"):
        layer(g.poses * float("nan"))
    with pytest.raises(ValueError, match=r"fixed: expected a bool mask of shape \(N,\) with N ≥ 6"):
        PoseGraphLayer("SE2", g.edges, torch.zeros(3, dtype=torch.bool))


def test_inputs_of_another_topology_are_refused():
    """Measurements of another graph with the same edge and pose counts: refused when the graph
    or its edges come along (bare tensors cannot be told apart, see the module's docstring)."""
    g, _ = loop_graph("SE2", seed=6, batch=2)  # edges (0,1) … (4,5), (0,5), (1,4)
    layer = PoseGraphLayer(g, options=options())
    other = pg.PoseGraph(**{**g.__dict__, "edges": g.edges.clone()})
    other.edges[5] = torch.tensor([0, 3])
    msg = r"expected the layer's topology, received another: edge 5 is \(0, 3\), the layer's is \(0, 5\) \(1 of 7 edges differ\)"
    with pytest.raises(BuilderError, match="graph: edges: " + msg):
        layer(other)
    with pytest.raises(BuilderError, match="edges: " + msg):
        layer(other.poses, other.measurements, other.information, edges=other.edges)
    flipped = g.edges.clone()
    flipped[0] = torch.tensor([1, 0])
    with pytest.raises(BuilderError, match=r"edge 0 is \(1, 0\), the layer's is \(0, 1\)"):
        layer(g.poses, edges=flipped)
    with pytest.raises(BuilderError, match=r"edges: expected the layer's topology, \(7, 2\) edges, received \(6, 2\)"):
        layer(g.poses, edges=g.edges[:6])
    g3, _ = loop_graph("SE3", seed=6)
    with pytest.raises(BuilderError, match="graph: expected a SE2 graph .*, received SE3"):
        layer(g3)
    held = pg.PoseGraph(**{**g.__dict__, "fixed": torch.tensor([False, False, True, False, False, False])})
    with pytest.raises(BuilderError, match=r"graph: fixed: expected the poses the layer holds, \[0\], received a graph holding \[2\]"):
        layer(held)
    # the same topology: accepted, with the graph's tensors as defaults; FIX on the gauge pose changes nothing
    same = pg.PoseGraph(**{**g.__dict__, "fixed": torch.tensor([True] + [False] * 5)})
    out, info = layer(same)
    ref, _ = layer(g.poses, g.measurements, g.information, edges=g.edges)
    assert info.converged
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


def test_overflowing_or_nonfinite_problem_is_named_by_index():
    """One overflowing graph in a batch of 2 fails alone, at its index, with the reason (instead
    of Theseus' RuntimeError for the whole batch); the other problem is solved as alone.
    Non-finite input values are refused before solving, naming problem and edge."""
    g, _ = loop_graph("SE3", n=6, seed=15, batch=2)
    layer = PoseGraphLayer(g, options=options())
    alone, alone_info = layer(g.poses[:1], g.measurements[:1], g.information[:1])
    for value, reason in ((1e200, "non-finite-error"), (1e100, "overflowing-error")):
        poses = g.poses.clone()
        poses[1, 3, :3, 3] = value
        out, info = layer(poses, g.measurements, g.information)
        assert info.status == ["converged", "failed"] and info.stop_reason[1] == reason
        torch.testing.assert_close(out[:1], alone, rtol=0, atol=1e-8)
        torch.testing.assert_close(out[1], poses[1], rtol=0, atol=0)
    z = g.measurements.clone()
    z[1, 2, 0, 0] = float("nan")
    with pytest.raises(BuilderError, match=r"measurements: non-finite values in problem 1, edge 2$"):
        layer(g.poses, z, g.information)
    with pytest.raises(BuilderError, match=r"poses: non-finite values in problem 0 \(shared by every problem\), pose 4"):
        layer(g.poses[:1] * torch.tensor([1, 1, 1, 1, float("inf"), 1], dtype=F64)[:, None, None], g.measurements)
    out, info = layer(g.poses[:1], g.measurements[:1], g.information[:1])
    assert info.converged


def test_rotations_the_rule_refuses_are_refused_naming_problem_and_element():
    """An SE2 pose with (cos, sin) = (0, 0), an SE3 pose or measurement with det R ≤ 0 are
    refused as the builder refuses them (naming the input, the problem and the pose or edge),
    instead of being returned unchanged as "converged"; valid inputs still solve."""
    layer = PoseGraphLayer("SE2", torch.tensor([[0, 1]]), options=options())
    with pytest.raises(BuilderError, match=r"poses: problem 0, pose 1: expected a rotation \(cos, sin\), received \(0, 0\), which has no angle"):
        layer(torch.tensor([[0, 0, 1, 0], [1, 0, 0, 0]], dtype=F64))
    g, _ = loop_graph("SE3", n=6, seed=3, batch=2)
    layer = PoseGraphLayer(g, options=options())
    poses = g.poses.clone()
    poses[1, 4, :3, :3] = 0.0
    with pytest.raises(BuilderError, match=r"poses: problem 1, pose 4: expected a rotation matrix \(det R > 0\), received one with det R = 0 \(singular\)"):
        layer(poses, g.measurements, g.information)
    z = g.measurements[:1].clone()
    z[0, 2, :3, 2] *= -1.0  # a reflection
    with pytest.raises(BuilderError, match=r"measurements: problem 0 \(shared by every problem\), edge 2: .*det R = -1 \(a reflection\)"):
        layer(g.poses, z, g.information)
    out, info = layer(g.poses, g.measurements, g.information)
    assert info.converged


def test_empty_batches_are_refused_naming_the_input():
    """A batch of 0 problems in any input is refused naming the input ("expected batch size
    ≥ 1, received 0"), not torch's reduction error from inside the checks."""
    g, _ = loop_graph("SE2", n=6, seed=2, batch=1)
    layer = PoseGraphLayer(g, options=options())
    empty = lambda t: t.expand(0, *t.shape[1:])  # noqa: E731
    cases = [
        ("poses", (empty(g.poses), g.measurements, g.information), {}),
        ("poses", (empty(g.poses), empty(g.measurements), empty(g.information)), {}),
        ("measurements", (g.poses, empty(g.measurements), g.information), {}),
        ("information", (g.poses, g.measurements, empty(g.information)), {}),
        ("sqrt_information", (g.poses, g.measurements), {"sqrt_information": empty(g.information)}),
    ]
    for what, args, kw in cases:
        with pytest.raises(BuilderError, match=rf"^{what}: expected batch size ≥ 1, received 0"):
            layer(*args, **kw)


def test_layer_pickles_before_and_after_a_call():
    """state_dict, torch.save(layer) and deepcopy before and after forward (the cached Theseus
    objects hold CHOLMOD factors and PARDISO's ctypes handles); copies solve as the original."""
    import copy
    import io

    from posegraph.solve.mkl import pardiso_available

    g, _ = loop_graph("SE3", n=6, seed=16, batch=2)
    for linear in ["cholmod", "pardiso"] if pardiso_available() else ["cholmod"]:
        layer = PoseGraphLayer(g, options=options(linear_solver=linear), weights="edge")
        with torch.no_grad():
            layer.log_weight.copy_(torch.linspace(-0.5, 0.5, g.num_edges, dtype=F64))
        copies = [copy.deepcopy(layer)]
        buf = io.BytesIO()
        torch.save(layer, buf)
        out, _ = layer()
        assert layer._compiled  # the cache exists now
        copies.append(copy.deepcopy(layer))
        buf2 = io.BytesIO()
        torch.save(layer, buf2)
        for b in (buf, buf2):
            b.seek(0)
            copies.append(torch.load(b, weights_only=False))
        state = io.BytesIO()
        torch.save(layer.state_dict(), state)
        state.seek(0)
        fresh = PoseGraphLayer(g, options=options(linear_solver=linear), weights="edge")
        fresh.load_state_dict(torch.load(state))
        copies.append(fresh)
        for c in copies:
            got, info = c()
            assert info.linear_solver == linear
            torch.testing.assert_close(got, out, rtol=0, atol=1e-10)
        again, _ = layer()  # the original keeps its cache and still solves
        torch.testing.assert_close(again, out, rtol=0, atol=1e-10)


def test_device_errors_name_the_input_and_the_device(monkeypatch):
    """Without CUDA: PoseGraphBuilder(device='cuda'), build_problem(device='cuda'),
    layer.to('cuda') / .cuda() / linear_solver_for('cuda') are refused at that call; inputs on a
    device the solvers do not run on (meta) are refused naming the input."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    g, _ = loop_graph("SE2", seed=17)
    layer = PoseGraphLayer(g, options=options(), weights="edge")
    absent = r"expected an available device, received cuda(:1)?, but torch.cuda.is_available\(\) is False"
    with pytest.raises(DeviceError, match="PoseGraphBuilder: device: " + absent):
        pg.PoseGraphBuilder(device="cuda")
    with pytest.raises(DeviceError, match="build_problem: device: " + absent):
        pg.build_problem(g, device="cuda")
    with pytest.raises(DeviceError, match=r"PoseGraphLayer.to: device: " + absent):
        layer.to("cuda")
    with pytest.raises(DeviceError, match=r"PoseGraphLayer.to: device: " + absent):
        layer.to(device=torch.device("cuda", 1), dtype=F64)
    with pytest.raises(DeviceError, match=r"PoseGraphLayer.cuda: device: " + absent):
        layer.cuda()
    with pytest.raises(DeviceError, match=r"^device: " + absent):
        layer.linear_solver_for("cuda")
    assert layer.log_weight.device.type == "cpu"
    meta = r"poses: expected a device of type cpu or cuda, received meta"
    with pytest.raises(DeviceError, match=meta):
        layer(g.poses.to("meta"), g.measurements.to("meta"), g.information.to("meta"))
    assert issubclass(DeviceError, pg.PoseGraphError)
    assert layer.to("cpu") is layer and layer.to(torch.float64) is layer


def test_dtype_follows_inputs():
    g, _ = loop_graph("SE2", seed=7)
    layer = PoseGraphLayer(g, options=options(rel_tolerance=1e-6, abs_tolerance=1e-8))
    out, info = layer(g.poses.float(), g.measurements.float(), g.information.float())
    assert out.dtype == torch.float32 and info.dtype == torch.float32
    ref, _ = layer(g.poses, g.measurements, g.information)
    torch.testing.assert_close(out.double(), ref, rtol=0, atol=1e-3)


# -- linear solvers ------------------------------------------------------------------------------------


def test_linear_solver_choice_per_device_and_size(monkeypatch):
    assert resolve_linear_solver("auto", torch.device("cpu"), 10**6, 10**6) == "sparse_cholesky"
    monkeypatch.setattr(optimize_mod, "cuda_extensions_available", lambda: False)
    cuda = torch.device("cuda")
    assert resolve_linear_solver("auto", cuda, 300, 600) == "batched_dense"
    assert resolve_linear_solver("auto", cuda, optimize_mod.DENSE_MAX_COLUMNS + 1, 10**5) == "cg"
    monkeypatch.setattr(optimize_mod, "cuda_extensions_available", lambda: True)
    assert resolve_linear_solver("auto", cuda, 300, 600) == "lu_cuda"
    assert resolve_linear_solver("auto", cuda, 15000, 30000) == "cg"  # dense Jacobians too big
    assert resolve_linear_solver("cg", torch.device("cpu")) == "cg"  # forced
    assert torch.cuda.is_available() or not batched_mod.cuda_extensions_available()


def test_unavailable_linear_solvers_refused_at_validation(monkeypatch):
    """A linear solver this machine lacks is refused by SolverOptions.validate and at the layer's
    construction, with the reason — not at the first solve with Theseus' run-together message."""
    g, _ = loop_graph("SE2", seed=14)
    if batched_mod.theseus_solver_unavailable("baspacho") is not None:
        reason = r"'baspacho' is not available on this machine: it needs Theseus' compiled extension theseus\.extlib\.baspacho_solver, which cannot be imported"
        with pytest.raises(pg.PoseGraphError, match="linear_solver: " + reason):
            options(linear_solver="baspacho").validate()
        with pytest.raises(pg.PoseGraphError, match=reason):
            PoseGraphLayer(g, options=options(linear_solver="baspacho"))
        with pytest.raises(pg.PoseGraphError, match=reason):
            pg.optimize(pg.build_problem(g), options(linear_solver="baspacho"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cuda = r"'lu_cuda' is not available on this machine: it needs a CUDA device, and torch.cuda.is_available\(\) is False"
    with pytest.raises(pg.PoseGraphError, match=cuda):
        PoseGraphLayer(g, options=options(linear_solver="lu_cuda"))
    for available in ("auto", "cholmod", "dense", "batched_dense", "cg"):
        options(linear_solver=available).validate()


@pytest.mark.cuda
@pytest.mark.skipif(not batched_mod.cuda_extensions_available(), reason="needs Theseus' CUDA extension")
def test_lu_cuda_refuses_cpu_inputs():
    g, _ = loop_graph("SE2", seed=14)
    layer = PoseGraphLayer(g, options=options(linear_solver="lu_cuda"))
    with pytest.raises(DeviceError, match=r"poses: expected a cuda device for linear_solver 'lu_cuda'.*received cpu"):
        layer()


@pytest.mark.parametrize("linear", ["batched_dense", "cg", "dense"])
def test_forced_linear_solvers_agree_with_cholmod(linear):
    g, _ = loop_graph("SE3", n=7, seed=8, batch=3)
    ref_layer = PoseGraphLayer(g, options=options())
    layer = PoseGraphLayer(g, options=options(linear_solver=linear))
    assert layer.linear_solver_for("cpu") == linear
    ref, _ = ref_layer(g.poses, g.measurements, g.information)
    out, info = layer(g.poses, g.measurements, g.information)
    assert info.linear_solver == linear and info.converged
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-7)


@pytest.mark.parametrize("linear", ["batched_dense", "cg"])
@pytest.mark.parametrize("detach", [False, True])
def test_batched_solves_and_gradients_match_cholmod(linear, detach):
    """One damped normal-equation solve and its gradients w.r.t. A and b."""
    g, _ = loop_graph("SE3", n=7, seed=9, batch=2)
    problem = pg.build_problem(g)
    ref_opt = make_optimizer(problem, options(linear_solver="cholmod"))
    opt = make_optimizer(problem, options(linear_solver=linear))
    results = []
    for o in (ref_opt, opt):
        lin = o.linear_solver.linearization
        lin.linearize(_detach_hessian=detach)
        a = lin.A_val.detach().clone().requires_grad_(True)
        b = lin.b.detach().clone().requires_grad_(True)
        lin.A_val, lin.b, lin._Atb = a, b, None
        x = o.linear_solver.solve(damping=torch.tensor([0.1, 1e-3], dtype=F64))
        weights = torch.linspace(-1, 1, x.numel(), dtype=F64).reshape(x.shape)
        (x * weights).sum().backward()
        results.append((x.detach(), a.grad, b.grad))
    for ref, got in zip(*results):
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-8)


def test_dense_ata_is_differentiable_and_matches_sparse():
    g, _ = loop_graph("SE3", n=7, seed=10)
    problem = pg.build_problem(g)
    lin = make_optimizer(problem, options(linear_solver="batched_dense")).linear_solver.linearization
    lin.linearize()
    torch.testing.assert_close(lin.AtA[0], torch.as_tensor(lin.sparse_ata(0).toarray()), rtol=1e-12, atol=1e-9)
    lin.A_val = lin.A_val.detach().requires_grad_(True)
    lin.AtA.sum().backward()
    assert lin.A_val.grad is not None


def test_debug_callback_passes_through():
    g, _ = loop_graph("SE2", seed=11)
    cb = pg.DebugCallback()
    layer = PoseGraphLayer(g, options=options(), end_iter_callback=cb)
    _, info = layer()
    assert len(cb.records) >= 1 and cb.records[-1]["iteration"] == len(cb.records)
    assert len(cb.records) >= int(info.iterations[0]) - 1  # Theseus skips the converging step


# -- CUDA ---------------------------------------------------------------------------------------------


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("linear", ["auto", "batched_dense", "cg"])
def test_cuda_matches_cpu(linear):
    g, true = loop_graph("SE3", n=7, seed=12, batch=4)
    cpu_layer = PoseGraphLayer(g, options=options())
    ref, _ = cpu_layer(g.poses, g.measurements, g.information)
    layer = PoseGraphLayer(g, options=options(linear_solver=linear))
    z = g.measurements.cuda().requires_grad_(True)
    out, info = layer(g.poses.cuda(), z, g.information.cuda())
    assert out.device.type == "cuda" and info.converged
    assert info.linear_solver != "cholmod"
    torch.testing.assert_close(out.cpu(), ref, rtol=0, atol=1e-7)
    out[..., :3, 3].sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("mode", ["implicit", "unroll"])
def test_cuda_gradients_match_cpu(mode):
    g, true = small_problem(seed=13)
    got = []
    for device, linear in (("cpu", "cholmod"), ("cuda", "batched_dense"), ("cuda", "cg")):
        layer = PoseGraphLayer(g, options=options(linear_solver=linear), backward_mode=mode)
        z = g.measurements.to(device).requires_grad_(True)
        out, _ = layer(g.poses.to(device), z, g.information.to(device))
        (out[..., :2] - true[..., :2].to(device)).pow(2).sum().backward()
        got.append(z.grad.cpu())
    for grad in got[1:]:
        torch.testing.assert_close(grad, got[0], rtol=1e-6, atol=1e-8)


# -- the example script ------------------------------------------------------------------------------


def _example():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "examples" / "learn_noise_scales.py"
    spec = importlib.util.spec_from_file_location("learn_noise_scales", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_example_learns_odometry_bias():
    hist = _example().run(learn="bias", steps=8, batch=2, num_poses=60, verbose=False)
    assert hist[-1].loss < 0.7 * hist[0].loss
    x0, x1 = hist[0].learned[0], hist[-1].learned[0]
    assert x0 == 0.0 and 0.0 < x1 <= 0.06  # moving from 0 towards the true 0.04


def test_example_learns_scales_truncated():
    hist = _example().run(learn="scales", steps=4, batch=4, num_poses=60, verbose=False,
                          backward_mode="truncated", backward_num_iterations=2)
    assert hist[-1].loss < hist[0].loss
    assert hist[-1].learned[0] > 1.0  # loop closures learned to be noisier than odometry


@pytest.mark.parametrize("mode,k", [("implicit", None), ("truncated", 1), ("truncated", 2), ("truncated", 5), ("unroll", None)])
def test_float32_gradients_equal_float64_problem_by_problem(mode, k):
    """In float32 every problem's gradient is float64's to float32 accuracy (truncated mode
    lost them: rounding-noise rejections grew LM's damping at the solution, and the relative
    tolerance 1e-10 was below float32's resolution)."""
    g, _ = loop_graph("SE3", n=8, noise=0.05, seed=0, batch=8)

    def gradients(dtype):
        layer = PoseGraphLayer(g, options=options())
        meas = g.measurements.to(dtype).clone().requires_grad_(True)
        kw = {"backward_mode": mode, **({"backward_num_iterations": k} if k else {})}
        out, info = layer(g.poses.to(dtype), meas, g.information.to(dtype), **kw)
        assert out.requires_grad and info.converged
        (out[..., 3] ** 2).sum().backward()
        return meas.grad.double().flatten(1)

    g64, g32 = gradients(F64), gradients(torch.float32)
    assert (g64.norm(dim=1) > 1).all()
    # float32's own accuracy here: ~2% (the same in every mode, and with 50 iterations: the
    # float32 linear algebra of the backward pass, not the solve)
    rel = (g32 - g64).norm(dim=1) / g64.norm(dim=1)
    assert (rel < 0.05).all(), rel
    torch.testing.assert_close(g32.norm(dim=1), g64.norm(dim=1), rtol=5e-3, atol=0)
