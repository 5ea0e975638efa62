"""Homogeneous matrices ↔ Theseus' pose layouts.

Theseus stores an SE3 pose as ``[R | t]`` ``(3, 4)`` and an SE2 pose as ``(x, y, cos, sin)``;
the initializations and the evaluation compose and compare poses as homogeneous matrices
``(k, k)`` (k = 4 for SE3, 3 for SE2) on NumPy.
"""

from __future__ import annotations

import numpy as np
import torch


def to_homogeneous(kind: str, tensors: torch.Tensor) -> np.ndarray:
    """Theseus layout ``(n, *shape)`` → homogeneous matrices ``(n, k, k)`` (k = 4 SE3, 3 SE2)."""
    t = tensors.detach().cpu().double().numpy()
    n = t.shape[0]
    if kind == "SE3":
        out = np.zeros((n, 4, 4))
        out[:, :3, :] = t
        out[:, 3, 3] = 1.0
        return out
    out = np.zeros((n, 3, 3))
    c, s = t[:, 2], t[:, 3]
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = c, -s, s, c
    out[:, 0, 2], out[:, 1, 2], out[:, 2, 2] = t[:, 0], t[:, 1], 1.0
    return out


def from_homogeneous(kind: str, mats: np.ndarray) -> torch.Tensor:
    """Homogeneous matrices → Theseus layout (float64); SE2's (cos, sin) is renormalized,
    which keeps it unit after long products."""
    if kind == "SE3":
        return torch.as_tensor(mats[:, :3, :].copy(), dtype=torch.float64)
    c, s = mats[:, 0, 0], mats[:, 1, 0]
    norm = np.hypot(c, s)
    return torch.as_tensor(
        np.stack([mats[:, 0, 2], mats[:, 1, 2], c / norm, s / norm], axis=1), dtype=torch.float64
    )
