"""The module paths of posegraph 0.1's flat layout, kept importable.

posegraph 0.1 had one flat package (``posegraph.builder``, ``posegraph.geometry``, …); its
modules now live in subpackages named after the pipeline's stages. ``import
posegraph.builder`` and ``from posegraph.builder import PoseGraphBuilder`` keep working: the
old name is bound to the new module (the same object, so monkeypatching through either name
patches both), with a ``DeprecationWarning`` naming the new path. Names that moved with a
split module are re-exported by the package that replaced it (``posegraph.debug``,
``posegraph.mesh``, ``posegraph.lie``, ``posegraph.init``, …).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType
from typing import Dict, Optional, Sequence

#: old module path → the module that holds its code now
MOVED: Dict[str, str] = {
    "posegraph.geometry": "posegraph.lie.geometry",
    "posegraph.native": "posegraph.lie.native",
    "posegraph.chordal": "posegraph.init.chordal",
    "posegraph.variables": "posegraph.model.variables",
    "posegraph.costs": "posegraph.model.costs",
    "posegraph.weights": "posegraph.model.weights",
    "posegraph.robust": "posegraph.model.robust",
    "posegraph.user_costs": "posegraph.model.user_costs",
    "posegraph.builder": "posegraph.model.builder",
    "posegraph.gnc": "posegraph.solve.gnc",
    "posegraph.threads": "posegraph.solve.threads",
    "posegraph.inspect_trace": "posegraph.debug.inspect_trace",
    "posegraph.info": "posegraph.report.info",
    "posegraph.eval": "posegraph.report.eval",
    "posegraph.plot": "posegraph.report.plot",
    "posegraph.config": "posegraph.cli.config",
    "posegraph.batch_worker": "posegraph.batch.worker",
    "posegraph.hard_cases": "posegraph.synthetic.hard_cases",
    "posegraph.gtsam_reference": "posegraph.synthetic.gtsam_reference",
}


class _Alias(importlib.abc.Loader):
    """Loads an old path as the module at its new path."""

    def __init__(self, new: str):
        self.new = new
        self.spec: Optional[importlib.machinery.ModuleSpec] = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        """The module at the new path (imported now if need be)."""
        warnings.warn(f"{spec.name} moved to {self.new}; import it from there", DeprecationWarning, stacklevel=4)
        module = importlib.import_module(self.new)
        self.spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run (the module ran under its new name); the import machinery set its
        ``__spec__`` to the old path's, which is put back."""
        module.__spec__ = self.spec


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths of :data:`MOVED` (consulted after the regular finders)."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None, target: Optional[ModuleType] = None):
        new = MOVED.get(fullname)
        if new is None:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Alias(new))


def install() -> None:
    """Add the finder to ``sys.meta_path`` once."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
