# cython: language_level=3
#
# guard: the switch-wide shared tables (dedup, rate limits, call decisions) at C level. The
# logic and its memory layout are in hepguard.h (plain C: atomics); this file declares it and
# adds the packet identity dedup keys on. Used by ext/dataplane/_worker.pyx (the per-packet path)
# and ext/dataplane/_guard.pyx (a thin Python face for the supervisor and the tests).

from libc.stdint cimport uint8_t, uint32_t, uint64_t

from hepwire cimport hep_pkt, hep_mix64, hep_rd32

cdef extern from "hepguard.h" nogil:
    ctypedef struct hep_guard:
        uint64_t *base
        uint64_t *dedup
        uint64_t dmask
        uint64_t *calls
        uint64_t cmask
    uint64_t HEP_GUARD_MAGIC
    int HEP_GUARD_RULES
    int HEP_GUARD_TABLES
    int HEP_G_NEW
    int HEP_G_HIT
    int HEP_G_FULL
    uint64_t hep_guard_words(uint64_t dslots, uint64_t cslots)
    int hep_guard_attach(hep_guard *g, void *base, size_t len)
    int hep_dedup(hep_guard *g, uint64_t h, uint64_t now_ms, uint64_t window,
                  uint64_t expire)
    void hep_dedup_prefetch(const hep_guard *g, uint64_t h)
    int hep_gcra(uint64_t *tat, uint64_t now_ns, uint64_t T, uint64_t tau)
    uint64_t *hep_guard_tat(hep_guard *g, int rule_slot)
    uint64_t *hep_guard_ctat(hep_guard *g, int rule_slot)
    int hep_call(hep_guard *g, int rule_slot, uint64_t h, uint64_t now_ns, uint64_t T,
                 uint64_t tau, uint64_t idle)
    uint64_t hep_xxh64(const uint8_t *p, size_t n, uint64_t seed)


cdef inline uint64_t _fold16(const uint8_t *a) noexcept nogil:
    return (<uint64_t>hep_rd32(a) << 32 | hep_rd32(a + 4)) ^ hep_mix64(
        <uint64_t>hep_rd32(a + 8) << 32 | hep_rd32(a + 12))


cdef inline uint64_t dedup_identity(const hep_pkt *p, const uint8_t *buf,
                                    uint64_t salt) noexcept nogil:
    """What makes two HEP messages copies of one capture: the payload, the captured packet's
    source and destination address and port, and the proto type (not the agent, its time
    stamps or capture id, which differ between agents). salt: 0 for listener dedup, 1 + the
    rule slot for a rule's own (so a packet a listener let through is new to its rule).
    Twin: hepfast.dataplane.guard.dedup_identity."""
    cdef uint64_t s, d
    if p.family == 6:
        s = _fold16(p.src6)
        d = _fold16(p.dst6)
    else:
        s = hep_rd32(p.src4)
        d = hep_rd32(p.dst4)
    s = hep_mix64(s ^ hep_mix64(d ^ hep_mix64(
        (<uint64_t>p.src_port << 24) | (<uint64_t>p.dst_port << 8) | p.proto_type)) ^ salt)
    return hep_xxh64(buf + p.payload_off, p.payload_len, s)
