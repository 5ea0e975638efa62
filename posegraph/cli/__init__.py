"""The ``posegraph`` command line (see docs/cli.md).

- :mod:`~posegraph.cli.main` — the entry point and the small commands (``inspect``, ``info``,
  ``eval``, ``plot``, ``batch``).
- :mod:`~posegraph.cli.optimize` — ``posegraph optimize`` (:func:`~posegraph.cli.optimize.optimize_file`).
- :mod:`~posegraph.cli.options` — every command's options, defined once.
- :mod:`~posegraph.cli.config` — YAML run configurations, validated against those options.
"""

from posegraph.cli.main import (
    main,
)

__all__ = [
    "main",
]
