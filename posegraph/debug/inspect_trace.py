"""Reading and printing debug traces written by :class:`posegraph.debug.DebugCallback`
(``posegraph inspect TRACE.json``)."""

from __future__ import annotations

import json
import math
import os
import sys
from typing import IO, Any, Dict, List, Optional, Tuple, Union

from posegraph.errors import PoseGraphError, read_text_input, shown

PathLike = Union[str, "os.PathLike[str]"]

_NONFINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def _num(value: Any, path: str, what: str, allow_none: bool = True) -> Optional[float]:
    """A trace number: float, int, null, or "nan"/"inf"/"-inf" (strict-JSON non-finite)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool):
        raise PoseGraphError(f"not a debug trace: {what}: expected a number, received {value!r}", path)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and value.lower() in _NONFINITE:
        return _NONFINITE[value.lower()]
    raise PoseGraphError(f"not a debug trace: {what}: expected a number, received {value!r}", path)


def load_trace(path: PathLike) -> Dict[str, Any]:
    """Read and validate a trace; non-finite values come back as float NaN/inf.

    Raises:
        PoseGraphError: missing/unreadable file, invalid JSON, or not a debug trace
            (message and path, as the CLI prints them).
    """
    spath = os.fspath(path)
    text = read_text_input(spath, "trace file", "a trace file (JSON)")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PoseGraphError(f"not a debug trace: invalid JSON ({err.msg})", spath, err.lineno) from None
    if not isinstance(data, dict) or not isinstance(data.get("iterations"), list):
        raise PoseGraphError('not a debug trace: expected a JSON object with an "iterations" list', spath)
    iterations: List[Dict[str, Any]] = []
    for k, rec in enumerate(data["iterations"]):
        what = f"iterations[{k}]"
        if not isinstance(rec, dict) or "iteration" not in rec:
            raise PoseGraphError(f'not a debug trace: {what}: expected an object with "iteration"', spath)
        it = rec["iteration"]
        if isinstance(it, bool) or not isinstance(it, int):
            raise PoseGraphError(f"not a debug trace: {what}.iteration: expected an integer, received {it!r}", spath)
        costs_in = rec.get("cost_functions") or {}
        if not isinstance(costs_in, dict):
            raise PoseGraphError(f"not a debug trace: {what}.cost_functions: expected an object", spath)
        costs: Dict[str, Dict[str, Any]] = {}
        for name, c in costs_in.items():
            cwhat = f"{what}.cost_functions[{name!r}]"
            if not isinstance(c, dict):
                raise PoseGraphError(f"not a debug trace: {cwhat}: expected an object", spath)
            jac = c.get("jacobian_norms", [])
            if not isinstance(jac, list):
                raise PoseGraphError(f"not a debug trace: {cwhat}.jacobian_norms: expected a list", spath)
            costs[name] = {
                **c,
                "error_norm": _num(c.get("error_norm"), spath, f"{cwhat}.error_norm"),
                "jacobian_norms": [_num(x, spath, f"{cwhat}.jacobian_norms") for x in jac],
            }
        iterations.append(
            {
                **rec,
                "error": _num(rec.get("error"), spath, f"{what}.error"),
                "step_norm": _num(rec.get("step_norm"), spath, f"{what}.step_norm"),
                "damping": _num(rec.get("damping"), spath, f"{what}.damping"),
                "cost_functions": costs,
            }
        )
    settings = data.get("settings")
    if settings is not None and not isinstance(settings, dict):
        raise PoseGraphError(f"not a debug trace: settings: expected null or an object, received {_kind(settings)}", spath)
    for key in ("status", "stop_reason"):
        _string_list(data.get(key), spath, key)
    report = data.get("first_nonfinite")
    if report is not None and (
        not isinstance(report, dict) or not {"iteration", "cost_function", "quantity"} <= set(report)
    ):
        raise PoseGraphError(
            'not a debug trace: first_nonfinite: expected null or an object with "iteration", '
            '"cost_function", "quantity"',
            spath,
        )
    if report is not None:
        for key in ("variables", "jacobian_of"):
            value = report.get(key)
            if value is not None and not isinstance(value, list):
                raise PoseGraphError(
                    f"not a debug trace: first_nonfinite.{key}: expected null or a list, received {_kind(value)}", spath
                )
    return {**data, "iterations": iterations, "first_nonfinite": report}


def _kind(value: Any) -> str:
    """A JSON value's type as a trace error names it: ``a string ('x')``, ``a number (3)``…"""
    if value is None:
        return "null"
    names = {str: "a string", bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object"}
    return f"{names.get(type(value), type(value).__name__)} ({shown(value)})"


def _string_list(value: Any, path: str, what: str) -> None:
    """``status`` / ``stop_reason``: null (the solve had not ended) or one string per problem."""
    if value is None:
        return
    if not isinstance(value, list):
        raise PoseGraphError(f"not a debug trace: {what}: expected null or a list of strings, received {_kind(value)}", path)
    for k, item in enumerate(value):
        if not isinstance(item, str):
            raise PoseGraphError(f"not a debug trace: {what}[{k}]: expected a string, received {_kind(item)}", path)


# -- formatting ------------------------------------------------------------------------------------


def _fmt(x: Optional[float], width: int = 12) -> str:
    if x is None:
        return f"{'-':>{width}}"
    return f"{x:>{width}.4e}" if math.isfinite(x) else f"{str(x):>{width}}"


def _badness(error_norm: Optional[float]) -> Tuple[int, float]:
    """Sort key, worst first: NaN, then +inf, then by decreasing value; unknown last."""
    if error_norm is None:
        return (3, 0.0)
    if math.isnan(error_norm):
        return (0, 0.0)
    return (1, -error_norm) if math.isinf(error_norm) else (2, -error_norm)


def _worst(trace: Dict[str, Any], top: int) -> Tuple[Optional[Dict[str, Any]], List[str]]:
    """The last iteration with per-cost records and its ``top`` worst cost names."""
    for rec in reversed(trace["iterations"]):
        if rec["cost_functions"]:
            items = sorted(rec["cost_functions"].items(), key=lambda kv: _badness(kv[1]["error_norm"]))
            return rec, [name for name, _ in items[: max(top, 0)]]
    return None, []


def format_trace(trace: Dict[str, Any], top: int = 10, source: str = "") -> str:
    """The text :func:`run_inspect` prints."""
    lines: List[str] = []
    iters = trace["iterations"]
    settings = trace.get("settings") or {}
    title = f"debug trace{': ' + source if source else ''}"
    lines.append(f"{title} ({len(iters)} iterations recorded, per-cost detail: "
                 f"{'yes' if settings.get('per_cost') else 'no'})")
    if trace.get("status"):
        stops = zip(trace["status"], trace.get("stop_reason") or [""] * len(trace["status"]))
        lines.append("status: " + ", ".join(f"{s} ({r})" if r else s for s, r in stops))
    lines.append("")
    lines.append(f"{'iteration':>9}  {'error':>12}  {'step norm':>12}  {'damping':>12}")
    for rec in iters:
        lines.append(
            f"{rec['iteration']:>9}  {_fmt(rec['error'])}  {_fmt(rec['step_norm'])}  {_fmt(rec['damping'])}"
        )
    lines.append("")

    last, worst = _worst(trace, top)
    if last is None:
        lines.append("no per-cost records (record with DebugCallback(per_cost=True))")
    else:
        costs = last["cost_functions"]
        lines.append(
            f"worst cost functions by error norm at iteration {last['iteration']} "
            f"(top {len(worst)} of {len(costs)}):"
        )
        name_w = max([len("cost function")] + [len(n) for n in worst])
        lines.append(f"{'rank':>4}  {'cost function':<{name_w}}  {'error norm':>12}  jacobian norms")
        for rank, name in enumerate(worst, 1):
            c = costs[name]
            jac = "  ".join(_fmt(x, 10).strip() for x in c["jacobian_norms"])
            lines.append(f"{rank:>4}  {name:<{name_w}}  {_fmt(c['error_norm'])}  {jac}")
        lines.append("")
        lines.append("jacobian norms per iteration (one column per Jacobian block):")
        for name in worst:
            lines.append(f"  {name}")
            width = max((len(r["cost_functions"][name]["jacobian_norms"]) for r in iters
                         if name in r["cost_functions"]), default=0)
            header = "  ".join(f"{'|J[' + str(k) + ']|':>12}" for k in range(width))
            lines.append(f"    {'iteration':>9}  {'error norm':>12}  {header}".rstrip())
            for r in iters:
                c = r["cost_functions"].get(name)
                if c is None:
                    continue
                cells = "  ".join(_fmt(x) for x in c["jacobian_norms"])
                lines.append(f"    {r['iteration']:>9}  {_fmt(c['error_norm'])}  {cells}".rstrip())
        lines.append("")

    report = trace.get("first_nonfinite")
    if report is None:
        lines.append("first non-finite value: none")
    else:
        lines.append(
            f"first non-finite value: {report['quantity']} at iteration {report['iteration']} "
            f"in cost function {report['cost_function']!r}"
        )
        if report.get("variables"):
            lines.append(f"  variables: {', '.join(map(str, report['variables']))}")
        if report.get("jacobian_of"):
            lines.append(f"  non-finite Jacobian w.r.t.: {', '.join(map(str, report['jacobian_of']))}")
        if report.get("cost_type"):
            lines.append(f"  cost type: {report['cost_type']}")
    return "\n".join(lines) + "\n"


def run_inspect(path: PathLike, out: Optional[IO[str]] = None, top: int = 10) -> int:
    """``posegraph inspect TRACE.json``: print a trace's per-iteration error / step / damping,
    its worst cost functions (last recorded iteration), their Jacobian norms per iteration,
    and the non-finite report. Returns exit status 0.

    Raises:
        PoseGraphError: the trace is missing, unreadable or not a debug trace.
    """
    trace = load_trace(path)
    stream = out if out is not None else sys.stdout
    stream.write(format_trace(trace, top=top, source=os.fspath(path)))
    return 0


__all__ = ["load_trace", "format_trace", "run_inspect"]
