"""Names of the elements of vectorized costs (``EDGE_SE3:QUAT 12 13``, a point, a mesh vertex)
and filters over them (globs or ``re:`` patterns), as the debug reports and traces print them.
"""

from __future__ import annotations

import fnmatch
import re
from typing import TYPE_CHECKING, Any, Callable, List, Mapping, Optional, Sequence, Union

from posegraph.errors import PoseGraphError, shown

if TYPE_CHECKING:  # only for annotations: checking a pattern (the CLI's parser) loads no Theseus
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


class NamePatternError(PoseGraphError):
    """A name pattern that cannot select anything: ``re:`` followed by an invalid regular
    expression. A ``ValueError``, as the debug callback's other option errors.

    Attributes:
        pattern: the pattern as given (``"re:…"``).
        detail: what is wrong, without the ``name pattern:`` prefix (the CLI prefixes the
            option's name instead).
    """

    def __init__(self, pattern: str, reason: str):
        self.pattern = pattern
        self.detail = f"expected a regular expression after 're:', received {shown(pattern)} ({reason})"
        super().__init__(f"name pattern: {self.detail}")


class NameFilter:
    """Which cost functions / residual blocks get per-cost records.

    ``None`` selects all. A string is an ``fnmatch`` glob (case-sensitive, e.g.
    ``"EDGE_SE3:QUAT 12 *"``) unless it starts with ``"re:"`` (a regular expression, searched);
    a compiled ``re.Pattern`` is searched; a sequence selects what any of its items selects.
    A block is selected when its own name or its cost function's name matches.

    Raises:
        NamePatternError: a ``re:`` pattern that is not a valid regular expression.
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
            try:
                rx = re.compile(p[3:])
            except re.error as err:
                raise NamePatternError(p, str(err)) from None
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
