"""What runs on ``posegraph batch``'s Dask workers: a plugin that sets each worker's thread
budget and loads torch and Theseus once, and the task that optimizes one file in-process.

A local cluster's workers are forked from a server that has loaded those modules already
(:func:`posegraph.batch.driver.start_worker_server`): they pay no import at all.

This module needs ``dask.distributed`` (the ``posegraph[distributed]`` extra); import it
through :mod:`posegraph.batch`, which names the extra when it is missing.
"""

from __future__ import annotations

import argparse
import functools
import os
import socket
import threading
import time
import warnings
from typing import Any, Dict, Mapping, Optional

from distributed import WorkerPlugin, get_worker

from posegraph.solve.threads import apply_thread_budget, available_cores, thread_budget, thread_report

#: the name the plugin is registered under (registering it again replaces it)
PLUGIN_NAME = "posegraph-thread-budget"

_BUDGET: Dict[str, Optional[int]] = {"threads": None}  # this worker's, set by the plugin
_APPLIED = threading.local()  # whether the budget holds in this thread already


def _hold_budget() -> None:
    """Apply the worker's budget in the calling thread too, once: OpenMP's thread count is a
    per-thread setting, and tasks run on the worker's executor threads, not on the thread that
    ran the plugin."""
    threads = _BUDGET["threads"]
    if threads is not None and getattr(_APPLIED, "threads", None) != threads:
        apply_thread_budget(threads)
        _APPLIED.threads = threads


def load_task_modules() -> None:
    """Import what an optimize task runs: torch, Theseus, the solvers' libraries (MKL's
    where installed) and every module ``import posegraph`` exports (it loads them lazily), and
    the CLI. Imports only: no thread pool starts, so a process may fork after it
    (:mod:`posegraph.batch.preload`)."""
    import importlib

    import posegraph
    from posegraph.solve import cholmod, pardiso  # noqa: F401 - their libraries load with the modules
    from posegraph.solve.mkl import pardiso_available

    pardiso_available()  # loads libmkl_rt when installed
    for name in posegraph.__all__:
        getattr(posegraph, name)
    for module in ("cli.optimize", "report.console", "init.dispatch", "io.g2o"):
        importlib.import_module(f"posegraph.{module}")


class ThreadBudgetPlugin(WorkerPlugin):
    """Runs once in every worker as it joins: gives it its thread budget
    (:func:`posegraph.solve.threads.apply_thread_budget`) and, with it, loads torch, Theseus and the
    solvers, so the tasks that follow pay no start-up.

    Args:
        threads: threads per worker; ``None``: the worker's cores divided by the task slots
            that share its host (``slots_per_host``, else the worker's own ``nthreads``).
        slots_per_host: ``{host: task slots of every worker on it}`` (from the scheduler).
    """

    name = PLUGIN_NAME

    def __init__(self, threads: Optional[int] = None, slots_per_host: Optional[Mapping[str, int]] = None):
        self.threads = threads
        self.slots_per_host = dict(slots_per_host or {})

    def budget_for(self, host: str, nthreads: int) -> int:
        """The budget of a worker on ``host`` running ``nthreads`` tasks at a time."""
        if self.threads is not None:
            return self.threads
        return thread_budget(max(self.slots_per_host.get(host, nthreads), 1), available_cores())

    def setup(self, worker) -> None:
        """Apply the budget in ``worker``'s process (Dask calls this as the worker starts)."""
        host = worker.address.split("://")[-1].rsplit(":", 1)[0]
        _BUDGET["threads"] = self.budget_for(host, worker.state.nthreads)
        apply_thread_budget(_BUDGET["threads"])
        load_task_modules()  # now, not in the first task (done already where forked from the server)
        warnings.filterwarnings("ignore", message="Vectorization is off by default")


def worker_thread_report() -> Dict[str, Any]:
    """A task: the thread budget the worker running it has (:func:`posegraph.solve.threads.thread_report`)."""
    _hold_budget()
    report = thread_report()
    report["worker"] = _worker_name()
    return report


def _worker_name() -> str:
    """The Dask worker's address, or ``host:pid`` outside a worker."""
    try:
        return get_worker().address
    except ValueError:
        return f"{socket.gethostname()}:{os.getpid()}"


@functools.lru_cache(maxsize=1)
def _optimize_defaults() -> Dict[str, Any]:
    """Every option of ``posegraph optimize`` at its default (built once per worker)."""
    from posegraph.cli.options import _parser
    from posegraph.cli.config import subcommand_parser

    return vars(subcommand_parser(_parser(), "optimize").parse_args([]))


def optimize_task(input_path: str, output_path: str, options: Mapping[str, Any]) -> Dict[str, Any]:
    """A task: ``posegraph optimize INPUT -o OUTPUT`` with ``options`` (solve options by
    dest), in this process. Never raises for a bad input or a failed solve: the record says
    ``"result": "failed"`` with the CLI's one-line ``error`` and ``exit_code``.

    Returns:
        the optimize JSON summary (``"result": "ok"``) or the failure record, with ``input``,
        ``output``, ``worker``, ``started`` (when the task began, Unix time in seconds) and
        ``wall_s`` (seconds in this task, reading and writing included).
    """
    from posegraph.cli.optimize import error_line, optimize_file

    started = time.time()
    start = time.perf_counter()
    _hold_budget()
    args = argparse.Namespace(**{**_optimize_defaults(), **options})
    args.input, args.output, args.quiet, args.json = input_path, output_path, True, True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            record = optimize_file(args)
        record.update(result="ok", input=input_path, output=output_path)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 - recorded, the batch goes on
        code, line = error_line(err, input_path)
        record = {"input": input_path, "output": None, "result": "failed", "error": line, "exit_code": code}
    record["worker"] = _worker_name()
    record["started"] = round(started, 6)
    record["wall_s"] = round(time.perf_counter() - start, 6)
    return record
