# cython: language_level=3
#
# _store: the batch work of the storage destinations (hepfast/egress/pcap.py, parquet.py): one
# call per ring batch walks its records in C (hepring.h) and parses each with the switch's own
# parser (hepwire.pxd hep_parse) and SIP scanner (sipscan.pxd sip_scan), with no Python object
# per record.
#
# Invariants:
# - Input is a Batch.span (records as they lie in the ring); it is only read, never kept: the
#   output is copied out (bytes, numpy arrays) before the call returns, so the batch may be
#   released right after.
# - PcapRenderer writes the frames hepfast.tools.capture.writer.build_frame writes for the same
#   packet (Ethernet, IPv4/IPv6, UDP or TCP, the same fixed fields and checksums; ip_id = frame
#   index in the file, TCP sequence numbers per flow from 1 like write_pcap), so that pure
#   function is its twin (tests/test_storage_pcap.py compares them byte for byte). A TCP flow's
#   next sequence number lives in a fixed table of FLOWS slots keyed by a hash of the 4-tuple;
#   a colliding flow takes the slot over and restarts at 1 (still a plausible stream).
# - decode_columns fills one value per record per column (hepfast/egress/parquet.py SCHEMA);
#   text columns are valid UTF-8 (a field that is not is decoded with errors="replace", the
#   twin's rule in hepfast/wire/sip.py); payloads are kept as bytes.
# - A record that does not parse (impossible from a correct worker) is skipped and counted.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, int64_t
from libc.string cimport memcpy, memset
from libc.stdlib cimport malloc, realloc, free
from cpython.bytes cimport PyBytes_FromStringAndSize

from hepwire cimport hep_pkt, hep_parse, hep_wr16, hep_wr32, hep_hash64, R_OK
from sipscan cimport sip_info, sip_scan, _sip_line_end, _sip_find, _sip_lower_eq, _sip_blank
from utf8 cimport utf8_strict
from constants cimport constants

import numpy as np

CONSTANTS = constants()    # what this module was compiled with (tests/test_constants.py)

cdef extern from "hepring.h" nogil:
    int HEP_RING_RECORD
    ctypedef struct hep_ring_iter:
        const uint8_t *p
        size_t n
        size_t off
    void hep_ring_iter_init(hep_ring_iter *it, const uint8_t *p, size_t n)
    int hep_ring_next(hep_ring_iter *it, const uint8_t **rec, uint32_t *len, uint32_t *meta)

cdef extern from "<arpa/inet.h>" nogil:
    const char *inet_ntop(int af, const void *src, char *dst, unsigned int size)

cdef extern from "<sys/socket.h>" nogil:
    int AF_INET
    int AF_INET6

cdef enum:
    FLOWS = 4096
    PCAP_REC_HDR = 16
    ETH_HDR = 14
    HEP_PORT = 9060

# build_frame's MAC addresses (destination, source).
cdef const char *_ETH_ADDRS_C = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01"


cdef const uint8_t *_span_ptr(const uint8_t[::1] span) noexcept:
    if span.shape[0] == 0:
        return NULL
    return &span[0]


cdef uint32_t _sum16(const uint8_t *p, size_t n, uint32_t s) noexcept nogil:
    """One's-complement partial sum of big-endian 16-bit words (odd tail padded with 0)."""
    cdef size_t i = 0
    while i + 1 < n:
        s += (<uint32_t>p[i] << 8) | p[i + 1]
        i += 2
    if i < n:
        s += <uint32_t>p[i] << 8
    return s


cdef uint16_t _fold(uint32_t s) noexcept nogil:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return <uint16_t>(~s & 0xFFFF)


def pcap_header(bint nanosecond=False, uint32_t snaplen=262144):
    """The 24-byte global header of a little-endian pcap with Ethernet frames (write_pcap's)."""
    cdef uint8_t h[24]
    cdef uint32_t magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
    memcpy(h, &magic, 4)
    h[4] = 2
    h[5] = 0
    h[6] = 4
    h[7] = 0
    memset(h + 8, 0, 8)
    memcpy(h + 16, &snaplen, 4)
    h[20] = 1
    h[21] = 0
    h[22] = 0
    h[23] = 0
    return PyBytes_FromStringAndSize(<char *>h, 24)


cdef class PcapRenderer:
    """Ring batches -> pcap records (16-byte record header + Ethernet frame each). State per
    output file: the frame counter (IPv4 id) and the TCP flow table; `reset()` when a new file
    starts. encapsulate=True writes the HEP packet itself, over UDP from and to port 9060 with
    the HEP addresses, instead of the packet it describes."""

    cdef uint64_t _flow_key[FLOWS]
    cdef uint32_t _flow_seq[FLOWS]
    cdef uint8_t *_buf
    cdef size_t _cap
    cdef readonly uint64_t frames
    cdef readonly bint encapsulate
    cdef readonly bint nanosecond

    def __cinit__(self, bint encapsulate=False, bint nanosecond=False):
        self._cap = 1 << 20
        self._buf = <uint8_t *>malloc(self._cap)
        if self._buf == NULL:
            raise MemoryError()
        self.encapsulate = encapsulate
        self.nanosecond = nanosecond
        self.reset()

    def __dealloc__(self):
        free(self._buf)
        self._buf = NULL

    def reset(self):
        """A new file: frame counter 0, every TCP flow starts again at sequence number 1."""
        memset(self._flow_key, 0, sizeof(self._flow_key))
        memset(self._flow_seq, 0, sizeof(self._flow_seq))
        self.frames = 0

    cdef int _grow(self, size_t need) except -1:
        cdef size_t cap = self._cap
        cdef uint8_t *nb
        while cap < need:
            cap *= 2
        nb = <uint8_t *>realloc(self._buf, cap)
        if nb == NULL:
            raise MemoryError()
        self._buf = nb
        self._cap = cap
        return 0

    cdef uint32_t _next_seq(self, const hep_pkt *p, uint32_t dlen) noexcept nogil:
        cdef uint8_t key[37]
        cdef uint64_t h
        cdef uint32_t slot, seq
        key[0] = p.family
        if p.family == 6:
            memcpy(key + 1, p.src6, 16)
            memcpy(key + 17, p.dst6, 16)
        else:
            memset(key + 1, 0, 32)
            memcpy(key + 1, p.src4, 4)
            memcpy(key + 17, p.dst4, 4)
        hep_wr16(key + 33, p.src_port)
        hep_wr16(key + 35, p.dst_port)
        h = hep_hash64(key, 37) | 1                  # 0 marks a free slot
        slot = <uint32_t>(h % FLOWS)
        if self._flow_key[slot] != h:
            self._flow_key[slot] = h
            self._flow_seq[slot] = 1
        seq = self._flow_seq[slot]
        self._flow_seq[slot] = seq + dlen
        return seq

    cdef Py_ssize_t _frame(self, uint8_t *out, const uint8_t *rec, const hep_pkt *p,
                           uint32_t ts_sec, uint32_t ts_frac) noexcept nogil:
        """Write record header + frame at out (room for 16 + 14 + 40 + 20 + payload bytes).
        Returns the bytes written, or -1 when the payload cannot be one IP packet."""
        cdef const uint8_t *data
        cdef uint32_t dlen, tlen, iplen, seq
        cdef uint8_t *ip
        cdef uint8_t *tp
        cdef uint32_t s
        cdef bint v6 = p.family == 6
        cdef bint tcp
        cdef uint16_t sport, dport, ck
        if self.encapsulate:
            data = rec
            dlen = p.total
            tcp = False
            sport = HEP_PORT
            dport = HEP_PORT
        else:
            data = rec + p.payload_off
            dlen = p.payload_len
            tcp = p.ip_proto == 6
            sport = p.src_port
            dport = p.dst_port
        tlen = dlen + (20 if tcp else 8)
        iplen = tlen + (40 if v6 else 20)
        if (v6 and tlen > 0xFFFF) or (not v6 and iplen > 0xFFFF):
            return -1
        ip = out + PCAP_REC_HDR + ETH_HDR
        tp = ip + (40 if v6 else 20)
        # transport header and payload
        hep_wr16(tp, sport)
        hep_wr16(tp + 2, dport)
        if tcp:
            seq = self._next_seq(p, dlen)
            hep_wr32(tp + 4, seq)
            hep_wr32(tp + 8, 0)
            tp[12] = 5 << 4
            tp[13] = 0x18                              # ACK | PSH
            hep_wr16(tp + 14, 65535)
            hep_wr16(tp + 16, 0)
            hep_wr16(tp + 18, 0)
            memcpy(tp + 20, data, dlen)
        else:
            hep_wr16(tp + 4, <uint16_t>tlen)
            hep_wr16(tp + 6, 0)
            memcpy(tp + 8, data, dlen)
        # IP header; pseudo-header sum for the transport checksum
        if v6:
            hep_wr32(ip, 6u << 28)
            hep_wr16(ip + 4, <uint16_t>tlen)
            ip[6] = 6 if tcp else 17
            ip[7] = 64
            memcpy(ip + 8, p.src6, 16)
            memcpy(ip + 24, p.dst6, 16)
            s = _sum16(ip + 8, 32, 0) + (tlen >> 16) + (tlen & 0xFFFF) + (6 if tcp else 17)
        else:
            ip[0] = 0x45
            ip[1] = 0
            hep_wr16(ip + 2, <uint16_t>iplen)
            hep_wr16(ip + 4, <uint16_t>(self.frames & 0xFFFF))
            hep_wr16(ip + 6, 0x4000)
            ip[8] = 64
            ip[9] = 6 if tcp else 17
            hep_wr16(ip + 10, 0)
            memcpy(ip + 12, p.src4, 4)
            memcpy(ip + 16, p.dst4, 4)
            hep_wr16(ip + 10, _fold(_sum16(ip, 20, 0)))
            s = _sum16(ip + 12, 8, 0) + (6 if tcp else 17) + tlen
        ck = _fold(_sum16(tp, tlen, s))
        if tcp:
            hep_wr16(tp + 16, ck)
        else:
            hep_wr16(tp + 6, 0xFFFF if ck == 0 else ck)
        memcpy(out + PCAP_REC_HDR, <const uint8_t *>_ETH_ADDRS_C, 12)
        hep_wr16(out + PCAP_REC_HDR + 12, 0x86DD if v6 else 0x0800)
        # record header (host order, like write_pcap's little-endian file on x86)
        s = ETH_HDR + iplen
        memcpy(out, &ts_sec, 4)
        memcpy(out + 4, &ts_frac, 4)
        memcpy(out + 8, &s, 4)
        memcpy(out + 12, &s, 4)
        self.frames += 1
        return PCAP_REC_HDR + s

    def render(self, const uint8_t[::1] span):
        """(pcap records as bytes, records written, records skipped) for one Batch.span.
        Skipped: a record that does not parse or does not fit one IP packet."""
        cdef const uint8_t *base = _span_ptr(span)
        cdef hep_ring_iter it
        cdef const uint8_t *rec
        cdef uint32_t ln, meta
        cdef hep_pkt p
        cdef size_t pos = 0, need
        cdef Py_ssize_t w
        cdef uint64_t done = 0, skipped = 0
        cdef uint32_t frac
        hep_ring_iter_init(&it, base, <size_t>span.shape[0])
        while hep_ring_next(&it, &rec, &ln, &meta) == HEP_RING_RECORD:
            if hep_parse(rec, ln, &p) != R_OK:
                skipped += 1
                continue
            if p.family != 6:
                p.family = 4                           # no address family: 0.0.0.0 over IPv4
            need = pos + PCAP_REC_HDR + ETH_HDR + 60 + ln
            if need > self._cap:
                self._grow(need)
            frac = p.ts_usec * 1000 if self.nanosecond else p.ts_usec
            w = self._frame(self._buf + pos, rec, &p, p.ts_sec, frac)
            if w < 0:
                skipped += 1
                continue
            pos += <size_t>w
            done += 1
        return PyBytes_FromStringAndSize(<char *>self._buf, pos), done, skipped


# ------------------------------------------------------------------------------ columns

ctypedef struct strcol:
    char *data
    size_t len
    size_t cap
    int32_t *off          # rows + 1 offsets (numpy-owned)
    uint8_t *valid        # rows (numpy-owned)


cdef int _put(strcol *c, Py_ssize_t row, const uint8_t *s, size_t n, bint ok) except -1:
    """Row `row` of column c: the bytes s[0:n] (ok) or null."""
    cdef size_t cap
    cdef char *nd
    if ok:
        if c.len + n > c.cap:
            cap = c.cap * 2 if c.cap else 4096
            while cap < c.len + n:
                cap *= 2
            nd = <char *>realloc(c.data, cap)
            if nd == NULL:
                raise MemoryError()
            c.data = nd
            c.cap = cap
        if n:
            memcpy(c.data + c.len, s, n)
        c.len += n
        if c.len > 0x7FFFFFFF:
            raise OverflowError("a column of one batch passed 2 GiB")
    c.valid[row] = 1 if ok else 0
    c.off[row + 1] = <int32_t>c.len
    return 0


cdef int _put_text(strcol *c, Py_ssize_t row, const uint8_t *s, size_t n, bint ok) except -1:
    """A text column: like _put, but bytes that are not UTF-8 are decoded with replacement."""
    cdef bytes fixed
    if ok and not utf8_strict(s, n, False):
        fixed = (<bytes>PyBytes_FromStringAndSize(<const char *>s, n)).decode(
            "utf-8", "replace").encode("utf-8")
        return _put(c, row, <const uint8_t *><char *>fixed, len(fixed), True)
    return _put(c, row, s, n, ok)


cdef bint _cseq(const uint8_t *p, Py_ssize_t n, uint32_t *num, Py_ssize_t *ms,
                Py_ssize_t *me) noexcept nogil:
    """The CSeq header of a SIP message p[0:n] (the first one; the header section only, the
    line grammar of sipscan.pxd): number and method window. False when absent or not
    `digits SP token`."""
    cdef Py_ssize_t pos = 0, a, b, colon, ne, i
    cdef uint64_t v = 0
    _sip_line_end(p, 0, n, &pos)
    while pos < n:
        a = pos
        b = _sip_line_end(p, a, n, &pos)
        if b == a:
            return False
        if _sip_blank(p[a]):
            continue
        colon = _sip_find(p, a, b, 0x3A)
        if colon < 0:
            continue
        ne = colon
        while ne > a and _sip_blank(p[ne - 1]):
            ne -= 1
        if not _sip_lower_eq(p, a, ne, b"cseq", 4):
            continue
        i = colon + 1
        while i < b and _sip_blank(p[i]):
            i += 1
        if i >= b or not (0x30 <= p[i] <= 0x39):
            return False
        while i < b and 0x30 <= p[i] <= 0x39:
            v = v * 10 + (p[i] - 0x30)
            if v > 0xFFFFFFFFu:
                return False
            i += 1
        while i < b and _sip_blank(p[i]):
            i += 1
        ms[0] = i
        while i < b and not _sip_blank(p[i]):
            i += 1
        me[0] = i
        num[0] = <uint32_t>v
        return me[0] > ms[0]
    return False


# Text columns in decode_columns' order (parquet.py SCHEMA names them the same).
TEXT_COLUMNS = ("node_name", "correlation_id", "src_ip", "dst_ip", "transport", "sip_method",
                "call_id", "from_user", "to_user", "ruri_user", "ruri_domain", "cseq_method")
cdef enum:
    C_NODE = 0
    C_CORR = 1
    C_SRC = 2
    C_DST = 3
    C_TRANSPORT = 4
    C_METHOD = 5
    C_CALLID = 6
    C_FROM = 7
    C_TO = 8
    C_RURI = 9
    C_RDOMAIN = 10
    C_CSEQM = 11
    C_PAYLOAD = 12
    NSTR = 13


cdef int _put_ip(strcol *c, Py_ssize_t row, const hep_pkt *p, bint src) except -1:
    cdef char txt[48]
    cdef const char *r
    cdef size_t n = 0
    cdef const void *a
    if p.family == 4:
        a = <const void *>&p.src4[0] if src else <const void *>&p.dst4[0]
        r = inet_ntop(AF_INET, a, txt, 48)
    elif p.family == 6:
        a = <const void *>&p.src6[0] if src else <const void *>&p.dst6[0]
        r = inet_ntop(AF_INET6, a, txt, 48)
    else:
        return _put(c, row, NULL, 0, False)
    if r == NULL:
        return _put(c, row, NULL, 0, False)
    while txt[n]:
        n += 1
    return _put(c, row, <const uint8_t *>txt, n, True)


def decode_columns(const uint8_t[::1] span, Py_ssize_t rows):
    """The columns of the records of one Batch.span (`rows`: Batch.count, the most there can
    be). Returns (count, skipped, fixed, text): `fixed` maps ts_us, hep_version, proto_type,
    capture_id, family, src_port, dst_port, sip_status, cseq to numpy arrays of `count` values,
    with family_valid / sip_status_valid / cseq_valid masks; `text` maps TEXT_COLUMNS and
    "payload" to (int32 offsets[count + 1], bytes data, uint8 valid[count])."""
    cdef const uint8_t *base = _span_ptr(span)
    cdef hep_ring_iter it
    cdef const uint8_t *rec
    cdef const uint8_t *pl
    cdef uint32_t ln, meta, cnum = 0
    cdef hep_pkt p
    cdef sip_info si
    cdef Py_ssize_t i = 0, skipped = 0, ms = 0, me = 0, k
    cdef strcol cols[NSTR]
    cdef bint sip, has_cseq
    ts = np.zeros(rows, np.int64)
    ver = np.zeros(rows, np.uint8)
    ptype = np.zeros(rows, np.uint8)
    capid = np.zeros(rows, np.uint32)
    fam = np.zeros(rows, np.uint8)
    sport = np.zeros(rows, np.uint16)
    dport = np.zeros(rows, np.uint16)
    status = np.zeros(rows, np.uint16)
    cseq = np.zeros(rows, np.uint32)
    famv = np.zeros(rows, np.uint8)
    stv = np.zeros(rows, np.uint8)
    csv = np.zeros(rows, np.uint8)
    cdef int64_t[::1] v_ts = ts
    cdef uint8_t[::1] v_ver = ver
    cdef uint8_t[::1] v_ptype = ptype
    cdef uint32_t[::1] v_capid = capid
    cdef uint8_t[::1] v_fam = fam
    cdef uint16_t[::1] v_sport = sport
    cdef uint16_t[::1] v_dport = dport
    cdef uint16_t[::1] v_status = status
    cdef uint32_t[::1] v_cseq = cseq
    cdef uint8_t[::1] v_famv = famv
    cdef uint8_t[::1] v_stv = stv
    cdef uint8_t[::1] v_csv = csv
    offs = [np.zeros(rows + 1, np.int32) for _ in range(NSTR)]
    valids = [np.zeros(rows, np.uint8) for _ in range(NSTR)]
    cdef int32_t[::1] ov
    cdef uint8_t[::1] vv
    memset(cols, 0, sizeof(cols))
    for k in range(NSTR):
        ov = offs[k]
        vv = valids[k]
        cols[k].off = &ov[0]
        cols[k].valid = &vv[0] if rows else NULL
    try:
        hep_ring_iter_init(&it, base, <size_t>span.shape[0])
        while i < rows and hep_ring_next(&it, &rec, &ln, &meta) == HEP_RING_RECORD:
            if hep_parse(rec, ln, &p) != R_OK:
                skipped += 1
                continue
            v_ts[i] = <int64_t>p.ts_sec * 1000000 + p.ts_usec
            v_ver[i] = p.version
            v_ptype[i] = p.proto_type
            v_capid[i] = p.capture_id
            v_fam[i] = p.family
            v_famv[i] = p.family != 0
            v_sport[i] = p.src_port
            v_dport[i] = p.dst_port
            _put_text(&cols[C_NODE], i, rec + p.node_off, p.node_len, p.node_len > 0)
            _put_text(&cols[C_CORR], i, rec + p.corr_off, p.corr_len, p.corr_len > 0)
            _put_ip(&cols[C_SRC], i, &p, True)
            _put_ip(&cols[C_DST], i, &p, False)
            if p.ip_proto == 17:
                _put(&cols[C_TRANSPORT], i, <const uint8_t *>b"udp", 3, True)
            elif p.ip_proto == 6:
                _put(&cols[C_TRANSPORT], i, <const uint8_t *>b"tcp", 3, True)
            elif p.ip_proto == 132:
                _put(&cols[C_TRANSPORT], i, <const uint8_t *>b"sctp", 4, True)
            else:
                _put(&cols[C_TRANSPORT], i, NULL, 0, False)
            pl = rec + p.payload_off
            sip = p.proto_type == 1 and sip_scan(pl, p.payload_len, &si) == 0
            if not sip:
                memset(&si, 0, sizeof(si))
            _put_text(&cols[C_METHOD], i, pl + si.method_off, si.method_len, si.method_len > 0)
            v_status[i] = <uint16_t>si.status
            v_stv[i] = si.status != 0
            _put_text(&cols[C_CALLID], i, pl + si.call_id_off, si.call_id_len,
                      si.call_id_len > 0)
            _put_text(&cols[C_FROM], i, pl + si.from_user_off, si.from_user_len,
                      si.from_user_len > 0)
            _put_text(&cols[C_TO], i, pl + si.to_user_off, si.to_user_len, si.to_user_len > 0)
            _put_text(&cols[C_RURI], i, pl + si.ruri_user_off, si.ruri_user_len,
                      si.ruri_user_len > 0)
            _put_text(&cols[C_RDOMAIN], i, pl + si.ruri_domain_off, si.ruri_domain_len,
                      si.ruri_domain_len > 0)
            has_cseq = sip and _cseq(pl, p.payload_len, &cnum, &ms, &me)
            v_cseq[i] = cnum if has_cseq else 0
            v_csv[i] = has_cseq
            _put_text(&cols[C_CSEQM], i, pl + ms, <size_t>(me - ms) if has_cseq else 0,
                      has_cseq)
            _put(&cols[C_PAYLOAD], i, pl, p.payload_len, True)
            i += 1
        fixed = {"ts_us": ts[:i], "hep_version": ver[:i], "proto_type": ptype[:i],
                 "capture_id": capid[:i], "family": fam[:i], "src_port": sport[:i],
                 "dst_port": dport[:i], "sip_status": status[:i], "cseq": cseq[:i],
                 "family_valid": famv[:i], "sip_status_valid": stv[:i],
                 "cseq_valid": csv[:i]}
        text = {}
        for k, name in enumerate(TEXT_COLUMNS + ("payload",)):
            text[name] = (offs[k][:i + 1], PyBytes_FromStringAndSize(cols[k].data, cols[k].len),
                          valids[k][:i])
    finally:
        for k in range(NSTR):
            free(cols[k].data)
    return i, skipped, fixed, text
