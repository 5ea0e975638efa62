"""Build script for the compiled loops; everything else is in pyproject.toml.

Two extension modules, plain C against the CPython API (no other headers), wrapped by
:mod:`posegraph.lie.native`: ``posegraph.lie._native_geometry`` (the hot SE(3)/SE(2) kernels of
:mod:`posegraph.lie.geometry`) and ``posegraph.lie._native_normal`` (the assembly of the normal matrix,
:mod:`posegraph.solve.normal`). Both are optional: where they cannot be compiled the install
goes on, and posegraph runs those steps on NumPy or torch instead.
"""

from setuptools import Extension, setup

# -ffp-contract=off: no fused multiply-adds, so results do not depend on the target's FMA.
FLAGS = ["-O3", "-fno-math-errno", "-ffp-contract=off"]

setup(
    ext_modules=[
        Extension(f"posegraph.lie._native_{name}", [f"posegraph/lie/_native_{name}.c"], extra_compile_args=FLAGS, optional=True)
        for name in ("geometry", "normal")
    ]
)
