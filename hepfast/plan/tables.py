r"""Rule compilation: a validated `Config` into flat numpy tables for the data plane.

The Cython loop reads these tables through raw pointers (ext/plan/matcher.pxd: `rules_bind`,
`rule_match`); `match_rules` below is the pure-Python evaluator over the same tables, the oracle the
tests compare the compiled one against (ext/plan/_matcher.pyx `evaluate`).

Tables (R rules, K = NKEYS match keys; every array C-contiguous, read-only):
- `key_mask` uint32[R]: bit k set when rule r tests key k (keys enumerated below; the same
  constants are in ext/plan/matcher.pxd). A rule with mask 0 matches every packet.
- `key_start`, `key_count` int32[R, K]: the values of key k for rule r are rows
  key_start..key_start+key_count of `ranges` (numeric and string keys) or of `cidrs` (src_ip,
  dst_ip). AND across keys, OR inside one key.
- `ranges` uint64[N, 2]: inclusive (lo, hi). String keys are stored as (h, h) with h the FNV-1a
  64 hash (hepfast.wire.hashing.hash64, ext/wire/hepwire.pxd hep_hash64) of the raw bytes; sip_method and
  sip_ruri_domain are compared case-insensitively (ASCII letters folded to lower case on both
  sides: methods are upper case by convention and host names are case-insensitive), every other
  string exactly (Call-IDs, user parts, node names and correlation ids are case-sensitive).
  A 64-bit hash collision could make a string match that should not: odds ~ n/2^64, accepted.
- `cidrs` uint64[M, 4]: (net_hi, net_lo, mask_hi, mask_lo) over 128-bit addresses with IPv4 mapped
  into ::ffff:0:0/96, and `cidr_fam` uint8[M] (4 or 6): a row only matches an address of its own
  family, so "::/0" never takes IPv4 traffic and a v4 CIDR never matches an IPv6 packet (also not
  an IPv4-mapped IPv6 address: the packet's family decides).
- `flags` uint32[R]: DROP, CONTINUE, HAS_REWRITE, NEEDS_SIP (a sip_* key: the loop scans the SIP
  payload only for rules with it), HAS_SAMPLE.
- `fwd_start`, `fwd_count` int32[R] into `fwd` int32: destination indices (into `destinations`).
- `set_blob` uint8 with `set_off`, `set_len` int32[R]: the rule's `set` chunks pre-encoded by
  hepfast.wire.chunks.set_chunk, in config order, ready for hep_build_v3.
- `skip` uint32 with `skip_start`, `skip_count` int32[R]: chunk keys (vendor << 16 | type) to
  leave out when rewriting: the deleted keys plus the keys of the set chunks (set replaces), sorted.
- `sample` uint64[R]: with HAS_SAMPLE, a packet is kept when mix64(sample key) < sample[r].
- Globs (issue 14 A). A string value with an unescaped `*` or `?` is a glob
  (hepfast.config.values.parse_glob: `*` any run of bytes, `?` one byte, `\*` `\?` `\\`
  literals); the others stay exact hashes in `ranges`. `pat_start`, `pat_count` int32[R, K]: the
  globs of string key k of rule r are pat_off/pat_len rows i..i+n, each a slice of `pat_blob`
  uint16 (tokens: a literal byte 0..255, GLOB_ANY, GLOB_STAR; no two stars in a row; literals
  already lower case on folded keys). A string key matches when its value's hash is one of its
  exact rows or one of its globs matches the whole value (ext/plan/matcher.pxd glob_match:
  O(value length x longest segment), no allocation).
- Table-valued keys sip_header and correlation_id_field: key_start/key_count index `conds`
  int32[C, 7] rows (a, b, c, range start, range count, glob start, glob count), one per table,
  AND across them. sip_header: a, b = the lower-case full header name in `cond_blob` uint8, c =
  its compact letter (0: none); some occurrence of the header (full or compact name, any case)
  with a non-empty value must be in the row's value set (values case-sensitive). The header
  section is scanned only when such a rule is evaluated. correlation_id_field: a = separator
  byte, b = field index (0-based, negative from the end); the correlation id's field must be in
  the value set (a missing field does not match; an empty one is the value "").
- `sip_want` (scalar): SIP_WANT bits, the headers some rule reads (Call-ID, From, To, CSeq,
  User-Agent/Server); the scanner looks for no other (sip_scan_want).
- sip_cseq_method (folded like sip_method) is the method of the CSeq header, so a response
  matches by the request it answers; sip_user_agent is User-Agent, else Server.
- Guards (HAS_GUARD; hepfast.dataplane.guard, ext/dataplane/hepguard.h): `dedup_ms` uint32[R],
  the rule's dedup window (0: off); `rate` uint64[R, 4]: the packet rate's GCRA emission
  interval and tolerance (ns; 0: no limit), then the call rate's. Listeners carry their own
  dedup window (PlanListener.dedup_ms).

Which value a key reads: listener = index of the receiving listener; hep_version = 1/2/3;
ip_family = 4/6 (unknown: no match); src_ip/dst_ip = the address chunk of the packet's family;
proto_type, ip_proto, ports, capture_id, node_name, correlation_id = the chunk's value (last one if
repeated). A key whose chunk is absent does not match (absent is not zero, nor an empty string).
SIP keys read the scanned SIP summary (`sip_info` in C, a mapping in Python); without one they do
not match. sip_status of a request is 0, so it matches no status.

Evaluation (`match_rules`): rules in order; a rule whose keys all match takes the packet. A DROP
rule stops evaluation (packet dropped, reason "rule"). A HAS_SAMPLE rule that samples the packet
out takes it and stops (reason "sample"). Otherwise the packet goes to the rule's forwards, with
the rule's own set/delete applied to the copies it sends, and evaluation stops unless CONTINUE.
A packet no rule takes goes to `default_dest` (-1: dropped, reason "no_route").
A HAS_GUARD rule that takes a packet (after its sample) drops it as "duplicate" (a copy seen
within its window), "call_rate_limit" (a new call over rate_limit_calls, or a later packet of a
call refused so) or "rate_limit" (over rate_limit), in that order, and stops, as a sampling rule
does; a listener's dedup comes before every rule.

Destinations in mode = "hash" key on their call key (Destination.call_key, C dest_key, Python
oracle.dest_key_hash): call_id (default) = sample_key; correlation_id = the correlation id, else
the Call-ID; either optionally one field of it (call_key_separator, call_key_field; too few
fields: the whole value); src_ip / capture_id = the hash of those chunks' bytes; without a key
the flow. Sampling keys on `sample_key_hash` (C: sample_key): the hash of HepPacket.call_key() (C:
call_key_hash), the SIP Call-ID for SIP packets, else the correlation-id chunk; a packet without
a call key is sampled by its flow (addresses and ports), so a flow is kept or dropped whole. SIP summaries come from hepfast.wire.sip.sip_fields (`sip_info_of`); its text values
are UTF-8 decoded with replacement, so the oracle differs from C only on non-UTF-8 SIP fields.
"""
from __future__ import annotations

import ipaddress

from hepfast.wire.hashing import hash64

# Match keys, in table order, and rule flags: defined in hepfast/constants.py (the C side is
# generated from there).
from hepfast.constants import KEY, KEY_NAMES, NKEYS, RULE_FLAGS  # noqa: E402, F401
from hepfast.constants import (  # noqa: E402, F401
    CALL_KEY, CALL_KEY_NAMES, GLOB_ANY, GLOB_STAR, SIP_WANT)

LISTENER = KEY["listener"]
HEP_VERSION = KEY["hep_version"]
PROTO_TYPE = KEY["proto_type"]
IP_FAMILY = KEY["ip_family"]
IP_PROTO = KEY["ip_proto"]
SRC_IP = KEY["src_ip"]
DST_IP = KEY["dst_ip"]
SRC_PORT = KEY["src_port"]
DST_PORT = KEY["dst_port"]
CAPTURE_ID = KEY["capture_id"]
NODE_NAME = KEY["node_name"]
CORRELATION_ID = KEY["correlation_id"]
SIP_METHOD = KEY["sip_method"]
SIP_STATUS = KEY["sip_status"]
SIP_CALL_ID = KEY["sip_call_id"]
SIP_FROM_USER = KEY["sip_from_user"]
SIP_TO_USER = KEY["sip_to_user"]
SIP_RURI_USER = KEY["sip_ruri_user"]
SIP_RURI_DOMAIN = KEY["sip_ruri_domain"]
# issue 14 A
SIP_CSEQ_METHOD = KEY["sip_cseq_method"]
SIP_USER_AGENT = KEY["sip_user_agent"]
SIP_HEADER = KEY["sip_header"]
CORRELATION_ID_FIELD = KEY["correlation_id_field"]

CIDR_KEYS = frozenset((SRC_IP, DST_IP))
# String keys: exact values as hashes in `ranges`, globs in the pattern table.
HASH_KEYS = frozenset((NODE_NAME, CORRELATION_ID, SIP_METHOD, SIP_CALL_ID, SIP_FROM_USER,
                       SIP_TO_USER, SIP_RURI_USER, SIP_RURI_DOMAIN, SIP_CSEQ_METHOD,
                       SIP_USER_AGENT))
FOLDED_KEYS = frozenset((SIP_METHOD, SIP_RURI_DOMAIN, SIP_CSEQ_METHOD))
# Keys whose values are tables (`conds` rows), each with its own value set.
COND_KEYS = frozenset((SIP_HEADER, CORRELATION_ID_FIELD))
SIP_KEYS = frozenset(range(SIP_METHOD, SIP_RURI_DOMAIN + 1)) | {SIP_CSEQ_METHOD, SIP_USER_AGENT,
                                                                SIP_HEADER}
# The SIP summary field each SIP key reads: hepfast.wire.sip.sip_fields names (C: the sip_info
# members without the "sip_" prefix). sip_header reads the header section itself.
SIP_FIELD = {k: KEY_NAMES[k] for k in SIP_KEYS - {SIP_HEADER}}
# The headers the scanner must look for when a rule uses a key (the plan's `sip_want`).
SIP_WANT_OF = {SIP_CALL_ID: SIP_WANT["call_id"], SIP_FROM_USER: SIP_WANT["from"],
               SIP_TO_USER: SIP_WANT["to"], SIP_CSEQ_METHOD: SIP_WANT["cseq"],
               SIP_USER_AGENT: SIP_WANT["user_agent"]}

# Rule flags.
DROP = RULE_FLAGS["drop"]
CONTINUE = RULE_FLAGS["continue"]
HAS_REWRITE = RULE_FLAGS["has_rewrite"]
NEEDS_SIP = RULE_FLAGS["needs_sip"]
HAS_SAMPLE = RULE_FLAGS["has_sample"]
HAS_GUARD = RULE_FLAGS["has_guard"]

_MASK64 = (1 << 64) - 1
_V4_MAPPED_HI = 0
_V4_MAPPED_LO = 0x0000FFFF00000000


def hash_str(key: int, value: bytes) -> int:
    """The table hash of a string key's value (folded for case-insensitive keys)."""
    return hash64(value.lower() if key in FOLDED_KEYS else value)


def fold_tokens(key: int, toks: tuple[int, ...]) -> tuple[int, ...]:
    """A glob's tokens as stored for key (literals folded to lower case on folded keys)."""
    if key not in FOLDED_KEYS:
        return toks
    return tuple(t | 0x20 if 0x41 <= t <= 0x5A else t for t in toks)


def addr128(raw: bytes) -> tuple[int, int]:
    """(hi, lo) of a 4- or 16-byte address; IPv4 mapped into ::ffff:0:0/96."""
    if len(raw) == 4:
        return _V4_MAPPED_HI, _V4_MAPPED_LO | int.from_bytes(raw, "big")
    n = int.from_bytes(raw, "big")
    return n >> 64, n & _MASK64


def cidr_row(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int, int, int]:
    if net.version == 4:
        prefix = 96 + net.prefixlen
        hi, lo = addr128(net.network_address.packed)
    else:
        prefix = net.prefixlen
        hi, lo = addr128(net.network_address.packed)
    mask = ((1 << 128) - 1) ^ ((1 << (128 - prefix)) - 1)
    return hi, lo, mask >> 64, mask & _MASK64


def sample_threshold(fraction: float) -> int:
    return max(1, min(_MASK64, int(fraction * 2.0 ** 64)))
