"""OpenMP wait policy set at import (posegraph._openmp)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from posegraph import _openmp

REPO = Path(__file__).resolve().parents[1]


def test_sets_passive_only_when_unset_and_torch_not_loaded(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert not _openmp.prefer_passive_waiting()  # torch is loaded in this process
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.delitem(sys.modules, "torch")
    assert _openmp.prefer_passive_waiting()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert not _openmp.prefer_passive_waiting()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def policy_after(code: str, **env: str) -> str:
    full = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    full.update(env, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code + "; import os; print(os.environ.get('OMP_WAIT_POLICY'))"],
                         capture_output=True, text=True, env=full, check=True)
    return out.stdout.strip()


def test_import_order_decides():
    assert policy_after("import posegraph") == "PASSIVE"
    assert policy_after("import torch, posegraph") == "None"
    assert policy_after("import posegraph", OMP_WAIT_POLICY="active") == "active"
