# cython: language_level=3
#
# hepwire: the HEP wire format at C level (v1, v2, v3), shared by every extension module that
# cimports it (the functions are inline, compiled into each user).
#
# Invariants:
# - `hep_parse` reads only `buf[0:n]`; it never writes to the buffer and never copies it. It fills
#   a `hep_pkt` of decoded fixed fields and (offset, length) windows of the variable ones, and
#   returns a reason code (R_OK or one of the HEP_* reasons); it cannot raise.
# - Parsing cost is bounded per packet: a HEPv3 packet with more than `max_chunks` chunks is
#   refused (R_CHUNKS) when its chunk max_chunks + 1 is reached, before that chunk is read
#   (`hep_parse_lim`; `hep_parse` uses DEFAULT_MAX_CHUNKS). Twin: hepfast/wire/pycodec.py.
# - Offsets in `hep_pkt` are relative to the start of the packet buffer given to hep_parse.
# - `hep_build_v3` / `hep_build_v2` write only `out[0:cap]` and return the new length, -1 when
#   the result cannot be expressed or does not fit, and (v2 only) -2 for a packet that is not SIP.
# - Reason codes come from hepfast/constants.py (generated into ext/generated/constants.pxd);
#   their names are the metrics' `reason` label.

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t
from libc.string cimport memcpy, memcmp, memset
from constants cimport R_OK, R_SHORT, R_MAGIC, R_LENGTH, R_CHUNK, R_VERSION, hep_fixed_size
from constants cimport R_CHUNKS, DEFAULT_MAX_CHUNKS

cdef extern from "hepbytes.h":
    uint16_t hep_rd16(const uint8_t *p) noexcept nogil
    uint32_t hep_rd32(const uint8_t *p) noexcept nogil
    uint32_t hep_rd32le(const uint8_t *p) noexcept nogil
    uint16_t hep_rd16le(const uint8_t *p) noexcept nogil
    void hep_wr16(uint8_t *p, uint16_t v) noexcept nogil
    void hep_wr32(uint8_t *p, uint32_t v) noexcept nogil
    void hep_wr32le(uint8_t *p, uint32_t v) noexcept nogil
    void hep_wr16le(uint8_t *p, uint16_t v) noexcept nogil

# Generic chunk type ids used by the switch.
cdef enum:
    CH_FAMILY = 0x01
    CH_PROTO = 0x02
    CH_SRC4 = 0x03
    CH_DST4 = 0x04
    CH_SRC6 = 0x05
    CH_DST6 = 0x06
    CH_SPORT = 0x07
    CH_DPORT = 0x08
    CH_TSEC = 0x09
    CH_TUSEC = 0x0a
    CH_PTYPE = 0x0b
    CH_CAPID = 0x0c
    CH_AUTH = 0x0e
    CH_PAYLOAD = 0x0f
    CH_ZPAYLOAD = 0x10
    CH_CORR = 0x11
    CH_NODE = 0x13

ctypedef struct hep_pkt:
    uint32_t total          # bytes of the HEP message (v3 length field; v1/v2: datagram length)
    uint8_t version         # 1, 2 or 3
    uint8_t family          # 4, 6, or 0 when unknown
    uint8_t family_raw      # the sender's family byte (2, 10, ...); 0 when absent
    uint8_t ip_proto
    uint8_t proto_type
    uint16_t src_port
    uint16_t dst_port
    uint32_t ts_sec
    uint32_t ts_usec
    uint32_t capture_id
    uint64_t present        # bit t set: a vendor-0 chunk of type t (t < 64) was seen
    uint16_t nchunks        # chunks walked (v3), 0 for v1/v2
    uint16_t nvendor        # chunks with vendor != 0
    uint16_t nauth          # auth-key chunks (a listener with a key refuses more than one)
    uint8_t src4[4]
    uint8_t dst4[4]
    uint8_t src6[16]
    uint8_t dst6[16]
    uint32_t payload_off    # body of 0x000f, or of 0x0010 when only a compressed payload exists
    uint32_t payload_len
    uint32_t corr_off
    uint32_t corr_len
    uint32_t auth_off
    uint32_t auth_len
    uint32_t node_off
    uint32_t node_len


cdef inline uint8_t hep_family_of(uint8_t raw) noexcept nogil:
    # 2 = AF_INET everywhere; IPv6 is 10 on Linux, 24/28/30 on the BSDs and macOS.
    if raw == 2:
        return 4
    if raw == 10 or raw == 24 or raw == 28 or raw == 30:
        return 6
    return 0


cdef inline int hep_parse_v3(const uint8_t *buf, Py_ssize_t n, hep_pkt *p,
                             uint32_t max_chunks) noexcept nogil:
    cdef uint32_t total, pos, clen, blen
    cdef uint16_t vendor, ctype
    cdef int fs
    cdef const uint8_t *body
    if n < 6:
        return R_SHORT
    total = hep_rd16(buf + 4)
    if total < 6 or total > n:
        return R_LENGTH
    p.total = total
    p.version = 3
    pos = 6
    while pos < total:
        if p.nchunks >= max_chunks:
            return R_CHUNKS
        if total - pos < 6:
            return R_CHUNK
        vendor = hep_rd16(buf + pos)
        ctype = hep_rd16(buf + pos + 2)
        clen = hep_rd16(buf + pos + 4)
        if clen < 6 or clen > total - pos:
            return R_CHUNK
        blen = clen - 6
        body = buf + pos + 6
        p.nchunks += 1
        if vendor != 0:
            p.nvendor += 1
        elif ctype < 64:
            fs = hep_fixed_size(ctype)
            if fs >= 0 and <uint32_t>fs != blen:
                return R_CHUNK
            p.present |= (<uint64_t>1) << ctype
            if ctype == CH_FAMILY:
                p.family_raw = body[0]
            elif ctype == CH_PROTO:
                p.ip_proto = body[0]
            elif ctype == CH_SRC4:
                memcpy(p.src4, body, 4)
            elif ctype == CH_DST4:
                memcpy(p.dst4, body, 4)
            elif ctype == CH_SRC6:
                memcpy(p.src6, body, 16)
            elif ctype == CH_DST6:
                memcpy(p.dst6, body, 16)
            elif ctype == CH_SPORT:
                p.src_port = hep_rd16(body)
            elif ctype == CH_DPORT:
                p.dst_port = hep_rd16(body)
            elif ctype == CH_TSEC:
                p.ts_sec = hep_rd32(body)
            elif ctype == CH_TUSEC:
                p.ts_usec = hep_rd32(body)
            elif ctype == CH_PTYPE:
                p.proto_type = body[0]
            elif ctype == CH_CAPID:
                p.capture_id = hep_rd32(body)
            elif ctype == CH_AUTH:
                p.auth_off = pos + 6
                p.auth_len = blen
                p.nauth += 1
            elif ctype == CH_PAYLOAD:
                p.payload_off = pos + 6
                p.payload_len = blen
            elif ctype == CH_ZPAYLOAD:
                if not (p.present & ((<uint64_t>1) << CH_PAYLOAD)):
                    p.payload_off = pos + 6
                    p.payload_len = blen
            elif ctype == CH_CORR:
                p.corr_off = pos + 6
                p.corr_len = blen
            elif ctype == CH_NODE:
                p.node_off = pos + 6
                p.node_len = blen
        pos += clen
    p.family = hep_family_of(p.family_raw)
    if p.family == 0:
        # Unknown or missing family byte: infer it from the address chunks that are present.
        if p.present & (((<uint64_t>1) << CH_SRC6) | ((<uint64_t>1) << CH_DST6)):
            p.family = 6
        elif p.present & (((<uint64_t>1) << CH_SRC4) | ((<uint64_t>1) << CH_DST4)):
            p.family = 4
    return R_OK


cdef inline int hep_parse_v12(const uint8_t *buf, Py_ssize_t n, hep_pkt *p) noexcept nogil:
    # Layout: v, hp_l (ignored: senders disagree), family, proto, sport, dport (BE), addresses,
    # then for v2 a 12-byte time header {u32 sec LE, u32 usec LE, u16 captid LE, 2 pad}.
    cdef Py_ssize_t alen, hdr
    cdef uint8_t fam
    if n < 4:
        return R_SHORT
    if n > 65535:
        return R_LENGTH
    fam = hep_family_of(buf[2])
    if fam == 0:
        return R_VERSION
    alen = 4 if fam == 4 else 16
    hdr = 8 + 2 * alen + (12 if buf[0] == 2 else 0)
    if n < hdr:
        return R_SHORT
    p.version = buf[0]
    p.total = <uint32_t>n
    p.family = fam
    p.family_raw = buf[2]
    p.ip_proto = buf[3]
    p.src_port = hep_rd16(buf + 4)
    p.dst_port = hep_rd16(buf + 6)
    p.present = ((<uint64_t>1) << CH_FAMILY) | ((<uint64_t>1) << CH_PROTO) | \
        ((<uint64_t>1) << CH_SPORT) | ((<uint64_t>1) << CH_DPORT) | ((<uint64_t>1) << CH_PAYLOAD)
    if fam == 4:
        memcpy(p.src4, buf + 8, 4)
        memcpy(p.dst4, buf + 12, 4)
        p.present |= ((<uint64_t>1) << CH_SRC4) | ((<uint64_t>1) << CH_DST4)
    else:
        memcpy(p.src6, buf + 8, 16)
        memcpy(p.dst6, buf + 24, 16)
        p.present |= ((<uint64_t>1) << CH_SRC6) | ((<uint64_t>1) << CH_DST6)
    if buf[0] == 2:
        p.ts_sec = hep_rd32le(buf + 8 + 2 * alen)
        p.ts_usec = hep_rd32le(buf + 12 + 2 * alen)
        p.capture_id = hep_rd16le(buf + 16 + 2 * alen)
        p.present |= ((<uint64_t>1) << CH_TSEC) | ((<uint64_t>1) << CH_TUSEC) | \
            ((<uint64_t>1) << CH_CAPID)
    # v1/v2 carry raw SIP only.
    p.proto_type = 1
    p.present |= (<uint64_t>1) << CH_PTYPE
    p.payload_off = <uint32_t>hdr
    p.payload_len = <uint32_t>(n - hdr)
    return R_OK


cdef inline int hep_parse_lim(const uint8_t *buf, Py_ssize_t n, hep_pkt *p,
                              uint32_t max_chunks) noexcept nogil:
    """Parse one HEP message held in buf[0:n], walking at most `max_chunks` HEPv3 chunks.
    Returns R_OK or a reason code (R_CHUNKS: more chunks than that)."""
    memset(p, 0, sizeof(hep_pkt))
    if n < 4:
        return R_SHORT
    if buf[0] == 0x48 and buf[1] == 0x45 and buf[2] == 0x50:
        if buf[3] == 0x33:
            return hep_parse_v3(buf, n, p, max_chunks)
        return R_VERSION          # "HEP1", "HEP2", "HEP4"...: HEP, but not a version we speak
    if buf[0] == 0x45 and buf[1] == 0x45 and buf[2] == 0x50:
        return R_VERSION          # "EEP1"/"EEP3" of the 2013 draft: nobody sends it as HEPv3
    if buf[0] == 1 or buf[0] == 2:
        return hep_parse_v12(buf, n, p)
    return R_MAGIC


# A chunk cap no packet reaches (65535 bytes hold at most 10921 chunks): to re-parse a packet the
# switch built itself (a rewrite may add chunks to an input that was at the cap).
cdef enum:
    HEP_UNCAPPED = 65535


cdef inline int hep_parse(const uint8_t *buf, Py_ssize_t n, hep_pkt *p) noexcept nogil:
    """Parse one HEP message held in buf[0:n] under the default chunk cap (DEFAULT_MAX_CHUNKS).
    Returns R_OK or a reason code."""
    return hep_parse_lim(buf, n, p, DEFAULT_MAX_CHUNKS)


cdef inline uint64_t hep_hash64(const uint8_t *s, Py_ssize_t n) noexcept nogil:
    """FNV-1a 64: string keys of the rule tables and the call key (twin: hepfast/hashing.py)."""
    cdef uint64_t h = 0xcbf29ce484222325ULL
    cdef Py_ssize_t i
    for i in range(n):
        h ^= s[i]
        h *= 0x100000001b3ULL
    return h


cdef inline uint64_t hep_mix64(uint64_t x) noexcept nogil:
    """splitmix64 finaliser: rendezvous weights (twin: hepfast/hashing.py)."""
    x ^= x >> 30
    x *= 0xbf58476d1ce4e5b9ULL
    x ^= x >> 27
    x *= 0x94d049bb133111ebULL
    x ^= x >> 31
    return x


# ---------------------------------------------------------------- building / rewriting
#
# Chunk order on output (what a HEP dissector relies on: everything after the payload chunk is
# handed to the payload's own dissector):
# - a kept chunk keeps its place;
# - a `set` chunk whose key the packet already carries replaces the first chunk of that key, in
#   its place (further chunks of the key are dropped);
# - a `set` chunk the packet does not carry is added just before the first payload chunk (0x000f
#   or 0x0010, vendor 0), or at the end when there is none;
# so the chunks after the payload are exactly the ones the agent put there.

cdef inline bint _key_in(uint32_t key, const uint32_t *keys, int nkeys) noexcept nogil:
    cdef int i
    for i in range(nkeys):
        if keys[i] == key:
            return True
    return False


cdef inline uint32_t _key_at(const uint8_t *c) noexcept nogil:
    return (<uint32_t>hep_rd16(c) << 16) | hep_rd16(c + 2)


cdef inline bint _v3_has_key(const uint8_t *src, Py_ssize_t start, Py_ssize_t end,
                             uint32_t key) noexcept nogil:
    """A chunk with this key among the (already validated) v3 chunks of src[start:end]."""
    cdef Py_ssize_t rp = start
    while rp < end:
        if _key_at(src + rp) == key:
            return True
        rp += hep_rd16(src + rp + 4)
    return False


cdef inline bint _src_has_key(const uint8_t *src, const hep_pkt *p, uint32_t key) noexcept nogil:
    """The packet carries a chunk with this key (v1/v2: in its v3 form)."""
    cdef uint32_t t
    if p.version == 3:
        return _v3_has_key(src, 6, p.total, key)
    if key >> 16:
        return False
    t = key & 0xffff
    if t == CH_FAMILY or t == CH_PROTO or t == CH_SPORT or t == CH_DPORT or t == CH_PTYPE \
            or t == CH_PAYLOAD:
        return True
    if t == CH_SRC4 or t == CH_DST4:
        return p.family == 4
    if t == CH_SRC6 or t == CH_DST6:
        return p.family == 6
    if t == CH_TSEC or t == CH_TUSEC or t == CH_CAPID:
        return p.version == 2
    return False


cdef inline Py_ssize_t _emit(uint8_t *out, Py_ssize_t pos, Py_ssize_t cap, uint16_t vendor,
                             uint16_t ctype, const uint8_t *body, Py_ssize_t blen) noexcept nogil:
    if pos < 0 or blen + 6 > 65535 or pos + 6 + blen > cap:
        return -1
    hep_wr16(out + pos, vendor)
    hep_wr16(out + pos + 2, ctype)
    hep_wr16(out + pos + 4, <uint16_t>(blen + 6))
    if blen:
        memcpy(out + pos + 6, body, blen)
    return pos + 6 + blen


cdef inline Py_ssize_t _emit_raw(uint8_t *out, Py_ssize_t pos, Py_ssize_t cap,
                                 const uint8_t *chunk, Py_ssize_t clen) noexcept nogil:
    """Copy one encoded chunk (header included)."""
    if pos < 0 or pos + clen > cap:
        return -1
    memcpy(out + pos, chunk, clen)
    return pos + clen


cdef inline Py_ssize_t _emit_replacing(uint8_t *out, Py_ssize_t pos, Py_ssize_t cap,
                                       uint32_t key, const uint8_t *setbuf, Py_ssize_t setlen,
                                       uint64_t *done, const uint8_t *src,
                                       Py_ssize_t before) noexcept nogil:
    """At a source chunk of `key` that is skipped: the set chunks of that key, unless they were
    already written at an earlier chunk of the same key. `done` marks the first 64 set chunks
    written; later ones (only absurdly long `set` lists) look for an earlier chunk of the key in
    src[6:before] instead (v1/v2 callers pass before=6: their keys never repeat)."""
    cdef Py_ssize_t sp = 0, clen
    cdef int i = 0
    while sp + 6 <= setlen and pos >= 0:
        clen = hep_rd16(setbuf + sp + 4)
        if clen < 6 or sp + clen > setlen:
            return -1
        if _key_at(setbuf + sp) == key:
            if i < 64:
                if not (done[0] & ((<uint64_t>1) << i)):
                    done[0] |= (<uint64_t>1) << i
                    pos = _emit_raw(out, pos, cap, setbuf + sp, clen)
            elif not _v3_has_key(src, 6, before, key):
                pos = _emit_raw(out, pos, cap, setbuf + sp, clen)
        sp += clen
        i += 1
    return pos


cdef inline Py_ssize_t _emit_added(uint8_t *out, Py_ssize_t pos, Py_ssize_t cap,
                                   const uint8_t *setbuf, Py_ssize_t setlen,
                                   const uint32_t *skip, int nskip, const uint8_t *src,
                                   const hep_pkt *p, uint64_t done) noexcept nogil:
    """The set chunks that replace nothing (their key is not in the packet, or not skipped)."""
    cdef Py_ssize_t sp = 0, clen
    cdef uint32_t key
    cdef int i = 0
    while sp + 6 <= setlen and pos >= 0:
        clen = hep_rd16(setbuf + sp + 4)
        if clen < 6 or sp + clen > setlen:
            return -1
        key = _key_at(setbuf + sp)
        if not (i < 64 and (done & ((<uint64_t>1) << i))):
            if not (_key_in(key, skip, nskip) and _src_has_key(src, p, key)):
                pos = _emit_raw(out, pos, cap, setbuf + sp, clen)
        sp += clen
        i += 1
    return pos


cdef inline Py_ssize_t _emit_src(uint8_t *out, Py_ssize_t pos, Py_ssize_t cap, uint32_t key,
                                 const uint8_t *body, Py_ssize_t blen,
                                 const uint8_t *setbuf, Py_ssize_t setlen,
                                 const uint32_t *skip, int nskip, uint64_t *done,
                                 const uint8_t *src, Py_ssize_t before) noexcept nogil:
    """One chunk of the source packet: kept, or replaced by the set chunks of its key (none:
    deleted)."""
    if pos < 0:
        return -1
    if not _key_in(key, skip, nskip):
        return _emit(out, pos, cap, <uint16_t>(key >> 16), <uint16_t>key, body, blen)
    return _emit_replacing(out, pos, cap, key, setbuf, setlen, done, src, before)


cdef inline Py_ssize_t _emit_fixed(uint8_t *out, Py_ssize_t pos, Py_ssize_t cap, uint16_t ctype,
                                   uint32_t v, int size, const uint8_t *setbuf, Py_ssize_t setlen,
                                   const uint32_t *skip, int nskip, uint64_t *done,
                                   const uint8_t *src) noexcept nogil:
    """A fixed-width generic chunk of a v1/v2 header, in network order."""
    cdef uint8_t tmp[4]
    if size == 1:
        tmp[0] = <uint8_t>v
    elif size == 2:
        hep_wr16(tmp, <uint16_t>v)
    else:
        hep_wr32(tmp, v)
    return _emit_src(out, pos, cap, ctype, tmp, size, setbuf, setlen, skip, nskip, done, src, 6)


cdef inline Py_ssize_t _emit_var(uint8_t *out, Py_ssize_t pos, Py_ssize_t cap, uint16_t ctype,
                                 const uint8_t *body, Py_ssize_t blen, const uint8_t *setbuf,
                                 Py_ssize_t setlen, const uint32_t *skip, int nskip,
                                 uint64_t *done, const uint8_t *src) noexcept nogil:
    return _emit_src(out, pos, cap, ctype, body, blen, setbuf, setlen, skip, nskip, done, src, 6)


cdef inline Py_ssize_t hep_build_v3_body(const uint8_t *src, const hep_pkt *p,
                                         const uint8_t *setbuf, Py_ssize_t setlen,
                                         const uint32_t *skip, int nskip,
                                         uint8_t *out, Py_ssize_t cap) noexcept nogil:
    """hep_build_v3 without the 65535-byte limit and without writing the length field: the
    end position, or -1 when it does not fit `cap`. (The slow-path decode of a large v1/v2
    datagram lists the chunks of its v3 form even when that form cannot be sent.)"""
    cdef Py_ssize_t pos = 6, rp, clen
    cdef uint32_t key
    cdef uint64_t done = 0
    cdef bint added = False
    if cap < 6:
        return -1
    memcpy(out, b"HEP3", 4)
    if setlen == 0:
        setbuf = NULL
    if p.version == 3:
        rp = 6
        while rp < p.total and pos >= 0:
            clen = hep_rd16(src + rp + 4)
            key = _key_at(src + rp)
            if not added and (key == CH_PAYLOAD or key == CH_ZPAYLOAD):
                added = True
                if setlen:
                    pos = _emit_added(out, pos, cap, setbuf, setlen, skip, nskip, src, p, done)
            if not _key_in(key, skip, nskip):
                pos = _emit_raw(out, pos, cap, src + rp, clen)
            elif setlen:
                pos = _emit_replacing(out, pos, cap, key, setbuf, setlen, &done, src, rp)
            rp += clen
    else:
        pos = _emit_fixed(out, pos, cap, CH_FAMILY, p.family_raw, 1, setbuf, setlen, skip, nskip,
                          &done, src)
        pos = _emit_fixed(out, pos, cap, CH_PROTO, p.ip_proto, 1, setbuf, setlen, skip, nskip,
                          &done, src)
        if p.family == 4:
            pos = _emit_var(out, pos, cap, CH_SRC4, p.src4, 4, setbuf, setlen, skip, nskip,
                            &done, src)
            pos = _emit_var(out, pos, cap, CH_DST4, p.dst4, 4, setbuf, setlen, skip, nskip,
                            &done, src)
        else:
            pos = _emit_var(out, pos, cap, CH_SRC6, p.src6, 16, setbuf, setlen, skip, nskip,
                            &done, src)
            pos = _emit_var(out, pos, cap, CH_DST6, p.dst6, 16, setbuf, setlen, skip, nskip,
                            &done, src)
        pos = _emit_fixed(out, pos, cap, CH_SPORT, p.src_port, 2, setbuf, setlen, skip, nskip,
                          &done, src)
        pos = _emit_fixed(out, pos, cap, CH_DPORT, p.dst_port, 2, setbuf, setlen, skip, nskip,
                          &done, src)
        if p.version == 2:
            pos = _emit_fixed(out, pos, cap, CH_TSEC, p.ts_sec, 4, setbuf, setlen, skip, nskip,
                              &done, src)
            pos = _emit_fixed(out, pos, cap, CH_TUSEC, p.ts_usec, 4, setbuf, setlen, skip,
                              nskip, &done, src)
        pos = _emit_fixed(out, pos, cap, CH_PTYPE, p.proto_type, 1, setbuf, setlen, skip, nskip,
                          &done, src)
        if p.version == 2:
            pos = _emit_fixed(out, pos, cap, CH_CAPID, p.capture_id, 4, setbuf, setlen, skip,
                              nskip, &done, src)
        added = True
        if setlen and pos >= 0:
            pos = _emit_added(out, pos, cap, setbuf, setlen, skip, nskip, src, p, done)
        pos = _emit_var(out, pos, cap, CH_PAYLOAD, src + p.payload_off, p.payload_len,
                        setbuf, setlen, skip, nskip, &done, src)
    if not added and setlen and pos >= 0:
        pos = _emit_added(out, pos, cap, setbuf, setlen, skip, nskip, src, p, done)
    return pos


cdef inline Py_ssize_t hep_build_v3(const uint8_t *src, const hep_pkt *p,
                                    const uint8_t *setbuf, Py_ssize_t setlen,
                                    const uint32_t *skip, int nskip,
                                    uint8_t *out, Py_ssize_t cap) noexcept nogil:
    """Write a HEPv3 packet to out: the chunks of the parsed packet `src`/`p` whose key
    (vendor << 16 | type) is not in `skip`, in their original order, with the pre-encoded chunks
    of `setbuf` placed as the section comment above says (replacing in place, adding before the
    payload). The caller puts the keys of the `set` chunks into `skip` (replace semantics) as
    well as the deleted ones. v1/v2 input becomes the equivalent v3 chunks. Returns the length,
    or -1 when the result does not fit `cap` or 65535 bytes."""
    cdef Py_ssize_t pos = hep_build_v3_body(src, p, setbuf, setlen, skip, nskip, out, cap)
    if pos < 0 or pos > 65535:
        return -1
    hep_wr16(out + 4, <uint16_t>pos)
    return pos


cdef inline Py_ssize_t hep_build_v2(const uint8_t *src, const hep_pkt *p,
                                    uint8_t *out, Py_ssize_t cap) noexcept nogil:
    """Write the HEPv2 form of a parsed packet: what the fixed header can carry (family, proto,
    ports, addresses, time, 16-bit capture id) and the payload. HEPv2 has no proto-type field:
    its receivers take every payload for SIP, so anything else is refused with -2 (the worker
    counts it as "unconvertible"). Returns -1 when the packet has no usable address family or
    does not fit."""
    cdef Py_ssize_t alen, hdr
    if p.proto_type != 1:
        return -2
    if p.family == 4:
        alen = 4
    elif p.family == 6:
        alen = 16
    else:
        return -1
    hdr = 8 + 2 * alen + 12
    if hdr + p.payload_len > cap or hdr + p.payload_len > 65535:
        return -1
    out[0] = 2
    out[1] = <uint8_t>(8 + 2 * alen)         # hp_l as Kamailio/captagent write it
    out[2] = 2 if p.family == 4 else 10
    out[3] = p.ip_proto
    hep_wr16(out + 4, p.src_port)
    hep_wr16(out + 6, p.dst_port)
    if p.family == 4:
        memcpy(out + 8, p.src4, 4)
        memcpy(out + 12, p.dst4, 4)
    else:
        memcpy(out + 8, p.src6, 16)
        memcpy(out + 24, p.dst6, 16)
    hep_wr32le(out + 8 + 2 * alen, p.ts_sec)
    hep_wr32le(out + 12 + 2 * alen, p.ts_usec)
    hep_wr16le(out + 16 + 2 * alen, <uint16_t>(p.capture_id & 0xffff))
    out[18 + 2 * alen] = 0
    out[19 + 2 * alen] = 0
    if p.payload_len:
        memcpy(out + hdr, src + p.payload_off, p.payload_len)
    return hdr + p.payload_len
