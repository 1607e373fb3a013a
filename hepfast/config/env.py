"""Environment overrides: the few settings a deployment sets per host rather than in the file.

- `HEPFAST_CONFIG`: the configuration file `hepfast run` and `hepfast check` use when no `-c` is
  given (`config_path`). Without it and without -c: the bundled default config.
- `HEPFAST_ADMIN_TOKEN`: the admin API bearer token; when set and not empty it replaces
  `admin.token` (so the secret can live in a root-only EnvironmentFile, not in the config).
- `HEPFAST_NODE_NAME`: a value for rules, used only where a `set` value is exactly the string
  "$HEPFAST_NODE_NAME" (or "${HEPFAST_NODE_NAME}"), e.g. `set.node_name = "$HEPFAST_NODE_NAME"`,
  so one config file serves every node. Nothing else is expanded; a rule that refers to the
  variable while it is unset or empty is a ConfigError naming the rule's key.

`apply_env_overrides(cfg)` returns a new Config (msgspec Structs are frozen) and is idempotent:
applying it twice gives the same result, so the loader and a command may both call it.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from hepfast.config.errors import ConfigError

ENV_CONFIG = "HEPFAST_CONFIG"
ENV_ADMIN_TOKEN = "HEPFAST_ADMIN_TOKEN"
ENV_NODE_NAME = "HEPFAST_NODE_NAME"
NODE_NAME_REFS = ("$" + ENV_NODE_NAME, "${" + ENV_NODE_NAME + "}")


def config_path(explicit: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """The config file to use: `-c` if given, else $HEPFAST_CONFIG, else None (bundled)."""
    env = os.environ if environ is None else environ
    return explicit or env.get(ENV_CONFIG) or None


def apply_env_overrides(cfg, environ: Mapping[str, str] | None = None):
    """cfg with HEPFAST_ADMIN_TOKEN and HEPFAST_NODE_NAME applied (see the module docstring)."""
    env = os.environ if environ is None else environ
    token = env.get(ENV_ADMIN_TOKEN, "")
    if token and token != cfg.admin.token:
        cfg = msgspec.structs.replace(cfg, admin=msgspec.structs.replace(cfg.admin, token=token))
    node = env.get(ENV_NODE_NAME, "")
    rules = list(cfg.rules)
    changed = False
    for i, rule in enumerate(rules):
        refs = [k for k, v in rule.set.items() if isinstance(v, str) and v in NODE_NAME_REFS]
        if not refs:
            continue
        if not node:
            raise ConfigError(f"rules[{i}].set.{refs[0]}",
                              f"refers to ${ENV_NODE_NAME}, which is not set: export it (e.g. "
                              f"in the service's environment file) or write the value")
        new_set = {k: (node if k in refs else v) for k, v in rule.set.items()}
        rules[i] = msgspec.structs.replace(rule, set=new_set)
        changed = True
    if changed:
        cfg = msgspec.structs.replace(cfg, rules=rules)
    return cfg
