"""The ``vidadapt`` command line. Each subcommand is one module in ``vidadapt.commands`` that
defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``; list it here."""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import Interrupted, UserError

INTERRUPTED = 130  # the shell's exit status for a process stopped by Ctrl-C (SIGINT)

COMMANDS = [
    "info",
    "demo",
    "check_data",
    "make_synthetic",
    "train",
    "eval",
    "base_to_new",
    "predict",
    "export",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vidadapt",
        description="Parameter-efficient image-to-video transfer learning.",
    )
    parser.add_argument("--version", action="version", version=f"vidadapt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in COMMANDS:
        module = importlib.import_module(f"vidadapt.commands.{module_name}")
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "run"):
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except Interrupted as err:
        print(f"vidadapt {args.command}: {err}", file=sys.stderr)
        return INTERRUPTED
    except KeyboardInterrupt:
        print(f"vidadapt {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except UserError as err:
        print(f"vidadapt {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
