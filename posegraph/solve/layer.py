"""``PoseGraphLayer``: batched, differentiable pose-graph solving as a ``torch.nn.Module``.

The layer holds one graph *topology* (kind, edges, fixed vertices) and solves B graphs of
that topology per call: initial poses, measurements and information (or learnable per-edge /
per-edge-kind weights) in; optimized poses and a :class:`LayerInfo` out. It is the CLI's
solve path wrapped in ``th.TheseusLayer``: the objective comes from
:func:`~posegraph.builder.build_problem` (one vectorized
:class:`~posegraph.costs.BetweenEdges`), the optimizer from
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

from ..builder import BuilderError, PoseGraphProblem, _Consensus, _check_information, _shape_str, build_problem
from ..graph import POSE_KINDS, PoseGraph
from ..weights import cholesky_sqrt_information
from .optimize import (
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

    @property
    def converged(self) -> bool:
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
        if mode == "truncated" and (k is None or k < 1):
            raise ValueError(f"backward_num_iterations: expected an integer ≥ 1 for 'truncated', received {k!r}")
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
        return self.graph.kind

    @property
    def num_poses(self) -> int:
        return self.graph.num_poses

    @property
    def num_edges(self) -> int:
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
        return self.compiled(torch.device(device), dtype).linear_solver

    # -- inputs -------------------------------------------------------------------------------------
    def _inputs(
        self,
        poses: torch.Tensor,
        measurements: Optional[torch.Tensor],
        information: Optional[torch.Tensor],
        sqrt_information: Optional[torch.Tensor],
    ) -> Dict[str, torch.Tensor]:
        """Check shapes, dtype, device and batch (messages name the input) and return the
        Theseus input tensors."""
        g = self.graph
        n, e, shape, dof = g.num_poses, g.num_edges, g.element_shape, g.dof
        if information is not None and sqrt_information is not None:
            raise BuilderError("information, sqrt_information: expected one of them, received both")
        if not isinstance(poses, torch.Tensor):
            raise BuilderError(f"poses: expected a tensor, received {type(poses).__name__}")
        consensus = _Consensus(None, None)
        poses = self._batched("poses", poses, (n, *shape), consensus)
        if measurements is None:
            measurements = g.measurements.to(device=poses.device, dtype=poses.dtype)
        meas = self._batched("measurements", measurements, (e, *shape), consensus)
        if sqrt_information is not None:
            sqrt_info = self._batched("sqrt_information", sqrt_information, (e, dof, dof), consensus)
        else:
            if information is None:
                information = g.information.to(device=poses.device, dtype=poses.dtype)
            info = self._batched("information", information, (e, dof, dof), consensus)
            _check_information(info.detach().reshape(-1, dof, dof), dof, "information")
            sqrt_info = cholesky_sqrt_information(info)
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
        if not torch.isfinite(tensor).all():
            raise BuilderError(f"{what}: tensor has non-finite values")
        return tensor

    # -- forward ------------------------------------------------------------------------------------
    def forward(
        self,
        poses: Optional[torch.Tensor] = None,
        measurements: Optional[torch.Tensor] = None,
        information: Optional[torch.Tensor] = None,
        sqrt_information: Optional[torch.Tensor] = None,
        *,
        backward_mode: Optional[str] = None,
        backward_num_iterations: Optional[int] = None,
        end_iter_callback: Optional[Callable] = None,
    ) -> Tuple[torch.Tensor, LayerInfo]:
        """Optimize B graphs; returns the poses ``(B, N, *shape)`` and a :class:`LayerInfo`.

        Args:
            poses: initial poses ``(B, N, *shape)`` (or ``(N, *shape)``); default: the
                PoseGraph's. Device and dtype of the solve are theirs.
            measurements: ``(B|1, E, *shape)`` (or ``(E, *shape)``); default: the graph's.
            information: ``(B|1, E, d, d)`` symmetric PSD; or ``sqrt_information`` ``W``
                (``WᵀW = Ω``); default: the graph's information.
            backward_mode, backward_num_iterations, end_iter_callback: override the layer's.
        """
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
        )


__all__ = ["PoseGraphLayer", "LayerInfo", "differentiable_sqrt_information", "BACKWARD_MODES"]
