"""Gauss–Newton and Levenberg–Marquardt over Theseus' optimizers, with statuses that tell the truth.

Theseus 0.2.3's loop (``NonlinearLeastSquares._optimize_loop``) counts a problem whose step
was rejected three times in a row as converged (its error did not change), and judges the
absolute tolerance on the batch mean. Here the loop is ours (:class:`TruthfulLoop`), built from
Theseus' own pieces (``linearize``, ``compute_delta``, ``_step``, ``_update_info``), with the
semantics of GTSAM's ``LevenbergMarquardtOptimizer`` (Dellaert et al., gtsam.org; its
``iterate()``):

* **An iteration** linearizes once and ends with an accepted step (or a stop). LM's rejected
  step raises the damping and is retried *within the iteration*, from the same linearization,
  until the cost drops or the damping passes its upper bound (then the problem is
  ``stalled``). A rejected step is never convergence.
* **Convergence** is tested only after an accepted step, per problem, and names its criterion
  (:data:`CRITERIA`): the error below ``abs_tolerance`` (``absolute-error``), its decrease below
  ``abs_tolerance`` (``absolute-decrease``) or below ``rel_tolerance`` relative to the error
  (``relative-decrease``; at least 10 rounding units of the dtype, so float32 solves converge)
  — a change within the tolerances in either direction is no change —,
  and, when enabled, ``‖Aᵀb‖∞`` before a step (``gradient-norm``) or ``‖δ‖∞`` of an accepted
  step (``step-norm``) below their tolerances.
* **Gauss–Newton** takes every finite step; a step that raises the cost beyond the tolerances
  fails the decrease tests, so it is never called convergence (the progress line shows it).
* **Statuses** (:data:`STATUSES`), per problem: ``converged``, ``max-iterations``,
  ``stalled`` (LM's damping at its bound without a decrease) and ``failed`` (a non-finite
  error, step or linear solve, or a start beyond :func:`overflow_limit`). The optimizer's :class:`Outcome` holds them, with a
  ``stop_reason`` each; ``SolveResult``, ``LayerInfo``, the CLI and the traces read it.

In a batch, problems stop one by one and stay as they stopped (Theseus' ``ignore_mask``).
With ``backward_mode="implicit"`` / ``"truncated"`` Theseus runs a second, differentiated loop
after the first: there every converged or still running problem takes the differentiated
step(s) — stalled and failed ones, which have no solution to differentiate, stay as they are,
so with LM no problem ends worse than it started — implicit: one
Gauss–Newton step, for its derivative only (:func:`_derivative_only`: the poses stay the
solver's, and the first loop has every iteration); truncated: the optimizer's steps, applied when they do not raise
the cost beyond ``√ε`` of it, from LM's initial damping, so problems already at their solution
still carry an undamped gradient —
and the statuses of problems that had stopped stay as they were. ``end_iter_callback`` is
called after every iteration of a running problem (the converging one included), not after
those differentiated steps alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Tuple

import numpy as np
import theseus as th
import torch

from posegraph.model.checks import _all_finite
from posegraph.solve.batched import BlockSparseSolver
from posegraph.solve.criteria import (  # noqa: F401 - ScalarOps, decrease_criterion, predicted_decrease: also named here
    ScalarOps,
    _arrays,
    _mask,
    _quiet,
    _tensor,
    decrease_criterion,
    predicted_decrease,
)

#: the per-problem statuses of a solve
STATUSES = ("converged", "max-iterations", "stalled", "failed")
#: the relative tolerance is at least this many rounding units of the cost's dtype
REL_TOLERANCE_EPS = 10
#: the convergence criteria, as named in ``stop_reason``
CRITERIA = ("absolute-error", "absolute-decrease", "relative-decrease", "gradient-norm", "step-norm")


@dataclass(frozen=True)
class DampingRule:
    """LM's step test and damping schedule (GTSAM's defaults; :class:`LevenbergMarquardt`).

    A step is accepted when the gain ratio ``ρ = (F(x) − F(x+δ)) / (L(0) − L(δ))`` exceeds
    ``min_model_fidelity``, with the predicted decrease ``L(0) − L(δ) = ½ δᵀ(λδ + Aᵀb)``
    (:func:`predicted_decrease`); then ``λ /= lambda_factor``, else ``λ *= lambda_factor``,
    within ``bounds``. A problem whose step is rejected at the upper bound stalls.
    """

    min_model_fidelity: float = 1e-3
    lambda_factor: float = 10.0
    bounds: Tuple[float, float] = (0.0, 1e5)

    def update(
        self, xp: Any, delta: Any, damping: Any, atb: Any, new_err: Any, previous_err: Any, rel_tol: float, abs_tol: float
    ) -> Tuple[Any, Any]:
        """Whether each problem's step ``delta`` ``(B, n)`` is rejected, and the next damping,
        from the damping, ``Aᵀb`` ``(B, n)`` and the errors after and before the step (all
        ``(B,)``). A step whose predicted decrease is below the convergence tolerances
        (``rel_tol``, ``abs_tol``) is accepted: ρ is rounding noise there, so a converged
        problem stops instead of retrying. Values of namespace ``xp`` (:func:`_arrays`)."""
        predicted = predicted_decrease(xp, delta, damping, atb)
        rho = (previous_err - new_err) / predicted
        reject = xp.logical_not(rho > self.min_model_fidelity)  # NaN/inf errors are rejected too
        negligible = xp.abs(predicted) <= rel_tol * xp.abs(previous_err) + abs_tol
        reject = xp.logical_and(reject, xp.logical_not(xp.logical_and(negligible, xp.isfinite(new_err))))
        scaled = xp.where(reject, damping * self.lambda_factor, damping / self.lambda_factor)
        return reject, xp.clip(scaled, *self.bounds)


def overflow_limit(dtype: torch.dtype) -> float:
    """The largest initial error ½ Σ eᵀΩe a problem may start from: √(largest ``dtype``
    value), ≈ 1.3e154 in float64 and 1.8e19 in float32. The normal equations multiply
    residuals, Jacobians and steps, each of up to the error's square-root scale (translations
    enter SE(3) Jacobians as well as residuals), so LM's predicted decrease ``δᵀAᵀb`` is cubic
    in that scale. Measured on a 6-pose SE(3) loop in float64 with one pose moved away: at
    1e76 (error 3.5e153, accepted) LM runs without an overflow; at 1e100 (error 3.5e201) its
    predicted decrease overflows and the solve returns garbage as "converged"; at 1e160 the
    error itself overflows and Theseus fails the whole batch. A problem that starts beyond it
    fails at once (``overflowing-error``), alone in its batch."""
    return float(torch.finfo(dtype).max) ** 0.5



class Outcome:
    """How each problem of a batch stopped: ``status`` (one of :data:`STATUSES`, ``""``
    while running), ``stop_reason`` (a criterion of :data:`CRITERIA`, ``"max-iterations"``,
    ``"damping-limit"``, ``"non-finite-error"``, ``"overflowing-error"``, ``"non-finite-step"``
    or ``"linear-solver-error"``) and the ``iterations`` each took."""

    def __init__(self, batch_size: int) -> None:
        self.status = np.full(batch_size, "", dtype=object)
        self.stop_reason = np.full(batch_size, "", dtype=object)
        self.iterations = np.zeros(batch_size, dtype=np.int64)
        self.detail = ""  # e.g. the linear solver's message

    @property
    def running(self) -> np.ndarray:
        """Per problem: whether it has no status yet (still iterating)."""
        return self.status == ""

    def stop(self, mask: np.ndarray, status: str, reason: Any) -> None:
        """Stop the running problems of ``mask`` with ``status`` and ``reason`` (a string, or
        one per problem)."""
        mask = mask & self.running
        self.status[mask] = status
        self.stop_reason[mask] = reason if isinstance(reason, str) else np.asarray(reason, dtype=object)[mask]

    def finish(self) -> None:
        """Problems still running have used all their iterations."""
        self.stop(self.running, "max-iterations", "max-iterations")

    def theseus_status(self) -> np.ndarray:
        """The statuses as Theseus' ``NonlinearOptimizerStatus`` (``stalled`` has no own
        value there: ``MAX_ITERATIONS``, not converged)."""
        names = {
            "converged": th.NonlinearOptimizerStatus.CONVERGED,
            "failed": th.NonlinearOptimizerStatus.FAIL,
            "": th.NonlinearOptimizerStatus.START,
        }
        return np.array([names.get(s, th.NonlinearOptimizerStatus.MAX_ITERATIONS) for s in self.status])


def _derivative_only(delta: torch.Tensor) -> torch.Tensor:
    """Implicit differentiation's step: zero in value, ``delta``'s derivative.

    Implicit differentiation takes one Gauss–Newton step ``δ(θ) = -H⁻¹g(x*, θ)`` with
    gradients at the solution ``x*``: where ``g(x*, θ) = 0`` its derivative is the implicit
    function theorem's ``dx*/dθ = -H⁻¹ ∂g/∂θ`` (Pineda et al., "Theseus: A Library for
    Differentiable Nonlinear Optimization", NeurIPS 2022, sec. 3.2). Its value is the
    derivative's by-product, not a step the solve chose: small at a well-conditioned solution,
    but an ill-conditioned or rank-deficient ``H`` (information spanning 12 orders of magnitude,
    or of rank 3 of 6) makes it large and the cost rises by orders of magnitude, after the
    solver had converged. So the poses stay the solver's, ``x* ⊕ (δ - δ)`` (``exp(0)`` is the
    identity: the values are unchanged to the bit), and the step gives only its derivative.
    """
    return delta - delta.detach()


class TruthfulLoop:
    """Mixin for Theseus' nonlinear least-squares optimizers: the loop of the module doc.

    Tolerances for ``gradient-norm`` and ``step-norm`` are the attributes
    ``gradient_tolerance`` and ``step_tolerance`` (0: off, as in GTSAM's LM, so iteration
    counts stay GTSAM's). After ``optimize``, :attr:`outcome` says how each problem stopped.
    """

    gradient_tolerance: float = 0.0
    step_tolerance: float = 0.0
    outcome: Optional[Outcome] = None
    _frozen: Optional[torch.Tensor] = None  # problems a step leaves as they are
    _carry: Optional[np.ndarray] = None  # stopped problems taking a differentiated step
    _reject: Optional[Any] = None  # the last step test's rejections (namespace of _arrays)
    _backward_mode: Any = None
    _loops_run = 0
    #: the variables' values after this iteration's first trial step whose error was not
    #: finite (``{name: tensor}``; the step was refused), else None: for debug callbacks
    nonfinite_step: Optional[dict] = None

    def reset(self, **kwargs) -> None:
        """Resets the optimizer for a new solve, with a fresh per-problem :class:`Outcome`."""
        super().reset(**kwargs)  # type: ignore[misc]
        self.outcome = Outcome(self.objective.batch_size)  # type: ignore[attr-defined]
        self._backward_mode = kwargs.get("backward_mode")
        self._loops_run = 0

    def _split_backward_iters(self, **kwargs) -> Tuple[int, int]:
        """Theseus' split of ``max_iterations`` between the loops without and with autograd;
        with implicit differentiation the solve keeps all of them (Theseus counts the
        differentiated step as the last one): that step does not move the poses
        (:func:`_derivative_only`), so the solve is the same as in the other modes."""
        backward, no_grad = super()._split_backward_iters(**kwargs)  # type: ignore[misc]
        if kwargs.get("backward_mode") == th.BackwardMode.IMPLICIT:
            return backward, self.params.max_iterations  # type: ignore[attr-defined]
        return backward, no_grad

    def _compute_retracted_tensors_and_error(self, delta, converged_indices, force_update):
        """Theseus' trial step; the first one of an iteration whose error is not finite is
        kept in :attr:`nonfinite_step` (the step is then refused and undone, so a debug
        callback could not otherwise see which cost went non-finite)."""
        tensors, err = super()._compute_retracted_tensors_and_error(delta, converged_indices, force_update)  # type: ignore[misc]
        if self.nonfinite_step is None and not _all_finite(err.detach()):
            self.nonfinite_step = {name: t.detach().clone() for name, t in tensors.items()}
        return tensors, err

    def _step(self, delta, previous_err, converged_indices, force_update, delta_forced_to_gn, **kwargs):
        self._frozen = None if force_update else converged_indices
        self._reject = None
        return super()._step(  # type: ignore[misc]
            delta, previous_err, converged_indices, force_update, delta_forced_to_gn, **kwargs
        )

    def _carry_rule(self, xp: Any, reject: Any, new_err: Any, previous_err: Any) -> Any:
        """In a differentiated loop, stopped problems take their step unless it raises the
        cost beyond ``√ε`` of it (or is not finite); the others keep ``reject``."""
        if self._carry is None:
            return reject
        carry = self._carry if xp is not ScalarOps else bool(self._carry[0])
        if xp is torch:
            carry = torch.as_tensor(carry, device=new_err.device)
        eps = math.sqrt(float(np.finfo(np.dtype(str(new_err.dtype).replace("torch.", ""))).eps))
        worse = xp.logical_not(new_err <= previous_err + eps * xp.abs(previous_err))
        return xp.where(carry, worse, reject)

    def _rel_tolerance(self, err: torch.Tensor) -> float:
        """The relative tolerance, at least :data:`REL_TOLERANCE_EPS` rounding units of
        ``err``'s dtype: a relative change of the cost below that is rounding (float32:
        1.2e-6; float64: 2.2e-15, below the default 1e-10)."""
        return max(self.params.rel_err_tolerance, REL_TOLERANCE_EPS * torch.finfo(err.dtype).eps)  # type: ignore[attr-defined]

    def _check_convergence(self, err: torch.Tensor, last_err: torch.Tensor) -> torch.Tensor:
        # Theseus' _update_info asks; the loop has decided already (see _converged_now)
        return self._converged_now

    # -- the loop --------------------------------------------------------------------------------
    def _optimize_loop(
        self,
        num_iter: int,
        info: th.NonlinearOptimizerInfo,
        verbose: bool,
        end_iter_callback=None,
        _last_implicit_diff_step: bool = False,
        **kwargs,
    ) -> int:
        outcome = self.outcome
        assert outcome is not None, "reset() makes the outcome"
        differentiated = self._loops_run > 0  # Theseus' second loop (implicit / truncated)
        self._loops_run += 1
        last_loop = differentiated or self._backward_mode not in (th.BackwardMode.IMPLICIT, th.BackwardMode.TRUNCATED)
        if not differentiated:
            start = info.last_err.detach().cpu().numpy()
            outcome.stop(~np.isfinite(start), "failed", "non-finite-error")
            outcome.stop(start > overflow_limit(info.last_err.dtype), "failed", "overflowing-error")
        device = info.last_err.device
        iters_done = 0
        for it in range(num_iter):
            self.nonfinite_step = None
            running = outcome.running
            if not differentiated and not running.any():
                break
            stepping = running | (differentiated & (outcome.status == "converged"))
            if not stepping.any():
                break
            self.linear_solver.linearization.linearize(_detach_hessian=_last_implicit_diff_step)  # type: ignore[attr-defined]
            if self.gradient_tolerance > 0 and not differentiated:
                self._gradient_test(running)
                running = outcome.running
                stepping &= running
                if not stepping.any():
                    break
            delta = self._direction(stepping, _last_implicit_diff_step, **kwargs)
            if delta is None:
                break
            finite = _mask(torch.isfinite(delta.detach()).all(dim=1))
            outcome.stop(stepping & ~finite, "failed", "non-finite-step")
            stepping &= finite
            self._carry = (stepping & ~running) if differentiated else None
            if differentiated and it == 0 and self._carry.any():
                self._undamp(self._carry)
            frozen = torch.as_tensor(~stepping, device=device)
            if _last_implicit_diff_step:
                delta = _derivative_only(delta)
                judged = np.zeros_like(stepping)  # not an iteration: nothing moves
            else:
                delta = delta * self.params.step_size  # type: ignore[attr-defined]
                judged = stepping & running
            err, accepted = self._iteration_step(
                delta, info.last_err, frozen, judged, _last_implicit_diff_step, **kwargs
            )
            outcome.iterations[judged] += 1
            self._judge(err, info.last_err, accepted & judged, judged)
            self._converged_now = torch.as_tensor(outcome.status == "converged", device=device)
            with torch.no_grad():
                self._update_info(info, it, err, frozen)  # type: ignore[attr-defined]
            if verbose:
                print(f"Nonlinear optimizer. Iteration: {it + 1}. Error: {err.mean().item()}")
            info.last_err = err
            iters_done += 1
            if end_iter_callback is not None and judged.any():
                end_iter_callback(self, info, delta, it)  # (not for carried or implicit steps)
        self._carry = None
        if last_loop:
            outcome.finish()
        info.status = outcome.theseus_status()
        return iters_done

    def _undamp(self, mask: np.ndarray) -> None:
        """Problems of ``mask`` take their differentiated steps undamped (LM: back to the
        initial damping): at a solution LM's damping may have grown on steps that rounding
        noise rejected (float32), and a damped step passes on a damped gradient."""

    def _direction(self, stepping: np.ndarray, implicit: bool, **kwargs) -> Optional[torch.Tensor]:
        """The step from the current linearization (implicit differentiation: a Gauss–Newton
        step, as Theseus takes it); None when the linear solver fails (a non-finite or
        indefinite system, e.g. from overflowing errors): the problems of ``stepping`` fail,
        with the solver's message in ``outcome.detail``. A solver that factors problem by
        problem (:class:`~posegraph.solve.sparse_cholesky.SparseCholeskySolver`) reports the
        problems it could not factor in ``failures`` instead: those fail alone."""
        outcome = self.outcome
        assert outcome is not None
        try:
            if implicit:
                delta = self.linear_solver.solve()  # type: ignore[attr-defined]
            else:
                delta = self.compute_delta(**kwargs)  # type: ignore[attr-defined]
        except RuntimeError as err:  # (torch's LinAlgError included)
            outcome.detail = str(err)
            outcome.stop(stepping, "failed", "linear-solver-error")
            return None
        failures = getattr(self.linear_solver, "failures", None)  # type: ignore[attr-defined]
        if not failures:
            return delta
        failed = np.zeros(len(stepping), dtype=bool)
        failed[list(failures)] = True
        if (failed & stepping & outcome.running).any():
            first = min(i for i in failures if stepping[i])
            where = f"problem {first}: " if len(stepping) > 1 else ""
            outcome.detail = where + failures[first]
            outcome.stop(failed & stepping, "failed", "linear-solver-error")
        return delta

    def _gradient_test(self, running: np.ndarray) -> None:
        """Stop the running problems whose ``‖Aᵀb‖∞`` is below ``gradient_tolerance``."""
        atb = self.linear_solver.linearization.Atb[..., 0]  # type: ignore[attr-defined]
        small = _mask(atb.detach().abs().amax(dim=1) <= self.gradient_tolerance)
        self.outcome.stop(running & small, "converged", "gradient-norm")  # type: ignore[union-attr]

    def _iteration_step(
        self, delta: torch.Tensor, last_err: torch.Tensor, frozen: torch.Tensor, judged: np.ndarray,
        implicit: bool, **kwargs,
    ) -> Tuple[torch.Tensor, np.ndarray]:
        """Take one step (Theseus' ``_step``); returns the errors after it and which problems'
        steps were applied. :class:`LevenbergMarquardt` retries rejected ones."""
        # (never force_update: it would move the frozen problems too; implicit steps are unrejected)
        err, _ = self._step(delta, last_err, frozen, False, delta_forced_to_gn=implicit, **kwargs)  # type: ignore[attr-defined]
        applied = ~_mask(frozen.cpu())
        if self._reject is not None:
            applied &= ~_mask(self._reject)
        self._last_delta = delta
        return err, applied

    def _judge(self, err: torch.Tensor, last_err: torch.Tensor, accepted: np.ndarray, judged: np.ndarray) -> None:
        """After a step: non-finite errors fail; accepted steps meet the convergence tests."""
        outcome = self.outcome
        assert outcome is not None
        xp, (err_a, last_a) = _arrays(err, last_err)
        with _quiet(xp):
            code = decrease_criterion(
                xp, err_a, last_a, self._rel_tolerance(err), self.params.abs_err_tolerance  # type: ignore[attr-defined]
            )
            finite = xp.isfinite(err_a)
        code = np.asarray(code.cpu() if isinstance(code, torch.Tensor) else code).reshape(-1)
        outcome.stop(judged & ~_mask(finite), "failed", "non-finite-error")
        outcome.stop(judged & ~accepted, "failed", "non-finite-error")  # GN's refused step (LM's stalled)
        if self.step_tolerance > 0:
            small = _mask(self._last_delta.detach().abs().amax(dim=1) <= self.step_tolerance)
            code = np.where((code == 0) & small, 5, code)
        names = np.array(("",) + CRITERIA, dtype=object)[code]
        outcome.stop(accepted & (code > 0), "converged", names)


class GaussNewton(TruthfulLoop, th.GaussNewton):
    """Theseus' Gauss–Newton with :class:`TruthfulLoop`: every finite step is taken; a
    non-finite one fails its problem (its poses stay as they were)."""

    def _complete_step(self, delta, new_err, previous_err, **kwargs) -> Optional[torch.Tensor]:
        xp, (new_a, prev_a) = _arrays(new_err, previous_err)
        with _quiet(xp):
            reject = self._carry_rule(xp, xp.logical_not(xp.isfinite(new_a)), new_a, prev_a)
        self._reject = reject
        return _tensor(reject, delta)


class LevenbergMarquardt(TruthfulLoop, th.LevenbergMarquardt):
    """Theseus' LM with GTSAM's damping schedule (:class:`DampingRule`) and retries.

    Damping ``λI`` starts at ``1e-5``; a step is accepted when the gain ratio exceeds
    ``damping_rule.min_model_fidelity`` (GTSAM: 1e-3); then ``λ /= 10``. A rejected step is
    retried from the same linearization with ``λ *= 10`` until one is accepted; a problem whose
    step is rejected at the upper bound ``1e5`` (GTSAM's ``lambdaUpperBound``) stalls.
    Theseus' own rule floors λ at 1e-7, which stalls on graphs with very flat directions
    (parking-garage).
    """

    damping_rule = DampingRule()

    def __init__(self, objective: th.Objective, **kwargs):
        super().__init__(objective, **kwargs)
        if isinstance(self.linear_solver, BlockSparseSolver):
            self._allows_adaptive = True

    def reset(self, damping: float = 1e-5, adaptive_damping: bool = True, **kwargs) -> None:
        """Resets the optimizer for a new solve and remembers the initial damping and whether it adapts."""
        super().reset(damping=damping, adaptive_damping=adaptive_damping, **kwargs)
        self._adaptive = adaptive_damping
        self._initial_damping = damping

    def _undamp(self, mask: np.ndarray) -> None:
        if isinstance(self._damping, torch.Tensor):
            where = torch.as_tensor(mask, device=self._damping.device)
            self._damping = torch.where(where, torch.full_like(self._damping, self._initial_damping), self._damping)

    def _iteration_step(self, delta, last_err, frozen, judged, implicit, **kwargs):
        err, applied = super()._iteration_step(delta, last_err, frozen, judged, implicit, **kwargs)
        if not self._adaptive or implicit:
            return err, applied
        upper = self.damping_rule.bounds[1]
        retry = judged & ~applied
        while retry.any():
            at_bound = _mask(self._tried_damping >= upper)
            self.outcome.stop(retry & at_bound, "stalled", "damping-limit")  # type: ignore[union-attr]
            retry &= ~at_bound
            if not retry.any():
                break
            delta = self._direction(retry, False, **kwargs)
            if delta is None:
                break
            retry &= self.outcome.running  # type: ignore[union-attr]  # (not those it could not factor)
            if not retry.any():
                break
            frozen = torch.as_tensor(~retry, device=frozen.device)
            delta = delta * self.params.step_size
            err, _ = self._step(delta, err, frozen, False, delta_forced_to_gn=False, **kwargs)
            now = retry & ~_mask(self._reject)
            applied |= now
            retry &= ~now
            self._last_delta = delta
        return err, applied

    def _complete_step(
        self,
        delta: torch.Tensor,
        new_err: torch.Tensor,
        previous_err: torch.Tensor,
        adaptive_damping: bool = True,
        **kwargs,
    ) -> Optional[torch.Tensor]:
        if not adaptive_damping:
            self._reject = None
            return None
        lin = self.linear_solver.linearization
        self._tried_damping = self._damping
        xp, (delta_a, damping_a, atb_a, new_a, prev_a) = _arrays(
            delta, self._damping, lin.Atb[..., 0], new_err, previous_err
        )
        with _quiet(xp):
            reject, damping = self.damping_rule.update(
                xp, delta_a, damping_a, atb_a, new_a, prev_a, self._rel_tolerance(new_err), self.params.abs_err_tolerance
            )
            reject = self._carry_rule(xp, reject, new_a, prev_a)
            if self._frozen is not None:  # problems left as they are keep their damping
                frozen = _arrays(self._frozen)[1][0] if xp is not torch else self._frozen
                reject = xp.logical_or(reject, frozen)
                damping = xp.where(frozen, damping_a, damping)
        self._reject = reject
        self._damping = _tensor(damping, delta)
        return _tensor(reject, delta)


__all__ = [
    "STATUSES",
    "CRITERIA",
    "overflow_limit",
    "Outcome",
    "TruthfulLoop",
    "GaussNewton",
    "LevenbergMarquardt",
    "DampingRule",
    "ScalarOps",
    "decrease_criterion",
    "predicted_decrease",
]
