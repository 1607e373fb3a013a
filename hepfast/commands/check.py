"""`hepfast check -c CONFIG`: validate and compile a configuration, print the compiled rules.

Exit 0 when the configuration would run; otherwise `error: FILE: FIELD: message` on stderr and
exit 2 (the same checks `hepfast run` and a reload make, so a config that passes here loads).
"""
from __future__ import annotations

HELP = "validate a configuration and print its compiled rules (exit 2 on error)"


def add_arguments(p) -> None:
    p.add_argument("-c", "--config", required=True, metavar="CONFIG",
                   help="the TOML configuration file to check")


def main(args) -> int:
    import sys

    from hepfast.config import ConfigError, load_config
    from hepfast.plan import compile_config, describe

    try:
        compiled = compile_config(load_config(args.config))
    except ConfigError as exc:
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 2
    print(describe(compiled))
    print(f"ok: {args.config}")
    return 0
