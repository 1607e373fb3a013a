"""The pure-Python evaluator over the plan's tables: the oracle the compiled matcher
(ext/plan/matcher.pxd, hepfast.plan._matcher.evaluate) is tested against. Semantics: see the
module docstring of hepfast.plan.tables."""
from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any, NamedTuple

from hepfast.plan.compile import Compiled
from hepfast.plan.tables import (
    CAPTURE_ID,
    CIDR_KEYS,
    CONTINUE,
    CORRELATION_ID,
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
        return None if pkt.node_name_raw is None else hash_str(k, pkt.node_name_raw)
    if k == CORRELATION_ID:
        return None if pkt.correlation_id_raw is None else hash_str(k, pkt.correlation_id_raw)
    v = _sip_get(sip, SIP_FIELD[k])
    if k == SIP_STATUS:
        return int(v) if v else None
    if not v:
        return None
    if isinstance(v, str):
        v = v.encode()
    return hash_str(k, bytes(v))


def rule_matches(c: Compiled, r: int, pkt, listener_idx: int, sip=None) -> bool:
    """Whether rule r's keys all match (actions and sampling aside)."""
    mask = int(c.key_mask[r])
    for k in range(NKEYS):
        if not mask & (1 << k):
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
        elif not any(int(c.ranges[i, 0]) <= v <= int(c.ranges[i, 1]) for i in range(s, s + n)):
            return False
    return True


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
