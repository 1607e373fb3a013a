"""Shared types and constants of the capture readers and writers."""
from __future__ import annotations

from typing import NamedTuple


class CaptureError(ValueError):
    """A file that is not a capture (or .hepraw) at all."""


class StreamError(ValueError):
    """A TCP stream that cannot be framed (bad magic, bad length): close the connection."""


class Datagram(NamedTuple):
    ts_sec: int
    ts_usec: int
    family: int             # 4 or 6
    ip_proto: int           # 17 UDP, 6 TCP
    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    data: bytes


# TCP flag bits (the low byte of the TCP flags field).
TCP_FIN, TCP_SYN, TCP_RST, TCP_PSH, TCP_ACK = 0x01, 0x02, 0x04, 0x08, 0x10


class TcpSegment(NamedTuple):
    """A TCP segment to write: the Datagram (ip_proto 6) plus its sequence number and flags."""
    dg: Datagram
    seq: int
    flags: int = TCP_ACK | TCP_PSH


# Link types (https://www.tcpdump.org/linktypes.html).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
_RAW_LINKTYPES = (LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6)

_PCAP_MAGICS = {                           # magic -> (byte order, nanosecond timestamps)
    b"\xd4\xc3\xb2\xa1": ("<", False),
    b"\xa1\xb2\xc3\xd4": (">", False),
    b"\x4d\x3c\xb2\xa1": ("<", True),
    b"\xa1\xb2\x3c\x4d": (">", True),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_ETH_VLAN = (0x8100, 0x88A8, 0x9100)
_IPV6_EXT = (0, 43, 60, 135, 139, 140, 253, 254)   # hop-by-hop, routing, dest opts, mobility...

# Bounds of the TCP reassembly state, per flow direction: out-of-order data held while waiting for
# a gap to fill. Past them the gap is given up (the capture lost a segment) and the stream goes on.
TCP_MAX_PENDING_SEGMENTS = 256
TCP_MAX_PENDING_BYTES = 1 << 20
# split_sip_stream: a header section that does not end within this many bytes is not SIP.
SIP_MAX_HEADERS = 65536
SIP_MAX_BODY = 1 << 24
