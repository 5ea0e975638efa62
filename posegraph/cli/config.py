"""YAML run configurations, validated by the same ``argparse`` definitions as the flags.

A configuration is a YAML mapping of option names to values, e.g. ``configs/default.yaml``::

    solver: lm
    max_iters: 100
    rel_tol: 1.0e-10

A *schema* is an :class:`argparse.ArgumentParser`: its options' ``dest`` names are the valid
keys (``max_iters``; the flag spelling ``max-iters`` is accepted too) and each value goes
through the option's own ``type`` and ``choices``. So every flag added to
``posegraph optimize`` is a configuration key at once, checked exactly as on the command line.
Two schemas are built in:

- ``"optimize"`` — the ``posegraph optimize`` sub-command (``posegraph optimize --config F``).
- ``"layer"`` — a batched, differentiable run (:func:`layer_parser`), for scripts around
  ``posegraph.PoseGraphLayer``; see ``configs/README.md``.

Errors are :class:`ConfigError` (a :class:`~posegraph.errors.PoseGraphError`) naming the file,
the line (from PyYAML's marks), the key, what was expected and what was received.

From Python::

    from posegraph.cli.config import load_config
    cfg = load_config("configs/batched_gpu.yaml", schema="layer")   # dict of dest -> value
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

from posegraph.errors import PoseGraphError, read_text_input
from posegraph.cli.options import _parser, int_at_least  # the CLI owns the optimize flags

PathLike = Union[str, "os.PathLike[str]"]
Schema = Union[str, argparse.ArgumentParser]

#: option dests that are never configuration keys (they select the configuration itself)
NOT_CONFIGURABLE = frozenset({"help", "config"})


class ConfigError(PoseGraphError):
    """A configuration file that cannot be used (syntax, unknown key, bad value)."""


# -- schemas ---------------------------------------------------------------------------------------


def subcommand_parser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """The sub-parser of sub-command ``name`` (e.g. ``"optimize"``) of ``parser``."""
    for action in parser._actions:  # argparse keeps sub-parsers only in this action
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    raise KeyError(f"no sub-command {name!r}")


_positive_int = int_at_least(1)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, received {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, received {text!r}")
    return value


def layer_parser() -> argparse.ArgumentParser:
    """Schema (and flags) of a batched run of :class:`~posegraph.PoseGraphLayer`: B noisy
    copies of one graph solved in one call (``configs/batched_gpu.yaml``, read by
    ``benchmarks/gpu_layer.py --config``).

    Scripts may use it directly: ``layer_parser().parse_args()`` gives the same options as
    flags, and :func:`parse_with_config` merges a file under them.
    """
    from posegraph.solve.layer import BACKWARD_MODES
    from posegraph.solve.optimize import LINEAR_SOLVERS

    p = argparse.ArgumentParser(
        prog="posegraph-layer", description="A batched differentiable pose-graph solve."
    )
    p.add_argument("--config", metavar="FILE.yaml", help="read options from this YAML file")
    p.add_argument("--input", metavar="FILE.g2o", help="the pose graph every batch element shares")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: cuda when available, else cpu")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    p.add_argument("--batch-size", type=_positive_int, default=32, metavar="B",
                   help="graphs solved together (noisy copies of the input)")
    p.add_argument("--solver", choices=["gn", "lm"], default="lm")
    p.add_argument("--max-iters", type=_positive_int, default=100, metavar="N")
    p.add_argument("--linear-solver", choices=list(LINEAR_SOLVERS), default="auto",
                   help="auto: CHOLMOD on CPU; on CUDA Theseus' compiled solver when built, else "
                        "batched dense Cholesky or conjugate gradients by size")
    p.add_argument("--backward-mode", choices=list(BACKWARD_MODES), default="implicit",
                   help="how gradients flow through the solve (Theseus' BackwardMode)")
    p.add_argument("--backward-num-iterations", type=_positive_int, default=5, metavar="K",
                   help="iterations differentiated with backward_mode truncated")
    p.add_argument("--translation-sigma", type=_positive_float, default=0.05,
                   help="std. dev. of the translation noise of the batch copies")
    p.add_argument("--rotation-sigma", type=_positive_float, default=0.005,
                   help="std. dev. (rad) of the rotation noise of the batch copies")
    p.add_argument("--seed", type=int, default=0)
    return p


def _schema_parser(schema: Schema) -> argparse.ArgumentParser:
    if isinstance(schema, argparse.ArgumentParser):
        return schema
    if schema == "optimize":
        return subcommand_parser(_parser(), "optimize")
    if schema == "layer":
        return layer_parser()
    raise ValueError(f"schema: expected 'optimize', 'layer' or an ArgumentParser, received {schema!r}")


def config_actions(parser: argparse.ArgumentParser) -> Dict[str, argparse.Action]:
    """Configuration keys of a parser: ``{dest: action}`` for every option and positional
    (help and ``--config`` excluded)."""
    return {
        a.dest: a
        for a in parser._actions
        if a.dest not in NOT_CONFIGURABLE and a.dest is not argparse.SUPPRESS
        and not isinstance(a, argparse._SubParsersAction)
    }


# -- reading -----------------------------------------------------------------------------------


def _read_yaml(path: str) -> Tuple[Dict[Any, Any], Dict[str, int]]:
    """The top-level mapping of a YAML file and the line of each key."""
    import yaml

    text = read_text_input(path, "configuration file", "a YAML configuration file", ConfigError)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"invalid YAML: {problem}", path, mark.line + 1 if mark else None) from None
    if data is None:
        return {}, {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"expected a mapping of option names to values, received a {type(data).__name__}",
            path, node.start_mark.line + 1 if node is not None else None,
        )
    lines: Dict[str, int] = {}
    for key_node, _ in node.value:  # YAML keeps the last of two equal keys: a silent choice
        line = key_node.start_mark.line + 1
        if str(key_node.value) in lines:
            raise ConfigError(
                f"{key_node.value}: given twice (lines {lines[str(key_node.value)]} and {line}): keep one", path, line
            )
        lines[str(key_node.value)] = line
    return data, lines


def _expected(action: argparse.Action) -> str:
    if action.choices is not None:
        return "one of " + ", ".join(map(str, action.choices))
    if action.nargs == 0:
        return "true or false"
    name = getattr(action.type, "__name__", "a string") if action.type else "a string"
    return {"int": "an integer", "float": "a number", "str": "a string"}.get(name, name.strip("_").replace("_", " "))


def _convert_one(action: argparse.Action, value: Any) -> Any:
    """One value through the action's ``type`` and ``choices`` (as argparse does for flags)."""
    if isinstance(value, (dict, list)) or value is None:
        raise argparse.ArgumentTypeError(f"received {value!r}")
    if isinstance(value, bool):
        raise argparse.ArgumentTypeError(
            f"received {value!r} (YAML reads yes/no/on/off/true/false as booleans: quote the value)"
        )
    text = value if isinstance(value, str) else str(value)
    converted = action.type(text) if callable(action.type) else text
    if action.choices is not None and converted not in action.choices:
        raise argparse.ArgumentTypeError(f"received {value!r}")
    return converted


def convert_value(action: argparse.Action, value: Any) -> Any:
    """A YAML value for ``action``: ``true``/``false`` for flags (true = the flag is given),
    a list (or one value) for multi-value and ``append`` options, else one value through the
    option's ``type``/``choices``. Raises ``ValueError`` (message: expected, received)."""
    try:
        if action.nargs == 0:  # store_true / store_false / store_const / count-like flags
            if not isinstance(value, bool):
                raise argparse.ArgumentTypeError(f"received {value!r}")
            if isinstance(action, argparse._StoreConstAction):  # includes store_true/false
                return action.const if value else action.default
            return value
        if action.nargs in ("*", "+") or isinstance(action.nargs, int) or isinstance(action, argparse._AppendAction):
            items = value if isinstance(value, list) else [value]
            if action.nargs == "+" and not items:
                raise argparse.ArgumentTypeError("received an empty list")
            return [_convert_one(action, v) for v in items]
        if value is None and action.default is None:  # "key: null" = the option not given
            return None
        return _convert_one(action, value)
    except (argparse.ArgumentTypeError, ValueError, TypeError) as err:
        msg = str(err)
        if "received" not in msg:
            msg = f"received {value!r}"
        if not msg.startswith("expected"):
            msg = f"expected {_expected(action)}, {msg[msg.index('received'):]}"
        raise ValueError(msg) from None


def validate_config(
    data: Mapping[Any, Any],
    schema: Schema = "optimize",
    path: Optional[str] = None,
    lines: Optional[Mapping[str, int]] = None,
) -> Dict[str, Any]:
    """Check and convert a configuration mapping: ``{dest: value}``.

    Keys may use the flag spelling (``max-iters``) or the dest (``max_iters``).

    Raises:
        ConfigError: unknown key (with the valid keys) or bad value (key, expected, received).
    """
    actions = config_actions(_schema_parser(schema))
    lines = lines or {}
    out: Dict[str, Any] = {}
    for key, value in data.items():
        dest = key.replace("-", "_") if isinstance(key, str) else key
        line = lines.get(str(key))
        if dest not in actions:
            valid = ", ".join(sorted(actions))
            raise ConfigError(f"unknown key {key!r}; valid keys: {valid}", path, line)
        if dest in out:
            raise ConfigError(f"key {key!r} given twice (as {dest!r})", path, line)
        try:
            out[dest] = convert_value(actions[dest], value)
        except ValueError as err:
            raise ConfigError(f"{key}: {err}", path, line) from None
    return out


def load_config(path: PathLike, schema: Schema = "optimize") -> Dict[str, Any]:
    """Read and validate a YAML configuration: ``{dest: value}`` with values converted by the
    schema's option types (see the module docstring)."""
    spath = os.fspath(path)
    data, lines = _read_yaml(spath)
    return validate_config(data, schema, spath, lines)


def parse_with_config(
    parser: argparse.ArgumentParser,
    argv: Optional[Sequence[str]] = None,
    schema: Optional[argparse.ArgumentParser] = None,
) -> argparse.Namespace:
    """Parse ``argv`` with ``parser``; when it gives ``--config FILE``, the file's values
    (validated against ``schema``, default ``parser``; for a sub-command pass its sub-parser)
    become the schema's defaults and ``argv`` is parsed again, so flags given on the command
    line win over the file. ``schema``'s defaults are changed in place.

    Raises:
        ConfigError: as :func:`load_config`.
    """
    args = parser.parse_args(argv)
    path = getattr(args, "config", None)
    if not path:
        return args
    target = schema or parser
    target.set_defaults(**load_config(path, target))
    return parser.parse_args(argv)


def resolve_device(name: str):
    """``"auto"`` → cuda when available, else cpu; ``"cpu"``/``"cuda"`` as given.

    Raises:
        ConfigError: ``cuda`` asked for but ``torch.cuda.is_available()`` is False.
    """
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device: expected an available CUDA device, received 'cuda' but torch.cuda.is_available() "
            f"is False (torch {torch.__version__}); use --device cpu or auto"
        )
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device: expected one of auto, cpu, cuda, received {name!r}")
    return torch.device(name)
