"""Creating and attaching the worker -> egress shared-memory rings.

The supervisor creates one ring per (worker, egress process) pair with `create_ring`: an
anonymous memfd (`hepfast-ring-NAME` in /proc/PID/fd), sized to the header plus a power-of-two
data area, sealed against resizing (a process that truncated it would make the others fault on
access), formatted, and mapped shared. Both sides receive the fd across exec (`pass_fds`) and
map it with `attach_ring`. The record format, the header layout and the memory ordering are
defined once, in ext/egress/hepring.h; this module only sizes, creates and maps.

A `Ring` keeps its mapping exported until `Ring.close()`; close the ring before the mmap.
"""
from __future__ import annotations

import fcntl
import mmap
import os

from hepfast.egress._ring import HEADER_BYTES, MAX_SIZE, MIN_SIZE, Ring, format_ring

#: Smallest and largest data area of a ring, in bytes (powers of two, from hepring.h).
RING_MIN_BYTES: int = MIN_SIZE
RING_MAX_BYTES: int = MAX_SIZE
#: Bytes of the header page before the data area.
RING_HEADER_BYTES: int = HEADER_BYTES


def ring_data_size(size_bytes: int) -> int:
    """`size_bytes` rounded up to a power of two, at least RING_MIN_BYTES; ValueError above
    RING_MAX_BYTES."""
    if size_bytes > RING_MAX_BYTES:
        raise ValueError(f"ring size {size_bytes} above the maximum of {RING_MAX_BYTES} bytes")
    size = RING_MIN_BYTES
    while size < size_bytes:
        size <<= 1
    return size


def create_ring(size_bytes: int, name: str) -> tuple[int, mmap.mmap]:
    """A new formatted ring of at least `size_bytes` data bytes: (memfd, shared mmap). The fd is
    close-on-exec: hand it to a child with `pass_fds`. The caller owns and closes both."""
    size = ring_data_size(size_bytes)
    length = RING_HEADER_BYTES + size
    fd = os.memfd_create(f"hepfast-ring-{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, length)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
        m = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        raise
    try:
        format_ring(m, size)
    except BaseException:
        m.close()
        os.close(fd)
        raise
    return fd, m


def attach_ring(fd: int) -> tuple[mmap.mmap, Ring]:
    """Map the ring behind `fd` (inherited or created here) and attach to it. ValueError when
    the fd does not hold a formatted ring. The fd may be closed afterwards; the mapping stays."""
    length = os.fstat(fd).st_size
    if length < RING_HEADER_BYTES + RING_MIN_BYTES:
        raise ValueError(f"fd {fd}: {length} bytes, too small for a ring")
    m = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    try:
        ring = Ring(m)
    except BaseException:
        m.close()
        raise
    return m, ring
