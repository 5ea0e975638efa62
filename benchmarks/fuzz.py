"""Mutation fuzzing of g2o input: every run ends cleanly, or it is a defect.

Seeds are small graphs cut from ``data/*.g2o`` (the first vertices and the edges and points
among them). Each case mutates one seed at the byte or token level (tokens deleted,
duplicated or swapped; numbers replaced by ``nan``, ``inf``, ``1e308``, integers of thousands
of digits; tags flipped; lines dropped or repeated; a BOM, CR, tabs, NUL bytes or
line-separator characters inserted) and runs it

* through the Python API — :func:`~posegraph.read_g2o`, :func:`~posegraph.initialize`,
  :func:`~posegraph.build_problem`, :func:`~posegraph.optimize` — and
* through the CLI's ``main`` in-process (``optimize`` with a random option set, or ``info``).

Outcomes (:func:`run_case`): ``ok`` (finite results; exit 0 with valid JSON), ``refused`` (a
:class:`~posegraph.errors.PoseGraphError` naming the file; exit 2 with one ``error: FILE…``
line), ``failed`` (the optimization reports status ``failed``; exit 1 with one line naming the
file) and ``defect`` (anything else: another exception, a traceback, ``internal error``, more
than one stderr line, a message without the file's name, JSON with NaN/Infinity).

    python benchmarks/fuzz.py --cases 10000 [--seed 0] [--show 5]

prints the counts per outcome and the first defects (with a reproducer file under
``--keep DIR``). ``tests/test_fuzz.py`` runs the same property under Hypothesis.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]
try:  # the installed or PYTHONPATH package, else this checkout's
    import posegraph  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from posegraph import OptimizationError, PoseGraphError, build_problem, initialize, read_g2o  # noqa: E402
from posegraph.cli.main import main  # noqa: E402
from posegraph.solve.optimize import SolverOptions, optimize  # noqa: E402

#: vertices kept per seed graph (small: thousands of cases run in minutes)
SEED_VERTICES = 12
#: number replacements (out of range, non-finite, odd spellings)
ODD_NUMBERS = ["nan", "inf", "-inf", "1e308", "-1.7e308", "1e-320", "0", "-0", "1e400", "1" * 5000,
               "-" + "9" * 30, "9223372036854775808", "0x10", "1_0", "", "1e", "١"]
#: inserted text (byte order mark, line endings, control and separator characters)
ODD_TEXT = ["\ufeff", "\r", "\r\n", "\t", "\x00", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "#", " ", "\n"]
TAGS = ["VERTEX_SE2", "EDGE_SE2", "VERTEX_SE3:QUAT", "EDGE_SE3:QUAT", "FIX", "VERTEX_TRACKXYZ",
        "EDGE_SE3_TRACKXYZ", "PARAMS_SE3OFFSET", "FOO"]
#: option sets of the CLI's optimize runs
CLI_OPTIONS = [[], ["--init", "chordal"], ["--init", "spanning-tree"], ["--linear-solver", "dense"],
               ["--linear-solver", "batched_dense"], ["--linear-solver", "cg"], ["--solver", "gn"],
               ["--robust", "huber:1"], ["--linear-solver", "pardiso"]]


def seed_texts(data_dir: Path = REPO / "data", vertices: int = SEED_VERTICES) -> Dict[str, str]:
    """Small g2o texts cut from each ``data/*.g2o``: the first ``vertices`` pose vertices, the
    points, and the edges and observations among them."""
    seeds = {}
    for path in sorted(data_dir.glob("*.g2o")):
        keep, kept, points, lines = set(), 0, set(), []
        if "VERTEX_SE" not in path.read_text():  # an edge-only file: ids 0 … vertices − 1
            keep, kept = {str(i) for i in range(vertices)}, vertices
        for line in path.read_text().splitlines():
            toks = line.split()
            if not toks:
                continue
            tag = toks[0]
            if tag.startswith("VERTEX_SE") and kept < vertices:
                keep.add(toks[1])
                kept += 1
                lines.append(line)
            elif tag.startswith("EDGE_SE") and not tag.endswith("TRACKXYZ") and toks[1] in keep and toks[2] in keep:
                lines.append(line)
            elif tag == "EDGE_SE3_TRACKXYZ" and toks[1] in keep and len(points) < 6:
                points.add(toks[2])
                lines.append(line)
            elif tag in ("PARAMS_SE3OFFSET", "FIX"):
                lines.append(line)
        vertex_lines = [line for line in path.read_text().splitlines()
                        if line.startswith("VERTEX_TRACKXYZ") and line.split()[1] in points]
        lines = [l for l in lines if not l.startswith("FIX") or all(t in keep for t in l.split()[1:])]
        seeds[path.name] = "\n".join(vertex_lines + lines) + "\n"
    return seeds


def mutate(text: str, rng: random.Random, steps: int = 1) -> bytes:
    """``steps`` random mutations of ``text`` (token, line or byte level), as UTF-8 bytes
    (NUL and other bytes included)."""
    lines = text.split("\n")
    for _ in range(steps):
        k = rng.randrange(len(lines))
        toks = lines[k].split(" ")
        op = rng.randrange(10)
        if op == 0 and len(toks) > 1:  # delete a token
            del toks[rng.randrange(len(toks))]
        elif op == 1:  # duplicate a token
            i = rng.randrange(len(toks))
            toks.insert(i, toks[i])
        elif op == 2 and len(toks) > 2:  # swap two tokens
            i, j = rng.sample(range(len(toks)), 2)
            toks[i], toks[j] = toks[j], toks[i]
        elif op in (3, 4):  # an odd number
            toks[rng.randrange(len(toks))] = rng.choice(ODD_NUMBERS)
        elif op == 5:  # another tag
            toks[0] = rng.choice(TAGS)
        elif op == 6:  # drop or repeat a line
            if rng.random() < 0.5 and len(lines) > 1:
                del lines[k]
                continue
            lines.insert(k, lines[k])
        elif op in (7, 8):  # odd text inside a line
            line = lines[k]
            i = rng.randrange(len(line) + 1)
            lines[k] = line[:i] + rng.choice(ODD_TEXT) + line[i:]
            continue
        else:  # a huge information value
            if len(toks) > 6:
                toks[rng.randrange(len(toks) - 6, len(toks))] = rng.choice(["1e308", "1e200", "1e-300", "-1"])
        lines[k] = " ".join(toks)
    data = "\n".join(lines).encode("utf-8")
    if rng.random() < 0.05:  # a BOM at the start
        data = b"\xef\xbb\xbf" + data
    return data


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def api_outcome(path: str) -> Tuple[str, str]:
    """``(outcome, detail)`` of the Python API on one file (see the module doc)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = initialize(read_g2o(path))
            problem = build_problem(graph)
            try:
                result = optimize(problem, SolverOptions(max_iterations=20, threads=1))
            except (OptimizationError, RuntimeError):  # a failed solve (the CLI: exit 1)
                return "failed", ""
    except PoseGraphError as err:
        if path not in str(err):
            return "defect", f"PoseGraphError without the file's name: {str(err)[:300]}"
        return "refused", ""
    except Exception as err:  # noqa: BLE001 - any other exception is the defect looked for
        return "defect", f"{type(err).__name__}: {str(err)[:300]}"
    if "failed" in result.status:
        return "failed", ""
    if not (_finite(problem.poses.tensor) and _finite(result.final_error)):
        return "defect", "status not failed but non-finite outputs"
    return "ok", ""


def _strict_json(text: str) -> None:
    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    json.loads(text, parse_constant=refuse)


def cli_outcome(path: str, argv: Sequence[str]) -> Tuple[str, str]:
    """``(outcome, detail)`` of ``posegraph ARGV`` (in-process ``main``) on one file."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except BaseException as exc:  # noqa: BLE001 - main must not raise
            return "defect", f"main raised {type(exc).__name__}: {str(exc)[:300]}"
    stdout, stderr = out.getvalue(), err.getvalue()
    lines = stderr.splitlines()
    if code == 0:
        if "--json" in argv:
            try:
                _strict_json(stdout)
            except ValueError as exc:
                return "defect", f"exit 0 but stdout is not JSON: {exc}"
        if any(not l.startswith("warning: ") for l in lines):
            return "defect", f"exit 0 with other stderr lines than warnings: {stderr[:300]}"
        return "ok", ""
    if "internal error" in stderr or "Traceback" in stderr:
        return "defect", f"exit {code}: {stderr[:300]}"
    if len(lines) != 1 or not lines[0].startswith("error: "):
        return "defect", f"exit {code} with {len(lines)} stderr lines: {stderr[:300]}"
    if path not in lines[0]:
        return "defect", f"exit {code}, the error does not name the file: {lines[0][:300]}"
    if len(lines[0]) > len(path) + 600:
        return "defect", f"exit {code}, an error line of {len(lines[0])} characters"
    return ("refused" if code == 2 else "failed"), ""


def run_case(data: bytes, rng: random.Random, folder: str) -> Tuple[str, str, str]:
    """``(outcome, where, detail)`` of one input: the API, then the CLI with a random option
    set (``optimize`` or ``info``); the first defect wins."""
    path = os.path.join(folder, "case.g2o")
    with open(path, "wb") as fh:
        fh.write(data)
    api = api_outcome(path)
    if api[0] == "defect":
        return api[0], "api", api[1]
    if rng.random() < 0.25:
        argv = ["info", path, "--json"]
    else:
        argv = ["optimize", path, "--json", "--max-iters", "20", *rng.choice(CLI_OPTIONS)]
        if rng.random() < 0.5:
            argv.remove("--json")
    cli = cli_outcome(path, argv)
    return cli[0], " ".join(argv[:1] + argv[2:]), cli[1]


def campaign(cases: int, seed: int = 0, keep: Optional[str] = None, show: int = 5) -> Counter:
    """Run ``cases`` mutated inputs; print progress and the first ``show`` defects."""
    rng = random.Random(seed)
    seeds = list(seed_texts().items())
    counts: Counter = Counter()
    shown = 0
    start = time.perf_counter()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        for case in range(cases):
            name, text = rng.choice(seeds)
            data = mutate(text, rng, steps=rng.choice([1, 1, 2, 3]))
            outcome, where, detail = run_case(data, rng, folder)
            counts[outcome] += 1
            if outcome == "defect":
                if keep:
                    Path(keep).mkdir(parents=True, exist_ok=True)
                    Path(keep, f"defect-{case}.g2o").write_bytes(data)
                if shown < show:
                    shown += 1
                    print(f"defect in case {case} (seed {name}, {where}): {detail}", flush=True)
            if (case + 1) % 500 == 0:
                print(f"{case + 1} cases, {time.perf_counter() - start:.0f} s: {dict(counts)}", flush=True)
    return counts


def _main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", metavar="DIR", help="write each defect's input here")
    p.add_argument("--show", type=int, default=5, help="print the first N defects")
    args = p.parse_args(argv)
    start = time.perf_counter()
    counts = campaign(args.cases, args.seed, args.keep, args.show)
    total = sum(counts.values())
    print(f"{total} cases in {time.perf_counter() - start:.0f} s (seed {args.seed})")
    for outcome in ("ok", "refused", "failed", "defect"):
        print(f"{outcome:8s} {counts[outcome]:6d} ({100 * counts[outcome] / max(total, 1):.1f}%)")
    return 1 if counts["defect"] else 0


if __name__ == "__main__":
    sys.exit(_main())
