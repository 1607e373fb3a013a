"""pcap and pcapng readers: frames, link layers, IPv4/IPv6 (extension headers, VLANs, first
fragments), UDP datagrams and raw TCP segments. Never raises on bad content."""
from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

from hepfast.tools.capture.common import (
    _ETH_VLAN,
    _IPV6_EXT,
    _PCAP_MAGICS,
    _PCAPNG_SHB,
    _RAW_LINKTYPES,
    LINKTYPE_ETHERNET,
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    LINKTYPE_LOOP,
    LINKTYPE_NULL,
    CaptureError,
    Datagram,
)


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
