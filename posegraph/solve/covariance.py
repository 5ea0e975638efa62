"""Marginal covariances of the optimized poses, by selected inversion of the sparse factor.

Near the optimum the poses' uncertainty is, to first order, Gaussian in the tangent space with
covariance ``Σ = (AᵀA)⁻¹``: ``A`` the weighted Jacobian of the linearization (``AᵀA = JᵀΩJ``,
the Gauss–Newton Hessian) over the free columns, fixed poses left out (they are known
exactly). A pose's marginal covariance is its diagonal block of ``Σ`` (GTSAM's
``Marginals``: Dellaert & Kaess 2017, "Factor Graphs for Robot Perception", §2.5 and §5.3).

Columns follow the poses' tangent convention: the right perturbation ``X ⊕ δ = X·Exp(δ)``,
with ``δ = (x, y, θ)`` for SE(2) and ``δ = (v, ω)`` (translation then rotation) for SE(3), as
Theseus' ``SE2``/``SE3`` retractions. (GTSAM's ``Pose3`` orders ``(ω, v)``: swap the two
3 × 3 halves to compare.)

``Σ`` is never formed. The Cholesky factor ``L`` (``P AᵀA Pᵀ = L Lᵀ``, CHOLMOD via
scikit-sparse, in the fill-reducing block order of
:func:`~posegraph.solve.symbolic.block_fill_order`) gives ``Σ`` on the pattern of ``L`` by the
Takahashi recurrences (Takahashi, Fagan & Chen 1973, "Formation of a sparse bus impedance
matrix and its application to short circuit study"; the block form as in Amestoy et al. 2012,
"On computing inverse entries of a sparse matrix in an out-of-core environment", and Lin et al.
2011, "SelInv", ACM TOMS 37(4)): for a column block ``J`` of ``L`` with diagonal block
``L_JJ`` and rows ``R`` below it (the blocks of its column of ``L``), ``Z = L_RJ L_JJ⁻¹`` and

    Σ_RJ = −Σ_RR Z,
    Σ_JJ = L_JJ⁻ᵀ L_JJ⁻¹ − Zᵀ Σ_RJ,

from the last block to the first. ``Σ_RR`` only needs entries on the pattern of ``L`` (the
pattern is closed: two rows of a column of ``L`` meet in the column of the earlier one), so
each block column reads the blocks already computed for its ancestors in the elimination
tree. For a subset of poses only those blocks and their ancestors are computed.

Cost: about as many flops as the factorization, in a Python loop over supernodes of small
dense products; sphere2500's 2,500 blocks take 0.8 s of CPU time. The products run with one
BLAS thread (``threadpoolctl``): with more, each of the thousands of small products waits on
its threads, and on a busy 2-core machine the same run took 45 s instead of 3 s.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Any, ContextManager, List, Optional, Sequence, Union

import numpy as np
from scipy.linalg.lapack import dtrtri
import scipy.sparse as sp
import torch
from sksparse.cholmod import CholmodError, analyze

from posegraph.errors import PoseGraphError
from posegraph.solve.linearization import BlockSparseLinearization
from posegraph.solve.symbolic import block_fill_order, block_graph, column_block_sizes


def _one_blas_thread() -> ContextManager[Any]:
    """BLAS limited to one thread while it runs (a no-op without ``threadpoolctl``)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


class CovarianceError(PoseGraphError):
    """The marginal covariances cannot be computed: a non-finite or singular normal matrix
    (a gauge left free, a pose no measurement constrains), or bad arguments."""


def _block_pattern(graph: sp.csc_matrix, blocks: np.ndarray) -> List[np.ndarray]:
    """Per block column of the Cholesky factor of ``graph`` (the block graph) in the order
    ``blocks``: the blocks below its diagonal, in elimination positions, sorted."""
    ordered = graph[blocks][:, blocks].tocsc()
    lower = analyze(ordered, mode="simplicial", ordering_method="natural").cholesky(ordered).L().tocsc()
    lower.sort_indices()
    return [lower.indices[lower.indptr[j] + 1 : lower.indptr[j + 1]].astype(np.int64) for j in range(lower.shape[1])]


def _supernodes(below: List[np.ndarray]) -> np.ndarray:
    """First block position of each supernode: runs of consecutive block columns ``p, p+1, …``
    where column ``p``'s blocks below are ``p+1`` and then those of ``p+1`` (a chain of the
    elimination tree with one shared pattern), plus the end position."""
    nb = len(below)
    first = [0]
    for p in range(1, nb):
        prev = below[p - 1]
        chained = len(prev) == len(below[p]) + 1 and prev[0] == p and np.array_equal(prev[1:], below[p])
        if not chained:
            first.append(p)
    first.append(nb)
    return np.asarray(first, dtype=np.int64)


def selected_inverse_blocks(
    normal: sp.spmatrix,
    sizes: np.ndarray,
    graph: sp.csc_matrix,
    blocks: np.ndarray,
    wanted: Optional[np.ndarray] = None,
) -> List[Optional[np.ndarray]]:
    """Diagonal blocks of ``normal⁻¹`` by the Takahashi recurrences (module docstring), on
    supernodes (:func:`_supernodes`) so that each dense step works on several blocks at once.

    Args:
        normal: the symmetric positive definite matrix (``AᵀA``), columns in A's order.
        sizes: columns per block, in A's column order (:func:`column_block_sizes`).
        graph: the block graph (:func:`~posegraph.solve.symbolic.block_graph`).
        blocks: elimination order of the blocks (``blocks[i]`` eliminated ``i``-th).
        wanted: blocks (A's numbering) whose diagonal block is wanted; all when None.

    Returns: per block (A's numbering) its ``sizes[b] × sizes[b]`` block of ``normal⁻¹``,
    ``None`` for blocks not wanted.

    Raises:
        CovarianceError: ``normal`` is not positive definite.
    """
    nb = len(sizes)
    starts = np.cumsum(sizes) - sizes
    order_sizes = sizes[blocks]
    order_starts = np.cumsum(order_sizes) - order_sizes  # first column of each position
    columns = np.repeat(starts[blocks] - order_starts, order_sizes) + np.arange(int(order_sizes.sum()))
    permuted = sp.csc_matrix(normal)[columns][:, columns].tocsc()
    try:
        factor = analyze(permuted, mode="supernodal", ordering_method="natural").cholesky(permuted)
    except CholmodError:  # (always CHOLMOD here, whatever solved: its factor gives the recurrences)
        raise CovarianceError("the normal matrix AᵀA at the result is not positive definite, so the "
                              "covariances are not defined: fix a pose (the gauge) and check that "
                              "every pose is constrained") from None
    lower = factor.L().tocsc()
    lower.sort_indices()
    below = _block_pattern(graph, blocks)
    first = _supernodes(below)
    num_super = len(first) - 1
    super_of = np.repeat(np.arange(num_super), np.diff(first))
    col_start = np.append(order_starts, order_starts[-1] + order_sizes[-1] if nb else 0)

    # Every supernode's scalar rows (own columns, then the rows of the blocks below) and its
    # columns of L, dense on those rows, in one flat buffer (CHOLMOD's own supernodes may hold
    # explicit zeros off the block pattern: dropped).
    members = [np.concatenate([np.arange(first[k], first[k + 1]), below[first[k + 1] - 1]]) for k in range(num_super)]
    member_blocks = np.concatenate(members) if members else np.zeros(0, dtype=np.int64)
    member_super = np.repeat(np.arange(num_super), [len(m) for m in members])
    d = order_sizes[member_blocks]
    all_rows = np.repeat(order_starts[member_blocks] - np.cumsum(d) + d, d) + np.arange(int(d.sum()))
    row_super = np.repeat(member_super, d)
    row_off = np.searchsorted(row_super, np.arange(num_super + 1))
    height = np.diff(row_off)
    width = col_start[first[1:]] - col_start[first[:-1]]
    flat_off = np.concatenate([[0], np.cumsum(height * width)])
    n = int(col_start[-1])
    key_rows = row_super * (n + 1) + all_rows  # sorted: by supernode, then row
    entry_col = np.repeat(np.arange(n), np.diff(lower.indptr))
    entry_super = super_of[np.repeat(np.arange(nb), order_sizes)][entry_col]
    keys = entry_super * (n + 1) + lower.indices
    at = np.minimum(np.searchsorted(key_rows, keys), len(key_rows) - 1)
    keep = key_rows[at] == keys
    local = at - row_off[entry_super]
    c0_of = col_start[first[:-1]]
    factor_values = np.zeros(int(flat_off[-1]))
    factor_values[(flat_off[entry_super] + local * width[entry_super] + entry_col - c0_of[entry_super])[keep]] = lower.data[keep]
    sigma_values = np.zeros_like(factor_values)

    def block_of(buffer: np.ndarray, k: int) -> np.ndarray:
        return buffer[flat_off[k] : flat_off[k + 1]].reshape(height[k], width[k])

    # The wanted supernodes and their ancestors in the supernodal elimination tree.
    needed = np.zeros(num_super, dtype=bool)
    targets = np.arange(nb) if wanted is None else np.asarray(wanted, dtype=np.int64)
    position = np.empty(nb, dtype=np.int64)
    position[blocks] = np.arange(nb)
    for k in np.unique(super_of[position[targets]]):
        while k >= 0 and not needed[k]:
            needed[k] = True
            r = below[first[k + 1] - 1]
            k = int(super_of[r[0]]) if len(r) else -1
    is_target = np.zeros(nb, dtype=bool)
    is_target[targets] = True

    out: List[Optional[np.ndarray]] = [None] * nb
    for k in range(num_super - 1, -1, -1):
        if not needed[k]:
            continue
        s, c0 = int(width[k]), int(c0_of[k])
        col = block_of(factor_values, k)
        sigma = block_of(sigma_values, k)
        inv_ss, info = dtrtri(col[:s], lower=1)
        if info != 0:
            raise CovarianceError("the Cholesky factor of AᵀA is singular")
        r_rows = all_rows[row_off[k] + s : row_off[k + 1]]
        if len(r_rows):
            z = col[s:] @ inv_ss  # Z = L_RS L_SS⁻¹
            m = len(r_rows)
            sigma_rr = np.empty((m, m))
            r_blocks = members[k][first[k + 1] - first[k] :]
            owners = super_of[r_blocks]
            run_starts = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
            run_offsets = np.append(np.cumsum(np.r_[0, order_sizes[r_blocks]])[run_starts], m)
            for t in range(len(run_starts)):  # Σ_RR from the ancestors (pattern closure)
                o1, o2 = int(run_offsets[t]), int(run_offsets[t + 1])
                owner = int(owners[run_starts[t]])
                pos = np.searchsorted(all_rows[row_off[owner] : row_off[owner + 1]], r_rows[o1:])
                part = block_of(sigma_values, owner)[pos[:, None], r_rows[o1:o2] - c0_of[owner]]
                sigma_rr[o1:, o1:o2] = part
                sigma_rr[o1:o2, o2:] = part[o2 - o1 :].T
            sigma_rs = -(sigma_rr @ z)
            sigma[s:] = sigma_rs
            sigma[:s] = inv_ss.T @ inv_ss - z.T @ sigma_rs
        else:
            sigma[:s] = inv_ss.T @ inv_ss
        sigma[:s] = 0.5 * (sigma[:s] + sigma[:s].T)
        for p in range(int(first[k]), int(first[k + 1])):
            block = int(blocks[p])
            if is_target[block]:
                lo, hi = int(col_start[p]) - c0, int(col_start[p + 1]) - c0
                out[block] = sigma[lo:hi, lo:hi].copy()
    return out


def marginal_covariances(
    problem: Any,
    poses: Optional[Union[Sequence[int], np.ndarray, torch.Tensor]] = None,
    batch_index: int = 0,
) -> torch.Tensor:
    """Marginal covariances of ``problem``'s poses at their current values (the optimum, after
    :func:`~posegraph.solve.optimize.optimize`).

    Args:
        problem: a :class:`~posegraph.model.problem.PoseGraphProblem`.
        poses: indices of the poses wanted (into ``problem.ids``, the packed order); all when
            None.
        batch_index: which problem of a batch.

    Returns:
        ``(len(poses), d, d)`` float64 CPU tensor (``d`` = 3 for SE(2), 6 for SE(3)): the block
        of ``(AᵀA)⁻¹`` of each pose, in the tangent convention of the module docstring
        (translation then rotation); zeros for fixed poses. Costs (robust kernels, user
        costs, landmarks) all enter ``AᵀA``; landmarks are marginalized out.

    Raises:
        CovarianceError: bad ``poses`` / ``batch_index``, a non-finite state, or a singular
            normal matrix.
    """
    var = problem.poses
    n, d = var.num_elements, var.element_dof
    if poses is None:
        index = np.arange(n, dtype=np.int64)
    else:
        raw = poses.detach().cpu().numpy() if isinstance(poses, torch.Tensor) else np.asarray(poses)
        if raw.ndim != 1 or (raw.size and not np.issubdtype(raw.dtype, np.integer)):
            raise CovarianceError(f"poses: expected a 1-D sequence of integer pose indices, received "
                                  f"{raw.dtype} of shape {tuple(raw.shape)}")
        index = raw.astype(np.int64)
        bad = index[(index < -n) | (index >= n)]
        if bad.size:
            raise CovarianceError(f"poses: expected indices in [{-n}, {n}) (negative: from the end), received {int(bad[0])}")
        index = np.where(index < 0, index + n, index)
    batch = var.tensor.shape[0]
    if not -batch <= batch_index < batch:
        raise CovarianceError(f"batch_index: expected an index in [{-batch}, {batch}), received {batch_index}")

    with torch.no_grad():
        lin = BlockSparseLinearization(problem.objective)
        lin.linearize()
        values = lin.A_val[batch_index].detach().cpu().double().numpy()
    if not np.isfinite(values).all():
        raise CovarianceError("the Jacobian at the current poses is not finite; nothing to invert")
    a = sp.csr_matrix((values, np.asarray(lin.A_col_ind), np.asarray(lin.A_row_ptr)), shape=(lin.num_rows, lin.num_cols))
    normal = (a.T @ a).tocsc()

    sizes = column_block_sizes(lin)
    block_of_col = np.repeat(np.arange(len(sizes)), sizes)
    element_col = var.column_of_element().numpy()  # -1: fixed
    start = lin.var_start_cols[lin.ordering.index_of(var.name)]
    free = element_col[index] >= 0
    pose_blocks = block_of_col[start + element_col[index][free]]

    out = torch.zeros(len(index), d, d, dtype=torch.float64)
    if pose_blocks.size:
        order = block_fill_order(lin, sizes)
        with _one_blas_thread():
            found = selected_inverse_blocks(normal, sizes, block_graph(lin, sizes), order.blocks, np.unique(pose_blocks))
        out[torch.as_tensor(np.flatnonzero(free))] = torch.as_tensor(np.stack([found[b] for b in pose_blocks]))
    return out


def save_covariances(path: Union[str, "os.PathLike[str]"], ids: Any, covariances: Any, kind: str) -> None:
    """Write ``ids`` ``(N,)`` and ``covariances`` ``(N, d, d)`` as a NumPy ``.npz`` archive
    (arrays ``ids``, ``covariances``, and ``tangent``: the order of the ``d`` coordinates),
    atomically (:func:`posegraph.io.write_output`)."""
    from posegraph.io import write_output

    tangent = "x y theta" if kind == "SE2" else "tx ty tz rx ry rz"
    buffer = io.BytesIO()
    np.savez(
        buffer,
        ids=np.asarray(torch.as_tensor(ids).cpu(), dtype=np.int64),
        covariances=np.asarray(torch.as_tensor(covariances).cpu(), dtype=np.float64),
        tangent=np.array(tangent),
    )
    data = buffer.getvalue()
    write_output(path, lambda fh: fh.write(data))


__all__ = ["marginal_covariances", "save_covariances", "selected_inverse_blocks", "CovarianceError"]
