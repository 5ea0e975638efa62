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

:func:`thread_report` says what a process actually runs with; :func:`idle_cores` how many
cores other processes leave free right now (PARDISO's thread count, :mod:`posegraph.solve.pardiso`).
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


def _runnable_threads() -> Optional[int]:
    """Threads runnable on the machine now, this one included: the fourth field of Linux's
    ``/proc/loadavg`` (``R/T``; proc(5)); None where there is none."""
    try:
        with open("/proc/loadavg") as fh:
            return int(fh.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


#: samples of :func:`_runnable_threads` behind :func:`idle_cores` (a busy process is runnable
#: in each; a short-lived one is not)
IDLE_SAMPLES = 3


def idle_cores(cores: Optional[int] = None) -> int:
    """Cores of ``cores`` (default :func:`available_cores`) that other work leaves idle now:
    ``cores − (runnable − 1)``, the fewest runnable threads of :data:`IDLE_SAMPLES` reads
    (~1 ms apart), at least 1; all of them where the OS does not tell. A thread pool wider
    than this waits at every barrier for a thread the scheduler has parked behind the other
    work: PARDISO's factorization on parking-garage takes 0.24–0.35 s on one thread beside
    busy processes, 0.36–2.9 s on two.

    Measured (docs/performance.md, 'What each speed mechanism pays'): beside one CPU-bound process
    it saves 143% of an iteration on sphere2500 and 282% on parking-garage; idle, no difference.
    """
    import time

    cores = available_cores() if cores is None else cores
    samples = []
    for k in range(IDLE_SAMPLES):
        if k:
            time.sleep(0.001)
        samples.append(_runnable_threads())
    if any(n is None for n in samples):
        return cores
    return max(1, min(cores, cores - (min(samples) - 1)))  # type: ignore[type-var]


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

    from posegraph.solve import cholmod  # noqa: F401 - its library's pool gets the limit
    from posegraph.solve.mkl import pardiso_available

    pardiso_available()  # loads libmkl_rt when installed
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
