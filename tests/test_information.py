"""Information-matrix checks shared by the reader and the builders (posegraph.information):
the magnitude bound, the PSD test and the nearest PSD matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from posegraph.information import first_oversized, information_bound, nearest_psd, psd_smallest_eigenvalues


def _random_symmetric(rng: np.random.Generator, count: int, dim: int, negatives: int) -> np.ndarray:
    """Symmetric matrices with ``negatives`` negative eigenvalues each (the rest positive)."""
    q = np.linalg.qr(rng.normal(size=(count, dim, dim)))[0]
    lam = rng.uniform(1.0, 100.0, size=(count, dim))
    lam[:, :negatives] *= -rng.uniform(0.001, 0.5, size=(count, negatives))
    mats = (q * lam[:, None, :]) @ q.transpose(0, 2, 1)
    return (mats + mats.transpose(0, 2, 1)) / 2


def test_bound_per_dtype_keeps_products_finite():
    assert information_bound(torch.float64) == 1e150 == information_bound(np.float64)
    assert information_bound(torch.float32) == 1e15
    for dtype in (torch.float64, torch.float32):
        b = torch.tensor(information_bound(dtype), dtype=dtype)
        assert torch.isfinite(b * b * 36)  # a 6×6 Frobenius norm squared stays finite


def test_first_oversized_finds_the_first_entry_in_matrix_order():
    info = np.tile(np.eye(3), (4, 1, 1))
    assert first_oversized(info, 1e150) is None
    info[2, 1, 2] = info[2, 2, 1] = -1e200
    info[3, 0, 0] = np.nan
    assert first_oversized(info, 1e150) == (2, 1, 2, -1e200)
    info[2] = np.eye(3)
    k, row, col, value = first_oversized(info, 1e150)
    assert (k, row, col) == (3, 0, 0) and np.isnan(value)
    batched = torch.as_tensor(np.stack([np.tile(np.eye(3), (4, 1, 1)), info]))  # (B, E, d, d)
    assert first_oversized(batched, 1e150)[:3] == (3, 0, 0)


def test_nearest_psd_equals_numpy_eigenvalue_clipping():
    rng = np.random.default_rng(4)
    for dim, negatives in ((3, 1), (6, 2), (6, 6)):
        mats = _random_symmetric(rng, 20, dim, negatives)
        lam, vec = np.linalg.eigh(mats)
        expected = np.einsum("eij,ej,ekj->eik", vec, np.clip(lam, 0, None), vec)
        out = nearest_psd(mats)
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12 * np.abs(mats).max())
        assert np.array_equal(out, out.transpose(0, 2, 1))
        assert np.linalg.eigvalsh(out)[:, 0].min() >= -1e-12 * np.abs(mats).max()
        if negatives == dim:
            assert np.abs(out).max() == 0.0  # no positive eigenvalue: nothing left


def test_psd_smallest_eigenvalues_names_only_the_indefinite():
    rng = np.random.default_rng(6)
    mats = _random_symmetric(rng, 10, 6, 0)
    bad, smallest = psd_smallest_eigenvalues(mats)
    assert bad.size == 0 and smallest.size == 0
    mats[[2, 7]] = _random_symmetric(rng, 2, 6, 1)
    bad, smallest = psd_smallest_eigenvalues(mats)
    assert bad.tolist() == [2, 7]
    np.testing.assert_allclose(smallest, np.linalg.eigvalsh(mats[[2, 7]])[:, 0])
    assert psd_smallest_eigenvalues(np.zeros((0, 3, 3)))[0].size == 0


@pytest.mark.parametrize("scale", [1.0, 1e140])
def test_repaired_matrices_pass_the_psd_test(scale):
    mats = _random_symmetric(np.random.default_rng(7), 50, 6, 3) * scale
    assert psd_smallest_eigenvalues(mats)[0].size == 50
    assert psd_smallest_eigenvalues(nearest_psd(mats))[0].size == 0
