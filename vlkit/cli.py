"""The ``vlkit`` command: ``vlkit run``, ``vlkit data ...``, ``vlkit eval ...``.

Each sub-command lives in its own module under :mod:`vlkit.commands` and exposes
``register(subparsers)``; this file only wires them together.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Sub-command modules, in the order ``vlkit --help`` lists them.
COMMANDS = ("run", "data", "eval")


class UserError(Exception):
    """Bad input from the user: printed as one clear line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"vlkit.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError, PermissionError, ValueError) as e:
        print(f"vlkit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    # `python -m vlkit.cli` runs this file as __main__, a second copy of the module; use the
    # imported one so that its UserError is the class the sub-commands raise.
    from vlkit.cli import main as _main
    sys.exit(_main())
