"""Batched solving with PoseGraphLayer: one graph, B noisy copies in one call, vs one by one.

    .venv/bin/python benchmarks/gpu_layer.py [--config configs/batched_gpu.yaml] [--device cuda]
                 [--batch-size 32] [--input FILE] [--linear-solver auto] [--dtype float64] [--json]

Options are those of ``posegraph.cli.config.layer_parser()`` (a ``--config`` file gives their
defaults; flags win). On ``--device`` (``auto``: cuda when available, else cpu) it measures, for
sphere2500 (or ``--input``, initialized as the CLI does):

1. a single solve (first call, which builds the objective and solver, and a warm call);
2. ``--batch-size`` noisy copies (measurements ``Z · Exp(n)``, ``n ~ N(0, σ²)``, same initial
   guess) in one batched call;
3. the same copies solved one after another on the CPU with posegraph's CHOLMOD path, and
   with GTSAM's Levenberg–Marquardt when ``gtsam`` is importable (``pip install gtsam``;
   never a runtime dependency);

and prints times, throughput (problems per second) and the ratios, plus the largest
difference in final error between the batched and one-by-one solves (they should agree).
``--sequential N`` times only the first N copies one by one and extrapolates (said so in the
output). Figures on a shared or loaded machine are noisy: repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional

import theseus as th
import torch

import posegraph as pg
from posegraph.cli.config import layer_parser, parse_with_config, resolve_device

warnings.filterwarnings("ignore")
DEFAULT_DATASET = (
    Path(os.environ.get("POSEGRAPH_DATASETS", Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "g2o"))
    / "sphere2500.g2o"
)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def noisy_copies(graph: pg.PoseGraph, batch: int, sigma_t: float, sigma_r: float, seed: int) -> torch.Tensor:
    """``(B, E, *shape)`` measurements ``Z · Exp(n)`` with tangent noise σ (translation, rotation)."""
    gen = torch.Generator().manual_seed(seed)
    cls, shape, dof = pg.graph.POSE_KINDS[graph.kind]
    nt = 3 if graph.kind == "SE3" else 2
    sig = torch.tensor([sigma_t] * nt + [sigma_r] * (dof - nt), dtype=torch.float64)
    e = graph.num_edges
    n = torch.randn(batch * e, dof, generator=gen, dtype=torch.float64) * sig
    z = graph.measurements.expand(batch, e, *shape).reshape(batch * e, *shape)
    return cls(tensor=z).compose(cls.exp_map(n)).tensor.reshape(batch, e, *shape)


def timed(fn, device: torch.device):
    synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - t0


def run_layer(layer: pg.PoseGraphLayer, poses, meas, info, device) -> Dict[str, Any]:
    with torch.no_grad():
        (out, res), secs = timed(lambda: layer(poses, meas, info), device)
    return {
        "time_s": secs,
        "iterations": res.iterations.tolist(),
        "final_error": res.final_error.cpu().tolist(),
        "status": res.status,
        "linear_solver": res.linear_solver,
    }


def gtsam_sequential(graph: pg.PoseGraph, meas: torch.Tensor, count: int) -> Optional[Dict[str, Any]]:
    """GTSAM LM (GTSAM's defaults, tolerances 1e-10 as the CLI) on the first ``count`` copies."""
    try:
        import gtsam  # type: ignore
    except ImportError:
        return None
    import numpy as np

    is3d = graph.kind == "SE3"
    poses = graph.poses.numpy()
    info = graph.information.numpy()
    fixed = graph.gauge_fixed().numpy()

    def pose(t: np.ndarray):
        if is3d:
            return gtsam.Pose3(gtsam.Rot3(t[:, :3]), t[:, 3])
        return gtsam.Pose2(t[0], t[1], float(np.arctan2(t[3], t[2])))

    errors, t0 = [], time.perf_counter()
    for b in range(count):
        g = gtsam.NonlinearFactorGraph()
        initial = gtsam.Values()
        for k in range(graph.num_poses):
            initial.insert(k, pose(poses[k]))
        z = meas[b].numpy()
        factor = gtsam.BetweenFactorPose3 if is3d else gtsam.BetweenFactorPose2
        for k, (i, j) in enumerate(graph.edges.tolist()):
            g.add(factor(i, j, pose(z[k]), gtsam.noiseModel.Gaussian.Information(info[k])))
        prior = gtsam.PriorFactorPose3 if is3d else gtsam.PriorFactorPose2
        for k in np.flatnonzero(fixed):
            g.add(prior(int(k), pose(poses[k]), gtsam.noiseModel.Isotropic.Sigma(6 if is3d else 3, 1e-6)))
        params = gtsam.LevenbergMarquardtParams()
        params.setRelativeErrorTol(1e-10)
        params.setAbsoluteErrorTol(1e-10)
        params.setMaxIterations(100)
        result = gtsam.LevenbergMarquardtOptimizer(g, initial, params).optimize()
        errors.append(g.error(result))
    return {"time_s": time.perf_counter() - t0, "count": count, "final_error": errors}


def main(argv: Optional[List[str]] = None) -> int:
    ap = layer_parser()  # the keys of configs/batched_gpu.yaml (schema "layer")
    ap.description = __doc__.splitlines()[0]
    ap.add_argument("--sequential", type=int, default=None, metavar="N",
                    help="solve only N copies one by one and extrapolate (default: all)")
    ap.add_argument("--json", action="store_true")
    a = parse_with_config(ap, argv)
    a.input = Path(a.input) if a.input else DEFAULT_DATASET
    device, dtype = resolve_device(a.device), getattr(torch, a.dtype)
    options = pg.SolverOptions(solver=a.solver, max_iterations=a.max_iters, linear_solver=a.linear_solver)

    graph = pg.initialize(pg.read_g2o(a.input))
    meas = noisy_copies(graph, a.batch_size, a.translation_sigma, a.rotation_sigma, a.seed)
    to = dict(device=device, dtype=dtype)
    poses, info = graph.poses.to(**to), graph.information.to(**to)
    gpu_layer = pg.PoseGraphLayer(graph, options=options)
    out: Dict[str, Any] = {
        "dataset": str(a.input), "poses": graph.num_poses, "edges": graph.num_edges,
        "device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": a.dtype, "batch": a.batch_size,
    }
    out["single_first"] = run_layer(gpu_layer, poses, meas[:1].to(**to), info, device)
    out["single"] = run_layer(gpu_layer, poses, meas[:1].to(**to), info, device)
    out["batched"] = run_layer(gpu_layer, poses.expand(a.batch_size, *poses.shape), meas.to(**to), info, device)

    count = min(a.sequential or a.batch_size, a.batch_size)
    cpu_layer = pg.PoseGraphLayer(graph, options=pg.SolverOptions(solver=a.solver, max_iterations=a.max_iters))
    cpu_layer(graph.poses, meas[:1], graph.information)  # build once (not timed)
    seq_err, t0 = [], time.perf_counter()
    for b in range(count):
        with torch.no_grad():
            _, r = cpu_layer(graph.poses, meas[b : b + 1], graph.information)
        seq_err.append(float(r.final_error[0]))
    out["sequential_cpu"] = {"time_s": time.perf_counter() - t0, "count": count, "final_error": seq_err}
    out["gtsam_sequential"] = gtsam_sequential(graph, meas, count)

    per = lambda r: r["time_s"] / r["count"]  # noqa: E731
    batched_rate = a.batch_size / out["batched"]["time_s"]
    out["throughput"] = {
        "batched_per_s": batched_rate,
        "sequential_cpu_per_s": 1.0 / per(out["sequential_cpu"]),
        "ratio_vs_sequential_cpu": batched_rate * per(out["sequential_cpu"]),
    }
    if out["gtsam_sequential"] is not None:
        out["throughput"]["gtsam_per_s"] = 1.0 / per(out["gtsam_sequential"])
        out["throughput"]["ratio_vs_gtsam"] = batched_rate * per(out["gtsam_sequential"])
    diff = [abs(x - y) / max(abs(y), 1e-12) for x, y in zip(out["batched"]["final_error"], seq_err)]
    out["max_rel_error_difference_batched_vs_sequential"] = max(diff) if diff else None
    if a.json:
        print(json.dumps(out, indent=1))
        return 0
    b = out["batched"]
    print(f"{a.input.name}: {graph.num_poses} poses, {graph.num_edges} edges on {out['device_name']} ({a.dtype}), "
          f"linear solver {b['linear_solver']}")
    print(f"  single solve   first call {out['single_first']['time_s']:8.3f} s   warm {out['single']['time_s']:8.3f} s "
          f"({out['single']['iterations'][0]} it, error {out['single']['final_error'][0]:.6g})")
    print(f"  batched x{a.batch_size:<4d} {b['time_s']:8.3f} s   {batched_rate:8.3f} problems/s "
          f"(iterations {min(b['iterations'])}–{max(b['iterations'])}, {b['status'].count('converged')} converged)")
    extra = f" (first {count} of {a.batch_size}, extrapolated)" if count < a.batch_size else ""
    s = out["sequential_cpu"]
    print(f"  one by one, posegraph CPU  {s['time_s']:8.3f} s for {count}{extra}   "
          f"{out['throughput']['sequential_cpu_per_s']:8.3f} problems/s   "
          f"batched/sequential throughput {out['throughput']['ratio_vs_sequential_cpu']:.2f}×")
    if out["gtsam_sequential"] is not None:
        g = out["gtsam_sequential"]
        print(f"  one by one, GTSAM          {g['time_s']:8.3f} s for {count}{extra}   "
              f"{out['throughput']['gtsam_per_s']:8.3f} problems/s   "
              f"batched/GTSAM throughput {out['throughput']['ratio_vs_gtsam']:.2f}×")
    else:
        print("  GTSAM: not importable (pip install gtsam), skipped")
    print(f"  final errors, batched vs one by one: max relative difference "
          f"{out['max_rel_error_difference_batched_vs_sequential']:.2e}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except pg.PoseGraphError as err:  # e.g. --device cuda without CUDA, a bad --config file
        raise SystemExit(f"error: {err}") from None
