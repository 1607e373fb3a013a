"""The plan: a validated config compiled into flat tables for the data plane.

- `compile`: config -> Compiled tables (DNS resolved, limits checked); `emit`: tables + counter
  slots -> the plan file's contents; `format`: the plan file, which workers map read-only.
- `tables`: the table layout and key numbers; `oracle`: the pure-Python matcher the compiled one
  (ext/plan/matcher.pxd) is tested against; `describe`: the listing `hepfast check` prints.

Names are loaded on first use (PEP 562), so `import hepfast.plan.format` in a worker does not pull
in the config module or the TOML parser.
"""
from __future__ import annotations

import importlib

_HOME = {
    "compile": ("Compiled", "DestInfo", "ListenerInfo", "Target", "compile_config",
                "compile_text", "check_limits", "SUPPORTED_DESTINATION_TRANSPORTS",
                "SUPPORTED_LISTENER_TRANSPORTS", "RING_TRANSPORTS"),
    "describe": ("describe",),
    "oracle": ("Route", "listener_allows", "match_rules", "rewrite_plan", "route",
               "rule_matches", "sample_keep", "sample_key_hash", "sip_info_of"),
}
_WHERE = {name: mod for mod, names in _HOME.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        tables = importlib.import_module("hepfast.plan.tables")
        if hasattr(tables, name):
            return getattr(tables, name)
        raise AttributeError(f"module 'hepfast.plan' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hepfast.plan.{mod}"), name)
