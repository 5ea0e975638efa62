"""From data to a Theseus objective: variables, costs, weights, robust kernels and the builder.

- :mod:`posegraph.model.variables` — :class:`~posegraph.model.variables.ManifoldArray`, many
  poses or points packed in one Theseus variable.
- :mod:`posegraph.model.costs` — vectorized cost functions: one object per edge kind
  (:class:`~posegraph.model.between.BetweenEdges`), not one per edge.
- :mod:`posegraph.model.weights` — block cost weights: full information matrices, per-block scales.
- :mod:`posegraph.model.robust` — robust kernels over any block weight.
- :mod:`posegraph.model.user_costs` — the user's own Theseus costs and priors over packed variables.
- :mod:`posegraph.model.builder` — :class:`~posegraph.model.builder.PoseGraphBuilder`, the one
  place that validates user variables and turns data into an objective.
"""
