# cython: language_level=3
#
# utf8: strict UTF-8 validation for the storage encoders (ext/egress/_store.pyx for parquet,
# ext/egress/_pgrow.pyx for PostgreSQL COPY): text they may keep byte for byte is exactly what
# Python's bytes.decode("utf-8") accepts (no overlongs, no surrogates, at most U+10FFFF), so the
# compiled rows equal their pure-Python references. Inline, nogil, reads s[0 .. n-1] only.

from libc.stdint cimport uint8_t, uint64_t
from libc.string cimport memcpy


cdef inline bint utf8_strict(const uint8_t *s, size_t n, bint no_nul) noexcept nogil:
    """s[:n] is strict UTF-8; with no_nul, also without a NUL byte (PostgreSQL text)."""
    cdef size_t i = 0
    cdef uint8_t c, c1
    cdef int k
    cdef uint64_t w
    while i < n:
        if i + 8 <= n:                          # eight ASCII bytes (none NUL, with no_nul)
            memcpy(&w, s + i, 8)
            if (w & 0x8080808080808080ULL) == 0 and (not no_nul or (
                    (w - 0x0101010101010101ULL) & ~w & 0x8080808080808080ULL) == 0):
                i += 8
                continue
        c = s[i]
        if c < 0x80:
            if c == 0 and no_nul:
                return False
            i += 1
            continue
        if 0xC2 <= c <= 0xDF:
            k = 1
        elif 0xE0 <= c <= 0xEF:
            k = 2
        elif 0xF0 <= c <= 0xF4:
            k = 3
        else:
            return False
        if i + <size_t>k >= n:                  # needs s[i + 1] .. s[i + k]
            return False
        c1 = s[i + 1]
        if (c1 & 0xC0) != 0x80:
            return False
        if c == 0xE0 and c1 < 0xA0:
            return False
        if c == 0xED and c1 > 0x9F:
            return False
        if c == 0xF0 and c1 < 0x90:
            return False
        if c == 0xF4 and c1 > 0x8F:
            return False
        if k >= 2 and (s[i + 2] & 0xC0) != 0x80:
            return False
        if k == 3 and (s[i + 3] & 0xC0) != 0x80:
            return False
        i += <size_t>k + 1
    return True
