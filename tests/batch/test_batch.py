"""``posegraph batch`` and :func:`posegraph.batch.run`: every input optimized on Dask workers
as ``optimize`` would, one ``results.jsonl`` line per input, failed inputs recorded while the
others go on, ``--resume``, usage errors, the missing extra, and each worker's thread budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("distributed")

from posegraph import read_g2o
from posegraph.errors import PoseGraphError
from posegraph.batch.driver import (
    EXTRA_INSTALL, RESULTS_NAME, BatchUsageError, _connect, expand_inputs, output_paths, read_results, run,
)
from posegraph.batch.worker import worker_thread_report
from posegraph.cli.optimize import EXIT_BAD_INPUT, EXIT_FAILED
from posegraph.cli.main import main
from posegraph.solve.threads import available_cores, thread_budget

from conftest import make_synthetic

REPO = Path(__file__).resolve().parents[1]
BROKEN = "VERTEX_SE2 0 0 0 0\nEDGE_SE2 0 1 1 0\n"  # line 2: too few values


@pytest.fixture(scope="module")
def client():
    """One local cluster of one worker, made as ``posegraph batch --workers 1`` makes it."""
    with _connect(None, None, 1) as c:
        yield c


def _folder(tmp_path: Path, broken: bool = True) -> Path:
    """Three small noisy graphs (SE2, SE3) and, with ``broken``, a file that cannot be read."""
    folder = tmp_path / "in"
    folder.mkdir()
    for k, kind in enumerate(["SE2", "SE3", "SE2"]):
        (folder / f"g{k}.g2o").write_text(make_synthetic(kind, n=8, seed=k, noise=0.02).text())
    if broken:
        (folder / "broken.g2o").write_text(BROKEN)
    (folder / "notes.txt").write_text("not a graph\n")
    return folder


def _lines(out: Path):
    return [json.loads(line) for line in (out / RESULTS_NAME).read_text().splitlines()]


def batch(capsys, *args):
    code = main(["batch", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_folder_with_a_broken_file_writes_the_others_and_exits_1(tmp_path, capsys):
    folder, out = _folder(tmp_path), tmp_path / "out"
    began = time.time()
    code, stdout, err = batch(capsys, folder, "--out-dir", out, "--workers", "1", "--quiet")
    ended = time.time()
    assert code == EXIT_FAILED
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [RESULTS_NAME] + [f"g{k}.optimized.g2o" for k in range(3)]
    )
    lines = _lines(out)
    assert sorted(Path(r["input"]).name for r in lines) == ["broken.g2o", "g0.g2o", "g1.g2o", "g2.g2o"]
    failed = [r for r in lines if r["result"] == "failed"]
    assert len(failed) == 1 and failed[0]["error"] == f"{folder / 'broken.g2o'}:2: EDGE_SE2: expected 11 values after the tag, received 4"
    for r in lines:
        assert r["worker"].startswith("tcp://") and r["wall_s"] > 0
        assert began < r["started"] < r["started"] + r["wall_s"] < ended
        if r["result"] == "ok":
            assert r["status"] == "converged" and r["final_chi2"] < r["initial_chi2"]
            assert read_g2o(r["output"]).num_poses == 8
    assert "error: " + failed[0]["error"] in err
    assert "4 inputs: 3 ok, 1 failed" in stdout and "broken.g2o" in stdout


def test_run_gives_what_optimize_gives(tmp_path, client, capsys):
    folder, out = _folder(tmp_path, broken=False), tmp_path / "out"
    report = run([folder], out, {"max_iters": 20, "linear-solver": "cholmod"}, client=client, progress=False)
    assert report.exit_code == 0 and [r["result"] for r in report.records] == ["ok"] * 3
    assert all(r["linear_solver"] == "cholmod" for r in report.records)
    single = tmp_path / "single.g2o"
    args = ["optimize", folder / "g1.g2o", "-o", single, "--max-iters", "20", "--quiet", "--linear-solver", "cholmod"]
    assert main(list(map(str, args))) == 0
    torch.testing.assert_close(
        read_g2o(out / "g1.optimized.g2o").poses, read_g2o(single).poses, rtol=0, atol=1e-9
    )


def test_run_records_a_failed_solve_and_goes_on(tmp_path, client, monkeypatch):
    folder = _folder(tmp_path, broken=False)
    (folder / "missing-vertex.g2o").write_text("VERTEX_SE2 0 0 0 0\nEDGE_SE2 0 7 1 0 0 1 0 0 1 0 1\n")
    report = run([folder / "*.g2o", folder / "absent.g2o"], tmp_path / "out", client=client, progress=False)
    by_name = {Path(r["input"]).name: r for r in report.records}
    assert report.exit_code == 1 and len(report.failed) == 2
    assert by_name["absent.g2o"]["error"].endswith("absent.g2o: no such file")
    assert by_name["absent.g2o"]["exit_code"] == EXIT_BAD_INPUT
    assert "vertex 7" in by_name["missing-vertex.g2o"]["error"]
    assert len(_lines(tmp_path / "out")) == 5


def test_resume_skips_done_inputs_and_keeps_one_line_per_input(tmp_path, client, capsys):
    folder, out = _folder(tmp_path), tmp_path / "out"
    address = client.scheduler.address
    assert batch(capsys, folder, "--out-dir", out, "--scheduler", address, "--quiet")[0] == EXIT_FAILED
    kept = out / "g0.optimized.g2o"
    kept_mtime = kept.stat().st_mtime_ns
    (out / "g1.optimized.g2o").unlink()
    (out / "g2.optimized.g2o").write_bytes(b"")  # emptied: not done (it was skipped)
    (folder / "broken.g2o").write_text(make_synthetic("SE2", n=8, seed=9, noise=0.02).text())  # fixed
    code, stdout, _ = batch(capsys, folder, "--out-dir", out, "--scheduler", address, "--quiet", "--resume")
    assert code == 0
    lines = _lines(out)
    assert sorted(Path(r["input"]).name for r in lines) == ["broken.g2o", "g0.g2o", "g1.g2o", "g2.g2o"]
    assert all(r["result"] == "ok" for r in lines)
    assert kept.stat().st_mtime_ns == kept_mtime  # not run again
    assert (out / "g1.optimized.g2o").is_file() and (out / "broken.optimized.g2o").is_file()
    assert (out / "g2.optimized.g2o").stat().st_size > 0
    assert "3 ok, 0 failed, 1 skipped" in stdout
    # without --resume everything runs again and the file describes this run only
    assert batch(capsys, folder / "g0.g2o", "--out-dir", out, "--scheduler", address, "--quiet")[0] == 0
    assert [Path(r["input"]).name for r in _lines(out)] == ["g0.g2o"]


def test_config_file_gives_batch_options_and_flags_win(tmp_path, client, capsys):
    folder, out = _folder(tmp_path, broken=False), tmp_path / "out"
    cfg = tmp_path / "batch.yaml"
    cfg.write_text(f"inputs: [{folder / 'g0.g2o'}]\nout_dir: {out}\nmax_iters: 1\nsolver: gn\n")
    code, _, _ = batch(capsys, "--config", cfg, "--scheduler", client.scheduler.address, "--quiet", "--max-iters", "2")
    (line,) = _lines(out)
    assert code == 0 and line["solver"] == "gn" and line["iterations"] <= 2


@pytest.mark.parametrize(
    "args,words",
    [
        (["--out-dir", "{out}"], ["no input files"]),
        (["{folder}"], ["--out-dir DIR is required"]),
        (["{folder}/nothing*.g2o", "--out-dir", "{out}"], ["no file matches"]),
        (["{empty}", "--out-dir", "{out}"], ["folder holds no *.g2o file"]),
        (["{folder}", "{other}", "--out-dir", "{out}"], ["two inputs would write the same output"]),
        (["{folder}", "--out-dir", "{out}", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], ["--workers"]),
        (["{folder}", "--out-dir", "{out}", "--config", "{folder}/g0.g2o"], ["expected a mapping"]),
        (["{folder}", "--out-dir", "{out}", "--robust", "gnc", "--outliers", "o.txt"],
         ["--outliers o.txt: expected one input, received 3", "each overwriting the one before"]),
    ],
    ids=["no-inputs", "no-out-dir", "no-match", "empty-folder", "same-name", "workers-and-scheduler", "bad-config",
         "outliers-file-of-several-inputs"],
)
def test_usage_errors_exit_2_with_one_error_line(tmp_path, capsys, args, words):
    folder = _folder(tmp_path, broken=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "g0.g2o").write_text((folder / "g0.g2o").read_text())
    (tmp_path / "empty").mkdir()
    paths = dict(folder=folder, other=other / "g0.g2o", out=tmp_path / "out", empty=tmp_path / "empty")
    code, stdout, err = batch(capsys, *(a.format(**paths) for a in args))
    assert code == EXIT_BAD_INPUT and stdout == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert all(w in err for w in words), err
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "o.txt").exists() and not Path("o.txt").exists()


def test_same_name_collision_names_both_inputs(tmp_path):
    for sub in ("da", "db"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "x.g2o").write_text(BROKEN)
    first, second = str(tmp_path / "da" / "x.g2o"), str(tmp_path / "db" / "x.g2o")
    with pytest.raises(BatchUsageError) as err:
        output_paths([first, second], str(tmp_path / "out"))
    target = tmp_path / "out" / "x.optimized.g2o"
    assert str(err.value) == f"two inputs would write the same output {target}: {first} and {second}"
    assert output_paths([first], str(tmp_path / "out")) == {first: str(target)}


def test_every_solve_option_that_writes_a_file_is_known_to_batch():
    from posegraph.batch.driver import solve_options_parser
    from posegraph.cli.options import SOLVE_OUTPUT_FILE_OPTIONS

    writers = {a.dest for a in solve_options_parser()._actions
               if a.help and ("write" in a.help.lower() or "FILE" in str(a.metavar))}
    assert writers == set(SOLVE_OUTPUT_FILE_OPTIONS) == {"outliers"}


def test_outliers_file_of_one_input_is_written_where_the_client_runs(tmp_path, client, capsys, monkeypatch):
    """The workers' working directory is not the client's: a relative --outliers path is the
    client's (it is resolved before the task is sent)."""
    folder = _folder(tmp_path, broken=False)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    name = "outliers-of-g0-in-the-client-folder.txt"
    code, stdout, err = batch(capsys, folder / "g0.g2o", "--out-dir", tmp_path / "out", "--scheduler",
                              client.scheduler.address, "--robust", "gnc", "--outliers", name, "--quiet")
    assert code == 0, err
    (line,) = _lines(tmp_path / "out")
    assert line["result"] == "ok" and line["gnc"]["outliers_file"] == str(here / name)
    assert (here / name).is_file()


def test_bad_workers_value_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["batch", str(tmp_path), "--out-dir", str(tmp_path / "out"), "--workers", "0"])
    assert exit_.value.code == EXIT_BAD_INPUT
    assert "expected an integer ≥ 1" in capsys.readouterr().err


@pytest.mark.parametrize("flag,value", [("--rel-tol", "nan"), ("--abs-tol", "inf"), ("--rel-tol", "-1")])
def test_bad_tolerance_is_a_usage_error_before_any_worker(tmp_path, capsys, flag, value):
    folder = _folder(tmp_path, broken=False)
    with pytest.raises(SystemExit) as exit_:
        main(["batch", str(folder), "--out-dir", str(tmp_path / "out"), flag, value, "--quiet"])
    assert exit_.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"argument {flag}: expected a finite number ≥ 0, received {value!r}" in err
    assert "internal error" not in err and not (tmp_path / "out").exists()
    with pytest.raises(PoseGraphError, match=f"{flag[2:]}: expected a finite number ≥ 0"):
        run([folder], tmp_path / "out", {flag[2:]: float(value)}, progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_dask_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` raises ImportError
    code, stdout, err = batch(capsys, _folder(tmp_path), "--out-dir", tmp_path / "out")
    assert code == EXIT_BAD_INPUT and stdout == ""
    assert len(err.splitlines()) == 1 and EXTRA_INSTALL in err
    assert not (tmp_path / "out").exists()


def test_worker_reports_its_thread_budget(client):
    report = client.submit(worker_thread_report, pure=False).result()
    budget = thread_budget(1, available_cores())
    assert report["torch"] == budget
    assert report["env"] == {k: str(budget) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    pools = [lib for lib in report["libraries"] if lib["api"] in ("mkl", "openblas", "openmp")]
    assert pools and all(lib["threads"] == budget for lib in pools), pools


def test_the_client_imports_no_torch(tmp_path):
    """``posegraph batch`` as a user runs it: the process that reads the inputs, starts the
    cluster and writes results.jsonl never loads torch, Theseus or SciPy (its start-up)."""
    folder, out = _folder(tmp_path, broken=False), tmp_path / "out"
    code = (
        "import sys\n"
        "from posegraph.cli import main\n"
        f"code = main(['batch', {str(folder)!r}, '--out-dir', {str(out)!r}, '--workers', '1', '--quiet'])\n"
        "print(code, [m for m in ('torch', 'theseus', 'scipy') if m in sys.modules])\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=str(tmp_path))
    assert proc.stdout.splitlines()[-1] == "0 []", proc.stdout + proc.stderr
    assert [r["result"] for r in _lines(out)] == ["ok"] * 3


def _fork_facts():
    """In a worker: whether it holds the server's preload, and what its parent (the server) runs."""
    import os as os_
    import sys as sys_

    preload = sys_.modules.get("posegraph.batch.preload")
    with open(f"/proc/{os_.getppid()}/status") as fh:
        threads = next(int(line.split()[1]) for line in fh if line.startswith("Threads:"))
    return {"preloaded": preload is not None, "fast_exit": getattr(preload, "FAST_EXIT", None),
            "parent": os_.getppid(), "parent_threads": threads}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="local workers are forked on Linux only")
def test_local_workers_are_forked_from_one_preloaded_single_threaded_server(client):
    with _connect(None, None, 2) as two:
        facts = list(client.run(_fork_facts).values()) + list(two.run(_fork_facts).values())
    assert len(facts) == 3
    assert len({f["parent"] for f in facts}) == 1 and facts[0]["parent"] != os.getpid()
    assert all(f["preloaded"] and f["fast_exit"] for f in facts), facts  # torch came with the fork
    assert all(f["parent_threads"] == 1 for f in facts), facts  # no thread pool runs where it forks
    import posegraph.batch.preload as preload

    assert preload.FAST_EXIT is False  # imported anywhere but in the server, it exits as usual


def test_forked_workers_hold_their_budget_whatever_the_server_started_with(client):
    """The fixture's cluster (1 worker) started the server with its budget; a 2-worker cluster
    forks from the same server and its workers still get theirs."""
    with _connect(None, None, 2) as two:
        reports = [two.submit(worker_thread_report, pure=False, workers=[w]).result() for w in two.scheduler_info()["workers"]]
    budget = thread_budget(2, available_cores())
    assert len(reports) == 2
    for report in reports:
        assert report["torch"] == budget
        pools = [lib for lib in report["libraries"] if lib["api"] in ("mkl", "openblas", "openmp")]
        assert pools and all(lib["threads"] == budget for lib in pools), pools


@pytest.mark.skipif("MALLOC_TRIM_THRESHOLD_" in os.environ, reason="set by the user: workers keep it")
def test_workers_keep_the_default_allocator_settings(client):
    """Dask would give spawned workers MALLOC_TRIM_THRESHOLD_=65536, which makes every large
    array of a solve fault its pages in anew (posegraph.batch.NO_MALLOC_TRIM)."""
    envs = client.run(lambda: __import__("os").environ.get("MALLOC_TRIM_THRESHOLD_"))
    assert envs and set(envs.values()) == {None}, envs
    assert "MALLOC_TRIM_THRESHOLD_" not in os.environ  # nor set in this process for the next worker


def test_thread_budget_divides_the_cores():
    assert thread_budget(1, cores=2) == 2
    assert thread_budget(2, cores=2) == 1
    assert thread_budget(3, cores=8) == 2
    assert thread_budget(4, cores=2) == 1  # never 0
    with pytest.raises(ValueError):
        thread_budget(0, cores=2)


def test_expand_inputs_and_read_results(tmp_path):
    folder = _folder(tmp_path)
    files = expand_inputs([folder, folder / "g1.g2o", str(folder / "g*.g2o")])
    assert [Path(f).name for f in files] == ["broken.g2o", "g0.g2o", "g1.g2o", "g2.g2o"]
    results = tmp_path / RESULTS_NAME
    results.write_text('{"input": "/a.g2o", "result": "ok"}\n{"input": "/b.g2o", "res')  # killed mid-line
    assert list(read_results(str(results))) == ["/a.g2o"]


def test_the_extra_named_in_the_error_is_declared():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    extra = pyproject["project"]["optional-dependencies"]["distributed"]
    assert {"dask[distributed]", "dask-jobqueue", "threadpoolctl"} <= set(extra)
    assert "posegraph[distributed]" in EXTRA_INSTALL
