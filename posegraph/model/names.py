"""Names of the elements of vectorized costs (``EDGE_SE3:QUAT 12 13``, a point, a mesh vertex)
and filters over them (globs or ``re:`` patterns), as the debug reports and traces print them.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Callable, List, Mapping, Optional, Sequence, Union
import theseus as th


NamePattern = Union[None, str, "re.Pattern[str]", Sequence[Union[str, "re.Pattern[str]"]]]


class ElementNames:
    """Names of the elements of packed variables (:class:`ManifoldArray`) for reports.

    Args:
        names: ``{variable name: [name of element 0, name of element 1, …]}``; elements of
            other variables are called ``"VAR[k]"`` (``k`` the element index).
    """

    def __init__(self, names: Optional[Mapping[str, Sequence[str]]] = None):
        self._names = {k: list(v) for k, v in (names or {}).items()}

    @classmethod
    def for_problem(cls, problem: Any) -> "ElementNames":
        """Pose names of a :class:`~posegraph.model.problem.PoseGraphProblem`: the user's pose
        variable names (builder path) or ``"VERTEX_SE3:QUAT <id>"`` (g2o graphs)."""
        var = problem.poses
        if problem.pose_variables is not None:
            names = [v.name for v in problem.pose_variables]
        else:
            tag = "VERTEX_SE3:QUAT" if problem.kind == "SE3" else "VERTEX_SE2"
            names = [f"{tag} {int(i)}" for i in problem.ids.tolist()]
        return cls({var.name: names})

    def __call__(self, var: th.Variable, element: int) -> str:
        names = self._names.get(var.name)
        if names is not None and 0 <= element < len(names):
            return names[element]
        return f"{var.name}[{element}]"


class NameFilter:
    """Which cost functions / residual blocks get per-cost records.

    ``None`` selects all. A string is an ``fnmatch`` glob (case-sensitive, e.g.
    ``"EDGE_SE3:QUAT 12 *"``) unless it starts with ``"re:"`` (a regular expression, searched);
    a compiled ``re.Pattern`` is searched; a sequence selects what any of its items selects.
    A block is selected when its own name or its cost function's name matches.
    """

    def __init__(self, pattern: NamePattern = None):
        self.pattern = pattern
        items: List[Union[str, "re.Pattern[str]"]]
        if pattern is None:
            items = []
        elif isinstance(pattern, (str, re.Pattern)):
            items = [pattern]
        else:
            items = list(pattern)
        self._tests: List[Callable[[str], bool]] = [self._compile(p) for p in items]

    @staticmethod
    def _compile(p: Union[str, "re.Pattern[str]"]) -> Callable[[str], bool]:
        if isinstance(p, re.Pattern):
            return lambda name: p.search(name) is not None
        if not isinstance(p, str):
            raise TypeError(f"name pattern: expected a str or re.Pattern, received {type(p).__name__}")
        if p.startswith("re:"):
            rx = re.compile(p[3:])
            return lambda name: rx.search(name) is not None
        return lambda name: fnmatch.fnmatchcase(name, p)

    @property
    def selects_all(self) -> bool:
        """Whether the filter selects every name (no pattern given)."""
        return not self._tests

    def __call__(self, *names: str) -> bool:
        if not self._tests:
            return True
        return any(t(n) for t in self._tests for n in names)

    def describe(self) -> Optional[Union[str, List[str]]]:
        """The pattern as given, for a trace file: ``None`` (all), one string or a list (regular expressions as ``re:PATTERN``)."""
        if self.pattern is None:
            return None
        items = [self.pattern] if isinstance(self.pattern, (str, re.Pattern)) else self.pattern
        out = [f"re:{p.pattern}" if isinstance(p, re.Pattern) else str(p) for p in items]
        return out[0] if len(out) == 1 else out
