"""Train PoseGraphLayer's learnable noise weights with DistributedDataParallel (torchrun).

The dataset holds noisy copies of one synthetic Manhattan-world topology
(``posegraph.synthetic.grid_se2``): graph i gets odometry noise of scale 1 and loop-closure
noise of scale ``--true-loop-scale`` (times the per-axis base sigmas), drawn from a generator
seeded with ``(seed, i)`` so every process builds the same data. A
:class:`posegraph.PoseGraphLayer` with one learnable weight per edge kind (odometry, loop
closure) solves each batch; the loss is the mean squared position error against the truth and
Adam updates the weights through the solve (implicit differentiation), as in
``examples/learn_noise_scales.py``.

Each step takes a global batch of ``--batch`` graphs; ``DistributedSampler`` gives every
process ``batch / world`` of them. Each process's loss is the sum of its graphs' losses
times ``world / batch``: ``loss_r = Σ_local ℓᵢ · world / batch``. DDP averages the
gradients over processes (``(1/world) Σ_r ∇loss_r``, https://pytorch.org/docs/stable/notes/ddp.html),
which is then ``∇ (Σ_all ℓᵢ / batch)``: the gradient of the full batch's mean loss, so 1 and N
processes take the same steps.

    torchrun --nproc_per_node 2 examples/train_ddp.py            # gloo on CPU
    torchrun --nproc_per_node 4 examples/train_ddp.py --device cuda   # NCCL, one GPU per process
    python examples/train_ddp.py                                  # one process, no torchrun

On rank 0 the last stdout line is one JSON object ``{"params": [...], ...}``: the learned
parameters, flattened.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import List, Tuple

import theseus as th
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler

import posegraph as pg
from posegraph.synthetic.graphs import grid_se2

BASE_SIGMAS = (0.05, 0.05, 0.01)  # x, y (m), θ (rad): the scale-1 noise


class NoisyGraphs(Dataset):
    """``size`` noisy copies of one grid_se2 topology (one block, so short walks close loops): item i is ``(initial poses (N, 4),
    measurements (E, 4))``; the noise of item i depends only on ``(seed, i)``."""

    def __init__(self, size: int, num_poses: int, true_loop_scale: float, seed: int = 0):
        _, self.truth = grid_se2(
            width=1, height=1, num_poses=num_poses, seed=seed, closure_radius=1.5, max_closures_per_pose=2
        )
        self.size, self.seed = size, seed
        self.is_loop = self.truth.extras["loop_closure"]
        sigma = torch.tensor(BASE_SIGMAS, dtype=torch.float64)
        self.scale = torch.where(self.is_loop, true_loop_scale, 1.0).to(torch.float64)[:, None] * sigma
        # the information every graph is solved with: the odometry's, on every edge (the
        # layer's per-kind weights learn how much less the loop closures are to be trusted)
        self.information = torch.diag(1.0 / sigma**2).expand(self.truth.num_edges, 3, 3).clone()
        self.topology = pg.PoseGraph(
            kind="SE2", ids=self.truth.ids, poses=None, edges=self.truth.edges,
            measurements=self.truth.measurements, information=self.information, fixed=self.truth.fixed,
        )

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(i))
        e = self.truth.num_edges
        noise = torch.randn(e, 3, generator=gen, dtype=torch.float64) * self.scale
        z = th.SE2(tensor=self.truth.measurements).compose(th.SE2.exp_map(noise)).tensor
        chain = [self.truth.poses[:1]]
        for k in range(self.truth.num_poses - 1):  # odometry edges come first: (k, k+1)
            chain.append(th.SE2(tensor=chain[-1]).compose(th.SE2(tensor=z[k : k + 1])).tensor)
        return torch.cat(chain), z


def _setup() -> Tuple[int, int, int]:
    """Join the process group torchrun describes (rank, world size, local rank); one process
    without torchrun's variables."""
    if "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    backend = "nccl" if torch.cuda.is_available() and os.environ.get("POSEGRAPH_DDP_DEVICE") == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))


def train(
    steps: int = 4,
    batch: int = 4,
    size: int = 8,
    num_poses: int = 30,
    true_loop_scale: float = 4.0,
    lr: float = 0.1,
    seed: int = 0,
    device: str = "cpu",
    verbose: bool = True,
) -> List[float]:
    """Train for ``steps`` steps of a global batch of ``batch`` graphs; returns the learned
    parameters, flattened (the same on every process)."""
    if device == "cuda":
        os.environ["POSEGRAPH_DDP_DEVICE"] = "cuda"
    rank, world, local_rank = _setup()
    if batch % world:
        raise SystemExit(f"error: --batch {batch} must be a multiple of the {world} processes")
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # the processes share the machine's cores
    dev = torch.device(f"cuda:{local_rank}" if device == "cuda" else "cpu")
    data = NoisyGraphs(size, num_poses, true_loop_scale, seed)
    layer = pg.PoseGraphLayer(
        data.topology,
        options=pg.SolverOptions(  # fixed choices, so a graph's solve never depends on its batch
            max_iterations=30, rel_tolerance=1e-10, abs_tolerance=1e-12,
            linear_solver="cholmod" if dev.type == "cpu" else "auto", reuse_factor=False,
        ),
        weights="kind",
        edge_kinds=data.is_loop.long(),
    ).to(device=dev, dtype=torch.float64)
    model = layer
    if world > 1 or dist.is_initialized():
        model = torch.nn.parallel.DistributedDataParallel(layer, device_ids=[local_rank] if dev.type == "cuda" else None)
    local = batch // world
    sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    loader = DataLoader(data, batch_size=local, sampler=sampler, drop_last=True)
    optim = torch.optim.Adam(layer.parameters(), lr=lr)
    info = data.information.to(dev)
    true_xy = data.truth.poses[:, :2].to(dev)
    step, epoch = 0, 0
    while step < steps:
        sampler.set_epoch(epoch)
        for initial, z in loader:
            poses, _ = model(initial.to(dev), z.to(dev), info)
            per_graph = (poses[..., :2] - true_xy).pow(2).sum(-1).mean(-1)  # (local,)
            loss = per_graph.sum() * world / batch  # DDP's gradient average = the full-batch mean's
            optim.zero_grad()
            loss.backward()
            optim.step()
            shown = loss.detach().clone()
            if dist.is_initialized():
                dist.all_reduce(shown)
                shown /= world
            step += 1
            if verbose and rank == 0:
                ratio = torch.exp(layer.log_weight[0] - layer.log_weight[1]).item()
                print(f"step {step:3d}  loss {shown.item():.8f}  σ_loop/σ_odom {ratio:.4f}", flush=True)
            if step == steps:
                break
        epoch += 1
    params = torch.cat([p.detach().reshape(-1).cpu() for p in layer.parameters()]).tolist()
    if dist.is_initialized():
        dist.barrier()  # every rank done communicating before any tears its group down (a rank
        dist.destroy_process_group()  # destroyed early can abort a peer's gloo thread at exit)
    return params if rank == 0 else []


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=4, help="training steps (default 4)")
    p.add_argument("--batch", type=int, default=4, help="global batch: graphs per step over all processes")
    p.add_argument("--size", type=int, default=8, help="graphs in the dataset")
    p.add_argument("--poses", type=int, default=30, help="poses per graph")
    p.add_argument("--true-loop-scale", type=float, default=4.0)
    p.add_argument("--lr", type=float, default=0.1, help="Adam step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: NCCL, one GPU per process")
    a = p.parse_args(argv)
    params = train(a.steps, a.batch, a.size, a.poses, a.true_loop_scale, a.lr, a.seed, a.device)
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps({"params": params}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
