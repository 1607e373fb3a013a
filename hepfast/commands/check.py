"""`hepfast check [-c CONFIG]`: validate and compile a configuration, print the compiled rules.

Without -c it checks $HEPFAST_CONFIG, else the bundled default config (`hepfast config` prints
it). Environment overrides (HEPFAST_ADMIN_TOKEN, HEPFAST_NODE_NAME) are applied as `run` applies
them. Exit 0 when the configuration would run: `ok: FILE`, or `ok with warnings: FILE` after
`warning: ...` lines for a config that runs but cannot do what it is for (nothing forwarded
anywhere, destinations no rule uses). Otherwise `error: FILE: FIELD: message` on stderr and
exit 2 (the same checks `hepfast run` and a reload make, so a config that passes here loads).
"""
from __future__ import annotations

HELP = "validate a configuration and print its compiled rules (exit 2 on error)"
DESCRIPTION = __doc__


def add_arguments(p) -> None:
    p.add_argument("-c", "--config", metavar="CONFIG",
                   help="the TOML configuration file to check (default: $HEPFAST_CONFIG, else "
                        "the bundled default config)")


def config_warnings(cfg) -> list[str]:
    """What a valid config gets wrong for an operator: `field: message` strings."""
    out = []
    forwards = [f for r in cfg.rules for f in r.forward]
    if not forwards and cfg.switch.default == "drop":
        if cfg.rules:
            out.append("rules: no rule forwards anything and switch.default is \"drop\": every "
                       "packet is dropped. Add forward = [\"DEST\"] to a rule, or set "
                       "switch.default to a destination")
        else:
            out.append("rules: there are no rules and switch.default is \"drop\": every packet "
                       "is dropped. Add a [[rules]] table that forwards, or set switch.default "
                       "to a destination")
    used = set(forwards) | {cfg.switch.default}
    for name in cfg.destinations:
        if name not in used:
            out.append(f"destinations.{name}: no rule forwards to it (and it is not "
                       f"switch.default): it receives nothing")
    return out


def main(args) -> int:
    import sys

    from hepfast.cli import config_error_line, resolve_config
    from hepfast.config import ConfigError, load_config
    from hepfast.plan.compile import compile_config
    from hepfast.plan.describe import describe

    path, bundled = resolve_config(args.config)
    try:
        # implemented=True: unimplemented transports first, environment overrides applied.
        cfg = load_config(path, implemented=True)
        compiled = compile_config(cfg)
    except ConfigError as exc:
        print(config_error_line(path, exc), file=sys.stderr)
        return 2
    print(describe(compiled))
    warnings = config_warnings(cfg)
    for w in warnings:
        print(f"warning: {path}: {w}", file=sys.stderr)
    what = " (the bundled default config)" if bundled else ""
    print(f"ok{' with warnings' if warnings else ''}: {path}{what}")
    return 0
