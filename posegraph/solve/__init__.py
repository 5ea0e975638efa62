"""Solving: linearization, linear solvers and the optimizer loop."""
