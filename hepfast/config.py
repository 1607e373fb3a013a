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
  (scalars or lists); hepfast/rules.py normalises them with the helpers below, which are the
  single definition of what each value means (`parse_hostport`, `parse_cidr`, `parse_range`,
  `parse_proto_type`, ...). Validation calls the same helpers, so what passes here compiles.
- Transports that the switch does not implement yet (everything but udp) are valid here; they are
  refused by `hepfast.rules.compile_config` (and so by `hepfast check` and `hepfast run`).
"""
from __future__ import annotations

import difflib
import ipaddress
import os
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import msgspec

from hepfast import chunks

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "Config", "ConfigError", "Switch", "Admin", "Listener", "Destination", "Rule", "Match",
    "load_config", "load_default", "DEFAULT_CONFIG_PATH", "parse_config", "from_dict", "parse_hostport", "parse_cidr", "parse_range",
    "parse_proto_type", "parse_ip_proto", "parse_sip_status", "as_list", "MATCH_KEYS",
    "LISTENER_TRANSPORTS", "DESTINATION_TRANSPORTS", "MODES",
]


class ConfigError(ValueError):
    """A configuration that cannot be used. `path` is the field (no `$.`), `message` the why."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


LISTENER_TRANSPORTS = ("udp", "tcp", "tls")
DESTINATION_TRANSPORTS = ("udp", "tcp", "tls", "pcap", "postgres")
MODES = ("hash", "all", "failover", "roundrobin")

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@-]*$")

# Scalars are accepted wherever a list is, as a list of one (`match.proto_type = "sip"`).
StrList = Union[list[str], str, None]
IntStrList = Union[list[Union[int, str]], int, str, None]


class _Base(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class Switch(_Base):
    workers: Annotated[int, msgspec.Meta(ge=1, le=1024)] = msgspec.field(
        default_factory=lambda: os.cpu_count() or 1)
    batch: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 64
    default: str = "drop"


class Admin(_Base):
    listen: str = "127.0.0.1:9096"


class Listener(_Base):
    name: str
    listen: str
    transport: Literal["udp", "tcp", "tls"] = "udp"
    auth_key: str = ""
    allow: list[str] = []


class Destination(_Base):
    targets: list[str] = []
    transport: Literal["udp", "tcp", "tls", "pcap", "postgres"] = "udp"
    mode: Literal["hash", "all", "failover", "roundrobin"] = "hash"
    hep_version: Literal[2, 3] = 3
    path: str | None = None          # pcap
    dsn: str | None = None           # postgres


class Match(_Base):
    listener: StrList = None
    hep_version: IntStrList = None
    proto_type: IntStrList = None
    ip_family: IntStrList = None
    ip_proto: IntStrList = None
    src_ip: StrList = None
    dst_ip: StrList = None
    src_port: IntStrList = None
    dst_port: IntStrList = None
    capture_id: IntStrList = None
    node_name: StrList = None
    correlation_id: StrList = None
    sip_method: StrList = None
    sip_status: IntStrList = None
    sip_call_id: StrList = None
    sip_from_user: StrList = None
    sip_to_user: StrList = None
    sip_ruri_user: StrList = None
    sip_ruri_domain: StrList = None


# In the order of the data plane's key enumeration (hepfast/rules.py, ext/rules.pxd).
MATCH_KEYS = tuple(Match.__struct_fields__)


class Rule(_Base):
    name: str
    match: Match = Match()
    set: dict[str, Union[int, str]] = {}
    delete: list[Union[str, int]] = []
    forward: list[str] = []
    drop: bool = False
    continue_: bool = msgspec.field(default=False, name="continue")
    sample: float | None = None


class Config(_Base):
    switch: Switch = msgspec.field(default_factory=Switch)
    admin: Admin = Admin()
    listeners: list[Listener] = []
    destinations: dict[str, Destination] = {}
    rules: list[Rule] = []


# ---------------------------------------------------------------- value parsers (shared)

def as_list(v: Any) -> list:
    """A match/list value as a list (None: no list)."""
    if v is None:
        return []
    return list(v) if isinstance(v, list) else [v]


def parse_hostport(s: str, *, allow_zero: bool = False) -> tuple[str, int]:
    """("host", port) from "host:port", "1.2.3.4:port" or "[v6]:port". ValueError says why."""
    if not isinstance(s, str) or not s:
        raise ValueError("expected \"host:port\"")
    if s.startswith("["):
        end = s.find("]")
        if end < 0 or s[end + 1:end + 2] != ":":
            raise ValueError(f"bad address {s!r}: write IPv6 as \"[::1]:9060\"")
        host, port_s = s[1:end], s[end + 2:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"bad address {s!r}: {host!r} is not an IPv6 address") from None
    else:
        if s.count(":") != 1:
            if s.count(":") > 1:
                raise ValueError(f"bad address {s!r}: put IPv6 addresses in brackets, "
                                 f"e.g. \"[::1]:9060\"")
            raise ValueError(f"bad address {s!r}: expected \"host:port\", e.g. \"127.0.0.1:9060\"")
        host, port_s = s.split(":")
        if not host:
            raise ValueError(f"bad address {s!r}: missing host (use 0.0.0.0 for every address)")
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(f"bad address {s!r}: {host!r} is not an IPv4 address") from None
        elif not re.fullmatch(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
                              r"(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?", host):
            raise ValueError(f"bad address {s!r}: {host!r} is not an IP address or host name")
    if not port_s.isdigit():
        raise ValueError(f"bad address {s!r}: port {port_s!r} is not a number")
    port = int(port_s)
    lo = 0 if allow_zero else 1
    if not lo <= port <= 65535:
        raise ValueError(f"bad address {s!r}: port must be {lo}..65535"
                         + (" (0: any free port)" if allow_zero else ""))
    return host, port


def parse_cidr(s: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR ("10.0.0.0/8", "2001:db8::/32") or one address (a /32 or /128)."""
    if not isinstance(s, str):
        raise ValueError(f"expected a CIDR string like \"10.0.0.0/8\", got {s!r}")
    try:
        return ipaddress.ip_network(s.strip(), strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            fixed = ipaddress.ip_network(s.strip(), strict=False)
            raise ValueError(f"bad CIDR {s!r}: host bits set, did you mean \"{fixed}\"?") from None
        raise ValueError(f"bad CIDR {s!r}: expected e.g. \"10.0.0.0/8\", \"192.0.2.7\" or "
                         f"\"2001:db8::/32\"") from None


def _int(v: Any, what: str) -> int:
    if isinstance(v, bool):
        raise ValueError(f"expected {what}, got {v!r}")
    if isinstance(v, int):
        return v
    if isinstance(v, str) and re.fullmatch(r"\s*(0x[0-9a-fA-F]+|[0-9]+)\s*", v):
        return int(v, 0)
    raise ValueError(f"expected {what}, got {v!r}")


def parse_range(v: Any, lo: int, hi: int, what: str) -> tuple[int, int]:
    """An inclusive range from a number or a "lo-hi" string, within [lo, hi]."""
    if isinstance(v, str) and "-" in v:
        a, _, b = v.partition("-")
        try:
            r = (_int(a, what), _int(b, what))
        except ValueError:
            raise ValueError(f"bad range {v!r}: expected \"LOW-HIGH\" {what}s, e.g. \"5060-5080\"") from None
        if r[0] > r[1]:
            raise ValueError(f"bad range {v!r}: the low end is above the high end")
    else:
        n = _int(v, f"{what} or a \"LOW-HIGH\" range")
        r = (n, n)
    if not (lo <= r[0] and r[1] <= hi):
        raise ValueError(f"{v!r} is out of range: {what}s are {lo}..{hi}")
    return r


def parse_proto_type(v: Any) -> int:
    """A HEP proto type from its name (case-insensitive, design.md list) or number 0..255."""
    if isinstance(v, str) and v.strip().lower() in chunks.PROTO_TYPES:
        return chunks.PROTO_TYPES[v.strip().lower()]
    try:
        n = _int(v, "a proto type")
    except ValueError:
        raise ValueError(f"unknown proto type {v!r}; names: {', '.join(chunks.PROTO_TYPES)}; "
                         f"or a number 0..255") from None
    if not 0 <= n <= 255:
        raise ValueError(f"proto type {n} is out of range 0..255")
    return n


def parse_ip_proto(v: Any) -> int:
    if isinstance(v, str) and v.strip().lower() in chunks.PROTO_IDS:
        return chunks.PROTO_IDS[v.strip().lower()]
    try:
        n = _int(v, "an IP protocol")
    except ValueError:
        raise ValueError(f"unknown IP protocol {v!r}; names: {', '.join(chunks.PROTO_IDS)}; "
                         f"or a number 0..255") from None
    if not 0 <= n <= 255:
        raise ValueError(f"IP protocol {n} is out of range 0..255")
    return n


def parse_sip_status(v: Any) -> tuple[int, int]:
    """A SIP status (200), a class ("4xx") or a range ("480-489") as an inclusive range."""
    if isinstance(v, str) and re.fullmatch(r"\s*[1-6][xX][xX]\s*", v):
        c = int(v.strip()[0])
        return (c * 100, c * 100 + 99)
    try:
        return parse_range(v, 100, 699, "SIP status")
    except ValueError as exc:
        raise ValueError(f"{exc} (write 200, \"4xx\" or \"480-489\")") from None


# ---------------------------------------------------------------- loading

# The bundled configuration `hepfast run` uses without -c (shipped as package data).
DEFAULT_CONFIG_PATH = Path(__file__).with_name("default.toml")


def load_default() -> Config:
    return load_config(DEFAULT_CONFIG_PATH)


def load_config(path: str | os.PathLike) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read {os.fspath(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError("", f"{os.fspath(path)!r} is not UTF-8 text: {exc}") from None
    return parse_config(text, source=os.fspath(path))


def parse_config(text: str, source: str = "<string>") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{source}: not valid TOML: {exc}") from None
    return from_dict(raw)


def from_dict(raw: dict) -> Config:
    """Validate an already-parsed configuration (the dict tomllib returns)."""
    if not isinstance(raw, dict):
        raise ConfigError("", f"expected a table of settings, got {type(raw).__name__}")
    # Destinations are converted one by one: msgspec writes dict keys as `[...]` in its paths,
    # and the operator needs the destination's name.
    dests = raw.get("destinations")
    if isinstance(dests, dict):
        for name, body in dests.items():
            _convert(body, Destination, f"destinations.{_qkey(name)}")
    cfg = _convert(raw, Config, "")
    _validate(cfg)
    return cfg


def _qkey(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else f'"{name}"'


def _convert(obj: Any, typ: type, prefix: str) -> Any:
    try:
        return msgspec.convert(obj, typ)
    except msgspec.ValidationError as exc:
        msg, sep, where = str(exc).rpartition(" - at `")
        if not sep:
            msg, where = str(exc), "$`"
        path = where.rstrip("`")
        path = path[1:] if path.startswith("$") else path
        path = prefix + path if prefix else path.lstrip(".")
        raise _friendly(path, msg, typ, path[len(prefix):].lstrip(".")) from None


def _friendly(path: str, msg: str, root: type, rel: str) -> ConfigError:
    """Rewrite msgspec's message into one that says what is accepted."""
    m = re.match(r"Object contains unknown field `(.*)`$", msg)
    if m:
        key = m.group(1)
        typ = _type_at(root, rel)
        full = f"{path}.{_qkey(key)}" if path else _qkey(key)
        if typ is not None and hasattr(typ, "__struct_fields__"):
            valid = [msgspec.structs.fields(typ)[i].encode_name
                     for i in range(len(typ.__struct_fields__))]
            close = difflib.get_close_matches(key, valid, n=1)
            hint = f"; did you mean \"{close[0]}\"?" if close else ""
            return ConfigError(full, f"unknown key \"{key}\"{hint} (valid keys: "
                                     f"{', '.join(valid)})")
        return ConfigError(full, f"unknown key \"{key}\"")
    m = re.match(r"Invalid enum value (.*)$", msg)
    if m:
        typ = _type_at(root, rel, leaf=True)
        args = typing.get_args(typ) if typing.get_origin(typ) is Literal else ()
        if args:
            return ConfigError(path, f"{m.group(1)} is not one of "
                                     f"{', '.join(repr(a) for a in args)}")
    m = re.match(r"Object missing required field `(.*)`$", msg)
    if m:
        return ConfigError(path, f"missing required key \"{m.group(1)}\"")
    return ConfigError(path, msg)


def _type_at(root: type, rel: str, leaf: bool = False) -> Any:
    """The declared type at a msgspec path relative to `root` (best effort, None if lost)."""
    typ: Any = root
    for part in re.findall(r"\[[^\]]*\]|[^.\[\]]+", rel):
        typ = _strip_optional(typ)
        if part.startswith("["):
            args = typing.get_args(typ)
            origin = typing.get_origin(typ)
            if origin is list and args:
                typ = args[0]
            elif origin is dict and len(args) == 2:
                typ = args[1]
            else:
                return None
        elif hasattr(typ, "__struct_fields__"):
            hints = typing.get_type_hints(typ, include_extras=False)
            fields = {f.encode_name: f.name for f in msgspec.structs.fields(typ)}
            if part not in fields:
                return None
            typ = hints[fields[part]]
        elif typing.get_origin(typ) is dict:
            typ = typing.get_args(typ)[1]
        else:
            return None
    return typ if leaf else _strip_optional(typ)


def _strip_optional(t: Any) -> Any:
    args = typing.get_args(t)
    if typing.get_origin(t) is Union:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
        structs = [a for a in rest if hasattr(a, "__struct_fields__")]
        if len(structs) == 1:
            return structs[0]
    return t


# ---------------------------------------------------------------- checks beyond types

def _check(path: str, fn, *args, **kw):
    try:
        return fn(*args, **kw)
    except (ValueError, chunks.ChunkError) as exc:
        raise ConfigError(path, str(exc)) from None


def _check_name(path: str, name: str, what: str) -> None:
    if not _NAME_RE.match(name):
        raise ConfigError(path, f"bad {what} name {name!r}: use letters, digits and _ . : @ - "
                                f"(not starting with a punctuation mark)")


def _validate(cfg: Config) -> None:
    dests = cfg.destinations
    for name, d in dests.items():
        p = f"destinations.{_qkey(name)}"
        _check_name(p, name, "destination")
        if name == "drop":
            raise ConfigError(p, "\"drop\" is reserved (it means: no destination); rename it")
        if d.transport in ("udp", "tcp", "tls"):
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
            for key in ("path", "dsn"):
                if getattr(d, key) is not None:
                    raise ConfigError(f"{p}.{key}", f"\"{key}\" is not used by a {d.transport} "
                                                    f"destination; remove it")
        else:
            need = "path" if d.transport == "pcap" else "dsn"
            if not getattr(d, need):
                raise ConfigError(f"{p}.{need}", f"a {d.transport} destination needs \"{need}\"")
            if d.targets:
                raise ConfigError(f"{p}.targets", f"a {d.transport} destination has no targets; "
                                                  f"remove them")
            other = "dsn" if need == "path" else "path"
            if getattr(d, other) is not None:
                raise ConfigError(f"{p}.{other}", f"\"{other}\" is not used by a {d.transport} "
                                                  f"destination; remove it")

    if cfg.switch.default != "drop" and cfg.switch.default not in dests:
        raise ConfigError("switch.default", _unknown_dest(cfg.switch.default, dests)
                          + "; or \"drop\"")
    _check("admin.listen", parse_hostport, cfg.admin.listen, allow_zero=True)

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
            _check(f"{p}.allow[{j}]", parse_cidr, c)

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
                "sip_to_user", "sip_ruri_user", "sip_ruri_domain"):
        for path, v in each(key):
            if not isinstance(v, str):
                raise ConfigError(path, f"expected a string, got {v!r}")
            if key == "sip_method" and not re.fullmatch(r"[A-Za-z]+", v):
                raise ConfigError(path, f"bad SIP method {v!r}: letters only, e.g. \"INVITE\"")
