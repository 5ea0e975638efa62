"""The ``posegraph`` command line: bad input gives one ``error: FILE:LINE: …`` line and no
output; runs print progress, a summary or one JSON object; end-to-end reference checks on the
public datasets against GTSAM's final errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import posegraph.io.g2o as g2o_mod
import posegraph.solve.optimize as optimize_mod
from posegraph import build_problem, initialize, read_g2o
from posegraph.cli.optimize import EXIT_BAD_INPUT, EXIT_FAILED
from posegraph.cli.main import main
from posegraph.solve.mkl import pardiso_available

from conftest import IDENTITY21, SE2_TEXT, SE3_TEXT

V2 = "VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1 0 0\n"
E2 = "EDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\n"
V3 = "VERTEX_SE3:QUAT 0 0 0 0 0 0 0 1\nVERTEX_SE3:QUAT 1 1 0 0 0 0 0 1\n"

#: name, file content (None: no file), line at fault (None: the whole file), words in the message
BAD_INPUTS = [
    ("missing-file", None, None, ["no such file"]),
    ("empty-file", "", None, ["no pose graph"]),
    ("comments-only", "# nothing here\n\n", None, ["no pose graph"]),
    ("wrong-token-count", V2 + "EDGE_SE2 0 1 1 0 0 1 0 0 1 0\n", 3, ["expected 11", "received 10"]),
    ("non-numeric", "VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 one 0 0\n" + E2, 2, ["expected a number", "'one'"]),
    ("nan", V2 + "EDGE_SE2 0 1 1 0 0 NaN 0 0 1 0 1\n", 3, ["finite", "'NaN'"]),
    ("inf", "VERTEX_SE2 0 0 0 -inf\nVERTEX_SE2 1 1 0 0\n" + E2, 1, ["finite", "'-inf'"]),
    ("zero-quaternion", V3 + f"EDGE_SE3:QUAT 0 1 1 0 0 0 0 0 0 {IDENTITY21}\n", 3, ["zero quaternion"]),
    ("information-not-psd", V2 + "EDGE_SE2 0 1 1 0 0 1 0 0 -2 0 1\n", 3,
     ["1 of 1 EDGE_SE2 information matrices", "positive semidefinite", "-2", "--repair-information"]),
    ("unknown-vertex", V2 + E2 + "EDGE_SE2 1 9 1 0 0 1 0 0 1 0 1\n", 4, ["vertex 9"]),
    ("duplicate-vertex", V2 + "VERTEX_SE2 0 5 5 0\n" + E2, 3, ["duplicate vertex id 0"]),
    ("self-loop", V2 + E2 + "EDGE_SE2 0 0 1 0 0 1 0 0 1 0 1\n", 4, ["self-loop"]),
    ("mixed-se2-se3", V2 + "VERTEX_SE3:QUAT 2 0 0 0 0 0 0 1\n" + E2, 3, ["mixing SE2 and SE3"]),
    ("binary-garbage", b"\x7fELF\x02\x01\x01\x00\x00\x00\xff\xfe\x00", 1, ["not a g2o text file"]),
    ("binary-after-text", SE2_TEXT.encode() + b"\xc3\x28\x00\x01", 7, ["not a g2o text file"]),
    ("disconnected-edge-only", E2 + "EDGE_SE2 2 3 1 0 0 1 0 0 1 0 1\n", None, ["disconnected", "initial guess"]),
    ("vertices-no-edges", V2 + "FIX 0\n", None, ["no edges", "cannot be optimized"]),
    ("vertices-no-edges-se3", V3, None, ["no edges", "cannot be optimized"]),
    ("huge-vertex-id", "VERTEX_SE2 123456789012345678901234567890 0 0 0\n", 1, ["vertex id"]),
]


def run_cli(capsys, *args):
    code = main(["optimize", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name,content,line,words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_one_error_line_no_output(tmp_path, capsys, leftovers, name, content, line, words):
    path = tmp_path / f"{name}.g2o"
    if content is not None:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out_path = tmp_path / "out.g2o"
    code, out, err = run_cli(capsys, path, "-o", out_path)
    assert code == EXIT_BAD_INPUT
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert err.endswith("\n")
    prefix = f"error: {path}:{line}: " if line is not None else f"error: {path}: "
    assert lines[0].startswith(prefix), (lines[0], prefix)
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert "Traceback" not in err
    assert not out_path.exists()
    assert leftovers(tmp_path) == {}


def test_bad_input_json_mode_prints_nothing_on_stdout(tmp_path, capsys):
    path = tmp_path / "bad.g2o"
    path.write_text(V2 + "EDGE_SE2 0 1 x 0 0 1 0 0 1 0 1\n")
    code, out, err = run_cli(capsys, path, "--json", "--quiet")
    assert code == EXIT_BAD_INPUT and out == ""
    assert err == f"error: {path}:3: EDGE_SE2: expected a number, received 'x'\n"


@pytest.mark.parametrize("argv", [["--solver", "bfgs"], ["--max-iters", "-1"], ["--max-iters", "many"], ["--cg-max-iters", "0"]])
def test_bad_arguments_are_usage_errors(tmp_path, capsys, argv):
    path = tmp_path / "a.g2o"
    path.write_text(SE2_TEXT)
    with pytest.raises(SystemExit) as exc:
        main(["optimize", str(path), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err and "internal error" not in err



@pytest.mark.parametrize("flag", ["--rel-tol", "--abs-tol", "--grad-tol", "--step-tol"])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "small"])
def test_bad_tolerances_are_usage_errors(tmp_path, capsys, flag, value):
    path = tmp_path / "a.g2o"
    path.write_text(SE2_TEXT)
    with pytest.raises(SystemExit) as exc:
        main(["optimize", str(path), "-o", str(tmp_path / "out.g2o"), f"{flag}={value}", "--quiet"])
    assert exc.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"posegraph optimize: error: argument {flag}: expected a "), last
    assert f"number ≥ 0, received {value!r}" in last
    assert "Traceback" not in err and "internal error" not in err
    assert not (tmp_path / "out.g2o").exists()


@pytest.mark.parametrize("pattern", ["re:[", "re:(a"])
def test_invalid_debug_costs_regex_is_a_usage_error(tmp_path, capsys, pattern):
    path = tmp_path / "a.g2o"
    path.write_text(SE2_TEXT)
    trace, out_path = tmp_path / "t.json", tmp_path / "out.g2o"
    with pytest.raises(SystemExit) as exc:
        main(["optimize", str(path), "-o", str(out_path), "--debug", str(trace), "--debug-costs", pattern])
    assert exc.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith(
        f"posegraph optimize: error: argument --debug-costs: expected a regular expression after 're:', "
        f"received {pattern!r} ("
    ), last
    assert "Traceback" not in err and "internal error" not in err
    assert not trace.exists() and not out_path.exists()

# -- successful runs ---------------------------------------------------------------------------------

REQUIRED_KEYS = {
    "initial_chi2",
    "final_chi2",
    "iterations",
    "status",
    "num_poses",
    "num_edges",
    "solver",
    "linear_solver",
    "device",
    "time_s",
}


def _noisy_se3(synthetic, tmp_path, **kw):
    s = synthetic(kind="SE3", n=8, loops=((0, 4), (7, 2), (1, 6)), seed=6, noise=0.05, **kw)
    path = tmp_path / "g.g2o"
    path.write_text(s.text())
    return s, path


def test_json_output_is_one_object(tmp_path, capsys, synthetic):
    s, path = _noisy_se3(synthetic, tmp_path)
    code, out, err = run_cli(capsys, path, "--json", "--quiet")
    assert code == 0 and err == ""
    assert out.count("\n") == 1
    data = json.loads(out)
    assert isinstance(data, dict)
    assert REQUIRED_KEYS <= set(data)
    assert {"parse", "build", "solve"} <= set(data["time_s"])
    assert all(isinstance(v, float) and v >= 0 for v in data["time_s"].values())
    assert (data["num_poses"], data["num_edges"]) == (8, 10)
    assert data["solver"] == "lm" and data["status"] == "converged"
    assert data["linear_solver"] == "cholmod" and data["device"] == "cpu"
    assert 0 < data["final_chi2"] < data["initial_chi2"]
    assert data["final_error"] == pytest.approx(data["final_chi2"] / 2, rel=1e-12)
    assert isinstance(data["iterations"], int) and data["iterations"] >= 1


def test_progress_on_stderr_unless_quiet(tmp_path, capsys, synthetic):
    s, path = _noisy_se3(synthetic, tmp_path)
    code, out, err = run_cli(capsys, path, "--json", "--verbose")
    assert code == 0
    data = json.loads(out)  # progress never goes to stdout
    rows = [l.split() for l in err.splitlines()[1:]]
    assert "iter" in err.splitlines()[0] and "chi2" in err.splitlines()[0]
    assert [int(r[0]) for r in rows] == list(range(data["iterations"] + 1))
    assert float(rows[0][1]) == pytest.approx(data["initial_chi2"], rel=1e-9)
    assert float(rows[-1][1]) == pytest.approx(data["final_chi2"], rel=1e-9)
    code, out, err = run_cli(capsys, path, "--json", "--quiet")
    assert code == 0 and err == ""


def test_readable_summary_and_output_file(tmp_path, capsys, synthetic):
    s, path = _noisy_se3(synthetic, tmp_path, ids=[3, 9, 14, 2, 77, 78, 80, 5])
    text = path.read_text().replace("EDGE_SE3:QUAT", "FIX 14\nEDGE_SE3:QUAT", 1)
    path.write_text(text)
    out_path = tmp_path / "out.g2o"
    code, out, err = run_cli(capsys, path, "-o", out_path, "--solver", "gn", "--quiet")
    assert code == 0 and err == ""
    for word in ("chi2", "status", "converged", "iterations", "gn", "8 poses", "10 edges", str(out_path)):
        assert word in out, (word, out)
    before, after = read_g2o(path), read_g2o(out_path)
    assert after.ids.tolist() == before.ids.tolist() == [3, 9, 14, 2, 77, 78, 80, 5]
    assert after.fixed.tolist() == before.fixed.tolist()
    assert after.fixed[2] and "FIX 14" in out_path.read_text()
    assert (after.information - before.information).abs().max() < 1e-12
    assert (after.measurements - before.measurements).abs().max() < 1e-12
    assert (after.poses[2] - before.poses[2]).abs().max() < 1e-12  # FIX'ed pose kept
    assert (after.poses - before.poses).abs().max() > 1e-6  # the others moved
    # re-optimizing the output changes nothing
    code, out, _ = run_cli(capsys, out_path, "--json", "--quiet", "--solver", "gn")
    data = json.loads(out)
    assert data["final_chi2"] == pytest.approx(data["initial_chi2"], rel=1e-8)


def test_max_iters_and_solver(tmp_path, capsys, synthetic):
    s, path = _noisy_se3(synthetic, tmp_path)
    code, out, _ = run_cli(capsys, path, "--json", "--quiet", "--solver", "gn", "--max-iters", "1")
    data = json.loads(out)
    assert code == 0 and data["solver"] == "gn" and data["iterations"] <= 1
    code, out, _ = run_cli(capsys, path, "--json", "--quiet", "--max-iters", "0")
    data = json.loads(out)
    assert code == 0 and data["iterations"] == 0 and data["final_chi2"] == data["initial_chi2"]


def test_edge_only_input_is_initialized_and_written(tmp_path, capsys, synthetic):
    s = synthetic(kind="SE2", n=10, loops=((0, 5), (9, 3)), seed=2, noise=0.02)
    path = tmp_path / "e.g2o"
    path.write_text(s.text(with_vertices=False))
    out_path = tmp_path / "o.g2o"
    code, out, _ = run_cli(capsys, path, "--json", "--quiet", "-o", out_path)
    data = json.loads(out)
    assert code == 0 and data["status"] == "converged" and data["num_poses"] == 10
    g = read_g2o(out_path)
    assert g.has_poses and g.ids.tolist() == list(range(10))


def test_init_chordal_prints_its_initial_cost(tmp_path, capsys, synthetic):
    s = synthetic(kind="SE3", n=10, loops=((0, 5), (9, 3), (2, 7)), seed=2, noise=0.3)
    path = tmp_path / "c.g2o"
    path.write_text(s.text(vertices=s.truth[::-1].copy()))  # poor file vertices
    code, out, err = run_cli(capsys, path, "--json", "--verbose", "--init", "chordal")
    assert code == 0
    data = json.loads(out)
    assert data["init"] == "chordal" and data["status"] == "converged"
    expected = float(build_problem(initialize(read_g2o(path), "chordal")).error())
    assert data["initial_error"] == pytest.approx(expected, rel=1e-12)
    first = err.splitlines()[1].split()  # the iteration-0 progress line: the initial χ²
    assert first[0] == "0" and float(first[1]) == pytest.approx(2 * expected, rel=1e-9)
    assert data["time_s"]["init"] >= 0
    code, out, _ = run_cli(capsys, path, "--json", "--quiet", "--init", "file")
    file_run = json.loads(out)
    assert file_run["init"] == "file" and file_run["initial_error"] > data["initial_error"]
    code, out, _ = run_cli(capsys, path, "--json", "--quiet")  # auto: the better of the two
    auto = json.loads(out)
    assert auto["start"]["chosen"] == "chordal" and auto["initial_error"] == data["initial_error"]
    assert auto["start"]["costs"]["file"] == pytest.approx(file_run["initial_error"], rel=1e-12)


def test_robust_kernel_run(tmp_path, capsys, synthetic):
    s, path = _noisy_se3(synthetic, tmp_path)
    code, out, err = run_cli(capsys, path, "--json", "--quiet", "--robust", "cauchy:0.5",
                             "--robust-edges", "loop-closures", "--init", "file")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["robust"] == {"kernel": "cauchy:0.5", "edges": "loop-closures"}
    robust = build_problem(read_g2o(path), robust="cauchy:0.5", robust_edges="loop-closures")
    plain = build_problem(read_g2o(path))
    assert data["initial_error"] == pytest.approx(float(robust.error()), rel=1e-12)
    assert data["initial_error"] < float(plain.error())
    code, out, err = run_cli(capsys, path, "--robust", "huber:1", "--quiet")
    assert code == 0 and "robust       huber:1 on all edges" in out
    code, out, err = run_cli(capsys, path, "--json", "--quiet", "--robust", "dcs:2", "--init", "file")
    dcs = build_problem(read_g2o(path), robust="dcs:2")
    assert code == 0 and json.loads(out)["robust"] == {"kernel": "dcs:2", "edges": "all"}
    assert json.loads(out)["initial_error"] == pytest.approx(float(dcs.error()), rel=1e-12)
    code, out, _ = run_cli(capsys, path, "--json", "--quiet", "--robust", "none")
    assert "robust" not in json.loads(out)
    trace = tmp_path / "t.json"
    code, _, _ = run_cli(capsys, path, "--quiet", "--robust", "huber:0.5", "--debug", trace)
    assert code == 0 and json.loads(trace.read_text())["iterations"]


@pytest.mark.parametrize(
    "argv,words",
    [
        (["--robust", "tukey:1"], ["argument --robust", "expected one of huber, cauchy"]),
        (["--robust", "huber:-2"], ["argument --robust", "scale > 0"]),
        (["--robust", "cauchy:abc"], ["argument --robust", "expected a number"]),
        (["--robust", "huber:1", "--robust-edges", "odometry"], ["argument --robust-edges", "invalid choice"]),
        (["--robust", "gnc:"], ["argument --robust", "expected a threshold"]),
        (["--robust", "gnc:abc"], ["argument --robust", "expected a threshold", "'abc'"]),
        (["--robust", "gnc:-1"], ["argument --robust", "threshold > 0"]),
        (["--robust", "gnc:inf"], ["argument --robust", "finite threshold"]),
        (["--init", "lago"], ["argument --init", "invalid choice"]),
    ],
)
def test_bad_robust_and_init_arguments(tmp_path, capsys, argv, words):
    path = tmp_path / "a.g2o"
    path.write_text(SE2_TEXT)
    with pytest.raises(SystemExit) as exc:
        main(["optimize", str(path), *argv])
    assert exc.value.code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("posegraph optimize: error: ") and "Traceback" not in err
    for w in words:
        assert w in last, (w, last)


def _false_loop_closures_file(tmp_path):
    from posegraph.synthetic.hard_cases import with_false_loop_closures
    from posegraph.io import write_g2o
    from posegraph.synthetic.graphs import sphere_se3

    corrupted = with_false_loop_closures(sphere_se3(num_rings=4, poses_per_ring=10, seed=1).graph, 0.3, seed=0)
    path = tmp_path / "false-loops.g2o"
    write_g2o(corrupted, path)
    return corrupted, path


def test_gnc_rejects_false_loop_closures_and_writes_them(tmp_path, capsys, leftovers):
    corrupted, path = _false_loop_closures_file(tmp_path)
    planted = corrupted.ids[corrupted.edges[corrupted.extras["outlier"]]].tolist()
    rejected = tmp_path / "outliers.txt"
    code, out, err = run_cli(capsys, path, "--json", "--quiet", "--robust", "gnc", "--robust-edges",
                             "loop-closures", "--outliers", rejected)
    assert code == 0 and err == ""
    data = json.loads(out)
    assert data["robust"] == {"kernel": "gnc", "edges": "loop-closures"}
    assert data["outliers"] == len(planted) and data["outer_iterations"] > 1
    assert data["gnc"]["stop_reason"] == "weights-converged" and data["gnc"]["outliers_file"] == str(rejected)
    assert data["gnc"]["threshold"] == pytest.approx(4.1002, abs=1e-4)  # √χ²₆(0.99)
    lines = rejected.read_text().splitlines()
    assert [list(map(int, line.split())) for line in lines] == planted  # "i j", file order
    assert all(abs(a - b) != 1 for a, b in planted)  # odometry is never judged here
    assert leftovers(tmp_path) == {}
    # the text summary says the same; gnc:C sets the threshold
    code, out, err = run_cli(capsys, path, "--quiet", "--robust", "gnc:6", "--robust-edges", "loop-closures")
    assert code == 0
    assert f"outliers     {len(planted)} of {int(corrupted.loop_closures().sum())} edges" in out
    assert "inliers within 6 std. dev." in out and "robust       gnc:6 on loop-closures edges" in out


def test_outliers_file_needs_gnc(tmp_path, capsys, leftovers):
    _, path = _false_loop_closures_file(tmp_path)
    out_g2o, rejected = tmp_path / "out.g2o", tmp_path / "outliers.txt"
    for robust in ([], ["--robust", "cauchy:1"]):
        code, out, err = run_cli(capsys, path, *robust, "--outliers", rejected, "-o", out_g2o)
        assert code == EXIT_BAD_INPUT and out == ""
        assert err.count("\n") == 1 and err.startswith("error: --outliers needs --robust gnc")
        assert not rejected.exists() and not out_g2o.exists()


def test_warnings_on_stderr_unless_quiet(tmp_path, capsys):
    path = tmp_path / "w.g2o"
    path.write_text("VERTEX_XY 5 1 1\nVERTEX_XY 6 1 1\n" + SE2_TEXT)
    code, out, err = run_cli(capsys, path)
    assert code == 0
    warn = [l for l in err.splitlines() if l.startswith("warning:")]
    assert len(warn) == 1 and "2 line(s)" in warn[0] and "VERTEX_XY" in warn[0]
    code, out, err = run_cli(capsys, path, "--quiet")
    assert code == 0 and err == ""


def test_disconnected_graph_with_vertices_runs_with_a_warning(tmp_path, capsys):
    path = tmp_path / "d.g2o"
    path.write_text(V2 + E2 + "VERTEX_SE2 5 3 0 0\nVERTEX_SE2 6 4 1 0\nEDGE_SE2 5 6 1 0 0 1 0 0 1 0 1\n")
    code, out, err = run_cli(capsys, path, "--json")
    assert code == 0
    assert json.loads(out)["final_chi2"] < 1e-10
    assert any(l.startswith("warning:") and "connected components" in l for l in err.splitlines())


def test_failed_write_leaves_no_output(tmp_path, capsys, monkeypatch, leftovers):
    path = tmp_path / "a.g2o"
    path.write_text(SE3_TEXT)
    out_path = tmp_path / "out.g2o"

    def boom(src, dst):
        raise OSError(28, "No space left on device", src, dst)

    monkeypatch.setattr(g2o_mod.os, "replace", boom)
    code, out, err = run_cli(capsys, path, "-o", out_path, "--quiet")
    assert code != 0 and out == ""
    assert err == f"error: {out_path}: No space left on device\n"
    assert not out_path.exists() and leftovers(tmp_path) == {}


def test_os_error_without_a_file_name_is_one_plain_line(tmp_path, capsys, monkeypatch):
    import posegraph.io as io_pkg

    def failing(path, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(io_pkg, "read_g2o", failing)
    code, out, err = run_cli(capsys, tmp_path / "a.g2o", "--quiet")
    assert code == EXIT_BAD_INPUT and err == "error: Input/output error\n"


def test_output_into_missing_folder(tmp_path, capsys):
    path = tmp_path / "a.g2o"
    path.write_text(SE3_TEXT)
    out_path = tmp_path / "nope" / "out.g2o"
    code, out, err = run_cli(capsys, path, "-o", out_path, "--quiet")
    assert code == EXIT_BAD_INPUT
    assert err.splitlines() == [f"error: {out_path}: No such file or directory"]


def test_failed_optimization_writes_nothing(tmp_path, capsys, monkeypatch):
    path = tmp_path / "a.g2o"
    path.write_text(SE2_TEXT)
    out_path = tmp_path / "out.g2o"
    real = optimize_mod.optimize

    def failing(problem, options, **kw):
        result = real(problem, options, **kw)
        result.status = ["failed"]
        return result

    monkeypatch.setattr(optimize_mod, "optimize", failing)
    code, out, err = run_cli(capsys, path, "-o", out_path, "--quiet")
    assert code == EXIT_FAILED and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {path}: optimization failed")
    assert not out_path.exists()


def test_console_script(tmp_path):
    script = Path(sys.executable).with_name("posegraph")
    if not script.exists():
        found = shutil.which("posegraph")
        if found is None:
            pytest.skip("posegraph console script not installed")
        script = Path(found)
    path = tmp_path / "bad.g2o"
    path.write_text(V2 + "EDGE_SE2 0 1 1 0 0 1 0 0 1 0\n")
    out_path = tmp_path / "out.g2o"
    proc = subprocess.run(
        [str(script), "optimize", str(path), "-o", str(out_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == EXIT_BAD_INPUT
    assert proc.stdout == ""
    assert proc.stderr == f"error: {path}:3: EDGE_SE2: expected 11 values after the tag, received 10\n"
    assert not out_path.exists()


# -- end to end: GTSAM reference final errors ------------------------------------------------------

#: GTSAM 4.3.0 LM final error (½ Σ eᵀΩe), from the datasets' README; (poses, edges).
REFERENCE = {
    "tinyGrid3D": (9.313909434, 9, 11),
    "smallGrid3D": (517.9253324, 125, 297),
    "sphere2500": (675.7009629, 2500, 4949),
    "parking-garage": (0.6341923996, 1661, 6275),
    "intel": (22.50211654, 1728, 2512),
    "manhattan": (1774.520535, 3500, 5453),
}


@pytest.mark.parametrize("name", list(REFERENCE))
def test_reference_final_error(datasets_dir, capsys, name):
    path = datasets_dir / f"{name}.g2o"
    if not path.exists():
        pytest.skip(f"{path} not found")
    expected, poses, edges = REFERENCE[name]
    code, out, _ = run_cli(capsys, path, "--json", "--quiet")
    assert code == 0
    data = json.loads(out)
    assert (data["num_poses"], data["num_edges"]) == (poses, edges)
    assert data["status"] == "converged"
    assert data["final_error"] == pytest.approx(expected, rel=1e-5)
    assert data["final_chi2"] == pytest.approx(2 * expected, rel=1e-5)


#: GTSAM 4.3.0 LM iterations from the file's vertices (odometry chain for manhattan), README
GTSAM_ITERATIONS = {"tinyGrid3D": 8, "smallGrid3D": 9, "sphere2500": 7, "parking-garage": 8, "intel": 4, "manhattan": 6}


@pytest.mark.parametrize("name", list(REFERENCE))
def test_reference_iterations_from_gtsams_start(datasets_dir, capsys, name):
    """From GTSAM's own start the run takes GTSAM's iterations to GTSAM's final error."""
    path = datasets_dir / f"{name}.g2o"
    if not path.exists():
        pytest.skip(f"{path} not found")
    init = "spanning-tree" if name == "manhattan" else "file"
    code, out, _ = run_cli(capsys, path, "--json", "--quiet", "--init", init)
    data = json.loads(out)
    assert code == 0 and data["status"] == "converged"
    assert data["iterations"] == GTSAM_ITERATIONS[name]
    assert data["final_error"] == pytest.approx(REFERENCE[name][0], rel=2e-9)


# -- --mesh: Laplacian regularizer over TRACKXYZ points ---------------------------------------------


@pytest.fixture
def mesh_files(tmp_path):
    """A small pose + icosphere-vertex graph (ids 1000 + k) and its mesh."""
    from posegraph.io.g2o_write import write_g2o as write
    from posegraph.mesh.obj import write_obj
    from posegraph.synthetic.landmarks import mesh_observations

    noisy, truth = mesh_observations(subdivisions=1, num_poses=12, observations_per_pose=10, seed=4)
    write(noisy, tmp_path / "m.g2o")
    verts, faces = noisy.extras["mesh"]
    write_obj(tmp_path / "m.obj", verts, faces)
    return tmp_path / "m.g2o", tmp_path / "m.obj", truth


def test_mesh_run_writes_graph_and_mesh(tmp_path, capsys, mesh_files):
    from posegraph.mesh.obj import read_obj

    graph, mesh, truth = mesh_files
    out_g2o, out_obj = tmp_path / "o.g2o", tmp_path / "o.obj"
    code, out, err = run_cli(capsys, graph, "--mesh", mesh, "--laplacian-weight", "20",
                             "-o", out_g2o, "--mesh-output", out_obj, "--json", "--quiet")
    assert code == 0, err
    data = json.loads(out)
    assert data["num_points"] == 42 and data["num_point_observations"] >= 42
    assert data["status"] == "converged"
    optimized = read_g2o(out_g2o)
    verts, faces = read_obj(out_obj)
    # mesh vertex k is point id 1000 + k, in the output graph and in the output mesh
    assert optimized.landmarks.ids.tolist() == list(range(1000, 1042))
    torch.testing.assert_close(verts, optimized.landmarks.positions, atol=1e-12, rtol=0)
    assert faces.shape == (80, 3)


def test_mesh_weight_changes_the_optimum(tmp_path, capsys, mesh_files):
    graph, mesh, _ = mesh_files
    finals = []
    for w in ("0", "50"):
        code, out, err = run_cli(capsys, graph, "--mesh", mesh, "--laplacian-weight", w, "--json", "--quiet")
        assert code == 0, err
        finals.append(json.loads(out)["final_error"])
    code, out, _ = run_cli(capsys, graph, "--json", "--quiet")
    assert json.loads(out)["final_error"] == pytest.approx(finals[0], rel=1e-9)  # weight 0 = no mesh
    assert finals[1] > finals[0] * (1 + 1e-6)


@pytest.mark.parametrize(
    "extra,words",
    [
        (["--mesh-first-id", "1001"], ["mesh vertex 41", "point id 1042", "id 1001 + k"]),
        (["--mesh-first-id", "7"], ["mesh vertex 0", "point id 7"]),
    ],
)
def test_mesh_id_mapping_errors(capsys, mesh_files, extra, words):
    graph, mesh, _ = mesh_files
    code, out, err = run_cli(capsys, graph, "--mesh", mesh, *extra)
    assert code == EXIT_BAD_INPUT and out == ""
    assert err.startswith(f"error: {mesh}: ") and err.count("\n") == 1
    for w in words:
        assert w in err, (w, err)


def test_mesh_bad_files(tmp_path, capsys, mesh_files):
    graph, mesh, _ = mesh_files
    bad = tmp_path / "bad.obj"
    bad.write_text("v 0 0 0\nv 1 0 0\nf 1 2 9\n")
    code, _, err = run_cli(capsys, graph, "--mesh", bad)
    assert code == EXIT_BAD_INPUT and err.startswith(f"error: {bad}:3: ") and "vertex 9" in err
    code, _, err = run_cli(capsys, graph, "--mesh", tmp_path / "missing.obj")
    assert code == EXIT_BAD_INPUT and "no such file" in err
    se2 = tmp_path / "se2.g2o"
    se2.write_text(SE2_TEXT)
    code, _, err = run_cli(capsys, se2, "--mesh", mesh)
    assert code == EXIT_BAD_INPUT and "needs 3D points" in err
    code, _, err = run_cli(capsys, graph, "--mesh-output", tmp_path / "x.obj")
    assert code == EXIT_BAD_INPUT and "--mesh-output needs --mesh" in err
    assert not (tmp_path / "x.obj").exists()


def test_factorization_flags_and_report(tmp_path, capsys):
    path = Path(__file__).resolve().parents[2] / "data" / "sphere_se3.g2o"
    code, out, _ = run_cli(capsys, path, "--json", "--quiet", "--cg-max-iters", "10")  # every attempt made
    default = json.loads(out)
    stats = default["factorization"]
    assert code == 0 and stats["reused"] > 0 and stats["backend"] == default["linear_solver"]
    assert stats["factorizations"] + stats["reused"] == default["iterations"]
    code, out, _ = run_cli(capsys, path, "--json", "--quiet", "--no-reuse-factor", "--cholmod-mode", "simplicial")
    fresh = json.loads(out)
    assert code == 0 and fresh["linear_solver"] == "cholmod" and fresh["factorization"] == {
        "backend": "cholmod", "mode": "simplicial", "factorizations": fresh["iterations"], "reused": 0,
        "cg_iterations": 0,
    }
    assert fresh["final_error"] == pytest.approx(default["final_error"], rel=1e-9)
    code, out, _ = run_cli(capsys, path, "--quiet", "--linear-solver", "cholmod", "--cholmod-mode", "supernodal")
    assert code == 0 and "factorized   cholmod supernodal: " in out and "factorizations" in out


@pytest.mark.skipif(not pardiso_available(), reason="MKL PARDISO not installed")
def test_pardiso_is_chosen_for_3d_graphs_and_reported(capsys):
    path = Path(__file__).resolve().parents[2] / "data" / "sphere_se3.g2o"
    code, out, _ = run_cli(capsys, path, "--json", "--quiet")
    auto = json.loads(out)
    assert code == 0 and auto["linear_solver"] == "pardiso" and auto["factorization"]["backend"] == "pardiso"
    code, out, _ = run_cli(capsys, path, "--json", "--quiet", "--linear-solver", "cholmod")
    cholmod = json.loads(out)
    assert code == 0 and cholmod["linear_solver"] == "cholmod"
    assert auto["final_error"] == pytest.approx(cholmod["final_error"], rel=1e-9)
    assert auto["iterations"] == cholmod["iterations"]
    code, out, _ = run_cli(capsys, path, "--quiet")
    assert code == 0 and "factorized   pardiso: " in out


def test_pardiso_flag_without_mkl_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.setattr(optimize_mod, "pardiso_available", lambda: False)
    path = Path(__file__).resolve().parents[2] / "data" / "sphere_se3.g2o"
    code, _, err = run_cli(capsys, path, "--linear-solver", "pardiso")
    assert code != 0 and "'pardiso' needs MKL PARDISO" in err and "Traceback" not in err


# -- information matrices: counted refusal, --repair-information, overflow -----------------------------


def _indefinite_sphere(tmp_path):
    """A small synthetic sphere with 30% indefinite information (posegraph.synthetic.hard_cases), and
    the same graph with those matrices clipped beforehand (nearest PSD), both as g2o files."""
    import warnings

    from posegraph.synthetic.hard_cases import with_indefinite_information
    from posegraph.io import write_g2o
    from posegraph.synthetic.graphs import sphere_se3

    graph = sphere_se3(num_rings=4, poses_per_ring=10, seed=3, translation_sigma=0.3, rotation_sigma=0.05).graph
    bad = with_indefinite_information(graph, 0.3, seed=1)
    path = tmp_path / "indefinite.g2o"
    write_g2o(bad, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clipped = read_g2o(path, repair_information=True)
    clipped_path = tmp_path / "clipped.g2o"
    write_g2o(clipped, clipped_path)
    return path, clipped_path, int(bad.extras["indefinite"].sum()), bad.num_edges


def test_indefinite_file_is_refused_with_the_count_and_the_fix(tmp_path, capsys):
    path, _, count, edges = _indefinite_sphere(tmp_path)
    code, out, err = run_cli(capsys, path, "--json")
    assert code == EXIT_BAD_INPUT and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {path}:")
    assert f": {count} of {edges} EDGE_SE3:QUAT information matrices are not positive semidefinite" in err
    assert "--repair-information" in err


def test_repair_information_runs_to_the_optimum_of_the_clipped_file(tmp_path, capsys):
    path, clipped_path, count, _ = _indefinite_sphere(tmp_path)
    code, out, err = run_cli(capsys, path, "--json", "--repair-information")
    assert code == 0, err
    repaired = json.loads(out)
    warned = [line for line in err.splitlines() if line.startswith("warning:")]  # (a progress bar may follow)
    assert warned == [
        f"warning: {path}: {count} of {repaired['num_edges']} information matrices were not positive "
        "semidefinite; each was replaced by its nearest positive semidefinite matrix (negative "
        "eigenvalues clipped to 0)"
    ]
    code, out, err = run_cli(capsys, clipped_path, "--json", "--quiet")
    assert code == 0 and err == ""
    clipped = json.loads(out)
    assert repaired["repaired_information"] == count > 0 and clipped["repaired_information"] == 0
    assert repaired["status"] == clipped["status"] == "converged"
    assert repaired["initial_error"] == pytest.approx(clipped["initial_error"], rel=1e-8)
    assert repaired["final_error"] == pytest.approx(clipped["final_error"], rel=1e-8)
    assert repaired["final_error"] < repaired["initial_error"]
    # the readable summary says so; --quiet silences the warning
    code, out, err = run_cli(capsys, path, "--quiet", "--repair-information")
    assert code == 0 and err == ""
    assert f"information  {count} matrices repaired (not positive semidefinite" in out


def test_repair_information_in_a_config_file_and_in_info(tmp_path, capsys):
    path, _, count, _ = _indefinite_sphere(tmp_path)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"input: {path}\nrepair_information: true\njson: true\nquiet: true\n")
    assert main(["optimize", "--config", str(cfg)]) == 0
    assert json.loads(capsys.readouterr().out)["repaired_information"] == count
    assert main(["info", str(path), "--json"]) == EXIT_BAD_INPUT
    assert "--repair-information" in capsys.readouterr().err
    assert main(["info", str(path), "--json", "--repair-information"]) == 0
    assert json.loads(capsys.readouterr().out)["repaired_information"] == count
    assert main(["info", str(path), "--repair-information"]) == 0
    assert f"repaired     {count} information matrices" in capsys.readouterr().out


#: information entries near 1e308 passed the PSD test, then linalg.eigh failed while building
HUGE_INFORMATION = [
    ("diagonal", V2 + "EDGE_SE2 0 1 1 0 0 1e308 0 0 1e308 0 1e308\n", "EDGE_SE2 0 1"),
    ("all-equal", V2 + "EDGE_SE2 0 1 1 0 0 1e308 1e308 1e308 1e308 1e308 1e308\n", "EDGE_SE2 0 1"),
    ("se3", V3 + "EDGE_SE3:QUAT 0 1 1 0 0 0 0 0 1 " + " ".join(["1e308"] * 21) + "\n", "EDGE_SE3:QUAT 0 1"),
]


@pytest.mark.parametrize("command", ["info", "optimize"])
@pytest.mark.parametrize("name,content,edge", HUGE_INFORMATION, ids=[h[0] for h in HUGE_INFORMATION])
def test_overflowing_information_is_one_format_error(tmp_path, capsys, command, name, content, edge):
    path = tmp_path / f"{name}.g2o"
    path.write_text(content)
    code = main([command, str(path)])
    out, err = capsys.readouterr()
    assert code == EXIT_BAD_INPUT and out == ""
    assert err == (
        f"error: {path}:3: {edge}: information entry (row 0, column 0) is 1e+308; expected a "
        "magnitude ≤ 1e+150 (larger information overflows the cost and its normal equations)\n"
    )


def test_float32_run_refuses_information_beyond_its_range(tmp_path, capsys):
    path = tmp_path / "f.g2o"
    path.write_text(V2 + "EDGE_SE2 0 1 1 0 0 1e40 0 0 1e40 0 1e40\n")
    code, out, err = run_cli(capsys, path, "--dtype", "float32", "--quiet")
    assert code == EXIT_BAD_INPUT and out == ""
    assert err.startswith(f"error: {path}:3: EDGE_SE2 0 1: information entry (row 0, column 0) is 1e+40; ")
    assert "≤ 1e+15 in float32" in err and len(err.splitlines()) == 1


# -- TUM and KITTI trajectories: eval, plot, --export-trajectory -------------------------------------


def _eval_json(capsys, *argv):
    code = main(["eval", *map(str, argv), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out), err


def test_eval_tum_gives_the_same_ate_as_g2o(tmp_path, capsys):
    """``posegraph eval EST.tum --gt GT.tum`` = the same poses as g2o files."""
    from posegraph.io import Trajectory, write_g2o, write_trajectory
    from posegraph.synthetic.graphs import sphere_se3

    s = sphere_se3(num_rings=4, poses_per_ring=12, seed=4)
    for role, graph in (("est", s.graph), ("gt", s.truth)):
        write_g2o(graph, tmp_path / f"{role}.g2o")
        traj = Trajectory.from_graph(graph)
        write_trajectory(Trajectory(traj.poses, 1403636580.0 + 0.05 * traj.timestamps), tmp_path / f"{role}.tum")
        write_trajectory(traj, tmp_path / f"{role}.dat", "kitti")
    g2o, err_g = _eval_json(capsys, tmp_path / "est.g2o", "--gt", tmp_path / "gt.g2o")
    tum, err_t = _eval_json(capsys, tmp_path / "est.tum", "--gt", tmp_path / "gt.tum")
    assert err_g == err_t == ""
    assert tum["matched_by"] == "timestamp" and tum["poses"] == g2o["poses"] == {
        "matched": 48, "estimate_only": 0, "truth_only": 0}
    assert tum["ate"] == pytest.approx(g2o["ate"], rel=1e-12)
    assert tum["rpe_rotation_rad"] == pytest.approx(g2o["rpe_rotation_rad"], rel=1e-9)
    kitti, _ = _eval_json(capsys, tmp_path / "est.dat", "--format", "kitti", "--gt", tmp_path / "gt.dat",
                          "--gt-format", "kitti")
    assert kitti["matched_by"] == "id" and kitti["ate"] == pytest.approx(g2o["ate"], rel=1e-12)
    # the stamps are 50 ms apart: a 0.1 s tolerance would pair neighbours one-to-one, a tiny one still matches
    tight, _ = _eval_json(capsys, tmp_path / "est.tum", "--gt", tmp_path / "gt.tum", "--t-max-diff", "1e-6")
    assert tight["max_diff"] == 1e-6 and tight["ate"] == pytest.approx(g2o["ate"], rel=1e-12)
    assert main(["eval", str(tmp_path / "est.tum"), "--gt", str(tmp_path / "gt.tum")]) == 0
    assert "48 matched by timestamp (|Δt| ≤ 0.01 s)" in capsys.readouterr().out


def test_eval_bad_trajectory_is_one_error_line(tmp_path, capsys):
    (tmp_path / "gt.tum").write_text("0 0 0 0 0 0 0 1\n1 0 0 0 0 0 0 1\n")
    (tmp_path / "est.tum").write_text("0 0 0 0 0 0 0 1\n1 0 0 0 0 0 1\n")
    assert main(["eval", str(tmp_path / "est.tum"), "--gt", str(tmp_path / "gt.tum")]) == EXIT_BAD_INPUT
    out, err = capsys.readouterr()
    assert out == "" and err == (f"error: {tmp_path / 'est.tum'}:2: TUM line: expected 8 numbers "
                                 "(timestamp tx ty tz qx qy qz qw), received 7\n")
    with pytest.raises(SystemExit) as info:  # a usage error
        main(["eval", str(tmp_path / "gt.tum"), "--gt", str(tmp_path / "gt.tum"), "--format", "csv"])
    assert info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_export_trajectory_tum_and_kitti(tmp_path, capsys, leftovers):
    from posegraph.io import read_kitti, read_tum, write_g2o
    from posegraph.synthetic.graphs import grid_se2, sphere_se3

    write_g2o(sphere_se3(num_rings=3, poses_per_ring=10, seed=1).graph, tmp_path / "g3.g2o")
    code, _, err = run_cli(capsys, tmp_path / "g3.g2o", "-o", tmp_path / "o3.g2o", "--export-trajectory",
                           tmp_path / "o3.tum", "--quiet")
    assert code == 0, err
    opt = read_g2o(tmp_path / "o3.g2o")
    tum = read_tum(tmp_path / "o3.tum")
    np.testing.assert_array_equal(tum.timestamps, opt.ids.numpy().astype(float))  # timestamp: the vertex id
    np.testing.assert_allclose(tum.poses, opt.poses.numpy(), atol=1e-12)
    write_g2o(grid_se2(num_poses=40, seed=2).graph, tmp_path / "g2.g2o")
    code, _, err = run_cli(capsys, tmp_path / "g2.g2o", "-o", tmp_path / "o2.g2o", "--export-trajectory",
                           tmp_path / "o2.kitti", "--quiet")
    assert code == 0, err
    opt2, kitti = read_g2o(tmp_path / "o2.g2o"), read_kitti(tmp_path / "o2.kitti")
    p = opt2.poses.numpy()
    np.testing.assert_allclose(kitti.poses[:, :2, 3], p[:, :2], atol=1e-12)  # planar: z = 0, yaw about z
    np.testing.assert_allclose(kitti.poses[:, 2], np.tile([0.0, 0.0, 1.0, 0.0], (40, 1)), atol=1e-15)
    np.testing.assert_allclose(np.arctan2(kitti.poses[:, 1, 0], kitti.poses[:, 0, 0]),
                               np.arctan2(p[:, 3], p[:, 2]), atol=1e-12)
    # a name that is not .tum/.kitti is refused before any work: nothing is written
    code, out, err = run_cli(capsys, tmp_path / "g2.g2o", "-o", tmp_path / "x.g2o", "--export-trajectory",
                             tmp_path / "x.txt")
    assert code == EXIT_BAD_INPUT and out == "" and err.count("\n") == 1
    assert err.startswith(f"error: {tmp_path / 'x.txt'}: expected a trajectory file name ending in .tum or .kitti")
    assert not (tmp_path / "x.g2o").exists() and not (tmp_path / "x.txt").exists()
    code, _, err = run_cli(capsys, tmp_path / "g2.g2o", "--export-trajectory", tmp_path / "g2.g2o")
    assert code == EXIT_BAD_INPUT and "input" in err
    assert leftovers(tmp_path) == {}


# -- one line per refusal, valid JSON ------------------------------------------------------------

def _strict_json(text: str):
    """json.loads that refuses NaN and Infinity (Python's json accepts them by default)."""
    def refuse(constant):
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_info_json_has_no_nan_or_infinity(tmp_path, capsys):
    """Information at its bound (1e150) and a residual of 1e100: the initial χ² overflows
    (Infinity). The JSON holds null with a note saying why."""
    path = tmp_path / "huge.g2o"
    path.write_text(V2 + "VERTEX_SE2 2 2 0 0\n" + "".join(
        f"EDGE_SE2 {a} {b} 1 0 0 1e150 0 0 1e150 0 1e150\n" for a, b in ((0, 1), (1, 2), (0, 2))
    ).replace("EDGE_SE2 0 2 1", "EDGE_SE2 0 2 1e100"))
    code = main(["info", str(path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    data = _strict_json(out)
    assert data["initial_chi2"] is None and data["initial_error"] is None
    assert any(n.startswith("initial_chi2 is Infinity") and "overflows" in n for n in data["notes"])


@pytest.mark.parametrize("command", ["optimize", "eval"])
def test_every_json_output_is_guarded(tmp_path, capsys, monkeypatch, command):
    """Whatever a command's dict holds, --json prints valid JSON (json_text with
    allow_nan=False): a non-finite value in the summary becomes null with a note."""
    import posegraph.report.eval as eval_mod
    import posegraph.report.console as report_mod

    path = tmp_path / "g.g2o"
    path.write_text(SE2_TEXT)
    if command == "optimize":
        summary = report_mod.summary
        monkeypatch.setattr(report_mod, "summary", lambda *a, **k: {**summary(*a, **k), "initial_chi2": float("inf")})
        argv = ["optimize", str(path), "--json", "--quiet"]
    else:
        evaluate = eval_mod.evaluate_files
        monkeypatch.setattr(eval_mod, "evaluate_files", lambda *a, **k: {**evaluate(*a, **k), "ate_rmse": float("nan")})
        argv = ["eval", str(path), "--gt", str(path), "--json"]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    data = _strict_json(out)
    key = "initial_chi2" if command == "optimize" else "ate_rmse"
    assert data[key] is None and any(n.startswith(key) for n in data["notes"])


BAD_AFTER_WARNING = "VERTEX_XY 5 1 1\n" + V2 + "EDGE_SE2 0 1 x 0 0 1 0 0 1 0 1\n"


@pytest.mark.parametrize("argv", [["info"], ["info", "--json"], ["optimize"], ["optimize", "--verbose"]])
def test_refusal_is_one_line_even_after_warnings(tmp_path, capsys, argv):
    """A warning (an unsupported tag) comes before the error: only the error is printed."""
    path = tmp_path / "w.g2o"
    path.write_text(BAD_AFTER_WARNING)
    code = main([argv[0], str(path), *argv[1:]])
    out, err = capsys.readouterr()
    assert code == EXIT_BAD_INPUT and out == ""
    assert err == f"error: {path}:4: EDGE_SE2: expected a number, received 'x'\n"


def test_failed_optimization_is_one_line_even_after_warnings(tmp_path, capsys, monkeypatch):
    path = tmp_path / "w.g2o"
    path.write_text("VERTEX_XY 5 1 1\n" + SE2_TEXT)
    real = optimize_mod.optimize

    def failing(*args, **kwargs):
        result = real(*args, **kwargs)
        result.status, result.stop_reason = ["failed"], ["non-finite-error"]
        return result

    monkeypatch.setattr(optimize_mod, "optimize", failing)
    code, out, err = run_cli(capsys, path)
    assert code == EXIT_FAILED and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {path}: optimization failed")


def test_warnings_are_printed_when_the_command_succeeds(tmp_path, capsys):
    path = tmp_path / "w.g2o"
    path.write_text("VERTEX_XY 5 1 1\n" + SE2_TEXT)
    for argv in (["info", str(path)], ["optimize", str(path), "--quiet"], ["optimize", str(path)]):
        code = main(argv)
        err = capsys.readouterr().err
        expected = [] if "--quiet" in argv else [f"warning: {path}: skipped 1 line(s) with unsupported tag VERTEX_XY"]
        assert code == 0 and [l for l in err.splitlines() if l.startswith(("warning", "error"))] == expected


def test_main_restores_the_warning_hook(tmp_path, capsys):
    import warnings

    before = warnings.showwarning
    path = tmp_path / "w.g2o"
    path.write_text(BAD_AFTER_WARNING)
    main(["info", str(path)])
    capsys.readouterr()
    assert warnings.showwarning is before


def test_chordal_init_with_information_near_the_float64_limit(tmp_path, capsys, synthetic):
    """Was 'internal error (LinAlgError): SVD did not converge' without the file's name; such
    information is now refused on its line, before chordal."""
    s = synthetic(kind="SE3", n=8, loops=((0, 4), (7, 2)), seed=5, noise=0.01)
    s.information = s.information / abs(s.information).max() * 1.7e308
    path = tmp_path / "huge.g2o"
    path.write_text(s.text())
    code, out, err = run_cli(capsys, path, "--init", "chordal", "--json", "--quiet")
    assert "internal error" not in err and len(err.splitlines()) == 1
    assert code == EXIT_BAD_INPUT and err.startswith(f"error: {path}:9: EDGE_SE3:QUAT 0 1: information entry")


def test_dense_solver_size_guard_and_force_dense(tmp_path, capsys, monkeypatch):
    """--linear-solver dense beyond its limit: one error line with the size and the
    alternative (intel, 5,184 columns, ran 5.5 minutes); --force-dense runs it."""
    path = tmp_path / "g.g2o"
    path.write_text(SE2_TEXT)
    columns = optimize_mod.tangent_columns(build_problem(initialize(read_g2o(path))))
    monkeypatch.setitem(optimize_mod.DENSE_SOLVER_MAX_COLUMNS, "dense", columns - 1)
    code, out, err = run_cli(capsys, path, "--linear-solver", "dense", "-o", tmp_path / "o.g2o")
    assert code == EXIT_BAD_INPUT and out == "" and not (tmp_path / "o.g2o").exists()
    assert err == (
        f"error: {path}: linear solver 'dense': {columns} tangent columns exceed its limit of "
        f"{columns - 1} (dense Cholesky time grows as the cube of the columns); use a sparse solver "
        "(--linear-solver auto, cholmod or pardiso), or force it with --force-dense "
        "(SolverOptions.force_dense)\n"
    )
    code, out, err = run_cli(capsys, path, "--linear-solver", "dense", "--force-dense", "--json", "--quiet")
    assert code == 0 and json.loads(out)["linear_solver"] == "dense"


@pytest.mark.parametrize("linear_solver", ["dense", "cholmod"])
def test_covariances_of_an_unconstrained_graph_name_the_file_not_the_library(tmp_path, capsys, linear_solver):
    """A y with no information: the covariances are not defined. One line naming the input
    and the option, the same whatever --linear-solver (it said CHOLMOD's source file and line,
    without the input), and no output written."""
    path = tmp_path / "singular.g2o"
    path.write_text("VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 5 0 0\nEDGE_SE2 0 1 1 0 0 1 0 0 0 0 1\n")
    out, cov = tmp_path / "out.g2o", tmp_path / "cov.npz"
    argv = ["optimize", str(path), "-o", str(out), "--covariances", str(cov), "--init", "file",
            "--linear-solver", linear_solver, "--quiet"]
    assert main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}: --covariances: the normal matrix") and "\n" not in err, err
    assert "cholmod" not in err.lower() and ".c:" not in err, err
    assert not out.exists() and not cov.exists()
