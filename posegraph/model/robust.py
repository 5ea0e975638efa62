"""Robust kernels (Huber, Cauchy, DCS) as a block cost weight on the fast path.

A robust kernel ``ρ`` replaces each residual block's cost ``s = ‖W e‖²`` by ``ρ(s)``, so the
objective becomes ``½ Σ ρ(‖W e‖²)`` — with ``ρ(s) ≈ s`` for small ``s``, so inliers cost what they
did. The kernels are Theseus' ``th.RobustLoss`` classes (``x`` = squared norm, ``radius`` = c²
for Huber and Cauchy, Φ for DCS):

* Huber, ``th.HuberLoss``: ``ρ(s) = s`` for ``s ≤ c²``, else ``2c√s − c²``;
* Cauchy, :class:`CauchyLoss` here: ``ρ(s) = c² log(1 + s/c²)``;
* DCS, :class:`DCSLoss` here: dynamic covariance scaling (Agarwal, Tipaldi, Spinello, Stachniss,
  Burgard, "Robust map optimization using dynamic covariance scaling", ICRA 2013) scales a
  residual by ``min(1, 2Φ/(Φ + s))``; the kernel with that scaling as ``√ρ'`` is
  ``ρ(s) = s`` for ``s ≤ Φ``, else ``Φ(3s − Φ)/(s + Φ)`` (``ρ'(s) = 4Φ²/(Φ + s)²``, the
  integral of the squared scaling; MacTavish & Barfoot 2015, "At all costs", Table 1).

``c`` is in units of the whitened residual (standard deviations); DCS's ``Φ`` bounds the
squared whitened norm itself, as in Agarwal et al. (their recommended ``Φ = 1``). Huber and
Cauchy are GTSAM's ``noiseModel::mEstimator::Huber(k)`` / ``Cauchy(k)`` with ``k = c`` (GTSAM's
``ρ`` is half ours, and its error is ``Σ ρ``, so the reported costs agree); DCS has GTSAM's
``DCS(Φ)`` weight (its reported loss is a different function).

Outlier rejection by graduated non-convexity (``"gnc"``) is not a kernel but an outer loop over
weighted solves: :mod:`posegraph.solve.gnc`.

:class:`RobustBlockWeight` wraps any :class:`~posegraph.model.weights.BlockCostWeight` (the full
information weight of the edges) and plays both roles Theseus' ``th.RobustCostFunction`` plays:

* the *cost*: ``weight_block_error`` returns ``√(ρ(s)/s) · W e``, whose squared norm is
  ``ρ(s)``, so ``Objective.error_metric()`` — the error optimizers, progress lines and summaries
  report — is the robust cost ``½ Σ ρ(‖W e‖²)``;
* the *linearization*: Jacobian blocks and error are both scaled by ``√ρ'(s)``, so
  ``Jᵀ b = −Σ ρ'(s) (W J)ᵀ W e`` is exactly the gradient of the robust cost and
  ``JᵀJ = Σ ρ'(s) (W J)ᵀ W J`` its iteratively-reweighted (IRLS) Gauss–Newton Hessian. This is
  the first-order form of Triggs et al. 2000, "Bundle adjustment — a modern synthesis", §4.3
  (α = 0 in Ceres' notation), the scaling ``th.RobustCostFunction`` uses; the ``ρ''`` term of the
  full correction is left out, as it can make the Hessian indefinite for Cauchy's kernel.

Because both go through the weight, the same cost function works with
:class:`~posegraph.solve.linearization.BlockSparseLinearization` (``weighted_block_jacobians_error``)
and with Theseus' dense linearization (``weighted_jacobians_error``), and the per-edge norms of
the debug trace are those of the robust linearization.

Which edges: ``"all"``, or ``"loop-closures"``: edges whose vertex ids are not consecutive,
``|idᵢ − idⱼ| ≠ 1`` (odometry edges, ``|idᵢ − idⱼ| = 1``, keep their plain quadratic cost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Type, Union

import theseus as th
import torch

from posegraph.errors import PoseGraphError
from posegraph.graph import loop_closure_mask
from posegraph.model.weights import BlockCostWeight

ROBUST_EDGES = ("all", "loop-closures")


class RobustSpecError(PoseGraphError, ValueError):
    """A robust kernel specification that cannot be parsed (e.g. ``"huber:-1"``)."""


class CauchyLoss(th.RobustLoss):
    """Cauchy (Lorentzian) kernel ``ρ(x) = r log(1 + x/r)``, ``ρ'(x) = 1 / (1 + x/r)``
    (``x`` squared norm, ``r = c²``; Black & Anandan 1996's Lorentzian, GTSAM's ``Cauchy``)."""

    @staticmethod
    def _evaluate_impl(x: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        return radius * torch.log1p(x / radius)

    @staticmethod
    def _linearize_impl(x: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        return 1.0 / (1.0 + x / radius)


class DCSLoss(th.RobustLoss):
    """Dynamic covariance scaling as a kernel: ``ρ(x) = x`` for ``x ≤ r``, else
    ``r(3x − r)/(x + r)``; ``ρ'(x) = min(1, 2r/(r + x))²`` (``x`` squared norm, ``r = Φ``;
    Agarwal et al. 2013, see the module doc)."""

    @staticmethod
    def _evaluate_impl(x: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        return torch.where(x <= radius, x, radius * (3.0 * x - radius) / (x + radius))

    @staticmethod
    def _linearize_impl(x: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        return (2.0 * radius / (radius + x)).clamp_max(1.0).square()


#: kernel name → Theseus loss class
KERNELS: Dict[str, Type[th.RobustLoss]] = {"huber": th.HuberLoss, "cauchy": CauchyLoss, "dcs": DCSLoss}

#: kernel name → power of the scale that is the loss's radius: ``c²`` for Huber and Cauchy
#: (``c`` bounds the whitened norm), ``Φ`` itself for DCS (``Φ`` bounds its square).
_RADIUS_POWER: Dict[str, int] = {"huber": 2, "cauchy": 2, "dcs": 1}


@dataclass(frozen=True)
class RobustKernel:
    """A robust kernel and its scale: ``RobustKernel("huber", 1.0)``; ``c`` in whitened units
    for Huber and Cauchy, ``Φ`` on the squared whitened norm for DCS."""

    name: str
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.name == "gnc":
            raise RobustSpecError(
                "robust kernel 'gnc': graduated non-convexity is an outer loop over weighted solves, "
                "not a kernel of the cost: run posegraph.optimize_gnc(problem, 'gnc') on a problem "
                "built without a kernel"
            )
        if self.name not in KERNELS:
            raise RobustSpecError(
                f"robust kernel: expected one of {', '.join(KERNELS)}, received {self.name!r}"
            )
        if not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale) and self.scale > 0):
            raise RobustSpecError(
                f"robust kernel {self.name}: expected a finite scale > 0, received {self.scale!r}"
            )

    @property
    def loss_cls(self) -> Type[th.RobustLoss]:
        """The Theseus ``RobustLoss`` class of the kernel."""
        return KERNELS[self.name]

    def log_radius(self) -> float:
        """``log c²`` (``log Φ`` for DCS), the parameter of Theseus' losses."""
        return _RADIUS_POWER[self.name] * math.log(self.scale)

    def rho(self, s: torch.Tensor) -> torch.Tensor:
        """``ρ(s)`` of squared norms ``s``."""
        return self.loss_cls.evaluate(s, s.new_tensor(self.log_radius()))

    def rho_prime(self, s: torch.Tensor) -> torch.Tensor:
        """``ρ'(s) = dρ/ds``."""
        return self.loss_cls.linearize(s, s.new_tensor(self.log_radius()))

    def __str__(self) -> str:
        return f"{self.name}:{self.scale:g}"

    @classmethod
    def parse(cls, spec: Union[str, "RobustKernel", None]) -> Optional["RobustKernel"]:
        """``"huber:1.0"``, ``"cauchy:0.5"``, ``"dcs:1"``, ``"huber"`` (scale 1) or ``"none"``/``None``
        (no kernel, returns None). Raises :class:`RobustSpecError` on anything else."""
        if spec is None or isinstance(spec, RobustKernel):
            return spec
        text = str(spec).strip().lower()
        if text in ("none", ""):
            return None
        name, sep, scale_text = text.partition(":")
        if sep and not scale_text:
            raise RobustSpecError(f"robust kernel {spec!r}: expected NAME:SCALE, e.g. huber:1.0")
        try:
            scale = float(scale_text) if sep else 1.0
        except ValueError:
            raise RobustSpecError(
                f"robust kernel {spec!r}: expected a number after ':', received {scale_text!r}"
            ) from None
        return cls(name, scale)


class RobustBlockWeight(BlockCostWeight):
    """Apply a robust kernel on top of a block weight (see the module doc for the math).

    Args:
        base: the weight of the residual blocks (e.g. ``FullInformationWeight``).
        kernel: a :class:`RobustKernel` (or a spec such as ``"cauchy:0.5"``).
        mask: optional ``(R,)`` bool: the blocks the kernel applies to (others keep
            ``‖W e‖²``); all blocks when None.
    """

    _EPS = 1e-20

    def __init__(
        self,
        base: BlockCostWeight,
        kernel: Union[RobustKernel, str],
        mask: Optional[torch.Tensor] = None,
        name: Optional[str] = None,
    ):
        super().__init__(name=name)
        parsed = RobustKernel.parse(kernel)
        if parsed is None:
            raise RobustSpecError("RobustBlockWeight: expected a robust kernel, received 'none'")
        self.kernel = parsed
        self.base = base
        self.block_dim = base.block_dim
        for attr in base._aux_vars_attr_names:  # the objective sees the base's variables
            setattr(self, attr, getattr(base, attr))
            self.register_aux_var(attr)
        dtype = next((v.dtype for v in base.aux_vars), torch.get_default_dtype())
        self.log_radius = th.Variable(
            torch.tensor([[parsed.log_radius()]], dtype=dtype), name=f"{self.name}__log_radius"
        )
        self.register_aux_var("log_radius")
        self.mask = None if mask is None else torch.as_tensor(mask, dtype=torch.bool)

    # -- the two scalings -----------------------------------------------------------------------
    def _squared_norm(self, werr: torch.Tensor) -> torch.Tensor:
        return werr.square().sum(-1)  # (B, R)

    def _only_masked(self, factor: torch.Tensor) -> torch.Tensor:
        if self.mask is None:
            return factor
        return torch.where(self.mask.to(factor.device), factor, torch.ones_like(factor))

    def cost_scale(self, werr: torch.Tensor) -> torch.Tensor:
        """``√(ρ(s)/s)`` per block ``(B, R)`` of weighted errors ``(B, R, d)`` (1 at ``s = 0``)."""
        s = self._squared_norm(werr)
        rho = self.kernel.loss_cls.evaluate(s, self.log_radius.tensor.to(s))
        return self._only_masked(((rho + self._EPS) / (s + self._EPS)).sqrt())

    def linearization_scale(self, werr: torch.Tensor) -> torch.Tensor:
        """``√ρ'(s)`` per block ``(B, R)``."""
        s = self._squared_norm(werr)
        return self._only_masked(self.kernel.loss_cls.linearize(s, self.log_radius.tensor.to(s)).sqrt())

    # -- BlockCostWeight ------------------------------------------------------------------------
    def weight_block_error(self, error: torch.Tensor) -> torch.Tensor:
        werr = self.base.weight_block_error(error)
        return werr * self.cost_scale(werr).unsqueeze(-1)

    def weight_block_jacobians_and_error(
        self, jacobians: Sequence[torch.Tensor], rows: Sequence[torch.Tensor], error: torch.Tensor
    ) -> Tuple[List[torch.Tensor], torch.Tensor]:
        wjacs, werr = self.base.weight_block_jacobians_and_error(jacobians, rows, error)
        g = self.linearization_scale(werr)  # (B, R)
        scaled = [j * g[:, r.to(g.device)][..., None, None] for j, r in zip(wjacs, rows)]
        return scaled, werr * g.unsqueeze(-1)

    def is_zero(self) -> torch.Tensor:
        """Per problem: whether the wrapped weight is zero."""
        return self.base.is_zero()

    def _copy_impl(self, new_name: Optional[str] = None) -> "RobustBlockWeight":
        return RobustBlockWeight(self.base.copy(), self.kernel, self.mask, name=new_name)


def robustify(
    weight: BlockCostWeight,
    kernel: Union[RobustKernel, str, None],
    edges: str = "all",
    ids: Optional[torch.Tensor] = None,
    edge_index: Optional[torch.Tensor] = None,
) -> BlockCostWeight:
    """``weight`` wrapped in a :class:`RobustBlockWeight` (or ``weight`` itself when
    ``kernel`` is None/"none").

    Args:
        edges: ``"all"`` or ``"loop-closures"`` (needs ``ids`` ``(N,)`` and ``edge_index``
            ``(E, 2)``).
    """
    parsed = RobustKernel.parse(kernel)
    if edges not in ROBUST_EDGES:
        raise RobustSpecError(f"robust edges: expected one of {', '.join(ROBUST_EDGES)}, received {edges!r}")
    if parsed is None:
        return weight
    mask = None
    if edges == "loop-closures":
        if ids is None or edge_index is None:
            raise ValueError("robustify: edges='loop-closures' needs the vertex ids and the edges")
        mask = loop_closure_mask(ids, edge_index)
    return RobustBlockWeight(weight, parsed, mask, name=f"{weight.name}__{parsed.name}")


__all__ = [
    "RobustKernel",
    "RobustBlockWeight",
    "CauchyLoss",
    "DCSLoss",
    "RobustSpecError",
    "KERNELS",
    "ROBUST_EDGES",
    "loop_closure_mask",
    "robustify",
]
