"""The plan file: what the supervisor hands to workers and egress processes.

The supervisor compiles a config once (hepfast.plan.compile: DNS resolved, tables built, limits
checked), assigns counter slots, and writes one immutable file per generation with `write_plan`.
Workers and egress processes map it read-only with `read_plan`: they never parse TOML, resolve a
name or import hepfast.config (tests assert it), so every process runs exactly the plan the
supervisor validated.

Layout: b"HEPPLAN1", a little-endian u32 header length, the header (msgpack of `PlanHeader`),
then each numpy array 64-byte aligned at the offset the header gives. Arrays come back as
read-only views into the mapping (np.frombuffer over an ACCESS_READ mmap), so a worker cannot
write into a plan even by mistake, and nothing is copied.

This module imports only the standard library, numpy and msgspec.
"""
from __future__ import annotations

import mmap
import os
import struct
from typing import Any

import msgspec
import numpy as np

MAGIC = b"HEPPLAN1"
_ALIGN = 64

# The rule tables (hepfast.plan.tables documents them), as the matcher's rules_bind reads them.
RULE_ARRAYS = ("key_mask", "key_start", "key_count", "ranges", "cidrs", "cidr_fam", "flags",
               "fwd_start", "fwd_count", "fwd", "set_blob", "set_off", "set_len", "skip",
               "skip_start", "skip_count", "sample")
# issue 14 A: globs and table-valued match keys
RULE_ARRAYS += ("pat_start", "pat_count", "pat_off", "pat_len", "pat_blob", "conds", "cond_blob")
# The rules' guards (dedup window, rate limits: hepfast.plan.tables), bound by the worker.
GUARD_ARRAYS = ("dedup_ms", "rate")


class PlanTarget(msgspec.Struct, frozen=True):
    host: str               # an IP literal ("" for a ring-fed destination's store)
    port: int
    family: int             # socket.AF_INET / AF_INET6, 0 for a store
    seed: int               # rendezvous identity (hashing.target_seed of the configured host)
    slot: int               # counter slot (stable across reloads)
    configured: str         # as written: "homer1.example:9060", or the store's path


class PlanDestination(msgspec.Struct, frozen=True):
    name: str
    transport: str
    mode: int               # constants.MODE
    hep_version: int
    egress: int             # constants.EGRESS: udp (worker sendmmsg) or ring
    slot: int               # destination counter slot
    egress_slot: int        # ring-fed: the egress process's counter row, else -1
    ring_bytes: int
    auth_key: bytes
    strip_auth_key: bool
    settings: dict[str, Any]
    targets: list[PlanTarget]
    payload: int = 0        # constants.PAYLOAD: keep, inflate, compress
    # issue 14 A: mode = "hash" call key (constants.CALL_KEY), separator byte (0: none), field
    call_key: int = 0
    call_key_sep: int = 0
    call_key_field: int = 0


class PlanListener(msgspec.Struct, frozen=True):
    name: str
    transport: str
    host: str
    port: int
    family: int
    auth_key: bytes
    # stream listeners (tcp, tls): framing limits, per worker (max_connections already divided)
    max_message: int = 65535
    message_timeout: float = 5.0
    max_reads: int = 64
    max_connections: int = 10000
    idle_timeout: float = 300.0
    # tls listeners: absolute paths (the worker builds its SSL_CTX from them at bind), client
    # verification (0 none, 1 optional, 2 required), the oldest version ("1.2", "1.3")
    tls_cert: str = ""
    tls_key: str = ""
    tls_ca: str = ""
    tls_verify: int = 0
    tls_min_version: str = "1.2"
    dedup_ms: int = 0       # dedup window before the rules (0: off)


class ArrayRef(msgspec.Struct, frozen=True, array_like=True):
    dtype: str
    shape: list[int]
    offset: int


class PlanHeader(msgspec.Struct, frozen=True):
    generation: int
    digest: str
    source: str
    batch: int
    workers: int
    max_chunks: int
    rcvbuf: int
    sndbuf: int
    spread: str
    drain_timeout: float
    default_dest: int
    needs_sip: bool
    needs_call_key: bool
    nrules: int
    rule_names: list[str]
    rule_slots: list[int]
    listeners: list[PlanListener]
    destinations: list[PlanDestination]
    arrays: dict[str, ArrayRef]
    # guards (hepfast.dataplane.guard)
    needs_inflate: bool = False
    dedup_expire_ms: int = 0
    call_idle_ms: int = 300000
    sip_want: int = 0           # issue 14 A: SIP_WANT bits, the headers the scanner looks for


def write_plan(path: str, header: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write a plan file (mode 0600, written aside then renamed: a reader never sees half)."""
    blobs = []
    refs = {}
    pos = 0
    for name, a in arrays.items():
        a = np.ascontiguousarray(a)
        pos = (pos + _ALIGN - 1) // _ALIGN * _ALIGN
        refs[name] = ArrayRef(a.dtype.str, list(a.shape), pos)
        blobs.append((pos, a.tobytes()))
        pos += a.nbytes
    head = msgspec.msgpack.encode(PlanHeader(arrays=refs, **header))
    base = (len(MAGIC) + 4 + len(head) + _ALIGN - 1) // _ALIGN * _ALIGN
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + struct.pack("<I", len(head)) + head)
            f.write(b"\0" * (base - f.tell()))
            for off, data in blobs:
                f.seek(base + off)
                f.write(data)
            f.write(b"\0" * 8)           # never an empty mapping, even without arrays
    except BaseException:
        os.unlink(tmp)
        raise
    os.replace(tmp, path)


class PlanError(ValueError):
    """A plan file that cannot be used (wrong magic, truncated, inconsistent)."""


class ListenerView:
    __slots__ = ("name", "transport", "host", "port", "family", "auth_key", "allow", "allow_fam",
                 "stream", "max_message", "message_timeout", "max_reads", "max_connections",
                 "idle_timeout", "tls_cert", "tls_key", "tls_ca", "tls_verify", "tls_min_version",
                 "dedup_ms")


class Plan:
    """A plan file mapped read-only: the header's fields as attributes, the rule tables as
    read-only numpy arrays (the attribute names hepfast.plan.compile.Compiled uses, so the
    matcher's rules_bind takes either), listeners with their `allow` tables."""

    def __init__(self, path: str):
        with open(path, "rb") as f:
            try:
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except ValueError:
                raise PlanError(f"{path}: empty plan file") from None
        mm = self._mm
        if mm[:len(MAGIC)] != MAGIC or len(mm) < len(MAGIC) + 4:
            raise PlanError(f"{path}: not a hepfast plan")
        (hlen,) = struct.unpack_from("<I", mm, len(MAGIC))
        try:
            self.header = msgspec.msgpack.decode(mm[len(MAGIC) + 4:len(MAGIC) + 4 + hlen],
                                                 type=PlanHeader)
        except msgspec.DecodeError as exc:
            raise PlanError(f"{path}: bad plan header: {exc}") from None
        base = (len(MAGIC) + 4 + hlen + _ALIGN - 1) // _ALIGN * _ALIGN
        self.path = path
        self._arrays = {}
        for name, ref in self.header.arrays.items():
            dt = np.dtype(ref.dtype)
            count = int(np.prod(ref.shape, dtype=np.int64)) if ref.shape else 1
            if base + ref.offset + count * dt.itemsize > len(mm):
                raise PlanError(f"{path}: array {name} runs past the end of the file")
            a = np.frombuffer(mm, dtype=dt, count=count, offset=base + ref.offset)
            self._arrays[name] = a.reshape(ref.shape)
        h = self.header
        self.listeners = []
        for i, li in enumerate(h.listeners):
            v = ListenerView()
            v.name, v.transport, v.host, v.port = li.name, li.transport, li.host, li.port
            v.family, v.auth_key = li.family, li.auth_key
            v.stream = li.transport in ("tcp", "tls")
            v.max_message, v.message_timeout, v.max_reads = (li.max_message, li.message_timeout,
                                                             li.max_reads)
            v.max_connections, v.idle_timeout = li.max_connections, li.idle_timeout
            v.tls_cert, v.tls_key, v.tls_ca = li.tls_cert, li.tls_key, li.tls_ca
            v.tls_verify, v.tls_min_version = li.tls_verify, li.tls_min_version
            v.dedup_ms = li.dedup_ms
            v.allow = self._arrays[f"allow{i}"]
            v.allow_fam = self._arrays[f"allow_fam{i}"]
            self.listeners.append(v)
        self.destinations = h.destinations

    def __getattr__(self, name: str):
        arrays = self.__dict__.get("_arrays", {})
        if name in arrays:
            return arrays[name]
        return getattr(self.__dict__["header"], name)

    def close(self) -> None:
        self._arrays.clear()
        self.listeners = []
        try:
            self._mm.close()
        except BufferError:
            pass                # a bound worker still points into it; freed with the views


def read_plan(path: str) -> Plan:
    return Plan(path)
