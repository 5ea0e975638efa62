"""Thread budgets for processes that share a machine (``posegraph batch``'s workers).

N solver processes on C cores each get ``C // N`` threads (at least one) for every thread
pool a solve uses: torch's intra-op pool (OpenMP), MKL's (PARDISO) and OpenBLAS's (CHOLMOD's
BLAS). Without a budget each process starts one thread per core in every pool, and N
processes oversubscribe the cores N times over.

The budget is applied in two ways, because thread pools read their size at different times:

- :func:`thread_env` — ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``
  for a process about to start (the libraries read them when they load; see
  https://www.openmp.org/spec-html/5.0/openmpse50.html for ``OMP_NUM_THREADS``);
- :func:`apply_thread_budget` — in a running process: ``torch.set_num_threads`` and
  threadpoolctl's ``threadpool_limits`` (https://github.com/joblib/threadpoolctl), which sets
  the size of every BLAS / OpenMP pool already loaded (MKL through ``mkl_set_num_threads``,
  which PARDISO's analysis reads, :mod:`posegraph.solve.pardiso`).

:func:`thread_report` says what a process actually runs with.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

#: environment variables that size the thread pools when their libraries load
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def thread_budget(processes: int, cores: Optional[int] = None) -> int:
    """Threads per process when ``processes`` share ``cores`` (default: this machine's):
    ``cores // processes``, at least 1."""
    if processes < 1:
        raise ValueError(f"processes: expected ≥ 1, received {processes}")
    return max(1, (cores or available_cores()) // processes)


def thread_env(threads: int) -> Dict[str, str]:
    """The environment variables that give a new process ``threads`` threads per pool."""
    return {name: str(int(threads)) for name in THREAD_ENV_VARS}


def apply_thread_budget(threads: int) -> None:
    """Give this process ``threads`` threads in every pool, from now on: the environment (for
    libraries loaded later), torch's intra-op pool and, through threadpoolctl, every BLAS /
    OpenMP library already loaded. Loads torch, Theseus and posegraph's solvers first, so their
    pools exist when the limits are set."""
    os.environ.update(thread_env(threads))
    import theseus  # noqa: F401 - loaded once here, not per task
    import torch

    from .solve import cholmod, pardiso  # noqa: F401 - their libraries' pools get the limit

    pardiso.pardiso_available()  # loads libmkl_rt when installed
    torch.set_num_threads(int(threads))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # torch's pool and the environment still hold the budget
        return
    threadpool_limits(limits=int(threads))  # set now; restored only if asked to (never here)


def thread_report() -> Dict[str, Any]:
    """What this process runs with: ``cores``, ``torch`` (intra-op threads), the environment
    variables and ``libraries`` (threadpoolctl's view: ``{"api", "library", "threads"}``)."""
    import torch

    report: Dict[str, Any] = {
        "cores": available_cores(),
        "torch": torch.get_num_threads(),
        "env": {name: os.environ.get(name) for name in THREAD_ENV_VARS},
        "libraries": [],
    }
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return report
    report["libraries"] = [
        {"api": i["internal_api"], "library": os.path.basename(i["filepath"]), "threads": i["num_threads"]}
        for i in threadpool_info()
    ]
    return report
