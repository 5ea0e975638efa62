"""CHOLMOD (scikit-sparse) factorizations of the normal matrix ``AᵀA + βI``.

The symbolic analysis runs once; each :meth:`CholmodFactorization.factorize` does the numeric
factorization only, in the block-graph order of
:func:`~posegraph.solve.symbolic.plan_factorization` (CHOLMOD is told to keep the natural
order; vectors move in and out of it with :class:`~posegraph.solve.symbolic.OrderedTranspose`):

* supernodal: of the lower triangle of ``AᵀA + βI``, which the solver assembles in that
  order (:class:`~posegraph.solve.normal.NormalMatrix`; ``Factor.cholesky``);
* simplicial: from ``Aᵀ`` with its rows in that order (``Factor.cholesky_AAt``: CHOLMOD
  forms ``AᵀA`` itself, keeping its pattern even where values are exactly zero);
* without A's block spans (overlapping blocks), or above
  :data:`~posegraph.solve.symbolic.MAX_ESTIMATED_BLOCKS` column blocks, supernodal runs on
  ``Aᵀ`` in CHOLMOD's own order.

The solver around it (reuse of the last factor, gradients) is
:class:`~posegraph.solve.sparse_cholesky.SparseCholeskySolver`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from sksparse.cholmod import CholmodError, Factor, analyze, analyze_AAt

from posegraph.solve.linearization import BlockSparseLinearization
from posegraph.solve.normal import NormalMatrix
from posegraph.solve.symbolic import FactorizationPlan, OrderedTranspose

CHOLMOD_MODES = ("auto", "supernodal", "simplicial")


class CholmodFactorization:
    """CHOLMOD's analysis of ``lin``'s normal matrix under ``plan`` and its numeric
    factorizations (:meth:`factorize`: a ``Factor``, called to solve in ``order``'s order)."""

    backend = "cholmod"

    def __init__(self, lin: BlockSparseLinearization, plan: FactorizationPlan):
        self.mode = plan.mode
        self.order = OrderedTranspose(lin, None if plan.order is None else plan.order.columns)
        #: ``AᵀA`` assembled by the solver (supernodal in the block order), else ``None``:
        #: CHOLMOD forms it from ``Aᵀ`` (``cholesky_AAt``).
        self.normal: Optional[NormalMatrix] = None
        if self.mode == "supernodal" and plan.order is not None:
            self.normal = NormalMatrix(lin, plan.order.sizes, plan.order.blocks)
            self.symbolic = analyze(self.normal.pattern(), mode="supernodal", ordering_method="natural")
        else:
            self.symbolic = analyze_AAt(
                self.order.pattern(), mode=self.mode, ordering_method="default" if plan.order is None else "natural"
            )

    def factorize(self, a_values: np.ndarray, beta: float) -> Factor:
        """CHOLMOD's numeric factorization of ``AᵀA + βI`` in the solver's order, for A's
        values ``a_values`` (CSR order)."""
        try:
            if self.normal is not None:
                return self.symbolic.cholesky(self.normal.matrix(torch.from_numpy(a_values), beta))
            return self.symbolic.cholesky_AAt(self.order.transpose(a_values), beta=beta)
        except CholmodError as err:  # not positive definite, etc.
            raise RuntimeError(f"CHOLMOD factorization failed: {err}") from err
