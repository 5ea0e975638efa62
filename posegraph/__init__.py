"""posegraph — pose-graph optimization on PyTorch and Theseus.

The pipeline, one subpackage per stage::

    io (files) → graph.PoseGraph → init → model (builder: th.Objective) → solve → report

with ``lie`` (rotations, SE(3)/SE(2) kernels) and ``mesh`` below the model, ``debug`` beside
``solve``, and ``cli`` / ``batch`` on top. Every name below is importable from ``posegraph``.

Public API
----------
Files and graphs
    ``read_g2o(path, repair_information=False) -> PoseGraph``, ``write_g2o(graph, path)`` —
    g2o SE2/SE3 files (full information matrices, FIX, edge-only files); errors name file and
    line. Information matrices that are not positive semidefinite refuse the file unless
    ``repair_information=True`` replaces each by its nearest PSD matrix
    (:mod:`posegraph.information`).
    ``PoseGraph`` — poses/edges/measurements/information as tensors (Theseus layouts).
    ``initialize(graph, method)`` — initial guess: ``"auto"``, ``"file"``,
    ``"spanning-tree"`` or ``"chordal"``; ``chordal_initialization(graph, weighting,
    regularization)`` — chordal rotations (Carlone et al. 2015) then translations, by sparse
    least squares. Landmarks without estimates are placed from their observations.
    ``Landmarks`` — 3D points observed from SE3 poses (g2o ``VERTEX_TRACKXYZ`` /
    ``EDGE_SE3_TRACKXYZ`` / ``PARAMS_SE3OFFSET``), ``graph.landmarks``.
Building
    ``PoseGraphBuilder`` — add your own ``th.SE3``/``th.SE2`` poses, relative-pose
    measurements with full information, and your own ``th.CostFunction`` terms; every input
    is validated (class, shape, batch, dtype, device, names, endpoints, rotations) before
    building; NumPy arrays, lists and NumPy integers are converted, bools refused
    (``BuilderError``). ``PoseGraphBuilder(batch_size=B)`` solves ``B`` problems at once
    (default: the first pose's batch size).
    ``add_cost(cost)`` — any Theseus cost over the builder's poses and points (and your own
    variables), optimized jointly through the sparse path (``PackedCost``);
    ``add_prior(pose, measurement, information)`` / ``add_position_prior(pose, xyz,
    information)`` — built-in priors. A prior over one pose anchors its component (no pose of
    it is held automatically). ``problem.objective.add`` refuses costs over the builder's
    poses and points (they are packed: use ``add_cost`` before ``build()``).
    ``PoseGraphBuilder.add_point(th.Point3)`` / ``add_points((N, 3))`` /
    ``add_point_observation`` — landmarks and pose → point observations in the same objective
    (anything but a ``th.Point3`` is refused).
    ``build_problem(graph, mesh=None, robust=None, robust_edges="all") -> PoseGraphProblem``
    — the same objective from a PoseGraph; ``robust="huber:1.0"`` / ``"cauchy:0.5"`` or a
    ``RobustKernel`` on all edges or on loop closures (ids not consecutive; ``"dcs:1"``:
    dynamic covariance scaling); ``mesh=mesh_term(
    graph, verts, faces, weight)`` ties a mesh's vertices to the graph's points (vertex k ↔
    point id first + k) and adds a Laplacian smoothness regularizer (``MeshTerm``).
Outlier rejection
    ``optimize_gnc(problem, GncOptions(threshold=None, edges="all"|"loop-closures"),
    SolverOptions(...)) -> GncResult`` — graduated non-convexity with the truncated
    least-squares cost (Yang et al. 2020; :mod:`posegraph.solve.gnc`) on a problem built without a
    kernel: edges whose whitened residual ends beyond ``C`` standard deviations
    (``√(eᵀΩe) > C``; default ``C = √χ²_d(0.99)``) get weight 0. ``GncResult.outliers`` /
    ``weights`` / ``judged`` per edge, ``GncResult.solve`` a ``SolveResult`` of the whole run;
    the problem's poses hold the result. ``build_problem(graph, robust="gnc")`` is refused with
    a pointer here (GNC is an outer loop, not a kernel).
Meshes
    ``posegraph.mesh``: ``laplacian_smooth`` / ``taubin_smooth`` (autograd-safe, CPU/CUDA),
    ``LaplacianSmoothingCost`` (Theseus cost on ``th.Point3`` vertices), ``read_obj`` /
    ``write_obj``, ``icosphere``.
Solving
    ``optimize(problem, SolverOptions(...)) -> SolveResult`` — Gauss–Newton / LM on the
    vectorized sparse path (``BlockSparseLinearization`` + ``SparseCholeskySolver``).
    ``SparseCholeskySolver(objective, backend="auto"|"cholmod"|"pardiso",
    mode="auto"|"supernodal"|"simplicial", reuse_factor=True)`` — factors the normal matrix
    with MKL PARDISO (``posegraph.solve.pardiso``; the ``mkl`` package) when the factor is
    dense enough (3D graphs) or the graph large, else with CHOLMOD (``posegraph.solve.cholmod``):
    supernodal or simplicial from the factor's fill estimated on the block graph
    (``posegraph.solve.symbolic.estimate_factor_cost`` / ``choose_cholmod_mode`` /
    ``plan_factorization``), in a fill-reducing order of the block graph (``block_fill_order``;
    ``solver.order``); PARDISO and CHOLMOD's supernodal factorizations run on ``AᵀA``
    assembled by the solver (``posegraph.solve.normal.NormalMatrix``; ``solver.normal``);
    solves without recorded gradients first try CG preconditioned with the last factor
    (``lagged_factor_cg``) while that costs less than a factorization, as measured while
    solving (``SolveCosts``), and refactor when it converges slowly. ``CholmodSolver`` /
    ``PardisoSolver`` fix the backend. ``SolverOptions``' ``linear_solver`` ("auto",
    "cholmod", "pardiso", …), ``cholmod_mode``, ``reuse_factor`` and ``cg_max_iterations``
    set them, and ``threads`` the torch threads (default: one for the iterations of small CPU
    problems, ``optimize.SINGLE_THREAD_MAX_ROWS``); ``SolveResult.linear_solver`` names the
    backend used and ``SolveResult.factor_stats`` counts factorizations, reused factors and CG
    iterations. LM (``posegraph.solve.optimize.LevenbergMarquardt``) follows GTSAM's
    damping schedule, ``LevenbergMarquardt.damping_rule`` (a ``DampingRule``); its step and
    convergence tests run on scalars for one CPU problem (``optimize.ScalarOps``), on torch
    otherwise. A ``BlockSparseCostFunction`` may write its weighted
    Jacobian blocks straight to A's CSR values (``place_weighted_block_jacobians``, given
    ``costs.BlockSlots``), adding up its share of ``Aᵀb``: ``BetweenEdges`` does, in one
    compiled call for one float64 graph on CPU.
Differentiable, batched solving
    ``PoseGraphLayer(graph | kind, edges, fixed)`` — ``torch.nn.Module`` over
    ``th.TheseusLayer``: ``layer(poses, measurements, information) -> (poses, LayerInfo)``
    for B graphs of one topology (each stops at its own convergence; same result as solving
    each alone); backward modes ``implicit`` / ``truncated`` / ``unroll``; gradients to
    measurements, information, learnable per-edge / per-edge-kind weights, initial poses.
    Linear solver per device and size (sparse Cholesky on CPU; Theseus' CUDA LU, batched dense
    Cholesky ``DenseCholeskySolver`` or batched CG ``ConjugateGradientSolver`` elsewhere),
    reported in ``LayerInfo.linear_solver``; ``SolverOptions(linear_solver=...)`` forces one.
Extension points (Theseus)
    ``ManifoldArray`` (packed variables), ``BlockSparseCostFunction`` / ``BetweenEdges`` /
    ``PointObservations`` (vectorized costs), ``FullInformationWeight`` / ``BlockScaleWeight`` (cost weights),
    ``RobustBlockWeight`` (a robust kernel over any block weight: cost ``½ Σ ρ(‖We‖²)``,
    IRLS linearization; ``RobustSpecError`` for bad kernel specs).
Debugging
    ``posegraph.debug``: ``DebugCallback`` (Theseus ``end_iter_callback``: per-iteration error,
    step, damping, per-edge error/Jacobian norms, first non-finite cost), ``normal_matrix`` /
    ``normal_rhs`` (AᵀA, Aᵀb as sparse matrices for any linearization), trace files and
    ``posegraph inspect``. ``optimize(…, end_iter_callback=cb)`` runs ``cb.check_initial``
    first when the callback has one (the first non-finite edge is named at iteration 0).
    ``PoseGraphProblem.edge("EDGE_SE3:QUAT 12 13")`` — one edge's error and Jacobian blocks
    (``EdgeLinearization``).
Uncertainty
    ``marginal_covariances(problem, poses=None)`` — ``(N, d, d)`` marginal covariances of the
    poses (tangent order: translation then rotation; zeros for fixed poses), by selected
    inversion of the sparse Cholesky factor of ``AᵀA`` (:mod:`posegraph.solve.covariance`).
Runs, evaluation, figures
    ``load_config(path, schema="optimize"|"layer")`` — YAML run configurations validated by
    the CLI's own option definitions (:mod:`posegraph.cli.config`). ``evaluate(estimate, truth,
    align)`` — ATE (Umeyama-aligned) and RPE as evo defines them; ``umeyama`` (:mod:`posegraph.report.eval`).
    ``graph_info(graph)`` — counts, components, information summary, initial χ².
    ``posegraph.report.plot.plot_graphs`` — trajectory/error-history figures (needs matplotlib).
Scaling out
    ``posegraph.batch.run(inputs, out_dir, options, client=None)`` — ``posegraph batch``: many
    g2o files optimized on Dask workers (a LocalCluster or an existing cluster; the
    ``posegraph[distributed]`` extra), one ``results.jsonl`` line per input.
    ``posegraph.solve.threads`` — per-process thread budgets (torch, MKL, OpenBLAS) for processes
    that share cores. ``examples/train_ddp.py`` — PoseGraphLayer under DistributedDataParallel.
Numerics
    ``posegraph.lie`` — stable rotation ↔ quaternion conversions; the rotation rule every
    input follows (``check_rotations``: refused, made a rotation with a warning, or used as
    given, by the precision of the numbers); ``patch_theseus()`` /
    ``unpatch_theseus()`` (also at the top level) make Theseus' own SO3/SE3 → quaternion
    conversions stable.
    ``posegraph.lie.geometry`` — vectorized SE(3)/SE(2) kernels on plain tensors (exp, log,
    right-Jacobian inverses, adjoints, ``se3_between_error_jacobians`` /
    ``se2_between_error_jacobians``), differentiable, with explicit small-angle / near-π
    branches; ``BetweenEdges`` and ``ManifoldArray`` run on them. Tensors in, tensors out;
    without a gradient to record, the hot ones (between logarithm, ``J_r⁻¹``, adjoint
    product, retraction) run as compiled loops on float64 CPU tensors (:mod:`posegraph.lie.native`:
    ``native.AVAILABLE``, ``native.ENABLED``), other small float CPU tensors on NumPy views
    (``geometry.NUMPY_MAX_ELEMENTS``), everything else with torch operations.
"""

from typing import TYPE_CHECKING

from posegraph._lazy import lazy_exports
from posegraph import _moved

_moved.install()  # posegraph 0.1's module paths (posegraph.builder, …) stay importable

#: where each top-level name is defined. They are imported on first use (PEP 562), so
#: ``import posegraph`` does not load torch, Theseus or SciPy until a name needs them (the
#: ``posegraph batch`` client never does); subpackages (``posegraph.mesh``) load the same way.
_EXPORTS = {
    "posegraph.lie": ["geometry"],
    "posegraph.model.build": ["MeshTerm", "build_problem", "mesh_term"],
    "posegraph.model.builder": ["PoseGraphBuilder"],
    "posegraph.model.problem": ["PoseGraphProblem"],
    "posegraph.model.checks": ["BuilderError"],
    "posegraph.model.between": ["BetweenEdges"],
    "posegraph.model.costs": ["BlockSparseCostFunction", "JacobianBlocks"],
    "posegraph.model.observations": ["PointObservations"],
    "posegraph.model.user_costs": ["PackedCost", "PosePriors", "PositionPrior", "PositionPriors"],
    "posegraph.init.chordal": ["chordal_initialization"],
    "posegraph.cli.config": ["ConfigError", "load_config"],
    "posegraph.debug.callback": ["DebugCallback"],
    "posegraph.debug.nonfinite": ["NonFiniteError"],
    "posegraph.debug.normal_matrix": ["normal_matrix", "normal_rhs"],
    "posegraph.report.eval": ["evaluate", "umeyama"],
    "posegraph.solve.gnc": ["GncOptions", "GncResult", "optimize_gnc"],
    "posegraph.errors": ["G2oFormatError", "GraphStructureError", "OptimizationError", "PoseGraphError"],
    "posegraph.graph": ["Landmarks", "PoseGraph"],
    "posegraph.report.info": ["graph_info"],
    "posegraph.init.dispatch": ["initialize"],
    "posegraph.io": ["read_g2o", "write_g2o"],
    "posegraph.lie.theseus_patch": ["patch_theseus", "unpatch_theseus"],
    "posegraph.model.mesh_cost": ["LaplacianSmoothingCost"],
    "posegraph.mesh.smoothing": ["laplacian_smooth", "taubin_smooth"],
    "posegraph.mesh.obj": ["read_obj", "write_obj"],
    "posegraph.model.robust": ["RobustBlockWeight", "RobustKernel", "RobustSpecError"],
    "posegraph.solve.covariance": ["CovarianceError", "marginal_covariances"],
    "posegraph.solve.batched": ["ConjugateGradientSolver", "DenseCholeskySolver"],
    "posegraph.solve.sparse_cholesky": ["CholmodSolver", "PardisoSolver", "SparseCholeskySolver"],
    "posegraph.solve.layer": ["LayerInfo", "PoseGraphLayer"],
    "posegraph.solve.linearization": ["BlockSparseLinearization"],
    "posegraph.solve.optimize": ["SolveResult", "SolverOptions", "optimize"],
    "posegraph.model.variables": ["ManifoldArray"],
    "posegraph.model.weights": ["BlockScaleWeight", "FullInformationWeight"],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

if TYPE_CHECKING:  # the same names, eagerly, for type checkers and editors (tests/test_lazy_import.py)
    from posegraph.lie import geometry
    from posegraph import synthetic
    from posegraph.model.build import MeshTerm, build_problem, mesh_term
    from posegraph.model.builder import PoseGraphBuilder
    from posegraph.model.problem import PoseGraphProblem
    from posegraph.model.checks import BuilderError
    from posegraph.model.between import BetweenEdges
    from posegraph.model.costs import BlockSparseCostFunction, JacobianBlocks
    from posegraph.model.observations import PointObservations
    from posegraph.model.user_costs import PackedCost, PosePriors, PositionPrior, PositionPriors
    from posegraph.init.chordal import chordal_initialization
    from posegraph.cli.config import ConfigError, load_config
    from posegraph.debug.callback import DebugCallback
    from posegraph.debug.nonfinite import NonFiniteError
    from posegraph.debug.normal_matrix import normal_matrix, normal_rhs
    from posegraph.report.eval import evaluate, umeyama
    from posegraph.solve.gnc import GncOptions, GncResult, optimize_gnc
    from posegraph.errors import G2oFormatError, GraphStructureError, OptimizationError, PoseGraphError
    from posegraph.graph import Landmarks, PoseGraph
    from posegraph.report.info import graph_info
    from posegraph.init.dispatch import initialize
    from posegraph.io import read_g2o, write_g2o
    from posegraph.lie.theseus_patch import patch_theseus, unpatch_theseus
    from posegraph.model.mesh_cost import LaplacianSmoothingCost
    from posegraph.mesh.smoothing import laplacian_smooth, taubin_smooth
    from posegraph.mesh.obj import read_obj, write_obj
    from posegraph.model.robust import RobustBlockWeight, RobustKernel, RobustSpecError
    from posegraph.solve.covariance import CovarianceError, marginal_covariances
    from posegraph.solve.batched import ConjugateGradientSolver, DenseCholeskySolver
    from posegraph.solve.sparse_cholesky import CholmodSolver, PardisoSolver, SparseCholeskySolver
    from posegraph.solve.layer import LayerInfo, PoseGraphLayer
    from posegraph.solve.linearization import BlockSparseLinearization
    from posegraph.solve.optimize import SolveResult, SolverOptions, optimize
    from posegraph.model.variables import ManifoldArray
    from posegraph.model.weights import BlockScaleWeight, FullInformationWeight

__version__ = "0.1.0"

__all__ = [
    "geometry",
    "read_g2o",
    "write_g2o",
    "PoseGraph",
    "Landmarks",
    "initialize",
    "chordal_initialization",
    "PoseGraphBuilder",
    "BuilderError",
    "PackedCost",
    "PositionPrior",
    "PosePriors",
    "PositionPriors",
    "PoseGraphProblem",
    "build_problem",
    "MeshTerm",
    "mesh_term",
    "LaplacianSmoothingCost",
    "laplacian_smooth",
    "taubin_smooth",
    "read_obj",
    "write_obj",
    "PointObservations",
    "optimize",
    "SolverOptions",
    "SolveResult",
    "ManifoldArray",
    "BlockSparseCostFunction",
    "BetweenEdges",
    "JacobianBlocks",
    "FullInformationWeight",
    "BlockScaleWeight",
    "RobustKernel",
    "RobustBlockWeight",
    "RobustSpecError",
    "optimize_gnc",
    "GncOptions",
    "GncResult",
    "BlockSparseLinearization",
    "SparseCholeskySolver",
    "CholmodSolver",
    "PardisoSolver",
    "PoseGraphLayer",
    "LayerInfo",
    "DenseCholeskySolver",
    "ConjugateGradientSolver",
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
    "marginal_covariances",
    "CovarianceError",
    "patch_theseus",
    "unpatch_theseus",
]
