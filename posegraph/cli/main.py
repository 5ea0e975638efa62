"""``posegraph`` command line: ``optimize``, ``inspect``, ``info``, ``eval``, ``plot``
(see docs/cli.md).

``posegraph optimize --config FILE.yaml`` reads options from a YAML file (keys are the
option names, :mod:`posegraph.cli.config`); flags given on the command line win over the file.

Bad input never gives a traceback: one line ``error: FILE:LINE: what is wrong`` on stderr and
exit status 2 (1 when the optimization itself fails); no output file is written then.
Warnings (``warning: …`` lines) are held back while a command runs and printed only when it
succeeds, so that a refusal is exactly one line. ``--json`` output is always valid JSON: a
non-finite number is printed as ``null`` with a note in the object's ``"notes"`` list.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from typing import List, Optional

from posegraph.errors import PoseGraphError
from posegraph.cli.options import _parser
from posegraph.cli.optimize import EXIT_BAD_INPUT, EXIT_OK, _json, _setup_warnings, cmd_optimize, error_line


def cmd_inspect(args: argparse.Namespace) -> int:
    """``posegraph inspect``: print a debug trace written by ``optimize --debug``."""
    from posegraph.debug.inspect_trace import run_inspect

    return run_inspect(args.trace, out=sys.stdout, top=args.top)


def cmd_info(args: argparse.Namespace) -> int:
    """``posegraph info``: counts, components, information summary and initial χ² of a g2o file."""
    from posegraph.report.info import format_info, graph_info
    from posegraph.io import read_g2o

    info = graph_info(read_g2o(args.input, repair_information=args.repair_information))
    sys.stdout.write(_json(info) if args.json else format_info(info) + "\n")
    return EXIT_OK


def cmd_eval(args: argparse.Namespace) -> int:
    """``posegraph eval``: ATE and RPE of an estimate against ground truth (g2o, TUM or KITTI)."""
    from posegraph.report.eval import evaluate_files, format_evaluation

    result = evaluate_files(args.estimate, args.gt, align=args.align, estimate_format=args.format,
                            truth_format=args.gt_format, max_diff=args.t_max_diff)
    sys.stdout.write(_json(result) if args.json else format_evaluation(result) + "\n")
    return EXIT_OK


def cmd_plot(args: argparse.Namespace) -> int:
    """``posegraph plot``: trajectory and error-history figures."""
    from posegraph.report.plot import plot_files

    plot_files(args.input, args.optimized, args.output, trace=args.trace, size=args.size, dpi=args.dpi,
               overwrite_input=args.overwrite_input, file_format=args.format)
    return EXIT_OK


def cmd_batch(args: argparse.Namespace) -> int:
    """``posegraph batch`` (:mod:`posegraph.batch`)."""
    from posegraph.batch.driver import cmd_batch as run_batch

    return run_batch(args)


COMMANDS = {"optimize": cmd_optimize, "batch": cmd_batch, "inspect": cmd_inspect, "info": cmd_info, "eval": cmd_eval, "plot": cmd_plot}


def _parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    """Parse the command line; ``--config FILE`` values become the sub-command's defaults, so
    flags win over the file (:func:`posegraph.cli.config.parse_with_config`)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None):
        from posegraph.cli.config import parse_with_config, subcommand_parser

        args = parse_with_config(parser, argv, subcommand_parser(parser, args.command))
    return args


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``posegraph`` console script."""
    try:
        args = _parse_args(argv)
    except PoseGraphError as err:  # a bad --config file
        sys.stderr.write(f"error: {err}\n")
        return EXIT_BAD_INPUT
    previous = warnings.showwarning
    held = _setup_warnings(getattr(args, "quiet", False))
    try:
        code = _run(args)
        if code == EXIT_OK:
            held.flush()
        return code
    finally:
        warnings.showwarning = previous


def _run(args: argparse.Namespace) -> int:
    """Run the command; every failure becomes one ``error:`` line and an exit status."""
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI never shows a traceback
        code, line = error_line(err, getattr(args, "input", ""))
        sys.stderr.write(f"error: {line}\n")
        return code


if __name__ == "__main__":
    sys.exit(main())
