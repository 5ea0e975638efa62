"""Process setting made when posegraph is imported: OpenMP workers that wait passively.

torch's CPU operations run on an OpenMP thread pool whose idle workers, by default, spin for a
while before sleeping. CHOLMOD's BLAS threads need the same cores right after (each solver
iteration alternates torch operations and a factorization), and on a machine with other busy
processes the spinning workers stall every small operation for a scheduler time slice.
Measured on the 2-core development machine: smallGrid3D takes 0.06 s with passive waiting and
0.4 s with spinning workers while one other process is busy; sphere2500 on an idle machine
0.48–0.51 s instead of 0.54–0.70 s. On small graphs passive waiting costs up to ~5%.

libgomp reads ``OMP_WAIT_POLICY`` once, when it is loaded with torch, so the setting only takes
effect when posegraph is imported before torch (as the ``posegraph`` command does), and never
overrides a value the user set.
"""

from __future__ import annotations

import os
import sys


def prefer_passive_waiting() -> bool:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless it is set or torch is already loaded; returns
    whether it was set."""
    if "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return True
