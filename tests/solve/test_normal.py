"""The assembled normal matrix: lower triangle of AᵀA + βI in a block elimination order."""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.sparse as sp
import theseus as th
import torch

import posegraph as pg
from posegraph.lie import native
from posegraph.solve import symbolic
from posegraph.solve.normal import NormalMatrix
from posegraph.solve.optimize import make_optimizer

DATA = Path(__file__).resolve().parents[2] / "data"


def expected_lower(a: sp.csr_matrix, columns: np.ndarray, beta: float) -> sp.csc_matrix:
    """tril(Pᵀ(AᵀA + βI)P) with P the column permutation ``columns``, by SciPy."""
    ap = a[:, columns]
    return sp.tril((ap.T @ ap + beta * sp.identity(a.shape[1])).tocsc()).tocsc()


def block_pattern(a: sp.csr_matrix, sizes: np.ndarray, columns: np.ndarray) -> sp.csc_matrix:
    """tril of AᵀA's *block* pattern (every pair of column blocks that share a row of A, dense)
    in the order ``columns``: the pattern the solver assembles."""
    expand = sp.csr_matrix(
        (np.ones(int(sizes.sum())), (np.arange(int(sizes.sum())), np.repeat(np.arange(len(sizes)), sizes)))
    )
    ones = a.copy()
    ones.data[:] = 1.0
    blocks = ((ones @ expand) != 0).astype(float)
    full = expand @ (blocks.T @ blocks) @ expand.T
    full = full[columns][:, columns]
    return sp.tril(full + sp.identity(full.shape[0])).tocsc()


def assert_matches(
    normal: NormalMatrix, a: sp.csr_matrix, values: torch.Tensor, sizes: np.ndarray, columns: np.ndarray
) -> None:
    """Values as SciPy's, in the block pattern (a structural superset of AᵀA's: CHOLMOD's
    symbolic analysis needs every entry that may be nonzero)."""
    pattern = normal.pattern()
    expected_pattern = block_pattern(a, sizes, columns)
    expected_pattern.sort_indices()
    assert pattern.has_sorted_indices
    assert np.array_equal(pattern.indptr, expected_pattern.indptr)
    assert np.array_equal(pattern.indices, expected_pattern.indices)
    for compiled, beta in itertools.product((True, False), (0.0, 0.25)):  # both assembly routes
        native.ENABLED = compiled
        try:
            h = normal.matrix(values, beta)
        finally:
            native.ENABLED = True
        assert np.array_equal(h.indices, pattern.indices) and np.array_equal(h.indptr, pattern.indptr)
        expected = expected_lower(a, columns, beta)
        assert abs(h - expected).max() <= 1e-12 * max(1.0, abs(expected).max())


def linearized(problem: pg.PoseGraphProblem):
    lin = make_optimizer(problem, pg.SolverOptions(linear_solver="cholmod")).linear_solver.linearization
    lin.linearize()
    return lin


@pytest.mark.parametrize("name", ["sphere_se3.g2o", "grid_se2.g2o", "mesh_demo.g2o"])
@pytest.mark.parametrize("order", ["fill", "random"])
def test_assembled_normal_matrix_equals_scipys(name, order):
    """SE3 and SE2 graphs, and poses with points and a fixed pose (mixed block sizes, edges
    with one free block)."""
    lin = linearized(pg.build_problem(pg.initialize(pg.read_g2o(DATA / name))))
    sizes = symbolic.column_block_sizes(lin)
    if order == "fill":
        blocks = symbolic.block_fill_order(lin, sizes).blocks
    else:
        blocks = np.random.default_rng(0).permutation(len(sizes))
    normal = NormalMatrix(lin, sizes, blocks)
    columns = symbolic.expand_block_order(blocks, sizes)
    assert_matches(normal, lin.A_scipy(), lin.A_val[0], sizes, columns)


def test_user_cost_on_its_own_variable_is_one_more_block():
    g = pg.read_g2o(DATA / "grid_se2.g2o")
    target = th.Vector(tensor=torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64), name="target")
    v = th.Vector(tensor=torch.zeros(1, 4, dtype=torch.float64), name="v")
    w = th.ScaleCostWeight(torch.tensor(2.0, dtype=torch.float64))
    prior = th.Difference(v, target, w, name="prior_v")
    lin = linearized(pg.build_problem(pg.initialize(g), extra_costs=[prior]))
    sizes = symbolic.column_block_sizes(lin)
    assert sizes.tolist().count(4) == 1  # v: one block of its own
    blocks = np.random.default_rng(1).permutation(len(sizes))
    normal = NormalMatrix(lin, sizes, blocks)
    assert_matches(normal, lin.A_scipy(), lin.A_val[0], sizes, symbolic.expand_block_order(blocks, sizes))


def random_block_rows(seed: int):
    """A stand-in linearization whose residual blocks hold random, non-overlapping column
    spans, some crossing column blocks (a dense cost over a packed variable does that), with
    empty rows (residual blocks whose elements are all fixed) in between."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, size=12)
    n = int(sizes.sum())
    rows, cols, spans = [], [], []
    row = 0
    for _ in range(25):
        d = int(rng.integers(1, 4))
        if rng.random() < 0.2:  # an all-fixed residual block: rows without values
            row += d
            continue
        cuts = np.sort(rng.choice(n + 1, size=int(rng.integers(1, 4)) * 2, replace=False))
        block_spans = [(int(lo), int(hi - lo)) for lo, hi in cuts.reshape(-1, 2)]
        width = [c for lo, w in block_spans for c in range(lo, lo + w)]
        for r in range(row, row + d):
            rows += [r] * len(width)
            cols += width
        spans += [(row, lo, w) for lo, w in block_spans]
        row += d
    values = rng.standard_normal(len(rows))
    a = sp.csr_matrix((values, (rows, cols)), shape=(row, n))  # rows in order: CSR keeps them
    fr, c, w = (np.array(x, dtype=np.int64) for x in zip(*spans))
    lin = SimpleNamespace(
        column_spans=(fr, c, w),
        num_cols=n,
        num_rows=row,
        A_row_ptr=a.indptr.astype(np.int64),
        objective=SimpleNamespace(device=torch.device("cpu")),
    )
    return lin, a, sizes


@pytest.mark.parametrize("seed", range(6))
def test_spans_crossing_blocks_and_empty_rows(seed):
    lin, a, sizes = random_block_rows(seed)
    blocks = np.random.default_rng(seed + 10).permutation(len(sizes))
    normal = NormalMatrix(lin, sizes, blocks)
    assert_matches(normal, a, torch.as_tensor(a.data), sizes, symbolic.expand_block_order(blocks, sizes))


def test_needs_block_spans():
    lin = linearized(pg.build_problem(pg.initialize(pg.read_g2o(DATA / "grid_se2.g2o"))))
    sizes = symbolic.column_block_sizes(lin)
    lin.column_spans = None
    with pytest.raises(ValueError, match="no block structure"):
        NormalMatrix(lin, sizes, np.arange(len(sizes)))


def test_supernodal_solver_factors_the_assembled_matrix():
    """The solver's supernodal path: CHOLMOD factors the assembled lower triangle in natural
    order, and the solution is that of the normal equations."""
    g = pg.initialize(pg.read_g2o(DATA / "sphere_se3.g2o"))
    opt = make_optimizer(pg.build_problem(g), pg.SolverOptions(linear_solver="cholmod", cholmod_mode="supernodal"))
    solver = opt.linear_solver
    assert solver.normal is not None and solver.mode == "supernodal"
    lin = solver.linearization
    lin.linearize()
    x = solver.solve(damping=0.5)[0].numpy()
    a = lin.A_scipy().toarray()
    expected = np.linalg.solve(a.T @ a + 0.5 * np.eye(a.shape[1]), a.T @ lin.b[0].numpy())
    np.testing.assert_allclose(x, expected, rtol=1e-9, atol=1e-11)


def test_compiled_assembly_rejects_indices_outside_its_arrays():
    """The compiled loop checks every index before it reads or writes (a wrong layout would
    otherwise write outside H's values)."""
    if not native.AVAILABLE:
        pytest.skip("posegraph was installed without its compiled extensions")
    a, out = np.arange(12.0), np.zeros(5)
    one = np.zeros(1, dtype=np.int64)
    args = dict(a=a, start=np.array([0, 6]), ia=one, ib=one, slots=np.array([0, 4]), d=2, width=3, out=out)
    native.gram_scatter(**args)
    assert out[0] == 0 * 0 + 3 * 3 and out[4] == 6 * 6 + 9 * 9
    for key, bad, message in [
        ("slots", np.array([0, 5]), "slots: expected indices inside out"),
        ("start", np.array([0, 7]), "start: expected blocks inside a"),
        ("ia", np.array([3]), "ia, ib: expected columns < W"),
        ("slots", np.array([0]), "expected len\\(ia\\) and len\\(start\\)"),
    ]:
        with pytest.raises(ValueError, match=message):
            native.gram_scatter(**{**args, key: bad, "out": np.zeros(5)})
