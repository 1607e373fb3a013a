"""`hepfast` command line: one subcommand per module in hepfast/commands/.

Each command module defines HELP (one line), add_arguments(parser) and main(args) -> exit code.
Modules are imported when the parser is built, so they keep heavy imports inside main().
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ["run", "check", "decode", "replay", "sink", "top"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hepfast", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"hepfast.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"hepfast.commands.{name}":
                continue            # command not built yet
            raise
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
