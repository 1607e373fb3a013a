"""Writing pcap and pcapng files (for tests and tools): frames rebuilt from datagrams and TCP
segments with plausible headers and checksums."""
from __future__ import annotations

import socket
import struct
from collections.abc import Iterable

from hepfast.tools.capture.common import (
    _RAW_LINKTYPES,
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_NULL,
    TCP_ACK,
    TCP_PSH,
    TCP_SYN,
    Datagram,
    TcpSegment,
)
from hepfast.tools.capture.reader import _tsresol

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
