# cython: language_level=3
#
# _sender: the load generator's send loop (a tool, not the switch).
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

cimport cython
from libc.stdint cimport uint8_t, uint32_t, int32_t, int64_t
from libc.string cimport memset
from libc.stdlib cimport malloc, free
from libc.errno cimport errno, EAGAIN, EINTR, ENOBUFS, ECONNREFUSED
from posix.time cimport timespec, clock_gettime, clock_nanosleep, CLOCK_MONOTONIC, CLOCK_REALTIME
from posix.uio cimport iovec

from hepwire cimport hep_wr32, hep_wr32le


from netsys cimport mmsghdr, sendmmsg, send, MSG_NOSIGNAL
from constants cimport constants

CONSTANTS = constants()    # what this module was compiled with (tests/test_constants.py)

cdef extern from "<time.h>" nogil:
    int TIMER_ABSTIME


cdef inline int64_t _now_ns(int clk) noexcept nogil:
    cdef timespec ts
    clock_gettime(clk, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec

cdef extern from "<sys/prctl.h>" nogil:
    int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4,
              unsigned long arg5)
    int PR_SET_TIMERSLACK

cdef extern from "<errno.h>" nogil:
    int EPIPE
    int ECONNRESET
    int EWOULDBLOCK

cdef enum:
    MARK_DIGITS = 6
    MARK_WRAP = 1000000      # loop numbers in the marks wrap after 999999

cdef inline void _sleep_until(int64_t t_ns) noexcept nogil:
    cdef timespec ts
    ts.tv_sec = t_ns // 1000000000
    ts.tv_nsec = t_ns % 1000000000
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL)


def monotonic_ns():
    return _now_ns(CLOCK_MONOTONIC)


cdef iovec *_iov_table(const uint8_t *base, const int64_t *off, int64_t n) noexcept nogil:
    # One iovec per packet, built once: a batch only points its mmsghdrs at these.
    cdef iovec *t = <iovec *>malloc((n if n > 0 else 1) * sizeof(iovec))
    cdef int64_t i
    if t == NULL:
        return NULL
    for i in range(n):
        t[i].iov_base = <void *>(base + off[i])
        t[i].iov_len = <size_t>(off[i + 1] - off[i])
    return t


cdef class Sender:
    """Sends global positions [g, g1) of a loaded packet set on a connected socket, paced.

    Position g is packet g % n of loop g // n. Loop 0 is the base buffer (the sources byte for
    byte); loops 1.. are the template buffer, whose loop marks are rewritten in place, per packet,
    right before the packet joins a batch (so a batch may cross a loop boundary: every sendmmsg
    but the last carries a full batch, exactly like the C baseline). Pacing (chosen at
    construction): rate > 0 releases batch-sized bursts on the schedule "packet k (counted over the
    Sender's life) is due at t0 + k/rate"; a schedule (`load(sched=...)`) keeps the capture's
    timing; neither sends as fast as the kernel takes them."""
    cdef int fd
    cdef bint stream
    cdef double rate
    cdef double rate_per_ns
    cdef int max_batch
    cdef int rate_batch
    cdef bint stamp
    cdef public int64_t sent, errors, skipped, calls, t0, paced, broken_errno, sleeps
    cdef mmsghdr *msgs
    # loaded packet set (the arrays are kept alive in _keep)
    cdef object _keep
    cdef int64_t n
    cdef uint8_t *base0
    cdef uint8_t *base1
    cdef const int64_t *off0
    cdef const int64_t *off1
    cdef iovec *iov0
    cdef iovec *iov1
    cdef const int64_t *tso0
    cdef const int64_t *tso1
    cdef const uint8_t *tle
    cdef const int64_t *mark_pos
    cdef const int64_t *mark_start
    cdef int32_t *mark_loop        # per template packet: the loop number its marks now carry
    cdef const int64_t *sched
    cdef int64_t span_ns, origin
    cdef bint has_origin
    cdef int64_t digits_for
    cdef char digits[MARK_DIGITS]

    def __cinit__(self, int fd, double rate=0.0, int batch=64, bint stamp=False,
                  bint stream=False):
        self.fd = fd
        self.rate = rate if rate > 0 else 0.0
        self.rate_per_ns = self.rate / 1e9
        self.max_batch = max(1, min(batch, 1024))
        self.stamp = stamp
        self.stream = stream
        self.rate_batch = self._batch_for_rate()
        self.msgs = <mmsghdr *>malloc(self.max_batch * sizeof(mmsghdr))
        if self.msgs == NULL:
            raise MemoryError()
        memset(self.msgs, 0, self.max_batch * sizeof(mmsghdr))
        cdef int i
        for i in range(self.max_batch):
            self.msgs[i].msg_hdr.msg_iovlen = 1
        self.digits_for = -1
        # The default 50 us timer slack would blur sleeps at high rates.
        prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)

    def __dealloc__(self):
        free(self.msgs)
        free(self.iov0)
        free(self.iov1)
        free(self.mark_loop)

    @property
    def batch(self):
        """Packets per sendmmsg: the --batch value, or fewer at low --rate (see _batch_for_rate)."""
        return self.rate_batch

    cdef int _batch_for_rate(self) noexcept:
        # About 1 ms of the schedule per burst: 1 packet at 1k pps, the full batch from 64k pps
        # (at batch 64). Bursts never shrink below that near the machine's limit, so the loop
        # never sleeps in tiny increments there.
        cdef double b
        if self.rate <= 0:
            return self.max_batch
        b = self.rate / 1000.0
        if b < 1:
            return 1
        if b > self.max_batch:
            return self.max_batch
        return <int>b

    def load(self, uint8_t[::1] buf not None, const int64_t[::1] offsets not None,
             uint8_t[::1] tbuf=None, const int64_t[::1] toffsets=None,
             const int64_t[::1] mark_pos=None, const int64_t[::1] mark_start=None,
             const int64_t[::1] ts_off=None, const int64_t[::1] tts_off=None,
             const uint8_t[::1] ts_le=None, const int64_t[::1] sched=None, int64_t span_ns=0):
        """Attach the pre-built packet set (once). buf/offsets: loop 0 (packet i is
        buf[off[i]:off[i+1]]). tbuf/toffsets: loops 1.. (same packet count), with the first digit
        of every loop mark at mark_pos[mark_start[i]:mark_start[i+1]] for packet i (all marks
        read 000000 at load time). ts_off/tts_off: 2 offsets per packet (seconds and microseconds
        chunk bodies, -1 if absent) in buf/tbuf, ts_le 1 for HEPv2 packets; needed with stamp.
        sched (ns per packet, never decreasing) + span_ns (one loop's length) pace by the
        capture's timing instead of a rate. The buffers must not move or shrink while loaded."""
        if self.n:
            raise ValueError("a packet set is already loaded")
        cdef int64_t n = offsets.shape[0] - 1
        cdef int64_t i
        if n < 1:
            raise ValueError("no packets")
        if offsets[0] < 0 or offsets[n] > buf.shape[0]:
            raise ValueError("offsets point outside the buffer")
        for i in range(n):
            if offsets[i + 1] < offsets[i]:
                raise ValueError("offsets must not decrease")
        if tbuf is not None:
            if toffsets is None or toffsets.shape[0] != n + 1:
                raise ValueError("toffsets needs one entry per packet plus one")
            if toffsets[0] < 0 or toffsets[n] > tbuf.shape[0]:
                raise ValueError("toffsets point outside the template buffer")
            for i in range(n):
                if toffsets[i + 1] < toffsets[i]:
                    raise ValueError("toffsets must not decrease")
            if mark_pos is not None and mark_pos.shape[0]:
                if mark_start is None or mark_start.shape[0] != n + 1 or mark_start[0] != 0 \
                        or mark_start[n] != mark_pos.shape[0]:
                    raise ValueError("mark_start needs n+1 entries indexing mark_pos")
                for i in range(mark_pos.shape[0]):
                    if mark_pos[i] < 0 or mark_pos[i] + MARK_DIGITS > tbuf.shape[0]:
                        raise ValueError("a loop mark lies outside the template buffer")
                for i in range(n):
                    if mark_start[i + 1] < mark_start[i]:
                        raise ValueError("mark_start must not decrease")
        if self.stamp:
            if ts_off is None or ts_le is None or ts_off.shape[0] < 2 * n or ts_le.shape[0] < n:
                raise ValueError("stamp=True needs ts_off (2 per packet) and ts_le (1 per packet)")
            if tbuf is not None and (tts_off is None or tts_off.shape[0] < 2 * n):
                raise ValueError("stamp=True with a template needs tts_off (2 per packet)")
            for i in range(2 * n):
                if ts_off[i] + 4 > buf.shape[0] or (tbuf is not None
                                                    and tts_off[i] + 4 > tbuf.shape[0]):
                    raise ValueError("a timestamp offset lies outside its buffer")
        if sched is not None and sched.shape[0] < n:
            raise ValueError("sched needs one entry per packet")
        self._keep = (buf, offsets, tbuf, toffsets, mark_pos, mark_start, ts_off, tts_off,
                      ts_le, sched)
        self.base0 = &buf[0]
        self.off0 = &offsets[0]
        self.iov0 = _iov_table(self.base0, self.off0, n)
        if self.iov0 == NULL:
            raise MemoryError()
        if tbuf is not None:
            self.base1 = &tbuf[0]
            self.off1 = &toffsets[0]
            self.iov1 = _iov_table(self.base1, self.off1, n)
            if self.iov1 == NULL:
                raise MemoryError()
            if mark_pos is not None and mark_pos.shape[0]:
                self.mark_pos = &mark_pos[0]
                self.mark_start = &mark_start[0]
                self.mark_loop = <int32_t *>malloc(n * sizeof(int32_t))
                if self.mark_loop == NULL:
                    raise MemoryError()
                memset(self.mark_loop, 0, n * sizeof(int32_t))
        else:
            # No template: every loop re-sends the base packets (callers only do that for
            # a single loop).
            self.base1, self.off1, self.iov1 = self.base0, self.off0, NULL
        if self.stamp:
            self.tso0 = &ts_off[0]
            self.tso1 = &tts_off[0] if tbuf is not None else self.tso0
            self.tle = &ts_le[0]
        if sched is not None:
            self.sched = &sched[0]
            self.span_ns = span_ns if span_ns > 0 else 1
        self.n = n

    def start(self, int64_t t0_ns=0):
        """Fix the pacing origin (default: now). Called once; later calls keep the origin."""
        if self.t0 == 0:
            self.t0 = t0_ns if t0_ns else _now_ns(CLOCK_MONOTONIC)

    @cython.cdivision(True)         # loop >= 0, constant divisors
    cdef inline void _mark(self, int64_t i, int64_t loop) noexcept nogil:
        # Give template packet i the marks of `loop` (the digits are cached per loop number).
        cdef int32_t want = <int32_t>(loop % MARK_WRAP)
        cdef int64_t m, v
        cdef int d
        cdef uint8_t *p
        if self.mark_loop[i] == want:
            return
        if self.digits_for != want:
            v = want
            for d in range(MARK_DIGITS - 1, -1, -1):
                self.digits[d] = <char>(48 + v % 10)
                v = v // 10
            self.digits_for = want
        for m in range(self.mark_start[i], self.mark_start[i + 1]):
            p = self.base1 + self.mark_pos[m]
            for d in range(MARK_DIGITS):
                p[d] = <uint8_t>self.digits[d]
        self.mark_loop[i] = want

    @cython.cdivision(True)         # loop >= 0, constant divisors
    cdef inline void _stamp_one(self, int64_t i, int64_t loop, uint32_t sec,
                                uint32_t usec) noexcept nogil:
        cdef uint8_t *buf = self.base0 if loop == 0 else self.base1
        cdef const int64_t *tso = self.tso0 if loop == 0 else self.tso1
        cdef int64_t so = tso[2 * i], uo = tso[2 * i + 1]
        if self.tle[i]:
            if so >= 0:
                hep_wr32le(buf + so, sec)
            if uo >= 0:
                hep_wr32le(buf + uo, usec)
        else:
            if so >= 0:
                hep_wr32(buf + so, sec)
            if uo >= 0:
                hep_wr32(buf + uo, usec)

    @cython.cdivision(True)         # loop >= 0, constant divisors
    cdef inline int64_t _due_sched(self, int64_t loop, int64_t i) noexcept nogil:
        return self.t0 + loop * self.span_ns + self.sched[i] - self.origin

    # All indexes below are < n (i wraps at n) or < max_batch (k < b <= max_batch).
    @cython.boundscheck(False)
    @cython.wraparound(False)
    @cython.cdivision(True)
    def send(self, int64_t g, int64_t g1, double max_seconds=0.25, int64_t deadline_ns=0):
        """Send global positions g..g1-1. Returns the next position: g1 when done, less when
        max_seconds or deadline_ns (CLOCK_MONOTONIC) came first, or the stream broke
        (broken_errno set)."""
        if self.n == 0:
            raise ValueError("load() a packet set first")
        if g < 0 or g1 < g:
            raise IndexError(f"position range {g}..{g1}")
        if g == g1:
            return g1
        self.start()
        if self.sched != NULL and not self.has_origin:
            self.origin = (g // self.n) * self.span_ns + self.sched[g % self.n]
            self.has_origin = True
        cdef int64_t n = self.n
        cdef int64_t loop = g // n, i = g % n
        cdef int64_t slice_end = _now_ns(CLOCK_MONOTONIC) + <int64_t>(max_seconds * 1e9)
        cdef int64_t now, due, left_all, want, rt, ll, ii, k, nxt
        cdef bint pace = self.rate > 0
        cdef bint sch = self.sched != NULL
        cdef bint marks = self.mark_loop != NULL
        cdef bint do_stamp = self.stamp
        cdef int b, r, e, retries = 0
        cdef uint32_t sec = 0, usec = 0
        cdef Py_ssize_t left, wrote
        cdef const uint8_t *p
        cdef uint8_t *bb
        cdef const int64_t *oo
        cdef mmsghdr *msgs = self.msgs
        cdef iovec *iv
        with nogil:
            while g < g1:
                now = _now_ns(CLOCK_MONOTONIC)
                if now >= slice_end or (deadline_ns and now >= deadline_ns):
                    break
                left_all = g1 - g
                b = self.max_batch if left_all > self.max_batch else <int>left_all
                if marks and b > n:
                    b = <int>n              # a template packet only once per batch (its marks)
                if pace:
                    # Packets due by now: those with k/rate <= now - t0. Less than a burst due:
                    # sleep (absolute) until the burst's last packet is due, then send it whole;
                    # behind (after a late wake-up): catch up in full batches.
                    due = <int64_t>((now - self.t0) * self.rate_per_ns) + 1 - self.paced
                    want = self.rate_batch if self.rate_batch < left_all else left_all
                    if due < want:
                        nxt = self.t0 + <int64_t>((self.paced + want - 1) / self.rate_per_ns) + 1
                        self.sleeps += 1
                        _sleep_until(nxt if nxt < slice_end else slice_end)
                        continue
                    if due < b:
                        b = <int>due
                elif sch:
                    # Every packet already due, at most a batch; none: sleep until the next.
                    due = self._due_sched(loop, i)
                    if due > now:
                        self.sleeps += 1
                        _sleep_until(due if due < slice_end else slice_end)
                        continue
                    k = 1
                    ll, ii = loop, i + 1
                    while k < b:
                        if ii == n:
                            ll, ii = ll + 1, 0
                        if self._due_sched(ll, ii) > now:
                            break
                        k += 1
                        ii += 1
                    b = <int>k
                if self.stream and b > n - i:
                    b = <int>(n - i)          # one contiguous run of one buffer per send()
                if do_stamp:
                    rt = _now_ns(CLOCK_REALTIME)
                    sec = <uint32_t>(rt // 1000000000)
                    usec = <uint32_t>((rt % 1000000000) // 1000)
                # Per packet: point the mmsghdr at its prebuilt iovec; in loops 1.. give the
                # packet this loop's marks first (a no-op when it has none).
                ll, ii = loop, i
                for k in range(b):
                    if ll == 0 or self.iov1 == NULL:
                        iv = self.iov0
                    else:
                        iv = self.iov1
                        if marks:
                            self._mark(ii, ll)
                    if do_stamp:
                        self._stamp_one(ii, ll, sec, usec)
                    msgs[k].msg_hdr.msg_iov = &iv[ii]
                    ii += 1
                    if ii == n:
                        ll, ii = ll + 1, 0
                self.calls += 1
                if self.stream:
                    bb = self.base0 if loop == 0 else self.base1
                    oo = self.off0 if loop == 0 else self.off1
                    p = bb + oo[i]
                    left = oo[i + b] - oo[i]
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
                    r = b
                else:
                    r = sendmmsg(self.fd, msgs, b, 0)
                    if r <= 0:
                        e = errno
                        if r == 0 or e == EINTR:
                            continue
                        self.errors += 1
                        retries += 1
                        if e == ECONNREFUSED and retries <= 1:
                            # The error belongs to an earlier datagram (ICMP port unreachable).
                            continue
                        if (e == ENOBUFS or e == EAGAIN or e == EWOULDBLOCK) and retries <= 100:
                            _sleep_until(_now_ns(CLOCK_MONOTONIC) + 20000)
                            continue
                        # Unsendable (EMSGSIZE...) or refused again: skip this packet, go on.
                        self.skipped += 1
                        r = 1
                        self.sent -= 1          # balanced below: a skip is paced, not sent
                    else:
                        retries = 0
                self.sent += r
                self.paced += r
                g += r
                i += r
                while i >= n:
                    i -= n
                    loop += 1
        return g
