"""Solving: linearization, linear solvers and the optimizer loop.

The submodules load on first use (:mod:`posegraph._lazy`): ``posegraph.solve.optimize`` after
``import posegraph`` imports :mod:`posegraph.solve.optimize` then."""

from posegraph._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {}, globals())
