"""posegraph — pose-graph optimization on PyTorch and Theseus.

The pipeline, one module per step::

    io (g2o text) → graph.PoseGraph → init → builder (th.Objective) → solve → report

Public API
----------
Files and graphs
    ``read_g2o(path) -> PoseGraph``, ``write_g2o(graph, path)`` — g2o SE2/SE3 files
    (full information matrices, FIX, edge-only files); errors name file and line.
    ``PoseGraph`` — poses/edges/measurements/information as tensors (Theseus layouts).
    ``initialize(graph, method)`` — file vertices or spanning-tree initial guess.
Building
    ``PoseGraphBuilder`` — add your own ``th.SE3``/``th.SE2`` poses, relative-pose
    measurements with full information, and your own ``th.CostFunction`` terms; every input
    is validated (class, shape, batch, dtype, device, names, endpoints) before building.
    ``build_problem(graph) -> PoseGraphProblem`` — the same objective from a PoseGraph.
Solving
    ``optimize(problem, SolverOptions(...)) -> SolveResult`` — Gauss–Newton / LM on the
    vectorized CHOLMOD path (``BlockSparseLinearization`` + ``CholmodSolver``).
Extension points (Theseus)
    ``ManifoldArray`` (packed variables), ``BlockSparseCostFunction`` / ``BetweenEdges``
    (vectorized costs), ``FullInformationWeight`` / ``BlockScaleWeight`` (cost weights).
Debugging
    ``posegraph.debug``: ``DebugCallback`` (Theseus ``end_iter_callback``: per-iteration error,
    step, damping, per-edge error/Jacobian norms, first non-finite cost), ``normal_matrix`` /
    ``normal_rhs`` (AᵀA, Aᵀb as sparse matrices for any linearization), trace files and
    ``posegraph inspect``.
Numerics
    ``posegraph.lie`` — stable rotation ↔ quaternion conversions and ``patch_theseus()``.
    ``posegraph.geometry`` — vectorized SE(3)/SE(2) kernels on plain tensors (exp, log,
    right-Jacobian inverses, adjoints, ``se3_between_error_jacobians`` /
    ``se2_between_error_jacobians``), differentiable, with explicit small-angle / near-π
    branches; ``BetweenEdges`` and ``ManifoldArray`` run on them.
"""

from . import geometry
from .builder import PoseGraphBuilder, PoseGraphProblem, build_problem
from .costs import BetweenEdges, BlockSparseCostFunction, JacobianBlocks
from .debug import DebugCallback, NonFiniteError, normal_matrix, normal_rhs
from .errors import G2oFormatError, GraphStructureError, OptimizationError, PoseGraphError
from .graph import PoseGraph
from .init import initialize
from .io import read_g2o, write_g2o
from .solve.cholmod import CholmodSolver
from .solve.linearization import BlockSparseLinearization
from .solve.optimize import SolveResult, SolverOptions, optimize
from .variables import ManifoldArray
from .weights import BlockScaleWeight, FullInformationWeight

__version__ = "0.1.0"

__all__ = [
    "geometry",
    "read_g2o",
    "write_g2o",
    "PoseGraph",
    "initialize",
    "PoseGraphBuilder",
    "PoseGraphProblem",
    "build_problem",
    "optimize",
    "SolverOptions",
    "SolveResult",
    "ManifoldArray",
    "BlockSparseCostFunction",
    "BetweenEdges",
    "JacobianBlocks",
    "FullInformationWeight",
    "BlockScaleWeight",
    "BlockSparseLinearization",
    "CholmodSolver",
    "DebugCallback",
    "NonFiniteError",
    "normal_matrix",
    "normal_rhs",
    "PoseGraphError",
    "G2oFormatError",
    "GraphStructureError",
    "OptimizationError",
]
