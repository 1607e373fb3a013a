"""Reason codes: small integers in the data plane, names here (the metrics' `reason` labels).

INVALID_* are why a datagram was refused before routing (label of hepfast_packets_invalid_total);
DROP_* are why a valid packet, or one copy of it, was not forwarded (hepfast_packets_dropped_total).
Both lists are defined once, in hepfast/constants.py, which the C side is generated from.
"""
from hepfast.constants import DROP, DROP_NAMES, INVALID, INVALID_NAMES

OK = INVALID["ok"]
SHORT = INVALID["short"]
MAGIC = INVALID["magic"]
LENGTH = INVALID["length"]
CHUNK = INVALID["chunk"]
VERSION = INVALID["version"]
AUTH = INVALID["auth"]
ACL = INVALID["acl"]
CHUNKS = INVALID["chunks"]

DROP_RULE = DROP["rule"]
DROP_NO_ROUTE = DROP["no_route"]
DROP_SAMPLE = DROP["sample"]
DROP_RATE_LIMIT = DROP["rate_limit"]
DROP_QUEUE_FULL = DROP["queue_full"]
DROP_SEND_ERROR = DROP["send_error"]
DROP_TOO_BIG = DROP["too_big"]
DROP_UNCONVERTIBLE = DROP["unconvertible"]
DROP_DUPLICATE = DROP["duplicate"]

__all__ = ["INVALID_NAMES", "DROP_NAMES", "invalid_name"]


def invalid_name(code: int) -> str:
    return INVALID_NAMES[code] if 0 <= code < len(INVALID_NAMES) else f"code{code}"
