"""YAML run configurations: keys come from the parser's own options, values go through the
options' types and choices, flags win over the file, bad files give one clear error."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from posegraph.cli.optimize import EXIT_BAD_INPUT
from posegraph.cli.options import _parser
from posegraph.cli.main import main
from posegraph.cli.config import (
    ConfigError,
    config_actions,
    layer_parser,
    load_config,
    parse_with_config,
    resolve_device,
    subcommand_parser,
)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def _schema_of(path: Path) -> str:
    return "layer" if path.name == "batched_gpu.yaml" else "optimize"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_are_valid(path):
    cfg = load_config(path, schema=_schema_of(path))
    assert cfg, path
    if "input" in cfg:
        assert (REPO / cfg["input"]).is_file(), cfg["input"]


def test_one_config_per_bundled_graph():
    names = {p.stem for p in CONFIGS}
    graphs = {p.name[: -len(".g2o")] for p in (REPO / "data").glob("*.g2o") if not p.name.endswith(".gt.g2o")}
    assert graphs <= names, graphs - names
    assert {"default", "batched_gpu"} <= names


def test_keys_are_the_optimize_options():
    sub = subcommand_parser(_parser(), "optimize")
    dests = {a.dest for a in sub._actions} - {"help", "config"}
    assert set(config_actions(sub)) == dests
    assert {"solver", "max_iters", "rel_tol", "init", "device", "dtype", "output", "input"} <= dests


def test_a_new_flag_becomes_a_key_with_its_own_validation(tmp_path):
    """A flag added to a parser (as other features add --robust …) is a key at once."""
    p = argparse.ArgumentParser()
    p.add_argument("--config")
    p.add_argument("--robust", choices=["none", "huber", "cauchy"], default="none")
    p.add_argument("--robust-edges", nargs="+", default=[])
    p.add_argument("--laplacian-weight", type=float, default=0.0)
    good = tmp_path / "good.yaml"
    good.write_text("robust: huber\nrobust-edges: ['EDGE_SE2 0 *', 'EDGE_SE2 1 *']\nlaplacian_weight: 2\n")
    assert load_config(good, p) == {
        "robust": "huber", "robust_edges": ["EDGE_SE2 0 *", "EDGE_SE2 1 *"], "laplacian_weight": 2.0,
    }
    bad = tmp_path / "bad.yaml"
    bad.write_text("laplacian_weight: 1\nrobust: tukey\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad, p)
    assert str(err.value) == f"{bad}:2: robust: expected one of none, huber, cauchy, received 'tukey'"


def test_values_are_converted_by_the_option_types(tmp_path):
    path = tmp_path / "c.yaml"
    # YAML reads 1e-8 (no dot) as a string: the option's float type converts it as on the command line
    path.write_text("max-iters: 7\nrel_tol: 1e-8\nabs_tol: 0.5\nquiet: true\njson: false\nsolver: gn\n")
    assert load_config(path) == {
        "max_iters": 7, "rel_tol": 1e-8, "abs_tol": 0.5, "quiet": True, "json": False, "solver": "gn",
    }
    path.write_text("output: null\ndebug: ~\n")  # options without a default may be null
    assert load_config(path) == {"output": None, "debug": None}
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    assert load_config(empty) == {}


#: name, YAML text, line at fault (None: the whole file), words in the message
BAD_CONFIGS = [
    ("unknown-key", "solver: lm\nmax-iters: 3\nrobust_kernel: huber\n", 3,
     ["unknown key 'robust_kernel'", "valid keys:", "max_iters", "solver"]),
    ("negative-iterations", "max_iters: -3\n", 1, ["max_iters", "expected an integer ≥ 0", "-3"]),
    ("bad-choice", "solver: newton\n", 1, ["solver", "expected one of gn, lm", "'newton'"]),
    ("not-a-number", "solver: lm\nrel_tol: small\n", 2, ["rel_tol", "expected a number", "'small'"]),
    ("infinite-tolerance", "solver: lm\nrel_tol: .inf\n", 2, ["rel_tol: expected a finite number ≥ 0", "'inf'"]),
    ("nan-tolerance", "abs_tol: .nan\n", 1, ["abs_tol: expected a finite number ≥ 0", "'nan'"]),
    ("bad-debug-regex", "debug: t.json\ndebug_costs: 're:['\n", 2,
     ["debug_costs: expected a regular expression after 're:', received 're:[' (unterminated character set"]),
    ("negative-tolerance", "rel_tol: -1.0e-3\n", 1, ["rel_tol: expected a finite number ≥ 0", "'-0.001'"]),
    ("flag-not-bool", "quiet: 1\n", 1, ["quiet", "expected true or false", "received 1"]),
    ("list-for-scalar", "solver: [lm, gn]\n", 1, ["solver", "expected one of gn, lm", "received ['lm', 'gn']"]),
    ("twice", "max_iters: 3\nmax-iters: 4\n", 2, ["given twice"]),
    ("same-key-twice", "solver: gn\nmax_iters: 3\nsolver: lm\n", 3, ["solver: given twice (lines 1 and 3): keep one"]),
    ("yaml-boolean", "init: auto\nsolver: no\n", 2, ["solver: expected one of gn, lm, received False", "quote the value"]),
    ("null-for-a-default", "solver: null\n", 1, ["solver", "received None"]),
    ("not-a-mapping", "- solver\n- lm\n", 1, ["expected a mapping", "list"]),
    ("invalid-yaml", "solver: [lm\nmax_iters: 3\n", 2, ["invalid YAML", "expected ',' or ']'"]),
    ("config-key", "config: other.yaml\n", 1, ["unknown key 'config'"]),
]


@pytest.mark.parametrize("name,text,line,words", BAD_CONFIGS, ids=[b[0] for b in BAD_CONFIGS])
def test_bad_config_errors(tmp_path, capsys, name, text, line, words):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    prefix = f"{path}:{line}: " if line is not None else f"{path}: "
    assert str(err.value).startswith(prefix), (str(err.value), prefix)
    for w in words:
        assert w in str(err.value), (w, str(err.value))
    # the CLI: exit 2, one line on stderr, nothing on stdout
    code = main(["optimize", str(REPO / "data" / "grid_se2.g2o"), "--config", str(path), "--json"])
    out, err_text = capsys.readouterr()
    assert code == EXIT_BAD_INPUT and out == ""
    assert err_text == f"error: {err.value}\n"


def test_missing_config_file(tmp_path, capsys):
    code = main(["optimize", "x.g2o", "--config", str(tmp_path / "nope.yaml")])
    out, err = capsys.readouterr()
    assert code == EXIT_BAD_INPUT and out == ""
    assert err == f"error: {tmp_path / 'nope.yaml'}: no such configuration file\n"


def _small_graph(tmp_path, synthetic):
    s = synthetic(kind="SE2", n=12, loops=((0, 6), (11, 3), (2, 9)), seed=3, noise=0.2)
    path = tmp_path / "g.g2o"
    path.write_text(s.text(vertices=s.truth @ _perturb(len(s.ids))))
    return path


def _perturb(n):
    import numpy as np

    rng = np.random.default_rng(0)
    out = np.tile(np.eye(3), (n, 1, 1))
    out[:, :2, 2] = rng.normal(scale=0.5, size=(n, 2))
    return out


def test_cli_flags_win_over_the_file(tmp_path, capsys, synthetic):
    graph = _small_graph(tmp_path, synthetic)
    out_path = tmp_path / "out.g2o"
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"input: {graph}\noutput: {out_path}\nsolver: gn\nmax_iters: 1\nquiet: true\njson: true\n")
    assert main(["optimize", "--config", str(cfg)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["solver"], data["iterations"], data["output"]) == ("gn", 1, str(out_path))
    assert out_path.is_file()
    assert main(["optimize", "--config", str(cfg), "--max-iters", "2", "--solver", "lm"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["solver"], data["iterations"]) == ("lm", 2)
    other = tmp_path / "other.g2o"
    other.write_text(graph.read_text())
    assert main(["optimize", str(other), "--config", str(cfg)]) == 0  # positional input wins too
    assert json.loads(capsys.readouterr().out)["input"] == str(other)


def test_optimize_without_input_names_the_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("solver: lm\n")
    assert main(["optimize", "--config", str(cfg)]) == EXIT_BAD_INPUT
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {cfg}: no input graph")


def test_layer_schema(tmp_path):
    cfg = load_config(REPO / "configs" / "batched_gpu.yaml", schema="layer")
    assert cfg["device"] == "cuda" and cfg["batch_size"] == 32 and cfg["backward_mode"] == "implicit"
    bad = tmp_path / "bad.yaml"
    bad.write_text("batch_size: 0\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:1: batch_size: expected an integer ≥ 1, received '0'"):
        load_config(bad, schema="layer")
    bad.write_text("backward_mode: magic\n")
    with pytest.raises(ConfigError, match="backward_mode: expected one of implicit, truncated, unroll"):
        load_config(bad, schema="layer")
    bad.write_text("max_iter: 3\n")  # the optimize spelling differs: clear error with valid keys
    with pytest.raises(ConfigError, match="unknown key 'max_iter'; valid keys: .*max_iters"):
        load_config(bad, schema="layer")


def test_parse_with_config_for_scripts(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("batch_size: 4\ndevice: cpu\n")
    args = parse_with_config(layer_parser(), ["--config", str(cfg), "--device", "auto"])
    assert (args.batch_size, args.device, args.solver) == (4, "auto", "lm")


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            resolve_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_device_cuda_unavailable(capsys):
    code = main(["optimize", str(REPO / "data" / "grid_se2.g2o"), "--device", "cuda", "--quiet"])
    out, err = capsys.readouterr()
    assert code == EXIT_BAD_INPUT and out == ""
    assert err.startswith("error: device: expected an available CUDA device") and err.count("\n") == 1


def test_batched_config_drives_the_layer_benchmark(capsys):
    """configs/batched_gpu.yaml is what benchmarks/gpu_layer.py --config reads (flags win)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_layer_bench", REPO / "benchmarks" / "gpu_layer.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    argv = ["--config", str(REPO / "configs" / "batched_gpu.yaml"), "--device", "cpu", "--batch-size", "2",
            "--sequential", "1", "--input", str(REPO / "data" / "grid_se2.g2o"), "--json"]
    assert bench.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["batch"] == 2 and out["device"] == "cpu" and out["dtype"] == "float64"
    assert out["batched"]["linear_solver"] == "cholmod"
    assert out["max_rel_error_difference_batched_vs_sequential"] < 1e-8


def test_boolean_option_key_takes_its_value(tmp_path):
    from posegraph.cli.config import load_config

    path = tmp_path / "c.yaml"
    path.write_text("reuse_factor: false\ncholmod_mode: simplicial\n")
    assert load_config(path) == {"reuse_factor": False, "cholmod_mode": "simplicial"}
