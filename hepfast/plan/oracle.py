"""The pure-Python evaluator over the plan's tables: the oracle the compiled matcher
(ext/plan/matcher.pxd, hepfast.plan._matcher.evaluate) is tested against. Semantics: see the
module docstring of hepfast.plan.tables."""
from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping
from typing import Any, NamedTuple

from hepfast.plan.compile import Compiled
from hepfast.plan.tables import (
    CAPTURE_ID,
    CALL_KEY,
    CIDR_KEYS,
    COND_KEYS,
    CONTINUE,
    CORRELATION_ID,
    CORRELATION_ID_FIELD,
    FOLDED_KEYS,
    GLOB_ANY,
    GLOB_STAR,
    HASH_KEYS,
    DROP,
    DST_IP,
    DST_PORT,
    HAS_SAMPLE,
    HEP_VERSION,
    IP_FAMILY,
    IP_PROTO,
    LISTENER,
    NKEYS,
    NODE_NAME,
    PROTO_TYPE,
    SIP_FIELD,
    SIP_HEADER,
    SIP_STATUS,
    SRC_IP,
    SRC_PORT,
    addr128,
    hash_str,
)
from hepfast.wire.hashing import hash64, mix64


def _sip_get(sip: Any, name: str):
    if sip is None:
        return None
    if isinstance(sip, Mapping):
        return sip.get(name)
    return getattr(sip, name, None)


def _key_value(k: int, pkt, listener_idx: int, sip) -> Any:
    """The packet's value for key k: an int, a (hi, lo, fam) address, or None when absent."""
    if k == LISTENER:
        return listener_idx
    if k == HEP_VERSION:
        return pkt.version
    if k == PROTO_TYPE:
        return pkt.proto_type
    if k == IP_FAMILY:
        return pkt.family if pkt.family in (4, 6) else None
    if k == IP_PROTO:
        return pkt.proto_id
    if k in (SRC_IP, DST_IP):
        raw = pkt.src_addr if k == SRC_IP else pkt.dst_addr
        if raw is None or pkt.family not in (4, 6) or len(raw) != (4 if pkt.family == 4 else 16):
            return None
        return (*addr128(raw), pkt.family)
    if k == SRC_PORT:
        return pkt.src_port
    if k == DST_PORT:
        return pkt.dst_port
    if k == CAPTURE_ID:
        return pkt.capture_id
    if k == NODE_NAME:
        return pkt.node_name_raw
    if k == CORRELATION_ID:
        return pkt.correlation_id_raw
    v = _sip_get(sip, SIP_FIELD[k])
    if k == SIP_STATUS:
        return int(v) if v else None
    if not v:
        return None
    if isinstance(v, str):
        v = v.encode()
    return bytes(v)


def rule_matches(c: Compiled, r: int, pkt, listener_idx: int, sip=None) -> bool:
    """Whether rule r's keys all match (actions and sampling aside)."""
    mask = int(c.key_mask[r])
    for k in range(NKEYS):
        if not mask & (1 << k):
            continue
        if k in COND_KEYS:
            s, n = int(c.key_start[r, k]), int(c.key_count[r, k])
            if not all(_cond_matches(c, k, c.conds[i], pkt, sip) for i in range(s, s + n)):
                return False
            continue
        v = _key_value(k, pkt, listener_idx, sip)
        if v is None:
            return False
        s, n = int(c.key_start[r, k]), int(c.key_count[r, k])
        if k in CIDR_KEYS:
            hi, lo, fam = v
            if not any(int(c.cidr_fam[i]) == fam
                       and hi & int(c.cidrs[i, 2]) == int(c.cidrs[i, 0])
                       and lo & int(c.cidrs[i, 3]) == int(c.cidrs[i, 1])
                       for i in range(s, s + n)):
                return False
        elif k in HASH_KEYS:
            if not _in_value_set(c, k, v, s, n, int(c.pat_start[r, k]), int(c.pat_count[r, k])):
                return False
        elif not any(int(c.ranges[i, 0]) <= v <= int(c.ranges[i, 1]) for i in range(s, s + n)):
            return False
    return True


# ---------------------------------------------------------------- patterns (issue 14 A)
# An independent reading of the same semantics: the pattern tokens become a regular expression
# (the C matcher walks them segment by segment instead).

@functools.lru_cache(maxsize=4096)
def _glob_regex(toks: tuple[int, ...]) -> re.Pattern:
    parts = [b".*" if t == GLOB_STAR else b"." if t == GLOB_ANY else re.escape(bytes([t]))
             for t in toks]
    return re.compile(b"".join(parts), re.DOTALL)


def glob_match(toks: tuple[int, ...], value: bytes) -> bool:
    """Whether a pattern's tokens (hepfast.config.values.parse_glob) match the whole value."""
    return _glob_regex(tuple(toks)).fullmatch(value) is not None


def _in_value_set(c: Compiled, k: int, v: bytes, rs: int, rn: int, ps: int, pn: int) -> bool:
    """Exact hashes ranges[rs:rs+rn] or globs ps..ps+pn of key k (folded keys: lower case)."""
    if k in FOLDED_KEYS:
        v = v.lower()
    h = hash_str(k, v)
    if any(int(c.ranges[i, 0]) == h for i in range(rs, rs + rn)):
        return True
    for i in range(ps, ps + pn):
        o, n = int(c.pat_off[i]), int(c.pat_len[i])
        if glob_match(tuple(int(t) for t in c.pat_blob[o:o + n]), v):
            return True
    return False


def select_field(value: bytes, sep: int, field: int) -> bytes | None:
    """Field `field` (0-based; negative from the end) of value split at byte sep, or None when
    it has fewer fields."""
    parts = value.split(bytes([sep]))
    if -len(parts) <= field < len(parts):
        return parts[field]
    return None


def _cond_matches(c: Compiled, k: int, row, pkt, sip) -> bool:
    a, b, cc, rs, rn, ps, pn = (int(x) for x in row)
    if k == CORRELATION_ID_FIELD:
        v = pkt.correlation_id_raw
        v = None if v is None else select_field(v, a, b)
        return v is not None and _in_value_set(c, k, v, rs, rn, ps, pn)
    assert k == SIP_HEADER
    if sip is None:
        return False
    from hepfast.wire.sip import header_values

    name = c.cond_blob[a:a + b].tobytes()
    return any(_in_value_set(c, k, v, rs, rn, ps, pn) for v in header_values(pkt.payload, name))


def dest_key_hash(pkt, kind: int, sep: int = 0, field: int = 0) -> int:
    """Twin of ext/plan/matcher.pxd dest_key: what mode = "hash" keys on for a destination with
    call_key `kind` (constants.CALL_KEY) and the split (sep byte, 0: none; field)."""
    from hepfast.wire.sip import call_id

    v = None
    if kind in (CALL_KEY["call_id"], CALL_KEY["correlation_id"]):
        cid = call_id(pkt.payload) if (pkt.proto_type == 1 and pkt.payload
                                       and not pkt.compressed) else None
        corr = pkt.correlation_id_raw or None
        v = (cid or corr) if kind == CALL_KEY["call_id"] else (corr or cid)
        if v is not None and sep:
            part = select_field(v, sep, field)
            v = v if part is None else part         # too few fields: the whole value
    elif kind == CALL_KEY["src_ip"]:
        raw = pkt.src_addr
        if raw is not None and pkt.family in (4, 6) and len(raw) == (4 if pkt.family == 4
                                                                     else 16):
            v = bytes(raw)
    elif kind == CALL_KEY["capture_id"]:
        if pkt.capture_id is not None:
            v = int(pkt.capture_id).to_bytes(4, "big")
    if v is None:
        return _flow_hash(pkt)
    return hash64(v)


def sip_info_of(pkt) -> dict | None:
    """The SIP summary the data plane would scan for this packet (hepfast.wire.sip.sip_fields, the
    twin of ext/wire/sipscan.pxd sip_scan), or None: not proto type SIP, no plain payload, not SIP."""
    if pkt.proto_type != 1 or not pkt.payload or pkt.compressed:
        return None
    from hepfast.wire.sip import sip_fields

    f = sip_fields(pkt.payload)
    return f if any(v is not None for v in f.values()) else None


def sample_key_hash(pkt) -> int:
    """Twin of ext/plan/matcher.pxd sample_key: the call key's hash, else a hash of the flow."""
    key = pkt.call_key()
    if key:
        return hash64(key)
    return _flow_hash(pkt)


def _flow_hash(pkt) -> int:
    """The hash of a packet's flow (addresses and ports): the key of a packet without one."""
    if pkt.family == 6:
        src, dst = pkt.chunk(0, 5) or bytes(16), pkt.chunk(0, 6) or bytes(16)
    else:
        src, dst = pkt.chunk(0, 3) or bytes(4), pkt.chunk(0, 4) or bytes(4)
    h = hash64(src) ^ mix64(hash64(dst))
    return mix64(h ^ (((pkt.src_port or 0) << 16) | (pkt.dst_port or 0)))


def sample_keep(c: Compiled, r: int, key_hash: int) -> bool:
    if not int(c.flags[r]) & HAS_SAMPLE:
        return True
    return mix64(key_hash) < int(c.sample[r])


def match_rules(c: Compiled, pkt, listener_idx: int, sip=None) -> list[int]:
    """Indices of the rules that take the packet, in order (see the module docstring): the last
    one decides a drop (DROP flag, or sampled out)."""
    taken = []
    for r in range(c.nrules):
        if not rule_matches(c, r, pkt, listener_idx, sip):
            continue
        taken.append(r)
        f = int(c.flags[r])
        if f & DROP:
            break
        if f & HAS_SAMPLE and not sample_keep(c, r, sample_key_hash(pkt)):
            break
        if not f & CONTINUE:
            break
    return taken


class Route(NamedTuple):
    rules: list[int]
    sends: list[tuple[int, int]]    # (rule index or -1 for the default, destination index)
    drop: str | None                # reasons.DROP_NAMES label when nothing is sent


def route(c: Compiled, pkt, listener_idx: int, sip=None) -> Route:
    """Where a packet goes: the rules that take it, each (rule, destination) copy, or why none."""
    taken = match_rules(c, pkt, listener_idx, sip)
    if not taken:
        if c.default_dest < 0:
            return Route([], [], "no_route")
        return Route([], [(-1, c.default_dest)], None)
    last = taken[-1]
    f = int(c.flags[last])
    sends = []
    for r in taken:
        if r == last and (f & DROP or (f & HAS_SAMPLE and not sample_keep(
                c, r, sample_key_hash(pkt)))):
            break
        s, n = int(c.fwd_start[r]), int(c.fwd_count[r])
        sends.extend((r, int(d)) for d in c.fwd[s:s + n])
    if sends:
        return Route(taken, sends, None)
    if f & DROP:
        return Route(taken, [], "rule")
    if f & HAS_SAMPLE and not sample_keep(c, last, sample_key_hash(pkt)):
        return Route(taken, [], "sample")
    return Route(taken, [], "no_route")


def listener_allows(c: Compiled, listener_idx: int, sender: str) -> bool:
    """Whether a listener's `allow` CIDRs admit a datagram from `sender` (the socket's source
    address, not the HEP src_ip chunk). Empty allow: everyone. An IPv4-mapped IPv6 sender (a
    dual-stack "[::]" socket receiving IPv4) counts as IPv4, so "10.0.0.0/8" admits it."""
    info = c.listeners[listener_idx]
    if len(info.allow_fam) == 0:
        return True
    a = ipaddress.ip_address(sender)
    if a.version == 6 and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    hi, lo = addr128(a.packed)
    return any(int(info.allow_fam[i]) == a.version
               and hi & int(info.allow[i, 2]) == int(info.allow[i, 0])
               and lo & int(info.allow[i, 3]) == int(info.allow[i, 1])
               for i in range(len(info.allow_fam)))


def rewrite_plan(c: Compiled, r: int) -> tuple[bytes, list[int]]:
    """(pre-encoded set chunks, skip keys) of rule r, as hepfast.wire.codec.rewrite's build_set."""
    o, n = int(c.set_off[r]), int(c.set_len[r])
    s, k = int(c.skip_start[r]), int(c.skip_count[r])
    return c.set_blob[o:o + n].tobytes(), [int(x) for x in c.skip[s:s + k]]
