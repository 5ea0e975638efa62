"""``posegraph batch`` and :func:`run`: many g2o files optimized on Dask workers (a LocalCluster
or an existing cluster; the ``posegraph[distributed]`` extra).

- :mod:`~posegraph.batch.driver` — inputs, the cluster, results and the summary table.
- :mod:`~posegraph.batch.worker` — what runs in each worker: thread budgets and the optimize task.
"""

from posegraph.batch.driver import (
    EXTRA_INSTALL,
    RESULTS_NAME,
    OUTPUT_SUFFIX,
    BatchUsageError,
    MissingExtraError,
    require_distributed,
    expand_inputs,
    output_paths,
    solve_options_parser,
    solve_options,
    read_results,
    BatchReport,
    run,
    format_table,
    cmd_batch,
)

__all__ = [
    "EXTRA_INSTALL",
    "RESULTS_NAME",
    "OUTPUT_SUFFIX",
    "BatchUsageError",
    "MissingExtraError",
    "require_distributed",
    "expand_inputs",
    "output_paths",
    "solve_options_parser",
    "solve_options",
    "read_results",
    "BatchReport",
    "run",
    "format_table",
    "cmd_batch",
]
