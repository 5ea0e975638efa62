"""Accuracy of PoseGraphLayer's gradients: implicit, truncated and unroll against finite
differences.

    .venv/bin/python benchmarks/gradient_accuracy.py [--poses 8] [--seed 0] [--step 1e-5]
                 [--truncated-k 3] [--json]

An SE(3) graph of ``--poses`` poses (a chain plus three loop closures, random true poses, unit
information; the first pose fixed) is solved in float64 from a perturbed start, at three noise
levels of the measurements ``Z = X_i⁻¹ X_j · Exp(n)``, ``n = (translation, rotation)`` with
``σ_t / σ_r`` = 0 (consistent), 0.01 / 0.005 and 0.1 / 0.05. The loss is a fixed random linear
function of the optimized poses; its gradient with respect to tangent perturbations ``ε`` of the
measurements (``Z · Exp(ε)``, one 6-vector per edge) is taken with each backward mode and by
central differences of fully converged solves (step ``--step``). The table gives the relative
error ``‖g − g_fd‖ / ‖g_fd‖`` per mode and noise level.

What each mode approximates. Implicit differentiates one Gauss–Newton step at the solution
with the Hessian held constant: ``JᵀJ`` leaves out the residuals' second-order term
``Σ eᵢ ∇²eᵢ`` (the Gauss–Newton approximation, the same as Theseus' own implicit mode: Pineda
et al. 2022, "Theseus: A Library for Differentiable Nonlinear Optimization", §3.2). At a
consistent graph ``e = 0``, the term vanishes and implicit is exact up to the finite
differences; its error grows with the residuals. Truncated (Theseus' mode, as is) runs up to k
more LM steps from the solution with autograd on and differentiates them: each step multiplies
the error of the one before by ``I − (JᵀJ + λD)⁻¹ H`` (``H`` the true Hessian), so it ends
between implicit (one step: the Gauss–Newton error, as at σ 0.1 / 0.05 below, where the
convergence test stops the loop after one step) and unroll. Unroll differentiates every LM step
as taken: exact in the limit, up to the damping's share of the last steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Dict, List

import theseus as th
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from posegraph import PoseGraphLayer, SolverOptions  # noqa: E402

NOISE_LEVELS = ((0.0, 0.0), (0.01, 0.005), (0.1, 0.05))  # (σ translation, σ rotation)
D = torch.float64


def exp_se3(tangent: torch.Tensor) -> torch.Tensor:
    """``Exp`` of ``(…, 6)`` tangent vectors (translation then rotation) as ``(…, 3, 4)``."""
    flat = tangent.reshape(-1, 6)
    return th.SE3.exp_map(flat).tensor.reshape(*tangent.shape[:-1], 3, 4)


def compose(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a · b`` for ``(…, 3, 4)`` poses."""
    rot = a[..., :3] @ b[..., :3]
    trans = (a[..., :3] @ b[..., 3:]) + a[..., 3:]
    return torch.cat([rot, trans], dim=-1)


def inverse(a: torch.Tensor) -> torch.Tensor:
    rt = a[..., :3].transpose(-1, -2)
    return torch.cat([rt, -(rt @ a[..., 3:])], dim=-1)


def make_graph(n: int, seed: int, sigma_t: float, sigma_r: float):
    """True poses, edges, noisy measurements, unit information and a perturbed start."""
    gen = torch.Generator().manual_seed(seed)
    truth = exp_se3(torch.cat([torch.randn(n, 3, generator=gen, dtype=D) * 2.0,
                               torch.randn(n, 3, generator=gen, dtype=D)], dim=-1))
    pairs = [(k, k + 1) for k in range(n - 1)] + [(0, n // 2), (1, n - 1), (2, n - 2)]
    edges = torch.tensor(pairs, dtype=torch.long)
    rel = compose(inverse(truth[edges[:, 0]]), truth[edges[:, 1]])
    noise = torch.cat([torch.randn(len(pairs), 3, generator=gen, dtype=D) * sigma_t,
                       torch.randn(len(pairs), 3, generator=gen, dtype=D) * sigma_r], dim=-1)
    measurements = compose(rel, exp_se3(noise))
    information = torch.eye(6, dtype=D).expand(len(pairs), 6, 6).clone()
    start_noise = torch.randn(n, 6, generator=gen, dtype=D) * 0.05
    start_noise[0] = 0.0
    start = compose(truth, exp_se3(start_noise))
    return edges, measurements, information, start


def relative_errors(n: int, seed: int, step: float, k: int) -> List[Dict[str, float]]:
    options = SolverOptions(max_iterations=100, rel_tolerance=1e-15, abs_tolerance=1e-20)
    rows = []
    for sigma_t, sigma_r in NOISE_LEVELS:
        edges, z, info, start = make_graph(n, seed, sigma_t, sigma_r)
        layer = PoseGraphLayer("SE3", edges, options=options)
        weights = torch.randn(n, 3, 4, generator=torch.Generator().manual_seed(seed + 1), dtype=D)

        def loss(eps: torch.Tensor, mode: str = "implicit") -> torch.Tensor:
            meas = compose(z, exp_se3(eps))
            out, _ = layer(start[None], meas[None], info[None], backward_mode=mode,
                           backward_num_iterations=k if mode == "truncated" else None)
            return (out[0] * weights).sum()

        zero = torch.zeros(len(edges), 6, dtype=D)
        fd = torch.zeros_like(zero)
        with torch.no_grad():
            for e in range(len(edges)):
                for c in range(6):
                    bump = torch.zeros_like(zero)
                    bump[e, c] = step
                    fd[e, c] = (loss(bump) - loss(-bump)) / (2 * step)
        row: Dict[str, float] = {"sigma_translation": sigma_t, "sigma_rotation": sigma_r}
        for mode in ("implicit", "truncated", "unroll"):
            eps = zero.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(loss(eps, mode), eps)
            row[mode] = float((grad - fd).norm() / fd.norm())
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--poses", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step", type=float, default=1e-5, help="central-difference step")
    parser.add_argument("--truncated-k", type=int, default=3, help="iterations differentiated in truncated mode")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Vectorization is off by default")
    rows = relative_errors(args.poses, args.seed, args.step, args.truncated_k)
    if args.json:
        print(json.dumps(rows))
        return
    print(f"relative gradient error ‖g − g_fd‖/‖g_fd‖, {args.poses} SE3 poses, float64, "
          f"central differences (step {args.step:g}), truncated k = {args.truncated_k}")
    print(f"{'noise σ_t / σ_r':>16} | {'implicit':>9} | {'truncated':>9} | {'unroll':>9}")
    print("-" * 17 + "+" + "-" * 11 + "+" + "-" * 11 + "+" + "-" * 10)
    for r in rows:
        label = "0" if r["sigma_translation"] == 0 else f"{r['sigma_translation']:g} / {r['sigma_rotation']:g}"
        print(f"{label:>16} | {r['implicit']:9.1e} | {r['truncated']:9.1e} | {r['unroll']:9.1e}")


if __name__ == "__main__":
    main()
