"""Rule compilation: a validated `Config` into flat numpy tables for the data plane.

The Cython loop reads these tables through raw pointers (ext/rules.pxd: `rules_bind`,
`rule_match`); `match_rules` below is the pure-Python evaluator over the same tables, the oracle the
tests compare the compiled one against (ext/_rules.pyx `evaluate`).

Tables (R rules, K = NKEYS match keys; every array C-contiguous, read-only):
- `key_mask` uint32[R]: bit k set when rule r tests key k (keys enumerated below; the same
  constants are in ext/rules.pxd). A rule with mask 0 matches every packet.
- `key_start`, `key_count` int32[R, K]: the values of key k for rule r are rows
  key_start..key_start+key_count of `ranges` (numeric and string keys) or of `cidrs` (src_ip,
  dst_ip). AND across keys, OR inside one key.
- `ranges` uint64[N, 2]: inclusive (lo, hi). String keys are stored as (h, h) with h the FNV-1a
  64 hash (hepfast.hashing.hash64, ext/hepwire.pxd hep_hash64) of the raw bytes; sip_method and
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
  hepfast.chunks.set_chunk, in config order, ready for hep_build_v3.
- `skip` uint32 with `skip_start`, `skip_count` int32[R]: chunk keys (vendor << 16 | type) to
  leave out when rewriting: the deleted keys plus the keys of the set chunks (set replaces), sorted.
- `sample` uint64[R]: with HAS_SAMPLE, a packet is kept when mix64(sample key) < sample[r].

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

Sampling keys on `sample_key_hash` (C: sample_key): the hash of HepPacket.call_key() (C:
call_key_hash), the SIP Call-ID for SIP packets, else the correlation-id chunk; a packet without
a call key is sampled by its flow (addresses and ports), so a flow is kept or dropped whole. SIP summaries come from hepfast.sip.sip_fields (`sip_info_of`); its text values
are UTF-8 decoded with replacement, so the oracle differs from C only on non-UTF-8 SIP fields.
"""
from __future__ import annotations

import hashlib
import ipaddress
import itertools
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgspec
import numpy as np

from hepfast import chunks
from hepfast.config import (
    Config,
    MATCH_KEYS,
    ConfigError,
    as_list,
    parse_cidr,
    parse_hostport,
    parse_ip_proto,
    parse_proto_type,
    parse_range,
    parse_sip_status,
)
from hepfast.hashing import hash64, mix64

# Match keys, in table order (ext/rules.pxd repeats these numbers: keep them in step).
LISTENER = 0
HEP_VERSION = 1
PROTO_TYPE = 2
IP_FAMILY = 3
IP_PROTO = 4
SRC_IP = 5
DST_IP = 6
SRC_PORT = 7
DST_PORT = 8
CAPTURE_ID = 9
NODE_NAME = 10
CORRELATION_ID = 11
SIP_METHOD = 12
SIP_STATUS = 13
SIP_CALL_ID = 14
SIP_FROM_USER = 15
SIP_TO_USER = 16
SIP_RURI_USER = 17
SIP_RURI_DOMAIN = 18
NKEYS = 19

KEY_NAMES = (
    "listener", "hep_version", "proto_type", "ip_family", "ip_proto", "src_ip", "dst_ip",
    "src_port", "dst_port", "capture_id", "node_name", "correlation_id", "sip_method",
    "sip_status", "sip_call_id", "sip_from_user", "sip_to_user", "sip_ruri_user",
    "sip_ruri_domain",
)
CIDR_KEYS = frozenset((SRC_IP, DST_IP))
HASH_KEYS = frozenset((NODE_NAME, CORRELATION_ID, SIP_METHOD, SIP_CALL_ID, SIP_FROM_USER,
                       SIP_TO_USER, SIP_RURI_USER, SIP_RURI_DOMAIN))
FOLDED_KEYS = frozenset((SIP_METHOD, SIP_RURI_DOMAIN))
SIP_KEYS = frozenset(range(SIP_METHOD, SIP_RURI_DOMAIN + 1))
# The SIP summary field each SIP key reads (C: sip_info member of the same name).
# The SIP summary field each SIP key reads: hepfast.sip.sip_fields names (C: the sip_info
# members without the "sip_" prefix).
SIP_FIELD = {k: KEY_NAMES[k] for k in SIP_KEYS}

# Rule flags (ext/rules.pxd: RF_*).
DROP = 1
CONTINUE = 2
HAS_REWRITE = 4
NEEDS_SIP = 8
HAS_SAMPLE = 16

# Transports the switch implements today; the schema accepts more (hepfast/config.py).
SUPPORTED_LISTENER_TRANSPORTS = ("udp",)
SUPPORTED_DESTINATION_TRANSPORTS = ("udp",)

_MASK64 = (1 << 64) - 1
_V4_MAPPED_HI = 0
_V4_MAPPED_LO = 0x0000FFFF00000000
_generation = itertools.count(1)

assert KEY_NAMES == MATCH_KEYS, "match key order drifted from hepfast.config.Match"


class Target(NamedTuple):
    host: str           # as resolved: an IP literal
    port: int
    family: int         # socket.AF_INET or socket.AF_INET6
    configured: str     # as written in the config ("homer1.example:9060")
    seed: int           # rendezvous identity: hashing.target_seed of the configured host/port


class DestInfo(NamedTuple):
    name: str
    mode: str
    hep_version: int
    transport: str
    targets: tuple[Target, ...]
    path: str | None
    dsn: str | None


class ListenerInfo(NamedTuple):
    name: str
    host: str
    port: int
    family: int
    transport: str
    auth_key: bytes         # b"": no auth check
    allow: np.ndarray       # uint64[n, 4] CIDR rows of allowed senders (socket source address),
                            # laid out as `cidrs`; n == 0: everyone
    allow_fam: np.ndarray   # uint8[n]: 4 or 6, as cidr_fam (a v4-mapped sender counts as 4)


@dataclass(frozen=True, eq=False)
class Compiled:
    nrules: int
    rule_names: tuple[str, ...]
    key_mask: np.ndarray
    key_start: np.ndarray
    key_count: np.ndarray
    ranges: np.ndarray
    cidrs: np.ndarray
    cidr_fam: np.ndarray
    flags: np.ndarray
    fwd_start: np.ndarray
    fwd_count: np.ndarray
    fwd: np.ndarray
    set_blob: np.ndarray
    set_off: np.ndarray
    set_len: np.ndarray
    skip: np.ndarray
    skip_start: np.ndarray
    skip_count: np.ndarray
    sample: np.ndarray
    needs_sip: bool             # some rule has a sip_* key
    needs_call_key: bool        # some rule samples
    destinations: tuple[DestInfo, ...]
    default_dest: int           # index into destinations, -1: drop
    listeners: tuple[ListenerInfo, ...]
    batch: int
    workers: int
    admin_listen: tuple[str, int]
    generation: int             # increases with every compile in this process
    digest: str                 # sha256 of the canonical config (comments/layout do not count)
    config: Config

    def dest_index(self, name: str) -> int:
        for i, d in enumerate(self.destinations):
            if d.name == name:
                return i
        raise KeyError(name)


# ---------------------------------------------------------------- helpers shared with the tests

def hash_str(key: int, value: bytes) -> int:
    """The table hash of a string key's value (folded for case-insensitive keys)."""
    return hash64(value.lower() if key in FOLDED_KEYS else value)


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


def _resolve(host: str, port: int, path: str, kind: int) -> tuple[str, int]:
    try:
        ip = ipaddress.ip_address(host)
        return str(ip), socket.AF_INET if ip.version == 4 else socket.AF_INET6
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=kind)
    except OSError as exc:
        raise ConfigError(path, f"cannot resolve {host!r}: {exc}; use an IP address or fix DNS") from None
    # Prefer IPv4 when a name has both, for predictable behaviour on dual-stack hosts.
    infos.sort(key=lambda i: 0 if i[0] == socket.AF_INET else 1)
    return infos[0][4][0], int(infos[0][0])


# ---------------------------------------------------------------- compiling

def compile_config(cfg: Config) -> Compiled:
    """Compile a validated Config. Raises ConfigError for what validation cannot know: transports
    the switch does not implement yet, and host names that do not resolve."""
    for i, lst in enumerate(cfg.listeners):
        if lst.transport not in SUPPORTED_LISTENER_TRANSPORTS:
            raise ConfigError(f"listeners[{i}].transport",
                              f"transport {lst.transport} is not supported yet (this version "
                              f"listens on: {', '.join(SUPPORTED_LISTENER_TRANSPORTS)})")
    for name, d in cfg.destinations.items():
        if d.transport not in SUPPORTED_DESTINATION_TRANSPORTS:
            raise ConfigError(f"destinations.{name}.transport",
                              f"transport {d.transport} is not supported yet (this version sends "
                              f"with: {', '.join(SUPPORTED_DESTINATION_TRANSPORTS)})")

    from hepfast.hashing import target_seed

    dests = []
    for name, d in cfg.destinations.items():
        targets = []
        for j, t in enumerate(d.targets):
            host, port = parse_hostport(t)
            rhost, fam = _resolve(host, port, f"destinations.{name}.targets[{j}]",
                                  socket.SOCK_DGRAM)
            targets.append(Target(rhost, port, fam, t, target_seed(host, port)))
        dests.append(DestInfo(name, d.mode, d.hep_version, d.transport, tuple(targets),
                              d.path, d.dsn))
    dest_idx = {d.name: i for i, d in enumerate(dests)}
    listeners = []
    for i, lst in enumerate(cfg.listeners):
        host, port = parse_hostport(lst.listen, allow_zero=True)
        rhost, fam = _resolve(host, port, f"listeners[{i}].listen", socket.SOCK_DGRAM)
        rows = [cidr_row(parse_cidr(c)) for c in lst.allow]
        fams = [parse_cidr(c).version for c in lst.allow]
        listeners.append(ListenerInfo(
            lst.name, rhost, port, fam, lst.transport, lst.auth_key.encode(),
            _ro(np.array(rows, dtype=np.uint64).reshape(len(rows), 4)),
            _ro(np.array(fams, dtype=np.uint8))))
    lst_idx = {lst.name: i for i, lst in enumerate(cfg.listeners)}

    R = len(cfg.rules)
    key_mask = np.zeros(R, np.uint32)
    key_start = np.zeros((R, NKEYS), np.int32)
    key_count = np.zeros((R, NKEYS), np.int32)
    flags = np.zeros(R, np.uint32)
    fwd_start = np.zeros(R, np.int32)
    fwd_count = np.zeros(R, np.int32)
    set_off = np.zeros(R, np.int32)
    set_len = np.zeros(R, np.int32)
    skip_start = np.zeros(R, np.int32)
    skip_count = np.zeros(R, np.int32)
    sample = np.zeros(R, np.uint64)
    ranges: list[tuple[int, int]] = []
    cidrs: list[tuple[int, int, int, int]] = []
    cidr_fam: list[int] = []
    fwd: list[int] = []
    blob = bytearray()
    skip: list[int] = []

    for r, rule in enumerate(cfg.rules):
        m = rule.match
        for k, kname in enumerate(KEY_NAMES):
            vals = as_list(getattr(m, kname))
            if not vals:
                continue
            key_mask[r] |= 1 << k
            if k in CIDR_KEYS:
                key_start[r, k] = len(cidrs)
                for v in vals:
                    net = parse_cidr(v)
                    cidrs.append(cidr_row(net))
                    cidr_fam.append(net.version)
            else:
                key_start[r, k] = len(ranges)
                ranges.extend(_value_ranges(k, vals, lst_idx))
                if k in SIP_KEYS:
                    flags[r] |= NEEDS_SIP
            key_count[r, k] = (len(cidrs) if k in CIDR_KEYS else len(ranges)) - key_start[r, k]
        if rule.drop:
            flags[r] |= DROP
        if rule.continue_:
            flags[r] |= CONTINUE
        fwd_start[r] = len(fwd)
        fwd.extend(dest_idx[f] for f in rule.forward)
        fwd_count[r] = len(rule.forward)
        enc = b"".join(chunks.set_chunk(n, v) for n, v in rule.set.items())
        keys = {(v << 16) | t for n in rule.delete for v, t in chunks.chunk_keys(n)}
        for n in rule.set:
            keys.update((v << 16) | t for v, t in chunks.chunk_keys(n))
        keys.update(chunks.iter_setbuf_keys(enc))
        set_off[r], set_len[r] = len(blob), len(enc)
        blob += enc
        skip_start[r], skip_count[r] = len(skip), len(keys)
        skip.extend(sorted(keys))
        if enc or keys:
            flags[r] |= HAS_REWRITE
        if rule.sample is not None and rule.sample < 1.0:
            flags[r] |= HAS_SAMPLE
            sample[r] = sample_threshold(rule.sample)

    admin = parse_hostport(cfg.admin.listen, allow_zero=True)
    default = -1 if cfg.switch.default == "drop" else dest_idx[cfg.switch.default]
    return Compiled(
        nrules=R,
        rule_names=tuple(r.name for r in cfg.rules),
        key_mask=_ro(key_mask), key_start=_ro(key_start), key_count=_ro(key_count),
        ranges=_ro(np.array(ranges, dtype=np.uint64).reshape(len(ranges), 2)),
        cidrs=_ro(np.array(cidrs, dtype=np.uint64).reshape(len(cidrs), 4)),
        cidr_fam=_ro(np.array(cidr_fam, dtype=np.uint8)),
        flags=_ro(flags), fwd_start=_ro(fwd_start), fwd_count=_ro(fwd_count),
        fwd=_ro(np.array(fwd, dtype=np.int32)),
        set_blob=_ro(np.frombuffer(bytes(blob), dtype=np.uint8).copy()),
        set_off=_ro(set_off), set_len=_ro(set_len),
        skip=_ro(np.array(skip, dtype=np.uint32)), skip_start=_ro(skip_start),
        skip_count=_ro(skip_count), sample=_ro(sample),
        needs_sip=bool(np.any(flags & NEEDS_SIP)),
        needs_call_key=bool(np.any(flags & HAS_SAMPLE)),
        destinations=tuple(dests), default_dest=default, listeners=tuple(listeners),
        batch=cfg.switch.batch, workers=cfg.switch.workers, admin_listen=admin,
        generation=next(_generation),
        digest=hashlib.sha256(msgspec.json.encode(cfg)).hexdigest(),
        config=cfg,
    )


def _ro(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def _value_ranges(k: int, vals: list, lst_idx: Mapping[str, int]) -> list[tuple[int, int]]:
    out = []
    for v in vals:
        if k == LISTENER:
            i = lst_idx[v]
            out.append((i, i))
        elif k == HEP_VERSION:
            out.append(parse_range(v, 1, 3, "HEP version"))
        elif k == PROTO_TYPE:
            n = parse_proto_type(v)
            out.append((n, n))
        elif k == IP_FAMILY:
            n = int(v, 0) if isinstance(v, str) else int(v)
            out.append((n, n))
        elif k == IP_PROTO:
            n = parse_ip_proto(v)
            out.append((n, n))
        elif k in (SRC_PORT, DST_PORT):
            out.append(parse_range(v, 0, 65535, "port"))
        elif k == CAPTURE_ID:
            out.append(parse_range(v, 0, 0xFFFFFFFF, "capture id"))
        elif k == SIP_STATUS:
            out.append(parse_sip_status(v))
        elif k in HASH_KEYS:
            h = hash_str(k, v.encode())
            out.append((h, h))
        else:  # pragma: no cover - every key is handled above
            raise AssertionError(k)
    return out


# ---------------------------------------------------------------- the pure-Python evaluator

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
    """The SIP summary the data plane would scan for this packet (hepfast.sip.sip_fields, the
    twin of ext/sipscan.pxd sip_scan), or None: not proto type SIP, no plain payload, not SIP."""
    if pkt.proto_type != 1 or not pkt.payload or pkt.compressed:
        return None
    from hepfast.sip import sip_fields

    f = sip_fields(pkt.payload)
    return f if any(v is not None for v in f.values()) else None


def sample_key_hash(pkt) -> int:
    """Twin of ext/rules.pxd sample_key: the call key's hash, else a hash of the flow."""
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
    """(pre-encoded set chunks, skip keys) of rule r, as hepfast.codec.rewrite's build_set."""
    o, n = int(c.set_off[r]), int(c.set_len[r])
    s, k = int(c.skip_start[r]), int(c.skip_count[r])
    return c.set_blob[o:o + n].tobytes(), [int(x) for x in c.skip[s:s + k]]


# ---------------------------------------------------------------- describe (hepfast check)

def describe(c: Compiled) -> str:
    """A human listing of the compiled configuration."""
    cfg = c.config
    lines = [f"config {c.digest[:12]}: {c.workers} worker(s), batch {c.batch}, "
             f"admin on {_hp(*c.admin_listen)}"]
    lines.append("listeners:")
    for i, lst in enumerate(c.listeners):
        extra = []
        if lst.auth_key:
            extra.append("auth key set")
        if len(lst.allow_fam):
            extra.append("allow " + ", ".join(cfg.listeners[i].allow))
        lines.append(f"  [{i}] {lst.name}: {lst.transport} {_hp(lst.host, lst.port)}"
                     + (f" ({'; '.join(extra)})" if extra else ""))
    lines.append("destinations:")
    if not c.destinations:
        lines.append("  (none)")
    for i, d in enumerate(c.destinations):
        where = ", ".join(_hp(t.host, t.port) + ("" if t.configured == _hp(t.host, t.port)
                                                  else f" ({t.configured})")
                          for t in d.targets) or (d.path or d.dsn or "")
        lines.append(f"  [{i}] {d.name}: {d.transport} {d.mode} HEPv{d.hep_version} -> {where}")
    lines.append(f"rules ({c.nrules}, first match wins unless continue):")
    for r, rule in enumerate(cfg.rules):
        f = int(c.flags[r])
        conds = []
        for k, kname in enumerate(KEY_NAMES):
            if int(c.key_mask[r]) & (1 << k):
                vals = as_list(getattr(rule.match, kname))
                conds.append(f"{kname} in [{', '.join(str(v) for v in vals)}]")
        what = " and ".join(conds) if conds else "every packet"
        lines.append(f"  [{r}] {rule.name}: {what}")
        acts = []
        if f & DROP:
            acts.append("drop")
        if rule.forward:
            acts.append("forward to " + ", ".join(rule.forward))
        if rule.set:
            acts.append("set " + ", ".join(f"{k}={v!r}" for k, v in rule.set.items()))
        if rule.delete:
            acts.append("delete " + ", ".join(str(d) for d in rule.delete))
        if f & HAS_SAMPLE:
            acts.append(f"sample {rule.sample:g} of calls")
        if f & CONTINUE:
            acts.append("continue")
        if f & NEEDS_SIP:
            acts.append("scans SIP")
        lines.append("      -> " + "; ".join(acts))
    dflt = "drop" if c.default_dest < 0 else c.destinations[c.default_dest].name
    lines.append(f"default (no rule matched): {dflt}")
    return "\n".join(lines)


def _hp(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
