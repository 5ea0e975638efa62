"""Imported by the fork server of ``posegraph batch``'s local cluster before it forks the
workers (:func:`posegraph.batch.driver.start_worker_server`): torch, Theseus and the solve's modules
are then loaded once for all workers, not once per worker
(:func:`posegraph.batch.worker.load_task_modules`).

The server ends when the process that started it does. It then exits at once instead of
finalizing its interpreter, which takes ~0.7 s with torch loaded: the server holds that
process's stdout and stderr, so whoever reads them (a pipe, ``| tee``, a ``subprocess``)
would wait that long after the batch has ended. The server has nothing to finalize: it writes
no file and buffers no output (its workers end through ``os._exit`` as forked processes do).
"""

from __future__ import annotations

import atexit
import os
import sys

from posegraph.batch.worker import load_task_modules


def in_fork_server() -> bool:
    """Whether this is the fork server's preload: ``multiprocessing.forkserver.main`` imports it."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "main" and frame.f_globals.get("__name__") == "multiprocessing.forkserver":
            return True
        frame = frame.f_back
    return False


def _exit_now() -> None:
    """The server's exit: standard streams flushed, no interpreter finalization."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(0)


#: whether this process is the fork server and ends through :func:`_exit_now`
FAST_EXIT = in_fork_server()

load_task_modules()
if FAST_EXIT:
    atexit.register(_exit_now)
