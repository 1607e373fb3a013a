# cython: language_level=3, cdivision=True
#
# _pgrow: HOMER 7 rows (hepfast/egress/homer7.py) in PostgreSQL's binary COPY format, built in C
# from the records of a ring batch, for the `postgres` destination (hepfast/egress/postgres.py).
#
# Invariants:
# - Twin: hepfast.egress.homer7.row_of is the reference. For every packet this module either
#   produces the same bytes (tuple, table, create_date) or hands the record to the caller as
#   `slow` to be converted by row_of; it never produces a different row
#   (tests/test_storage_postgres.py compares them on the corpus and on generated packets).
#   Handed over: a payload, correlation id or node name that is not strict UTF-8 or contains
#   NUL (row_of's _clean and errors="replace" rules), and a CSeq value with a non-ASCII byte
#   (row_of upper-cases its method with str.upper).
# - Input is a Batch.span (records as they lie in the ring, hepring.h); it is only read, never
#   kept: rows are copied into buffers owned here and returned as bytes before the call ends,
#   so the batch may be released right after. The walk runs without the GIL.
# - Rows are grouped by (table, partition start): one bytes of concatenated tuples per group and
#   call (no COPY header or trailer), so the writer streams them as they are.
# - A record is `skipped` when row_of would return None, `over` when it would be a row but
#   `limit` rows were already accepted in this call (the caller counts it queue_full); a slow
#   record counts against neither (the caller decides it).

from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcpy, memcmp, memset
from libc.stdlib cimport realloc, free
from libc.math cimport fmod
from cpython.bytes cimport PyBytes_FromStringAndSize

from hepwire cimport hep_pkt, hep_parse, hep_wr16, hep_wr32, R_OK
from hepwire cimport CH_SRC4, CH_DST4, CH_SRC6, CH_DST6, CH_PAYLOAD
from sipscan cimport sip_info, sip_scan_want
from utf8 cimport utf8_strict
from constants cimport constants, SW_CALL_ID, SW_FROM, SW_TO

CONSTANTS = constants()    # what this module was compiled with (tests/test_constants.py)

cdef extern from "hepring.h" nogil:
    int HEP_RING_RECORD
    ctypedef struct hep_ring_iter:
        const uint8_t *p
        size_t n
        size_t off
    void hep_ring_iter_init(hep_ring_iter *it, const uint8_t *p, size_t n)
    int hep_ring_next(hep_ring_iter *it, const uint8_t **rec, uint32_t *len, uint32_t *meta)

cdef extern from "<string.h>" nogil:
    void *memmem(const void *h, size_t hn, const void *n, size_t nn)
    void *memchr(const void *s, int c, size_t n)

cdef extern from "<arpa/inet.h>" nogil:
    const char *inet_ntop(int af, const void *src, char *dst, unsigned int size)

cdef extern from "<sys/socket.h>" nogil:
    int AF_INET
    int AF_INET6

cdef enum:
    MAXG = 64                 # groups held at once (a call emits and restarts beyond that)
    T_CALL = 0                # table codes: SIP by CSeq method, else 256 + proto type
    T_REG = 1
    T_SIPDEF = 2
    ROW_OK = 0
    ROW_NONE = 1
    ROW_SLOW = 2

cdef int64_t PG_EPOCH_US = 946684800LL * 1000000LL

# Table names by code (homer7.sip_table / hep_proto_<type>_default).
TABLES = {T_CALL: "hep_proto_1_call", T_REG: "hep_proto_1_registration",
          T_SIPDEF: "hep_proto_1_default"}
TABLES.update({256 + t: f"hep_proto_{t}_default" for t in range(2, 256)})

# homer7.PROTO_NAMES, for the data_header of other proto types.
cdef const char *_proto_name(int t) noexcept nogil:
    if t == 5:
        return b"rtcp"
    if t == 34:
        return b"rtpagent"
    if t == 35:
        return b"rtcpxr"
    if t == 38:
        return b"horaclifix"
    if t == 53:
        return b"dns"
    if t == 100:
        return b"log"
    return NULL


ctypedef struct obuf:
    uint8_t *p
    size_t n
    size_t cap
    int bad                   # allocation failed

ctypedef struct group:
    int table
    int64_t start
    int64_t rows
    obuf b


cdef inline int _reserve(obuf *o, size_t more) noexcept nogil:
    cdef size_t cap
    cdef uint8_t *np
    if o.n + more <= o.cap:
        return 0
    cap = o.cap * 2 if o.cap else 65536
    while cap < o.n + more:
        cap *= 2
    np = <uint8_t *>realloc(o.p, cap)
    if np == NULL:
        o.bad = 1
        return -1
    o.p = np
    o.cap = cap
    return 0


cdef inline void _put(obuf *o, const void *s, size_t n) noexcept nogil:
    if _reserve(o, n) == 0 and n:
        memcpy(o.p + o.n, s, n)
        o.n += n


cdef inline void _putc(obuf *o, uint8_t c) noexcept nogil:
    if _reserve(o, 1) == 0:
        o.p[o.n] = c
        o.n += 1


cdef inline void _puts(obuf *o, const char *s) noexcept nogil:
    cdef size_t n = 0
    while s[n]:
        n += 1
    _put(o, s, n)


cdef inline void _put_be32(obuf *o, uint32_t v) noexcept nogil:
    if _reserve(o, 4) == 0:
        hep_wr32(o.p + o.n, v)
        o.n += 4


cdef inline void _put_int(obuf *o, int64_t v) noexcept nogil:
    """Decimal, as msgspec writes an int."""
    cdef char tmp[24]
    cdef int i = 24
    cdef uint64_t u
    cdef bint neg = v < 0
    u = <uint64_t>(-v) if neg else <uint64_t>v
    while True:
        i -= 1
        tmp[i] = <char>(0x30 + u % 10)
        u //= 10
        if u == 0:
            break
    if neg:
        i -= 1
        tmp[i] = 0x2D
    _put(o, tmp + i, 24 - i)


cdef const char *_HEX = b"0123456789abcdef"


cdef inline void _put_jstr(obuf *o, const uint8_t *s, size_t n) noexcept nogil:
    """A JSON string as msgspec encodes one: '"' and '\\' escaped, \\b \\t \\n \\f \\r, other
    control characters as \\u00xx; everything else (UTF-8 included) as it is."""
    cdef size_t i, run = 0
    cdef uint8_t c
    _putc(o, 0x22)
    for i in range(n):
        c = s[i]
        if c >= 0x20 and c != 0x22 and c != 0x5C:
            continue
        _put(o, s + run, i - run)
        run = i + 1
        _putc(o, 0x5C)
        if c == 0x22 or c == 0x5C:
            _putc(o, c)
        elif c == 0x08:
            _putc(o, 0x62)
        elif c == 0x09:
            _putc(o, 0x74)
        elif c == 0x0A:
            _putc(o, 0x6E)
        elif c == 0x0C:
            _putc(o, 0x66)
        elif c == 0x0D:
            _putc(o, 0x72)
        else:
            _put(o, b"u00", 3)
            _putc(o, <uint8_t>_HEX[c >> 4])
            _putc(o, <uint8_t>_HEX[c & 15])
    _put(o, s + run, n - run)
    _putc(o, 0x22)


cdef inline void _put_key(obuf *o, const char *key, bint first) noexcept nogil:
    if not first:
        _putc(o, 0x2C)
    _putc(o, 0x22)
    _puts(o, key)
    _put(o, b"\":", 2)


# ------------------------------------------------------------------ homer7._sip_extra, in C

cdef inline bint _ws(uint8_t c) noexcept nogil:
    """bytes.strip()'s whitespace."""
    return c == 0x20 or c == 0x09 or c == 0x0A or c == 0x0D or c == 0x0B or c == 0x0C


cdef inline void _strip(const uint8_t *p, Py_ssize_t *s, Py_ssize_t *e) noexcept nogil:
    while s[0] < e[0] and _ws(p[s[0]]):
        s[0] += 1
    while e[0] > s[0] and _ws(p[e[0] - 1]):
        e[0] -= 1


cdef inline bint _eq_lower(const uint8_t *p, Py_ssize_t s, Py_ssize_t e,
                           const char *w, Py_ssize_t wn) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint8_t c
    if e - s != wn:
        return False
    for i in range(wn):
        c = p[s + i]
        if 0x41 <= c <= 0x5A:
            c |= 0x20
        if c != <uint8_t>w[i]:
            return False
    return True


cdef inline Py_ssize_t _find(const uint8_t *p, Py_ssize_t s, Py_ssize_t e,
                             uint8_t c) noexcept nogil:
    cdef const uint8_t *q
    if s >= e:
        return -1
    q = <const uint8_t *>memchr(p + s, c, <size_t>(e - s))
    return -1 if q == NULL else q - p


cdef inline Py_ssize_t _rfind(const uint8_t *p, Py_ssize_t s, Py_ssize_t e,
                              uint8_t c) noexcept nogil:
    cdef Py_ssize_t i = e
    while i > s:
        i -= 1
        if p[i] == c:
            return i
    return -1


ctypedef struct sip_extra:
    Py_ssize_t cseq_s, cseq_e         # the CSeq value, stripped (last CSeq header wins)
    Py_ssize_t cm_s, cm_e             # its method: after the last space
    Py_ssize_t ua_s, ua_e             # User-Agent value, stripped (last wins)
    Py_ssize_t ft_s, ft_e             # From tag, To tag (first non-empty tag wins)
    Py_ssize_t tt_s, tt_e


cdef void _tag(const uint8_t *p, Py_ssize_t s, Py_ssize_t e, Py_ssize_t *ts,
               Py_ssize_t *te) noexcept nogil:
    """The tag parameter of a From/To value p[s:e], as _sip_extra reads it: after the last '>'
    when there is one; the first `;` parameter named tag (stripped, case-insensitive) wins."""
    cdef Py_ssize_t gt = _rfind(p, s, e, 0x3E), a, b, eq, ks, ke, vs, ve
    if gt >= 0:
        s = gt + 1
    a = _find(p, s, e, 0x3B)
    while a >= 0:
        a += 1
        b = _find(p, a, e, 0x3B)
        if b < 0:
            b = e
        eq = _find(p, a, b, 0x3D)
        ks = a
        ke = b if eq < 0 else eq
        _strip(p, &ks, &ke)
        if _eq_lower(p, ks, ke, b"tag", 3):
            vs = b if eq < 0 else eq + 1
            ve = b
            _strip(p, &vs, &ve)
            ts[0] = vs
            te[0] = ve
            return
        a = b if b < e else -1


cdef void _extra(const uint8_t *p, Py_ssize_t n, sip_extra *x) noexcept nogil:
    cdef Py_ssize_t head = n, pos, lf, a, b, colon, ks, ke, vs, ve, sp
    cdef int which
    cdef const uint8_t *q = <const uint8_t *>memmem(p, <size_t>n, b"\r\n\r\n", 4) if n else NULL
    x.cseq_s = x.cseq_e = x.cm_s = x.cm_e = x.ua_s = x.ua_e = 0
    x.ft_s = x.ft_e = x.tt_s = x.tt_e = 0
    if q != NULL:
        head = q - p
    lf = _find(p, 0, head, 0x0A)            # the first line is not a header
    pos = head if lf < 0 else lf + 1
    if lf < 0:
        return
    while True:
        a = pos
        lf = _find(p, a, head, 0x0A)
        b = head if lf < 0 else lf
        colon = _find(p, a, b, 0x3A)
        if colon >= 0:
            ks = a
            ke = colon
            _strip(p, &ks, &ke)
            if _eq_lower(p, ks, ke, b"cseq", 4):
                vs = colon + 1
                ve = b
                _strip(p, &vs, &ve)
                x.cseq_s = vs
                x.cseq_e = ve
                sp = _rfind(p, vs, ve, 0x20)
                x.cm_s = vs if sp < 0 else sp + 1
                x.cm_e = ve
            elif _eq_lower(p, ks, ke, b"user-agent", 10):
                vs = colon + 1
                ve = b
                _strip(p, &vs, &ve)
                x.ua_s = vs
                x.ua_e = ve
            else:
                which = 0
                if _eq_lower(p, ks, ke, b"from", 4) or _eq_lower(p, ks, ke, b"f", 1):
                    which = 1
                elif _eq_lower(p, ks, ke, b"to", 2) or _eq_lower(p, ks, ke, b"t", 1):
                    which = 2
                if which == 1 and x.ft_e == x.ft_s:
                    _tag(p, colon + 1, b, &x.ft_s, &x.ft_e)
                elif which == 2 and x.tt_e == x.tt_s:
                    _tag(p, colon + 1, b, &x.tt_s, &x.tt_e)
        if lf < 0:
            return
        pos = lf + 1


# ------------------------------------------------------------------ one row

cdef inline void _put_ip(obuf *o, const hep_pkt *p, bint src) noexcept nogil:
    cdef char txt[48]
    cdef const char *r = NULL
    cdef const void *a
    if p.family == 4 and p.present & ((<uint64_t>1) << (CH_SRC4 if src else CH_DST4)):
        a = <const void *>&p.src4[0] if src else <const void *>&p.dst4[0]
        r = inet_ntop(AF_INET, a, txt, 48)
    elif p.family == 6 and p.present & ((<uint64_t>1) << (CH_SRC6 if src else CH_DST6)):
        a = <const void *>&p.src6[0] if src else <const void *>&p.dst6[0]
        r = inet_ntop(AF_INET6, a, txt, 48)
    _putc(o, 0x22)
    if r != NULL:
        _puts(o, txt)
    _putc(o, 0x22)


cdef inline bint _in(const uint8_t *s, Py_ssize_t n, const char *w) noexcept nogil:
    cdef Py_ssize_t i = 0
    while w[i]:
        i += 1
    return i == n and memcmp(s, w, n) == 0


cdef int _table_of(const uint8_t *m, Py_ssize_t n) noexcept nogil:
    """homer7.sip_table of an upper-case CSeq method (ASCII, upper-cased here)."""
    cdef uint8_t up[16]
    cdef Py_ssize_t i
    if n > 16:
        return T_SIPDEF
    for i in range(n):
        up[i] = m[i] - 0x20 if 0x61 <= m[i] <= 0x7A else m[i]
    if _in(up, n, b"INVITE") or _in(up, n, b"ACK") or _in(up, n, b"BYE") \
            or _in(up, n, b"CANCEL") or _in(up, n, b"UPDATE") or _in(up, n, b"PRACK") \
            or _in(up, n, b"REFER") or _in(up, n, b"INFO") or _in(up, n, b"NOTIFY"):
        return T_CALL
    if _in(up, n, b"REGISTER"):
        return T_REG
    return T_SIPDEF


cdef inline void _dh_str(obuf *o, const char *key, const uint8_t *pl, Py_ssize_t s,
                         Py_ssize_t e, bint first) noexcept nogil:
    _put_key(o, key, first)
    _put_jstr(o, pl + s, <size_t>(e - s) if e > s else 0)


cdef int _row(const uint8_t *rec, uint32_t ln, double now, obuf *o, int *table,
              int64_t *ts_us) noexcept nogil:
    """Append the tuple of one packet to o; ROW_OK (table, ts_us set), ROW_NONE or ROW_SLOW
    (o is then left as it was, possibly with more capacity)."""
    cdef hep_pkt p
    cdef sip_info si
    cdef sip_extra x
    cdef const uint8_t *pl
    cdef const uint8_t *cid
    cdef const uint8_t *sid
    cdef const uint8_t *node
    cdef Py_ssize_t cid_n, sid_n, node_n, pn, i, ci = 12
    cdef uint32_t capv
    cdef size_t start = o.n, lenpos
    cdef int64_t tsec, tusec, ts
    cdef int ptype
    cdef char capbuf[12]
    cdef const char *pname
    cdef char status[4]
    memset(&si, 0, sizeof(si))
    memset(&x, 0, sizeof(x))
    if hep_parse(rec, ln, &p) != R_OK:
        return ROW_NONE
    ptype = p.proto_type
    if ptype == 0 or p.payload_len == 0 or not (p.present & ((<uint64_t>1) << CH_PAYLOAD)):
        return ROW_NONE
    pl = rec + p.payload_off
    pn = p.payload_len
    cid = rec + p.corr_off
    cid_n = p.corr_len
    node = rec + p.node_off
    node_n = p.node_len
    if not utf8_strict(cid, cid_n, True) or not utf8_strict(node, node_n, True):
        return ROW_SLOW
    if ptype == 1:
        # the headers the row takes from the scanner (CSeq and User-Agent follow _sip_extra's
        # own rules, below)
        if sip_scan_want(pl, pn, SW_CALL_ID | SW_FROM | SW_TO, &si) != 0 or si.call_id_len == 0:
            return ROW_NONE
        if not utf8_strict(pl, pn, True):
            return ROW_SLOW
        _extra(pl, pn, &x)
        for i in range(x.cseq_s, x.cseq_e):
            if pl[i] >= 0x80:
                return ROW_SLOW
        if x.cm_e - x.cm_s < 3:
            return ROW_NONE
        table[0] = _table_of(pl + x.cm_s, x.cm_e - x.cm_s)
        sid = pl + si.call_id_off
        sid_n = si.call_id_len
        if cid_n == 0:
            cid = sid
            cid_n = sid_n
    else:
        if cid_n == 0:
            return ROW_NONE
        if not utf8_strict(pl, pn, True):
            return ROW_SLOW
        table[0] = 256 + ptype
        sid = cid
        sid_n = cid_n
    tsec = p.ts_sec
    tusec = p.ts_usec
    if tsec == 0 and tusec == 0:
        tsec = <int64_t>now
        tusec = <int64_t>(fmod(now, 1.0) * 1e6)
    ts = tsec * 1000000 + tusec
    ts_us[0] = ts
    # the tuple: 5 columns
    if _reserve(o, 2) == 0:
        hep_wr16(o.p + o.n, 5)
        o.n += 2
    _put_be32(o, <uint32_t>sid_n)
    _put(o, sid, sid_n)
    _put_be32(o, 8)
    _put_be32(o, <uint32_t>(<uint64_t>(ts - PG_EPOCH_US) >> 32))
    _put_be32(o, <uint32_t>(<uint64_t>(ts - PG_EPOCH_US) & 0xFFFFFFFFu))
    # protocol_header, keys in jsonb's order (length, then bytes): homer7.row_of writes the same
    lenpos = o.n
    _put_be32(o, 0)
    _put(o, b"\x01{", 2)
    _put_key(o, b"dstIp", True)
    _put_ip(o, &p, False)
    _put_key(o, b"srcIp", False)
    _put_ip(o, &p, True)
    _put_key(o, b"dstPort", False)
    _put_int(o, p.dst_port)
    _put_key(o, b"srcPort", False)
    _put_int(o, p.src_port)
    _put_key(o, b"protocol", False)
    _put_int(o, p.ip_proto)
    _put_key(o, b"captureId", False)
    if node_n:
        _put_jstr(o, node, node_n)
    else:
        capv = p.capture_id
        while True:
            ci -= 1
            capbuf[ci] = <char>(0x30 + capv % 10)
            capv //= 10
            if capv == 0:
                break
        _put_jstr(o, <const uint8_t *>capbuf + ci, 12 - ci)
    _put_key(o, b"payloadType", False)
    _put_int(o, ptype)
    _put_key(o, b"timeSeconds", False)
    _put_int(o, tsec)
    _put_key(o, b"timeUseconds", False)
    _put_int(o, tusec)
    _put_key(o, b"correlation_id", False)
    _put_jstr(o, cid, cid_n)
    _put_key(o, b"protocolFamily", False)
    _put_int(o, p.family_raw)
    _putc(o, 0x7D)
    if not o.bad:
        hep_wr32(o.p + lenpos, <uint32_t>(o.n - lenpos - 4))
    # data_header
    lenpos = o.n
    _put_be32(o, 0)
    _put(o, b"\x01{", 2)
    if ptype == 1:
        _dh_str(o, b"cseq", pl, x.cseq_s, x.cseq_e, True)
        _dh_str(o, b"callid", pl, si.call_id_off, si.call_id_off + si.call_id_len, False)
        _put_key(o, b"method", False)
        if si.method_len:
            _put_jstr(o, pl + si.method_off, si.method_len)
        elif si.status:
            status[0] = <char>(0x30 + si.status // 100)
            status[1] = <char>(0x30 + si.status // 10 % 10)
            status[2] = <char>(0x30 + si.status % 10)
            _put_jstr(o, <const uint8_t *>status, 3)
        else:
            _put_jstr(o, pl, 0)
        _dh_str(o, b"to_tag", pl, x.tt_s, x.tt_e, False)
        _dh_str(o, b"to_user", pl, si.to_user_off, si.to_user_off + si.to_user_len, False)
        _dh_str(o, b"from_tag", pl, x.ft_s, x.ft_e, False)
        _dh_str(o, b"from_user", pl, si.from_user_off, si.from_user_off + si.from_user_len,
                False)
        _dh_str(o, b"ruri_user", pl, si.ruri_user_off, si.ruri_user_off + si.ruri_user_len,
                False)
        _dh_str(o, b"user_agent", pl, x.ua_s, x.ua_e, False)
        _dh_str(o, b"ruri_domain", pl, si.ruri_domain_off,
                si.ruri_domain_off + si.ruri_domain_len, False)
    else:
        _put_key(o, b"node", True)
        if node_n:
            _put_jstr(o, node, node_n)
        else:
            _put_jstr(o, <const uint8_t *>capbuf + ci, 12 - ci)
        _put_key(o, b"proto", False)
        pname = _proto_name(ptype)
        if pname != NULL:
            _putc(o, 0x22)
            _puts(o, pname)
            _putc(o, 0x22)
        else:
            _putc(o, 0x22)
            _put_int(o, ptype)
            _putc(o, 0x22)
    _putc(o, 0x7D)
    if not o.bad:
        hep_wr32(o.p + lenpos, <uint32_t>(o.n - lenpos - 4))
    # raw
    _put_be32(o, <uint32_t>pn)
    _put(o, pl, pn)
    if o.bad:
        o.n = start
        return ROW_SLOW
    return ROW_OK


# ------------------------------------------------------------------ the Python face

cdef inline int64_t _part_start(int64_t ts_us, int64_t part_s) noexcept nogil:
    """homer7.partition_start (Python floor division)."""
    cdef int64_t s = ts_us // 1000000
    if ts_us % 1000000 != 0 and ts_us < 0:
        s -= 1
    cdef int64_t r = s % part_s
    if r < 0:
        r += part_s
    return s - r


cdef class RowEncoder:
    """Encodes ring batches into per-(table, partition) binary COPY tuples; see the module
    comment. One per egress; not thread-safe (one caller at a time)."""

    cdef group g[MAXG]
    cdef int ng
    cdef int64_t part_s
    cdef obuf one

    def __cinit__(self, int64_t partition_seconds=3600):
        if partition_seconds < 1:
            raise ValueError("partition_seconds must be >= 1")
        self.part_s = partition_seconds
        self.ng = 0

    def __dealloc__(self):
        cdef int i
        for i in range(MAXG):
            free(self.g[i].b.p)
        free(self.one.p)

    cdef group *_group(self, int table, int64_t start) noexcept nogil:
        cdef int i
        for i in range(self.ng):
            if self.g[i].table == table and self.g[i].start == start:
                return &self.g[i]
        if self.ng >= MAXG:
            return NULL
        i = self.ng
        self.ng += 1
        self.g[i].table = table
        self.g[i].start = start
        self.g[i].rows = 0
        self.g[i].b.n = 0
        self.g[i].b.bad = 0
        return &self.g[i]

    cdef list _emit(self):
        cdef int i
        out = []
        for i in range(self.ng):
            if self.g[i].rows:
                out.append((TABLES[self.g[i].table], self.g[i].start, self.g[i].rows,
                            PyBytes_FromStringAndSize(<char *>self.g[i].b.p,
                                                      <Py_ssize_t>self.g[i].b.n)))
            self.g[i].b.n = 0
            self.g[i].rows = 0
        self.ng = 0
        return out

    def encode(self, const uint8_t[::1] span, double now, Py_ssize_t limit):
        """Rows of one Batch.span: (groups, skipped, over, slow). groups: a list of (table,
        partition start, rows, bytes of tuples); slow: the records (bytes) to convert with
        homer7.row_of; `now`: the create_date of packets without a timestamp (Unix s)."""
        cdef const uint8_t *base = &span[0] if span.shape[0] else NULL
        cdef hep_ring_iter it
        cdef const uint8_t *rec
        cdef uint32_t ln, meta
        cdef int table = 0, rc
        cdef int64_t ts_us = 0, start
        cdef Py_ssize_t accepted = 0, skipped = 0, over = 0
        cdef group *g
        cdef size_t mark
        cdef obuf scratch
        out = []
        slow = []
        scratch.p = NULL
        scratch.n = scratch.cap = 0
        scratch.bad = 0
        hep_ring_iter_init(&it, base, <size_t>span.shape[0])
        try:
            while True:
                with nogil:
                    while hep_ring_next(&it, &rec, &ln, &meta) == HEP_RING_RECORD:
                        # rows go to scratch first: the group is known only afterwards
                        scratch.n = 0
                        scratch.bad = 0
                        rc = _row(rec, ln, now, &scratch, &table, &ts_us)
                        if rc == ROW_NONE:
                            skipped += 1
                            continue
                        if rc == ROW_SLOW:
                            break
                        if accepted >= limit:
                            over += 1
                            continue
                        start = _part_start(ts_us, self.part_s)
                        g = self._group(table, start)
                        if g == NULL:
                            break
                        mark = g.b.n
                        _put(&g.b, scratch.p, scratch.n)
                        if g.b.bad:
                            g.b.n = mark
                            g.b.bad = 0
                            rc = ROW_SLOW
                            break
                        g.rows += 1
                        accepted += 1
                    else:
                        rc = -1                         # the span is done
                if rc == -1:
                    break
                if rc == ROW_SLOW:
                    slow.append(PyBytes_FromStringAndSize(<const char *>rec, ln))
                else:                                   # every group slot taken
                    out.extend(self._emit())
                    g = self._group(table, start)
                    _put(&g.b, scratch.p, scratch.n)
                    if g.b.bad:
                        g.b.n = 0
                        g.b.bad = 0
                        slow.append(PyBytes_FromStringAndSize(<const char *>rec, ln))
                    else:
                        g.rows += 1
                        accepted += 1
        finally:
            free(scratch.p)
        out.extend(self._emit())
        return out, skipped, over, slow

    def row(self, data, double now):
        """One packet through the same C path: (table, ts_us, tuple bytes), None (row_of
        would return None) or "slow" (left to row_of). For tests."""
        cdef const uint8_t[::1] mv = data
        cdef int table = 0, rc
        cdef int64_t ts_us = 0
        self.one.n = 0
        self.one.bad = 0
        cdef const uint8_t *p = &mv[0] if mv.shape[0] else NULL
        self.one.n = 0
        rc = _row(p, <uint32_t>mv.shape[0], now, &self.one, &table, &ts_us)
        if rc == ROW_NONE:
            return None
        if rc == ROW_SLOW:
            return "slow"
        return TABLES[table], ts_us, PyBytes_FromStringAndSize(<char *>self.one.p,
                                                               <Py_ssize_t>self.one.n)
