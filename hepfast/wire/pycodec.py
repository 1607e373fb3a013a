"""Pure-Python reference codec: the oracle for tests and the HEPFAST_PURE=1 fallback.

It mirrors ext/wire/hepwire.pxd rule for rule (same reason codes, same last-wins duplicates, same
family inference, same v2 layout) and exposes the same functions as the compiled hepfast.wire._codec:
reason, decode, rewrite, parse_batch, rewrite_batch. Keep the two in step: the property tests
compare them on random input.
"""
from __future__ import annotations

import struct

from hepfast.constants import DEFAULT_MAX_CHUNKS, INVALID
from hepfast.wire import chunks
from hepfast.wire.packet import HepError, HepPacket, Unconvertible

OK, SHORT, MAGIC, LENGTH, CHUNK, VERSION = range(6)
CHUNKS = INVALID["chunks"]       # more HEPv3 chunks than max_chunks: parsing cost is bounded
# A cap no packet reaches (65535 bytes hold at most 10921 chunks): for re-reading our own output.
UNCAPPED = 65535

# Exact body sizes of the fixed-width generic chunks, from the one chunk table (the C side's
# hep_fixed_size is generated from the same table).
_FIXED = {t: chunks.FIXED_SIZE[w] for (t, w) in chunks.GENERIC.values() if w in chunks.FIXED_SIZE}


def _family_of(raw: int) -> int:
    if raw == 2:
        return 4
    if raw in (10, 24, 28, 30):
        return 6
    return 0


def _walk_v3(data: bytes, max_chunks: int = DEFAULT_MAX_CHUNKS):
    """(reason, total, [(vendor, type, pos, clen)]). Chunk max_chunks + 1 is refused (CHUNKS)
    before it is read, as hep_parse_lim does."""
    n = len(data)
    if n < 6:
        return SHORT, 0, []
    total = (data[4] << 8) | data[5]
    if total < 6 or total > n:
        return LENGTH, 0, []
    chunks = []
    pos = 6
    while pos < total:
        if len(chunks) >= max_chunks:
            return CHUNKS, 0, []
        if total - pos < 6:
            return CHUNK, 0, []
        vendor, ctype, clen = struct.unpack_from(">HHH", data, pos)
        if clen < 6 or clen > total - pos:
            return CHUNK, 0, []
        if vendor == 0 and ctype < 64:
            fs = _FIXED.get(ctype, -1)
            if fs >= 0 and fs != clen - 6:
                return CHUNK, 0, []
        chunks.append((vendor, ctype, pos, clen))
        pos += clen
    return OK, total, chunks


def _v12_layout(data: bytes):
    """(reason, family, header length)."""
    n = len(data)
    if n > 65535:
        return LENGTH, 0, 0
    fam = _family_of(data[2])
    if fam == 0:
        return VERSION, 0, 0
    alen = 4 if fam == 4 else 16
    hdr = 8 + 2 * alen + (12 if data[0] == 2 else 0)
    if n < hdr:
        return SHORT, 0, 0
    return OK, fam, hdr


def reason(data, max_chunks: int = DEFAULT_MAX_CHUNKS) -> int:
    data = bytes(data)
    if len(data) < 4:
        return SHORT
    if data[:3] == b"HEP":
        return _walk_v3(data, max_chunks)[0] if data[3] == 0x33 else VERSION
    if data[:3] == b"EEP":
        return VERSION
    if data[0] in (1, 2):
        return _v12_layout(data)[0]
    return MAGIC


def _v12_chunks(data: bytes, fam: int, hdr: int) -> list[tuple[int, int, bytes]]:
    """The v3 chunks a v1/v2 header stands for (the order hep_build_v3 writes them)."""
    alen = 4 if fam == 4 else 16
    src, dst = data[8:8 + alen], data[8 + alen:8 + 2 * alen]
    out = [(0, 1, data[2:3]), (0, 2, data[3:4])]
    out += [(0, 3, src), (0, 4, dst)] if fam == 4 else [(0, 5, src), (0, 6, dst)]
    out += [(0, 7, data[4:6]), (0, 8, data[6:8])]
    t = 8 + 2 * alen
    if data[0] == 2:
        sec, usec, cap = struct.unpack_from("<IIH", data, t)
        out += [(0, 9, struct.pack(">I", sec)), (0, 10, struct.pack(">I", usec))]
    out.append((0, 0x0B, b"\x01"))
    if data[0] == 2:
        out.append((0, 0x0C, struct.pack(">I", cap)))
    out.append((0, 0x0F, data[hdr:]))
    return out


def _packet(version: int, total: int, chunks: list[tuple[int, int, bytes]]) -> HepPacket:
    p = HepPacket(version=version, total=total, chunks=chunks)
    a4: dict[int, bytes] = {}
    a6: dict[int, bytes] = {}
    zpayload = None
    have_payload = False
    for vendor, ctype, body in chunks:
        if vendor != 0:
            continue
        if ctype == 1:
            p.proto_family = body[0]
        elif ctype == 2:
            p.proto_id = body[0]
        elif ctype in (3, 4):
            a4[ctype] = body
        elif ctype in (5, 6):
            a6[ctype] = body
        elif ctype == 7:
            p.src_port = (body[0] << 8) | body[1]
        elif ctype == 8:
            p.dst_port = (body[0] << 8) | body[1]
        elif ctype == 9:
            p.timestamp = struct.unpack(">I", body)[0]
        elif ctype == 10:
            p.timestamp_us = struct.unpack(">I", body)[0]
        elif ctype == 0x0B:
            p.proto_type = body[0]
        elif ctype == 0x0C:
            p.capture_id = struct.unpack(">I", body)[0]
        elif ctype == 0x0E:
            p.auth_key_raw = body
        elif ctype == 0x0F:
            p.payload = body
            have_payload = True
        elif ctype == 0x10:
            if not have_payload:
                zpayload = body
        elif ctype == 0x11:
            p.correlation_id_raw = body
        elif ctype == 0x13:
            p.node_name_raw = body
    if not have_payload and zpayload is not None:
        p.payload, p.compressed = zpayload, True
    fam = _family_of(p.proto_family) if p.proto_family is not None else 0
    if fam == 0:
        fam = 6 if a6 else (4 if a4 else 0)
    p.family = fam or None
    if fam == 4:
        p.src_addr, p.dst_addr = a4.get(3), a4.get(4)
    elif fam == 6:
        p.src_addr, p.dst_addr = a6.get(5), a6.get(6)
    return p


def decode(data, max_chunks: int = DEFAULT_MAX_CHUNKS) -> HepPacket:
    data = bytes(data)
    r = reason(data, max_chunks)
    if r != OK:
        raise HepError(r)
    if data[:4] == b"HEP3":
        _, total, walk = _walk_v3(data, max_chunks)
        chunks = [(v, t, data[pos + 6:pos + clen]) for v, t, pos, clen in walk]
        return _packet(3, total, chunks)
    _, fam, hdr = _v12_layout(data)
    return _packet(data[0], len(data), _v12_chunks(data, fam, hdr))


def _split_setbuf(setbuf: bytes) -> list[tuple[int, bytes]]:
    """[(key, encoded chunk)] of pre-encoded set chunks."""
    out = []
    pos = 0
    while pos + 6 <= len(setbuf):
        clen = (setbuf[pos + 4] << 8) | setbuf[pos + 5]
        if clen < 6 or pos + clen > len(setbuf):
            raise HepError(LENGTH, "malformed set chunks")
        key = (setbuf[pos] << 24) | (setbuf[pos + 1] << 16) | (setbuf[pos + 2] << 8) | setbuf[pos + 3]
        out.append((key, setbuf[pos:pos + clen]))
        pos += clen
    return out


_PAYLOAD_KEYS = (0x0F, 0x10)


def _v3_body(data, setbuf: bytes = b"", skip=()) -> bytes:
    """The chunks of the v3 form, rewritten (hepwire.pxd's building section states the order):
    kept chunks keep their place, a set chunk replaces the first skipped chunk of its key in
    place, the other set chunks go before the first payload chunk (or at the end)."""
    p = decode(data)
    skipset = set(skip)
    sets = _split_setbuf(bytes(setbuf))
    src_keys = {(v << 16) | t for v, t, _ in p.chunks}
    added = [c for k, c in sets if not (k in skipset and k in src_keys)]
    replaced: set[int] = set()
    out: list[bytes] = []
    placed = False
    for v, t, b in p.chunks:
        key = (v << 16) | t
        if not placed and key in _PAYLOAD_KEYS:
            out += added
            placed = True
        if key not in skipset:
            out.append(struct.pack(">HHH", v, t, len(b) + 6) + b)
        elif key not in replaced:
            replaced.add(key)
            out += [c for k, c in sets if k == key]
    if not placed:
        out += added
    return b"".join(out)


def rewrite(data, setbuf: bytes = b"", skip=(), version: int = 3) -> bytes:
    """The packet as HEPv3 (or v2) with the chunks whose key (vendor<<16|type) is in `skip`
    removed and the pre-encoded chunks of `setbuf` put in (in place of a skipped chunk of the same
    key, else before the payload). HEPv2 of a packet that is not SIP raises Unconvertible."""
    body = _v3_body(data, setbuf, skip)
    if len(body) + 6 > 65535:
        raise HepError(LENGTH, "rewritten packet exceeds 65535 bytes")
    out = b"HEP3" + struct.pack(">H", len(body) + 6) + body
    if version == 2:
        # `out` may hold more chunks than the input (set chunks): the cap is for input only.
        return to_v2(out, UNCAPPED)
    return out


def to_v2(data, max_chunks: int = DEFAULT_MAX_CHUNKS) -> bytes:
    p = decode(data, max_chunks)
    if p.proto_type != 1:
        raise Unconvertible(p.proto_type)
    fam = p.family
    if fam not in (4, 6):
        raise HepError(VERSION, "no address family: cannot express as HEPv2")
    alen = 4 if fam == 4 else 16
    hdr = 8 + 2 * alen + 12
    if hdr + len(p.payload) > 65535:
        raise HepError(LENGTH, "HEPv2 form exceeds 65535 bytes")

    def addr(a):
        return (a or b"")[:alen].ljust(alen, b"\0") if a is not None and len(a) == alen \
            else b"\0" * alen

    return (bytes([2, 8 + 2 * alen, 2 if fam == 4 else 10, p.proto_id or 0])
            + struct.pack(">HH", p.src_port or 0, p.dst_port or 0)
            + addr(p.src_addr) + addr(p.dst_addr)
            + struct.pack("<IIHH", p.timestamp or 0, p.timestamp_us or 0,
                          (p.capture_id or 0) & 0xFFFF, 0)
            + p.payload)


def parse_batch(buf, offsets, lengths, reasons_out) -> int:
    mv = bytes(buf)
    ok = 0
    for i in range(len(offsets)):
        r = reason(mv[offsets[i]:offsets[i] + lengths[i]])
        reasons_out[i] = r
        ok += r == OK
    return ok


def rewrite_batch(buf, offsets, lengths, setbuf, skip, out) -> int:
    """Rewrite every valid packet into `out` (a writable buffer), back to back; returns bytes."""
    mv = bytes(buf)
    pos = 0
    o = memoryview(out)
    for i in range(len(offsets)):
        try:
            r = rewrite(mv[offsets[i]:offsets[i] + lengths[i]], setbuf, skip)
        except HepError:
            continue
        o[pos:pos + len(r)] = r
        pos += len(r)
    return pos
