"""Shared fixtures: the public datasets folder and small generated pose graphs.

Generated graphs are noise-free (or lightly perturbed) chains with loop closures, written as
g2o text to ``tmp_path``; the public datasets are used only for end-to-end reference checks and
are never copied into the project.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def datasets_path() -> Optional[Path]:
    """The folder holding the public g2o files (``POSEGRAPH_DATASETS``, else
    ``<repo>/../shared/datasets``), or None when absent. Accepts the folder itself or its
    parent (with a ``g2o/`` sub-folder)."""
    env = os.environ.get("POSEGRAPH_DATASETS")
    root = Path(env) if env else REPO.parent / "shared" / "datasets"
    for candidate in (root / "g2o", root):
        if candidate.is_dir() and any(candidate.glob("*.g2o")):
            return candidate
    return None


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    path = datasets_path()
    if path is None:
        pytest.skip("public g2o datasets not found (set POSEGRAPH_DATASETS)")
    return path


# -- geometry helpers (numpy, homogeneous matrices) ------------------------------------------------


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    x, y, z, w = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def random_poses(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random homogeneous poses (4×4 for SE3, 3×3 for SE2)."""
    if kind == "SE3":
        out = np.tile(np.eye(4), (n, 1, 1))
        for k in range(n):
            out[k, :3, :3] = random_rotation(rng)
            out[k, :3, 3] = rng.uniform(-5, 5, size=3)
        return out
    out = np.tile(np.eye(3), (n, 1, 1))
    th_ = rng.uniform(-math.pi, math.pi, size=n)
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = (
        np.cos(th_),
        -np.sin(th_),
        np.sin(th_),
        np.cos(th_),
    )
    out[:, :2, 2] = rng.uniform(-5, 5, size=(n, 2))
    return out


def homogeneous_to_theseus(kind: str, mats: np.ndarray) -> torch.Tensor:
    """Homogeneous matrices → Theseus layout ((N, 3, 4) SE3, (N, 4) SE2), float64."""
    if kind == "SE3":
        return torch.as_tensor(mats[:, :3, :].copy())
    return torch.as_tensor(
        np.stack([mats[:, 0, 2], mats[:, 1, 2], mats[:, 0, 0], mats[:, 1, 0]], axis=1)
    )


def theseus_to_homogeneous(kind: str, t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu().double().numpy()
    if kind == "SE3":
        out = np.tile(np.eye(4), (t.shape[0], 1, 1))
        out[:, :3, :] = t
        return out
    out = np.tile(np.eye(3), (t.shape[0], 1, 1))
    c, s = t[:, 2], t[:, 3]
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = c, -s, s, c
    out[:, :2, 2] = t[:, :2]
    return out


def g2o_values(kind: str, mat: np.ndarray) -> List[float]:
    """g2o numbers of one homogeneous pose: ``x y z qx qy qz qw`` or ``x y θ``."""
    if kind == "SE2":
        return [mat[0, 2], mat[1, 2], math.atan2(mat[1, 0], mat[0, 0])]
    R = mat[:3, :3]
    w = math.sqrt(max(0.0, 1 + np.trace(R))) / 2
    if w > 1e-3:
        x = (R[2, 1] - R[1, 2]) / (4 * w)
        y = (R[0, 2] - R[2, 0]) / (4 * w)
        z = (R[1, 0] - R[0, 1]) / (4 * w)
    else:  # generic random rotations never come here in practice; keep a safe branch
        import posegraph.lie as lie

        q = lie.matrix_to_quaternion(torch.as_tensor(R)[None])[0].tolist()  # (w, x, y, z)
        w, x, y, z = q
    return [*mat[:3, 3].tolist(), x, y, z, w]


def upper(info: np.ndarray) -> List[float]:
    iu = np.triu_indices(info.shape[0])
    return info[iu].tolist()


def random_information(dof: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=(dof, dof))
    return a @ a.T + dof * np.eye(dof)


class SyntheticGraph:
    """A generated pose graph: true poses, ids, edges (by id) and measurements."""

    def __init__(
        self,
        kind: str,
        ids: Sequence[int],
        truth: np.ndarray,
        edges: Sequence[Tuple[int, int]],
        measurements: np.ndarray,
        information: np.ndarray,
    ):
        self.kind = kind
        self.ids = list(ids)
        self.truth = truth
        self.edges = list(edges)
        self.measurements = measurements
        self.information = information

    @property
    def dof(self) -> int:
        return 6 if self.kind == "SE3" else 3

    def truth_relative_to_lowest(self) -> np.ndarray:
        """True poses in the gauge where the lowest id is the identity."""
        root = int(np.argmin(self.ids))
        return np.linalg.inv(self.truth[root])[None] @ self.truth

    def text(
        self,
        vertices: Optional[np.ndarray] = None,
        with_vertices: bool = True,
        fixed: Iterable[int] = (),
    ) -> str:
        vtag, etag = ("VERTEX_SE3:QUAT", "EDGE_SE3:QUAT") if self.kind == "SE3" else ("VERTEX_SE2", "EDGE_SE2")
        lines = []
        if with_vertices:
            poses = self.truth if vertices is None else vertices
            for vid, pose in zip(self.ids, poses):
                lines.append(f"{vtag} {vid} " + " ".join(repr(float(v)) for v in g2o_values(self.kind, pose)))
        fixed = list(fixed)
        if fixed:
            lines.append("FIX " + " ".join(map(str, fixed)))
        for (a, b), z, info in zip(self.edges, self.measurements, self.information):
            vals = g2o_values(self.kind, z) + upper(info)
            lines.append(f"{etag} {a} {b} " + " ".join(repr(float(v)) for v in vals))
        return "\n".join(lines) + "\n"


def make_synthetic(
    kind: str = "SE3",
    n: int = 8,
    loops: Sequence[Tuple[int, int]] = ((0, 5), (2, 7), (7, 1)),
    ids: Optional[Sequence[int]] = None,
    reverse: Sequence[int] = (),
    seed: int = 0,
    noise: float = 0.0,
) -> SyntheticGraph:
    """Chain ``0-1-…-(n-1)`` plus ``loops`` (positions), noise-free unless ``noise`` > 0
    (a random tangent-ish perturbation of the measurement). ``reverse``: chain edge positions
    written as ``(k+1, k)`` with the inverse measurement. ``ids``: vertex id per position."""
    rng = np.random.default_rng(seed)
    truth = random_poses(kind, n, rng)
    ids = list(ids) if ids is not None else list(range(n))
    pairs = [(k, k + 1) for k in range(n - 1)]
    pairs = [(b, a) if k in reverse else (a, b) for k, (a, b) in enumerate(pairs)]
    pairs += list(loops)
    meas = np.stack([np.linalg.inv(truth[a]) @ truth[b] for a, b in pairs])
    if noise > 0:
        meas = meas @ random_perturbation(kind, len(pairs), noise, rng)
    dof = 6 if kind == "SE3" else 3
    info = np.stack([random_information(dof, rng) for _ in pairs])
    return SyntheticGraph(kind, ids, truth, [(ids[a], ids[b]) for a, b in pairs], meas, info)


def random_perturbation(kind: str, m: int, scale: float, rng: np.random.Generator) -> np.ndarray:
    if kind == "SE3":
        out = np.tile(np.eye(4), (m, 1, 1))
        for k in range(m):
            w = rng.normal(size=3) * scale
            angle = np.linalg.norm(w)
            K = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
            R = np.eye(3) + (np.sin(angle) / angle) * K + ((1 - np.cos(angle)) / angle**2) * K @ K
            out[k, :3, :3] = R
            out[k, :3, 3] = rng.normal(size=3) * scale
        return out
    out = np.tile(np.eye(3), (m, 1, 1))
    a = rng.normal(size=m) * scale
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1] = np.cos(a), -np.sin(a), np.sin(a), np.cos(a)
    out[:, :2, 2] = rng.normal(size=(m, 2)) * scale
    return out


@pytest.fixture
def write_file(tmp_path: Path) -> Callable[[str, Union[str, bytes]], Path]:
    """``write_file(name, text_or_bytes) -> path`` under ``tmp_path`` (text written as-is,
    no newline translation)."""

    def _write(name: str, content: Union[str, bytes]) -> Path:
        path = tmp_path / name
        data = content.encode("utf-8") if isinstance(content, str) else content
        path.write_bytes(data)
        return path

    return _write


@pytest.fixture
def synthetic() -> Callable[..., SyntheticGraph]:
    """``synthetic(kind=…, n=…, loops=…, ids=…, reverse=…, seed=…, noise=…)``."""
    return make_synthetic


#: a tiny valid SE2 graph (3 poses, a loop) and SE3 graph (2 poses), by hand.
SE2_TEXT = (
    "VERTEX_SE2 0 0 0 0\n"
    "VERTEX_SE2 1 1 0 0\n"
    "VERTEX_SE2 2 1 1 1.5707963267948966\n"
    "EDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\n"
    "EDGE_SE2 1 2 0 1 1.5707963267948966 1 0 0 1 0 1\n"
    "EDGE_SE2 2 0 -1 1 1.5707963267948966 1 0 0 1 0 1\n"
)
IDENTITY21 = "1 0 0 0 0 0 1 0 0 0 0 1 0 0 0 1 0 0 1 0 1"
SE3_TEXT = (
    "VERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\n"
    "VERTEX_SE3:QUAT 1 1 0 0 0 0 0 1\n"
    f"EDGE_SE3:QUAT 0 1 1 0 0 0 0 0 1 {IDENTITY21}\n"
)


@pytest.fixture
def se2_text() -> str:
    return SE2_TEXT


@pytest.fixture
def se3_text() -> str:
    return SE3_TEXT


def temp_leftovers(folder: Path) -> Dict[str, int]:
    """Temporary files the atomic writer might leave behind (``.NAME.posegraph-tmp-XXXXXXXX``,
    and the ``.posegraph-*.tmp`` names of earlier versions)."""
    return {
        p.name: p.stat().st_size
        for p in folder.iterdir()
        if ".posegraph-tmp-" in p.name or p.name.startswith(".posegraph-")
    }


@pytest.fixture
def leftovers() -> Callable[[Path], Dict[str, int]]:
    return temp_leftovers


# -- sparse Cholesky solvers (test_solve.py, test_pardiso.py) ------------------------------------------------
def drop_column_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every BlockSparseLinearization built from now on lack A's block spans, as one with
    overlapping blocks does."""
    from posegraph.solve.linearization import BlockSparseLinearization

    original = BlockSparseLinearization._slots_by_blocks

    def without_spans(self, pieces):
        dests = original(self, pieces)
        self.column_spans = None
        return dests

    monkeypatch.setattr(BlockSparseLinearization, "_slots_by_blocks", without_spans)


def check_normal_solve_against_dense(solver, beta: float = 0.2) -> None:
    """``solver``'s differentiable normal-equation solve (``NormalSolve``) of its linearized
    system gives the dense solution of ``(AᵀA + βI) x = Aᵀb`` and the dense gradients."""
    from posegraph.solve.sparse_cholesky import NormalSolve

    lin = solver.linearization
    a_val = lin.A_val.detach().clone().requires_grad_(True)
    b = lin.b.detach().clone().requires_grad_(True)
    x = NormalSolve.apply(a_val, b, solver, [beta], False)
    dense_a = lin.A_val.detach().clone().requires_grad_(True)
    dense_b = lin.b.detach().clone().requires_grad_(True)
    dense = torch.zeros(lin.num_rows, lin.num_cols, dtype=dense_a.dtype)
    dense = dense.index_put((lin._row_of_nz, lin._col_of_nz), dense_a[0])
    eye = torch.eye(lin.num_cols, dtype=dense.dtype)
    expected = torch.linalg.solve(dense.T @ dense + beta * eye, dense.T @ dense_b[0])
    torch.testing.assert_close(x[0], expected, rtol=1e-9, atol=1e-10)
    w = torch.randn_like(x)
    (x * w).sum().backward()
    (expected * w[0]).sum().backward()
    torch.testing.assert_close(a_val.grad, dense_a.grad, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(b.grad, dense_b.grad, rtol=1e-8, atol=1e-10)


# -- documentation pages: their python blocks, run where data/ and configs/ are the repository's --


def python_blocks(text: str) -> List[str]:
    """The fenced ```python blocks of a Markdown text, in order (```py blocks are not run)."""
    import re

    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


@pytest.fixture
def in_repo_data_folder(tmp_path, monkeypatch):
    """A temporary working folder where ``data/`` and ``configs/`` are the repository's."""
    for name in ("data", "configs"):
        (tmp_path / name).symlink_to(REPO / name, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path
