"""Value parsers shared by validation and the plan compiler: the single definition of what each
config value means (`parse_hostport`, `parse_cidr`, `parse_range`, `parse_proto_type`, ...).
Each raises ValueError saying what is wrong and what is accepted."""
from __future__ import annotations

import ipaddress
import re
from typing import Any

from hepfast.wire import chunks


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


# --- issue 14 A: string patterns -----------------------------------------------------------------
from hepfast.constants import GLOB_ANY, GLOB_STAR  # noqa: E402


def parse_glob(s: str, max_len: int = 128) -> tuple[bytes | None, tuple[int, ...] | None]:
    """A string match value: (exact bytes, None) when it has no wildcard, else (None, tokens).

    `*` is any run of bytes (also none), `?` exactly one byte; `\\*`, `\\?` and `\\\\` are a
    literal star, question mark and backslash (in TOML: '\\*' in a literal string or "\\\\*" in
    a basic one); any other backslash is an error. Tokens: byte values 0..255 for literals,
    GLOB_ANY, GLOB_STAR (runs of stars collapsed). Patterns compare bytes (UTF-8)."""
    if not isinstance(s, str):
        raise ValueError(f"expected a string, got {s!r}")
    raw = s.encode()
    toks: list[int] = []
    wild = False
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == 0x5C:                                   # backslash
            if i + 1 >= len(raw) or raw[i + 1] not in b"*?\\":
                raise ValueError(f"bad glob {s!r}: a backslash escapes only *, ? and "
                                 f"\\ (write \\\\ for a backslash)")
            toks.append(raw[i + 1])
            i += 2
            continue
        if c == 0x2A:
            wild = True
            if not toks or toks[-1] != GLOB_STAR:
                toks.append(GLOB_STAR)
        elif c == 0x3F:
            wild = True
            toks.append(GLOB_ANY)
        else:
            toks.append(c)
        i += 1
    if not wild:
        return bytes(toks), None
    if len(raw) > max_len:
        raise ValueError(f"glob {s!r} is {len(raw)} bytes long; at most {max_len}")
    return None, tuple(toks)
