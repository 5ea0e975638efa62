"""Learn noise scales or a measurement bias by backpropagating through a batched solve.

Synthetic Manhattan-world graphs (``posegraph.synthetic.grid_se2``) get odometry noise of
scale 1 and loop-closure noise of scale ``--true-loop-scale`` (times the same per-axis base
sigmas); with ``--learn bias`` the odometry also carries a constant bias (forward x and
heading θ per step, as a miscalibrated wheel odometry would). A :class:`posegraph.PoseGraphLayer`
solves a batch of such graphs; the loss is the mean squared position error of the solution
against the ground truth, and Adam updates, through the solve (implicit differentiation by
default):

* ``--learn scales``: one learnable weight per edge kind (odometry, loop closure). Only the
  *ratio* of the two scales changes the solution, so the learned σ_loop/σ_odom ratio is
  reported (from 1). A position loss pins the ratio down only loosely: it moves towards the
  batch's loss-optimal ratio, which is below the true one (measured for a true 4: 2.7 with 24
  graphs of 100 poses, 3.2 with 64).
* ``--learn bias`` (default): a bias subtracted from every odometry measurement
  (``Z ↦ Z · Exp(−b)``, b = forward x and heading θ per step), from zero.

    python examples/learn_noise_scales.py                       # CPU, float64, under a minute
    python examples/learn_noise_scales.py --learn scales --batch 24 --poses 100 --steps 40
    python examples/learn_noise_scales.py --device cuda --batch 32 --poses 400
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from typing import List, Optional

import theseus as th
import torch

import posegraph as pg
from posegraph.solve.layer import BACKWARD_MODES
from posegraph.synthetic.graphs import grid_se2

BASE_SIGMAS = (0.05, 0.05, 0.01)  # x, y (m), θ (rad): the scale-1 noise
TRUE_BIAS = (0.04, 0.004)  # odometry bias per step: forward x (m), heading θ (rad)


@dataclass
class Batch:
    """B noisy copies of one synthetic topology."""

    layer_graph: pg.PoseGraph
    true_poses: torch.Tensor  # (N, 4)
    initial: torch.Tensor  # (B, N, 4): noisy odometry composed from the true first pose
    measurements: torch.Tensor  # (B, E, 4)
    is_loop: torch.Tensor  # (E,) bool


def make_batch(
    batch: int, num_poses: int, true_loop_scale: float, seed: int = 0, bias=(0.0, 0.0)
) -> Batch:
    """Noisy measurements ``Z = Z_true · Exp(n)``, ``n ~ N(b_k, (s_k σ)²)`` with ``s_k`` 1 for
    odometry and ``true_loop_scale`` for loop closures, ``b_k`` = ``bias`` (forward x, heading θ)
    for odometry, 0 for loop closures."""
    _, truth = grid_se2(num_poses=num_poses, seed=seed, closure_radius=1.5, max_closures_per_pose=2)
    is_loop = truth.extras["loop_closure"]
    gen = torch.Generator().manual_seed(seed + 1)
    sigma = torch.tensor(BASE_SIGMAS, dtype=torch.float64)
    scale = torch.where(is_loop, true_loop_scale, 1.0).to(torch.float64)
    e = truth.num_edges
    noise = torch.randn(batch, e, 3, generator=gen, dtype=torch.float64) * sigma * scale[:, None]
    bias3 = torch.tensor([bias[0], 0.0, bias[1]], dtype=torch.float64)  # (x, y, θ)
    noise = noise + torch.where(is_loop[:, None], 0.0, bias3)
    z_true = truth.measurements.expand(batch, e, 4).reshape(-1, 4)
    meas = th.SE2(tensor=z_true).compose(th.SE2.exp_map(noise.reshape(-1, 3))).tensor.reshape(batch, e, 4)
    n = truth.num_poses
    chain = [truth.poses[:1].expand(batch, 4)]
    for k in range(n - 1):  # odometry edges come first: (k, k+1)
        chain.append(th.SE2(tensor=chain[-1]).compose(th.SE2(tensor=meas[:, k])).tensor)
    initial = torch.stack(chain, dim=1)
    info = torch.diag(1.0 / sigma**2).expand(e, 3, 3).clone()
    info = info / scale[:, None, None] ** 2  # the true noise model (scales mode learns it)
    graph = pg.PoseGraph(
        kind="SE2", ids=truth.ids, poses=None, edges=truth.edges, measurements=truth.measurements,
        information=info, fixed=truth.fixed,
    )
    return Batch(graph, truth.poses, initial, meas, is_loop)


@dataclass
class Step:
    step: int
    loss: float
    learned: List[float]  # [σ_loop/σ_odom] (scales) or the odometry bias (x, θ)
    seconds: float


def run(
    learn: str = "bias",
    steps: int = 25,
    batch: int = 8,
    num_poses: int = 150,
    true_loop_scale: float = 4.0,
    true_bias=TRUE_BIAS,
    lr: Optional[float] = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float64,
    backward_mode: str = "implicit",
    backward_num_iterations: Optional[int] = None,
    iterations: int = 30,
    seed: int = 0,
    verbose: bool = True,
) -> List[Step]:
    """Train; returns the loss and the learned values per step."""
    if learn not in ("bias", "scales"):
        raise ValueError(f"learn: expected 'bias' or 'scales', received {learn!r}")
    data = make_batch(batch, num_poses, true_loop_scale, seed, true_bias if learn == "bias" else (0.0, 0.0))
    to = dict(device=device, dtype=dtype)
    n = data.layer_graph.num_poses
    layer = pg.PoseGraphLayer(
        data.layer_graph,
        options=pg.SolverOptions(  # tolerances within reach of the precision
            max_iterations=iterations,
            rel_tolerance=1e-8 if dtype == torch.float64 else 1e-5,
            abs_tolerance=1e-10 if dtype == torch.float64 else 1e-6,
        ),
        backward_mode=backward_mode,
        backward_num_iterations=backward_num_iterations,
        weights="kind" if learn == "scales" else None,
        edge_kinds=data.is_loop.long() if learn == "scales" else None,
    ).to(**to)
    init, meas = data.initial.to(**to), data.measurements.to(**to)
    info = data.layer_graph.information.to(**to)
    if learn == "scales":  # start from the same noise model for both kinds
        info = torch.diag(1.0 / torch.tensor(BASE_SIGMAS, **to) ** 2).expand_as(info)
    true_xy = data.true_poses[:, :2].to(**to)
    sigma = torch.tensor(BASE_SIGMAS, **to)[[0, 2]]
    bias_in_sigmas = torch.zeros(2, **to, requires_grad=True)  # bias = σ · this (well scaled for Adam)
    params = list(layer.parameters()) if learn == "scales" else [bias_in_sigmas]
    optim = torch.optim.Adam(params, lr=lr or 0.1)
    history: List[Step] = []
    start = time.perf_counter()
    if verbose:
        truth = f"σ_loop/σ_odom = {true_loop_scale:g}" if learn == "scales" else f"odometry bias {tuple(true_bias)}"
        print(f"{batch} graphs × {n} poses, {data.layer_graph.num_edges} edges "
              f"({int(data.is_loop.sum())} loop closures); true {truth}")
    for k in range(steps + 1):
        z = meas
        bias = sigma * bias_in_sigmas
        tangent = torch.stack([bias[0], torch.zeros_like(bias[0]), bias[1]])
        if learn == "bias":  # Z ↦ Z · Exp(−b) on the odometry edges (the first N − 1)
            odo = th.SE2(tensor=meas[:, : n - 1].reshape(-1, 4)).compose(th.SE2.exp_map(-tangent.expand(batch * (n - 1), 3)))
            z = torch.cat([odo.tensor.reshape(batch, n - 1, 4), meas[:, n - 1 :]], dim=1)
        poses, solve = layer(init, z, info)
        loss = (poses[..., :2] - true_xy).pow(2).sum(-1).mean()
        if learn == "scales":  # log_weight = −log(noise scale): σ_loop/σ_odom = exp(w_odom − w_loop)
            w = layer.log_weight.detach()
            learned = [math.exp(float(w[0] - w[1]))]
        else:
            learned = bias.detach().cpu().tolist()  # (x, θ)
        history.append(Step(k, float(loss.detach()), learned, time.perf_counter() - start))
        if verbose:
            shown = " ".join(f"{v:7.4f}" for v in learned)
            print(f"step {k:3d}  loss {float(loss.detach()):.6f}  learned {shown}  "
                  f"({solve.linear_solver}, {int(solve.iterations.max())} it, {history[-1].seconds:.1f} s)")
        if k == steps:
            break
        optim.zero_grad()
        loss.backward()
        optim.step()
    return history


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--learn", choices=["bias", "scales"], default="bias")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--backward-mode", choices=list(BACKWARD_MODES), default="implicit")
    p.add_argument("--backward-iterations", type=int, default=3, help="k for --backward-mode truncated")
    p.add_argument("--iterations", type=int, default=30, help="solver iteration cap per forward")
    p.add_argument("--steps", type=int, default=25, help="training steps")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--poses", type=int, default=150)
    p.add_argument("--true-loop-scale", type=float, default=4.0)
    p.add_argument("--lr", type=float, default=None, help="Adam step (default 0.1)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    hist = run(
        learn=a.learn, steps=a.steps, batch=a.batch, num_poses=a.poses,
        true_loop_scale=a.true_loop_scale, lr=a.lr, device=a.device, dtype=getattr(torch, a.dtype),
        backward_mode=a.backward_mode,
        backward_num_iterations=a.backward_iterations if a.backward_mode == "truncated" else None,
        iterations=a.iterations, seed=a.seed,
    )
    truth = [a.true_loop_scale] if a.learn == "scales" else list(TRUE_BIAS)
    fmt = lambda v: "(" + ", ".join(f"{x:.4f}" for x in v) + ")"
    print(f"loss {hist[0].loss:.6f} → {hist[-1].loss:.6f}; learned {fmt(hist[0].learned)} → "
          f"{fmt(hist[-1].learned)} (true {fmt(truth)})")


if __name__ == "__main__":
    main()
