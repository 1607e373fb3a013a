"""The public HEP codec: compiled (hepfast.wire._codec) unless HEPFAST_PURE=1 selects the pure-Python
reference (hepfast.wire.pycodec). Both have the same functions and give the same results.

The compiled module is required: if it fails to import and HEPFAST_PURE is not set, the import
error says how to build it, so a missing build never falls back silently.
"""
from __future__ import annotations

import os
from types import ModuleType

from hepfast.wire import pycodec as _pycodec
from hepfast.wire import chunks
from hepfast.wire.packet import DECODE_KEYS, HepError, HepPacket, Unconvertible

__all__ = ["decode", "reason", "rewrite", "to_v2", "to_v3", "encode", "get_impl", "IMPL",
           "HepError", "HepPacket", "Unconvertible", "DECODE_KEYS", "build_set"]


def _load_compiled() -> ModuleType:
    try:
        from hepfast.wire import _codec
    except ImportError as exc:
        raise ImportError(
            f"hepfast's compiled codec did not load ({exc}). Build it with `make build` "
            "(or `pip install .`), or set HEPFAST_PURE=1 to use the slow pure-Python codec."
        ) from exc
    return _codec


def get_impl(name: str) -> ModuleType:
    """The low-level codec module by name: "compiled" or "pure"."""
    if name == "pure":
        return _pycodec
    if name == "compiled":
        return _load_compiled()
    raise ValueError(f"unknown codec implementation {name!r}")


IMPL = "pure" if os.environ.get("HEPFAST_PURE") == "1" else "compiled"
_impl = get_impl(IMPL)

reason = _impl.reason
decode = _impl.decode
to_v2 = _impl.to_v2


def build_set(set: dict | None = None, delete=()) -> tuple[bytes, list[int]]:
    """(pre-encoded set chunks, skip keys) for a rewrite: `set` maps chunk names (see
    hepfast.wire.chunks) to values; `delete` lists chunk names. Set chunks replace existing ones."""
    setbuf = b"".join(chunks.set_chunk(k, v) for k, v in (set or {}).items())
    skip = {(v << 16) | t for name in delete for v, t in chunks.chunk_keys(name)}
    for name in (set or {}):
        skip.update((v << 16) | t for v, t in chunks.chunk_keys(name))
    return setbuf, sorted(skip)


def rewrite(data, set: dict | None = None, delete=(), version: int = 3, impl=None) -> bytes:
    """Set (add or replace) and delete chunks; the result is HEPv3, or HEPv2 with version=2.

    A replaced chunk keeps its place, an added one goes just before the payload chunk, so the
    chunks after the payload stay exactly those the agent put there. HEPv2 carries SIP only: any
    other proto type raises Unconvertible (a HepError)."""
    setbuf, skip = build_set(set, delete)
    return (impl or _impl).rewrite(data, setbuf, skip, version)


def to_v3(data, impl=None) -> bytes:
    """HEPv3 form of any message (v3 input comes back with only its trailing bytes dropped)."""
    return (impl or _impl).rewrite(data, b"", (), 3)


def encode(chunk_list) -> bytes:
    """HEPv3 packet from (vendor, type, body) triples or (name, value) pairs, in order."""
    triples = []
    for item in chunk_list:
        if len(item) == 3:
            triples.append((int(item[0]), int(item[1]), bytes(item[2])))
        else:
            name, value = item
            enc = chunks.set_chunk(name, value)
            triples.append((int.from_bytes(enc[0:2], "big"), int.from_bytes(enc[2:4], "big"),
                            enc[6:]))
    return chunks.encode_packet(triples)
