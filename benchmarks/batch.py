"""Files per second of ``posegraph batch`` with 1 and 2 workers, and of one ``posegraph
optimize`` process per file.

    .venv/bin/python benchmarks/batch.py [--files 32] [--graphs intel smallGrid3D …]
                                         [--workers 1 2] [--baseline-files N] [--json]

The inputs are ``--files`` noisy copies of the public graphs (``POSEGRAPH_DATASETS`` or
``../shared/datasets``; :func:`posegraph.synthetic.grid_se2` graphs when absent), cycled:
copy k of a graph has its vertices moved by :func:`posegraph.synthetic.hard_cases.perturb_vertices`
(seed k), so each solve starts from a different guess. Every figure is end to end, as a user
sees it: the files optimized divided by the wall time of the whole command (the Python start,
the import of torch and Theseus, the Dask cluster's start for ``batch``); "in tasks" is the
time the workers spent in the optimize tasks, summed over workers; "first task" is when the
first task began, seconds after the command started (its start-up), and "files/s running" the
files over the time from the first task's start to the last one's end (the rate once the
workers are up: the end-to-end rate without start-up and exit); "others' CPU s" is the CPU
time other processes of the machine used meanwhile (Linux; a run beside other work is slower,
and its 2-worker figure most). The baseline runs
``posegraph optimize FILE -o OUT --quiet`` once per file, one after the other, on the first
``--baseline-files`` inputs (default all).

"ideal" is the ratio two workers would give if they halved one worker's running time exactly,
start-up and exit unchanged: the most end-to-end scaling that start-up allows (Amdahl's law).

Targets: 2 workers ≥ 1.7× the files/s of 1 worker; ``batch --workers 1`` ≥ 3× the files/s of
one ``optimize`` process per file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's posegraph

DEFAULT_GRAPHS = ["intel", "manhattan", "smallGrid3D", "tinyGrid3D", "parking-garage", "sphere2500"]


def datasets_dir() -> Optional[Path]:
    """The public g2o folder, as the tests find it (None when absent)."""
    env = os.environ.get("POSEGRAPH_DATASETS")
    root = Path(env) if env else REPO.parent / "shared" / "datasets"
    for candidate in (root / "g2o", root):
        if candidate.is_dir() and any(candidate.glob("*.g2o")):
            return candidate
    return None


def make_inputs(folder: Path, files: int, graphs: List[str], sigma_t: float, sigma_r: float) -> List[Path]:
    """``files`` noisy copies of ``graphs`` (cycled) written to ``folder``."""
    from posegraph import initialize, read_g2o, write_g2o
    from posegraph.synthetic.hard_cases import perturb_vertices
    from posegraph.synthetic.graphs import grid_se2

    shared = datasets_dir()
    sources = []
    for name in graphs:
        if shared is not None and (shared / f"{name}.g2o").is_file():
            graph = read_g2o(shared / f"{name}.g2o")
            if graph.poses is None:  # an edge-only file (manhattan): its odometry guess
                graph = initialize(graph, "spanning-tree")
            sources.append((name, graph))
    if not sources:  # no public graphs: generated Manhattan worlds
        sources = [(f"grid{k}", grid_se2(num_poses=500, seed=k).graph) for k in range(3)]
    paths = []
    for k in range(files):
        name, graph = sources[k % len(sources)]
        path = folder / f"{name}-{k:03d}.g2o"
        write_g2o(perturb_vertices(graph, sigma_t, sigma_r, seed=k), path)
        paths.append(path)
    return paths


def _posegraph() -> List[str]:
    """The command that runs this checkout's CLI."""
    return [sys.executable, "-c", "import sys; from posegraph.cli import main; sys.exit(main())"]


def _env() -> Dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))


def _processes() -> Dict[int, Tuple[int, float]]:
    """``{pid: (parent pid, CPU seconds user + system)}`` of every process now (Linux's /proc;
    proc(5)); empty elsewhere."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    procs: Dict[int, Tuple[int, float]] = {}
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            procs[int(pid)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
        except (OSError, ValueError, IndexError):
            continue
    return procs


class OthersCpu:
    """CPU seconds other processes of the machine used during a block: /proc read every
    ``interval`` seconds; this process's descendants (the command's, once seen: a fork server
    outlives its parent) are not counted, a process that started meanwhile counts whole."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.seconds: Optional[float] = None

    def _sample(self) -> None:
        procs = _processes()
        for pid, (ppid, _) in procs.items():
            if ppid in self.ours:
                self.ours.add(pid)
        for pid, (_, cpu) in procs.items():
            if pid not in self.ours:
                self.last[pid] = cpu

    def _run(self) -> None:
        while not self.done.wait(self.interval):
            self._sample()

    def __enter__(self) -> "OthersCpu":
        import threading

        self.ours = {os.getpid()}
        self.before = {pid: cpu for pid, (_, cpu) in _processes().items()}
        self.last: Dict[int, float] = {}
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()
        self._sample()
        if self.before:
            self.seconds = sum(cpu - self.before.get(pid, 0.0) for pid, cpu in self.last.items() if pid not in self.ours)


def time_batch(inputs: Path, out: Path, workers: int, extra: List[str]) -> Dict[str, Any]:
    """``posegraph batch INPUTS --out-dir OUT --workers N``: wall time and files/s."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = _posegraph() + ["batch", str(inputs), "--out-dir", str(out), "--workers", str(workers), "--quiet", *extra]
    with OthersCpu() as others:
        began = time.time()
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
        wall = time.perf_counter() - t0
    results = out / "results.jsonl"
    lines = [json.loads(line) for line in results.read_text().splitlines()] if results.is_file() else []
    if not lines or proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd[3:])} exited {proc.returncode} with {len(lines)} results:\n{proc.stderr[-3000:]}")
    ok = sum(r["result"] == "ok" for r in lines)
    first = min(r["started"] for r in lines)
    running = max(r["started"] + r["wall_s"] for r in lines) - first
    return {
        "command": f"batch --workers {workers}", "files": len(lines), "ok": ok, "exit": proc.returncode,
        "wall_s": wall, "files_per_s": len(lines) / wall,
        "task_s": sum(r["wall_s"] for r in lines),  # time in the tasks, summed over workers
        "first_task_s": first - began, "running_files_per_s": len(lines) / running, "others_cpu_s": others.seconds,
    }


def time_per_file(paths: List[Path], out: Path, extra: List[str]) -> Dict[str, Any]:
    """One ``posegraph optimize FILE -o OUT`` process per file, one after the other."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    ok = 0
    with OthersCpu() as others:
        t0 = time.perf_counter()
        for p in paths:
            cmd = _posegraph() + ["optimize", str(p), "-o", str(out / p.name), "--quiet", "--json", *extra]
            ok += subprocess.run(cmd, env=_env(), capture_output=True, text=True).returncode == 0
        wall = time.perf_counter() - t0
    return {"command": "optimize per file", "files": len(paths), "ok": ok, "exit": 0 if ok == len(paths) else 1,
            "wall_s": wall, "files_per_s": len(paths) / wall, "task_s": None,
            "first_task_s": None, "running_files_per_s": None, "others_cpu_s": others.seconds}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", type=int, default=32, help="noisy copies to optimize (default 32)")
    p.add_argument("--graphs", nargs="+", default=DEFAULT_GRAPHS, help="public graphs to copy (cycled)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to run (default 1 2)")
    p.add_argument("--baseline-files", type=int, default=None,
                   help="files for the one-process-per-file baseline (default all; its rate is per file)")
    p.add_argument("--translation-sigma", type=float, default=0.05, help="vertex noise (m)")
    p.add_argument("--rotation-sigma", type=float, default=0.01, help="vertex noise (rad)")
    p.add_argument("--max-iters", type=int, default=None, help="passed to every solve")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    a = p.parse_args(argv)
    extra = [] if a.max_iters is None else ["--max-iters", str(a.max_iters)]
    with tempfile.TemporaryDirectory(prefix="posegraph-batch-bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        paths = make_inputs(tmp / "in", a.files, a.graphs, a.translation_sigma, a.rotation_sigma)
        rows = [time_batch(tmp / "in", tmp / f"out{w}", w, extra) for w in a.workers]
        n_base = len(paths) if a.baseline_files is None else min(a.baseline_files, len(paths))
        if n_base:
            rows.append(time_per_file(paths[:n_base], tmp / "out-single", extra))
    used = sorted({p.stem.rsplit("-", 1)[0] for p in paths})  # the graphs the copies are of
    by = {r["command"]: r["files_per_s"] for r in rows}
    running = {r["command"]: r["running_files_per_s"] for r in rows}
    ratios = {}
    if "batch --workers 1" in by and "batch --workers 2" in by:
        ratios["2 workers / 1 worker"] = by["batch --workers 2"] / by["batch --workers 1"]
        ratios["2 workers / 1 worker, once running"] = running["batch --workers 2"] / running["batch --workers 1"]
        one = next(r for r in rows if r["command"] == "batch --workers 1")
        halved = one["wall_s"] - one["files"] / one["running_files_per_s"] / 2
        ratios["2 workers / 1 worker, ideal (one worker's running time halved)"] = one["wall_s"] / halved
    if "batch --workers 1" in by and "optimize per file" in by:
        ratios["batch --workers 1 / optimize per file"] = by["batch --workers 1"] / by["optimize per file"]
    if a.json:
        print(json.dumps({"files": a.files, "graphs": used, "rows": rows, "ratios": ratios}))
        return 0
    print(f"{a.files} noisy copies of {', '.join(used)}; {os.cpu_count()} cores")
    print("| command | files | ok | wall s | files/s | in tasks s | first task s | files/s running | others' CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")

    def cell(value: Optional[float], fmt: str) -> str:
        return "" if value is None else format(value, fmt)

    for r in rows:
        print(f"| {r['command']} | {r['files']} | {r['ok']} | {r['wall_s']:.1f} | {r['files_per_s']:.2f} | "
              f"{cell(r['task_s'], '.1f')} | {cell(r['first_task_s'], '.1f')} | {cell(r['running_files_per_s'], '.2f')} | "
              f"{cell(r['others_cpu_s'], '.1f')} |")
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}×")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
