"""Debugging a diverging or non-finite optimization: per-iteration traces, a non-finite
locator, and the normal equations of any linearization.

The pieces
----------
:class:`DebugCallback`
    A Theseus ``end_iter_callback(optimizer, info, delta, it)`` for any nonlinear optimizer
    (Gauss–Newton, LM; dense, sparse or block-sparse linearization), also accepted by
    :func:`posegraph.solve.optimize.optimize` (``end_iter_callback=cb``). Per iteration it
    records the objective error, ``‖δ‖`` and LM's damping; with ``per_cost=True`` also, per
    cost function, the weighted error norm and the norm of each Jacobian block. A
    :class:`~posegraph.model.costs.BlockSparseCostFunction` (one Theseus cost holding many edges)
    is reported per *residual block*, named by ``cost.block_name(i)`` (``"EDGE_SE3:QUAT 12
    13"``), with one Jacobian norm per layout entry (``[‖J_i‖, ‖J_j‖]`` for an edge).
    The trace is saved as JSON (:meth:`DebugCallback.save`) and printed by
    :func:`run_inspect`.
:func:`locate_nonfinite` / :meth:`DebugCallback.check_initial`
    Name the first cost function (residual block) whose error or Jacobian is NaN/inf, with
    its variables (for a block: its elements, e.g. ``"VERTEX_SE3:QUAT 12"``).
:func:`edge_linearization` (``problem.edge(name)``)
    One residual block's (an edge's) error and Jacobian blocks, unweighted and weighted, at
    the current state (:class:`EdgeLinearization`), without a dense Jacobian.
:func:`normal_matrix` / :func:`normal_rhs` / :func:`jacobian_matrix`
    ``AᵀA``, ``Aᵀb`` and ``A`` of one batch element as SciPy matrices for posegraph's
    :class:`~posegraph.solve.linearization.BlockSparseLinearization` and Theseus'
    ``SparseLinearization`` (whose ``AtA`` raises ``NotImplementedError``) and
    ``DenseLinearization``.

Iterations are numbered as in :class:`posegraph.solve.optimize.IterationRecord`: iteration
``0`` is the initial guess, iteration ``n`` the state after ``n`` steps (the ``n``-th call of
the callback, Theseus' ``it + 1``).

Non-finite means: a residual block whose contribution ``½‖W e‖²`` to the objective is NaN or
±inf (this includes errors so large that their square overflows, e.g. a measurement
translation of 1e200), or a Jacobian block with a NaN/inf entry.

Modules: :mod:`~posegraph.debug.callback`, :mod:`~posegraph.debug.nonfinite`,
:mod:`~posegraph.model.edge`, :mod:`~posegraph.debug.normal_matrix`,
:mod:`~posegraph.debug.inspect_trace`, and the shared :mod:`~posegraph.model.names` and
:mod:`~posegraph.debug.catalog`.
"""

from posegraph.debug.callback import (
    DebugCallback,
    TRACE_FORMAT,
    TRACE_VERSION,
)
from posegraph.debug.nonfinite import (
    NonFiniteReport,
    NonFiniteError,
    locate_nonfinite,
    check_initial,
)
from posegraph.model.edge import EdgeLinearization, UnknownEdgeError, edge_linearization
from posegraph.model.names import ElementNames, NameFilter, NamePatternError
from posegraph.debug.normal_matrix import (
    jacobian_matrix,
    normal_matrix,
    normal_rhs,
)
from posegraph.debug.inspect_trace import (
    load_trace,
    run_inspect,
)

__all__ = [
    "DebugCallback",
    "TRACE_FORMAT",
    "TRACE_VERSION",
    "NonFiniteReport",
    "NonFiniteError",
    "locate_nonfinite",
    "check_initial",
    "EdgeLinearization",
    "UnknownEdgeError",
    "edge_linearization",
    "ElementNames",
    "NameFilter",
    "NamePatternError",
    "jacobian_matrix",
    "normal_matrix",
    "normal_rhs",
    "load_trace",
    "run_inspect",
]
