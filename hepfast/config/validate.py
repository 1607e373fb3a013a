"""Checks beyond types: names, references between sections, addresses, ranges, chunk names."""
from __future__ import annotations

import importlib.util
import ipaddress
import os
import re

from hepfast.config.errors import ConfigError
from hepfast.config.schema import (
    _NAME_RE,
    NETWORK_TRANSPORTS,
    PATH_TRANSPORTS,
    Config,
    Destination,
    Match,
)
from hepfast.config import schema as _schema
from hepfast.config.values import (
    _int,
    as_list,
    parse_cidr,
    parse_glob,
    parse_hostport,
    parse_ip_proto,
    parse_proto_type,
    parse_range,
    parse_sip_status,
)
from hepfast.wire import chunks


def _qkey(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'


def _check(path: str, fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except (ValueError, chunks.ChunkError) as exc:
        raise ConfigError(path, str(exc)) from None


def _check_name(path: str, name: str, what: str) -> None:
    if not _NAME_RE.match(name):
        raise ConfigError(path, f"bad {what} name {name!r}: use letters, digits and _ . : @ - "
                                f"(not starting with a punctuation mark)")


# Transports this version implements (the schema knows more): checked first, so an operator is
# told before anything else.
IMPLEMENTED_LISTENER_TRANSPORTS = ("udp", "tcp", "tls")
IMPLEMENTED_DESTINATION_TRANSPORTS = ("udp", "file", "postgres", "pcap", "parquet")
IMPLEMENTED_DESTINATION_TRANSPORTS += ("tcp", "tls")      # hepfast.egress.stream


def _check_implemented(cfg: Config) -> None:
    for i, lst in enumerate(cfg.listeners):
        if lst.transport not in IMPLEMENTED_LISTENER_TRANSPORTS:
            raise ConfigError(f"listeners[{i}].transport",
                              f"transport {lst.transport} is not supported yet (this version "
                              f"listens on: {', '.join(IMPLEMENTED_LISTENER_TRANSPORTS)})")
    for name, d in cfg.destinations.items():
        if d.transport not in IMPLEMENTED_DESTINATION_TRANSPORTS:
            raise ConfigError(f"destinations.{_qkey(name)}.transport",
                              f"transport {d.transport} is not supported yet (this version sends "
                              f"with: {', '.join(IMPLEMENTED_DESTINATION_TRANSPORTS)})")
        if d.transport == "parquet" and importlib.util.find_spec("pyarrow") is None:
            raise ConfigError(f"destinations.{_qkey(name)}.transport",
                              "the parquet destination needs pyarrow: pip install "
                              "'hepfast[storage]' (or pyarrow)")


# Keys of one storage transport: set on another destination they would silently do nothing.
_STORE_KEYS = {"encapsulate": "pcap", "row_group_rows": "parquet", "retention_bytes": "parquet"}
_DEST_DEFAULTS = Destination()


def _check_store_keys(p: str, d) -> None:
    for key, transport in _STORE_KEYS.items():
        if d.transport != transport and getattr(d, key) != getattr(_DEST_DEFAULTS, key):
            raise ConfigError(f"{p}.{key}", f"\"{key}\" is used by {transport} destinations "
                                            f"only, not {d.transport}; remove it")


_STREAM_KEYS = ("keepalive", "queue_packets", "queue_bytes", "spool", "spool_max_bytes",
                "reconnect_min_s", "reconnect_max_s")
_TLS_KEYS = ("tls_server_name", "tls_ca", "tls_cert", "tls_key", "tls_verify")
_STREAM_DEFAULTS = _schema.Destination()


def _check_stream_keys(p: str, d) -> None:
    """Stream keys on a stream destination only; tls keys on tls only; consistent values."""
    for key in _STREAM_KEYS + _TLS_KEYS:
        if getattr(d, key) == getattr(_STREAM_DEFAULTS, key):
            continue
        if d.transport == "postgres" and key in ("spool", "spool_max_bytes"):
            continue                            # it backs the row queue (egress/postgres.py)
        if d.transport not in ("tcp", "tls") or (key in _TLS_KEYS and d.transport != "tls"):
            who = "tls" if key in _TLS_KEYS else "tcp and tls"
            raise ConfigError(f"{p}.{key}", f"\"{key}\" is used by {who} destinations only, "
                                            f"not {d.transport}; remove it")
    if d.spool is not None and not d.spool:
        raise ConfigError(f"{p}.spool", "an empty spool directory; remove the key for none")
    if d.transport not in ("tcp", "tls"):
        return
    if d.hep_version != 3:
        raise ConfigError(f"{p}.hep_version", "a stream carries HEPv3 only (its framing is the "
                                              "v3 length field)")
    if d.reconnect_min_s > d.reconnect_max_s:
        raise ConfigError(f"{p}.reconnect_min_s", "must not exceed reconnect_max_s")
    if d.tls_key and not d.tls_cert:
        raise ConfigError(f"{p}.tls_key", "a client key needs tls_cert")
    for key in ("tls_ca", "tls_cert", "tls_key"):
        path = getattr(d, key)
        if path and not os.path.isfile(path):
            raise ConfigError(f"{p}.{key}", f"{path}: no such file")


_LISTENER_TLS_KEYS = ("tls_cert", "tls_key", "tls_ca", "tls_verify_client", "tls_min_version")
_STREAM_LISTENER_KEYS = ("max_message", "message_timeout", "max_reads", "max_connections",
                         "idle_timeout")
_LISTENER_DEFAULTS = _schema.Listener(name="_", listen="_")


def _check_listener_tls(p: str, lst) -> None:
    """tls keys on tls listeners only; a tls listener's certificate, key and CA load (with
    Python's ssl, which is OpenSSL as in the worker), each failure naming its field."""
    for key in _STREAM_LISTENER_KEYS + _LISTENER_TLS_KEYS:
        if getattr(lst, key) == getattr(_LISTENER_DEFAULTS, key):
            continue
        if lst.transport == "udp" or (key in _LISTENER_TLS_KEYS and lst.transport != "tls"):
            who = "tls" if key in _LISTENER_TLS_KEYS else "tcp and tls"
            raise ConfigError(f"{p}.{key}", f"\"{key}\" is used by {who} listeners only, not "
                                            f"{lst.transport}; remove it")
    if lst.transport != "tls":
        return
    for key in ("tls_cert", "tls_key"):
        if not getattr(lst, key):
            raise ConfigError(f"{p}.{key}", f"a tls listener needs \"{key}\" (a PEM file: the "
                                            f"server's certificate chain, its private key)")
    for key in ("tls_cert", "tls_key", "tls_ca"):
        path = getattr(lst, key)
        if path and not os.path.isfile(path):
            raise ConfigError(f"{p}.{key}", f"{path}: no such file")
    if lst.tls_verify_client in ("optional", "required") and not lst.tls_ca:
        raise ConfigError(f"{p}.tls_verify_client", f"\"{lst.tls_verify_client}\" verifies "
                                                    f"client certificates against tls_ca: set "
                                                    f"tls_ca (a CA file)")
    load_listener_tls(p, lst)


def load_listener_tls(p: str, lst):
    """An ssl.SSLContext of the server side from a tls listener's files (what `hepfast check`,
    `run` and a reload load before the workers do); ConfigError naming the field that fails."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)

    def why(exc: Exception) -> str:
        return getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)

    try:
        # Certificates alone first: a failure of load_cert_chain then means the key.
        ctx.load_verify_locations(cafile=lst.tls_cert)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{p}.tls_cert", f"{lst.tls_cert}: not a PEM certificate file "
                                           f"({why(exc)})") from None
    try:
        ctx.load_cert_chain(lst.tls_cert, lst.tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"{p}.tls_key", f"{lst.tls_key}: not a PEM private key without a "
                                          f"passphrase, or not the key of tls_cert "
                                          f"({why(exc)})") from None
    if lst.tls_ca:
        try:
            ctx.load_verify_locations(cafile=lst.tls_ca)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"{p}.tls_ca", f"{lst.tls_ca}: not a PEM CA file "
                                             f"({why(exc)})") from None
    return ctx


def validate(cfg: Config, *, implemented: bool = False) -> None:
    if implemented:
        _check_implemented(cfg)
    dests = cfg.destinations
    for name, d in dests.items():
        p = f"destinations.{_qkey(name)}"
        _check_name(p, name, "destination")
        if name == "drop":
            raise ConfigError(p, "\"drop\" is reserved (it means: no destination); rename it")
        if d.auth_key and d.strip_auth_key:
            raise ConfigError(f"{p}.strip_auth_key", "set auth_key (replace the key) or "
                                                     "strip_auth_key (remove it), not both")
        _check_stream_keys(p, d)
        _check_store_keys(p, d)
        _check_call_key(p, d)
        if d.transport in NETWORK_TRANSPORTS:
            if not d.targets:
                raise ConfigError(f"{p}.targets", f"a {d.transport} destination needs at least "
                                                  f"one target, e.g. [\"10.0.0.1:9060\"]")
            seen: dict[tuple[str, int], int] = {}
            for i, t in enumerate(d.targets):
                hp = _check(f"{p}.targets[{i}]", parse_hostport, t)
                if hp in seen:
                    raise ConfigError(f"{p}.targets[{i}]", f"duplicate target {t!r} "
                                                           f"(also targets[{seen[hp]}])")
                seen[hp] = i
            for key in ("path", "dsn", "dsn_env"):
                if getattr(d, key) is not None:
                    raise ConfigError(f"{p}.{key}", f"\"{key}\" is not used by a {d.transport} "
                                                    f"destination; remove it")
        else:
            need = "path" if d.transport in PATH_TRANSPORTS else "dsn"
            if need == "dsn" and d.dsn and d.dsn_env:
                raise ConfigError(f"{p}.dsn_env", "set dsn or dsn_env (the environment variable "
                                                  "holding the DSN), not both")
            if need == "dsn" and d.dsn_env:
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", d.dsn_env):
                    raise ConfigError(f"{p}.dsn_env", "not an environment variable name")
                if not os.environ.get(d.dsn_env):
                    raise ConfigError(f"{p}.dsn_env", f"environment variable {d.dsn_env} is "
                                                      f"not set")
            elif not getattr(d, need):
                raise ConfigError(f"{p}.{need}", f"a {d.transport} destination needs \"{need}\"")
            if need == "dsn" and d.queue_rows < d.batch_rows:
                raise ConfigError(f"{p}.queue_rows", f"queue_rows ({d.queue_rows}) must be at "
                                                     f"least batch_rows ({d.batch_rows})")
            if d.targets:
                raise ConfigError(f"{p}.targets", f"a {d.transport} destination has no targets; "
                                                  f"remove them")
            for other in (("dsn", "dsn_env") if need == "path" else ("path",)):
                if getattr(d, other) is not None:
                    raise ConfigError(f"{p}.{other}", f"\"{other}\" is not used by a "
                                                      f"{d.transport} destination; remove it")

    rd = cfg.switch.run_dir
    if rd and not (os.path.isdir(rd) and os.access(rd, os.W_OK | os.X_OK)):
        raise ConfigError("switch.run_dir", f"{rd!r} is not a directory hepfast can write to: "
                          "create it (e.g. a tmpfs: mount -t tmpfs -o "
                          "huge=within_size,mode=0700 hepfast DIR) or leave run_dir unset")
    if cfg.switch.default != "drop" and cfg.switch.default not in dests:
        raise ConfigError("switch.default", _unknown_dest(cfg.switch.default, dests)
                          + "; or \"drop\"")
    _check("admin.listen", parse_hostport, cfg.admin.listen, allow_zero=True)
    _validate_admin(cfg)

    if not cfg.listeners:
        raise ConfigError("listeners", "no listener: add a [[listeners]] table with name and "
                                       "listen = \"0.0.0.0:9060\"")
    lnames: dict[str, int] = {}
    addrs: dict[tuple[str, str, int], int] = {}
    for i, lst in enumerate(cfg.listeners):
        p = f"listeners[{i}]"
        _check_name(f"{p}.name", lst.name, "listener")
        if lst.name in lnames:
            raise ConfigError(f"{p}.name", f"duplicate listener name \"{lst.name}\" "
                                           f"(also listeners[{lnames[lst.name]}])")
        lnames[lst.name] = i
        host, port = _check(f"{p}.listen", parse_hostport, lst.listen, allow_zero=True)
        key = (lst.transport, host, port)
        if port and key in addrs:
            raise ConfigError(f"{p}.listen", f"{lst.listen} {lst.transport} is already used by "
                                             f"listeners[{addrs[key]}]")
        addrs[key] = i
        for j, c in enumerate(lst.allow):
            _check_allow(f"{p}.allow[{j}]", c)
        _check_listener_tls(p, lst)

    rnames: dict[str, int] = {}
    for i, r in enumerate(cfg.rules):
        p = f"rules[{i}]"
        _check_name(f"{p}.name", r.name, "rule")
        if r.name in rnames:
            raise ConfigError(f"{p}.name", f"duplicate rule name \"{r.name}\" "
                                           f"(also rules[{rnames[r.name]}])")
        rnames[r.name] = i
        _validate_match(f"{p}.match", r.match, lnames)
        seen_f: dict[str, int] = {}
        for j, f in enumerate(r.forward):
            if f not in dests:
                raise ConfigError(f"{p}.forward[{j}]", _unknown_dest(f, dests))
            if f in seen_f:
                raise ConfigError(f"{p}.forward[{j}]", f"destination \"{f}\" is already "
                                                       f"forward[{seen_f[f]}]")
            seen_f[f] = j
        if r.drop and r.forward:
            raise ConfigError(f"{p}.drop", "a rule cannot both drop and forward: remove "
                                           "\"drop\" or \"forward\"")
        if r.drop and r.continue_:
            raise ConfigError(f"{p}.continue", "a dropping rule ends the evaluation: remove "
                                               "\"continue\" or \"drop\"")
        if r.drop and (r.set or r.delete):
            raise ConfigError(f"{p}.set" if r.set else f"{p}.delete",
                              "a dropping rule sends nothing, so set/delete have no effect: "
                              "remove them")
        if not r.drop and not r.forward and not r.continue_:
            raise ConfigError(p, "the rule takes packets but sends them nowhere: add "
                                 "forward = [\"DEST\"], drop = true, or continue = true")
        if r.sample is not None and not 0.0 < r.sample <= 1.0:
            raise ConfigError(f"{p}.sample", f"{r.sample} is not in (0, 1]: 0.1 keeps a tenth "
                                             f"of the calls")
        set_keys: dict[tuple[int, int], str] = {}
        for name, value in r.set.items():
            _check(f"{p}.set.{_qkey(name)}", chunks.set_chunk, name, value)
            for key in _check(f"{p}.set.{_qkey(name)}", chunks.chunk_keys, name):
                if key in set_keys:
                    raise ConfigError(f"{p}.set.{_qkey(name)}", f"sets the same chunk as "
                                                                f"set.{set_keys[key]}: keep one")
                set_keys[key] = name
        for j, name in enumerate(r.delete):
            _check(f"{p}.delete[{j}]", chunks.chunk_keys, name)
    _validate_guards(cfg)


# ------------------------------------------------------------------------------ guards

_RULE_DEFAULTS = _schema.Rule(name="x")
_LISTENER_DEFAULTS = _schema.Listener(name="x", listen="127.0.0.1:0")


def _validate_guards(cfg: Config) -> None:
    """dedup, rate limits and payload handling: keys that would do nothing are errors."""
    for i, lst in enumerate(cfg.listeners):
        if not lst.dedup and lst.dedup_window_ms != _LISTENER_DEFAULTS.dedup_window_ms:
            raise ConfigError(f"listeners[{i}].dedup_window_ms", "is used with dedup = true "
                                                                 "only: add it, or remove this")
    for i, r in enumerate(cfg.rules):
        p = f"rules[{i}]"
        if not r.dedup and r.dedup_window_ms != _RULE_DEFAULTS.dedup_window_ms:
            raise ConfigError(f"{p}.dedup_window_ms", "is used with dedup = true only: add it, "
                                                      "or remove this")
        if r.burst is not None and r.rate_limit is None:
            raise ConfigError(f"{p}.burst", "is the burst of rate_limit: set rate_limit too, "
                                            "or remove it")
        if r.burst_calls is not None and r.rate_limit_calls is None:
            raise ConfigError(f"{p}.burst_calls", "is the burst of rate_limit_calls: set "
                                                  "rate_limit_calls too, or remove it")
        if r.drop:
            for key in ("dedup", "rate_limit", "rate_limit_calls"):
                if getattr(r, key) not in (None, False):
                    raise ConfigError(f"{p}.{key}", "a dropping rule forwards nothing, so "
                                                    f"{key} has no effect: remove it")
    for name, d in cfg.destinations.items():
        if d.payload == "compress" and d.hep_version != 3:
            raise ConfigError(f"destinations.{_qkey(name)}.payload",
                              "HEPv2 has no compressed-payload chunk: compress needs "
                              "hep_version = 3")


# ------------------------------------------------------------------------------ admin API, ACLs

def is_loopback(host: str) -> bool:
    """True for "localhost" and loopback addresses (127.0.0.0/8, ::1)."""
    h = host.strip().strip("[]").rstrip(".").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def admin_token(admin, environ=None) -> str:
    """The admin API's bearer token ("" for none): $HEPFAST_ADMIN_TOKEN when set and not empty
    (it replaces admin.token, as hepfast.config.env does, so the answer is the same before and
    after the overrides are applied), else `admin.token`, else the variable `admin.token_env`
    names."""
    env = os.environ if environ is None else environ
    return env.get("HEPFAST_ADMIN_TOKEN") or admin.token or (
        env.get(admin.token_env, "") if admin.token_env else "")


def _validate_admin(cfg: Config) -> None:
    """A token wherever the admin API is reachable from elsewhere, and a usable one."""
    a = cfg.admin
    host, _port = parse_hostport(a.listen, allow_zero=True)
    if a.token_env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", a.token_env):
            raise ConfigError("admin.token_env", f"{a.token_env!r} is not an environment "
                                                 f"variable name (letters, digits, _)")
        if not admin_token(a):
            raise ConfigError("admin.token_env", f"the environment variable {a.token_env} is "
                                                 f"not set or empty: export it, or remove "
                                                 f"admin.token_env")
    token = admin_token(a)
    # The value itself is never quoted: error messages must not carry secrets.
    if token and not re.fullmatch(r"[\x21-\x7e]+", token):
        raise ConfigError("admin.token", "the token travels in an HTTP header: use printable "
                                         "ASCII without spaces")
    if not token and not is_loopback(host):
        raise ConfigError("admin.token", f"admin.listen = \"{a.listen}\" is not a loopback "
                                         f"address, so the admin API needs a bearer token: set "
                                         f"admin.token (or admin.token_env, or the "
                                         f"HEPFAST_ADMIN_TOKEN variable), or listen on "
                                         f"127.0.0.1")
    if a.metrics_auth and not token:
        raise ConfigError("admin.metrics_auth", "puts /metrics behind the token, but no token "
                                                "is set: set admin.token (or admin.token_env)")


_V4_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


def _check_allow(path: str, cidr) -> None:
    """A listener's `allow` CIDR, refusing ranges that can never match a sender."""
    net = _check(path, parse_cidr, cidr)
    if net.version == 6 and net.subnet_of(_V4_MAPPED):
        v4 = ipaddress.ip_network(f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
        raise ConfigError(path, f"{cidr!r} is an IPv4-mapped IPv6 range, which never matches: "
                                f"IPv4 senders are matched as IPv4, also on a dual-stack [::] "
                                f"listener; write the IPv4 form \"{v4}\"")


def _unknown_dest(name: str, dests: dict) -> str:
    known = ", ".join(dests) if dests else "none defined: add a [destinations.NAME] table"
    return f"unknown destination \"{name}\" (defined: {known})"


def _validate_match(p: str, m: Match, listeners: dict[str, int]) -> None:
    def each(key: str):
        v = getattr(m, key)
        if v is None:
            return []
        vals = as_list(v)
        if not vals:
            raise ConfigError(f"{p}.{key}", "an empty list matches nothing: remove the key to "
                                            "match every packet")
        return [(f"{p}.{key}[{j}]" if isinstance(v, list) else f"{p}.{key}", x)
                for j, x in enumerate(vals)]

    for path, v in each("listener"):
        if v not in listeners:
            raise ConfigError(path, f"unknown listener \"{v}\" (defined: {', '.join(listeners)})")
    for path, v in each("hep_version"):
        _check(path, parse_range, v, 1, 3, "HEP version")
    for path, v in each("proto_type"):
        _check(path, parse_proto_type, v)
    for path, v in each("ip_family"):
        if _check(path, _int, v, "4 or 6") not in (4, 6):
            raise ConfigError(path, f"ip_family is 4 or 6, not {v!r}")
    for path, v in each("ip_proto"):
        _check(path, parse_ip_proto, v)
    for key in ("src_ip", "dst_ip"):
        for path, v in each(key):
            _check(path, parse_cidr, v)
    for key in ("src_port", "dst_port"):
        for path, v in each(key):
            _check(path, parse_range, v, 0, 65535, "port")
    for path, v in each("capture_id"):
        _check(path, parse_range, v, 0, 0xFFFFFFFF, "capture id")
    for path, v in each("sip_status"):
        _check(path, parse_sip_status, v)
    for key in ("node_name", "correlation_id", "sip_method", "sip_call_id", "sip_from_user",
                "sip_to_user", "sip_ruri_user", "sip_ruri_domain", "sip_cseq_method",
                "sip_user_agent"):
        for path, v in each(key):
            _check_string_value(path, key, v)
    _validate_conds(p, m)


# --- issue 14 A: globs, sip_header, correlation_id_field, call keys -----------------------------

def _check_string_value(path: str, key: str, v) -> None:
    """A string match value: exact or a glob (hepfast.config.values.parse_glob)."""
    from hepfast.constants import MAX_PATTERN_LEN

    if not isinstance(v, str):
        raise ConfigError(path, f"expected a string, got {v!r}")
    if key in ("sip_method", "sip_cseq_method") and not re.fullmatch(r"[A-Za-z*?]+", v):
        raise ConfigError(path, f"bad SIP method {v!r}: letters only (and the globs * ?), "
                                f"e.g. \"INVITE\"")
    _check(path, parse_glob, v, MAX_PATTERN_LEN)


_HEADER_NAME_RE = re.compile(r"[A-Za-z0-9!%*_+`'~.-]+")


def _validate_conds(p: str, m: Match) -> None:
    from hepfast.constants import MAX_HEADER_NAME, MAX_KEY_FIELD

    for key in ("sip_header", "correlation_id_field"):
        v = getattr(m, key)
        if v is None:
            continue
        tables = as_list(v)
        if not tables:
            raise ConfigError(f"{p}.{key}", "an empty list matches nothing: remove the key to "
                                            "match every packet")
        for j, t in enumerate(tables):
            tp = f"{p}.{key}[{j}]" if isinstance(v, list) else f"{p}.{key}"
            if key == "sip_header":
                name = t.name.strip()
                if not _HEADER_NAME_RE.fullmatch(name) or len(name) > MAX_HEADER_NAME:
                    raise ConfigError(f"{tp}.name", f"bad header name {t.name!r}: a SIP token "
                                                    f"(letters, digits, - . ! % * _ + ` ' ~) of "
                                                    f"at most {MAX_HEADER_NAME} characters")
            else:
                if len(t.separator) != 1 or not 0 < ord(t.separator) < 0x80:
                    raise ConfigError(f"{tp}.separator", f"{t.separator!r}: one ASCII "
                                                         f"character, e.g. \"@\"")
                if not -MAX_KEY_FIELD <= t.field < MAX_KEY_FIELD:
                    raise ConfigError(f"{tp}.field", f"field index {t.field} is out of range "
                                                     f"{-MAX_KEY_FIELD}..{MAX_KEY_FIELD - 1} "
                                                     f"(0 is the first field, -1 the last)")
            vals = as_list(t.value)
            if not vals:
                raise ConfigError(f"{tp}.value", "needs one value or more (\"*\": any "
                                                 "non-empty value)")
            for i, x in enumerate(vals):
                _check_string_value(f"{tp}.value[{i}]" if isinstance(t.value, list)
                                    else f"{tp}.value", key, x)


def _check_call_key(p: str, d: Destination) -> None:
    """Destination.call_key*: meaningful for mode = "hash" only; the split for string keys."""
    from hepfast.constants import MAX_KEY_FIELD

    custom = (d.call_key, d.call_key_separator, d.call_key_field) != ("call_id", "", 0)
    if custom and d.mode != "hash":
        key = next(k for k in ("call_key", "call_key_separator", "call_key_field")
                   if getattr(d, k) != getattr(_DEST_DEFAULTS, k))
        raise ConfigError(f"{p}.{key}", f"the call key chooses a target in mode = \"hash\" "
                                        f"only, not {d.mode}; remove it")
    sep = d.call_key_separator
    if sep and (len(sep) != 1 or not 0 < ord(sep) < 0x80):
        raise ConfigError(f"{p}.call_key_separator", f"{sep!r}: one ASCII character, e.g. "
                                                     f"\"@\"")
    if sep and d.call_key in ("src_ip", "capture_id"):
        raise ConfigError(f"{p}.call_key_separator", f"call_key = \"{d.call_key}\" is not a "
                                                     f"string: it has no fields to split")
    if d.call_key_field and not sep:
        raise ConfigError(f"{p}.call_key_field", "a field needs call_key_separator (e.g. "
                                                 "\"@\")")
    if not -MAX_KEY_FIELD <= d.call_key_field < MAX_KEY_FIELD:
        raise ConfigError(f"{p}.call_key_field", f"field index {d.call_key_field} is out of "
                                                 f"range {-MAX_KEY_FIELD}..{MAX_KEY_FIELD - 1} "
                                                 f"(0 is the first field, -1 the last)")
