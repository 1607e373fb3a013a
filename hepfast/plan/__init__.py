"""The plan: a validated config compiled into flat tables for the data plane (compile), the
pure-Python oracle of the matcher (oracle), the human listing (describe)."""
from hepfast.plan.compile import (
    SUPPORTED_DESTINATION_TRANSPORTS,
    SUPPORTED_LISTENER_TRANSPORTS,
    Compiled,
    DestInfo,
    ListenerInfo,
    Target,
    compile_config,
)
from hepfast.plan.describe import describe
from hepfast.plan.oracle import (
    Route,
    listener_allows,
    match_rules,
    rewrite_plan,
    route,
    rule_matches,
    sample_keep,
    sample_key_hash,
    sip_info_of,
)
from hepfast.plan.tables import *  # noqa: F403 - key numbers, flags and table helpers

__all__ = [
    "Compiled", "DestInfo", "ListenerInfo", "Target", "compile_config", "describe", "Route",
    "listener_allows", "match_rules", "rewrite_plan", "route", "rule_matches", "sample_keep",
    "sample_key_hash", "sip_info_of", "SUPPORTED_DESTINATION_TRANSPORTS",
    "SUPPORTED_LISTENER_TRANSPORTS",
]
