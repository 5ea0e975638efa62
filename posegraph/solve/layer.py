"""``PoseGraphLayer``: batched, differentiable pose-graph solving as a ``torch.nn.Module``.

The layer holds one graph *topology* (kind, edges, fixed vertices) and solves B graphs of
that topology per call: initial poses, measurements and information (or learnable per-edge /
per-edge-kind weights) in; optimized poses and a :class:`LayerInfo` out. It is the CLI's
solve path wrapped in ``th.TheseusLayer``: the objective comes from
:func:`~posegraph.model.build.build_problem` (one vectorized
:class:`~posegraph.model.between.BetweenEdges`), the optimizer from
:func:`~posegraph.solve.optimize.make_optimizer` (GTSAM-scheduled LM or GN with per-problem
convergence), and the linear solver is picked per device and size
(:func:`~posegraph.solve.optimize.resolve_linear_solver`: sparse Cholesky — PARDISO or
CHOLMOD — on CPU; Theseus' CUDA LU when its extension is built, else batched dense Cholesky
or batched CG).

Gradients flow to measurements, information / sqrt-information tensors, the layer's
learnable weights and the initial poses, with Theseus' backward modes: ``"implicit"`` (one
Gauss–Newton step at the solution with the Hessian held constant, Theseus' implicit
differentiation), ``"truncated"`` (the last k iterations differentiated) or ``"unroll"``
(every iteration differentiated).

Inputs are checked before solving, each error naming the input (:class:`~posegraph.errors.PoseGraphError`):
shapes, dtype and device agree; the device is one the solvers run on
(:func:`~posegraph.errors.check_device`); values are finite, problem by problem; rotations of
poses and measurements are ones the rotation rule does not refuse (no ``(cos, sin) = (0, 0)``,
no ``det R ≤ 0``: :func:`~posegraph.lie.check_rotations`, as in the builder); and each
problem that starts beyond the overflow limit
(:func:`~posegraph.solve.nonlinear.overflow_limit`) fails alone — status ``failed``,
``stop_reason`` ``overflowing-error`` at its index — while the others are solved.

*Topology.* The layer solves over its own edges. Bare tensors carry no edges: measurements of
another graph with the same number of edges (and poses) cannot be told apart from the layer's
own and are solved over the layer's edges. Pass the other graph itself (``layer(graph)``) or
its edges (``layer(poses, z, info, edges=graph.edges)``) to have the topology compared: kind,
pose count, every edge (order and direction included) and the held poses.

*Pickling.* ``state_dict``, ``torch.save(layer)`` and ``copy.deepcopy(layer)`` work before and
after a call: the Theseus objects the layer caches per device and dtype hold native handles
(CHOLMOD factors, PARDISO's library) and are left out, rebuilt on the next call.

In a batch, each problem stops changing once it has converged
(:class:`~posegraph.solve.nonlinear.TruthfulLoop`), so a batched call returns what
solving each graph alone returns (exactly with a fixed ``SolverOptions.cg_max_iterations``; with
the measured default, the CPU solver's choice to reuse its last factor depends on timings); in
implicit / truncated mode every problem then takes the differentiated step(s), as in Theseus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import theseus as th
import torch
from torch import nn

from posegraph.model.checks import (
    BuilderError,
    _Consensus,
    _check_finite,
    _check_information,
    _check_rotations,
    _shape_str,
)
from posegraph.model.problem import PoseGraphProblem
from posegraph.model.build import build_problem
from posegraph.errors import DeviceError, check_device, check_integer
from posegraph.graph import POSE_KINDS, PoseGraph
from posegraph.information import cholesky_sqrt_information
from posegraph.solve.nonlinear import overflow_limit
from posegraph.solve.optimize import (
    SolverOptions,
    make_optimizer,
    problem_linear_solver,
    run_kwargs,
    used_linear_solver,
)


#: the square root the layer uses (finite gradients at Ω = I); kept under its earlier name
differentiable_sqrt_information = cholesky_sqrt_information

BACKWARD_MODES = ("implicit", "truncated", "unroll")
WEIGHT_MODES = (None, "edge", "kind")


@dataclass
class LayerInfo:
    """What one forward call did, per problem of the batch.

    Attributes:
        status: per problem, ``"converged"``, ``"max-iterations"``, ``"stalled"`` or
            ``"failed"`` (:mod:`posegraph.solve.nonlinear`); ``stop_reason``: why, per problem.
        iterations: ``(B,)`` iterations each problem took (up to its stop).
        initial_error / final_error: ``(B,)`` GTSAM's ½ Σ eᵀΩe before / after (detached).
        linear_solver: the linear solver used (``pardiso``, ``cholmod``, ``batched_dense``, ``cg``,
            ``lu_cuda``, ``dense``).
        solver: ``"lm"`` or ``"gn"``; backward_mode: as run; device / dtype: of the solve.
        theseus_info: Theseus' own ``NonlinearOptimizerInfo``.
        detail: the linear solver's message when a problem failed with
            ``linear-solver-error`` (``"problem I: …"`` in a batch), else ``""``.
    """

    status: List[str]
    iterations: torch.Tensor
    initial_error: torch.Tensor
    final_error: torch.Tensor
    linear_solver: str
    solver: str
    backward_mode: str
    device: str
    dtype: torch.dtype
    theseus_info: th.NonlinearOptimizerInfo
    stop_reason: List[str] = field(default_factory=list)
    detail: str = ""

    @property
    def converged(self) -> bool:
        """Whether every problem of the batch converged."""
        return all(s == "converged" for s in self.status)


@dataclass
class _Compiled:
    """The Theseus objects for one (device, dtype, linear solver)."""

    problem: PoseGraphProblem
    layer: th.TheseusLayer
    linear_solver: str


class PoseGraphLayer(nn.Module):
    """Solve batches of pose graphs of one topology, differentiably (``torch.nn.Module``).

    Construct from a :class:`~posegraph.graph.PoseGraph` (its kind, edges, fixed set; its
    measurements, information and poses become defaults for ``forward``) or from
    ``(kind, edges, fixed)``::

        layer = PoseGraphLayer(graph)                      # or PoseGraphLayer("SE3", edges, fixed)
        poses, info = layer(initial_poses, measurements, information)
        loss(poses).backward()                             # grads to measurements, information
        poses, info = layer(other_graph)                   # its topology checked against the layer's

    Args:
        topology: a PoseGraph, or a kind ``"SE2"``/``"SE3"``.
        edges: ``(E, 2)`` pose indices (with a kind).
        fixed: ``(N,)`` bool mask of poses held constant (with a kind; the lowest index of
            every connected component without one is held, as in ``build_problem``).
        options: :class:`~posegraph.solve.optimize.SolverOptions` (solver, iterations,
            tolerances, ``linear_solver`` to force a choice).
        backward_mode: ``"implicit"`` (default), ``"truncated"`` or ``"unroll"``.
        backward_num_iterations: k for ``"truncated"``.
        weights: ``None`` (information from ``forward``), ``"edge"`` (a learnable scale per
            edge) or ``"kind"`` (one per edge kind, ``edge_kinds`` labels): the parameter
            ``log_weight`` multiplies each edge's sqrt information by ``exp(log_weight)``,
            i.e. divides its noise sigma by that factor.
        edge_kinds: ``(E,)`` labels in ``[0, K)`` for ``weights="kind"``.
        end_iter_callback: a Theseus ``end_iter_callback`` (e.g. ``posegraph.DebugCallback``)
            called after every iteration.
    """

    def __init__(
        self,
        topology: Union[PoseGraph, str],
        edges: Optional[torch.Tensor] = None,
        fixed: Optional[torch.Tensor] = None,
        *,
        options: Optional[SolverOptions] = None,
        backward_mode: str = "implicit",
        backward_num_iterations: Optional[int] = None,
        weights: Optional[str] = None,
        edge_kinds: Optional[torch.Tensor] = None,
        end_iter_callback: Optional[Callable] = None,
    ):
        super().__init__()
        self.graph = self._topology(topology, edges, fixed)
        self.options = options or SolverOptions()
        self.options.validate()
        self.backward_mode = self._check_backward(backward_mode, backward_num_iterations)
        self.backward_num_iterations = backward_num_iterations
        self.end_iter_callback = end_iter_callback
        self.register_buffer("edge_kinds", None, persistent=False)
        if weights not in WEIGHT_MODES:
            raise ValueError(f"weights: expected None, 'edge' or 'kind', received {weights!r}")
        self.weights = weights
        if weights == "edge":
            self.log_weight = nn.Parameter(torch.zeros(self.graph.num_edges, dtype=torch.float64))
        elif weights == "kind":
            self.edge_kinds = self._check_kinds(edge_kinds)
            self.log_weight = nn.Parameter(
                torch.zeros(int(self.edge_kinds.max()) + 1, dtype=torch.float64)
            )
        self._compiled: Dict[Tuple, _Compiled] = {}
        self._held_mask: Optional[torch.Tensor] = None

    # -- pickling and devices -----------------------------------------------------------------
    def __getstate__(self) -> dict:
        """The module's state without the cached Theseus objects (CHOLMOD factors and PARDISO's
        ctypes handles cannot be pickled); :meth:`compiled` rebuilds them on the next call."""
        state = super().__getstate__()
        state["_compiled"] = {}
        return state

    def to(self, *args, **kwargs) -> "PoseGraphLayer":
        """``nn.Module.to``, refusing a device posegraph cannot solve on
        (:class:`~posegraph.errors.DeviceError`, e.g. ``cuda`` without CUDA)."""
        device = torch._C._nn._parse_to(*args, **kwargs)[0]
        if device is not None:
            check_device("PoseGraphLayer.to: device", device)
        return super().to(*args, **kwargs)

    def cuda(self, device: Optional[Union[int, torch.device]] = None) -> "PoseGraphLayer":
        """``nn.Module.cuda``, refusing it when CUDA is not available (:class:`~posegraph.errors.DeviceError`)."""
        target = torch.device("cuda", device) if isinstance(device, int) else torch.device(device or "cuda")
        check_device("PoseGraphLayer.cuda: device", target)
        return super().cuda(device)

    # -- construction checks ------------------------------------------------------------------
    @staticmethod
    def _topology(topology, edges, fixed) -> PoseGraph:
        """A PoseGraph holding the topology (and any default tensors)."""
        if isinstance(topology, PoseGraph):
            if edges is not None or fixed is not None:
                raise ValueError("edges/fixed: give them only with a kind, not with a PoseGraph")
            return topology
        if topology not in POSE_KINDS:
            raise ValueError(f"kind: expected 'SE2' or 'SE3', received {topology!r}")
        if edges is None:
            raise ValueError("edges: expected an (E, 2) tensor of pose indices, received None")
        edges = torch.as_tensor(edges, dtype=torch.long)
        if edges.ndim != 2 or edges.shape[1] != 2 or edges.shape[0] == 0:
            raise ValueError(f"edges: expected shape (E, 2) with E ≥ 1, received {_shape_str(edges.shape)}")
        n = int(edges.max()) + 1
        fixed = torch.zeros(n, dtype=torch.bool) if fixed is None else torch.as_tensor(fixed, dtype=torch.bool)
        if fixed.ndim != 1 or fixed.shape[0] < n:
            raise ValueError(
                f"fixed: expected a bool mask of shape (N,) with N ≥ {n} (edges index pose {n - 1}), "
                f"received {_shape_str(fixed.shape)}"
            )
        cls, shape, dof = POSE_KINDS[topology]
        e, n = edges.shape[0], fixed.shape[0]
        ident = cls(dtype=torch.float64).tensor[0]
        return PoseGraph(
            kind=topology,
            ids=torch.arange(n),
            poses=None,
            edges=edges,
            measurements=ident.expand(e, *shape).clone(),
            information=torch.eye(dof, dtype=torch.float64).expand(e, dof, dof).clone(),
            fixed=fixed,
        )

    @staticmethod
    def _check_backward(mode: str, k: Optional[int]) -> str:
        if mode not in BACKWARD_MODES:
            raise ValueError(f"backward_mode: expected one of {', '.join(BACKWARD_MODES)}, received {mode!r}")
        if mode == "truncated" and k is None:
            raise ValueError(f"backward_num_iterations: expected an integer ≥ 1 for 'truncated', received {k!r}")
        check_integer("backward_num_iterations", k, 1, allow_none=True)
        return mode

    def _check_kinds(self, kinds: Optional[torch.Tensor]) -> torch.Tensor:
        e = self.graph.num_edges
        if kinds is None:
            raise ValueError("edge_kinds: expected (E,) integer labels for weights='kind', received None")
        kinds = torch.as_tensor(kinds)
        if kinds.shape != (e,) or kinds.is_floating_point() or (kinds < 0).any():
            raise ValueError(
                f"edge_kinds: expected ({e},) non-negative integer labels, received "
                f"{_shape_str(kinds.shape)} {kinds.dtype}"
            )
        return kinds.long()

    # -- sizes ------------------------------------------------------------------------------------
    @property
    def kind(self) -> str:
        """``"SE3"`` or ``"SE2"``."""
        return self.graph.kind

    @property
    def num_poses(self) -> int:
        """Number of poses of the layer's topology."""
        return self.graph.num_poses

    @property
    def num_edges(self) -> int:
        """Number of edges of the layer's topology."""
        return self.graph.num_edges

    def weight_scale(self) -> Optional[torch.Tensor]:
        """``exp(log_weight)`` per edge ``(E,)`` (None without learnable weights)."""
        if self.weights is None:
            return None
        scale = self.log_weight.exp()
        return scale[self.edge_kinds.to(scale.device)] if self.weights == "kind" else scale

    # -- Theseus objects per device / dtype -----------------------------------------------------
    def compiled(self, device: torch.device, dtype: torch.dtype) -> _Compiled:
        """The objective, optimizer and TheseusLayer for ``device``/``dtype`` (built once)."""
        key = (str(device), dtype, self.options.linear_solver)
        if key not in self._compiled:
            if self.options.linear_solver == "lu_cuda" and torch.device(device).type != "cuda":
                raise DeviceError(
                    f"poses: expected a cuda device for linear_solver 'lu_cuda' (Theseus' CUDA LU), received {device}"
                )
            n, shape = self.num_poses, self.graph.element_shape
            ident = self.graph.element_cls(dtype=dtype).tensor[0]
            graph = self.graph.with_poses(ident.expand(n, *shape).clone())
            problem = build_problem(graph.to(device=device, dtype=dtype))
            optimizer = make_optimizer(problem, self.options)
            layer = th.TheseusLayer(optimizer, vectorize=False)
            linear = used_linear_solver(optimizer, problem_linear_solver(problem, self.options))
            self._compiled[key] = _Compiled(problem, layer, linear)
        return self._compiled[key]

    def linear_solver_for(self, device, dtype: torch.dtype = torch.float64) -> str:
        """The linear solver a call on ``device`` would use (builds the objects once)."""
        return self.compiled(check_device("device", device), dtype).linear_solver

    # -- inputs -------------------------------------------------------------------------------------
    def _inputs(
        self,
        poses: torch.Tensor,
        measurements: Optional[torch.Tensor],
        information: Optional[torch.Tensor],
        sqrt_information: Optional[torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        """Check shapes, dtype, device, batch and finite values (messages name the input, and
        the problem and pose or edge of a non-finite value) and return the Theseus input
        tensors."""
        g = self.graph
        n, e, shape, dof = g.num_poses, g.num_edges, g.element_shape, g.dof
        if information is not None and sqrt_information is not None:
            raise BuilderError("information, sqrt_information: expected one of them, received both")
        if not isinstance(poses, torch.Tensor):
            raise BuilderError(f"poses: expected a tensor, received {type(poses).__name__}")
        check_device("poses", poses.device)
        consensus = _Consensus(None, None)
        poses = self._batched("poses", poses, (n, *shape), consensus)
        if measurements is None:
            measurements = g.measurements.to(device=poses.device, dtype=poses.dtype)
        meas = self._batched("measurements", measurements, (e, *shape), consensus)
        if sqrt_information is not None:
            weight_name = "sqrt_information"
            weight = self._batched(weight_name, sqrt_information, (e, dof, dof), consensus)
        else:
            if information is None:
                information = g.information.to(device=poses.device, dtype=poses.dtype)
            weight_name = "information"
            weight = self._batched(weight_name, information, (e, dof, dof), consensus)
        for what, tensor in (("poses", poses), ("measurements", meas), (weight_name, weight)):
            _check_finite(what, tensor, consensus.batch)
        for what, tensor in (("poses", poses), ("measurements", meas)):
            _check_rotations(what, tensor, g.kind, consensus.batch)
        if sqrt_information is not None:
            sqrt_info = weight
        else:
            _check_information(weight.detach().reshape(-1, dof, dof), dof, "information")
            sqrt_info = cholesky_sqrt_information(weight)
        scale = self.weight_scale()
        if scale is not None:
            sqrt_info = sqrt_info * scale.to(device=poses.device, dtype=poses.dtype)[:, None, None]
        batch = consensus.batch
        return {
            "poses": poses.expand(batch, *poses.shape[1:]),
            "measurements": meas,
            "sqrt_information": sqrt_info,
        }

    @staticmethod
    def _batched(what: str, tensor, expected: Tuple[int, ...], consensus: _Consensus) -> torch.Tensor:
        if not isinstance(tensor, torch.Tensor):
            raise BuilderError(f"{what}: expected a tensor, received {type(tensor).__name__}")
        if tensor.ndim == len(expected):
            tensor = tensor.unsqueeze(0)
        if tensor.ndim != len(expected) + 1 or tuple(tensor.shape[1:]) != expected:
            raise BuilderError(
                f"{what}: expected shape (batch, {', '.join(map(str, expected))}) or "
                f"{_shape_str(expected)}, received {_shape_str(tensor.shape)}"
            )
        consensus.check(what, tensor)
        return tensor

    # -- topology and values --------------------------------------------------------------------------
    def _check_edges(self, edges, what: str) -> None:
        """``edges`` must be the layer's, in the same order and direction."""
        mine = self.graph.edges.cpu()
        edges = torch.as_tensor(edges).detach().cpu()
        if tuple(edges.shape) != tuple(mine.shape):
            raise BuilderError(
                f"{what}: expected the layer's topology, {_shape_str(mine.shape)} edges, received "
                f"{_shape_str(edges.shape)}"
            )
        differ = torch.nonzero((edges.long() != mine).any(1)).flatten()
        if differ.numel():
            k = int(differ[0])
            raise BuilderError(
                f"{what}: expected the layer's topology, received another: edge {k} is "
                f"({int(edges[k, 0])}, {int(edges[k, 1])}), the layer's is ({int(mine[k, 0])}, {int(mine[k, 1])}) "
                f"({differ.numel()} of {mine.shape[0]} edges differ); the layer would solve these "
                "measurements over its own edges — build a PoseGraphLayer for that graph"
            )

    def _check_topology(self, graph: PoseGraph) -> None:
        """``graph`` must have the layer's kind, pose count, edges and held poses."""
        mine = self.graph
        if graph.kind != mine.kind:
            raise BuilderError(f"graph: expected a {mine.kind} graph (the layer's kind), received {graph.kind}")
        if graph.num_poses != mine.num_poses:
            raise BuilderError(
                f"graph: expected the layer's topology, {mine.num_poses} poses, received {graph.num_poses}"
            )
        self._check_edges(graph.edges, "graph: edges")
        if torch.equal(graph.fixed.cpu(), mine.fixed.cpu()):
            return
        theirs, held = graph.gauge_fixed(), self._held()
        if not torch.equal(theirs, held):
            raise BuilderError(
                f"graph: fixed: expected the poses the layer holds, {torch.nonzero(held).flatten().tolist()}, "
                f"received a graph holding {torch.nonzero(theirs).flatten().tolist()}"
            )

    def _held(self) -> torch.Tensor:
        """The poses the layer holds constant (its graph's gauge), computed once."""
        if self._held_mask is None:
            self._held_mask = self.graph.gauge_fixed()
        return self._held_mask

    # -- forward ------------------------------------------------------------------------------------
    def forward(
        self,
        poses: Union[torch.Tensor, PoseGraph, None] = None,
        measurements: Optional[torch.Tensor] = None,
        information: Optional[torch.Tensor] = None,
        sqrt_information: Optional[torch.Tensor] = None,
        *,
        edges: Optional[torch.Tensor] = None,
        backward_mode: Optional[str] = None,
        backward_num_iterations: Optional[int] = None,
        end_iter_callback: Optional[Callable] = None,
    ) -> Tuple[torch.Tensor, LayerInfo]:
        """Optimize B graphs; returns the poses ``(B, N, *shape)`` and a :class:`LayerInfo`.

        Args:
            poses: initial poses ``(B, N, *shape)`` (or ``(N, *shape)``); default: the
                PoseGraph's. Device and dtype of the solve are theirs. Or a PoseGraph: its
                topology is compared with the layer's (kind, poses, edges, held poses) and
                its poses, measurements and information are the defaults.
            measurements: ``(B|1, E, *shape)`` (or ``(E, *shape)``); default: the graph's.
            information: ``(B|1, E, d, d)`` symmetric PSD; or ``sqrt_information`` ``W``
                (``WᵀW = Ω``); default: the graph's information.
            edges: ``(E, 2)`` pose indices the measurements belong to: compared with the
                layer's edges (bare tensors cannot be told apart from the layer's otherwise).
            backward_mode: overrides the layer's.
            backward_num_iterations: overrides the layer's.
            end_iter_callback: overrides the layer's.

        Raises:
            BuilderError: an input of the wrong shape, dtype, device, topology, or with
                non-finite values or rotations the rotation rule refuses (``(cos, sin) =
                (0, 0)``, ``det R ≤ 0``); a problem whose initial error overflows (named by its
                index in the batch).
            DeviceError: inputs on a device posegraph cannot solve on.
        """
        if edges is not None:
            self._check_edges(edges, "edges")
        if isinstance(poses, PoseGraph):
            source = poses
            self._check_topology(source)
            if source.poses is None:
                raise BuilderError("poses: expected a graph with initial poses, received one without (initialize it first)")
            poses = source.poses
            if measurements is None:
                measurements = source.measurements
            if information is None and sqrt_information is None:
                information = source.information
        if poses is None:
            if self.graph.poses is None:
                raise BuilderError("poses: expected initial poses (the layer's graph has none), received None")
            poses = self.graph.poses
        k = backward_num_iterations if backward_num_iterations is not None else self.backward_num_iterations
        mode = self._check_backward(backward_mode or self.backward_mode, k)
        inputs = self._inputs(poses, measurements, information, sqrt_information)
        compiled = self.compiled(inputs["poses"].device, inputs["poses"].dtype)
        objective = compiled.problem.objective
        with torch.no_grad():
            objective.update({k: v.detach() for k, v in inputs.items()})
            initial = objective.error_metric().detach().clone()
        kwargs = run_kwargs(self.options, backward_mode=mode)
        if mode == "truncated":
            kwargs["backward_num_iterations"] = k
        callback = end_iter_callback or self.end_iter_callback
        if callback is not None:
            kwargs["end_iter_callback"] = callback
        values, info = compiled.layer(inputs, optimizer_kwargs=kwargs)
        out = values["poses"]
        with torch.no_grad():
            final = objective.error_metric().detach().clone()
        return out, self._info(info, initial, final, compiled, mode, out)

    def _info(self, info, initial, final, compiled: _Compiled, mode: str, out: torch.Tensor) -> LayerInfo:
        outcome = compiled.layer.optimizer.outcome
        return LayerInfo(
            status=list(outcome.status),
            stop_reason=list(outcome.stop_reason),
            iterations=torch.as_tensor(outcome.iterations),
            initial_error=initial,
            final_error=final,
            linear_solver=compiled.linear_solver,
            solver=self.options.solver,
            backward_mode=mode,
            device=str(out.device),
            dtype=out.dtype,
            theseus_info=info,
            detail=outcome.detail,
        )


__all__ = ["PoseGraphLayer", "LayerInfo", "differentiable_sqrt_information", "overflow_limit", "BACKWARD_MODES"]
