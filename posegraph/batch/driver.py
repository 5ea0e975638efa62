"""``posegraph batch``: optimize many g2o files in parallel on Dask workers.

Each input is optimized as ``posegraph optimize`` does (same options, same checks) by a task
in a long-lived worker process, so torch and Theseus are imported once per worker, not once
per file. By default the workers are a Dask ``LocalCluster`` of N processes on this machine
(one task at a time each, ``cores // N`` threads each, :mod:`posegraph.solve.threads`); with a
scheduler address or a ``distributed.Client`` they are an existing cluster's (e.g. one started
by dask-jobqueue's ``SLURMCluster``).

Start-up is most of a short batch's time, so the process that runs it (the client) never
imports torch, and on Linux a local cluster's workers are forked from one server that imports
torch, Theseus and the solver once (:func:`start_worker_server`), started as soon as the
inputs are known: it imports while the client imports Dask and starts the scheduler.

For every input, ``OUT_DIR/<name>.optimized.g2o`` is written atomically and one JSON line is
appended to ``OUT_DIR/results.jsonl``: the optimize JSON summary plus ``input``, ``output``,
``worker``, ``started`` (when its task began, Unix time), ``wall_s`` and ``"result": "ok"``
— or, for an input that could not be optimized, ``"result": "failed"`` with the CLI's
one-line ``error`` and its ``exit_code``; the other inputs go on. ``resume=True`` skips
inputs whose output file and ``ok`` line are already there.

From Python::

    from posegraph.batch import run
    report = run(["runs/*.g2o"], "out", {"max_iters": 50}, workers=2)
    report.exit_code, report.failed

Needs the ``posegraph[distributed]`` extra (``dask[distributed]``, ``dask-jobqueue``,
``threadpoolctl``).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import importlib.util
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any, Dict, Iterator, List, Mapping, Optional, Sequence, Union

from posegraph.errors import PoseGraphError
from posegraph.solve.threads import available_cores, thread_budget, thread_env

#: how to install what ``posegraph batch`` needs
EXTRA_INSTALL = "pip install 'posegraph[distributed]'"
RESULTS_NAME = "results.jsonl"
#: the module the local workers' fork server imports (:mod:`posegraph.batch.preload`)
PRELOAD_MODULE = "posegraph.batch.preload"
OUTPUT_SUFFIX = ".optimized.g2o"

Options = Union[None, argparse.Namespace, Mapping[str, Any]]


class BatchUsageError(PoseGraphError):
    """A batch that cannot start: no inputs, a pattern that matches nothing, outputs that
    would collide, contradicting options."""


class MissingExtraError(PoseGraphError):
    """Dask is not installed (the ``posegraph[distributed]`` extra)."""


def require_distributed():
    """The ``distributed`` module, or :class:`MissingExtraError` naming the extra to install."""
    try:
        import distributed
    except ImportError as err:
        raise MissingExtraError(
            f"posegraph batch needs Dask's distributed scheduler, which is not installed ({err}); "
            f"install it with: {EXTRA_INSTALL}"
        ) from None
    return distributed


# -- inputs, outputs, options -------------------------------------------------------------------


def expand_inputs(inputs: Sequence[Union[str, "os.PathLike[str]"]]) -> List[str]:
    """Absolute paths of the files to optimize, in order, each once: a folder gives its
    ``*.g2o`` files (sorted), a glob pattern its matches (sorted), any other path itself (a
    missing file then fails as its own input).

    Raises:
        BatchUsageError: no inputs, or a folder / pattern that gives no file.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    files: List[str] = []
    for item in map(os.fspath, inputs):
        if os.path.isdir(item):
            found = sorted(p for p in glob.glob(os.path.join(glob.escape(item), "*.g2o")) if os.path.isfile(p))
            if not found:
                raise BatchUsageError("folder holds no *.g2o file", item)
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            if not found:
                raise BatchUsageError("no file matches this pattern", item)
        else:
            found = [item]
        files.extend(os.path.abspath(p) for p in found)
    if not files:
        raise BatchUsageError("no input files: give files, globs or folders (or 'inputs:' in --config)")
    return list(dict.fromkeys(files))


def output_paths(files: Sequence[str], out_dir: str) -> Dict[str, str]:
    """``{input: OUT_DIR/<input name without .g2o>.optimized.g2o}``.

    Raises:
        BatchUsageError: two inputs with the same name, or an input that is its own output.
    """
    out: Dict[str, str] = {}
    owner: Dict[str, str] = {}  # output -> the input that writes it
    for path in files:
        stem = os.path.basename(path)
        stem = stem[: -len(".g2o")] if stem.endswith(".g2o") else stem
        target = os.path.join(os.path.abspath(out_dir), stem + OUTPUT_SUFFIX)
        if target in owner:
            raise BatchUsageError(f"two inputs would write the same output {target}: {owner[target]} and {path}")
        if target == path:
            raise BatchUsageError(f"the input is its own output {target}: use another --out-dir", path)
        owner[target] = path
        out[path] = target
    return out


def resolve_output_files(opts: Dict[str, Any], n_inputs: int) -> Dict[str, Any]:
    """``opts`` with the solve options that name a file to write
    (:data:`posegraph.cli.options.SOLVE_OUTPUT_FILE_OPTIONS`, e.g. ``--outliers``) made
    absolute against this process's working directory, so that a worker, whose working
    directory may be another, writes where the user meant.

    Raises:
        BatchUsageError: such an option with more than one input: every input would write the
            same file, each overwriting the one before.
    """
    from posegraph.cli.options import SOLVE_OUTPUT_FILE_OPTIONS

    resolved = dict(opts)
    for dest in SOLVE_OUTPUT_FILE_OPTIONS:
        value = opts.get(dest)
        if not value:
            continue
        flag = "--" + dest.replace("_", "-")
        if n_inputs > 1:
            raise BatchUsageError(
                f"{flag} {value}: expected one input, received {n_inputs}: every input would write this one "
                f"file, each overwriting the one before; run a batch of one input per {flag} file, or leave it out"
            )
        resolved[dest] = os.path.abspath(os.fspath(value))
    return resolved


def solve_options_parser() -> argparse.ArgumentParser:
    """The options of one solve, exactly as ``posegraph optimize`` defines them
    (:func:`posegraph.cli.add_solve_options`): the schema of :func:`run`'s ``options``."""
    from posegraph.cli.options import add_solve_options

    parser = argparse.ArgumentParser(prog="posegraph batch", add_help=False)
    add_solve_options(parser)
    return parser


def solve_options(options: Options = None) -> Dict[str, Any]:
    """Every solve option by dest (``max_iters``, ``linear_solver``, …): the defaults, then
    ``options`` — a parsed namespace (taken as is) or a mapping (checked and converted as a
    ``--config`` file is; :func:`posegraph.cli.config.validate_config`)."""
    from posegraph.cli.config import validate_config

    parser = solve_options_parser()
    defaults = vars(parser.parse_args([]))
    if options is None:
        return defaults
    if isinstance(options, argparse.Namespace):
        return {k: getattr(options, k, v) for k, v in defaults.items()}
    return {**defaults, **validate_config(options, parser)}


def read_results(path: str) -> Dict[str, Dict[str, Any]]:
    """The records of a ``results.jsonl`` by input (the last line wins); lines that are not
    JSON objects (a run killed mid-line) are ignored."""
    records: Dict[str, Dict[str, Any]] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.readlines()
    except FileNotFoundError:
        return records
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("input"), str):
            records[rec["input"]] = rec
    return records


# -- running --------------------------------------------------------------------------------------


@dataclass
class BatchReport:
    """What a batch did.

    Attributes:
        records: one per input, in input order (``"result"``: ``"ok"``, ``"failed"``, or
            ``"skipped"`` for inputs done by an earlier run with ``resume``).
        seconds: wall time of the run, workers' start-up included.
        workers: worker processes that ran it.
        results_path: the ``results.jsonl`` written.
    """

    records: List[Dict[str, Any]]
    seconds: float
    workers: int
    results_path: str
    skipped: List[str] = field(default_factory=list)

    @property
    def failed(self) -> List[Dict[str, Any]]:
        """The records of the inputs that failed."""
        return [r for r in self.records if r.get("result") == "failed"]

    @property
    def exit_code(self) -> int:
        """The CLI's exit status: 1 when any input failed, else 0."""
        return 1 if self.failed else 0


def run(
    inputs: Sequence[Union[str, "os.PathLike[str]"]],
    out_dir: Union[str, "os.PathLike[str]"],
    options: Options = None,
    client=None,
    *,
    workers: Optional[int] = None,
    scheduler: Optional[str] = None,
    resume: bool = False,
    progress: bool = True,
    stream: Optional[IO[str]] = None,
) -> BatchReport:
    """Optimize every input on Dask workers; see the module docstring for what is written.

    Args:
        inputs: files, glob patterns or folders (:func:`expand_inputs`).
        out_dir: the folder for the outputs and ``results.jsonl`` (created if needed).
        options: solve options by dest, e.g. ``{"max_iters": 50, "linear_solver": "cholmod"}``
            (:func:`solve_options`).
        client: a ``distributed.Client`` to run on (it is left open; its workers get the
            thread-budget plugin, :class:`posegraph.batch.worker.ThreadBudgetPlugin`); else
            ``scheduler``'s cluster, else a new ``LocalCluster`` of ``workers`` processes
            (default: one per core; on Linux forked from a server this process keeps for its
            later runs, :func:`start_worker_server`).
        resume: skip inputs whose output (not empty) and ``ok`` line are in ``out_dir`` already.
        progress: a progress bar over files on ``stream`` (default stderr).

    Raises:
        MissingExtraError: Dask is not installed.
        BatchUsageError: see :func:`expand_inputs`, :func:`output_paths`,
            :func:`resolve_output_files`.
    """
    start = time.perf_counter()
    if workers is not None and (client is not None or scheduler):
        raise BatchUsageError("--workers sizes a local cluster: it cannot be combined with --scheduler or a client")
    if workers is not None and workers < 1:
        raise BatchUsageError(f"workers: expected ≥ 1, received {workers}")
    files = expand_inputs(inputs)
    opts = solve_options(options)
    out_dir = os.path.abspath(os.fspath(out_dir))
    outputs = output_paths(files, out_dir)
    opts = resolve_output_files(opts, len(files))
    results_path = os.path.join(out_dir, RESULTS_NAME)
    previous = read_results(results_path) if resume else {}
    done = {  # an ok line and its output, not empty (a copy cut short is not a result)
        f: previous[f] for f in files
        if previous.get(f, {}).get("result") == "ok" and os.path.isfile(outputs[f]) and os.path.getsize(outputs[f]) > 0
    }
    local = client is None and not scheduler
    if local and len(done) < len(files) and importlib.util.find_spec("distributed") is not None:
        start_worker_server(thread_budget(workers or available_cores()))  # imports while Dask does
    require_distributed()
    os.makedirs(out_dir, exist_ok=True)
    from posegraph.io.output import write_text_atomic  # the file starts with the lines still true

    write_text_atomic(results_path, "".join(_json_line(r) for r in done.values()))
    todo = [f for f in files if f not in done]
    records: Dict[str, Dict[str, Any]] = {}
    n_workers = 0
    if todo:
        with _connect(client, scheduler, workers) as c:
            n_workers = len(c.scheduler_info()["workers"])
            records = _run_tasks(c, todo, outputs, opts, results_path, progress, stream)
    ordered = [records.get(f) or {**done[f], "result": "skipped"} for f in files]
    return BatchReport(ordered, time.perf_counter() - start, n_workers, results_path, list(done))


@contextlib.contextmanager
def _connect(client, scheduler: Optional[str], workers: Optional[int]) -> Iterator[Any]:
    """A client whose workers have the thread-budget plugin: ``client`` itself, one connected
    to ``scheduler``, or one on a new LocalCluster (closed afterwards)."""
    import distributed

    from posegraph.batch.worker import PLUGIN_NAME, ThreadBudgetPlugin

    if client is not None or scheduler:
        own = client is None
        c = client if client is not None else distributed.Client(scheduler)
        try:
            slots: Dict[str, int] = {}
            for w in c.scheduler_info()["workers"].values():
                slots[w["host"]] = slots.get(w["host"], 0) + int(w["nthreads"])
            c.register_plugin(ThreadBudgetPlugin(slots_per_host=slots), name=PLUGIN_NAME)
            yield c
        finally:
            if own:
                c.close()
        return
    n = workers or available_cores()
    threads = thread_budget(n)
    with _local_cluster(n, threads) as cluster, distributed.Client(cluster) as c:
        c.register_plugin(ThreadBudgetPlugin(threads=threads), name=PLUGIN_NAME)
        yield c


def start_worker_server(threads: int) -> bool:
    """Start the server a local cluster's worker processes are forked from — Python's
    ``forkserver`` (https://docs.python.org/3/library/multiprocessing.html#contexts-and-start-methods)
    with :data:`PRELOAD_MODULE` imported — and return at once: it imports torch, Theseus and
    the solve's modules while this process goes on, and a worker's start waits for it. Every
    worker then starts with them loaded, instead of importing them itself (~2.5 s each).

    Once per process: later clusters fork from the same server. Its environment holds the
    thread budget ``threads`` (:func:`posegraph.solve.threads.thread_env`) so the libraries it loads
    size their pools for it; each worker sets its own budget again as it joins
    (:class:`posegraph.batch.worker.ThreadBudgetPlugin`). The preload only imports: no thread
    pool of torch or OpenMP runs in the server, so forking it is safe.

    Returns:
        whether local workers are forked from it: on Linux, where the server starts; elsewhere
        they are spawned, each importing for itself (macOS does not allow forking a process
        that has loaded its system frameworks, Windows cannot fork).
    """
    if not sys.platform.startswith("linux"):
        return False
    import multiprocessing
    from multiprocessing import forkserver

    multiprocessing.get_context("forkserver").set_forkserver_preload([PRELOAD_MODULE])
    try:
        with _environ(thread_env(threads)):
            forkserver.ensure_running()
    except OSError:  # no Unix socket or pipe for it (a read-only temporary folder): spawn workers
        return False
    return True


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` updated with ``values`` inside the block, restored afterwards."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


#: Dask's setting that gives spawned workers ``MALLOC_TRIM_THRESHOLD_=65536``, left out here:
#: setting it turns off glibc's adaptive mmap threshold (mallopt(3)), so every large array a
#: solve allocates is mapped anew and faults its pages in. benchmarks/batch.py's 32 files on
#: one worker: 670,000–710,000 page faults with it, 87,000–92,000 without; time in tasks
#: 8.1–10.0 s with it, 6.9–7.9 s without.
NO_MALLOC_TRIM = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"


@contextlib.contextmanager
def _local_cluster(n: int, threads: int) -> Iterator[Any]:
    """A LocalCluster of ``n`` single-task worker processes with ``threads`` threads per
    pool, forked from the preloaded server where there is one (:func:`start_worker_server`),
    with the C library's default allocator settings (:data:`NO_MALLOC_TRIM`). Spawned workers
    get the budget in their environment: Dask sets its ``pre-spawn-environ`` variables
    (``OMP_NUM_THREADS=1`` …) in this process before it spawns a worker, existing values
    first; so they are the budget here while the workers start, and restored afterwards."""
    import dask
    import distributed

    forked = start_worker_server(threads)
    config = {NO_MALLOC_TRIM: None}
    if forked:
        config["distributed.worker.multiprocessing-method"] = "forkserver"
    with dask.config.set(config):  # for the cluster's life: a worker that dies restarts the same way
        with _environ(thread_env(threads)):
            cluster = distributed.LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                silence_logs=logging.ERROR, env=thread_env(threads),
            )
        try:
            yield cluster
        finally:
            cluster.close()


def _run_tasks(c, todo, outputs, opts, results_path, progress, stream) -> Dict[str, Dict[str, Any]]:
    """Submit one task per input, append each record to ``results.jsonl`` as it arrives."""
    import distributed
    from tqdm import tqdm

    from posegraph.batch.worker import optimize_task

    futures = {
        c.submit(optimize_task, f, outputs[f], opts, key=f"posegraph-optimize-{k}-{os.path.basename(f)}", pure=False): f
        for k, f in enumerate(todo)
    }
    records: Dict[str, Dict[str, Any]] = {}
    bar = tqdm(total=len(todo), file=stream or sys.stderr, disable=not progress, unit="file", desc="batch", dynamic_ncols=True)
    try:
        with open(results_path, "a", encoding="utf-8") as results:
            for fut in distributed.as_completed(futures):
                f = futures[fut]
                try:
                    rec = fut.result()
                except Exception as err:  # noqa: BLE001 - a worker that died: recorded, the rest go on
                    rec = {"input": f, "output": None, "result": "failed", "exit_code": 1,
                           "error": f"{f}: worker failed: {type(err).__name__}: {err}".splitlines()[0],
                           "worker": None, "started": None, "wall_s": None}
                records[f] = rec
                results.write(_json_line(rec))  # one write per line
                results.flush()
                bar.update(1)
                if rec["result"] == "failed":
                    bar.write(f"error: {rec['error']}", file=stream or sys.stderr)
    finally:
        bar.close()
    return records


def format_table(report: BatchReport) -> str:
    """The summary table of a batch: one row per input, then the totals."""
    rows = [("input", "result", "iters", "final chi2", "solve s", "wall s", "worker")]
    for r in report.records:
        name = os.path.basename(r["input"])
        if r.get("result") == "failed":
            rows.append((name, "failed", "", "", "", _num(r.get("wall_s")), str(r.get("worker") or "")))
            continue
        chi2 = r.get("final_chi2")
        rows.append((
            name, f"{r['result']} ({r.get('status', '')})", str(r.get("iterations", "")),
            f"{chi2:.6g}" if isinstance(chi2, (int, float)) else "",
            _num(r.get("time_s", {}).get("solve")), _num(r.get("wall_s")), str(r.get("worker") or ""),
        ))
    widths = [max(len(row[k]) for row in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    ran = len(report.records) - len(report.skipped)
    rate = f", {ran / report.seconds:.2f} files/s" if ran and report.seconds > 0 else ""
    lines.append(
        f"{len(report.records)} inputs: {ran - len(report.failed)} ok, {len(report.failed)} failed, "
        f"{len(report.skipped)} skipped; {report.seconds:.1f} s on {report.workers} worker{'' if report.workers == 1 else 's'}{rate}; "
        f"results in {report.results_path}"
    )
    return "\n".join(lines)


def _num(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, (int, float)) else ""


def _json_line(record: Mapping[str, Any]) -> str:
    """One results.jsonl line: valid JSON, never NaN or Infinity (:func:`posegraph.report.json_text`)."""
    from posegraph.report.console import json_text

    return json_text(dict(record)) + "\n"


def cmd_batch(args: argparse.Namespace) -> int:
    """``posegraph batch``: run, print the summary table on stdout; exit 1 if any input failed."""
    if not args.out_dir:
        raise BatchUsageError("--out-dir DIR is required (or 'out_dir:' in --config)")
    report = run(
        args.inputs, args.out_dir, args, workers=args.workers, scheduler=args.scheduler,
        resume=args.resume, progress=not args.quiet,
    )
    sys.stdout.write(format_table(report) + "\n")
    return report.exit_code
