"""The ``vlkit`` command: ``vlkit run``, ``vlkit data ...``, ``vlkit eval ...``.

Each sub-command lives in its own module under :mod:`vlkit.commands` and exposes
``register(subparsers)``; this file only wires them together.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# One class for every module, also under ``python -m vlkit.cli``; importable from here as before.
from vlkit.errors import ServiceError, UserError

# Sub-command modules, in the order ``vlkit --help`` lists them.
COMMANDS = ("run", "data", "eval")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlkit", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        importlib.import_module(f"vlkit.commands.{name}").register(sub)
    return parser


def _one_line(e: BaseException) -> str:
    """An error's message on one line (a multi-line message's lines joined)."""
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    """Run a sub-command; bad input exits 2 and a failed service 1, each with one line, no traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError, PermissionError, ValueError) as e:
        print(f"vlkit {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except ServiceError as e:
        print(f"vlkit {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    # `python -m vlkit.cli` runs this file as __main__, a second copy of the module; run the
    # imported one, the module every sub-command sees.
    from vlkit.cli import main as _main
    sys.exit(_main())
