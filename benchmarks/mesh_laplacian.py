"""Benchmark posegraph.mesh on a ~10k-vertex icosphere (icosphere(5): 10242 vertices).

Measures, for uniform and cotangent weights:

* building a :class:`~posegraph.mesh.LaplacianSmoothingCost` (first call and median),
* one ``block_jacobians()`` + ``block_error()`` evaluation (median of ``--repeats``),
* one ``weighted_block_jacobians_error()`` (what a block-sparse solver asks for),
* ``taubin_smooth`` (10 λ|μ pairs) forward + backward with vertices that require grad,
* on CPU, a pose graph whose landmarks are the mesh's vertices (``synthetic.mesh_observations``):
  ``build_problem``, one linearization, one CHOLMOD factorization + solve and the LM time per
  iteration, without and with the Laplacian regularizer — the differences are what it adds.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/mesh_laplacian.py [--subdivisions 5]
        [--repeats 7] [--batch 1] [--device cpu] [--dtype float64] [--threads N] [--json]

On a shared or loaded machine torch's intra-op thread pool can stall badly (timings vary by
10×); the report records the load average, and ``--threads 1`` gives steadier figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List

if __package__ in (None, ""):  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from posegraph.model.build import build_problem, mesh_term  # noqa: E402
from posegraph.model.mesh_cost import LaplacianSmoothingCost  # noqa: E402
from posegraph.mesh.shapes import icosphere
from posegraph.mesh.smoothing import taubin_smooth
from posegraph.solve.sparse_cholesky import CholmodSolver  # noqa: E402
from posegraph.solve.optimize import SolverOptions, optimize  # noqa: E402
from posegraph.synthetic.landmarks import mesh_observations  # noqa: E402
from posegraph.model.variables import ManifoldArray  # noqa: E402
import theseus as th  # noqa: E402
import torch  # noqa: E402


def _sync(device: torch.device) -> None:
    """Wait for queued CUDA work so wall-clock timings are meaningful."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], repeats: int, device: torch.device) -> Dict[str, float]:
    """Run ``fn`` once cold and ``repeats`` times warm; return seconds (first, median, min)."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - start
    samples: List[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        samples.append(time.perf_counter() - start)
    return {"first_s": first, "median_s": statistics.median(samples), "min_s": min(samples)}


def run(subdivisions: int, repeats: int, batch: int, device: str, dtype: str) -> Dict[str, object]:
    """Measure everything; returns a JSON-serializable dict."""
    dev = torch.device(device)
    dt = getattr(torch, dtype)
    verts, faces = icosphere(subdivisions, dtype=dt)
    verts, faces = verts.to(dev), faces.to(dev)
    g = torch.Generator().manual_seed(0)
    noise = 0.01 * torch.randn((batch, *verts.shape), generator=g, dtype=dt).to(dev)
    tensor = verts.unsqueeze(0) + noise
    var = ManifoldArray(tensor, th.Point3, name="verts")
    results: Dict[str, Dict[str, float]] = {}
    for kind in ("uniform", "cotangent"):
        results[f"build cost ({kind})"] = time_call(
            lambda: LaplacianSmoothingCost(var, faces, kind=kind), repeats, dev
        )
        scale = torch.rand(verts.shape[0], dtype=dt, device=dev)
        cost = LaplacianSmoothingCost(var, faces, kind=kind, weight=scale)

        def evaluate(cost: LaplacianSmoothingCost = cost) -> None:
            cost.block_jacobians()
            cost.block_error()

        results[f"block_jacobians+block_error ({kind})"] = time_call(evaluate, repeats, dev)
        results[f"weighted_block_jacobians_error ({kind})"] = time_call(
            cost.weighted_block_jacobians_error, repeats, dev
        )

        def taubin(kind: str = kind) -> None:
            x = tensor.detach().clone().requires_grad_(True)
            taubin_smooth(x, faces, iterations=10, weights=kind).square().sum().backward()

        results[f"taubin_smooth 10 iters fwd+bwd ({kind})"] = time_call(taubin, repeats, dev)
    if dev.type == "cpu" and batch == 1:
        results.update(_in_pose_graph(subdivisions, repeats, dt))
    return {
        "vertices": int(verts.shape[0]),
        "faces": int(faces.shape[0]),
        "batch": batch,
        "device": str(dev),
        "dtype": dtype,
        "repeats": repeats,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "timings": results,
    }


def _in_pose_graph(subdivisions: int, repeats: int, dtype: torch.dtype) -> Dict[str, Dict[str, float]]:
    """Poses + mesh-vertex landmarks, without/with the Laplacian regularizer (uniform, weight
    100): ``build_problem``, one linearization (costs' Jacobians placed in A), one CHOLMOD
    factorization + solve, and the LM time per iteration (solve to convergence ÷ iterations)."""
    noisy, _ = mesh_observations(subdivisions=subdivisions, num_poses=200, observations_per_pose=60)
    verts, faces = noisy.extras["mesh"]
    cpu = torch.device("cpu")
    reps = max(1, repeats // 2)
    out: Dict[str, Dict[str, float]] = {}
    for label, mesh in (("without mesh", None), ("with mesh", mesh_term(noisy, verts, faces, 100.0))):
        out[f"pose graph: build_problem ({label})"] = time_call(
            lambda: build_problem(noisy, mesh=mesh, dtype=dtype), reps, cpu
        )
        solver = CholmodSolver(build_problem(noisy, mesh=mesh, dtype=dtype).objective)
        out[f"pose graph: linearize ({label})"] = time_call(solver.linearization.linearize, reps, cpu)
        out[f"pose graph: CHOLMOD factor+solve ({label})"] = time_call(
            lambda: solver.solve(damping=1e-5), reps, cpu
        )
        per_iter: List[float] = []
        for _ in range(reps):
            problem = build_problem(noisy, mesh=mesh, dtype=dtype)
            start = time.perf_counter()
            result = optimize(problem, SolverOptions(solver="lm"))
            per_iter.append((time.perf_counter() - start) / max(result.iterations, 1))
        out[f"pose graph: LM time per iteration ({label})"] = {
            "first_s": per_iter[0], "median_s": statistics.median(per_iter), "min_s": min(per_iter)
        }
    return out


def print_table(report: Dict[str, object]) -> None:
    """Human-readable table in milliseconds."""
    print(
        f"icosphere: {report['vertices']} vertices, {report['faces']} faces, batch "
        f"{report['batch']}, {report['device']}, {report['dtype']}, torch {report['torch']}, "
        f"{report['threads']} threads, median of {report['repeats']}, "
        f"load average {report['loadavg_1min']}"
    )
    name_w = max(len(k) for k in report["timings"])
    print(f"{'measurement':<{name_w}}  {'first ms':>9}  {'median ms':>9}  {'min ms':>8}")
    for name, t in report["timings"].items():
        print(
            f"{name:<{name_w}}  {1e3 * t['first_s']:9.2f}  {1e3 * t['median_s']:9.2f}  "
            f"{1e3 * t['min_s']:8.2f}"
        )


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--subdivisions", type=int, default=5, help="icosphere level (5: 10242 verts)"
    )
    parser.add_argument("--repeats", type=int, default=7, help="warm repetitions per measurement")
    parser.add_argument("--batch", type=int, default=1, help="batch size B of the vertex tensor")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report = run(args.subdivisions, args.repeats, args.batch, args.device, args.dtype)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report)


if __name__ == "__main__":
    main()
