# cython: language_level=3
"""Compiled HEP codec: the Python-callable face of ext/wire/hepwire.pxd.

Same functions and results as hepfast/wire/pycodec.py (the reference). The per-packet work
happens in the inline C functions of hepwire.pxd; this module only adds the slow-path view
(HepPacket) and the batch entry points the benchmarks use. Buffers are borrowed through
memoryviews, never copied except to build return values.
"""
from libc.stdint cimport uint8_t, uint32_t, int64_t
from libc.stdlib cimport malloc, free
from hepwire cimport *
from constants cimport constants

CONSTANTS = constants()    # what this module was compiled with (tests/test_constants.py)

from hepfast.wire.packet import HepError, HepPacket, Unconvertible

DEF SCRATCH = 65536 + 256

cdef bytes _EMPTY = b""


cdef inline const uint8_t *_ptr(const uint8_t[::1] mv) noexcept:
    if mv.shape[0] == 0:
        return <const uint8_t *>_EMPTY
    return &mv[0]


cdef const uint8_t *_parsed(const uint8_t[::1] mv, hep_pkt *p,
                            uint32_t max_chunks=DEFAULT_MAX_CHUNKS) except NULL:
    """Parse mv into p; raise HepError with the reason when it does not parse."""
    cdef const uint8_t *buf = _ptr(mv)
    cdef int r = hep_parse_lim(buf, mv.shape[0], p, max_chunks)
    if r != R_OK:
        raise HepError(r)
    return buf


def reason(data, uint32_t max_chunks=DEFAULT_MAX_CHUNKS):
    """Reason code for one message: 0 when it parses (at most max_chunks HEPv3 chunks)."""
    cdef const uint8_t[::1] mv = data
    cdef hep_pkt p
    return hep_parse_lim(_ptr(mv), mv.shape[0], &p, max_chunks)


cdef list _walk_chunks(const uint8_t *buf, uint32_t total):
    cdef list out = []
    cdef uint32_t pos = 6, clen
    while pos < total:
        clen = hep_rd16(buf + pos + 4)
        out.append((hep_rd16(buf + pos), hep_rd16(buf + pos + 2),
                    buf[pos + 6:pos + clen]))
        pos += clen
    return out


cdef object _packet(const uint8_t *buf, hep_pkt *p, list chunks):
    cdef uint64_t pr = p.present

    def has(int t):
        return bool(pr & ((<uint64_t>1) << t))
    pk = HepPacket(version=p.version, total=p.total, chunks=chunks)
    if has(CH_FAMILY):
        pk.proto_family = p.family_raw
    if has(CH_PROTO):
        pk.proto_id = p.ip_proto
    pk.family = p.family or None
    if p.family == 4:
        if has(CH_SRC4):
            pk.src_addr = p.src4[:4]
        if has(CH_DST4):
            pk.dst_addr = p.dst4[:4]
    elif p.family == 6:
        if has(CH_SRC6):
            pk.src_addr = p.src6[:16]
        if has(CH_DST6):
            pk.dst_addr = p.dst6[:16]
    if has(CH_SPORT):
        pk.src_port = p.src_port
    if has(CH_DPORT):
        pk.dst_port = p.dst_port
    if has(CH_TSEC):
        pk.timestamp = p.ts_sec
    if has(CH_TUSEC):
        pk.timestamp_us = p.ts_usec
    if has(CH_PTYPE):
        pk.proto_type = p.proto_type
    if has(CH_CAPID):
        pk.capture_id = p.capture_id
    if has(CH_AUTH):
        pk.auth_key_raw = buf[p.auth_off:p.auth_off + p.auth_len]
    if has(CH_CORR):
        pk.correlation_id_raw = buf[p.corr_off:p.corr_off + p.corr_len]
    if has(CH_NODE):
        pk.node_name_raw = buf[p.node_off:p.node_off + p.node_len]
    if has(CH_PAYLOAD) or has(CH_ZPAYLOAD):
        pk.payload = buf[p.payload_off:p.payload_off + p.payload_len]
        pk.compressed = not has(CH_PAYLOAD)
    return pk


def decode(data, uint32_t max_chunks=DEFAULT_MAX_CHUNKS):
    """HepPacket for one message (at most max_chunks HEPv3 chunks, as the pure twin); raises
    HepError with the reason code."""
    cdef const uint8_t[::1] mv = data
    cdef hep_pkt p
    cdef const uint8_t *buf = _parsed(mv, &p, max_chunks)
    cdef uint8_t *scratch
    cdef Py_ssize_t n
    if p.version == 3:
        return _packet(buf, &p, _walk_chunks(buf, p.total))
    # v1/v2: the chunk list is what the v3 form of the message holds, also when that form is
    # longer than 65535 bytes (a datagram near the limit): rewrite/to_v3 refuse such a packet
    # ("length"), but decode still shows it.
    scratch = <uint8_t *>malloc(SCRATCH)
    if scratch == NULL:
        raise MemoryError()
    try:
        n = hep_build_v3_body(buf, &p, NULL, 0, NULL, 0, scratch, SCRATCH)
        chunks = _walk_chunks(scratch, <uint32_t>n) if n > 0 else []
    finally:
        free(scratch)
    return _packet(buf, &p, chunks)


def rewrite(data, setbuf=b"", skip=(), int version=3):
    """HEPv3 (or v2) form with chunks keyed (vendor<<16|type) in `skip` removed and the
    pre-encoded chunks of `setbuf` put in (in place of a skipped chunk of the same key, else
    before the payload). HEPv2 of a packet that is not SIP raises Unconvertible."""
    cdef const uint8_t[::1] mv = data
    cdef const uint8_t[::1] sb = setbuf
    cdef hep_pkt p, p2
    cdef const uint8_t *buf = _parsed(mv, &p)
    cdef uint32_t keys[256]
    cdef int nkeys = 0
    cdef Py_ssize_t n, n2
    cdef uint8_t *scratch
    for k in skip:
        if nkeys >= 256:
            raise ValueError("at most 256 skip keys")
        keys[nkeys] = <uint32_t>k
        nkeys += 1
    scratch = <uint8_t *>malloc(2 * SCRATCH)
    if scratch == NULL:
        raise MemoryError()
    try:
        n = hep_build_v3(buf, &p, _ptr(sb), sb.shape[0], keys, nkeys, scratch, SCRATCH)
        if n < 0:
            raise HepError(R_LENGTH, "rewritten packet exceeds 65535 bytes")
        if version != 2:
            return scratch[:n]
        hep_parse_lim(scratch, n, &p2, HEP_UNCAPPED)    # our own output: no input cap
        n2 = hep_build_v2(scratch, &p2, scratch + SCRATCH, SCRATCH)
        if n2 < 0:
            raise _v2_error(&p2, n2)
        return scratch[SCRATCH:SCRATCH + n2]
    finally:
        free(scratch)


cdef object _v2_error(hep_pkt *p, Py_ssize_t code):
    if code == -2:
        return Unconvertible(p.proto_type if p.present & ((<uint64_t>1) << CH_PTYPE) else None)
    if p.family == 0:
        return HepError(R_VERSION, "no address family: cannot express as HEPv2")
    return HepError(R_LENGTH, "HEPv2 form exceeds 65535 bytes")


def to_v2(data):
    cdef const uint8_t[::1] mv = data
    cdef hep_pkt p
    cdef const uint8_t *buf = _parsed(mv, &p)
    cdef uint8_t *scratch
    cdef Py_ssize_t n
    scratch = <uint8_t *>malloc(SCRATCH)
    if scratch == NULL:
        raise MemoryError()
    try:
        n = hep_build_v2(buf, &p, scratch, SCRATCH)
        if n < 0:
            raise _v2_error(&p, n)
        return scratch[:n]
    finally:
        free(scratch)


def parse_batch(buf, const int64_t[::1] offsets, const int64_t[::1] lengths,
                uint8_t[::1] reasons_out):
    """Parse every packet buf[off:off+len] (bounds checked once, up front); reasons into
    reasons_out; returns the number that parsed. The loop runs without the GIL."""
    cdef const uint8_t[::1] mv = buf
    cdef Py_ssize_t i, n = offsets.shape[0], ok = 0
    cdef const uint8_t *base = _ptr(mv)
    cdef hep_pkt p
    cdef int r
    if lengths.shape[0] != n or reasons_out.shape[0] < n:
        raise ValueError("offsets, lengths and reasons_out must have the same length")
    for i in range(n):
        if offsets[i] < 0 or lengths[i] < 0 or offsets[i] + lengths[i] > mv.shape[0]:
            raise ValueError(f"packet {i} lies outside the buffer")
    with nogil:
        for i in range(n):
            r = hep_parse(base + offsets[i], lengths[i], &p)
            reasons_out[i] = <uint8_t>r
            ok += r == R_OK
    return ok


def rewrite_batch(buf, const int64_t[::1] offsets, const int64_t[::1] lengths, setbuf, skip,
                  uint8_t[::1] out):
    """Parse and rewrite every packet into `out`, back to back; returns the bytes written."""
    cdef const uint8_t[::1] mv = buf
    cdef const uint8_t[::1] sb = setbuf
    cdef Py_ssize_t i, n = offsets.shape[0], pos = 0, w
    cdef const uint8_t *base = _ptr(mv)
    cdef const uint8_t *sbp = _ptr(sb)
    cdef hep_pkt p
    cdef uint32_t keys[256]
    cdef int nkeys = 0
    for k in skip:
        if nkeys >= 256:
            raise ValueError("at most 256 skip keys")
        keys[nkeys] = <uint32_t>k
        nkeys += 1
    if lengths.shape[0] != n:
        raise ValueError("offsets and lengths must have the same length")
    for i in range(n):
        if offsets[i] < 0 or lengths[i] < 0 or offsets[i] + lengths[i] > mv.shape[0]:
            raise ValueError(f"packet {i} lies outside the buffer")
    with nogil:
        for i in range(n):
            if hep_parse(base + offsets[i], lengths[i], &p) != R_OK:
                continue
            if out.shape[0] - pos <= 0:
                break
            w = hep_build_v3(base + offsets[i], &p, sbp,
                             sb.shape[0], keys, nkeys, &out[pos], out.shape[0] - pos)
            if w > 0:
                pos += w
    return pos


def hash64(data):
    """FNV-1a 64 of a buffer (twin of hepfast.wire.hashing.hash64)."""
    cdef const uint8_t[::1] mv = data
    return hep_hash64(_ptr(mv), mv.shape[0])


def mix64(unsigned long long x):
    return hep_mix64(x)


from sipscan cimport sip_info, sip_scan as c_sip_scan, sip_call_id as c_sip_call_id


cdef object _win(const uint8_t *p, uint32_t off, uint32_t ln):
    return p[off:off + ln].decode("utf-8", "replace") if ln else None


def sip_scan(data):
    """The C SIP scanner's view of a payload, keyed like hepfast.wire.sip.sip_fields (tests)."""
    cdef const uint8_t[::1] mv = data
    cdef const uint8_t *p = _ptr(mv)
    cdef sip_info si
    if c_sip_scan(p, mv.shape[0], &si) != 0:
        return {}
    return {
        "sip_method": _win(p, si.method_off, si.method_len),
        "sip_status": si.status or None,
        "sip_call_id": _win(p, si.call_id_off, si.call_id_len),
        "sip_from_user": _win(p, si.from_user_off, si.from_user_len),
        "sip_to_user": _win(p, si.to_user_off, si.to_user_len),
        "sip_ruri_user": _win(p, si.ruri_user_off, si.ruri_user_len),
        "sip_ruri_domain": _win(p, si.ruri_domain_off, si.ruri_domain_len),
        "sip_cseq_method": _win(p, si.cseq_method_off, si.cseq_method_len),
        "sip_user_agent": _win(p, si.user_agent_off, si.user_agent_len),
    }


def sip_call_id(data):
    """The call-key scanner (fast path): the Call-ID bytes or None."""
    cdef const uint8_t[::1] mv = data
    cdef const uint8_t *p = _ptr(mv)
    cdef uint32_t off = 0, ln = 0
    if c_sip_call_id(p, mv.shape[0], &off, &ln):
        return p[off:off + ln]
    return None
