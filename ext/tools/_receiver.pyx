# cython: language_level=3
#
# _receiver: the sink's receive loop (a tool, not the switch).
#
# Receiver invariants:
# - `Receiver` owns its batch of 64 KiB slots; counters live in numpy arrays that the Python side
#   reads (by proto type, by capture id, a 1-us latency histogram, totals). Both the fast recvmmsg
#   loop and the per-packet Python path (`account`) update the same arrays.
# - Parsing uses hep_parse from hepwire.pxd, the switch's own parser: no second parser here.

cimport cython
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memset
from libc.stdlib cimport malloc, free
from libc.errno cimport errno, EAGAIN, EINTR
from posix.time cimport timespec, clock_gettime, CLOCK_MONOTONIC, CLOCK_REALTIME
from posix.uio cimport iovec

from hepwire cimport hep_pkt, hep_parse, R_OK

import numpy as np

from netsys cimport mmsghdr, pollfd, recvmmsg, poll, MSG_DONTWAIT, POLLIN
from constants cimport constants

CONSTANTS = constants()    # what this module was compiled with (tests/test_constants.py)

cdef enum:
    SLOT = 65536
    NCAP = 64                 # distinct capture ids tracked; more go to "other"
    LAT_BINS = 1000000        # 1 us bins up to 1 s; later arrivals go to the overflow count

# Indexes into Receiver.totals
cdef enum:
    T_RECEIVED = 0
    T_INVALID = 1
    T_BYTES = 2
    T_LAT_SAMPLES = 3
    T_LAT_MAX = 4
    T_LAT_OVER = 5
    T_FIRST_NS = 6
    T_LAST_NS = 7
    T_CAP_OTHER = 8
    T_NCAP = 9
    T_BATCHES = 10
    T_SIZE = 11

TOTAL_NAMES = ("received", "invalid", "bytes", "lat_samples", "lat_max_us", "lat_over",
               "first_ns", "last_ns", "cap_other", "ncap", "batches")


cdef inline int64_t _now_ns(int clk) noexcept nogil:
    cdef timespec ts
    clock_gettime(clk, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


def realtime_ns():
    return _now_ns(CLOCK_REALTIME)


def peek(data):
    """(reason, version, proto_type, capture_id, ts_sec, ts_usec) of one datagram, by hep_parse."""
    cdef const uint8_t[::1] v = data
    cdef hep_pkt p
    cdef int r = 1
    if v.shape[0]:
        r = hep_parse(&v[0], v.shape[0], &p)
    if r != R_OK:
        return (r, 0, 0, 0, 0, 0)
    return (0, p.version, p.proto_type, p.capture_id, p.ts_sec, p.ts_usec)


cdef class Receiver:
    """Counters of a sink plus the recvmmsg loop that fills them.

    by_proto_type[256], cap_ids/cap_counts[NCAP], lat_hist[LAT_BINS] (1 us bins of arrival minus
    HEP timestamp, only for packets stamped within `lat_window_s` of arrival), totals[T_SIZE]."""
    cdef public object by_proto_type, cap_ids, cap_counts, lat_hist, totals
    cdef uint64_t[::1] _ptype
    cdef uint32_t[::1] _capid
    cdef uint64_t[::1] _capn
    cdef uint64_t[::1] _lat
    cdef int64_t[::1] _tot
    cdef int64_t lat_window_us
    cdef int64_t last_mono          # CLOCK_MONOTONIC ns of the last packet (idle detection)
    cdef int batch
    cdef uint8_t *bufs
    cdef iovec *iov
    cdef mmsghdr *msgs

    def __cinit__(self, int batch=64, double lat_window_s=10.0):
        self.batch = max(1, min(batch, 1024))
        self.by_proto_type = np.zeros(256, dtype=np.uint64)
        self.cap_ids = np.zeros(NCAP, dtype=np.uint32)
        self.cap_counts = np.zeros(NCAP, dtype=np.uint64)
        self.lat_hist = np.zeros(LAT_BINS, dtype=np.uint64)
        self.totals = np.zeros(T_SIZE, dtype=np.int64)
        self._ptype = self.by_proto_type
        self._capid = self.cap_ids
        self._capn = self.cap_counts
        self._lat = self.lat_hist
        self._tot = self.totals
        self.lat_window_us = <int64_t>(lat_window_s * 1e6)
        self.bufs = <uint8_t *>malloc(<size_t>self.batch * SLOT)
        self.iov = <iovec *>malloc(self.batch * sizeof(iovec))
        self.msgs = <mmsghdr *>malloc(self.batch * sizeof(mmsghdr))
        if self.bufs == NULL or self.iov == NULL or self.msgs == NULL:
            raise MemoryError()
        cdef int i
        memset(self.msgs, 0, self.batch * sizeof(mmsghdr))
        for i in range(self.batch):
            self.iov[i].iov_base = self.bufs + <size_t>i * SLOT
            self.iov[i].iov_len = SLOT
            self.msgs[i].msg_hdr.msg_iov = &self.iov[i]
            self.msgs[i].msg_hdr.msg_iovlen = 1

    def __dealloc__(self):
        free(self.bufs)
        free(self.iov)
        free(self.msgs)

    # Proven in-bounds: proto_type < 256, ncap < NCAP, 0 <= lat < LAT_BINS, T_* < T_SIZE.
    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef void _count(self, const uint8_t *buf, Py_ssize_t n, int64_t now_rt) noexcept nogil:
        cdef hep_pkt p
        cdef int i, ncap
        cdef int64_t lat
        self._tot[T_RECEIVED] += 1
        self._tot[T_BYTES] += n
        if self._tot[T_FIRST_NS] == 0:
            self._tot[T_FIRST_NS] = now_rt
        self._tot[T_LAST_NS] = now_rt
        if hep_parse(buf, n, &p) != R_OK:
            self._tot[T_INVALID] += 1
            return
        self._ptype[p.proto_type] += 1
        ncap = <int>self._tot[T_NCAP]
        for i in range(ncap):
            if self._capid[i] == p.capture_id:
                self._capn[i] += 1
                break
        else:
            if ncap < NCAP:
                self._capid[ncap] = p.capture_id
                self._capn[ncap] = 1
                self._tot[T_NCAP] = ncap + 1
            else:
                self._tot[T_CAP_OTHER] += 1
        if p.ts_sec:
            lat = now_rt // 1000 - (<int64_t>p.ts_sec * 1000000 + p.ts_usec)
            if -self.lat_window_us < lat < self.lat_window_us:
                if lat < 0:
                    lat = 0         # clock granularity: never report negative latency
                self._tot[T_LAT_SAMPLES] += 1
                if lat > self._tot[T_LAT_MAX]:
                    self._tot[T_LAT_MAX] = lat
                if lat < LAT_BINS:
                    self._lat[lat] += 1
                else:
                    self._tot[T_LAT_OVER] += 1

    def account(self, data, arrival_ns=None):
        """Count one datagram received by Python code (arrival: CLOCK_REALTIME ns, default now)."""
        cdef const uint8_t[::1] v = data
        cdef int64_t now = _now_ns(CLOCK_REALTIME) if arrival_ns is None else arrival_ns
        if v.shape[0] == 0:
            self._tot[T_RECEIVED] += 1
            self._tot[T_INVALID] += 1
            return
        self._count(&v[0], v.shape[0], now)

    def run(self, int fd, double slice_s, double idle_s):
        """Receive and count on `fd` (non-blocking or not) for up to slice_s seconds.
        Returns True when idle_s passed without a packet after the first one."""
        cdef int64_t start = _now_ns(CLOCK_MONOTONIC)
        cdef int64_t end = start + <int64_t>(slice_s * 1e9)
        cdef int64_t idle_ns = <int64_t>(idle_s * 1e9) if idle_s > 0 else 0
        cdef int64_t last_mono = self.last_mono
        cdef int64_t now, wait_ns, now_rt
        cdef int n, i
        cdef bint got_any = self._tot[T_RECEIVED] > 0
        cdef pollfd pfd
        pfd.fd = fd
        pfd.events = POLLIN
        with nogil:
            while True:
                n = recvmmsg(fd, self.msgs, self.batch, MSG_DONTWAIT, NULL)
                now = _now_ns(CLOCK_MONOTONIC)
                if n > 0:
                    now_rt = _now_ns(CLOCK_REALTIME)
                    self._tot[T_BATCHES] += 1
                    for i in range(n):
                        self._count(self.bufs + <size_t>i * SLOT, self.msgs[i].msg_len, now_rt)
                    last_mono = now
                    got_any = True
                    if now >= end:
                        break
                    continue
                if n < 0 and errno != EAGAIN and errno != EINTR:
                    # e.g. ECONNREFUSED left on the socket by an ICMP error: not ours to fix.
                    if now >= end:
                        break
                    continue
                if now >= end:
                    break
                if got_any and idle_ns and now - last_mono >= idle_ns:
                    break
                wait_ns = end - now
                if got_any and idle_ns and last_mono + idle_ns - now < wait_ns:
                    wait_ns = last_mono + idle_ns - now
                poll(&pfd, 1, <int>(wait_ns // 1000000) + 1)   # readable or timed out: loop
        self.last_mono = last_mono
        if got_any and idle_ns and _now_ns(CLOCK_MONOTONIC) - last_mono >= idle_ns:
            return True
        return False
