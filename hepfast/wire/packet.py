"""The slow-path view of one HEP message, shared by the compiled and pure-Python codecs.

The data plane never builds one of these: it works on `hep_pkt` structs (ext/wire/hepwire.pxd). Tests,
the CLI and the control plane use HepPacket; both codecs must build equal ones for equal input.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from hepfast.wire import reasons


class HepError(ValueError):
    """A message that does not parse; `reason` is the code, `name` its metrics label."""

    def __init__(self, reason: int, detail: str = ""):
        self.reason = reason
        self.name = reasons.invalid_name(reason)
        super().__init__(f"invalid HEP ({self.name}){': ' + detail if detail else ''}")


class Unconvertible(HepError):
    """A valid packet that HEPv2 cannot represent: v2 has no proto-type field, so its receivers
    take every payload for SIP, and only SIP (proto type 1) is converted. `name` is the drop
    reason the data plane counts it under (hepfast_packets_dropped_total{reason="unconvertible"})."""

    def __init__(self, proto_type: int | None):
        self.proto_type = proto_type
        what = "no proto type" if proto_type is None else f"proto type {proto_type}"
        ValueError.__init__(self, f"{what}, not SIP: HEPv2 can only carry SIP "
                                  "(route it to a HEPv3 destination)")
        self.reason = reasons.VERSION
        self.name = reasons.DROP_NAMES[reasons.DROP_UNCONVERTIBLE]


# The keys of `hepfast decode` (design.md section 3, a contract), in order.
DECODE_KEYS = (
    "version", "proto_family", "proto_id", "src_ip", "dst_ip", "src_port", "dst_port",
    "timestamp", "timestamp_us", "proto_type", "capture_id", "auth_key", "correlation_id",
    "node_name", "payload_len",
)


def _text(b: bytes | None) -> str | None:
    return None if b is None else b.decode("utf-8", "replace")


def _ip(b: bytes | None) -> str | None:
    if b is None:
        return None
    return str(ipaddress.ip_address(b)) if len(b) in (4, 16) else None


@dataclass(eq=True)
class HepPacket:
    version: int
    total: int
    proto_family: int | None = None      # the sender's family byte (2, 10...)
    family: int | None = None            # 4 or 6 as the codec understood it
    proto_id: int | None = None
    src_addr: bytes | None = None        # 4 or 16 raw bytes
    dst_addr: bytes | None = None
    src_port: int | None = None
    dst_port: int | None = None
    timestamp: int | None = None
    timestamp_us: int | None = None
    proto_type: int | None = None
    capture_id: int | None = None
    auth_key_raw: bytes | None = None
    correlation_id_raw: bytes | None = None
    node_name_raw: bytes | None = None
    payload: bytes = b""
    compressed: bool = False             # payload came from 0x0010 (compressed) only
    chunks: list[tuple[int, int, bytes]] = field(default_factory=list)

    @property
    def src_ip(self) -> str | None:
        return _ip(self.src_addr)

    @property
    def dst_ip(self) -> str | None:
        return _ip(self.dst_addr)

    @property
    def auth_key(self) -> str | None:
        return _text(self.auth_key_raw)

    @property
    def correlation_id(self) -> str | None:
        return _text(self.correlation_id_raw)

    @property
    def node_name(self) -> str | None:
        return _text(self.node_name_raw)

    def chunk(self, vendor: int, ctype: int) -> bytes | None:
        """Body of the last chunk with this key (duplicates: last wins), or None."""
        found = None
        for v, t, b in self.chunks:
            if v == vendor and t == ctype:
                found = b
        return found

    def call_key(self) -> bytes | None:
        """The call key: the SIP Call-ID for SIP, else the correlation id."""
        if self.proto_type == 1 and self.payload and not self.compressed:
            from hepfast.wire.sip import call_id

            cid = call_id(self.payload)
            if cid:
                return cid
        return self.correlation_id_raw or None

    def to_dict(self) -> dict:
        """The keys of design.md section 3 (absent chunks are None), plus the SIP summary."""
        d = {k: getattr(self, k) for k in DECODE_KEYS if k != "payload_len"}
        d["payload_len"] = len(self.payload)
        if self.proto_type == 1 and self.payload and not self.compressed:
            from hepfast.wire.sip import sip_summary

            d.update(sip_summary(self.payload))
        return d

    def to_record(self, index: int | None = None, payload: bool = False) -> dict:
        """The JSON object `hepfast decode` and `hepfast sink --jsonl` write: to_dict() with the
        record index first, the HEP length after the version, names next to the numbers
        (proto_family_name, proto_id_name, proto_type_name: None when unknown) and, with
        `payload`, the payload as text ("payload", UTF-8) or, when it is not UTF-8 (e.g.
        compressed), as base64 ("payload_b64")."""
        from hepfast.wire.chunks import PROTO_IDS, PROTO_TYPES

        d = {} if index is None else {"index": index}
        for k, v in self.to_dict().items():
            d[k] = v
            if k == "version":
                d["length"] = self.total
            elif k == "proto_family":
                d["proto_family_name"] = FAMILY_NAMES.get(self.family) if v is not None else None
            elif k == "proto_id":
                d["proto_id_name"] = _name_of(PROTO_IDS, v)
            elif k == "proto_type":
                d["proto_type_name"] = _name_of(PROTO_TYPES, v)
        if payload:
            try:
                d["payload"] = self.payload.decode("utf-8")
            except UnicodeDecodeError:
                import base64

                d["payload_b64"] = base64.b64encode(self.payload).decode("ascii")
        return d


FAMILY_NAMES = {4: "IPv4", 6: "IPv6"}


def _name_of(table: dict[str, int], value: int | None) -> str | None:
    if value is None:
        return None
    for name, number in table.items():
        if number == value:
            return name
    return None
