"""Capture files in and out: pcap, pcapng and .hepraw, with UDP datagrams and reassembled TCP.

Pure Python (stdlib only): this is the cold path of `hepfast decode` and `hepfast replay`, and the
way tests build pcaps. Invariants:
- Readers never raise on bad content: a truncated or garbage frame, an IP fragment other than the
  first, an unknown link type or protocol is skipped. Only a file that is not pcap/pcapng at all
  raises CaptureError (a message saying what the file looks like), and I/O errors are OSError.
- TCP is reassembled per direction of each flow (src, sport, dst, dport): only new in-order bytes
  are delivered (retransmitted bytes dropped, out-of-order segments held, bounded per flow), one
  Datagram per segment that advances the stream.
- `split_hep_stream` / `split_sip_stream` only frame; a stream that cannot be framed raises
  StreamError and the caller closes it (hep-protocol.md section 4: nobody resyncs mid-stream).
"""
from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable, Iterator
from typing import BinaryIO, NamedTuple


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


# ------------------------------------------------------------------------------------- .hepraw

def read_hepraw(path) -> Iterator[bytes]:
    """Records of a .hepraw file: a 4-byte big-endian length, then that many bytes. A truncated
    last record is ignored."""
    with open(path, "rb") as f:
        while True:
            head = f.read(4)
            if len(head) < 4:
                return
            (n,) = struct.unpack(">I", head)
            rec = f.read(n)
            if len(rec) < n:
                return
            yield rec


def write_hepraw(path, packets: Iterable[bytes]) -> int:
    """Write packets as .hepraw records; returns how many were written."""
    count = 0
    with open(path, "wb") as f:
        for p in packets:
            f.write(struct.pack(">I", len(p)))
            f.write(p)
            count += 1
    return count


# ------------------------------------------------------------------------------------- frames

def _pcap_frames(f: BinaryIO, head: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    endian, nanos = _PCAP_MAGICS[head[:4]]
    rest = f.read(16)                          # thiszone, sigfigs, snaplen, linktype
    if len(rest) < 16:
        return
    # The upper bits of the link type field may carry FCS information.
    linktype = struct.unpack(endian + "I", rest[12:16])[0] & 0xFFFF
    rec = struct.Struct(endian + "IIII")
    while True:
        hdr = f.read(16)
        if len(hdr) < 16:
            return
        sec, frac, incl, _orig = rec.unpack(hdr)
        if incl > 0x4000000:        # 64 MiB: a corrupt record header; nothing after it is sane
            return
        frame = f.read(incl)
        if len(frame) < incl:
            return
        if nanos:
            frac //= 1000
        yield linktype, sec, frac, frame


def _tsresol(value: int) -> int:
    """Units per second of a pcapng if_tsresol option byte."""
    if value & 0x80:
        return 1 << min(value & 0x7F, 63)
    return 10 ** min(value, 18)


def _pcapng_frames(f: BinaryIO, head: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    endian = "<"
    ifaces: list[tuple[int, int]] = []         # (linktype, units per second) per interface id
    first = True
    while True:
        hdr = head if first else f.read(8)
        first = False
        if len(hdr) < 8:
            return
        btype_raw = hdr[:4]
        if btype_raw == _PCAPNG_SHB:
            bom = f.read(4)
            if len(bom) < 4:
                return
            if bom == b"\x4d\x3c\x2b\x1a":
                endian = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                endian = ">"
            else:
                return
            blen = struct.unpack(endian + "I", hdr[4:8])[0]
            if blen < 28 or blen % 4:
                return
            if len(f.read(blen - 12)) < blen - 12:
                return
            ifaces = []                         # a new section numbers its interfaces anew
            continue
        btype, blen = struct.unpack(endian + "II", hdr)
        if blen < 12 or blen % 4 or blen > 0x4000000:
            return
        body = f.read(blen - 8)
        if len(body) < blen - 8:
            return
        body = body[:-4]                        # the trailing copy of the block length
        if btype == 1 and len(body) >= 8:       # Interface Description Block
            linktype = struct.unpack_from(endian + "H", body, 0)[0]
            units = 1_000_000
            pos = 8
            while pos + 4 <= len(body):
                code, olen = struct.unpack_from(endian + "HH", body, pos)
                if code == 0:
                    break
                if code == 9 and olen >= 1 and pos + 5 <= len(body):
                    units = _tsresol(body[pos + 4])
                pos += 4 + ((olen + 3) & ~3)
            ifaces.append((linktype, units))
        elif btype == 6 and len(body) >= 20:    # Enhanced Packet Block
            iface, hi, lo, cap, _orig = struct.unpack_from(endian + "IIIII", body, 0)
            if iface >= len(ifaces) or 20 + cap > len(body):
                continue
            linktype, units = ifaces[iface]
            ts = (hi << 32) | lo
            yield linktype, ts // units, (ts % units) * 1_000_000 // units, body[20:20 + cap]
        elif btype == 3 and len(body) >= 4:     # Simple Packet Block: interface 0, no time
            if not ifaces:
                continue
            (orig,) = struct.unpack_from(endian + "I", body, 0)
            yield ifaces[0][0], 0, 0, body[4:4 + min(orig, len(body) - 4)]
        elif btype == 2 and len(body) >= 20:    # obsolete Packet Block
            iface, _drops, hi, lo, cap, _orig = struct.unpack_from(endian + "HHIIII", body, 0)
            if iface >= len(ifaces) or 20 + cap > len(body):
                continue
            linktype, units = ifaces[iface]
            ts = (hi << 32) | lo
            yield linktype, ts // units, (ts % units) * 1_000_000 // units, body[20:20 + cap]


def _frames(path) -> Iterator[tuple[int, int, int, bytes]]:
    """(linktype, ts_sec, ts_usec, frame) for every frame of a pcap or pcapng file."""
    with open(path, "rb") as f:
        head = f.read(8)
        if head[:4] in _PCAP_MAGICS:
            yield from _pcap_frames(f, head)
        elif head[:4] == _PCAPNG_SHB:
            yield from _pcapng_frames(f, head)
        else:
            raise CaptureError(
                f"{os.fspath(path)}: not a pcap or pcapng file (starts with {head[:4].hex() or 'nothing'}); "
                "give a capture written by tcpdump/Wireshark, or a .hepraw file where accepted"
            )


def file_kind(path) -> str:
    """'pcap', 'pcapng', 'hepraw' (by content, not by name), or raise CaptureError."""
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] in _PCAP_MAGICS:
        return "pcap"
    if head[:4] == _PCAPNG_SHB:
        return "pcapng"
    if not head:
        return "hepraw"                        # an empty .hepraw holds no records
    if len(head) >= 5:
        (n,) = struct.unpack(">I", head[:4])
        if n >= 4 and (head[4:8] == b"HEP3" or head[4] in (1, 2)):
            return "hepraw"
    raise CaptureError(
        f"{os.fspath(path)}: neither pcap, pcapng nor .hepraw (starts with {head[:8].hex()}); "
        "give a tcpdump/Wireshark capture or a file of 4-byte-length-prefixed HEP records"
    )


# ------------------------------------------------------------------------------------- layers

def _l3(linktype: int, frame: bytes) -> tuple[int, bytes] | None:
    """(ip version, IP packet) from a link-layer frame, or None."""
    if linktype == LINKTYPE_ETHERNET:
        pos = 12
        if len(frame) < 14:
            return None
        etype = (frame[12] << 8) | frame[13]
        while etype in _ETH_VLAN:
            pos += 4
            if len(frame) < pos + 2:
                return None
            etype = (frame[pos] << 8) | frame[pos + 1]
        pos += 2
        if etype == 0x0800:
            return 4, frame[pos:]
        if etype == 0x86DD:
            return 6, frame[pos:]
        return None
    if linktype == LINKTYPE_LINUX_SLL:
        if len(frame) < 16:
            return None
        etype, pos = (frame[14] << 8) | frame[15], 16
    elif linktype == LINKTYPE_LINUX_SLL2:
        if len(frame) < 20:
            return None
        etype, pos = (frame[0] << 8) | frame[1], 20
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        # A 4-byte address family in the writer's byte order (NULL) or network order (LOOP):
        # 2 is IPv4, 24/28/30 are IPv6 on the BSDs. The IP version nibble settles the rest.
        if len(frame) < 5:
            return None
        ip = frame[4:]
        v = ip[0] >> 4
        return (v, ip) if v in (4, 6) else None
    elif linktype in _RAW_LINKTYPES:
        if not frame:
            return None
        v = frame[0] >> 4
        return (v, frame) if v in (4, 6) else None
    else:
        return None
    if etype == 0x0800:
        return 4, frame[pos:]
    if etype == 0x86DD:
        return 6, frame[pos:]
    return None


def _ipv4(ip: bytes) -> tuple[int, str, str, bytes] | None:
    """(protocol, src, dst, transport bytes); None for garbage and non-first fragments."""
    if len(ip) < 20 or ip[0] >> 4 != 4:
        return None
    ihl = (ip[0] & 0x0F) * 4
    total = (ip[2] << 8) | ip[3]
    if ihl < 20 or total < ihl or len(ip) < ihl:
        return None
    if ((ip[6] & 0x1F) << 8) | ip[7]:         # fragment offset != 0: no transport header here
        return None
    end = min(total, len(ip))                 # drop Ethernet padding; keep a truncated capture
    return (ip[9], socket.inet_ntop(socket.AF_INET, ip[12:16]),
            socket.inet_ntop(socket.AF_INET, ip[16:20]), ip[ihl:end])


def _ipv6(ip: bytes) -> tuple[int, str, str, bytes] | None:
    if len(ip) < 40 or ip[0] >> 4 != 6:
        return None
    plen = (ip[4] << 8) | ip[5]
    nxt = ip[6]
    end = min(40 + plen, len(ip)) if plen else len(ip)
    pos = 40
    while True:
        if nxt in _IPV6_EXT:
            if pos + 2 > end:
                return None
            nxt, pos = ip[pos], pos + (ip[pos + 1] + 1) * 8
        elif nxt == 44:                        # fragment header
            if pos + 8 > end:
                return None
            if ((ip[pos + 2] << 8) | ip[pos + 3]) & 0xFFF8:
                return None                    # not the first fragment
            nxt, pos = ip[pos], pos + 8
        elif nxt == 51:                        # AH: length in 4-byte units, minus 2
            if pos + 2 > end:
                return None
            nxt, pos = ip[pos], pos + (ip[pos + 1] + 2) * 4
        else:
            break
        if pos > end:
            return None
    return (nxt, socket.inet_ntop(socket.AF_INET6, ip[8:24]),
            socket.inet_ntop(socket.AF_INET6, ip[24:40]), ip[pos:end])


class _Seg(NamedTuple):
    ts_sec: int
    ts_usec: int
    family: int
    src: str
    dst: str
    sport: int
    dport: int
    seq: int
    flags: int
    data: bytes


def _packets(path) -> Iterator[Datagram | _Seg]:
    """UDP Datagrams and raw TCP segments (not yet reassembled), in capture order."""
    for linktype, sec, usec, frame in _frames(path):
        try:
            l3 = _l3(linktype, frame)
            if l3 is None:
                continue
            fam, ip = l3
            parsed = _ipv4(ip) if fam == 4 else _ipv6(ip)
            if parsed is None:
                continue
            proto, src, dst, tp = parsed
            if proto == 17:
                if len(tp) < 8:
                    continue
                sport, dport, ulen = struct.unpack_from(">HHH", tp, 0)
                data = tp[8:ulen] if 8 <= ulen <= len(tp) else tp[8:]
                yield Datagram(sec, usec, fam, 17, src, dst, sport, dport, bytes(data))
            elif proto == 6:
                if len(tp) < 20:
                    continue
                sport, dport, seq = struct.unpack_from(">HHI", tp, 0)
                doff = (tp[12] >> 4) * 4
                if doff < 20 or doff > len(tp):
                    continue
                yield _Seg(sec, usec, fam, src, dst, sport, dport, seq, tp[13], bytes(tp[doff:]))
        except (IndexError, ValueError, struct.error, OSError):
            continue                           # garbage frame: skip it, never raise


class _Flow:
    __slots__ = ("next_seq", "pending", "pending_bytes")

    def __init__(self, next_seq: int):
        self.next_seq = next_seq
        self.pending: dict[int, _Seg] = {}
        self.pending_bytes = 0


def _rel(a: int, b: int) -> int:
    """a - b in 32-bit sequence space, as a signed number."""
    d = (a - b) & 0xFFFFFFFF
    return d - (1 << 32) if d & 0x80000000 else d


class TcpReassembler:
    """Per-direction TCP reassembly: feed segments in capture order, get in-order new bytes.

    `feed` returns a list of Datagrams (ip_proto 6), one per segment that advanced the stream (a
    held segment is delivered, with its own timestamp, when the gap before it fills)."""

    def __init__(self, max_segments: int = TCP_MAX_PENDING_SEGMENTS,
                 max_bytes: int = TCP_MAX_PENDING_BYTES):
        self.flows: dict[tuple, _Flow] = {}
        self.max_segments = max_segments
        self.max_bytes = max_bytes

    def feed(self, s: _Seg) -> list[Datagram]:
        key = (s.src, s.sport, s.dst, s.dport)
        if s.flags & TCP_RST:
            self.flows.pop(key, None)
            return []
        flow = self.flows.get(key)
        seq, data = s.seq, s.data
        if s.flags & TCP_SYN:
            seq = (seq + 1) & 0xFFFFFFFF       # the SYN takes one sequence number
            # A retransmitted SYN falls at or just behind the stream position; anything else is a
            # new connection on this 4-tuple.
            if flow is None or not -(1 << 20) <= _rel(seq, flow.next_seq) <= 0:
                flow = self.flows[key] = _Flow(seq)
        if not data:
            return []
        if flow is None:
            # The SYN was not captured: the stream starts at the first data we see.
            flow = self.flows[key] = _Flow(seq)
        s = s._replace(seq=seq)
        out: list[Datagram] = []
        if _rel(seq, flow.next_seq) > 0:
            self._hold(flow, s, out)
            return out
        self._take(flow, s, out)
        self._drain(flow, out)
        return out

    def _take(self, flow: _Flow, s: _Seg, out: list[Datagram]) -> None:
        skip = -_rel(s.seq, flow.next_seq)     # bytes of this segment already delivered
        if skip >= len(s.data):
            return                             # a pure retransmission
        new = s.data[skip:] if skip > 0 else s.data
        flow.next_seq = (flow.next_seq + len(new)) & 0xFFFFFFFF
        out.append(Datagram(s.ts_sec, s.ts_usec, s.family, 6, s.src, s.dst, s.sport, s.dport,
                            new))

    def _drain(self, flow: _Flow, out: list[Datagram]) -> None:
        while flow.pending:
            ready = [q for q in flow.pending if _rel(q, flow.next_seq) <= 0]
            if not ready:
                return
            for q in ready:
                s = flow.pending.pop(q)
                flow.pending_bytes -= len(s.data)
                self._take(flow, s, out)

    def _hold(self, flow: _Flow, s: _Seg, out: list[Datagram]) -> None:
        old = flow.pending.get(s.seq)
        if old is not None:
            if len(old.data) >= len(s.data):
                return
            flow.pending_bytes -= len(old.data)
        flow.pending[s.seq] = s
        flow.pending_bytes += len(s.data)
        while flow.pending and (len(flow.pending) > self.max_segments
                                or flow.pending_bytes > self.max_bytes):
            # The capture lost what fills the gap: skip it and go on from the earliest held data.
            flow.next_seq = min(flow.pending, key=lambda q: _rel(q, flow.next_seq))
            self._drain(flow, out)

    def flush(self) -> list[Datagram]:
        """At the end of a capture: deliver held data, skipping the gaps nothing filled."""
        out: list[Datagram] = []
        for flow in self.flows.values():
            while flow.pending:
                flow.next_seq = min(flow.pending, key=lambda q: _rel(q, flow.next_seq))
                self._drain(flow, out)
        return out


def read_capture(path) -> Iterator[Datagram]:
    """Every UDP datagram and every TCP segment that advances its stream, from a pcap/pcapng."""
    tcp = TcpReassembler()
    for p in _packets(path):
        if isinstance(p, Datagram):
            yield p
        else:
            yield from tcp.feed(p)
    yield from tcp.flush()


# ------------------------------------------------------------------------------------- streams

def split_hep_stream(buf) -> tuple[list[bytes], bytes]:
    """Complete HEPv3 messages at the start of a TCP stream buffer, and the remainder.
    Raises StreamError on bad magic or a length below 6: the caller closes the connection."""
    b = bytes(buf)
    msgs: list[bytes] = []
    pos, n = 0, len(b)
    while n - pos >= 6:
        if b[pos:pos + 4] != b"HEP3":
            raise StreamError(f"not a HEPv3 stream at byte {pos} (starts {b[pos:pos + 4]!r})")
        ln = (b[pos + 4] << 8) | b[pos + 5]
        if ln < 6:
            raise StreamError(f"HEPv3 length {ln} < 6 at byte {pos}")
        if n - pos < ln:
            break
        msgs.append(b[pos:pos + ln])
        pos += ln
    if n - pos < 6 and b"HEP3"[:min(4, n - pos)] != b[pos:pos + 4]:
        raise StreamError(f"not a HEPv3 stream at byte {pos} (starts {b[pos:pos + 4]!r})")
    return msgs, b[pos:]


def _content_length(headers: bytes) -> int:
    """Content-Length (or compact `l`) of a SIP header section; 0 when absent."""
    for line in headers.split(b"\n")[1:]:
        if line[:1] in (b" ", b"\t"):
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        if name.rstrip(b" \t").lower() in (b"content-length", b"l"):
            v = value.strip(b" \t\r")
            if not v.isdigit():
                raise StreamError(f"bad SIP Content-Length {v[:20]!r}")
            n = int(v)
            if n > SIP_MAX_BODY:
                raise StreamError(f"SIP Content-Length {n} is too large")
            return n
    return 0


def split_sip_stream(buf) -> tuple[list[bytes], bytes]:
    """Complete SIP messages at the start of a TCP stream buffer, and the remainder. Keep-alive
    CRLFs between messages are dropped. Raises StreamError when the stream cannot be framed (no
    end of headers within SIP_MAX_HEADERS bytes, a bad Content-Length)."""
    b = bytes(buf)
    msgs: list[bytes] = []
    pos, n = 0, len(b)
    while pos < n:
        while pos < n and b[pos] in (13, 10):   # RFC 5626 keep-alives: CRLFCRLF ping, CRLF pong
            pos += 1
        if pos >= n:
            break
        end = b.find(b"\r\n\r\n", pos)
        if end < 0:
            if n - pos > SIP_MAX_HEADERS:
                raise StreamError(f"no end of SIP headers in {n - pos} bytes")
            break
        if end - pos > SIP_MAX_HEADERS:
            raise StreamError(f"SIP header section of {end - pos} bytes is too large")
        body_at = end + 4
        clen = _content_length(b[pos:end])
        if n - body_at < clen:
            break
        msgs.append(b[pos:body_at + clen])
        pos = body_at + clen
    return msgs, b[pos:]


# ------------------------------------------------------------------------------------- HEP

def looks_like_hep(data: bytes) -> bool:
    """A UDP payload that is plausibly HEP: "HEP3", or a v1/v2 header with a known family,
    a known IP protocol and room for its addresses."""
    if data[:4] == b"HEP3":
        return True
    if len(data) < 16 or data[0] not in (1, 2):
        return False
    fam = data[2]
    if fam == 2:
        alen = 4
    elif fam in (10, 24, 28, 30):
        alen = 16
    else:
        return False
    if data[3] not in (6, 17, 132, 22):
        return False
    return len(data) >= 8 + 2 * alen + (12 if data[0] == 2 else 0)


def iter_hep_messages(path) -> Iterator[tuple[Datagram | None, bytes]]:
    """HEP messages of a .hepraw (datagram None) or of a pcap/pcapng: UDP payloads on any port
    that look like HEP, and HEPv3 framed out of TCP streams (per flow direction; a stream that
    breaks framing is dropped until a segment starts with "HEP3" again). Decided by content."""
    if file_kind(path) == "hepraw":
        for rec in read_hepraw(path):
            yield None, rec
        return
    streams: dict[tuple, bytes] = {}
    for dg in read_capture(path):
        if dg.ip_proto == 17:
            if looks_like_hep(dg.data):
                yield dg, dg.data
            continue
        key = (dg.src_ip, dg.src_port, dg.dst_ip, dg.dst_port)
        buf = streams.get(key, b"")
        if not buf and b"HEP3"[:len(dg.data[:4])] != dg.data[:4]:
            continue                           # not (or no longer) at a message boundary
        try:
            msgs, rest = split_hep_stream(buf + dg.data)
        except StreamError:
            streams.pop(key, None)
            continue
        streams[key] = rest
        for m in msgs:
            yield dg, m


# ------------------------------------------------------------------------------------- writing

def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp_datagrams(stream: bytes, *, src_ip: str, dst_ip: str, src_port: int, dst_port: int,
                  sizes: Iterable[int] | None = None, mss: int = 1400, isn: int = 1000,
                  syn: bool = True, ts: tuple[int, int] = (0, 0),
                  ts_step_us: int = 1000) -> list[TcpSegment]:
    """A byte stream cut into TCP segments for write_pcap: optionally a SYN first (seq = isn),
    then data segments from isn+1 with the given sizes (the last one takes the rest) or of at most
    `mss` bytes. Reorder, duplicate or drop items of the list to test reassembly."""
    family = 6 if ":" in src_ip else 4
    sec, usec = ts
    out: list[TcpSegment] = []

    def stamp():
        nonlocal sec, usec
        t = (sec, usec)
        usec += ts_step_us
        sec, usec = sec + usec // 1_000_000, usec % 1_000_000
        return t

    if syn:
        out.append(TcpSegment(Datagram(*stamp(), family, 6, src_ip, dst_ip, src_port, dst_port,
                                       b""), isn, TCP_SYN))
    seq = (isn + 1) & 0xFFFFFFFF
    pos = 0
    size_list = list(sizes) if sizes is not None else []
    while pos < len(stream):
        step = size_list.pop(0) if size_list else (mss if sizes is None else len(stream) - pos)
        chunk = stream[pos:pos + max(step, 1)]
        out.append(TcpSegment(Datagram(*stamp(), family, 6, src_ip, dst_ip, src_port, dst_port,
                                       chunk), seq))
        seq = (seq + len(chunk)) & 0xFFFFFFFF
        pos += len(chunk)
    return out


def build_frame(item: Datagram | TcpSegment, linktype: int = LINKTYPE_ETHERNET,
                vlan: int | None = None, ip_id: int = 0) -> bytes:
    """One link-layer frame carrying a Datagram (UDP, or TCP with seq from a TcpSegment; a bare
    TCP Datagram gets seq 1). Checksums are computed so other tools accept the file."""
    if isinstance(item, TcpSegment):
        dg, seq, flags = item
    else:
        dg, seq, flags = item, 1, TCP_ACK | TCP_PSH
    fam = socket.AF_INET if dg.family == 4 else socket.AF_INET6
    src, dst = socket.inet_pton(fam, dg.src_ip), socket.inet_pton(fam, dg.dst_ip)
    if dg.ip_proto == 17:
        tp = struct.pack(">HHHH", dg.src_port, dg.dst_port, 8 + len(dg.data), 0) + dg.data
    elif dg.ip_proto == 6:
        tp = struct.pack(">HHIIBBHHH", dg.src_port, dg.dst_port, seq & 0xFFFFFFFF, 0, 5 << 4,
                         flags, 65535, 0, 0) + dg.data
    else:
        raise ValueError(f"ip_proto {dg.ip_proto}: only UDP (17) and TCP (6) can be written")
    pseudo = src + dst + struct.pack(">IxxxB" if dg.family == 6 else ">xBH",
                                     *((len(tp), dg.ip_proto) if dg.family == 6
                                       else (dg.ip_proto, len(tp))))
    ck = _csum(pseudo + tp)
    off = 6 if dg.ip_proto == 17 else 16
    if dg.ip_proto == 17 and ck == 0:
        ck = 0xFFFF
    tp = tp[:off] + struct.pack(">H", ck) + tp[off + 2:]
    if dg.family == 4:
        if 20 + len(tp) > 0xFFFF:
            raise ValueError(f"{len(dg.data)} bytes do not fit one IPv4 packet")
        iph = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tp), ip_id & 0xFFFF, 0x4000, 64,
                          dg.ip_proto, 0, src, dst)
        ip = iph[:10] + struct.pack(">H", _csum(iph)) + iph[12:] + tp
        etype = 0x0800
    else:
        if len(tp) > 0xFFFF:
            raise ValueError(f"{len(dg.data)} bytes do not fit one IPv6 packet")
        ip = struct.pack(">IHBB16s16s", 6 << 28, len(tp), dg.ip_proto, 64, src, dst) + tp
        etype = 0x86DD
    if linktype == LINKTYPE_ETHERNET:
        tag = struct.pack(">HH", 0x8100, vlan & 0xFFF) if vlan is not None else b""
        return b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01" + tag + struct.pack(">H", etype) + ip
    if linktype == LINKTYPE_LINUX_SLL:
        return struct.pack(">HHH8sH", 0, 772, 6, b"\0" * 8, etype) + ip
    if linktype == LINKTYPE_LINUX_SLL2:
        return struct.pack(">HHIHBB8s", etype, 0, 1, 772, 0, 6, b"\0" * 8) + ip
    if linktype == LINKTYPE_NULL:
        return struct.pack("<I", 2 if dg.family == 4 else 30) + ip
    if linktype in _RAW_LINKTYPES:
        return ip
    raise ValueError(f"link type {linktype} cannot be written (use 0, 1, 101, 113 or 276)")


def write_pcap(path, items: Iterable[Datagram | TcpSegment], linktype: int = LINKTYPE_ETHERNET,
               *, vlan: int | None = None, nanosecond: bool = False, big_endian: bool = False,
               snaplen: int = 262144) -> int:
    """Write a classic pcap of UDP/TCP frames built from Datagrams (ip_proto 17 or 6) or
    TcpSegments (see tcp_datagrams). A bare TCP Datagram gets the next sequence number of its
    flow, so a list of Datagrams forms an in-order stream. Returns the number of frames."""
    e = ">" if big_endian else "<"
    magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    next_seq: dict[tuple, int] = {}
    count = 0
    with open(path, "wb") as f:
        f.write(struct.pack(e + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype))
        for item in items:
            if isinstance(item, Datagram) and item.ip_proto == 6:
                key = (item.src_ip, item.src_port, item.dst_ip, item.dst_port)
                seq = next_seq.get(key, 1)
                next_seq[key] = seq + len(item.data)
                item = TcpSegment(item, seq)
            dg = item.dg if isinstance(item, TcpSegment) else item
            frame = build_frame(item, linktype, vlan, ip_id=count)
            frac = dg.ts_usec * 1000 if nanosecond else dg.ts_usec
            f.write(struct.pack(e + "IIII", dg.ts_sec, frac, len(frame), len(frame)))
            f.write(frame)
            count += 1
    return count


def write_pcapng(path, items: Iterable[Datagram | TcpSegment | tuple[int, Datagram]],
                 linktypes: tuple[int, ...] = (LINKTYPE_ETHERNET,), *, tsresol: int = 6,
                 big_endian: bool = False, simple: bool = False) -> int:
    """Write a pcapng: one section, one interface per link type (if_tsresol = `tsresol`, the
    option byte), Enhanced Packet Blocks (Simple Packet Blocks on interface 0 with simple=True).
    An item may be (interface index, Datagram/TcpSegment). Returns the number of packets."""
    e = ">" if big_endian else "<"
    units = _tsresol(tsresol)

    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        return struct.pack(e + "II", btype, len(body) + 12) + body + struct.pack(e + "I",
                                                                                len(body) + 12)

    count = 0
    with open(path, "wb") as f:
        f.write(block(0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1)))
        for lt in linktypes:
            opts = struct.pack(e + "HHB3x", 9, 1, tsresol) + struct.pack(e + "HH", 0, 0)
            f.write(block(1, struct.pack(e + "HHI", lt, 0, 262144) + opts))
        for item in items:
            iface = 0
            if isinstance(item, tuple) and not isinstance(item, (Datagram, TcpSegment)):
                iface, item = item
            dg = item.dg if isinstance(item, TcpSegment) else item
            frame = build_frame(item, linktypes[iface], ip_id=count)
            if simple:
                f.write(block(3, struct.pack(e + "I", len(frame)) + frame))
            else:
                ts = dg.ts_sec * units + dg.ts_usec * units // 1_000_000
                f.write(block(6, struct.pack(e + "IIIII", iface, ts >> 32, ts & 0xFFFFFFFF,
                                             len(frame), len(frame)) + frame))
            count += 1
    return count


__all__ = [
    "CaptureError", "StreamError", "Datagram", "TcpSegment", "TcpReassembler", "read_hepraw",
    "write_hepraw", "read_capture", "file_kind", "split_hep_stream", "split_sip_stream",
    "looks_like_hep", "iter_hep_messages", "tcp_datagrams", "build_frame", "write_pcap",
    "write_pcapng",
]
