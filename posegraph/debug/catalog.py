"""The debug tools' view of an objective: every cost function, unwrapped from robust and packed
wrappers, with its elements' errors and Jacobian blocks evaluated at the current values
(vectorized costs by block, others as Theseus computes them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple
import numpy as np
import theseus as th
import torch
from posegraph.model.costs import BlockSparseCostFunction
from posegraph.model.edge import unwrap_cost
from posegraph.model.names import ElementNames, NameFilter


@dataclass
class _LayoutEntry:
    variable: th.Variable
    rows: np.ndarray
    elements: np.ndarray
    direct: bool  # rows == arange(num_blocks): one Jacobian block per residual block


@dataclass
class _CostEntry:
    """Static facts about one cost function of an objective."""

    cost: th.CostFunction
    block: bool
    names: List[str]  # one per residual block (generic costs: [cost.name])
    type_name: str
    num_jacobians: int
    layout: List[_LayoutEntry]
    selected: np.ndarray  # indices of blocks that get per-cost records

    @property
    def num_blocks(self) -> int:
        return len(self.names)

    def block_of_row(self, local_row: int) -> int:
        return local_row // self.cost.block_dim if self.block else 0

    def variables(self, block: int, names: ElementNames, entries: Optional[Iterable[int]] = None) -> List[str]:
        """Names of the variables (elements) of residual block ``block`` (optionally only
        those of the given layout entries / optimization variable positions)."""
        keep = None if entries is None else set(entries)
        out: List[str] = []
        if not self.block:
            for k, var in enumerate(self.cost.optim_vars):
                if keep is None or k in keep:
                    out.append(var.name)
            return out
        for k, lay in enumerate(self.layout):
            if keep is not None and k not in keep:
                continue
            for el in lay.elements[lay.rows == block].tolist():
                name = names(lay.variable, int(el))
                if name not in out:
                    out.append(name)
        return out


class _Catalog:
    """Names, layout and selection of every cost function of an objective (built once)."""

    def __init__(self, objective: th.Objective, names: ElementNames, name_filter: NameFilter):
        self.objective = objective
        self.version = objective.current_version
        self.element_names = names
        self.entries: List[_CostEntry] = []
        self.by_id: Dict[int, _CostEntry] = {}
        used: Dict[str, int] = {}

        def unique(name: str) -> str:
            count = used.get(name, 0) + 1
            used[name] = count
            return name if count == 1 else f"{name} ({count})"

        for cost in objective.cost_functions.values():
            cost = unwrap_cost(cost)
            block = isinstance(cost, BlockSparseCostFunction)
            layout: List[_LayoutEntry] = []
            if block:
                cnames = [unique(cost.block_name(i)) for i in range(cost.num_blocks)]
                for lay in cost.block_layout():
                    rows = lay.rows.detach().cpu().numpy()
                    direct = len(rows) == cost.num_blocks and bool(
                        (rows == np.arange(cost.num_blocks)).all()
                    )
                    layout.append(
                        _LayoutEntry(lay.variable, rows, lay.elements.detach().cpu().numpy(), direct)
                    )
                num_jac = len(layout)
                selected = np.array(
                    [i for i, n in enumerate(cnames) if name_filter(n, cost.name)], dtype=np.int64
                ) if not name_filter.selects_all else np.arange(len(cnames))
            else:
                cnames = [unique(cost.name)]
                num_jac = len(list(cost.optim_vars))
                selected = np.arange(1) if name_filter(cost.name) else np.zeros(0, dtype=np.int64)
            entry = _CostEntry(cost, block, cnames, type(cost).__name__, num_jac, layout, selected)
            self.entries.append(entry)
            self.by_id[id(cost)] = entry

    def fresh_for(self, objective: th.Objective) -> bool:
        return objective is self.objective and objective.current_version == self.version


def _safe_norm(x: torch.Tensor, dims: Tuple[int, ...]) -> torch.Tensor:
    """2-norm over ``dims`` without overflow for huge finite entries (NaN stays NaN, inf inf)."""
    if x.numel() == 0:
        return x.new_zeros(x.shape[: x.ndim - len(dims)])
    scale = x.detach().abs().amax(dim=dims, keepdim=True)
    ok = torch.isfinite(scale) & (scale > 0)
    scale = torch.where(ok, scale, torch.ones_like(scale))
    norm = torch.linalg.vector_norm(x / scale, dim=dims)
    return norm * scale.reshape(norm.shape)


def _np_hypot(values: np.ndarray) -> float:
    """Overflow-safe ``sqrt(Σ v²)`` of a 1-D array (NaN/inf propagate)."""
    if values.size == 0:
        return 0.0
    if not np.isfinite(values).all():
        return float("nan") if np.isnan(values).any() else float("inf")
    m = float(np.abs(values).max())
    if m == 0.0:
        return 0.0
    return m * float(np.sqrt(np.sum(np.square(values / m))))


@dataclass
class _CostStats:
    """One cost function's per-block norms and non-finite flags (CPU, batch-reduced)."""

    entry: _CostEntry
    error_norm: np.ndarray  # (R,) mean over batch of ‖W e‖
    error_bad: np.ndarray  # (R,) ½‖We‖² non-finite in some batch element
    jac_norm: np.ndarray  # (R, L) mean over batch of ‖J‖ per layout entry / variable
    jac_bad: np.ndarray  # (R, L) a non-finite Jacobian entry in some batch element


def _block_tensors(entry: _CostEntry) -> List[torch.Tensor]:
    cost: BlockSparseCostFunction = entry.cost  # type: ignore[assignment]
    jacs, err = cost.weighted_block_jacobians_error()  # [(Bj, K, d, e)], (B, R, d)
    r = cost.num_blocks
    e_norm = _safe_norm(err, (-1,)).mean(0)
    e_bad = (~torch.isfinite(err.square().sum(-1))).any(0)
    norms, bads = [], []
    for jac, lay in zip(jacs, entry.layout):
        n = _safe_norm(jac, (-2, -1))  # (Bj, K)
        bad = (~torch.isfinite(jac)).flatten(-2).any(-1)  # (Bj, K)
        if lay.direct:
            norms.append(n.mean(0))
            bads.append(bad.any(0))
        else:  # several (or no) Jacobian blocks per residual block: combine per row
            rows = torch.as_tensor(lay.rows, device=jac.device)
            sq = n.new_zeros(n.shape[0], r).index_add(1, rows, n.square())
            norms.append(sq.sqrt().mean(0))
            cnt = n.new_zeros(n.shape[0], r).index_add(1, rows, bad.to(n.dtype))
            bads.append((cnt > 0).any(0))
    jn = torch.stack(norms, 1) if norms else err.new_zeros(r, 0)
    jb = torch.stack(bads, 1) if bads else torch.zeros(r, 0, dtype=torch.bool, device=err.device)
    return [e_norm, e_bad, jn, jb]


def _generic_tensors(entry: _CostEntry) -> List[torch.Tensor]:
    jacs, err = entry.cost.weighted_jacobians_error()  # [(B, dim, dof)], (B, dim)
    e_norm = _safe_norm(err, (-1,)).mean(0, keepdim=True)
    e_bad = (~torch.isfinite(err.square().sum(-1))).any(0, keepdim=True)
    if jacs:
        jn = torch.stack([_safe_norm(j, (-2, -1)).mean(0) for j in jacs]).unsqueeze(0)
        jb = torch.stack([(~torch.isfinite(j)).any() for j in jacs]).unsqueeze(0)
    else:
        jn = err.new_zeros(1, 0)
        jb = torch.zeros(1, 0, dtype=torch.bool, device=err.device)
    return [e_norm, e_bad, jn, jb]


def _evaluate(catalog: _Catalog) -> List[_CostStats]:
    """Weighted errors and Jacobians of every cost at the current state → per-block stats,
    with one device→host copy for all cost functions."""
    pieces: List[torch.Tensor] = []
    shapes: List[Tuple[int, int]] = []
    with torch.no_grad():
        for entry in catalog.entries:
            t = _block_tensors(entry) if entry.block else _generic_tensors(entry)
            r, l = t[2].shape
            shapes.append((r, l))
            pieces.extend(x.detach().reshape(-1).to(torch.float64) for x in t)
        if not pieces:
            return []
        flat = torch.cat([p.to(pieces[0].device) for p in pieces]).cpu().numpy()
    out: List[_CostStats] = []
    pos = 0
    for entry, (r, l) in zip(catalog.entries, shapes):
        parts = []
        for size in (r, r, r * l, r * l):
            parts.append(flat[pos : pos + size])
            pos += size
        out.append(
            _CostStats(
                entry,
                parts[0],
                parts[1] > 0,
                parts[2].reshape(r, l),
                parts[3].reshape(r, l) > 0,
            )
        )
    return out
