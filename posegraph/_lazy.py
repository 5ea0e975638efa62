"""Names a package exports, imported on first use (PEP 562 module ``__getattr__``,
https://peps.python.org/pep-0562/).

``import posegraph`` then costs milliseconds instead of the ~2.5 s of loading torch, Theseus and
SciPy: a process that never solves — the ``posegraph batch`` client, ``posegraph --help`` —
never loads them, and a name that needs them loads them when it is first used.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Mapping, MutableMapping, Sequence, Tuple


def lazy_exports(
    package: str, exports: Mapping[str, Sequence[str]], namespace: MutableMapping[str, Any]
) -> Tuple[Callable[[str], Any], Callable[[], List[str]]]:
    """A package's ``__getattr__`` and ``__dir__``.

    Args:
        package: the package's ``__name__``.
        exports: ``{".module": [names it defines that the package exports]}``.
        namespace: the package's ``globals()``; a name is stored there once imported.

    The ``__getattr__`` gives an exported name from its module, or else the package's
    submodule of that name (``posegraph.mesh``, as an eager ``__init__`` would have made it an
    attribute); anything else is an ``AttributeError``. Errors importing an existing module
    (a missing dependency) are raised as they are.
    """
    where: Dict[str, str] = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is not None:
            value = getattr(importlib.import_module(module, package), name)
        elif name.startswith("__"):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        else:
            try:
                value = importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as err:
                if err.name != f"{package}.{name}":
                    raise
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        namespace[name] = value
        return value

    def __dir__() -> List[str]:
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__
