"""Comparing an estimate with the generated truth: alignment on the first pose, translation and
rotation RMSE (for tests and examples; ``posegraph eval`` has the evo-style ATE/RPE).
"""

from __future__ import annotations

from typing import Union
import torch
from posegraph.graph import PoseGraph
from posegraph.synthetic.graphs import F64, _between, _compose, _wrap


def _pose_tensor(x: Union[PoseGraph, torch.Tensor]) -> torch.Tensor:
    if isinstance(x, PoseGraph):
        if x.poses is None:
            raise ValueError("the graph has no poses")
        return x.poses
    return x


def _kind_of(t: torch.Tensor) -> str:
    return "SE3" if t.shape[-2:] == (3, 4) else "SE2"


def align_to_first(
    estimate: Union[PoseGraph, torch.Tensor], truth: Union[PoseGraph, torch.Tensor]
) -> torch.Tensor:
    """The estimated poses moved rigidly so that the first one equals the truth's first:
    ``A · Xₖ`` with ``A = T₀ · X₀⁻¹`` (the gauge of a graph anchored at its first pose)."""
    est, ref = _pose_tensor(estimate), _pose_tensor(truth)
    kind = _kind_of(est)
    est = est.to(F64)
    ref = ref.to(dtype=F64, device=est.device)
    a = _compose(kind, ref[:1], _wrap(kind, est[:1]).inverse().tensor)
    return _compose(kind, a.expand(est.shape[0], *a.shape[1:]), est)


def _translations(poses: torch.Tensor) -> torch.Tensor:
    return poses[..., :, 3] if _kind_of(poses) == "SE3" else poses[..., :2]


def translation_rmse(
    estimate: Union[PoseGraph, torch.Tensor],
    truth: Union[PoseGraph, torch.Tensor],
    align: bool = True,
) -> float:
    """Root-mean-square distance between estimated and true positions (after
    :func:`align_to_first` when ``align``)."""
    est = align_to_first(estimate, truth) if align else _pose_tensor(estimate).to(F64)
    ref = _pose_tensor(truth).to(dtype=F64, device=est.device)
    d = _translations(est) - _translations(ref)
    return float(torch.sqrt((d * d).sum(dim=-1).mean()))


def rotation_rmse(
    estimate: Union[PoseGraph, torch.Tensor],
    truth: Union[PoseGraph, torch.Tensor],
    align: bool = True,
) -> float:
    """Root-mean-square rotation angle (radians) of ``Tₖ⁻¹ Xₖ`` (after alignment)."""
    est = align_to_first(estimate, truth) if align else _pose_tensor(estimate).to(F64)
    ref = _pose_tensor(truth).to(dtype=F64, device=est.device)
    kind = _kind_of(est)
    log = _wrap(kind, _between(kind, ref, est)).log_map()
    ang = log[:, 3:].norm(dim=-1) if kind == "SE3" else log[:, 2].abs()
    return float(torch.sqrt((ang * ang).mean()))
