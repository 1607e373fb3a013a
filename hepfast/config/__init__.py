"""The hepfast configuration: TOML (design.md section 2, a contract) into frozen msgspec Structs.

`load_config(path)` / `parse_config(text)` return a `Config` or raise `ConfigError(path, message)`
whose `path` names the offending field the way an operator reads the file
(`rules[2].forward[0]`, `destinations.homer.targets[1]`, `switch.batch`) and whose message says
what is wrong and, where it helps, what is accepted.

Invariants:
- Unknown keys are errors at every level (`forbid_unknown_fields`): a typo never silently means
  "default".
- A `Config` that comes back is internally consistent: every name it refers to exists, every
  address, CIDR, range, proto type and chunk name parses. Match values are kept as written
  (scalars or lists); hepfast/plan/ normalises them with the helpers below, which are the
  single definition of what each value means (`parse_hostport`, `parse_cidr`, `parse_range`,
  `parse_proto_type`, ...). Validation calls the same helpers, so what passes here compiles.
- Transports that the switch does not implement yet (everything but udp) are valid here; they are
  refused by `hepfast.plan.compile_config` (and so by `hepfast check` and `hepfast run`).
"""
from hepfast.config.errors import ConfigError
from hepfast.config.load import (
    DEFAULT_CONFIG_PATH,
    from_dict,
    load_config,
    load_default,
    parse_config,
)
from hepfast.config.schema import (
    DESTINATION_TRANSPORTS,
    LISTENER_TRANSPORTS,
    MATCH_KEYS,
    MODES,
    NETWORK_TRANSPORTS,
    PATH_TRANSPORTS,
    Admin,
    Config,
    Destination,
    Listener,
    Match,
    Rule,
    Switch,
)
from hepfast.config.values import (
    as_list,
    parse_cidr,
    parse_hostport,
    parse_ip_proto,
    parse_proto_type,
    parse_range,
    parse_sip_status,
)

__all__ = [
    "Config", "ConfigError", "Switch", "Admin", "Listener", "Destination", "Rule", "Match",
    "load_config", "load_default", "DEFAULT_CONFIG_PATH", "parse_config", "from_dict",
    "parse_hostport", "parse_cidr", "parse_range", "parse_proto_type", "parse_ip_proto",
    "parse_sip_status", "as_list", "MATCH_KEYS", "LISTENER_TRANSPORTS",
    "DESTINATION_TRANSPORTS", "MODES", "NETWORK_TRANSPORTS", "PATH_TRANSPORTS",
]
