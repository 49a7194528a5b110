"""The ``camkit`` command: ``camkit explain | evaluate | benchmark | train``.

Each subcommand is one module here (``camkit/cli/<name>.py``) registered the same way: its ``HELP``,
``DESCRIPTION``, ``EPILOG``, ``add_arguments(parser)`` and ``run(args)``. argparse lives only in this
package. A user error (:class:`camkit.cli.common.UsageError`, or a ``ValueError``, ``LookupError`` or
``OSError`` from the library, all of which name what to fix) prints one line on stderr and exits
with status 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from camkit.cli.common import Formatter, UsageError, model_epilog

__all__ = ["main", "build_parser", "COMMANDS"]

#: subcommand name -> module implementing it
COMMANDS = {"explain": "camkit.cli.explain", "evaluate": "camkit.cli.evaluate",
            "benchmark": "camkit.cli.benchmark", "train": "camkit.cli.train"}

MAIN_EPILOG = """\
examples:
  camkit explain photo.jpg --model efficientnet-lite0 --out out/
  camkit evaluate --model mobilenet_v2:weights.pth --data ../shared/assets/imagenet-val-dev50
  camkit benchmark --model mobilenet_v2:weights.pth --data ../shared/assets/imagenet-val-dev50 \\
      --layers features.6 features.13 features.18 --out bench/
  camkit train cam --data synthetic --backbone tiny --preset synthetic-cpu --out runs/cam

Run 'camkit SUBCOMMAND --help' for each subcommand's flags and examples.
"""

USER_ERRORS = (UsageError, ValueError, LookupError, OSError)


def build_parser() -> argparse.ArgumentParser:
    """The ``camkit`` parser with every subcommand of :data:`COMMANDS`."""
    from camkit._version import __version__

    parser = argparse.ArgumentParser(
        prog="camkit", formatter_class=Formatter, epilog=model_epilog(MAIN_EPILOG),
        description="Class activation maps for any PyTorch classifier: explain images, evaluate "
                    "localisation (wsolevaluation metrics), benchmark methods x layers, train WSOL recipes.")
    parser.add_argument("--version", action="version", version=f"camkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, formatter_class=Formatter, help=module.HELP,
                                  description=module.DESCRIPTION, epilog=module.EPILOG)
        module.add_arguments(sub)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                         help="show the full traceback of an error")
        sub.set_defaults(handler=module.run)
    return parser


def _one_line(error: BaseException) -> str:
    if isinstance(error, KeyError) and error.args and isinstance(error.args[0], str):
        return error.args[0]  # str(KeyError) is the repr of its message
    return str(error) or type(error).__name__


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``camkit`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "handler", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except USER_ERRORS as error:
        if args.debug:
            raise
        print(f"camkit {args.command}: error: {_one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"camkit {args.command}: interrupted", file=sys.stderr)
        return 130
