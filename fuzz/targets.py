"""Fuzz targets: hostile input against every parser of the data plane, compiled vs pure Python.

A target is a function of one input (bytes) that returns normally when all is well. It raises
`Disagreement` when the compiled code and its pure-Python twin give different answers, or when an
invariant breaks (something the codec built does not parse); any other exception escaping it is
a bug as well (the twins must refuse bad input with their documented errors, nothing else). A
native crash (ASan, UBSan, a segfault) kills the process: fuzz/run.py keeps the input.

Adding a target is one function (the TCP framer will be the next one):

    @target("framer", seeds=stream_seeds, max_len=16384)
    def framer(data: bytes) -> None:
        same("frames", compiled_framer(data), pure_framer(data))

`seeds(corpus)` turns the shared corpus (a list of real HEP messages, possibly empty) into the
inputs fuzzing starts from; the shared traffic is read at run time and never copied here.

Implementations are imported lazily (`_impls`), so that fuzz/run.py can turn on atheris'
Python coverage (atheris.instrument_imports) before the pure twins are loaded.
"""
from __future__ import annotations

import functools
import hashlib
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

CORPUS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


class Disagreement(AssertionError):
    """The compiled code and its pure-Python twin answered differently (or an invariant broke)."""


@dataclass(frozen=True)
class Target:
    name: str
    fn: Callable[[bytes], None]
    seeds: Callable[[list[bytes]], Iterable[bytes]]
    max_len: int
    doc: str


TARGETS: dict[str, Target] = {}


def target(name: str, seeds: Callable[[list[bytes]], Iterable[bytes]], max_len: int = 4096):
    """Register a fuzz target under `name` (its first docstring line is its description)."""
    def deco(fn: Callable[[bytes], None]) -> Callable[[bytes], None]:
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        TARGETS[name] = Target(name, fn, seeds, max_len, doc)
        return fn
    return deco


def same(what: str, compiled, pure, data: bytes | None = None) -> None:
    if compiled != pure:
        raise Disagreement(f"{what}: compiled {compiled!r:.300} != pure {pure!r:.300}"
                           + (f" (input {len(data)} bytes)" if data is not None else ""))


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Disagreement(what)


def corpus_packets(corpus_dir: Path = CORPUS_DIR) -> list[bytes]:
    """Every HEP message of ../shared/corpus/*.hepraw, read now; [] when the folder is absent."""
    from hepfast.tools.capture import read_hepraw

    if not corpus_dir.is_dir():
        return []
    return [p for f in sorted(corpus_dir.glob("*.hepraw")) for p in read_hepraw(f)]


def seed_name(data: bytes) -> str:
    return "seed-" + hashlib.sha1(data).hexdigest()


@functools.lru_cache(maxsize=1)
def _impls() -> SimpleNamespace:
    from hepfast.constants import DEFAULT_MAX_CHUNKS
    from hepfast.plan import _matcher, match_rules, sample_key_hash, sip_info_of
    from hepfast.wire import _codec, chunks, pycodec, sip
    from hepfast.wire.codec import build_set
    from hepfast.wire.hashing import hash64
    from hepfast.wire.packet import HepError

    return SimpleNamespace(C=_codec, P=pycodec, sip=sip, matcher=_matcher, chunks=chunks,
                           match_rules=match_rules, sip_info_of=sip_info_of,
                           sample_key_hash=sample_key_hash, hash64=hash64, build_set=build_set,
                           HepError=HepError, DEFAULT_MAX_CHUNKS=DEFAULT_MAX_CHUNKS)


def _outcome(fn, *args):
    """("ok", result) or ("refused", error class, reason code): a HepError is an answer."""
    err = _impls().HepError
    try:
        return ("ok", fn(*args))
    except err as e:
        return ("refused", type(e).__name__, e.reason)


# ---------------------------------------------------------------- seeds

def packet_seeds(corpus: list[bytes]) -> list[bytes]:
    """The corpus messages, their HEPv2/v1 forms, and hand-made hostile shapes (lying lengths,
    empty and overlong chunks, a packet around a small chunk cap)."""
    m = _impls()
    enc = m.chunks.encode_packet
    out = list(dict.fromkeys(corpus))
    for p in corpus[::40]:
        try:
            v2 = m.P.to_v2(p)
        except m.HepError:
            continue
        out += [v2, bytes([1]) + v2[1:-12 - len(m.P.decode(p).payload)] + m.P.decode(p).payload]
    sip = (b"INVITE sip:bob@example.com SIP/2.0\r\nCall-ID: c1@h\r\nFrom: <sip:alice@a>;tag=1\r\n"
           b"To: <sip:bob@b>\r\n\r\n")
    base = [(0, 1, b"\x02"), (0, 2, b"\x11"), (0, 3, b"\x0a\x00\x00\x01"),
            (0, 4, b"\x0a\x00\x00\x02"), (0, 7, b"\x13\xc4"), (0, 8, b"\x13\xc4"),
            (0, 0x0B, b"\x01"), (0, 0x0C, struct.pack(">I", 2001)), (0, 0x11, b"c1@h")]
    good = enc(base + [(0, 0x0F, sip)])
    out += [good, good[:4] + b"\xff\xff" + good[6:], good[:4] + b"\x00\x06" + good[6:],
            enc(base + [(0, 0x10, b"x\x9c" + sip[:20])]),
            enc([(9, 0x200, b"")] * 16 + [(0, 0x0F, sip)]),
            enc([(9, 0x200, b"")] * 15 + [(0, 0x0F, sip)]),
            b"HEP3\x00\x0c\x00\x00\x00\x0f\xff\xff", b"HEP3\x00\x06", b"EEP1\x00\x06"]
    return out


def payload_seeds(corpus: list[bytes]) -> list[bytes]:
    """The payloads of the corpus messages, SIP or not, plus a few compact-header SIP shapes."""
    m = _impls()
    out = []
    for p in corpus:
        try:
            out.append(m.P.decode(p).payload)
        except m.HepError:
            continue
    out += [b"SIP/2.0 200 OK\r\nf: <sip:a@b>\r\nt: \"x\\\"<\" <tel:1>\r\ni: c\r\n\r\n",
            b"ACK sips:[2001:db8::1]:5061;transport=tls SIP/2.0\r\nCALL-ID:\t x \r\n\r\n"]
    return list(dict.fromkeys(out))


# ---------------------------------------------------------------- targets

@target("codec", seeds=packet_seeds, max_len=8192)
def codec(data: bytes) -> None:
    """HEP v1/v2/v3 parse, decode, rewrite (set/delete, in place and added), v3->v2, v2->v3."""
    m = _impls()
    C, P = m.C, m.P
    for cap in (m.DEFAULT_MAX_CHUNKS, 16):      # a small cap makes the boundary reachable
        same(f"reason(max_chunks={cap})", C.reason(data, max_chunks=cap),
             P.reason(data, max_chunks=cap), data)
    r = C.reason(data)
    if r != 0:
        same("decode of an invalid message", _outcome(C.decode, data), ("refused", "HepError", r))
        same("decode of an invalid message", _outcome(P.decode, data), ("refused", "HepError", r))
        return
    pkt = C.decode(data)
    same("decode", pkt, P.decode(data), data)
    for setbuf, skip in _rewrites(pkt):
        for version in (3, 2):
            a = _outcome(C.rewrite, data, setbuf, skip, version)
            same(f"rewrite(skip={skip}, version={version})", a,
                 _outcome(P.rewrite, data, setbuf, skip, version), data)
            if a[0] == "ok":
                check(C.reason(a[1], max_chunks=65535) == 0,
                      f"rewrite(version={version}) built a message that does not parse")
    v2 = _outcome(C.to_v2, data)
    same("to_v2", v2, _outcome(P.to_v2, data), data)
    if v2[0] == "ok":
        back = _outcome(C.rewrite, v2[1], b"", (), 3)
        same("v2 -> v3", back, _outcome(P.rewrite, v2[1], b"", (), 3), v2[1])
        check(back[0] == "ok" and C.reason(back[1]) == 0, "the v3 form of our v2 does not parse")
        a, b = C.decode(back[1]), pkt
        for f in ("proto_id", "src_port", "dst_port", "payload"):
            check(getattr(a, f) == (getattr(b, f) or (0 if f != "payload" else b"")),
                  f"v3 -> v2 -> v3 lost {f}: {getattr(a, f)!r:.80} vs {getattr(b, f)!r:.80}")


@functools.lru_cache(maxsize=1)
def _fixed_rewrites() -> list[tuple[bytes, list[int]]]:
    b = _impls().build_set
    return [b({"capture_id": 4242, "node_name": "edge-1"}, ["auth_key"]),
            b({"correlation_id": "c-2", "3:0x0101": "vendor", "0x0020": 355}, ["payload"]),
            b(None, ["src_ip", "dst_ip", "proto_type"])]


def _rewrites(pkt) -> list[tuple[bytes, list[int]]]:
    """The fixed set/delete combinations, plus one drawn from the packet itself: replace its first
    chunk (same body length, so fixed-size types stay valid) and delete its second."""
    out = list(_fixed_rewrites())
    if pkt.chunks:
        v, t, body = pkt.chunks[0]
        keys = sorted({(v << 16) | t} | {(c[0] << 16) | c[1] for c in pkt.chunks[1:2]})
        out.append((_impls().chunks.encode_chunk(v, t, body[::-1]), keys))
    return out


@target("sip", seeds=payload_seeds, max_len=4096)
def sip(data: bytes) -> None:
    """The SIP scanner (ext/wire/sipscan.pxd) vs hepfast.wire.sip: every field and the Call-ID."""
    m = _impls()
    fields = m.sip.sip_fields(data)
    same("sip_scan", m.C.sip_scan(data) or dict.fromkeys(m.sip.FIELDS), fields, data)
    cid = m.sip.call_id(data)
    same("sip_call_id", m.C.sip_call_id(data), cid, data)
    check(cid is None or cid in data, "call id is not a slice of the payload")


def inflate_seeds(corpus: list[bytes]) -> list[bytes]:
    """Corpus payloads compressed (zlib, gzip), cut, damaged, and small bombs."""
    import gzip
    import zlib

    from hepfast.wire import codec

    out = []
    for i, p in enumerate(corpus):
        pl = codec.decode(p).payload
        z = zlib.compress(pl)
        out.append(z if i % 2 else gzip.compress(pl))
        if i < 40:
            out += [z[:-5], z[:len(z) // 2], z[:2] + bytes(len(z) - 2)]
    out += [zlib.compress(b"A" * 70_000), gzip.compress(b"\0" * 70_000),
            zlib.compress(b"B" * 600), b"", b"\x78\x9c", b"\x1f\x8b\x08"]
    return out


@target("inflate", seeds=inflate_seeds, max_len=4096)
def inflate(data: bytes) -> None:
    """The compressed-payload inflater (ext/wire/inflate.pxd) vs zlib through Python, at the
    worker's 64 KiB cap and at a small one (bombs within fuzzing's input sizes)."""
    from hepfast.dataplane import _guard, guard

    for cap in (guard.INFLATE_MAX, 512):
        got = _guard.inflate(data, cap)
        same(f"inflate cap={cap}", got, guard.inflate_payload(data, cap), data)
        check(got[0] != "ok" or len(got[1]) <= cap, "inflated past the cap")


MATCHER_CONFIG = {
    "listeners": [{"name": "agents", "listen": "127.0.0.1:9060"},
                  {"name": "edge", "listen": "[::1]:9060"}],
    "destinations": {"homer": {"targets": ["127.0.0.1:9161", "127.0.0.1:9162"]},
                     "qos": {"targets": ["127.0.0.1:9163"]}},
}
# Rule sets that use every match key, drop, continue and sampling; CIDRs of both families.
MATCHER_RULES = [
    [{"name": "invite", "match": {"sip_method": ["INVITE", "bye"]}, "forward": ["homer"],
      "continue": True},
     {"name": "ok", "match": {"sip_status": ["2xx", "480-489"], "ip_family": 4},
      "forward": ["qos"]},
     {"name": "v6", "match": {"src_ip": ["::/0"], "dst_ip": ["2001:db8::/32", "::1"]},
      "forward": ["qos"], "continue": True},
     {"name": "lo", "match": {"src_ip": ["127.0.0.0/8", "10.0.0.0/8"], "ip_proto": ["udp", 6]},
      "sample": 0.5, "forward": ["homer"]},
     {"name": "rest", "match": {"proto_type": ["log", "rtcp", 7]}, "drop": True}],
    [{"name": "users", "match": {"sip_from_user": ["alice", "Bob"], "sip_to_user": ["bob"]},
      "forward": ["homer"], "continue": True},
     {"name": "ruri", "match": {"sip_ruri_user": ["bob"], "sip_ruri_domain": ["example.com"]},
      "forward": ["qos"], "continue": True},
     {"name": "cid", "match": {"sip_call_id": ["c1@h"], "correlation_id": ["c1@h", ""]},
      "forward": ["qos"]},
     {"name": "ports", "match": {"src_port": ["5000-5070"], "dst_port": [0, "5080-65535"],
                                 "capture_id": [2001, "0-10"], "hep_version": [2, 3]},
      "sample": 0.3, "continue": True, "forward": ["homer"]},
     {"name": "node", "match": {"node_name": ["edge-1"], "listener": ["edge"]}, "drop": True},
     {"name": "all", "forward": ["qos"]}],
    # globs, sip_header (beside header keys: the name summary; alone: its own scan),
    # sip_cseq_method, sip_user_agent, correlation_id_field
    [{"name": "glob", "match": {"sip_ruri_user": ["+4930*", "0?0*"],
                                "sip_ruri_domain": ["*.example.com", "127.0.0.?"]},
      "forward": ["homer"], "continue": True},
     {"name": "hdr", "match": {"sip_header": {"name": "X-Tenant", "value": ["acme*", "b?ta"]},
                               "sip_from_user": ["*a*", "sipp"]},
      "forward": ["qos"], "continue": True},
     {"name": "ua", "match": {"sip_user_agent": ["friendly-scanner*", "*SIPp*"],
                              "sip_cseq_method": ["INV*", "bye"]},
      "forward": ["qos"], "continue": True},
     {"name": "two", "match": {"sip_header": [{"name": "s", "value": "*"},
                                              {"name": "Content-Length", "value": "0"}]},
      "sample": 0.5, "forward": ["qos"], "continue": True},
     {"name": "corr", "match": {"correlation_id_field": {"separator": "@", "field": -1,
                                                         "value": ["*.example", "127.0.0.1"]},
                                "sip_call_id": ["*@*"]}, "forward": ["qos"]},
     {"name": "rest", "forward": ["homer"]}],
    [{"name": "alone", "match": {"sip_header": {"name": "i", "value": ["*@127.0.0.1"]}},
      "forward": ["homer"]}],
]


@functools.lru_cache(maxsize=1)
def _compiled_rule_sets() -> list:
    from hepfast.config import from_dict
    from hepfast.plan import compile_config

    return [compile_config(from_dict({**MATCHER_CONFIG, "rules": rs})) for rs in MATCHER_RULES]


@target("matcher", seeds=packet_seeds, max_len=8192)
def matcher(data: bytes) -> None:
    """The rule matcher (ext/plan/matcher.pxd) vs its oracle hepfast.plan.match_rules.

    Both listeners of rule sets that use every key; the call key and sampling hashes too."""
    m = _impls()
    if m.C.reason(data) != 0:
        try:
            m.matcher.evaluate(_compiled_rule_sets()[0], data, 0)
        except ValueError:
            return
        raise Disagreement("the matcher took a message the codec refuses")
    pkt = m.P.decode(data)
    sip = m.sip_info_of(pkt)
    for i, c in enumerate(_compiled_rule_sets()):
        for listener in (0, 1):
            same(f"rule set {i}, listener {listener}", m.matcher.evaluate(c, data, listener),
                 m.match_rules(c, pkt, listener, sip=sip), data)
    key = pkt.call_key()
    same("call_hash", m.matcher.call_hash(data), m.hash64(key) if key else None, data)
    same("sample_hash", m.matcher.sample_hash(data), m.sample_key_hash(pkt), data)


@target("_selftest", seeds=lambda corpus: [b"fine", b"FAIL"], max_len=64)
def _selftest(data: bytes) -> None:
    """Planted finding: an input starting with FAIL disagrees (proves a finding fails the run).

    Not run by default (names starting with "_"); tests/test_fuzz_harness.py runs it."""
    check(not data.startswith(b"FAIL"), "selftest: planted disagreement")
