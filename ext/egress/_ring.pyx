# cython: language_level=3
"""Python face of the worker -> egress shared-memory ring (ext/egress/hepring.h).

Ownership and invariants:
- A `Ring` holds a writable buffer export of the mapping it was attached to (an mmap of the
  ring's memfd) until `close()`: the mapping cannot be unmapped under it, and every pointer
  below stays valid while the ring is open. The creator formats the mapping once
  (`format_ring`) before anybody attaches.
- A ring has one producer process and one consumer process. A `Ring` carries two handles, one
  per role, so a test or tool may play both in one process; a real process uses one role only
  and never two `Ring` objects in the same role over one mapping.
- Producer side (`push`, `publish`) is for tests and tools; workers push from C through the
  same header. Records pushed are invisible to the consumer until `publish()`.
- Consumer side: `read()` returns one `Batch` over a contiguous span of records that stay in
  place (nothing is copied) until `release(batch)`; at most one batch is outstanding. The
  records of a batch are reachable only while it is live: after release the producer may
  overwrite them, so the memoryviews handed out by iterating a batch must not be kept past
  `release` (they keep the mapping alive, not the bytes).
- `Batch.write_hepraw(fd)` writes the records straight from the ring with writev (the ring's
  length header is the .hepraw header), with no Python object per record. A corrupt span (a
  length running past it: a broken producer) is not raised per record: the records before it
  are returned, the rest of the span is skipped on release, and `corrupt_spans` counts it.
"""

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport strerror
from libc.errno cimport errno, EINTR, EIO
from posix.uio cimport iovec, writev

cdef extern from "<limits.h>":
    int IOV_MAX

cdef extern from "hepring.h" nogil:
    uint64_t HEP_RING_MAGIC
    unsigned int HEP_RING_HDR_BYTES
    uint64_t HEP_RING_MIN_SIZE
    uint64_t HEP_RING_MAX_SIZE
    int HEP_RING_OK
    int HEP_RING_FULL
    int HEP_RING_TOO_BIG
    int HEP_RING_RECORD
    int HEP_RING_CORRUPT

    ctypedef struct hep_ring_hdr:
        uint64_t magic
        uint64_t size
        uint64_t head
        uint64_t tail
        uint64_t records_pushed
        uint64_t records_full
        uint64_t records_consumed

    ctypedef struct hep_ring:
        hep_ring_hdr *hdr
        uint8_t *data
        uint64_t size
        uint64_t head
        uint64_t tail

    ctypedef struct hep_ring_iter:
        const uint8_t *p
        size_t n
        size_t off

    uint64_t hep_ring_max_record(uint64_t size)
    int hep_ring_format(void *base, size_t maplen, uint64_t size)
    int hep_ring_attach(hep_ring *r, void *base, size_t maplen)
    int hep_ring_push(hep_ring *r, const uint8_t *data, uint32_t len, uint32_t meta)
    void hep_ring_publish(hep_ring *r)
    uint64_t hep_ring_used(const hep_ring *r)
    void hep_ring_peek(hep_ring *r, const uint8_t **p, size_t *n)
    void hep_ring_iter_init(hep_ring_iter *it, const uint8_t *p, size_t n)
    int hep_ring_next(hep_ring_iter *it, const uint8_t **rec, uint32_t *len, uint32_t *meta)
    void hep_ring_release_records(hep_ring *r, size_t n, uint64_t records)


cdef class Batch


MAGIC = HEP_RING_MAGIC
HEADER_BYTES = HEP_RING_HDR_BYTES
MIN_SIZE = HEP_RING_MIN_SIZE
MAX_SIZE = HEP_RING_MAX_SIZE
PUSH_OK = HEP_RING_OK
PUSH_FULL = HEP_RING_FULL
PUSH_TOO_BIG = HEP_RING_TOO_BIG


def max_record(uint64_t size):
    """Largest payload a ring of `size` data bytes accepts (bigger ones: PUSH_TOO_BIG)."""
    return hep_ring_max_record(size)


def format_ring(buffer, uint64_t size):
    """Write a fresh header into a zero-filled mapping of at least HEADER_BYTES + size bytes."""
    cdef Py_buffer view
    cdef int rc
    PyObject_GetBuffer(buffer, &view, PyBUF_WRITABLE)
    try:
        rc = hep_ring_format(view.buf, <size_t>view.len, size)
    finally:
        PyBuffer_Release(&view)
    if rc != 0:
        raise ValueError(f"cannot format a ring of {size} bytes in a {len(buffer)}-byte mapping "
                         f"(size: a power of two in [{MIN_SIZE}, {MAX_SIZE}], mapping "
                         f"64-byte aligned and at least {HEADER_BYTES} + size bytes)")


cdef int _write_span(int fd, const uint8_t *p, size_t n, iovec *iov, int cap,
                     uint64_t *records, uint64_t *nbytes) noexcept nogil:
    """Write the records of span [p, p+n) as .hepraw records: per record one iovec for its
    4-byte big-endian length (already in the ring) and one for the payload. Returns 0 or an
    errno value; *records / *nbytes count the records written completely and their bytes
    (so that a caller can cut a file back to the last whole record after an error)."""
    cdef hep_ring_iter it
    cdef const uint8_t *rec
    cdef uint32_t ln, meta
    cdef int cnt, i
    cdef ssize_t w
    cdef uint64_t total = 0
    cdef bint more = True
    hep_ring_iter_init(&it, p, n)
    while more:
        cnt = 0
        while cnt + 2 <= cap:
            if hep_ring_next(&it, &rec, &ln, &meta) != HEP_RING_RECORD:
                more = False
                break
            iov[cnt].iov_base = <void *>(rec - 8)
            iov[cnt].iov_len = 4
            iov[cnt + 1].iov_base = <void *>rec
            iov[cnt + 1].iov_len = ln
            cnt += 2
        i = 0
        while i < cnt:
            w = writev(fd, iov + i, cnt - i)
            if w < 0:
                if errno == EINTR:
                    continue
                return errno
            if w == 0:
                # iov[i] is never empty here (empty ones are skipped below): no progress at all
                return EIO
            while i < cnt and <size_t>w >= iov[i].iov_len:
                w -= <ssize_t>iov[i].iov_len
                total += iov[i].iov_len
                if i & 1:
                    records[0] += 1
                    nbytes[0] = total
                i += 1
            if i < cnt and w > 0:
                iov[i].iov_base = <void *>(<uint8_t *>iov[i].iov_base + w)
                iov[i].iov_len -= <size_t>w
                total += <uint64_t>w
    return 0


cdef class Ring:
    """A ring attached through a writable buffer (the mmap of its memfd)."""

    cdef Py_buffer _view
    cdef bint _has_view
    cdef hep_ring _prod
    cdef hep_ring _cons
    cdef object _mv
    cdef Batch _out
    cdef iovec *_iov
    cdef int _iov_cap
    cdef readonly uint64_t corrupt_spans

    def __cinit__(self, buffer):
        self._has_view = False
        self._iov = NULL
        PyObject_GetBuffer(buffer, &self._view, PyBUF_WRITABLE)
        self._has_view = True
        if (hep_ring_attach(&self._prod, self._view.buf, <size_t>self._view.len) != 0
                or hep_ring_attach(&self._cons, self._view.buf, <size_t>self._view.len) != 0):
            raise ValueError("not a hepfast ring (bad magic, size, mapping length or counters)")
        self._iov_cap = IOV_MAX if IOV_MAX >= 2 else 2
        self._iov_cap -= self._iov_cap & 1
        self._iov = <iovec *>malloc(sizeof(iovec) * self._iov_cap)
        if self._iov == NULL:
            raise MemoryError()
        self._mv = memoryview(buffer).cast("B")
        self._out = None
        self.corrupt_spans = 0

    def __dealloc__(self):
        if self._has_view:
            PyBuffer_Release(&self._view)
            self._has_view = False
        free(self._iov)
        self._iov = NULL

    cdef int _check(self) except -1:
        if not self._has_view:
            raise ValueError("ring is closed")
        return 0

    def close(self):
        """Drop the buffer export (the mmap may be closed afterwards); idempotent."""
        if self._out is not None:
            self._out._live = False
            self._out = None
        if self._mv is not None:
            self._mv.release()
            self._mv = None
        if self._has_view:
            PyBuffer_Release(&self._view)
            self._has_view = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------------------------- producer

    def push(self, const uint8_t[::1] data, uint32_t meta=0):
        """Append one record, invisible to the consumer until publish(). Returns PUSH_OK (0),
        PUSH_FULL (-1, counted in `full`) or PUSH_TOO_BIG (-2: above max_record(size))."""
        cdef Py_ssize_t n = data.shape[0]
        cdef const uint8_t *p = NULL
        self._check()
        if <uint64_t>n > 0xFFFFFFFFu:
            return HEP_RING_TOO_BIG             # hep_ring_push decides for everything smaller
        if n:
            p = &data[0]
        return hep_ring_push(&self._prod, p, <uint32_t>n, meta)

    def publish(self):
        """Make every record pushed so far visible to the consumer at once."""
        self._check()
        hep_ring_publish(&self._prod)

    # ---------------------------------------------------------------------------- consumer

    def read(self, Py_ssize_t max_records=1024):
        """The next batch: up to `max_records` published records, contiguous in the ring (a
        read never spans the wrap, the next one continues from offset 0). Empty (count 0) when
        nothing is published. Release it before the next read."""
        cdef const uint8_t *p
        cdef const uint8_t *rec
        cdef size_t n
        cdef size_t good
        cdef uint32_t ln, meta
        cdef hep_ring_iter it
        cdef Py_ssize_t count = 0
        cdef uint64_t payload = 0
        cdef int rc = HEP_RING_RECORD
        cdef Batch b
        self._check()
        if self._out is not None:
            raise RuntimeError("release the outstanding batch before reading again")
        if max_records < 1:
            raise ValueError("max_records must be >= 1")
        hep_ring_peek(&self._cons, &p, &n)
        hep_ring_iter_init(&it, p, n)
        good = 0
        while count < max_records:
            rc = hep_ring_next(&it, &rec, &ln, &meta)
            if rc != HEP_RING_RECORD:
                break
            count += 1
            payload += ln
            good = it.off
        b = Batch.__new__(Batch)
        b._ring = self
        b._p = p
        b._span = good
        b._release = it.off
        b.count = count
        b.nbytes = payload
        b._live = True
        if rc == HEP_RING_CORRUPT:
            self.corrupt_spans += 1
        self._out = b
        return b

    def release(self, Batch batch not None):
        """Give the batch's bytes back to the producer; its records are gone afterwards."""
        self._check()
        if batch is not self._out or not batch._live:
            raise RuntimeError("not the outstanding batch of this ring")
        batch._live = False
        self._out = None
        hep_ring_release_records(&self._cons, batch._release, <uint64_t>batch.count)

    # ---------------------------------------------------------------------------- state

    @property
    def size(self):
        """Data bytes (a power of two)."""
        return self._cons.size

    @property
    def used(self):
        """Bytes published and not yet released (record headers, padding and wrap gaps
        included)."""
        self._check()
        return hep_ring_used(&self._cons)

    @property
    def head(self):
        """Published head (bytes ever written)."""
        self._check()
        return self._cons.hdr.head

    @property
    def tail(self):
        """Shared tail (bytes ever released)."""
        self._check()
        return self._cons.hdr.tail

    @property
    def pushed(self):
        self._check()
        return self._cons.hdr.records_pushed

    @property
    def full(self):
        self._check()
        return self._cons.hdr.records_full

    @property
    def consumed(self):
        self._check()
        return self._cons.hdr.records_consumed


cdef class Batch:
    """The records one `Ring.read` found, in place in the ring until `Ring.release`."""

    cdef Ring _ring
    cdef const uint8_t *_p
    cdef size_t _span
    cdef size_t _release
    cdef bint _live
    cdef readonly Py_ssize_t count
    cdef readonly uint64_t nbytes

    def __init__(self):
        raise TypeError("batches come from Ring.read()")

    cdef int _check(self) except -1:
        if not self._live or not self._ring._has_view:
            raise RuntimeError("batch already released")
        return 0

    def __len__(self):
        return self.count

    @property
    def live(self):
        return self._live

    def __iter__(self):
        """(meta, memoryview of the payload) per record: the slow path (a Python object per
        record). The views point into the ring and are valid until the batch is released."""
        cdef hep_ring_iter it
        cdef const uint8_t *rec
        cdef uint32_t ln, meta
        cdef Py_ssize_t start
        self._check()
        hep_ring_iter_init(&it, self._p, self._span)
        while True:
            self._check()
            if hep_ring_next(&it, &rec, &ln, &meta) != HEP_RING_RECORD:
                return
            start = <Py_ssize_t>(rec - <const uint8_t *>self._ring._view.buf)
            yield meta, self._ring._mv[start:start + ln]

    @property
    def span(self):
        """The batch's records as they lie in the ring (per record: u32 big-endian length, u32
        meta, the bytes, padding to 8; hepring.h), for compiled consumers that walk them with
        hep_ring_next (hepfast.egress._store). Valid until release, like iteration's views."""
        cdef Py_ssize_t start
        self._check()
        start = <Py_ssize_t>(self._p - <const uint8_t *>self._ring._view.buf)
        return self._ring._mv[start:start + <Py_ssize_t>self._span]

    def write_hepraw(self, int fd):
        """Write every record to `fd` as .hepraw (4-byte big-endian length, then the packet)
        with writev over iovecs into the ring; short writes and EINTR are continued. Returns
        (records, bytes). On an error raises OSError carrying `.records` and `.bytes`: what was
        written completely before it (a partial record may follow those bytes in the file)."""
        cdef uint64_t records = 0
        cdef uint64_t nbytes = 0
        cdef int err
        cdef const uint8_t *p
        cdef size_t n
        cdef iovec *iov
        cdef int cap
        self._check()
        if self.count == 0:
            return 0, 0
        p = self._p
        n = self._span
        iov = self._ring._iov
        cap = self._ring._iov_cap
        with nogil:
            err = _write_span(fd, p, n, iov, cap, &records, &nbytes)
        if err != 0:
            exc = OSError(err, strerror(err).decode("utf-8", "replace"))
            exc.records = records
            exc.bytes = nbytes
            raise exc
        return records, nbytes
