# cython: language_level=3
#
# inflate: zlib for the compressed-payload chunk (0x0010) at C level: inflate bounded by the
# caller's buffer (a bomb fills it and is refused, nothing grows), deflate for destinations that
# compress. One z_stream per direction and worker, initialised once and reset per payload, so no
# allocation happens per packet. Links libz (setup.py).
#
# Formats (../shared docs, hep-protocol 5.7): captagent sends zlib streams (RFC 1950, "78 9c"),
# OpenSIPS gzip (RFC 1952, "1f 8b"); inflate detects which from the header bytes (windowBits
# 15 + 32). What this switch compresses is zlib, as captagent does.

from libc.stdint cimport uint8_t
from libc.string cimport memset

cdef extern from "zlib.h" nogil:
    ctypedef struct z_stream:
        uint8_t *next_in            # z_const: const only with ZLIB_CONST
        unsigned int avail_in
        unsigned long total_in
        uint8_t *next_out
        unsigned int avail_out
        unsigned long total_out
    int Z_OK
    int Z_STREAM_END
    int Z_BUF_ERROR
    int Z_FINISH
    int Z_DEFAULT_COMPRESSION
    int inflateInit2(z_stream *strm, int windowBits)
    int inflateReset(z_stream *strm)
    int inflate(z_stream *strm, int flush)
    int inflateEnd(z_stream *strm)
    int deflateInit(z_stream *strm, int level)
    int deflateReset(z_stream *strm)
    int deflate(z_stream *strm, int flush)
    int deflateEnd(z_stream *strm)
    unsigned long deflateBound(z_stream *strm, unsigned long sourceLen)

cdef enum:
    HZ_CORRUPT = -1         # not a zlib or gzip stream, or a cut or damaged one
    HZ_TOO_BIG = -2         # inflates past the output buffer (a bomb)


cdef inline int hz_init(z_stream *inf, z_stream *dfl) noexcept nogil:
    """Both streams, once per worker: 0, or -1 when zlib cannot allocate them."""
    memset(inf, 0, sizeof(z_stream))
    memset(dfl, 0, sizeof(z_stream))
    if inflateInit2(inf, 15 + 32) != Z_OK:
        return -1
    if deflateInit(dfl, Z_DEFAULT_COMPRESSION) != Z_OK:
        inflateEnd(inf)
        return -1
    return 0


cdef inline void hz_end(z_stream *inf, z_stream *dfl) noexcept nogil:
    inflateEnd(inf)
    deflateEnd(dfl)


cdef inline Py_ssize_t hz_inflate(z_stream *s, const uint8_t *src, Py_ssize_t n, uint8_t *out,
                                  Py_ssize_t cap) noexcept nogil:
    """Inflate src[0:n] (zlib or gzip) into out[0:cap]: the length, HZ_TOO_BIG when the stream
    holds more than cap bytes, HZ_CORRUPT when it is not a whole valid stream. The cost is
    bounded by cap: inflation stops when the buffer is full."""
    cdef int rc
    if n <= 0 or inflateReset(s) != Z_OK:
        return HZ_CORRUPT
    s.next_in = <uint8_t *>src
    s.avail_in = <unsigned int>n
    s.next_out = out
    s.avail_out = <unsigned int>cap
    rc = inflate(s, Z_FINISH)
    if rc == Z_STREAM_END:
        return <Py_ssize_t>(cap - s.avail_out)
    if s.avail_out == 0 and (rc == Z_BUF_ERROR or rc == Z_OK):
        return HZ_TOO_BIG
    return HZ_CORRUPT


cdef inline Py_ssize_t hz_deflate(z_stream *s, const uint8_t *src, Py_ssize_t n, uint8_t *out,
                                  Py_ssize_t cap) noexcept nogil:
    """Compress src[0:n] into out[0:cap] as one zlib stream: the length, or -1 when it does not
    fit (the caller sizes cap with deflateBound)."""
    if deflateReset(s) != Z_OK:
        return -1
    s.next_in = <uint8_t *>src
    s.avail_in = <unsigned int>n
    s.next_out = out
    s.avail_out = <unsigned int>cap
    if deflate(s, Z_FINISH) != Z_STREAM_END:
        return -1
    return <Py_ssize_t>(cap - s.avail_out)
