# cython: language_level=3
#
# matcher: the compiled rule tables (hepfast/plan/) at C level, and the per-packet match.
# Inline, compiled into each user (ext/dataplane/_worker.pyx, ext/plan/_matcher.pyx). The module
# docstring of hepfast/plan/tables.py is the reference for the table layout and the evaluation
# semantics; the pure-Python evaluator hepfast/plan/oracle.py (match_rules) is the oracle
# tests/test_rules.py compares this with.
#
# Invariants:
# - `rules_bind` (cold, with the GIL) only takes pointers into the numpy arrays of a
#   hepfast.plan.Compiled object: the caller keeps that object alive for as long as it uses the
#   rule_tables (a worker swaps tables between two batches, then drops the old object).
# - The tables are read-only; nothing here writes to them or to the packet buffer.
# - `rule_match` and the helpers cannot fail (noexcept nogil): every index they follow was checked
#   once by rules_bind (key_start + key_count within the value tables).
# - SIP windows of `sip_info` are relative to the payload (buf + p.payload_off), as sip_scan
#   returns them; a NULL sip_info means "no SIP summary": SIP keys do not match.
# - Key numbers and flag bits come from hepfast/constants.py (ext/generated/constants.pxd).

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, uintptr_t
from libc.string cimport memchr

from hepwire cimport (hep_pkt, hep_rd32, hep_hash64, hep_mix64, CH_PTYPE, CH_PROTO, CH_SRC4,
                      CH_DST4, CH_SRC6, CH_DST6, CH_SPORT, CH_DPORT, CH_CAPID, CH_CORR, CH_NODE,
                      CH_PAYLOAD)
from sipscan cimport sip_info, sip_call_id, sip_next_header, sip_name_bit, _sip_lower

from constants cimport (
    K_LISTENER, K_HEP_VERSION, K_PROTO_TYPE, K_IP_FAMILY, K_IP_PROTO, K_SRC_IP, K_DST_IP,
    K_SRC_PORT, K_DST_PORT, K_CAPTURE_ID, K_NODE_NAME, K_CORRELATION_ID, K_SIP_METHOD,
    K_SIP_STATUS, K_SIP_CALL_ID, K_SIP_FROM_USER, K_SIP_TO_USER, K_SIP_RURI_USER,
    K_SIP_RURI_DOMAIN, NKEYS, RF_DROP, RF_CONTINUE, RF_HAS_REWRITE, RF_NEEDS_SIP, RF_HAS_SAMPLE,
    K_SIP_CSEQ_METHOD, K_SIP_USER_AGENT, K_SIP_HEADER, K_CORRELATION_ID_FIELD, GLOB_ANY,
    GLOB_STAR, CK_CALL_ID, CK_CORRELATION_ID, CK_SRC_IP, CK_CAPTURE_ID,
)

cdef extern from *:
    int __builtin_ctz(unsigned int x) noexcept nogil

ctypedef struct rule_tables:
    Py_ssize_t nrules
    Py_ssize_t nranges
    Py_ssize_t ncidrs
    const uint32_t *key_mask        # [nrules]
    const int32_t *key_start        # [nrules * NKEYS]
    const int32_t *key_count        # [nrules * NKEYS]
    const uint64_t *ranges          # [nranges * 2]: lo, hi (inclusive)
    const uint64_t *cidrs           # [ncidrs * 4]: net_hi, net_lo, mask_hi, mask_lo
    const uint8_t *cidr_fam         # [ncidrs]: 4 or 6
    const uint32_t *flags           # [nrules]
    const int32_t *fwd_start        # [nrules]
    const int32_t *fwd_count        # [nrules]
    const int32_t *fwd              # destination indices
    const uint8_t *set_blob         # pre-encoded set chunks
    const int32_t *set_off          # [nrules]
    const int32_t *set_len          # [nrules]
    const uint32_t *skip            # chunk keys (vendor << 16 | type) to leave out
    const int32_t *skip_start       # [nrules]
    const int32_t *skip_count       # [nrules]
    const uint64_t *sample          # [nrules]: keep when mix64(call key hash) < sample[r]
    bint needs_sip                  # some rule has a sip_* key: scan SIP payloads
    bint needs_call_key             # some rule samples
    int32_t default_dest            # -1: drop
    # issue 14 A: globs and table-valued keys (sip_header, correlation_id_field)
    Py_ssize_t npats
    Py_ssize_t nconds
    const int32_t *pat_start        # [nrules * NKEYS]: the globs of string key k of rule r
    const int32_t *pat_count        # [nrules * NKEYS]
    const int32_t *pat_off          # [npats] into pat_blob
    const int32_t *pat_len          # [npats]
    const uint16_t *pat_blob        # glob tokens: bytes, GLOB_ANY, GLOB_STAR
    const int32_t *conds            # [nconds * 7]: a, b, c, range start/count, glob start/count
    const uint8_t *cond_blob        # sip_header names, lower case
    int sip_want                    # SW_* bits: the headers sip_scan_want looks for


cdef inline const void *_array_ptr(object arr, object dtype, Py_ssize_t ndim,
                                   Py_ssize_t *length) except? NULL:
    """Data pointer of a C-contiguous numpy array of the given dtype, and its first dimension."""
    if arr.dtype != dtype or not arr.flags.c_contiguous or arr.ndim != ndim:
        raise TypeError(f"rule table: expected a C-contiguous {ndim}-d {dtype} array, got "
                        f"{arr.dtype} {arr.shape}")
    length[0] = arr.shape[0]
    if arr.size == 0:
        return NULL
    return <const void *><uintptr_t>arr.__array_interface__["data"][0]


cdef inline int rules_bind(rule_tables *t, object c) except -1:
    """Point t at the tables of a hepfast.plan.Compiled (kept alive by the caller)."""
    import numpy as np
    cdef Py_ssize_t n, m, i, k, nfwd, nblob, nskip, s, cnt
    t.key_mask = <const uint32_t *>_array_ptr(c.key_mask, np.uint32, 1, &n)
    t.nrules = n
    t.key_start = <const int32_t *>_array_ptr(c.key_start, np.int32, 2, &m)
    if m != n or c.key_start.shape[1] != NKEYS or c.key_count.shape != c.key_start.shape:
        raise ValueError("rule table: key_start/key_count must be [nrules, NKEYS]")
    t.key_count = <const int32_t *>_array_ptr(c.key_count, np.int32, 2, &m)
    t.ranges = <const uint64_t *>_array_ptr(c.ranges, np.uint64, 2, &t.nranges)
    t.cidrs = <const uint64_t *>_array_ptr(c.cidrs, np.uint64, 2, &t.ncidrs)
    t.cidr_fam = <const uint8_t *>_array_ptr(c.cidr_fam, np.uint8, 1, &m)
    if m != t.ncidrs or (t.nranges and c.ranges.shape[1] != 2) \
            or (t.ncidrs and c.cidrs.shape[1] != 4):
        raise ValueError("rule table: ranges must be [N, 2], cidrs [M, 4], cidr_fam [M]")
    t.flags = <const uint32_t *>_array_ptr(c.flags, np.uint32, 1, &m)
    t.fwd_start = <const int32_t *>_array_ptr(c.fwd_start, np.int32, 1, &m)
    t.fwd_count = <const int32_t *>_array_ptr(c.fwd_count, np.int32, 1, &m)
    t.fwd = <const int32_t *>_array_ptr(c.fwd, np.int32, 1, &nfwd)
    t.set_blob = <const uint8_t *>_array_ptr(c.set_blob, np.uint8, 1, &nblob)
    t.set_off = <const int32_t *>_array_ptr(c.set_off, np.int32, 1, &m)
    t.set_len = <const int32_t *>_array_ptr(c.set_len, np.int32, 1, &m)
    t.skip = <const uint32_t *>_array_ptr(c.skip, np.uint32, 1, &nskip)
    t.skip_start = <const int32_t *>_array_ptr(c.skip_start, np.int32, 1, &m)
    t.skip_count = <const int32_t *>_array_ptr(c.skip_count, np.int32, 1, &m)
    t.sample = <const uint64_t *>_array_ptr(c.sample, np.uint64, 1, &m)
    for arr in (c.flags, c.fwd_start, c.fwd_count, c.set_off, c.set_len, c.skip_start,
                c.skip_count, c.sample):
        if arr.shape[0] != n:
            raise ValueError("rule table: per-rule arrays must all have nrules rows")
    # Check every index once here, so the nogil readers need no bounds checks.
    for i in range(n):
        for k in range(NKEYS):
            s = t.key_start[i * NKEYS + k]
            cnt = t.key_count[i * NKEYS + k]
            if s < 0 or cnt < 0 or s + cnt > (
                    t.ncidrs if k == K_SRC_IP or k == K_DST_IP
                    else c.conds.shape[0] if k == K_SIP_HEADER or k == K_CORRELATION_ID_FIELD
                    else t.nranges):
                raise ValueError(f"rule table: rule {i} key {k} indexes past its value table")
        if t.fwd_start[i] < 0 or t.fwd_count[i] < 0 or t.fwd_start[i] + t.fwd_count[i] > nfwd \
                or t.set_off[i] < 0 or t.set_len[i] < 0 or t.set_off[i] + t.set_len[i] > nblob \
                or t.skip_start[i] < 0 or t.skip_count[i] < 0 \
                or t.skip_start[i] + t.skip_count[i] > nskip:
            raise ValueError(f"rule table: rule {i} action indexes past its table")
    for i in range(nfwd):
        if not 0 <= t.fwd[i] < len(c.destinations):
            raise ValueError(f"rule table: fwd[{i}] is not a destination index")
    t.needs_sip = bool(c.needs_sip)
    t.needs_call_key = bool(c.needs_call_key)
    t.default_dest = c.default_dest
    _bind_patterns(t, c)
    return 0


cdef inline int _bind_patterns(rule_tables *t, object c) except -1:
    """The pattern and condition tables (issue 14 A), every index checked as rules_bind does."""
    import numpy as np
    cdef Py_ssize_t m, i, k, s, cnt, nblob, ncblob, nrow
    t.pat_start = <const int32_t *>_array_ptr(c.pat_start, np.int32, 2, &m)
    if m != t.nrules or c.pat_start.shape[1] != NKEYS or c.pat_count.shape != c.pat_start.shape:
        raise ValueError("rule table: pat_start/pat_count must be [nrules, NKEYS]")
    t.pat_count = <const int32_t *>_array_ptr(c.pat_count, np.int32, 2, &m)
    t.pat_off = <const int32_t *>_array_ptr(c.pat_off, np.int32, 1, &t.npats)
    t.pat_len = <const int32_t *>_array_ptr(c.pat_len, np.int32, 1, &m)
    t.pat_blob = <const uint16_t *>_array_ptr(c.pat_blob, np.uint16, 1, &nblob)
    t.conds = <const int32_t *>_array_ptr(c.conds, np.int32, 2, &t.nconds)
    t.cond_blob = <const uint8_t *>_array_ptr(c.cond_blob, np.uint8, 1, &ncblob)
    if m != t.npats or (t.nconds and c.conds.shape[1] != 7):
        raise ValueError("rule table: pat_len must be [npats], conds [nconds, 7]")
    for i in range(t.npats):
        if t.pat_off[i] < 0 or t.pat_len[i] < 0 or t.pat_off[i] + t.pat_len[i] > nblob:
            raise ValueError(f"rule table: pattern {i} indexes past the pattern blob")
        for k in range(t.pat_off[i], t.pat_off[i] + t.pat_len[i]):
            if t.pat_blob[k] > GLOB_STAR:
                raise ValueError(f"rule table: pattern {i} has an unknown token")
    for i in range(t.nrules):
        for k in range(NKEYS):
            s = t.pat_start[i * NKEYS + k]
            cnt = t.pat_count[i * NKEYS + k]
            if s < 0 or cnt < 0 or s + cnt > t.npats:
                raise ValueError(f"rule table: rule {i} key {k} indexes past the patterns")
            if (k == K_SIP_HEADER or k == K_CORRELATION_ID_FIELD) and \
                    t.key_start[i * NKEYS + k] + t.key_count[i * NKEYS + k] > t.nconds:
                raise ValueError(f"rule table: rule {i} key {k} indexes past the conditions")
    for i in range(t.nconds):
        nrow = 7 * i
        if t.conds[nrow + 3] < 0 or t.conds[nrow + 4] < 0 \
                or t.conds[nrow + 3] + t.conds[nrow + 4] > t.nranges \
                or t.conds[nrow + 5] < 0 or t.conds[nrow + 6] < 0 \
                or t.conds[nrow + 5] + t.conds[nrow + 6] > t.npats:
            raise ValueError(f"rule table: condition {i} indexes past its value tables")
    # the kind of row (header name or field split) depends on the key that points at it
    for i in range(t.nrules):
        s = t.key_start[i * NKEYS + K_SIP_HEADER]
        for k in range(s, s + t.key_count[i * NKEYS + K_SIP_HEADER]):
            if t.conds[7 * k] < 0 or t.conds[7 * k + 1] <= 0 \
                    or t.conds[7 * k] + t.conds[7 * k + 1] > ncblob:
                raise ValueError(f"rule table: condition {k} names a header past the blob")
        s = t.key_start[i * NKEYS + K_CORRELATION_ID_FIELD]
        for k in range(s, s + t.key_count[i * NKEYS + K_CORRELATION_ID_FIELD]):
            if not 0 < t.conds[7 * k] < 256:
                raise ValueError(f"rule table: condition {k} has no separator byte")
    t.sip_want = int(c.sip_want)
    return 0


cdef inline uint64_t _rd64(const uint8_t *p) noexcept nogil:
    return (<uint64_t>hep_rd32(p) << 32) | hep_rd32(p + 4)


cdef inline bint pkt_addr(const hep_pkt *p, bint src, uint64_t *hi, uint64_t *lo) noexcept nogil:
    """The packet's source (src) or destination address as 128 bits, IPv4 mapped into
    ::ffff:0:0/96; False when the packet has no address of its own family."""
    cdef const uint8_t *a
    if p.family == 4 and p.present & ((<uint64_t>1) << (CH_SRC4 if src else CH_DST4)):
        if src:
            a = &p.src4[0]
        else:
            a = &p.dst4[0]
        hi[0] = 0
        lo[0] = (<uint64_t>0xFFFF << 32) | hep_rd32(a)
        return True
    if p.family == 6 and p.present & ((<uint64_t>1) << (CH_SRC6 if src else CH_DST6)):
        if src:
            a = &p.src6[0]
        else:
            a = &p.dst6[0]
        hi[0] = _rd64(a)
        lo[0] = _rd64(a + 8)
        return True
    return False


cdef inline bint cidr_match(const uint64_t *rows, const uint8_t *fam, Py_ssize_t s, Py_ssize_t n,
                            uint64_t hi, uint64_t lo, uint8_t family) noexcept nogil:
    """Whether the address is in one of rows[s:s+n] of its own family (also the listeners'
    `allow` tables, which have the same layout)."""
    cdef Py_ssize_t i
    cdef const uint64_t *row
    for i in range(s, s + n):
        row = rows + 4 * i
        if fam[i] == family and (hi & row[2]) == row[0] and (lo & row[3]) == row[1]:
            return True
    return False


cdef inline bint _in_ranges(const rule_tables *t, Py_ssize_t s, Py_ssize_t n,
                            uint64_t v) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(s, s + n):
        if t.ranges[2 * i] <= v <= t.ranges[2 * i + 1]:
            return True
    return False


cdef inline uint64_t hash64_lower(const uint8_t *s, Py_ssize_t n) noexcept nogil:
    """FNV-1a 64 of s with ASCII letters folded to lower case (sip_method, sip_ruri_domain)."""
    cdef uint64_t h = 0xcbf29ce484222325ULL
    cdef Py_ssize_t i
    cdef uint8_t c
    for i in range(n):
        c = s[i]
        if 0x41 <= c <= 0x5A:
            c |= 0x20
        h ^= c
        h *= 0x100000001b3ULL
    return h


cdef inline bint _sip_window(const sip_info *sip, int k, uint32_t *off,
                             uint32_t *ln) noexcept nogil:
    """The window of SIP string key k in the payload, False when absent (or empty)."""
    if sip == NULL:
        return False
    if k == K_SIP_METHOD:
        off[0], ln[0] = sip.method_off, sip.method_len
    elif k == K_SIP_CALL_ID:
        off[0], ln[0] = sip.call_id_off, sip.call_id_len
    elif k == K_SIP_FROM_USER:
        off[0], ln[0] = sip.from_user_off, sip.from_user_len
    elif k == K_SIP_TO_USER:
        off[0], ln[0] = sip.to_user_off, sip.to_user_len
    elif k == K_SIP_RURI_USER:
        off[0], ln[0] = sip.ruri_user_off, sip.ruri_user_len
    elif k == K_SIP_RURI_DOMAIN:
        off[0], ln[0] = sip.ruri_domain_off, sip.ruri_domain_len
    elif k == K_SIP_CSEQ_METHOD:
        off[0], ln[0] = sip.cseq_method_off, sip.cseq_method_len
    elif k == K_SIP_USER_AGENT:
        off[0], ln[0] = sip.user_agent_off, sip.user_agent_len
    else:
        return False
    return ln[0] > 0


# ---------------------------------------------------------------- globs (issue 14 A)

cdef inline bint _seg_eq(const uint16_t *tok, Py_ssize_t len_, const uint8_t *s,
                         bint fold) noexcept nogil:
    """tok[0:len_] (no star) matches s[0:len_]: GLOB_ANY takes any byte."""
    cdef Py_ssize_t i
    cdef uint16_t t
    cdef uint8_t c
    for i in range(len_):
        t = tok[i]
        if t == GLOB_ANY:
            continue
        c = s[i]
        if fold:
            c = _sip_lower(c)
        if c != t:
            return False
    return True


cdef inline bint glob_match(const uint16_t *tok, Py_ssize_t m, const uint8_t *s, Py_ssize_t n,
                            bint fold) noexcept nogil:
    """Whether the glob tok[0:m] (hepfast.config.values.parse_glob tokens, no two stars in a
    row) matches all of s[0:n]. The part before the first star is anchored at the start, the
    part after the last star at the end, and each segment between stars is taken at its
    leftmost place after the previous one (a star absorbs anything, so leftmost is never worse):
    O(n * longest segment), no backtracking beyond that, no allocation. fold: s is compared
    in lower case (the pattern was folded when compiled)."""
    cdef Py_ssize_t a = 0, b, suf, pos, hi, j, e, seg, k
    cdef const uint8_t *q
    while a < m and tok[a] != GLOB_STAR:
        a += 1
    if a == m:
        return n == m and _seg_eq(tok, m, s, fold)
    b = m - 1
    while tok[b] != GLOB_STAR:
        b -= 1
    suf = m - b - 1
    if a + suf > n or not _seg_eq(tok, a, s, fold) or not _seg_eq(tok + b + 1, suf,
                                                                  s + n - suf, fold):
        return False
    pos = a
    hi = n - suf
    j = a + 1
    while j < b:
        e = j
        while tok[e] != GLOB_STAR:
            e += 1
        seg = e - j
        k = pos
        if seg and tok[j] != GLOB_ANY and not (fold and 0x61 <= tok[j] <= 0x7A):
            # The segment starts with a byte only itself matches: memchr finds the candidates.
            while k + seg <= hi:
                q = <const uint8_t *>memchr(s + k, <int>tok[j], <size_t>(hi - seg - k + 1))
                if q == NULL:
                    return False
                k = q - s
                if _seg_eq(tok + j, seg, s + k, fold):
                    break
                k += 1
        else:
            while k + seg <= hi and not _seg_eq(tok + j, seg, s + k, fold):
                k += 1
        if k + seg > hi:
            return False
        pos = k + seg
        j = e + 1
    return True


cdef inline bint _in_value_set(const rule_tables *t, Py_ssize_t rs, Py_ssize_t rn,
                               Py_ssize_t ps, Py_ssize_t pn, const uint8_t *v, Py_ssize_t n,
                               bint fold) noexcept nogil:
    """A string value against exact hashes ranges[rs:rs+rn] and globs ps..ps+pn."""
    cdef Py_ssize_t i
    cdef uint64_t h
    if rn:
        h = hash64_lower(v, n) if fold else hep_hash64(v, n)
        if _in_ranges(t, rs, rn, h):
            return True
    for i in range(ps, ps + pn):
        if glob_match(t.pat_blob + t.pat_off[i], t.pat_len[i], v, n, fold):
            return True
    return False


cdef inline bint select_field(const uint8_t *v, Py_ssize_t n, uint8_t sep, int field,
                              Py_ssize_t *fs, Py_ssize_t *fe) noexcept nogil:
    """Field `field` of v split at sep (0-based; negative from the end) as [fs, fe); False when
    v has fewer fields. Twin: hepfast.plan.oracle.select_field (bytes.split)."""
    cdef Py_ssize_t i, start = 0, end = n
    cdef int idx = 0, want
    if field >= 0:
        for i in range(n):
            if v[i] == sep:
                if idx == field:
                    fs[0] = start
                    fe[0] = i
                    return True
                idx += 1
                start = i + 1
        if idx == field:
            fs[0] = start
            fe[0] = n
            return True
        return False
    want = -field - 1
    for i in range(n - 1, -1, -1):
        if v[i] == sep:
            if idx == want:
                fs[0] = i + 1
                fe[0] = end
                return True
            idx += 1
            end = i
    if idx == want:
        fs[0] = 0
        fe[0] = end
        return True
    return False


cdef inline bint _header_cond(const rule_tables *t, const int32_t *row, const uint8_t *pl,
                              Py_ssize_t n, const sip_info *sip) noexcept nogil:
    """sip_header: some occurrence of the header row names (full or compact form, any case)
    has a non-empty value in the row's value set. Scans the header section from sip.hdr_off."""
    cdef Py_ssize_t pos = sip.hdr_off, ns = 0, ne = 0, vs = 0, ve = 0, i
    cdef const uint8_t *name = t.cond_blob + row[0]
    cdef Py_ssize_t nlen = row[1]
    cdef uint8_t compact = <uint8_t>row[2]
    cdef bint same
    cdef uint64_t bits
    if sip.hdr_all:
        # The first scan summarised every header name: no bit, no such header.
        bits = sip_name_bit(name[0], name[nlen - 1], nlen)
        if compact:
            bits |= sip_name_bit(compact, compact, 1)
        if not (sip.hdr_names & bits):
            return False
    if n > 0x7FFFFFFF:
        n = 0x7FFFFFFF
    while sip_next_header(pl, n, &pos, &ns, &ne, &vs, &ve):
        if ve <= vs:
            continue
        if ne - ns == nlen:
            same = True
            for i in range(nlen):
                if _sip_lower(pl[ns + i]) != name[i]:
                    same = False
                    break
        else:
            same = compact != 0 and ne - ns == 1 and _sip_lower(pl[ns]) == compact
        if same and _in_value_set(t, row[3], row[4], row[5], row[6], pl + vs, ve - vs, False):
            return True
    return False


cdef inline bint _cond_key(const rule_tables *t, int k, Py_ssize_t s, Py_ssize_t n,
                           const hep_pkt *p, const uint8_t *buf,
                           const sip_info *sip) noexcept nogil:
    """sip_header / correlation_id_field: every condition row s..s+n holds (AND)."""
    cdef Py_ssize_t i, fs = 0, fe = 0
    cdef const int32_t *row
    for i in range(s, s + n):
        row = t.conds + 7 * i
        if k == K_SIP_HEADER:
            if sip == NULL or not _header_cond(t, row, buf + p.payload_off, p.payload_len, sip):
                return False
        else:
            if not ((p.present >> CH_CORR) & 1) or not select_field(
                    buf + p.corr_off, p.corr_len, <uint8_t>row[0], row[1], &fs, &fe):
                return False
            if not _in_value_set(t, row[3], row[4], row[5], row[6], buf + p.corr_off + fs,
                                 fe - fs, False):
                return False
    return True


cdef inline bint rule_match(const rule_tables *t, Py_ssize_t r, const hep_pkt *p,
                            const uint8_t *buf, uint32_t listener,
                            const sip_info *sip) noexcept nogil:
    """Whether every key of rule r matches the parsed packet p (buffer buf) received on
    `listener`. `sip`: the SIP summary of the payload, or NULL (SIP keys then do not match)."""
    cdef uint32_t mask = t.key_mask[r]
    cdef int k
    cdef Py_ssize_t s, n
    cdef uint64_t v = 0, hi = 0, lo = 0
    cdef uint32_t off = 0, ln = 0
    cdef const uint8_t *sv = NULL
    cdef bint have, is_str
    while mask:
        k = __builtin_ctz(mask)
        mask &= mask - 1
        s = t.key_start[r * NKEYS + k]
        n = t.key_count[r * NKEYS + k]
        if k == K_SRC_IP or k == K_DST_IP:
            if not pkt_addr(p, k == K_SRC_IP, &hi, &lo):
                return False
            if not cidr_match(t.cidrs, t.cidr_fam, s, n, hi, lo, p.family):
                return False
            continue
        if k == K_SIP_HEADER or k == K_CORRELATION_ID_FIELD:
            if not _cond_key(t, k, s, n, p, buf, sip):
                return False
            continue
        have = True
        is_str = False
        if k == K_LISTENER:
            v = listener
        elif k == K_HEP_VERSION:
            v = p.version
        elif k == K_PROTO_TYPE:
            have = (p.present >> CH_PTYPE) & 1
            v = p.proto_type
        elif k == K_IP_FAMILY:
            have = p.family == 4 or p.family == 6
            v = p.family
        elif k == K_IP_PROTO:
            have = (p.present >> CH_PROTO) & 1
            v = p.ip_proto
        elif k == K_SRC_PORT:
            have = (p.present >> CH_SPORT) & 1
            v = p.src_port
        elif k == K_DST_PORT:
            have = (p.present >> CH_DPORT) & 1
            v = p.dst_port
        elif k == K_CAPTURE_ID:
            have = (p.present >> CH_CAPID) & 1
            v = p.capture_id
        elif k == K_NODE_NAME:
            have = (p.present >> CH_NODE) & 1
            is_str = True
            sv = buf + p.node_off
            ln = p.node_len
        elif k == K_CORRELATION_ID:
            have = (p.present >> CH_CORR) & 1
            is_str = True
            sv = buf + p.corr_off
            ln = p.corr_len
        elif k == K_SIP_STATUS:
            have = sip != NULL and sip.status > 0
            if have:
                v = <uint64_t>sip.status
        else:
            have = _sip_window(sip, k, &off, &ln)
            is_str = True
            sv = buf + p.payload_off + off
        if not have:
            return False
        if is_str:
            if not _in_value_set(t, s, n, t.pat_start[r * NKEYS + k],
                                 t.pat_count[r * NKEYS + k], sv, ln,
                                 k == K_SIP_METHOD or k == K_SIP_RURI_DOMAIN
                                 or k == K_SIP_CSEQ_METHOD):
                return False
        elif not _in_ranges(t, s, n, v):
            return False
    return True


cdef inline bint pkt_is_sip(const hep_pkt *p) noexcept nogil:
    """A packet whose payload the SIP scanner may read: proto type SIP, uncompressed payload."""
    return p.proto_type == 1 and (p.present >> CH_PTYPE) & 1 and (p.present >> CH_PAYLOAD) & 1 \
        and p.payload_len > 0


cdef inline bint call_key_hash(const hep_pkt *p, const uint8_t *buf, uint64_t *h) noexcept nogil:
    """FNV-1a of the call key (SIP Call-ID for SIP packets, else the correlation id); False when
    the packet has none. Twin: HepPacket.call_key()."""
    cdef uint32_t off = 0, ln = 0
    if pkt_is_sip(p) and sip_call_id(buf + p.payload_off, p.payload_len, &off, &ln):
        h[0] = hep_hash64(buf + p.payload_off + off, ln)
        return True
    if (p.present >> CH_CORR) & 1 and p.corr_len > 0:
        h[0] = hep_hash64(buf + p.corr_off, p.corr_len)
        return True
    return False


cdef inline uint64_t sample_key(const hep_pkt *p, const uint8_t *buf) noexcept nogil:
    """What sampling (and hash mode) keys on: the call key's hash, or for a packet without one
    its flow (addresses and ports), so a flow is still kept or dropped whole.
    Twin: hepfast.plan.sample_key_hash."""
    cdef uint64_t h
    if call_key_hash(p, buf, &h):
        return h
    return flow_hash(p)


cdef inline uint64_t flow_hash(const hep_pkt *p) noexcept nogil:
    """The hash of the packet's flow (addresses and ports). Twin: oracle._flow_hash."""
    cdef uint64_t h
    if p.family == 6:
        h = hep_hash64(p.src6, 16) ^ hep_mix64(hep_hash64(p.dst6, 16))
    else:
        h = hep_hash64(p.src4, 4) ^ hep_mix64(hep_hash64(p.dst4, 4))
    return hep_mix64(h ^ ((<uint64_t>p.src_port << 16) | p.dst_port))


cdef inline uint64_t dest_key(const hep_pkt *p, const uint8_t *buf, int kind, uint8_t sep,
                              int field) noexcept nogil:
    """What mode = "hash" keys on for a destination (issue 14 A; Destination.call_key):
    call_id: the SIP Call-ID, else the correlation id; correlation_id: the other way round;
    then one field of it when sep is set (too few fields: the whole value); src_ip: the source
    address of the packet's family; capture_id: its 4 bytes. Without any: the flow.
    call_id without a split equals sample_key. Twin: hepfast.plan.oracle.dest_key_hash."""
    cdef uint32_t off = 0, ln = 0
    cdef const uint8_t *v = NULL
    cdef Py_ssize_t n = 0, fs = 0, fe = 0
    cdef uint8_t cap[4]
    cdef bint corr = (p.present >> CH_CORR) & 1 and p.corr_len > 0
    if kind == CK_CALL_ID or kind == CK_CORRELATION_ID:
        if kind == CK_CORRELATION_ID and corr:
            v = buf + p.corr_off
            n = p.corr_len
        elif pkt_is_sip(p) and sip_call_id(buf + p.payload_off, p.payload_len, &off, &ln):
            v = buf + p.payload_off + off
            n = ln
        elif corr:
            v = buf + p.corr_off
            n = p.corr_len
        if v != NULL:
            if sep and select_field(v, n, sep, field, &fs, &fe):
                return hep_hash64(v + fs, fe - fs)
            return hep_hash64(v, n)
    elif kind == CK_SRC_IP:
        if p.family == 4 and (p.present >> CH_SRC4) & 1:
            return hep_hash64(p.src4, 4)
        if p.family == 6 and (p.present >> CH_SRC6) & 1:
            return hep_hash64(p.src6, 16)
    elif kind == CK_CAPTURE_ID:
        if (p.present >> CH_CAPID) & 1:
            cap[0] = <uint8_t>(p.capture_id >> 24)
            cap[1] = <uint8_t>(p.capture_id >> 16)
            cap[2] = <uint8_t>(p.capture_id >> 8)
            cap[3] = <uint8_t>p.capture_id
            return hep_hash64(cap, 4)
    return flow_hash(p)


cdef inline bint rule_sample_keep(const rule_tables *t, Py_ssize_t r, bint have_key,
                                  uint64_t key_hash) noexcept nogil:
    """Whether a rule that samples keeps the packet whose sample_key is key_hash (have_key
    False: kept; callers that use sample_key always have one)."""
    if not (t.flags[r] & RF_HAS_SAMPLE) or not have_key:
        return True
    return hep_mix64(key_hash) < t.sample[r]
