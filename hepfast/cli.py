"""`hepfast` command line: one subcommand per module in hepfast/commands/.

Each command module defines HELP (one line), add_arguments(parser) and main(args) -> exit code.
Modules are imported when the parser is built, so they keep heavy imports inside main(). This
module also holds what several commands share: how a configuration error is reported
(`config_error_line`), and which config file a command uses (`resolve_config`).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMANDS = ["run", "check", "config", "decode", "replay", "sink", "top"]

DESCRIPTION = """\
hepfast receives HEP (v1, v2, v3) from capture agents (Kamailio/OpenSIPS siptrace, captagent,
heplify, rtpengine, FreeSWITCH), filters and splits it by type, fans it out to collectors with
call affinity, rewrites chunks and converts between HEPv2 and HEPv3, as configured in one TOML
file."""

EPILOG = """\
getting started:
  hepfast config > hepfast.toml      write the bundled example configuration to start from
  hepfast check -c hepfast.toml      validate it; prints the compiled rules, or the key at fault
  hepfast run -c hepfast.toml        run the switch (SIGHUP or POST /reload reloads, SIGTERM stops)
  hepfast top                        live rates, drops and target health of a running switch

environment:
  HEPFAST_CONFIG       config file for run and check when -c is not given
  HEPFAST_ADMIN_TOKEN  admin API bearer token (replaces admin.token)
  HEPFAST_NODE_NAME    value of set.KEY = "$HEPFAST_NODE_NAME" in rules

documentation: docs/ in the source tree (configuration, metrics, operations, OpenSIPS
migration); `hepfast COMMAND --help` for each command."""


def version_text() -> str:
    from hepfast import __version__

    try:
        from hepfast.wire import codec

        impl = codec.IMPL
    except ImportError:
        impl = "not built"
    return (f"hepfast {__version__} (codec: {impl}, Python "
            f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro})")


class _VersionAction(argparse.Action):
    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="print the version and exit"):
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0,
                         help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hepfast", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-V", "--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"hepfast.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"hepfast.commands.{name}":
                continue            # command not built yet
            raise
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", mod.HELP),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_main=mod.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help(sys.stderr)
        print("\nhepfast: name a command, e.g. `hepfast run -c FILE` (see above)",
              file=sys.stderr)
        return 2
    try:
        return int(args._main(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


# ---------------------------------------------------------------------- shared by commands

def resolve_config(explicit: str | None) -> tuple[str, bool]:
    """(path, bundled) of the config a command uses: -c, else $HEPFAST_CONFIG, else the bundled
    default (bundled=True)."""
    from hepfast.config import DEFAULT_CONFIG_PATH
    from hepfast.config.env import config_path

    path = config_path(explicit)
    if path:
        return path, False
    return os.fspath(DEFAULT_CONFIG_PATH), True


def config_error_line(source: str | os.PathLike | None, exc: Exception) -> str:
    """`error: FILE: FIELD: message` for a ConfigError, with the file named exactly once (the
    loader puts it into some messages already: unreadable files, TOML syntax errors)."""
    src = os.fspath(source) if source is not None else "<config>"
    msg = str(exc)
    for prefix in (f"{src}: ", f"{src!r}: ", f"{src!r} "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    msg = msg.replace(f" {src!r}", "")
    return f"error: {src}: {msg}"


if __name__ == "__main__":
    sys.exit(main())
