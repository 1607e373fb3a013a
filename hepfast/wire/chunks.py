"""HEP chunk names, wire types and value encoding (pure Python, shared by both codecs).

A chunk key is (vendor, type). Names follow OpenSIPS where it has one; any chunk can also be named
"VENDOR:TYPE" in numbers ("0:0x0020", "3:0x0101"), or just a number for a generic chunk ("0x0011").
Values are encoded from the wire type of the chunk: uint8/16/32/64, inet4/inet6 address, string
(UTF-8 text) or bytes.
"""
from __future__ import annotations

import ipaddress
import struct

# name -> (type id, wire type)
GENERIC: dict[str, tuple[int, str]] = {
    "proto_family": (0x01, "uint8"),
    "proto_id": (0x02, "uint8"),
    "src_ip4": (0x03, "inet4"),
    "dst_ip4": (0x04, "inet4"),
    "src_ip6": (0x05, "inet6"),
    "dst_ip6": (0x06, "inet6"),
    "src_port": (0x07, "uint16"),
    "dst_port": (0x08, "uint16"),
    "timestamp": (0x09, "uint32"),
    "timestamp_us": (0x0A, "uint32"),
    "proto_type": (0x0B, "uint8"),
    "capture_id": (0x0C, "uint32"),
    "keep_alive": (0x0D, "uint16"),
    "auth_key": (0x0E, "string"),
    "payload": (0x0F, "bytes"),
    "compressed_payload": (0x10, "bytes"),
    "correlation_id": (0x11, "string"),
    "vlan_id": (0x12, "uint16"),
    "node_name": (0x13, "string"),
    "src_mac": (0x14, "uint64"),
    "dst_mac": (0x15, "uint64"),
    "eth_type": (0x16, "uint16"),
    "tcp_flags": (0x17, "uint8"),
    "ip_tos": (0x18, "uint8"),
    "mos": (0x20, "uint16"),
    "r_factor": (0x21, "uint16"),
    "geo_location": (0x22, "string"),
    "jitter": (0x23, "uint32"),
    "transaction_type": (0x24, "string"),
    "payload_json_keys": (0x25, "string"),
    "tags_values": (0x26, "string"),
    "tag_type": (0x27, "uint16"),
    "event_type": (0x28, "uint16"),
    "group_id": (0x29, "string"),
}
ALIASES = {"captagent_id": "capture_id", "correlation": "correlation_id"}
WIRE_TYPE_BY_ID = {t: w for (t, w) in GENERIC.values()}
NAME_BY_ID = {t: n for n, (t, _w) in GENERIC.items()}
FIXED_SIZE = {"uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "inet4": 4, "inet6": 16}

PROTO_TYPES = {
    "sip": 1, "xmpp": 2, "sdp": 3, "rtp": 4, "rtcp": 5, "mgcp": 6, "megaco": 7, "m2ua": 8,
    "m3ua": 9, "iax": 10, "h322": 11, "h321": 12, "m2pa": 13, "qos": 32, "mos": 34, "dns": 53,
    "isup": 54, "diameter": 56, "log": 100,
}
PROTO_IDS = {"udp": 17, "tcp": 6, "sctp": 132, "tls": 22}


class ChunkError(ValueError):
    """A chunk name or value that cannot be encoded."""


def chunk_keys(name: str | int) -> list[tuple[int, int]]:
    """All (vendor, type) keys a name stands for: `src_ip` is both 0x0003 and 0x0005."""
    if isinstance(name, str):
        n = name.strip().lower()
        if n in ("src_ip", "dst_ip"):
            base = 0x03 if n == "src_ip" else 0x04
            return [(0, base), (0, base + 2)]
    return [parse_chunk_name(name)]


def parse_chunk_name(name: str | int) -> tuple[int, int]:
    """(vendor, type) for a chunk name, a number, or "VENDOR:TYPE"."""
    if isinstance(name, int):
        if not 0 < name <= 0xFFFF:
            raise ChunkError(f"chunk type {name} out of range 1..65535")
        return (0, name)
    n = name.strip().lower()
    n = ALIASES.get(n, n)
    if n in GENERIC:
        return (0, GENERIC[n][0])
    try:
        if ":" in n:
            v, t = n.split(":", 1)
            vendor, ctype = int(v, 0), int(t, 0)
        else:
            vendor, ctype = 0, int(n, 0)
    except ValueError:
        raise ChunkError(f"unknown chunk name {name!r} (use a name, a number or 'VENDOR:TYPE')") from None
    if not (0 <= vendor <= 0xFFFF and 0 < ctype <= 0xFFFF):
        raise ChunkError(f"chunk {name!r}: vendor must be 0..65535 and type 1..65535")
    return (vendor, ctype)


def encode_value(key: tuple[int, int], value, wire: str | None = None) -> bytes:
    """Encode a chunk body. The wire type comes from the generic table for vendor-0 chunks, else
    from `wire`, else from the Python type of the value (int -> uint32, str -> string)."""
    vendor, ctype = key
    if wire is None and vendor == 0:
        wire = WIRE_TYPE_BY_ID.get(ctype)
    if wire is None:
        if isinstance(value, bool):
            raise ChunkError(f"chunk {vendor}:{ctype:#06x}: booleans are not chunk values")
        if isinstance(value, int):
            wire = "uint32"
        elif isinstance(value, (bytes, bytearray)):
            wire = "bytes"
        else:
            wire = "string"
    try:
        if wire in ("uint8", "uint16", "uint32", "uint64"):
            if isinstance(value, str):
                low = value.lower()
                if ctype == 0x0B and vendor == 0 and low in PROTO_TYPES:
                    value = PROTO_TYPES[low]
                elif ctype == 0x02 and vendor == 0 and low in PROTO_IDS:
                    value = PROTO_IDS[low]
                else:
                    value = int(value, 0)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ChunkError(f"expected an integer, got {value!r}")
            fmt = {"uint8": ">B", "uint16": ">H", "uint32": ">I", "uint64": ">Q"}[wire]
            return struct.pack(fmt, value)
        if wire == "inet4":
            return ipaddress.IPv4Address(value).packed
        if wire == "inet6":
            return ipaddress.IPv6Address(value).packed
        if wire == "string":
            return value.encode() if isinstance(value, str) else bytes(value)
        if wire == "bytes":
            return value.encode() if isinstance(value, str) else bytes(value)
    except (struct.error, ipaddress.AddressValueError, ValueError) as exc:
        raise ChunkError(f"chunk {vendor}:{ctype:#06x} ({wire}): bad value {value!r}: {exc}") from None
    raise ChunkError(f"unknown wire type {wire!r}")


def encode_chunk(vendor: int, ctype: int, body: bytes) -> bytes:
    if len(body) + 6 > 0xFFFF:
        raise ChunkError(f"chunk {vendor}:{ctype:#06x} body of {len(body)} bytes is too long")
    return struct.pack(">HHH", vendor, ctype, len(body) + 6) + body


def set_chunk(name: str | int, value, wire: str | None = None) -> bytes:
    """One pre-encoded chunk for `set`: src_ip/dst_ip pick 0x0003/4 or 0x0005/6 from the value."""
    if isinstance(name, str) and name.strip().lower() in ("src_ip", "dst_ip"):
        addr = ipaddress.ip_address(value)
        base = 0x03 if name.strip().lower() == "src_ip" else 0x04
        ctype = base if addr.version == 4 else base + 2
        return encode_chunk(0, ctype, addr.packed)
    vendor, ctype = parse_chunk_name(name)
    return encode_chunk(vendor, ctype, encode_value((vendor, ctype), value, wire))


def encode_packet(chunks: list[tuple[int, int, bytes]]) -> bytes:
    """A HEPv3 packet from (vendor, type, body) triples, in the given order."""
    body = b"".join(encode_chunk(v, t, b) for v, t, b in chunks)
    if len(body) + 6 > 0xFFFF:
        raise ChunkError(f"packet of {len(body) + 6} bytes exceeds 65535")
    return b"HEP3" + struct.pack(">H", len(body) + 6) + body


def iter_setbuf_keys(setbuf: bytes) -> list[int]:
    """Keys (vendor << 16 | type) of the chunks in a pre-encoded set buffer."""
    keys, pos = [], 0
    while pos + 6 <= len(setbuf):
        v, t, ln = struct.unpack_from(">HHH", setbuf, pos)
        keys.append((v << 16) | t)
        pos += max(ln, 6)
    return keys
