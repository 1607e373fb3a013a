"""Codec tests: the same assertions on the compiled and the pure-Python codec, property tests that
the two agree on arbitrary input, HEPv2 built from the documented byte layout."""
from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hepfast.wire import pycodec as _pycodec
from hepfast.wire import codec
from hepfast.wire.chunks import encode_packet
from hepfast.wire.packet import HepError
from tests.conftest import CORPUS_DIR, corpus_names, load_corpus

SPEC_EXAMPLE = bytes.fromhex(
    "484550330071"
    "00000001000702" "00000002000711" "00000003000ad4ca0001" "00000004000a527400d3"
    "0000000700082eea" "00000008000813c4" "00000009000a4e4982cb" "0000000a000a0001d4c0"
    "0000000b000701" "0000000c000a000000e4"
    "0000000f0014" + b"INVITE sip:bob".hex())


def all_corpus_packets() -> list[bytes]:
    return [p for name in corpus_names() for p, _ in load_corpus(name)]


def test_compiled_codec_is_the_one_in_use():
    """CI must exercise the compiled extension: a silent fallback to pure Python fails here."""
    if os.environ.get("HEPFAST_PURE") == "1":
        pytest.skip("HEPFAST_PURE=1 selects the pure codec on purpose")
    assert codec.IMPL == "compiled"
    from hepfast.wire import _codec

    assert codec.decode is _codec.decode


def test_spec_example(codec_impl):
    p = codec_impl.decode(SPEC_EXAMPLE)
    assert (p.version, p.total, p.proto_family, p.proto_id) == (3, 113, 2, 17)
    assert (p.src_ip, p.dst_ip, p.src_port, p.dst_port) == ("212.202.0.1", "82.116.0.211",
                                                           12010, 5060)
    assert (p.timestamp, p.timestamp_us, p.proto_type, p.capture_id) == (1313440459, 120000, 1,
                                                                        228)
    assert p.payload == b"INVITE sip:bob"
    assert p.auth_key is None and p.correlation_id is None and p.node_name is None


def test_corpus_roundtrip_identical_bytes(codec_impl, corpus_dir):
    for pkt in all_corpus_packets():
        assert codec.to_v3(pkt, impl=codec_impl) == pkt
        assert codec.rewrite(pkt, impl=codec_impl) == pkt


def test_corpus_set_delete_add(codec_impl, corpus_dir):
    for pkt in all_corpus_packets()[::7]:
        before = codec_impl.decode(pkt)
        out = codec.rewrite(pkt, set={"capture_id": 4242, "node_name": "edge-1",
                                      "0x0020": 355, "3:0x0101": "vendor"},
                            delete=["correlation_id"], impl=codec_impl)
        after = codec_impl.decode(out)
        assert after.capture_id == 4242 and after.node_name == "edge-1"
        assert after.correlation_id is None
        assert after.chunk(0, 0x20) == struct.pack(">H", 355)       # MOS is a uint16
        assert after.chunk(3, 0x0101) == b"vendor"
        # every other chunk is unchanged, in order
        kept = [c for c in before.chunks if (c[0], c[1]) not in {(0, 0x0C), (0, 0x11)}]
        assert after.chunks[:len(kept)] == kept
        assert after.total == len(out)


def test_v3_v2_v3_keeps_what_v2_carries(codec_impl, corpus_dir):
    for pkt in all_corpus_packets()[::5]:
        a = codec_impl.decode(pkt)
        v2 = codec.rewrite(pkt, version=2, impl=codec_impl)
        assert v2[0] == 2
        b = codec_impl.decode(codec.to_v3(v2, impl=codec_impl))
        for f in ("proto_family", "proto_id", "src_ip", "dst_ip", "src_port", "dst_port",
                  "timestamp", "timestamp_us", "payload"):
            assert getattr(a, f) == getattr(b, f), f
        assert b.capture_id == a.capture_id & 0xFFFF
        assert b.proto_type == 1      # v2 carries raw SIP only


def _v2(family: int, src: bytes, dst: bytes, sport=5060, dport=5080, sec=1700000000, usec=123,
        capid=2001, payload=b"OPTIONS sip:a SIP/2.0\r\n\r\n", version=2, hp_l=None) -> bytes:
    alen = len(src)
    hdr = bytes([version, hp_l if hp_l is not None else 8 + 2 * alen, family, 17])
    hdr += struct.pack(">HH", sport, dport) + src + dst
    if version == 2:
        hdr += struct.pack("<IIHH", sec, usec, capid, 0)
    return hdr + payload


@pytest.mark.parametrize("hp_l", [None, 28, 0])     # Kamailio, sofia-sip, garbage: ignored
def test_hepv2_ipv4_layout(codec_impl, hp_l):
    raw = _v2(2, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), hp_l=hp_l)
    assert len(raw) - 28 == len(b"OPTIONS sip:a SIP/2.0\r\n\r\n")
    p = codec_impl.decode(raw)
    assert (p.version, p.family, p.src_ip, p.dst_ip) == (2, 4, "10.0.0.1", "10.0.0.2")
    assert (p.src_port, p.dst_port, p.timestamp, p.timestamp_us) == (5060, 5080, 1700000000, 123)
    assert (p.capture_id, p.proto_type, p.proto_id) == (2001, 1, 17)
    assert p.payload == b"OPTIONS sip:a SIP/2.0\r\n\r\n"
    v3 = codec.to_v3(raw, impl=codec_impl)
    q = codec_impl.decode(v3)
    assert (q.version, q.src_ip, q.capture_id, q.timestamp, q.payload) == \
        (3, "10.0.0.1", 2001, 1700000000, p.payload)
    assert codec_impl.to_v2(v3) == _v2(2, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))


def test_hepv2_ipv6_layout(codec_impl):
    src = bytes.fromhex("20010db8000000000000000000000001")
    dst = bytes.fromhex("20010db8000000000000000000000002")
    raw = _v2(10, src, dst, capid=7)
    assert raw[52:] == b"OPTIONS sip:a SIP/2.0\r\n\r\n"
    p = codec_impl.decode(raw)
    assert (p.family, p.src_ip, p.dst_ip, p.capture_id) == (6, "2001:db8::1", "2001:db8::2", 7)
    assert codec_impl.to_v2(codec.to_v3(raw, impl=codec_impl)) == raw


def test_hepv1(codec_impl):
    raw = _v2(2, bytes([10, 0, 1, 100]), bytes([192, 168, 0, 254]), version=1)
    p = codec_impl.decode(raw)
    assert (p.version, p.src_ip, p.dst_ip, p.timestamp, p.capture_id) == \
        (1, "10.0.1.100", "192.168.0.254", None, None)
    assert p.payload.startswith(b"OPTIONS")


@pytest.mark.parametrize("data,reason", [
    (b"", "short"), (b"HEP", "short"), (b"HEP3\x00", "short"),
    (b"XXXX\x00\x06", "magic"), (b"HEP2\x00\x06", "version"), (b"EEP1\x00\x06", "version"),
    (b"HEP3\x00\x05", "length"), (b"HEP3\x00\x07", "length"),
    (b"HEP3\x00\x08\x00\x00", "chunk"),
    (b"HEP3\x00\x0c\x00\x00\x00\x01\x00\x05", "chunk"),             # chunk length < 6
    (b"HEP3\x00\x0c\x00\x00\x00\x01\x00\x07", "chunk"),             # chunk past the end
    (b"HEP3\x00\x0d\x00\x00\x00\x07\x00\x07\x01", "chunk"),         # uint16 port with 1 byte
    (b"\x02\x10\x07\x11" + b"\x00" * 30, "version"),                  # v2, unknown family
    (b"\x02\x10\x02\x11" + b"\x00" * 10, "short"),                    # v2 header cut
])
def test_malformed_reasons(codec_impl, data, reason):
    from hepfast.wire.reasons import INVALID_NAMES

    assert INVALID_NAMES[codec_impl.reason(data)] == reason
    with pytest.raises(HepError) as ei:
        codec_impl.decode(data)
    assert ei.value.name == reason


def test_vendor_and_unknown_chunks_kept_byte_exact(codec_impl):
    pkt = encode_packet([(0, 1, b"\x02"), (7, 0x0F, b"not the payload"), (0, 0x0F, b"real"),
                         (0, 0x0FFF, b"\x00\x01"), (8, 0x80, b"conv")])
    p = codec_impl.decode(pkt)
    assert p.payload == b"real"
    assert codec.rewrite(pkt, set={"node_name": "n"}, impl=codec_impl)[:len(pkt)][6:] == pkt[6:]
    assert codec_impl.decode(codec.rewrite(pkt, delete=["7:0x000f"], impl=codec_impl)).chunks == \
        [c for c in p.chunks if c[0] != 7]


def test_duplicates_last_wins_and_trailing_bytes(codec_impl):
    pkt = encode_packet([(0, 0x0C, struct.pack(">I", 1)), (0, 0x0C, struct.pack(">I", 2))])
    assert codec_impl.decode(pkt).capture_id == 2
    p = codec_impl.decode(pkt + b"trailing")
    assert p.total == len(pkt) and p.capture_id == 2
    assert codec.to_v3(pkt + b"junk", impl=codec_impl) == pkt


def test_family_inference(codec_impl):
    pkt = encode_packet([(0, 1, b"\x1e"), (0, 5, bytes(15) + b"\x01"), (0, 6, bytes(16))])
    assert codec_impl.decode(pkt).src_ip == "::1"            # 30 = AF_INET6 on macOS
    pkt = encode_packet([(0, 3, b"\x01\x02\x03\x04")])       # no family chunk
    assert codec_impl.decode(pkt).src_ip == "1.2.3.4"


def test_compressed_payload_passes_through(codec_impl):
    import zlib

    z = zlib.compress(b"REGISTER sip:x SIP/2.0\r\n\r\n")
    pkt = encode_packet([(0, 1, b"\x02"), (0, 0x10, z)])
    p = codec_impl.decode(pkt)
    assert p.compressed and p.payload == z
    assert codec.rewrite(pkt, set={"capture_id": 1}, impl=codec_impl)[6:6 + len(pkt) - 6] == \
        pkt[6:]


def test_rewrite_too_large_is_refused(codec_impl):
    pkt = encode_packet([(0, 0x0F, b"x" * 65000)])
    with pytest.raises(HepError) as ei:
        codec.rewrite(pkt, set={"node_name": "y" * 1000}, impl=codec_impl)
    assert ei.value.name == "length"


def test_hash_twins():
    from hepfast.wire import _codec
    from hepfast.wire import hashing

    for s in (b"", b"a", b"1-19387@127.0.0.1", bytes(range(256))):
        assert _codec.hash64(s) == hashing.hash64(s)
    for x in (0, 1, 2**63, 2**64 - 1, 12345678901234567):
        assert _codec.mix64(x) == hashing.mix64(x)


def test_batch_entry_points_agree(corpus_dir):
    import numpy as np

    from hepfast.wire import _codec

    pkts = all_corpus_packets()[:200] + [b"junk", b"HEP3\x00\x01"]
    buf = b"".join(pkts)
    lens = np.array([len(p) for p in pkts], dtype=np.int64)
    offs = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    r1 = np.zeros(len(pkts), np.uint8)
    r2 = np.zeros(len(pkts), np.uint8)
    assert _codec.parse_batch(buf, offs, lens, r1) == _pycodec.parse_batch(buf, offs, lens, r2) \
        == 200
    assert (r1 == r2).all()
    setbuf, skip = codec.build_set({"capture_id": 9})
    o1 = bytearray(len(buf) * 2)
    o2 = bytearray(len(buf) * 2)
    n1 = _codec.rewrite_batch(buf, offs, lens, setbuf, skip, np.frombuffer(o1, np.uint8))
    n2 = _pycodec.rewrite_batch(buf, offs, lens, setbuf, skip, o2)
    assert n1 == n2 and o1[:n1] == o2[:n2]
    with pytest.raises(ValueError):
        _codec.parse_batch(buf, offs + 10**6, lens, r1)


# ------------------------------------------------------------------ property tests

generic_types = st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 15, 16, 17, 19, 32,
                                 0x28, 0x29, 0x3F, 0x40, 0x1234])


@st.composite
def chunk_lists(draw):
    out = []
    for _ in range(draw(st.integers(0, 12))):
        vendor = draw(st.sampled_from([0, 0, 0, 3, 8]))
        ctype = draw(generic_types)
        from hepfast.wire.chunks import FIXED_SIZE, WIRE_TYPE_BY_ID
        size = FIXED_SIZE.get(WIRE_TYPE_BY_ID.get(ctype, ""), None) if vendor == 0 and \
            ctype < 64 and ctype not in (0x0D, 0x12) else None
        if vendor == 0 and ctype in (0x0D, 0x12):
            size = 2
        body = draw(st.binary(min_size=size or 0, max_size=size if size is not None else 40))
        out.append((vendor, ctype, body))
    return out


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(chunk_lists())
def test_random_chunk_lists_roundtrip(chunks):
    pkt = encode_packet(chunks)
    for impl in (codec.get_impl("compiled"), _pycodec):
        p = impl.decode(pkt)
        assert p.chunks == chunks
        assert codec.to_v3(pkt, impl=impl) == pkt


def _mutations():
    pkts = all_corpus_packets()[:40] or [SPEC_EXAMPLE]
    base = st.sampled_from(pkts + [SPEC_EXAMPLE])
    trunc = st.tuples(base, st.integers(0, 1000)).map(lambda t: t[0][:t[1]])
    flips = st.tuples(base, st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)),
                                     max_size=4)).map(_flip)
    lenfix = st.tuples(base, st.integers(0, 0xFFFF), st.integers(0, 40)).map(_set_len)
    return st.one_of(trunc, flips, lenfix, st.binary(max_size=300),
                     st.binary(max_size=60).map(lambda b: b"HEP3" + b),
                     st.binary(max_size=80).map(lambda b: b"\x02" + b))


def _flip(t):
    data, flips = bytearray(t[0]), t[1]
    for pos, bit in flips:
        if data:
            data[pos % len(data)] ^= 1 << bit
    return bytes(data)


def _set_len(t):
    data, value, where = bytearray(t[0]), t[1], t[2]
    if len(data) >= where + 2:
        data[where:where + 2] = struct.pack(">H", value)
    return bytes(data)


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations())
def test_mutations_never_crash_and_codecs_agree(data):
    comp = codec.get_impl("compiled")
    r1, r2 = comp.reason(data), _pycodec.reason(data)
    assert r1 == r2
    if r1 == 0:
        assert comp.decode(data) == _pycodec.decode(data)
        a = codec.rewrite(data, set={"capture_id": 5}, delete=["auth_key"], impl=comp)
        b = codec.rewrite(data, set={"capture_id": 5}, delete=["auth_key"], impl=_pycodec)
        assert a == b
        try:
            v2a = comp.to_v2(data)
        except HepError as e:
            with pytest.raises(HepError) as ei:
                _pycodec.to_v2(data)
            assert ei.value.reason == e.reason
        else:
            assert v2a == _pycodec.to_v2(data)
    else:
        for impl in (comp, _pycodec):
            with pytest.raises(HepError) as ei:
                impl.decode(data)
            assert ei.value.reason == r1


def test_corpus_dir_constant():
    assert CORPUS_DIR.name == "corpus"
