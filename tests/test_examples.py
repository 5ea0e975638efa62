"""The example scripts under examples/ run and show what they claim."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"posegraph_example_{name}", REPO / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mesh_regularizer_improves_vertex_rmse(capsys):
    demo = _load("mesh_regularizer")
    assert demo.main([]) == 0
    out = capsys.readouterr().out
    assert "with the regularizer" in out and "did not help" not in out
    data = REPO / "data"
    results = demo.run(str(data / "mesh_demo.g2o"), str(data / "mesh_demo.gt.g2o"), str(data / "icosphere.obj"), 100.0)
    initial, without, with_mesh = results.values()
    assert without["vertex_rmse"] < initial["vertex_rmse"]
    assert with_mesh["vertex_rmse"] < 0.7 * without["vertex_rmse"]
