"""Progress on stderr: a tqdm bar after a delay, never on stdout, silent with --quiet."""

from __future__ import annotations

import io
import json

import posegraph.report as report
from posegraph.cli import main
from posegraph.report import ProgressBar
from posegraph.solve.optimize import IterationRecord


def _feed(bar, errors):
    for k, e in enumerate(errors):
        bar(IterationRecord(k, e, 0.1 * k))
    bar.close()


def test_bar_shows_iterations_and_chi2():
    stream = io.StringIO()
    _feed(ProgressBar(total=10, stream=stream, delay=0), [50.0, 5.0, 4.0])
    text = stream.getvalue()
    assert "optimize" in text and "2/10" in text
    assert "chi2=8" in text and "rel.decrease=2.00e-01" in text


def test_bar_silent_for_short_runs():
    stream = io.StringIO()
    _feed(ProgressBar(total=10, stream=stream, delay=30.0), [50.0, 5.0, 4.0])
    assert stream.getvalue() == ""


def test_cli_progress_on_stderr_json_on_stdout(tmp_path, capsys, monkeypatch, synthetic):
    s = synthetic(kind="SE2", n=10, loops=((0, 5), (9, 2)), seed=4, noise=0.2)
    path = tmp_path / "g.g2o"
    path.write_text(s.text())
    monkeypatch.setattr(report, "PROGRESS_DELAY_S", 0.0)  # as if the run were long
    assert main(["optimize", str(path), "--json"]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and json.loads(out)["status"] == "converged"
    assert "optimize" in err and "chi2=" in err
    assert main(["optimize", str(path), "--json", "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and json.loads(out)["status"] == "converged"


def test_summary_counts_in_singular_and_plural():
    from posegraph.report import format_summary

    base = dict(input="g.g2o", kind="SE3", num_poses=3, num_edges=2, solver="lm", linear_solver="pardiso",
                device="cpu", status="converged", iterations=2, initial_chi2=2.0, final_chi2=1.0,
                initial_error=1.0, final_error=0.5, time_s={"total": 0.1})
    one = dict(backend="pardiso", mode="supernodal", factorizations=1, reused=1, cg_iterations=1)
    text = format_summary({**base, "factorization": one})
    assert "factorized   pardiso: 1 factorization, 1 solve by the last factor (1 CG iteration)" in text
    two = dict(backend="cholmod", mode="simplicial", factorizations=2, reused=0, cg_iterations=3)
    text = format_summary({**base, "factorization": two})
    assert "factorized   cholmod simplicial: 2 factorizations, 0 solves by the last factor (3 CG iterations)" in text
