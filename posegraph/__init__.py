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
Runs, evaluation, figures
    ``load_config(path, schema="optimize"|"layer")`` — YAML run configurations validated by
    the CLI's own option definitions (:mod:`posegraph.config`). ``evaluate(estimate, truth,
    align)`` — ATE (Umeyama-aligned) and RPE as evo defines them; ``umeyama`` (:mod:`posegraph.eval`).
    ``graph_info(graph)`` — counts, components, information summary, initial χ².
    ``posegraph.plot.plot_graphs`` — trajectory/error-history figures (needs matplotlib).
Numerics
    ``posegraph.lie`` — stable rotation ↔ quaternion conversions and ``patch_theseus()``.
"""

from .builder import PoseGraphBuilder, PoseGraphProblem, build_problem
from .config import ConfigError, load_config
from .costs import BetweenEdges, BlockSparseCostFunction, JacobianBlocks
from .debug import DebugCallback, NonFiniteError, normal_matrix, normal_rhs
from .eval import evaluate, umeyama
from .errors import G2oFormatError, GraphStructureError, OptimizationError, PoseGraphError
from .graph import PoseGraph
from .info import graph_info
from .init import initialize
from .io import read_g2o, write_g2o
from .solve.cholmod import CholmodSolver
from .solve.linearization import BlockSparseLinearization
from .solve.optimize import SolveResult, SolverOptions, optimize
from .variables import ManifoldArray
from .weights import BlockScaleWeight, FullInformationWeight

__version__ = "0.1.0"

__all__ = [
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
    "load_config",
    "ConfigError",
    "evaluate",
    "umeyama",
    "graph_info",
]
