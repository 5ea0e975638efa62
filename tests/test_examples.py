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


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_train_ddp_gives_the_same_parameters_on_1_and_2_processes(tmp_path):
    """The same global batch and seed: DDP's gradient average over 2 processes is the
    1-process full-batch gradient, so the learned parameters agree to 1e-9 (float64)."""
    import json
    import os
    import subprocess
    import sys

    import pytest
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    runs = {}
    for n in (1, 2):  # both at once: each is mostly start-up
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(n),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               str(REPO / "examples" / "train_ddp.py"), "--steps", "3", "--batch", "4", "--size", "8"]
        runs[n] = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    params = {}
    for n, proc in runs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        params[n] = json.loads(out.strip().splitlines()[-1])["params"]
    assert len(params[1]) == 2 and max(abs(v) for v in params[1]) > 0.1  # it learned something
    assert max(abs(a - b) for a, b in zip(params[1], params[2])) <= 1e-9, params
