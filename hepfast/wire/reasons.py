"""Reason codes: small integers in the data plane, names here (the metrics' `reason` labels).

INVALID_* are why a datagram was refused before routing (label of hepfast_packets_invalid_total);
DROP_* are why a valid packet was not forwarded (label of hepfast_packets_dropped_total).
The numbers of the first six match ext/wire/hepwire.pxd (HEP_OK .. HEP_VERSION).
"""

OK = 0
SHORT = 1
MAGIC = 2
LENGTH = 3
CHUNK = 4
VERSION = 5
AUTH = 6
ACL = 7

INVALID_NAMES = ["ok", "short", "magic", "length", "chunk", "version", "auth", "acl"]

DROP_RULE = 0
DROP_NO_ROUTE = 1
DROP_SAMPLE = 2
DROP_RATE_LIMIT = 3
DROP_QUEUE_FULL = 4
DROP_SEND_ERROR = 5

DROP_NAMES = ["rule", "no_route", "sample", "rate_limit", "queue_full", "send_error"]


def invalid_name(code: int) -> str:
    return INVALID_NAMES[code] if 0 <= code < len(INVALID_NAMES) else f"code{code}"
