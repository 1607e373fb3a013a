"""The switch-wide guard tables: dedup, rate limits, call decisions (ext/dataplane/hepguard.h).

One file, `guard` in the run directory, created and formatted by the supervisor at start
(`create`) and mapped by every worker; it lives as long as the run, so a reload (or a replaced
worker) keeps every table and every rule's rate state. Rule state is indexed by rule *slot*
(hepfast.plan.emit.SlotMap: a rule name keeps its slot for the whole run), so a rule that a reload
leaves in place keeps its rate limit's state, also when other rules come and go.

Python twins of the C functions the tests compare with: `xxh64` (hep_xxh64) and
`dedup_identity` (guard.pxd dedup_identity).

Imports only the standard library, numpy and hepfast.constants / hepfast.wire.hashing.
"""
from __future__ import annotations

import mmap
import os

import numpy as np

from hepfast.constants import INFLATE_MAX, MAX_RULE_SLOTS
from hepfast.wire.hashing import MASK, mix64

MAGIC = 0x3152415547504548          # "HEPGUAR1"
TAT = 64
CTAT = TAT + 8 * MAX_RULE_SLOTS
TABLES = CTAT + 8 * MAX_RULE_SLOTS


def words(dedup_slots: int, call_slots: int) -> int:
    return TABLES + dedup_slots + call_slots


def pow2(n: int) -> int:
    """n rounded up to a power of two (the tables' sizes)."""
    return 1 << max(3, (int(n) - 1).bit_length())


def create(path: str, dedup_slots: int, call_slots: int) -> None:
    """A zeroed, formatted guard file (mode 0600), its memory allocated now: the tables are
    resident before the first packet (no page faults on a worker's fast path), and on a tmpfs
    mounted with huge=within_size they get 2 MiB pages (see page_kib)."""
    ds, cs = pow2(dedup_slots), pow2(call_slots)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, words(ds, cs) * 8)
        try:
            os.posix_fallocate(fd, 0, words(ds, cs) * 8)
        except OSError:                 # a filesystem without fallocate: pages come on use
            pass
        mm = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED)
    finally:
        os.close(fd)
    arr = np.frombuffer(mm, dtype=np.uint64)
    arr[1] = ds
    arr[2] = cs
    arr[0] = MAGIC                      # last: a reader that sees the magic sees the sizes
    del arr
    mm.close()


def open_map(path: str) -> mmap.mmap:
    """A writable shared mapping of a guard file, its pages mapped now (MAP_POPULATE) and
    marked for huge pages (MADV_HUGEPAGE: used where the filesystem allows, e.g. a tmpfs with
    huge=advise)."""
    fd = os.open(path, os.O_RDWR)
    try:
        mm = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
    finally:
        os.close(fd)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            mm.madvise(mmap.MADV_HUGEPAGE)
        except OSError:
            pass
    return mm


def page_kib(mm: mmap.mmap) -> int:
    """The page size (KiB) backing most of mapping mm in this process: 2048 when the kernel
    mapped it with huge pages, else 4 (0 when /proc/self/smaps cannot tell). Each dedup lookup
    touches a random place of the table: on 4 KiB pages that is a TLB miss as well."""
    import ctypes

    buf = (ctypes.c_char * 1).from_buffer(mm)
    try:
        addr = ctypes.addressof(buf)
    finally:
        del buf
    try:
        with open("/proc/self/smaps") as f:
            inside = False
            for line in f:
                head = line.split(None, 1)[0]
                if "-" in head and not head.endswith(":"):
                    lo, hi = (int(x, 16) for x in head.split("-"))
                    inside = lo <= addr < hi
                elif inside and head in ("ShmemPmdMapped:", "FilePmdMapped:",
                                         "AnonHugePages:"):
                    if int(line.split()[1]) * 1024 * 2 >= len(mm):
                        return 2048
                elif inside and head == "VmFlags:":
                    return 4
    except (OSError, ValueError):
        return 0
    return 0


# ------------------------------------------------------------------ twins

_P1 = 0x9E3779B185EBCA87
_P2 = 0xC2B2AE3D27D4EB4F
_P3 = 0x165667B19E3779F9
_P4 = 0x85EBCA77C2B2AE63
_P5 = 0x27D4EB2F165667C5


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & MASK


def _round(acc: int, v: int) -> int:
    acc = (acc + v * _P2) & MASK
    return (_rotl(acc, 31) * _P1) & MASK


def xxh64(data: bytes, seed: int = 0) -> int:
    """XXH64 (the reference algorithm, little-endian reads)."""
    n = len(data)
    p = 0
    if n >= 32:
        v = [(seed + _P1 + _P2) & MASK, (seed + _P2) & MASK, seed & MASK, (seed - _P1) & MASK]
        while p + 32 <= n:
            for i in range(4):
                v[i] = _round(v[i], int.from_bytes(data[p + 8 * i:p + 8 * i + 8], "little"))
            p += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & MASK
        for x in v:
            h = (((h ^ _round(0, x)) * _P1) + _P4) & MASK
    else:
        h = (seed + _P5) & MASK
    h = (h + n) & MASK
    while p + 8 <= n:
        h ^= _round(0, int.from_bytes(data[p:p + 8], "little"))
        h = (_rotl(h, 27) * _P1 + _P4) & MASK
        p += 8
    if p + 4 <= n:
        h ^= (int.from_bytes(data[p:p + 4], "little") * _P1) & MASK
        h = (_rotl(h, 23) * _P2 + _P3) & MASK
        p += 4
    while p < n:
        h ^= (data[p] * _P5) & MASK
        h = (_rotl(h, 11) * _P1) & MASK
        p += 1
    h ^= h >> 33
    h = (h * _P2) & MASK
    h ^= h >> 29
    h = (h * _P3) & MASK
    h ^= h >> 32
    return h


def dedup_identity(pkt, salt: int = 0) -> int:
    """The dedup identity of a decoded packet (hepfast.wire.packet.HepPacket: family, src_addr /
    dst_addr raw bytes, ports, proto_type, payload): the C side's for every packet whose address
    chunks match its family."""
    def addr(a: bytes | None) -> int:
        if pkt.family == 6:
            b = a if a is not None and len(a) == 16 else bytes(16)
            return int.from_bytes(b[:8], "big") ^ mix64(int.from_bytes(b[8:], "big"))
        b = a if a is not None and len(a) == 4 else bytes(4)
        return int.from_bytes(b, "big")

    ports = ((pkt.src_port or 0) << 24) | ((pkt.dst_port or 0) << 8) | (pkt.proto_type or 0)
    seed = mix64(addr(pkt.src_addr) ^ mix64(addr(pkt.dst_addr) ^ mix64(ports)) ^ salt)
    return xxh64(bytes(pkt.payload or b""), seed)


def inflate_payload(data: bytes, cap: int = INFLATE_MAX) -> tuple:
    """What the worker makes of a compressed payload (ext/wire/inflate.pxd hz_inflate): ("ok",
    bytes) for a whole zlib or gzip stream of at most `cap` bytes, ("too_big",) for one that
    holds more, ("corrupt",) for anything else."""
    import zlib

    d = zlib.decompressobj(15 + 32)
    try:
        out = d.decompress(bytes(data), cap)
    except zlib.error:
        return ("corrupt",)
    if d.eof:
        return ("ok", out)
    return ("too_big",) if len(out) == cap else ("corrupt",)
