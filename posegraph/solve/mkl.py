"""Finding and loading MKL's runtime library (``libmkl_rt``), which holds PARDISO.

Apart from :mod:`posegraph.solve.pardiso` so that the automatic backend choice
(:mod:`posegraph.solve.symbolic`) and the thread budgets (:mod:`posegraph.solve.threads`)
can ask whether PARDISO is there without importing the binding.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import site
import sys
from typing import List, Optional


#: MKL's code for GNU OpenMP threading (``MKL_Set_Threading_Layer``)
_MKL_THREADING_GNU = 3
_LIBRARY: Optional[ctypes.CDLL] = None
_LOAD_TRIED = False


def _local_candidates() -> List[str]:
    """Where ``libmkl_rt`` may be without asking the loader: ``POSEGRAPH_MKL_RT``, then the
    ``lib`` folders of this environment's prefixes (where the ``mkl`` wheel puts it).

    Measured (docs/performance.md, 'What each speed mechanism pays'): skipping the loader's search
    saves 15–38 ms once per process (80–1170% of an iteration).
    """
    found = [os.environ["POSEGRAPH_MKL_RT"]] if os.environ.get("POSEGRAPH_MKL_RT") else []
    prefixes = dict.fromkeys([sys.prefix, sys.base_prefix, site.USER_BASE or ""])
    for prefix in filter(None, prefixes):
        found += sorted(glob.glob(os.path.join(prefix, "lib", "libmkl_rt.so*")), reverse=True)
        found += sorted(glob.glob(os.path.join(prefix, "Library", "bin", "mkl_rt*.dll")), reverse=True)
    return found


def _candidates() -> List[str]:
    """:func:`_local_candidates`, then the loader's search (``ctypes.util.find_library``,
    ~17 ms: it runs ``ldconfig``)."""
    found = _local_candidates()
    try:
        system = ctypes.util.find_library("mkl_rt")
    except OSError:  # it runs compilers in a temporary folder, which may be unusable (ulimit -f 0)
        system = None
    return found + ([system] if system else [])


def _load() -> Optional[ctypes.CDLL]:
    """MKL's runtime library, loaded once (``None`` when there is none). On Linux its
    threading layer is set to GNU OpenMP — torch's own runtime, so MKL's and torch's threads
    share one pool — unless ``MKL_THREADING_LAYER`` says otherwise."""
    global _LIBRARY, _LOAD_TRIED
    if _LOAD_TRIED:
        return _LIBRARY
    _LOAD_TRIED = True
    for path in _local_candidates() + [None]:
        if path is None:  # only when no local one loads: the loader's search is slow
            path = next(iter(_candidates()[len(_local_candidates()):]), None)
            if path is None:
                break
        try:
            lib = ctypes.CDLL(path)
            fn = lib.pardiso_64
        except (OSError, AttributeError):
            continue
        fn.restype = None
        lib.MKL_Get_Max_Threads.restype = ctypes.c_int
        lib.MKL_Set_Num_Threads_Local.restype = ctypes.c_int
        lib.MKL_Set_Num_Threads_Local.argtypes = [ctypes.c_int]
        if sys.platform.startswith("linux") and "MKL_THREADING_LAYER" not in os.environ:
            lib.MKL_Set_Threading_Layer(ctypes.c_int(_MKL_THREADING_GNU))
        _LIBRARY = lib
        break
    return _LIBRARY


def pardiso_available() -> bool:
    """Whether MKL PARDISO can be loaded (the ``mkl`` package, or ``POSEGRAPH_MKL_RT``)."""
    return _load() is not None


def pardiso_installed() -> bool:
    """Whether MKL PARDISO is there, without loading it (~20 ms) where its library file is
    found in this environment: the automatic backend choice asks before it knows whether it
    will use PARDISO (2D graphs take CHOLMOD); :func:`pardiso_available` otherwise.

    Measured (docs/performance.md, 'What each speed mechanism pays'): not loading MKL for 2D graphs
    saves 1.4–2.1 ms once per process (intel 43–65%, manhattan 17–25% of an iteration).
    """
    if _LOAD_TRIED or not _local_candidates():
        return pardiso_available()
    return True
