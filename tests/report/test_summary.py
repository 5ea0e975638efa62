"""Progress on stderr: a tqdm bar after a delay, never on stdout, silent with --quiet."""

from __future__ import annotations

import io
import json

import posegraph.report.console as report
from posegraph.cli.main import main
from posegraph.report.console import ProgressBar
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
    from posegraph.report.console import format_summary

    base = dict(input="g.g2o", kind="SE3", num_poses=3, num_edges=2, solver="lm", linear_solver="pardiso",
                device="cpu", status="converged", iterations=2, initial_chi2=2.0, final_chi2=1.0,
                initial_error=1.0, final_error=0.5, time_s={"total": 0.1})
    one = dict(backend="pardiso", mode="supernodal", factorizations=1, reused=1, cg_iterations=1)
    text = format_summary({**base, "factorization": one})
    assert "factorized   pardiso: 1 factorization, 1 solve by the last factor (1 CG iteration)" in text
    two = dict(backend="cholmod", mode="simplicial", factorizations=2, reused=0, cg_iterations=3)
    text = format_summary({**base, "factorization": two})
    assert "factorized   cholmod simplicial: 2 factorizations, 0 solves by the last factor (3 CG iterations)" in text


def test_json_text_never_prints_nan_or_infinity():
    """NaN and ±Infinity are not JSON: they become null, with one note each naming the key,
    the value and a reason; everything else is unchanged."""
    obj = {"a": 1.5, "initial_chi2": float("nan"), "nested": {"max_eigenvalue": float("inf")},
           "per": [1.0, float("-inf")], "notes": ["kept"], "s": "NaN"}
    text = report.json_text(obj)
    data = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert data["a"] == 1.5 and data["s"] == "NaN"
    assert data["initial_chi2"] is None and data["nested"]["max_eigenvalue"] is None and data["per"] == [1.0, None]
    assert data["notes"][0] == "kept" and len(data["notes"]) == 4
    assert data["notes"][1].startswith("initial_chi2 is NaN, not a JSON number (null here): ")
    assert "overflows" in data["notes"][1]
    assert data["notes"][2].startswith("nested.max_eigenvalue is Infinity")
    assert data["notes"][3].startswith("per[1] is -Infinity")
    assert "notes" not in json.loads(report.json_text({"x": 1.0}))
    assert obj["initial_chi2"] != obj["initial_chi2"]  # the input is not modified
