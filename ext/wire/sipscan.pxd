# cython: language_level=3
#
# sipscan: the SIP scanner of the data plane, at C level (inline, compiled into each user).
# Its twin is hepfast/wire/sip.py: the same small grammar with the same index steps, compared on the
# corpus and on random input by tests/test_sip.py. Read hepfast/wire/sip.py's docstring for the
# grammar; change both together.
#
# Invariants:
# - Every function reads only p[0:n] (windows are [s, e) with 0 <= s <= e <= n, every index is
#   checked against its window end before the byte is read), never writes to it, cannot fail.
# - Results are (offset, length) windows relative to p; length 0 means absent.
# - Only the header section is scanned (up to the first empty line); the body is never touched.
# - Payloads longer than 2 GiB are scanned in their first 2 GiB only (offsets are uint32).
# - sip_scan_want looks only for the headers its `want` bits name (the plan's union over the
#   rules): a header no rule needs costs nothing; the start line is always read. With SW_NAMES
#   it reads the whole section and summarises the header names (hdr_names), so that sip_header
#   rules do not scan a packet a second time for a header it does not have.

from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.string cimport memchr, memcmp, memset

from constants cimport SW_CALL_ID, SW_FROM, SW_TO, SW_CSEQ, SW_USER_AGENT, SW_NAMES

ctypedef struct sip_info:
    int status                  # response status code; 0 for a request
    uint32_t method_off
    uint32_t method_len
    uint32_t call_id_off
    uint32_t call_id_len
    uint32_t from_user_off
    uint32_t from_user_len
    uint32_t to_user_off
    uint32_t to_user_len
    uint32_t ruri_user_off
    uint32_t ruri_user_len
    uint32_t ruri_domain_off
    uint32_t ruri_domain_len
    # issue 14 A: scanned only when asked for (sip_scan_want), plus where the headers start
    uint32_t cseq_method_off
    uint32_t cseq_method_len
    uint32_t user_agent_off     # User-Agent, else Server
    uint32_t user_agent_len
    uint32_t hdr_off            # first header line (sip_next_header starts here)
    # SW_NAMES: a 64-bit summary of every header name of the section (sip_name_bit of each),
    # so a sip_header rule whose name (or compact form) has no bit set skips its own scan.
    # hdr_all says the summary covers the whole section (only then may a rule rely on it).
    uint64_t hdr_names
    int hdr_all


cdef inline Py_ssize_t _sip_find(const uint8_t *p, Py_ssize_t s, Py_ssize_t e,
                                 uint8_t c) noexcept nogil:
    """Index of the first c in p[s:e], or -1."""
    cdef const uint8_t *q
    if s >= e:
        return -1
    q = <const uint8_t *>memchr(p + s, c, <size_t>(e - s))
    if q == NULL:
        return -1
    return q - p


cdef inline bint _sip_blank(uint8_t c) noexcept nogil:
    return c == 0x20 or c == 0x09


cdef inline uint8_t _sip_lower(uint8_t c) noexcept nogil:
    if 0x41 <= c <= 0x5A:
        return c | 0x20
    return c


cdef inline bint _sip_token(uint8_t c) noexcept nogil:
    # RFC 3261 token: alphanumerics and - . ! % * _ + ` ' ~
    if 0x30 <= c <= 0x39 or 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A:
        return True
    return c == 0x2D or c == 0x2E or c == 0x21 or c == 0x25 or c == 0x2A or c == 0x5F \
        or c == 0x2B or c == 0x60 or c == 0x27 or c == 0x7E


cdef inline bint _sip_lower_eq(const uint8_t *p, Py_ssize_t s, Py_ssize_t e,
                               const char *word, Py_ssize_t wlen) noexcept nogil:
    """p[s:e] equals the lower-case ASCII `word`, ignoring case."""
    cdef Py_ssize_t i
    if e - s != wlen:
        return False
    for i in range(wlen):
        if _sip_lower(p[s + i]) != <uint8_t>word[i]:
            return False
    return True


cdef inline Py_ssize_t _sip_line_end(const uint8_t *p, Py_ssize_t pos, Py_ssize_t n,
                                     Py_ssize_t *nxt) noexcept nogil:
    """End of the content of the line starting at pos (LF excluded, one trailing CR dropped);
    the start of the next line goes to nxt."""
    return _sip_line_close(p, pos, _sip_find(p, pos, n, 0x0A), n, nxt)


cdef inline Py_ssize_t _sip_line_close(const uint8_t *p, Py_ssize_t pos, Py_ssize_t lf,
                                       Py_ssize_t n, Py_ssize_t *nxt) noexcept nogil:
    """_sip_line_end with the line's LF already found (lf, or -1: none before n)."""
    cdef Py_ssize_t end
    if lf < 0:
        nxt[0] = n
        end = n
    else:
        nxt[0] = lf + 1
        end = lf
    if end > pos and p[end - 1] == 0x0D:
        end -= 1
    return end


cdef inline int _sip_start_line(const uint8_t *p, Py_ssize_t a, Py_ssize_t b, int *status,
                                Py_ssize_t *mend, Py_ssize_t *us,
                                Py_ssize_t *ue) noexcept nogil:
    """Kind of the first line p[a:b]: 1 request (method [a, mend), URI [us, ue)), 2 response
    (status), 0 not SIP."""
    cdef Py_ssize_t sp1, sp2, i
    cdef uint8_t d0, d1, d2
    if b - a >= 11 and memcmp(p + a, b"SIP/2.0 ", 8) == 0:
        d0 = p[a + 8]
        d1 = p[a + 9]
        d2 = p[a + 10]
        if 0x31 <= d0 <= 0x36 and 0x30 <= d1 <= 0x39 and 0x30 <= d2 <= 0x39 \
                and (b - a == 11 or p[a + 11] == 0x20):
            status[0] = (d0 - 0x30) * 100 + (d1 - 0x30) * 10 + (d2 - 0x30)
            return 2
        return 0
    sp1 = _sip_find(p, a, b, 0x20)
    if sp1 <= a:
        return 0
    for i in range(a, sp1):
        if not _sip_token(p[i]):
            return 0
    sp2 = _sip_find(p, sp1 + 1, b, 0x20)
    if sp2 <= sp1 + 1:
        return 0
    if b - (sp2 + 1) != 7 or memcmp(p + sp2 + 1, b"SIP/2.0", 7) != 0:
        return 0
    mend[0] = sp1
    us[0] = sp1 + 1
    ue[0] = sp2
    return 1


cdef inline void _sip_uri(const uint8_t *p, Py_ssize_t s, Py_ssize_t e, Py_ssize_t *us,
                          Py_ssize_t *ue, Py_ssize_t *hs, Py_ssize_t *he) noexcept nogil:
    """User [us, ue) and domain [hs, he) of a sip/sips/tel URI in p[s:e]; empty when absent."""
    cdef Py_ssize_t colon, r, at, close, i
    us[0] = 0
    ue[0] = 0
    hs[0] = 0
    he[0] = 0
    colon = _sip_find(p, s, e, 0x3A)
    if colon < 0:
        return
    r = colon + 1
    if _sip_lower_eq(p, s, colon, b"tel", 3):
        i = _sip_find(p, r, e, 0x3B)
        us[0] = r
        ue[0] = e if i < 0 else i
        return
    if not (_sip_lower_eq(p, s, colon, b"sip", 3) or _sip_lower_eq(p, s, colon, b"sips", 4)):
        return
    at = _sip_find(p, r, e, 0x40)
    if at >= 0:
        i = _sip_find(p, r, at, 0x3A)
        us[0] = r
        ue[0] = at if i < 0 else i
        r = at + 1
    if r < e and p[r] == 0x5B:                  # "[" IPv6 reference: keep the brackets
        close = _sip_find(p, r, e, 0x5D)
        hs[0] = r
        he[0] = e if close < 0 else close + 1
        return
    i = r
    while i < e and p[i] != 0x3B and p[i] != 0x3F and p[i] != 0x3A:
        i += 1
    hs[0] = r
    he[0] = i


cdef inline void _sip_name_addr_user(const uint8_t *p, Py_ssize_t s, Py_ssize_t e,
                                     Py_ssize_t *us, Py_ssize_t *ue) noexcept nogil:
    """User window of a From/To header value p[s:e]."""
    cdef Py_ssize_t i = s, lt, a, b, hs, he
    us[0] = 0
    ue[0] = 0
    if i < e and p[i] == 0x22:                  # quoted display name, backslash escapes
        i += 1
        while i < e and p[i] != 0x22:
            if p[i] == 0x5C:
                i += 2
            else:
                i += 1
        if i >= e:
            return
        i += 1
    lt = _sip_find(p, i, e, 0x3C)
    if lt >= 0:
        a = lt + 1
        b = _sip_find(p, a, e, 0x3E)
        if b < 0:
            b = e
    else:
        a = i
        b = _sip_find(p, a, e, 0x3B)
        if b < 0:
            b = e
    _sip_uri(p, a, b, us, ue, &hs, &he)


cdef inline int sip_next_header(const uint8_t *p, Py_ssize_t n, Py_ssize_t *pos,
                                Py_ssize_t *ns, Py_ssize_t *ne, Py_ssize_t *vs,
                                Py_ssize_t *ve) noexcept nogil:
    """The next header line from pos[0] (advanced past it): name [ns, ne) with blanks before the
    colon dropped, value [vs, ve) trimmed of SP/HTAB. Folded continuation lines and lines
    without a colon are skipped. Returns 0 at the empty line or the end of p (pos then n or
    past the empty line), else 1. Twin: hepfast.wire.sip._next_header.

    One pass per line: the bytes up to the first colon or LF are read once by a byte loop
    (header names are short), the rest of the line by memchr for its LF; the line and its
    colon are then what _sip_line_end and a search for the colon in it would give."""
    cdef Py_ssize_t a, b, i, colon, lf, e, s
    cdef uint8_t c
    while pos[0] < n:
        a = pos[0]
        i = a
        colon = -1
        while i < n:
            c = p[i]
            if c == 0x3A:
                colon = i
                break
            if c == 0x0A:
                break
            i += 1
        if colon >= 0:
            lf = _sip_find(p, colon + 1, n, 0x0A)
        else:
            lf = i if i < n else -1
        b = _sip_line_close(p, a, lf, n, pos)
        if b == a:
            return 0                            # the empty line: end of headers
        if _sip_blank(p[a]) or colon < 0:
            continue                            # folded continuation line, or no colon
        e = colon
        while e > a and _sip_blank(p[e - 1]):
            e -= 1
        ns[0] = a
        ne[0] = e
        s = colon + 1
        e = b
        while s < e and _sip_blank(p[s]):
            s += 1
        while e > s and _sip_blank(p[e - 1]):
            e -= 1
        vs[0] = s
        ve[0] = e
        return 1
    return 0


cdef inline uint64_t sip_name_bit(uint8_t first, uint8_t last, Py_ssize_t ln) noexcept nogil:
    """The bit of sip_info.hdr_names a header name of length ln (first and last bytes, any
    case) sets. Equal names (ignoring case) set the same bit; other names may share it, which
    only costs the rule its own scan."""
    return (<uint64_t>1) << ((<uint64_t>ln * 11 + _sip_lower(first) * 3 + _sip_lower(last)) & 63)


cdef inline int _sip_header_slot(const uint8_t *p, Py_ssize_t a, Py_ssize_t e) noexcept nogil:
    """Which slot of _sip_headers a header name p[a:e] fills: 0 Call-ID, 1 From, 2 To, 3 CSeq,
    4 User-Agent, 5 Server (full or compact forms, any case), -1 none of them."""
    cdef Py_ssize_t ln = e - a
    if ln == 1:
        if _sip_lower(p[a]) == 0x69:            # i
            return 0
        if _sip_lower(p[a]) == 0x66:            # f
            return 1
        if _sip_lower(p[a]) == 0x74:            # t
            return 2
        return -1
    if _sip_lower_eq(p, a, e, b"call-id", 7):
        return 0
    if _sip_lower_eq(p, a, e, b"from", 4):
        return 1
    if _sip_lower_eq(p, a, e, b"to", 2):
        return 2
    if _sip_lower_eq(p, a, e, b"cseq", 4):
        return 3
    if _sip_lower_eq(p, a, e, b"user-agent", 10):
        return 4
    if _sip_lower_eq(p, a, e, b"server", 6):
        return 5
    return -1


cdef inline int _sip_headers(const uint8_t *p, Py_ssize_t pos, Py_ssize_t n, int want,
                             Py_ssize_t *vs, Py_ssize_t *ve, uint64_t *names) noexcept nogil:
    """Value windows of the headers `want` asks for (SW_* bits: Call-ID slot 0, From 1, To 2,
    CSeq 3, User-Agent 4 with Server 5) in the header section starting at pos, into vs[i]/ve[i].
    Returns a bit mask of the slots found (first occurrence decides, even with an empty value);
    stops once every wanted slot is found (Server alone does not stop the search for
    User-Agent). names: NULL, or where the sip_name_bit of every header name goes (the whole
    section is then read)."""
    cdef int found = 0, idx, slots = 0, need
    cdef Py_ssize_t ns = 0, ne = 0, s = 0, e = 0
    if want & SW_CALL_ID:
        slots |= 1
    if want & SW_FROM:
        slots |= 2
    if want & SW_TO:
        slots |= 4
    if want & SW_CSEQ:
        slots |= 8
    need = slots
    if want & SW_USER_AGENT:
        need |= 16
        slots |= 16 | 32
    while (need & ~found or names != NULL) and sip_next_header(p, n, &pos, &ns, &ne, &s, &e):
        if names != NULL and ne > ns:
            names[0] |= sip_name_bit(p[ns], p[ne - 1], ne - ns)
        idx = _sip_header_slot(p, ns, ne)
        if idx < 0 or not (slots & (1 << idx)) or found & (1 << idx):
            continue
        vs[idx] = s
        ve[idx] = e
        found |= 1 << idx
    return found


cdef inline void _sip_cseq_method(const uint8_t *p, Py_ssize_t s, Py_ssize_t e, Py_ssize_t *ms,
                                  Py_ssize_t *me) noexcept nogil:
    """Method [ms, me) of a CSeq value p[s:e] (`1*DIGIT 1*blank method`); empty when the value
    does not have that shape."""
    cdef Py_ssize_t i = s
    ms[0] = 0
    me[0] = 0
    while i < e and 0x30 <= p[i] <= 0x39:
        i += 1
    if i == s or i >= e or not _sip_blank(p[i]):
        return
    while i < e and _sip_blank(p[i]):
        i += 1
    ms[0] = i
    while i < e and not _sip_blank(p[i]):
        i += 1
    me[0] = i


cdef inline int sip_scan_want(const uint8_t *p, Py_ssize_t n, int want,
                              sip_info *out) noexcept nogil:
    """Scan a SIP payload p[0:n] into out: the start line always (method, status, Request-URI),
    the headers `want` names (SW_* bits; the others stay absent). Returns 0 when it is SIP (a
    request or status line), -1 otherwise (out is then all zero)."""
    cdef Py_ssize_t b, nxt = 0, mend = 0, us = 0, ue = 0, a1, a2, a3, a4
    cdef Py_ssize_t vs[6]
    cdef Py_ssize_t ve[6]
    cdef int kind, status = 0, found
    memset(out, 0, sizeof(sip_info))
    if n > 0x7FFFFFFF:
        n = 0x7FFFFFFF
    if n <= 0:
        return -1
    b = _sip_line_end(p, 0, n, &nxt)
    kind = _sip_start_line(p, 0, b, &status, &mend, &us, &ue)
    if kind == 0:
        return -1
    out.hdr_off = <uint32_t>nxt
    if kind == 2:
        out.status = status
    else:
        out.method_len = <uint32_t>mend
        _sip_uri(p, us, ue, &a1, &a2, &a3, &a4)
        out.ruri_user_off = <uint32_t>a1
        out.ruri_user_len = <uint32_t>(a2 - a1)
        out.ruri_domain_off = <uint32_t>a3
        out.ruri_domain_len = <uint32_t>(a4 - a3)
    if want == 0:
        return 0
    if want & SW_NAMES:
        found = _sip_headers(p, nxt, n, want, vs, ve, &out.hdr_names)
        out.hdr_all = 1
    else:
        found = _sip_headers(p, nxt, n, want, vs, ve, NULL)
    if found & 1:
        out.call_id_off = <uint32_t>vs[0]
        out.call_id_len = <uint32_t>(ve[0] - vs[0])
    if found & 2:
        _sip_name_addr_user(p, vs[1], ve[1], &a1, &a2)
        out.from_user_off = <uint32_t>a1
        out.from_user_len = <uint32_t>(a2 - a1)
    if found & 4:
        _sip_name_addr_user(p, vs[2], ve[2], &a1, &a2)
        out.to_user_off = <uint32_t>a1
        out.to_user_len = <uint32_t>(a2 - a1)
    if found & 8:
        _sip_cseq_method(p, vs[3], ve[3], &a1, &a2)
        out.cseq_method_off = <uint32_t>a1
        out.cseq_method_len = <uint32_t>(a2 - a1)
    if found & 16:
        out.user_agent_off = <uint32_t>vs[4]
        out.user_agent_len = <uint32_t>(ve[4] - vs[4])
    elif found & 32:
        out.user_agent_off = <uint32_t>vs[5]
        out.user_agent_len = <uint32_t>(ve[5] - vs[5])
    return 0


cdef inline int sip_scan(const uint8_t *p, Py_ssize_t n, sip_info *out) noexcept nogil:
    """sip_scan_want with every header: all fields of sip_info."""
    return sip_scan_want(p, n, SW_CALL_ID | SW_FROM | SW_TO | SW_CSEQ | SW_USER_AGENT, out)


cdef inline int sip_call_id(const uint8_t *p, Py_ssize_t n, uint32_t *off,
                            uint32_t *ln) noexcept nogil:
    """Fast path of the call key: the Call-ID (full or compact `i:`) window of p[0:n]. The first
    line is skipped unchecked; scanning stops at the end of headers or at the first Call-ID.
    Returns 1 when found with a non-empty value, else 0 (off/ln then 0)."""
    cdef Py_ssize_t nxt = 0
    cdef Py_ssize_t vs[6]
    cdef Py_ssize_t ve[6]
    off[0] = 0
    ln[0] = 0
    if n > 0x7FFFFFFF:
        n = 0x7FFFFFFF
    if n <= 0:
        return 0
    _sip_line_end(p, 0, n, &nxt)
    if not (_sip_headers(p, nxt, n, SW_CALL_ID, vs, ve, NULL) & 1) or ve[0] <= vs[0]:
        return 0
    off[0] = <uint32_t>vs[0]
    ln[0] = <uint32_t>(ve[0] - vs[0])
    return 1
