# cython: language_level=3
"""The switch-wide guard tables (ext/dataplane/hepguard.h) from Python: formatting the run
directory's `guard` file (the supervisor), and single or bulk operations on a mapping of it (the
tests race two processes on it; the worker uses the C functions directly).

Every operation takes the caller's clock (ns or ms of CLOCK_MONOTONIC) so tests can drive time;
the *_many variants read the clock themselves per call, without the GIL, as a worker would.
"""
cimport cython
from libc.stdint cimport uint8_t, uint64_t
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from hepwire cimport hep_pkt, hep_parse_lim, HEP_UNCAPPED
from guard cimport *
from inflate cimport z_stream, hz_init, hz_end, hz_inflate, HZ_TOO_BIG
from constants cimport R_OK, MAX_RULE_SLOTS, INFLATE_MAX
from constants cimport constants

CONSTANTS = constants()    # what this module was compiled with (tests/test_constants.py)

assert HEP_GUARD_RULES == MAX_RULE_SLOTS, "hepguard.h rule slots differ from constants.py"

NEW = HEP_G_NEW
HIT = HEP_G_HIT
FULL = HEP_G_FULL
MAGIC = HEP_GUARD_MAGIC
TABLES_WORDS = HEP_GUARD_TABLES


cdef extern from *:
    """
    static inline uint64_t hgt_load(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void hgt_store(uint64_t *p, uint64_t v) {
        __atomic_store_n(p, v, __ATOMIC_RELEASE);
    }
    """
    uint64_t _load "hgt_load"(uint64_t *p) noexcept nogil
    void _store "hgt_store"(uint64_t *p, uint64_t v) noexcept nogil


cdef inline uint64_t _now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + <uint64_t>ts.tv_nsec


def words(uint64_t dedup_slots, uint64_t call_slots):
    """uint64 words of a guard file with these table sizes."""
    return hep_guard_words(dedup_slots, call_slots)


def xxh64(const uint8_t[::1] data, uint64_t seed=0):
    return hep_xxh64(&data[0] if data.shape[0] else NULL, data.shape[0], seed)


def identity(const uint8_t[::1] packet, uint64_t salt=0):
    """dedup_identity of a HEP message (ValueError when it does not parse)."""
    cdef hep_pkt p
    if packet.shape[0] == 0 or hep_parse_lim(&packet[0], packet.shape[0], &p,
                                             HEP_UNCAPPED) != R_OK:
        raise ValueError("not a HEP message")
    return dedup_identity(&p, &packet[0], salt)


def inflate(const uint8_t[::1] data, Py_ssize_t cap=INFLATE_MAX):
    """What the worker's inflater makes of a compressed payload: ("ok", bytes), ("too_big",)
    or ("corrupt",) (twin: hepfast.dataplane.guard.inflate_payload)."""
    cdef z_stream zi, zd
    cdef Py_ssize_t n
    if cap < 1:
        raise ValueError("cap must be positive")
    out = bytearray(cap)
    cdef uint8_t[::1] o = out
    if hz_init(&zi, &zd) != 0:
        raise MemoryError()
    try:
        n = hz_inflate(&zi, &data[0] if data.shape[0] else NULL, data.shape[0], &o[0], cap)
    finally:
        hz_end(&zi, &zd)
    if n >= 0:
        return ("ok", bytes(out[:n]))
    return ("too_big",) if n == HZ_TOO_BIG else ("corrupt",)


cdef class Guard:
    """A mapping of a formatted guard file (kept alive by this object)."""

    cdef hep_guard g
    cdef object _buf

    def __cinit__(self, buf):
        cdef uint8_t[::1] mv = buf
        if mv.shape[0] == 0 or hep_guard_attach(&self.g, &mv[0], mv.shape[0]) != 0:
            raise ValueError("not a formatted guard table")
        self._buf = buf

    @property
    def dedup_slots(self):
        return self.g.dmask + 1

    @property
    def call_slots(self):
        return self.g.cmask + 1

    def dedup(self, uint64_t h, uint64_t now_ms, uint64_t window_ms, uint64_t expire_ms=0):
        return hep_dedup(&self.g, h, now_ms, window_ms, max(expire_ms, window_ms))

    def gcra(self, int rule_slot, uint64_t now_ns, uint64_t T, uint64_t tau):
        if not 0 <= rule_slot < HEP_GUARD_RULES:
            raise ValueError("rule slot out of range")
        return hep_gcra(hep_guard_tat(&self.g, rule_slot), now_ns, T, tau)

    def call(self, int rule_slot, uint64_t h, uint64_t now_ns, uint64_t T, uint64_t tau,
             uint64_t idle_ms):
        if not 0 <= rule_slot < HEP_GUARD_RULES:
            raise ValueError("rule slot out of range")
        return hep_call(&self.g, rule_slot, h, now_ns, T, tau, idle_ms)

    def tat(self, int rule_slot):
        if not 0 <= rule_slot < HEP_GUARD_RULES:
            raise ValueError("rule slot out of range")
        return hep_guard_tat(&self.g, rule_slot)[0]

    def ctat(self, int rule_slot):
        """The call rate's TAT of rule_slot (ns): each admitted new call moves it by T."""
        if not 0 <= rule_slot < HEP_GUARD_RULES:
            raise ValueError("rule slot out of range")
        return hep_guard_ctat(&self.g, rule_slot)[0]

    @cython.boundscheck(False)
    def dedup_many(self, const uint64_t[::1] hashes, uint8_t[::1] out, uint64_t window_ms):
        """dedup() of every hash at the current clock, answers into out."""
        cdef Py_ssize_t i
        if out.shape[0] < hashes.shape[0]:
            raise ValueError("out is shorter than hashes")
        with nogil:
            for i in range(hashes.shape[0]):
                out[i] = <uint8_t>hep_dedup(&self.g, hashes[i], _now_ns() // 1000000,
                                            window_ms, window_ms)

    @cython.boundscheck(False)
    def call_many(self, int rule_slot, const uint64_t[::1] hashes, uint8_t[::1] out,
                  uint64_t T, uint64_t tau, uint64_t idle_ms):
        cdef Py_ssize_t i
        if out.shape[0] < hashes.shape[0] or not 0 <= rule_slot < HEP_GUARD_RULES:
            raise ValueError("bad arguments")
        with nogil:
            for i in range(hashes.shape[0]):
                out[i] = <uint8_t>hep_call(&self.g, rule_slot, hashes[i], _now_ns(), T, tau,
                                           idle_ms)

    @cython.boundscheck(False)
    def call_lockstep(self, int rule_slot, const uint64_t[::1] hashes, uint8_t[::1] out,
                      uint64_t T, uint64_t tau, uint64_t idle_ms, uint64_t[::1] steps,
                      int me, double timeout_s=30.0):
        """call_many in lockstep with another process running the same list: before hash i it
        waits until steps[1 - me] (shared memory) reaches i, and after it sets steps[me] to
        i + 1, so both decide each call within a few hundred ns of each other: the race of two
        workers seeing a call's first packets at once. Returns False on timeout (the other
        process stopped)."""
        cdef Py_ssize_t i
        cdef uint64_t deadline
        cdef uint64_t *mine
        cdef uint64_t *other
        cdef bint ok = True
        if out.shape[0] < hashes.shape[0] or not 0 <= rule_slot < HEP_GUARD_RULES \
                or steps.shape[0] < 2 or me not in (0, 1):
            raise ValueError("bad arguments")
        mine = &steps[me]
        other = &steps[1 - me]
        deadline = _now_ns() + <uint64_t>(timeout_s * 1e9)
        with nogil:
            for i in range(hashes.shape[0]):
                while _load(other) < <uint64_t>i and ok:
                    ok = _now_ns() <= deadline
                if not ok:
                    break
                out[i] = <uint8_t>hep_call(&self.g, rule_slot, hashes[i], _now_ns(), T, tau,
                                           idle_ms)
                _store(mine, <uint64_t>(i + 1))
        return ok

    def gcra_many(self, int rule_slot, Py_ssize_t n, uint64_t T, uint64_t tau):
        """n attempts at the current clock, as fast as possible: (passed, first ns, last ns)."""
        cdef Py_ssize_t _i, ok = 0
        cdef uint64_t t0, t = 0
        if not 0 <= rule_slot < HEP_GUARD_RULES:
            raise ValueError("rule slot out of range")
        t0 = _now_ns()
        with nogil:
            for _i in range(n):
                t = _now_ns()
                ok += hep_gcra(hep_guard_tat(&self.g, rule_slot), t, T, tau)
        return ok, t0, t
