"""What people read: per-iteration progress, the run summary (text and JSON), and the JSON
text every ``--json`` prints (:func:`json_text`: never NaN or Infinity).

Progress goes to stderr only, never to stdout (which carries the summary or the one JSON
object of ``--json``): :class:`ProgressBar` (a tqdm bar that appears only when a run lasts
longer than ``delay`` seconds, the CLI's default) and :class:`ProgressPrinter` (one table row
per iteration, ``posegraph optimize --verbose``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from typing import IO, TYPE_CHECKING, Any, Dict, List, Optional

if TYPE_CHECKING:  # annotations only: json_text (the batch client's) does not load torch
    from posegraph.graph import PoseGraph
    from posegraph.solve.optimize import IterationRecord, SolveResult


class ProgressPrinter:
    """Per-iteration progress lines on a stream (stderr by default):
    iteration, χ², relative decrease, elapsed seconds; ``cost rose`` marks a step that raised
    the cost (Gauss–Newton takes those; LM rejects them)."""

    def __init__(self, stream: Optional[IO[str]] = None):
        self.stream = stream or sys.stderr
        self._last: Optional[float] = None
        self._start = time.perf_counter()

    def __call__(self, rec: IterationRecord) -> None:
        chi2 = 2.0 * rec.error
        if self._last is None:
            rel = "—"
            self.stream.write(f"{'iter':>5} {'chi2':>16} {'rel.decrease':>13} {'elapsed':>9}\n")
        else:
            rel = f"{(self._last - chi2) / self._last:.3e}" if self._last else "0"
        rose = self._last is not None and chi2 > self._last
        self._last = chi2
        elapsed = time.perf_counter() - self._start
        note = "  cost rose" if rose else ""
        self.stream.write(f"{rec.iteration:>5} {chi2:>16.10g} {rel:>13} {elapsed:>8.3f}s{note}\n")
        self.stream.flush()


#: seconds a run lasts before :class:`ProgressBar` shows itself
PROGRESS_DELAY_S = 1.0


class ProgressBar:
    """A tqdm progress bar over iterations (stderr by default) with the current χ² and its
    relative decrease; it appears only once the run has lasted ``delay`` seconds
    (:data:`PROGRESS_DELAY_S` by default), so short runs
    print nothing. Call it with each :class:`IterationRecord`; :meth:`close` at the end (or use
    it as a context manager)."""

    def __init__(self, total: int, stream: Optional[IO[str]] = None, delay: Optional[float] = None, desc: str = "optimize"):
        from tqdm import tqdm

        delay = PROGRESS_DELAY_S if delay is None else delay
        self._bar = tqdm(
            total=max(int(total), 1), file=stream or sys.stderr, delay=delay, desc=desc,
            unit="it", dynamic_ncols=True, leave=True,
        )
        self._last: Optional[float] = None

    def __call__(self, rec: IterationRecord) -> None:
        chi2 = 2.0 * rec.error
        postfix = {"chi2": f"{chi2:.6g}"}
        if self._last:
            postfix["rel.decrease"] = f"{(self._last - chi2) / self._last:.2e}"
        self._last = chi2
        self._bar.set_postfix(postfix, refresh=False)
        self._bar.update(rec.iteration - self._bar.n)

    def close(self) -> None:
        """Close the bar (leaves its last line on stderr)."""
        self._bar.close()

    def __enter__(self) -> "ProgressBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def summary(
    graph: PoseGraph,
    result: SolveResult,
    timings: Dict[str, float],
    output: Optional[str] = None,
) -> Dict[str, Any]:
    """The run summary as a JSON-ready dict.

    ``*_chi2`` are Σ eᵀΩe (g2o's χ²); ``*_error`` are half of it (GTSAM's ``graph.error``).
    For batched runs the scalar fields are batch means and ``*_per_batch`` lists are added.
    ``repaired_information`` counts the information matrices the reader replaced by their
    nearest positive semidefinite matrix (``--repair-information``; 0 when none was, and
    always 0 without the flag, since such a file is refused then).
    """
    init = result.initial_error.double()
    final = result.final_error.double()
    out: Dict[str, Any] = {
        "input": graph.source,
        "output": output,
        "kind": graph.kind,
        "num_poses": graph.num_poses,
        "num_edges": graph.num_edges,
        "initial_chi2": float(2 * init.mean()),
        "final_chi2": float(2 * final.mean()),
        "initial_error": float(init.mean()),
        "final_error": float(final.mean()),
        "iterations": result.iterations,
        "status": result.status[0] if len(result.status) == 1 else result.status,
        "stop_reason": result.stop_reason[0] if len(result.stop_reason) == 1 else result.stop_reason,
        "solver": result.solver,
        "linear_solver": result.linear_solver,
        "device": result.device,
        "time_s": {k: round(v, 6) for k, v in timings.items()},
        "repaired_information": int(graph.extras.get("repaired_information", 0)),
    }
    if result.factor_stats is not None:
        out["factorization"] = dataclasses.asdict(result.factor_stats)
    if graph.landmarks is not None:
        out["num_points"] = graph.landmarks.num_points
        out["num_point_observations"] = graph.landmarks.num_observations
    if init.numel() > 1:
        out["initial_error_per_batch"] = init.tolist()
        out["final_error_per_batch"] = final.tolist()
    return out


#: why a value can be non-finite, by key (:func:`json_text`'s default reasons)
NONFINITE_REASONS = {
    "initial_chi2": "the initial error overflows float64 (information or pose values too large)",
    "initial_error": "the initial error overflows float64 (information or pose values too large)",
    "final_chi2": "the final error overflows float64",
    "final_error": "the final error overflows float64",
    "min_eigenvalue": "the information matrices' eigenvalues overflow float64 (entries too large)",
    "max_eigenvalue": "the information matrices' eigenvalues overflow float64 (entries too large)",
}


def json_ready(obj: Any, notes: List[str], where: str = "", reasons: Optional[Dict[str, str]] = None) -> Any:
    """``obj`` (dicts, lists, numbers, strings) with every non-finite float — NaN and ±Infinity,
    which JSON cannot hold — replaced by ``None``; each replacement appends a note
    ``"KEY is VALUE, not a JSON number (null here): REASON"`` to ``notes`` (the reason from
    ``reasons`` or :data:`NONFINITE_REASONS` by the innermost key)."""
    if isinstance(obj, dict):
        return {k: json_ready(v, notes, f"{where}.{k}" if where else str(k), reasons) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v, notes, f"{where}[{i}]", reasons) for i, v in enumerate(obj)]
    if isinstance(obj, float) and not math.isfinite(obj):
        key = where.rsplit(".", 1)[-1].split("[", 1)[0]
        reason = {**NONFINITE_REASONS, **(reasons or {})}.get(key, "not finite in float64")
        name = "NaN" if math.isnan(obj) else ("Infinity" if obj > 0 else "-Infinity")
        notes.append(f"{where} is {name}, not a JSON number (null here): {reason}")
        return None
    return obj


def json_text(obj: Dict[str, Any], reasons: Optional[Dict[str, str]] = None) -> str:
    """One JSON object as one line of text (no newline). Non-finite numbers become ``null``
    with a note each in the object's ``"notes"`` list (:func:`json_ready`), and
    ``json.dumps(..., allow_nan=False)`` refuses any that remain, so the output is always
    valid JSON (RFC 8259 has no NaN or Infinity)."""
    notes: List[str] = []
    out = json_ready(obj, notes, reasons=reasons)
    if notes:
        out["notes"] = list(out.get("notes") or []) + notes
    return json.dumps(out, allow_nan=False)


def _count(n: int, noun: str) -> str:
    """``"1 solve"``, ``"2 solves"``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


#: what each ``stop_reason`` means, for the text summary
STOP_REASONS = {
    "absolute-error": "error below --abs-tol",
    "absolute-decrease": "decrease below --abs-tol",
    "relative-decrease": "relative decrease below --rel-tol",
    "gradient-norm": "‖Aᵀb‖∞ below --grad-tol",
    "step-norm": "step ‖δ‖∞ below --step-tol",
    "max-iterations": "iteration cap reached",
    "damping-limit": "no step lowers the cost, even at LM's largest damping",
    "non-finite-error": "the error is not finite",
    "overflowing-error": "the initial error is beyond √(largest float): the normal equations would overflow",
    "non-finite-step": "the step is not finite",
    "linear-solver-error": "the linear solver failed",
}


def _status_line(s: Dict[str, Any]) -> str:
    """``converged after 7 iterations (relative decrease below --rel-tol)``; a batch lists
    its statuses."""
    status, reason = s["status"], s.get("stop_reason")
    if isinstance(status, list):
        return f"{', '.join(status)} after {s['iterations']} iterations"
    why = f" ({STOP_REASONS.get(reason, reason)})" if reason and reason != "max-iterations" else ""
    return f"{status} after {s['iterations']} iterations{why}"


def format_summary(s: Dict[str, Any]) -> str:
    """A readable multi-line summary of :func:`summary`'s dict."""
    t = s["time_s"]
    times = ", ".join(f"{k} {v:.3f}s" for k, v in t.items())
    lines = [
        f"input        {s['input']} ({s['kind']}: {s['num_poses']} poses, {s['num_edges']} edges)",
        f"solver       {s['solver']} with {s['linear_solver']} on {s['device']}",
        f"status       {_status_line(s)}",
        f"chi2         {s['initial_chi2']:.10g} -> {s['final_chi2']:.10g}",
        f"error (χ²/2) {s['initial_error']:.10g} -> {s['final_error']:.10g}",
        f"time         {times}",
    ]
    if s.get("factorization"):
        c = s["factorization"]
        kind = c["backend"] if c["backend"] == "pardiso" else f"{c['backend']} {c['mode']}"
        lines.insert(2, f"factorized   {kind}: {_count(c['factorizations'], 'factorization')}, "
                        f"{_count(c['reused'], 'solve')} by the last factor "
                        f"({_count(c['cg_iterations'], 'CG iteration')})")
    if s.get("start"):
        st = s["start"]
        costs = ", ".join(f"{k} {v:.10g}" for k, v in st["costs"].items())
        lines.insert(2, f"start        {st['chosen']} (initial error: {costs})" + (f"; {st['note']}" if st.get("note") else ""))
    if s.get("gnc"):
        r, g = s["robust"], s["gnc"]
        lines.insert(3, f"robust       {r['kernel']} on {r['edges']} edges (final chi2, error: Σ wᵢ eᵀΩe, ½ of it)")
        lines.insert(4, f"outliers     {s['outliers']} of {g['judged_edges']} edges (weight < ½; inliers within "
                        f"{g['threshold']:.4g} std. dev.) after {s['outer_iterations']} GNC iterations "
                        f"({g['stop_reason']})" + (f", written to {g['outliers_file']}" if g.get("outliers_file") else ""))
    elif s.get("robust"):
        r = s["robust"]
        lines.insert(3, f"robust       {r['kernel']} on {r['edges']} edges (chi2, error: Σρ(eᵀΩe), ½ of it)")
    if s.get("repaired_information"):
        n = s["repaired_information"]
        lines.insert(1, f"information  {n} {'matrix' if n == 1 else 'matrices'} repaired "
                        "(not positive semidefinite: negative eigenvalues clipped to 0)")
    if "num_points" in s:
        lines.insert(1, f"points       {s['num_points']} (TRACKXYZ), {s['num_point_observations']} observations")
    if s.get("output"):
        lines.append(f"output       {s['output']}")
    return "\n".join(lines)
