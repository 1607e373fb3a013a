# cython: language_level=3
#
# _sender: the load generator's send loop and the sink's receive loop (tools, not the switch).
#
# Sender invariants:
# - Packets are pre-built by the control side into one contiguous bytes-like buffer plus an
#   int64 offsets array (packet i is buf[off[i]:off[i+1]]); the loop never builds packets. The
#   buffer must stay alive and unmoved for the whole call (the caller holds it).
# - `--stamp` patches the HEP timestamp chunks in place at offsets found once (`stamp_offsets`),
#   right before each sendmmsg batch: the buffer must then be writable (a bytearray / numpy).
# - Pacing runs against CLOCK_MONOTONIC with a next-send-time scheme: batch k may leave at
#   start + k*batch/rate; when ahead the loop sleeps with clock_nanosleep(TIMER_ABSTIME). The
#   batch shrinks at low rates so that one batch never spans more than ~1 ms of the schedule.
# - Send errors (ENOBUFS, ECONNREFUSED from ICMP on a connected socket...) are counted, the packet
#   is skipped, and the loop goes on: the generator never crashes on a busy or absent receiver.
# - The GIL is released around the syscalls and sleeps; the loop returns to Python every
#   `slice_s` seconds so that the caller can print progress and see signals.
#
# Receiver invariants:
# - `Receiver` owns its batch of 64 KiB slots; counters live in numpy arrays that the Python side
#   reads (by proto type, by capture id, a 1-us latency histogram, totals). Both the fast recvmmsg
#   loop and the per-packet Python path (`account`) update the same arrays.
# - Parsing uses hep_parse from hepwire.pxd, the switch's own parser: no second parser here.

cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport memset
from libc.stdlib cimport malloc, free
from libc.errno cimport errno, EAGAIN, EINTR, ENOBUFS, ECONNREFUSED
from posix.time cimport timespec, clock_gettime, clock_nanosleep, CLOCK_MONOTONIC, CLOCK_REALTIME
from posix.uio cimport iovec

from hepwire cimport hep_pkt, hep_parse, HEP_OK, hep_wr32, hep_wr32le

import numpy as np

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    int recvmmsg(int fd, mmsghdr *vec, unsigned int vlen, int flags, timespec *timeout)
    int sendmmsg(int fd, mmsghdr *vec, unsigned int vlen, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    short POLLIN
    short POLLOUT

cdef extern from "<time.h>" nogil:
    int TIMER_ABSTIME

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
    if r != HEP_OK:
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
        if hep_parse(buf, n, &p) != HEP_OK:
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
        cdef int n, i, rc
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
                rc = poll(&pfd, 1, <int>(wait_ns // 1000000) + 1)
        self.last_mono = last_mono
        if got_any and idle_ns and _now_ns(CLOCK_MONOTONIC) - last_mono >= idle_ns:
            return True
        return False


# ================================================================== sender

cdef extern from "<sys/prctl.h>" nogil:
    int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4,
              unsigned long arg5)
    int PR_SET_TIMERSLACK

cdef extern from "<errno.h>" nogil:
    int EPIPE
    int ECONNRESET
    int EWOULDBLOCK

cdef inline void _sleep_until(int64_t t_ns) noexcept nogil:
    cdef timespec ts
    ts.tv_sec = t_ns // 1000000000
    ts.tv_nsec = t_ns % 1000000000
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL)


def monotonic_ns():
    return _now_ns(CLOCK_MONOTONIC)


cdef class Sender:
    """Sends packets [i0, i1) of a pre-built buffer on a connected socket, paced.

    Pacing (decided at construction): rate > 0 paces packet number k (counted over the whole life
    of the Sender) to leave at t0 + k/rate; a schedule (per-packet ns, with a per-call shift)
    paces by the capture's own timing; neither sends as fast as the kernel takes them."""
    cdef int fd
    cdef bint stream
    cdef double rate
    cdef int max_batch
    cdef bint stamp
    cdef public int64_t sent, errors, skipped, calls, t0, paced, broken_errno
    cdef iovec *iov
    cdef mmsghdr *msgs

    def __cinit__(self, int fd, double rate=0.0, int batch=64, bint stamp=False,
                  bint stream=False):
        self.fd = fd
        self.rate = rate if rate > 0 else 0.0
        self.max_batch = max(1, min(batch, 1024))
        self.stamp = stamp
        self.stream = stream
        self.iov = <iovec *>malloc(self.max_batch * sizeof(iovec))
        self.msgs = <mmsghdr *>malloc(self.max_batch * sizeof(mmsghdr))
        if self.iov == NULL or self.msgs == NULL:
            raise MemoryError()
        memset(self.msgs, 0, self.max_batch * sizeof(mmsghdr))
        cdef int i
        for i in range(self.max_batch):
            self.msgs[i].msg_hdr.msg_iov = &self.iov[i]
            self.msgs[i].msg_hdr.msg_iovlen = 1
        # The default 50 us timer slack would blur sleeps at high rates.
        prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)

    def __dealloc__(self):
        free(self.iov)
        free(self.msgs)

    def start(self, int64_t t0_ns=0):
        """Fix the pacing origin (default: now). Called once; later calls keep the origin."""
        if self.t0 == 0:
            self.t0 = t0_ns if t0_ns else _now_ns(CLOCK_MONOTONIC)

    cdef int _batch_for_rate(self) noexcept nogil:
        # About 1 ms of the schedule per batch: 1 packet at 1k pps, the full batch from 64k pps.
        cdef double b
        if self.rate <= 0:
            return self.max_batch
        b = self.rate / 1000.0
        if b < 1:
            return 1
        if b > self.max_batch:
            return self.max_batch
        return <int>b

    cdef void _stamp_batch(self, uint8_t *buf, const int64_t *ts_off, const uint8_t *ts_le,
                           int64_t i, int b) noexcept nogil:
        cdef int64_t rt = _now_ns(CLOCK_REALTIME)
        cdef uint32_t sec = <uint32_t>(rt // 1000000000)
        cdef uint32_t usec = <uint32_t>((rt % 1000000000) // 1000)
        cdef int64_t k, so, uo
        for k in range(i, i + b):
            so = ts_off[2 * k]
            uo = ts_off[2 * k + 1]
            if ts_le[k]:
                if so >= 0:
                    hep_wr32le(buf + so, sec)
                if uo >= 0:
                    hep_wr32le(buf + uo, usec)
            else:
                if so >= 0:
                    hep_wr32(buf + so, sec)
                if uo >= 0:
                    hep_wr32(buf + uo, usec)

    def send(self, uint8_t[::1] buf, const int64_t[::1] offsets, int64_t i0, int64_t i1,
             const int64_t[::1] ts_off=None, const uint8_t[::1] ts_le=None,
             const int64_t[::1] sched=None, int64_t sched_shift=0,
             double max_seconds=0.25, int64_t deadline_ns=0):
        """Send packets i0..i1-1 (offsets has n+1 entries). Returns the next index to send:
        i1 when done, less when max_seconds or deadline_ns (CLOCK_MONOTONIC) came first, or the
        stream broke (broken_errno set). ts_off holds 2 offsets per packet (seconds, microseconds
        chunk bodies, -1 if absent) and ts_le 1 for HEPv2 (little-endian) packets; used with
        stamp=True. sched (ns per packet) + sched_shift paces by the capture's timing."""
        cdef int64_t n = offsets.shape[0] - 1
        if i0 < 0 or i1 > n or i0 > i1:
            raise IndexError(f"packet range {i0}..{i1} outside 0..{n}")
        if n > 0 and (offsets[n] > buf.shape[0] or offsets[0] < 0):
            raise ValueError("offsets point outside the buffer")
        if self.stamp and (ts_off is None or ts_le is None or ts_off.shape[0] < 2 * n
                           or ts_le.shape[0] < n):
            raise ValueError("stamp=True needs ts_off (2 per packet) and ts_le (1 per packet)")
        if sched is not None and sched.shape[0] < n:
            raise ValueError("sched needs one entry per packet")
        if i0 == i1:
            return i1
        self.start()
        cdef uint8_t *base = &buf[0]
        cdef const int64_t *off = &offsets[0]
        cdef const int64_t *tso = &ts_off[0] if ts_off is not None and ts_off.shape[0] else NULL
        cdef const uint8_t *tle = &ts_le[0] if ts_le is not None and ts_le.shape[0] else NULL
        cdef const int64_t *sch = &sched[0] if sched is not None and sched.shape[0] else NULL
        cdef bint do_stamp = self.stamp and tso != NULL and tle != NULL
        cdef int64_t slice_end = _now_ns(CLOCK_MONOTONIC) + <int64_t>(max_seconds * 1e9)
        cdef int64_t i = i0, now, due, k
        cdef int b, r, e, retries = 0, rate_batch = self._batch_for_rate()
        cdef Py_ssize_t left, wrote
        cdef const uint8_t *p
        with nogil:
            while i < i1:
                now = _now_ns(CLOCK_MONOTONIC)
                if now >= slice_end or (deadline_ns and now >= deadline_ns):
                    break
                b = rate_batch
                if sch != NULL:
                    due = self.t0 + sch[i] + sched_shift
                elif self.rate > 0:
                    due = self.t0 + <int64_t>(self.paced * 1e9 / self.rate)
                else:
                    due = 0
                if due > now:
                    if due > slice_end:
                        _sleep_until(slice_end)
                    else:
                        _sleep_until(due)
                    continue
                if b > i1 - i:
                    b = <int>(i1 - i)
                if sch != NULL:
                    # every packet already due, at most a batch
                    k = 1
                    while k < self.max_batch and i + k < i1 and \
                            self.t0 + sch[i + k] + sched_shift <= now:
                        k += 1
                    b = <int>k
                if do_stamp:
                    self._stamp_batch(base, tso, tle, i, b)
                self.calls += 1
                if self.stream:
                    p = base + off[i]
                    left = off[i + b] - off[i]
                    while left > 0:
                        wrote = send(self.fd, p, left, MSG_NOSIGNAL)
                        if wrote < 0:
                            e = errno
                            if e == EINTR:
                                continue
                            if e == EAGAIN or e == ENOBUFS:
                                self.errors += 1
                                _sleep_until(_now_ns(CLOCK_MONOTONIC) + 100000)
                                continue
                            self.errors += 1
                            self.broken_errno = e
                            break
                        p += wrote
                        left -= wrote
                    if self.broken_errno:
                        break
                    self.sent += b
                    self.paced += b
                    i += b
                    continue
                for k in range(b):
                    self.iov[k].iov_base = <void *>(base + off[i + k])
                    self.iov[k].iov_len = <size_t>(off[i + k + 1] - off[i + k])
                r = sendmmsg(self.fd, self.msgs, b, 0)
                if r > 0:
                    self.sent += r
                    self.paced += r
                    i += r
                    retries = 0
                    continue
                e = errno
                if r == 0 or e == EINTR:
                    continue
                self.errors += 1
                retries += 1
                if e == ECONNREFUSED and retries <= 1:
                    # The error belongs to an earlier datagram (ICMP port unreachable): retry.
                    continue
                if (e == ENOBUFS or e == EAGAIN or e == EWOULDBLOCK) and retries <= 100:
                    _sleep_until(_now_ns(CLOCK_MONOTONIC) + 20000)
                    continue
                # Unsendable (EMSGSIZE...) or refused again: skip this packet, keep going.
                self.skipped += 1
                self.paced += 1
                i += 1
                retries = 0
        return i
