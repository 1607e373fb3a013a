"""Config to plan: every table of hepfast.plan.tables built from a validated Config, targets and
listeners resolved to addresses. Raises ConfigError for what validation cannot know (transports not
implemented yet, host names that do not resolve)."""
from __future__ import annotations

import hashlib
import ipaddress
import itertools
import math
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import msgspec
import numpy as np

from hepfast import constants as K
from hepfast.config import (
    MATCH_KEYS,
    Config,
    ConfigError,
    as_list,
    parse_cidr,
    parse_hostport,
    parse_ip_proto,
    parse_proto_type,
    parse_range,
    parse_sip_status,
)
from hepfast.config.values import parse_glob
from hepfast.plan.tables import (
    CAPTURE_ID,
    CALL_KEY,
    CIDR_KEYS,
    COND_KEYS,
    CONTINUE,
    DROP,
    DST_PORT,
    HAS_REWRITE,
    HAS_GUARD,
    HAS_SAMPLE,
    HASH_KEYS,
    HEP_VERSION,
    IP_FAMILY,
    IP_PROTO,
    KEY_NAMES,
    LISTENER,
    NEEDS_SIP,
    NKEYS,
    PROTO_TYPE,
    SIP_HEADER,
    SIP_KEYS,
    SIP_STATUS,
    SIP_WANT_OF,
    SRC_PORT,
    cidr_row,
    fold_tokens,
    hash_str,
    sample_threshold,
)
from hepfast.config import validate as _validate
from hepfast.wire import chunks

# Transports the switch implements today; the schema accepts more (hepfast/config/).
SUPPORTED_LISTENER_TRANSPORTS = _validate.IMPLEMENTED_LISTENER_TRANSPORTS
SUPPORTED_DESTINATION_TRANSPORTS = _validate.IMPLEMENTED_DESTINATION_TRANSPORTS
# Destinations the worker feeds through a shared-memory ring read by an egress process, and the
# config keys of each that its egress kind receives (hepfast.egress.base.Egress.from_settings).
EGRESS_SETTINGS: dict[str, tuple[str, ...]] = {
    "file": ("path", "rotate_bytes", "rotate_seconds", "keep"),
    "pcap": ("path", "rotate_bytes", "rotate_seconds", "keep", "encapsulate"),
    "parquet": ("path", "rotate_bytes", "rotate_seconds", "row_group_rows", "flush_seconds",
                "retention_days", "retention_bytes"),
    "postgres": ("dsn", "dsn_env", "batch_rows", "flush_seconds", "queue_rows", "retention_days",
                 "writers", "spool", "spool_max_bytes"),
}
# Streams (hepfast.egress.stream) have real targets: each gets its own counter slot.
_STREAM_KEYS = ("keepalive", "queue_packets", "queue_bytes", "spool", "spool_max_bytes",
                "reconnect_min_s", "reconnect_max_s")
EGRESS_SETTINGS["tcp"] = _STREAM_KEYS
EGRESS_SETTINGS["tls"] = _STREAM_KEYS + ("tls_server_name", "tls_ca", "tls_cert", "tls_key",
                                         "tls_verify")
STREAM_TRANSPORTS = ("tcp", "tls")
RING_TRANSPORTS = tuple(EGRESS_SETTINGS)
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
    egress: str = "udp"             # constants.EGRESS_NAMES: "udp" (worker sendmmsg) or "ring"
    auth_key: bytes = b""           # replace the auth-key chunk on this destination's copies
    strip_auth_key: bool = False    # remove it
    ring_bytes: int = 0             # ring-fed: bytes of each worker's ring
    settings: tuple = ()            # ring-fed: (key, value) pairs for the egress kind
    # mode = "hash": what the target choice keys on (issue 14 A; constants.CALL_KEY), and the
    # field split (separator byte, 0: none; field index, negative from the end)
    call_key: int = 0
    call_key_sep: int = 0
    call_key_field: int = 0


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
    # issue 14 A: glob patterns and table-valued keys (hepfast.plan.tables)
    pat_start: np.ndarray
    pat_count: np.ndarray
    pat_off: np.ndarray
    pat_len: np.ndarray
    pat_blob: np.ndarray
    conds: np.ndarray
    cond_blob: np.ndarray
    sip_want: int               # SIP_WANT bits: the headers some rule needs scanned
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
    # guards (hepfast.plan.tables, hepfast.dataplane.guard)
    dedup_ms: np.ndarray | None = None      # uint32[R]
    rate: np.ndarray | None = None          # uint64[R, 4]
    needs_inflate: bool = False             # compressed payloads are inflated before routing
    dedup_expire_ms: int = 0                # the longest dedup window (table entries' life)

    def dest_index(self, name: str) -> int:
        for i, d in enumerate(self.destinations):
            if d.name == name:
                return i
        raise KeyError(name)


def _stub_answer(host: str) -> str | None:
    """HEPFAST_RESOLVE_FILE (tests): a file of "name address" lines that answers for the names
    it lists, read on every compile, so a test can change a DNS answer between two reloads."""
    path = os.environ.get("HEPFAST_RESOLVE_FILE")
    if not path:
        return None
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[0] == host:
                    return parts[1]
    except OSError:
        return None
    return None


def _resolve(host: str, port: int, path: str, kind: int) -> tuple[str, int]:
    """The address of a listener or target: an IP literal as is, a name through DNS, once, here
    in the supervisor (workers get the answer in the plan)."""
    host = _stub_answer(host) or host
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

def check_limits(cfg: Config) -> None:
    """Every fixed capacity of the data plane, checked where the operator sees it (check, run,
    reload), naming the field and the limit."""
    def over(path: str, what: str, limit: int) -> ConfigError:
        return ConfigError(path, f"too many {what}: this version supports at most {limit}")

    if len(cfg.listeners) > K.MAX_LISTENERS:
        raise over(f"listeners[{K.MAX_LISTENERS}]", "listeners", K.MAX_LISTENERS)
    if len(cfg.rules) > K.MAX_RULES:
        raise over(f"rules[{K.MAX_RULES}]", "rules", K.MAX_RULES)
    if len(cfg.destinations) > K.MAX_DESTINATIONS:
        name = list(cfg.destinations)[K.MAX_DESTINATIONS]
        raise over(f"destinations.{name}", "destinations", K.MAX_DESTINATIONS)
    ntargets = 0
    nring = 0
    for name, d in cfg.destinations.items():
        for j, _t in enumerate(d.targets):
            ntargets += 1
            if ntargets > K.MAX_TARGETS:
                raise over(f"destinations.{name}.targets[{j}]", "targets (all destinations)",
                           K.MAX_TARGETS)
        if d.transport in RING_TRANSPORTS:
            nring += 1
            if nring > K.MAX_EGRESS:
                raise over(f"destinations.{name}", "ring-fed destinations", K.MAX_EGRESS)
        if len(d.auth_key.encode()) > 1024:
            raise ConfigError(f"destinations.{name}.auth_key", "longer than 1024 bytes")
    for i, lst in enumerate(cfg.listeners):
        if len(lst.auth_key.encode()) > 1024:
            raise ConfigError(f"listeners[{i}].auth_key", "longer than 1024 bytes")
    for r, rule in enumerate(cfg.rules):
        enc = b"".join(chunks.set_chunk(n, v) for n, v in rule.set.items())
        if len(enc) > K.MAX_SET_BYTES:
            raise ConfigError(f"rules[{r}].set", f"the chunks it sets take {len(enc)} bytes; "
                                                 f"at most {K.MAX_SET_BYTES}")
        nkeys = sum(len(chunks.chunk_keys(n)) for n in list(rule.set) + list(rule.delete))
        if nkeys > K.MAX_SKIP:
            raise ConfigError(f"rules[{r}].delete", f"sets and deletes {nkeys} chunk keys; "
                                                    f"at most {K.MAX_SKIP}")
    _check_pattern_limits(cfg)


def _check_pattern_limits(cfg: Config) -> None:
    """issue 14 A: globs in the whole config, conditions per rule (lengths: validate)."""
    npat = 0
    for r, rule in enumerate(cfg.rules):
        for kname in ("sip_header", "correlation_id_field"):
            tables = as_list(getattr(rule.match, kname))
            if len(tables) > K.MAX_CONDS:
                raise ConfigError(f"rules[{r}].match.{kname}", f"{len(tables)} tables; at most "
                                                               f"{K.MAX_CONDS} per rule")
        for kname in KEY_NAMES:
            v = getattr(rule.match, kname)
            if kname in ("sip_header", "correlation_id_field"):
                vals = [x for t in as_list(v) for x in as_list(t.value)]
            elif kname in _STRING_KEY_NAMES:
                vals = as_list(v)
            else:
                continue
            for x in vals:
                if isinstance(x, str) and parse_glob(x, 1 << 30)[1] is not None:
                    npat += 1
                    if npat > K.MAX_PATTERNS:
                        raise ConfigError(f"rules[{r}].match.{kname}",
                                          f"too many glob patterns: this version supports at "
                                          f"most {K.MAX_PATTERNS} in one config")


def _dsn_label(dsn: str | None, env: str | None) -> str:
    """How a postgres store is named in counters and /status: its DSN without the password
    (or `$VAR` for dsn_env)."""
    if env:
        return f"${env}"
    if not dsn:
        return ""
    from hepfast.observe.redact import dsn_password, mask_secrets

    pw = dsn_password(dsn)
    return mask_secrets(dsn.replace(pw, "***") if pw else dsn)


def compile_config(cfg: Config) -> Compiled:
    """Compile a validated Config. Raises ConfigError for what validation cannot know: limits of
    the data plane, and host names that do not resolve."""
    _validate._check_implemented(cfg)
    from hepfast.wire.hashing import target_seed

    check_limits(cfg)
    dests = []
    for name, d in cfg.destinations.items():
        targets = []
        for j, t in enumerate(d.targets):
            host, port = parse_hostport(t)
            rhost, fam = _resolve(host, port, f"destinations.{name}.targets[{j}]",
                                  socket.SOCK_DGRAM)
            targets.append(Target(rhost, port, fam, t, target_seed(host, port)))
        ring = d.transport in RING_TRANSPORTS
        settings: tuple = ()
        if ring and d.transport in STREAM_TRANSPORTS:
            # Targets and mode too: a reload that changes them restarts the egress process
            # (the supervisor compares settings), which reads them from the plan.
            settings = tuple((k, getattr(d, k)) for k in EGRESS_SETTINGS[d.transport]) + (
                ("targets", tuple(d.targets)), ("mode", d.mode))
        elif ring:
            # One pseudo-target, the store itself: forwarded{destination, target=path}.
            targets.append(Target("", 0, 0, d.path or _dsn_label(d.dsn, d.dsn_env) or name, 0))
            settings = tuple((k, getattr(d, k)) for k in EGRESS_SETTINGS[d.transport])
        dests.append(DestInfo(name, d.mode, d.hep_version, d.transport, tuple(targets),
                              d.path, d.dsn, "ring" if ring else "udp",
                              d.auth_key.encode(), d.strip_auth_key,
                              d.ring_bytes if ring else 0, settings,
                              *_call_key(d)))
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
    dedup_ms, rate = _guard_arrays(cfg)
    flags[(dedup_ms > 0) | np.any(rate > 0, axis=1)] |= HAS_GUARD
    ranges: list[tuple[int, int]] = []
    cidrs: list[tuple[int, int, int, int]] = []
    cidr_fam: list[int] = []
    fwd: list[int] = []
    blob = bytearray()
    skip: list[int] = []
    pats = _Patterns(R)

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
            elif k in COND_KEYS:
                key_start[r, k] = len(pats.conds)
                key_count[r, k] = len(vals)
                pats.add_conds(k, vals, ranges)
                if k in SIP_KEYS:
                    flags[r] |= NEEDS_SIP
                continue
            elif k in HASH_KEYS:
                key_start[r, k] = len(ranges)
                pats.add_strings(r, k, vals, ranges)
                if k in SIP_KEYS:
                    flags[r] |= NEEDS_SIP
                    pats.sip_want |= SIP_WANT_OF.get(k, 0)
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
        **pats.arrays(),
        needs_sip=bool(np.any(flags & NEEDS_SIP)),
        needs_call_key=bool(np.any(flags & HAS_SAMPLE)),
        destinations=tuple(dests), default_dest=default, listeners=tuple(listeners),
        batch=cfg.switch.batch, workers=cfg.switch.workers, admin_listen=admin,
        generation=next(_generation),
        digest=hashlib.sha256(msgspec.json.encode(cfg)).hexdigest(),
        config=cfg,
        dedup_ms=_ro(dedup_ms), rate=_ro(rate),
        needs_inflate=_needs_inflate(cfg, flags),
        dedup_expire_ms=max([r.dedup_window_ms for r in cfg.rules if r.dedup]
                            + [li.dedup_window_ms for li in cfg.listeners if li.dedup] + [0]),
    )


# ---------------------------------------------------------------- guards

def _gcra(rate: float, burst: int | None) -> tuple[int, int]:
    """(emission interval T, tolerance tau) in ns: at most rate * D + burst packets in any
    interval D; burst defaults to a tenth of the rate (at least 1)."""
    t = min(max(1, round(1e9 / rate)), 1 << 50)
    b = burst if burst is not None else max(1, math.ceil(rate / 10))
    return t, min((b - 1) * t, 1 << 62)       # (the shared TAT never overflows 64 bits)


def _guard_arrays(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    R = len(cfg.rules)
    dedup_ms = np.zeros(R, np.uint32)
    rate = np.zeros((R, 4), np.uint64)
    for r, rule in enumerate(cfg.rules):
        if rule.dedup:
            dedup_ms[r] = rule.dedup_window_ms
        if rule.rate_limit is not None:
            rate[r, 0:2] = _gcra(rule.rate_limit, rule.burst)
        if rule.rate_limit_calls is not None:
            rate[r, 2:4] = _gcra(rule.rate_limit_calls, rule.burst_calls)
    return dedup_ms, rate


def _needs_inflate(cfg: Config, flags: np.ndarray) -> bool:
    """Whether workers inflate compressed payloads before routing: some rule reads the payload
    (a sip_* key, sampling or a call rate by call key, dedup), a listener dedups, or a
    destination wants its copies inflated (payload = "inflate", or HEPv2, which has no
    compressed-payload chunk)."""
    return bool(np.any(flags & (NEEDS_SIP | HAS_SAMPLE))
                or any(r.dedup or r.rate_limit_calls is not None for r in cfg.rules)
                or any(li.dedup for li in cfg.listeners)
                or any(payload_mode(d) == "inflate" for d in cfg.destinations.values()))


def payload_mode(d) -> str:
    """What a destination's copies do with compressed payloads: its `payload`, except that
    HEPv2 has no compressed-payload chunk, so a v2 destination's "keep" is "inflate" (check
    refuses "compress" with hep_version = 2)."""
    return "inflate" if d.hep_version == 2 and d.payload == "keep" else d.payload


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
        else:  # pragma: no cover - every key is handled above
            raise AssertionError(k)
    return out


# ---------------------------------------------------------------- patterns, call keys (issue 14 A)

class _Patterns:
    """Builds the pattern and condition tables of hepfast.plan.tables while rules compile."""

    def __init__(self, nrules: int):
        self.pat_start = np.zeros((nrules, NKEYS), np.int32)
        self.pat_count = np.zeros((nrules, NKEYS), np.int32)
        self.off: list[int] = []
        self.len: list[int] = []
        self.blob: list[int] = []
        self.conds: list[tuple[int, ...]] = []
        self.cond_blob = bytearray()
        self.sip_want = 0
        self.has_header = False             # some rule has a sip_header condition

    def _values(self, k: int, vals: list, ranges: list) -> tuple[int, int, int, int]:
        """Exact values of key k into ranges (hashes), globs into the pattern table: (range
        start, count, pattern start, count)."""
        rs, ps = len(ranges), len(self.off)
        for v in vals:
            exact, toks = parse_glob(v, K.MAX_PATTERN_LEN)
            if toks is None:
                h = hash_str(k, exact)
                ranges.append((h, h))
            else:
                toks = fold_tokens(k, toks)
                self.off.append(len(self.blob))
                self.len.append(len(toks))
                self.blob.extend(toks)
        return rs, len(ranges) - rs, ps, len(self.off) - ps

    def add_strings(self, r: int, k: int, vals: list, ranges: list) -> None:
        rs, rn, ps, pn = self._values(k, vals, ranges)
        self.pat_start[r, k], self.pat_count[r, k] = ps, pn

    def add_conds(self, k: int, tables: list, ranges: list) -> None:
        from hepfast.wire.sip import COMPACT, COMPACT_OF

        for t in tables:
            if k == SIP_HEADER:
                self.has_header = True
                name = t.name.strip().lower().encode()
                name = COMPACT.get(name, name)
                a, b, c = len(self.cond_blob), len(name), COMPACT_OF.get(name, b"\0")[0]
                self.cond_blob += name
            else:
                a, b, c = ord(t.separator), t.field, 0
            self.conds.append((a, b, c, *self._values(k, as_list(t.value), ranges)))

    def arrays(self) -> dict:
        return dict(
            pat_start=_ro(self.pat_start), pat_count=_ro(self.pat_count),
            pat_off=_ro(np.array(self.off, np.int32)), pat_len=_ro(np.array(self.len, np.int32)),
            pat_blob=_ro(np.array(self.blob, np.uint16)),
            conds=_ro(np.array(self.conds, np.int32).reshape(len(self.conds), 7)),
            cond_blob=_ro(np.frombuffer(bytes(self.cond_blob), np.uint8).copy()),
            # sip_header beside keys that scan the headers anyway: that scan also summarises
            # the names (alone, a sip_header rule scans only when it is reached).
            sip_want=self.sip_want | (K.SIP_WANT_NAMES if self.sip_want and self.has_header
                                      else 0))


_STRING_KEY_NAMES = frozenset(KEY_NAMES[k] for k in HASH_KEYS)


def _call_key(d) -> tuple[int, int, int]:
    """(constants.CALL_KEY index, separator byte or 0, field) of a destination."""
    sep = ord(d.call_key_separator) if d.call_key_separator else 0
    return CALL_KEY[d.call_key], sep, d.call_key_field if sep else 0


def compile_text(text: str, source: str = "<config>") -> Compiled:
    """Parse, validate and compile config text (raises ConfigError naming the field)."""
    from hepfast.config import parse_config

    return compile_config(parse_config(text, source, implemented=True))
