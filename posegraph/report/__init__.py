"""What people read: progress and the run summary (:mod:`~posegraph.report.console`), graph
statistics (:mod:`~posegraph.report.info`), trajectory errors against ground truth
(:mod:`~posegraph.report.eval`) and figures (:mod:`~posegraph.report.plot`).
"""

from posegraph.report.console import (
    ProgressPrinter,
    PROGRESS_DELAY_S,
    ProgressBar,
    summary,
    NONFINITE_REASONS,
    json_ready,
    json_text,
    STOP_REASONS,
    format_summary,
)

__all__ = [
    "ProgressPrinter",
    "PROGRESS_DELAY_S",
    "ProgressBar",
    "summary",
    "NONFINITE_REASONS",
    "json_ready",
    "json_text",
    "STOP_REASONS",
    "format_summary",
]
