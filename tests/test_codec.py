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
from hepfast.wire.chunks import chunk_keys, encode_packet
from hepfast.wire.packet import HepError, Unconvertible
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
        # The capture id is replaced where it was, the correlation id removed, the three new
        # chunks go just before the payload in `set` order; every other chunk is unchanged.
        expected = []
        for c in before.chunks:
            if c[:2] == (0, 0x0F):
                expected += [(0, 0x13, b"edge-1"), (0, 0x20, struct.pack(">H", 355)),
                             (3, 0x0101, b"vendor")]
            if c[:2] == (0, 0x0C):
                expected.append((0, 0x0C, struct.pack(">I", 4242)))
            elif c[:2] != (0, 0x11):
                expected.append(c)
        assert after.chunks == expected
        assert after.total == len(out)


def _payload_end(pkt: bytes) -> int:
    """Offset just past the first payload chunk (0x000f/0x0010) of a HEPv3 packet, walked here
    from the bytes, independently of both codecs."""
    pos = 6
    while pos < len(pkt):
        vendor, ctype, clen = struct.unpack_from(">HHH", pkt, pos)
        if vendor == 0 and ctype in (0x0F, 0x10):
            return pos + clen
        pos += clen
    raise AssertionError("no payload chunk")


def _types(pkt: bytes) -> list[int]:
    out, pos = [], 6
    while pos < len(pkt):
        vendor, ctype, clen = struct.unpack_from(">HHH", pkt, pos)
        out.append(ctype if vendor == 0 else (vendor << 16) | ctype)
        pos += clen
    return out


def test_rewritten_corpus_keeps_sender_chunk_order(codec_impl, corpus_dir):
    """The bug report: setting capture_id moved chunk 12 after the payload (`... 11 15 12 19`),
    so a HEP dissector handed the SIP dissector trailing bytes. A replaced chunk keeps its place,
    an added one goes before the payload, and what follows the payload is byte for byte what
    the agent put there."""
    n = 0
    for pkt in all_corpus_packets():
        order = _types(pkt)
        out = codec.rewrite(pkt, set={"capture_id": 3001}, impl=codec_impl)
        assert _types(out) == order                                 # replaced in place
        out = codec.rewrite(pkt, set={"capture_id": 3001, "node_name": "edge-1"},
                            impl=codec_impl)
        at = order.index(0x0F)
        assert _types(out) == order[:at] + [0x13] + order[at:]
        end_in, end_out = _payload_end(pkt), _payload_end(out)
        assert out[end_out:] == pkt[end_in:]                        # nothing new after the payload
        assert out[_payload_start(out):end_out] == pkt[_payload_start(pkt):end_in]
        assert len(out) == struct.unpack_from(">H", out, 4)[0]     # no stray bytes at all
        assert codec_impl.decode(out).payload == codec_impl.decode(pkt).payload
        n += 1
    assert n == 1224


def _payload_start(pkt: bytes) -> int:
    pos = 6
    while pos < len(pkt):
        vendor, ctype, clen = struct.unpack_from(">HHH", pkt, pos)
        if vendor == 0 and ctype in (0x0F, 0x10):
            return pos
        pos += clen
    raise AssertionError("no payload chunk")


def test_chunks_after_the_payload_stay_after_it(codec_impl):
    """OpenSIPS puts its correlation id after the payload: an added chunk still goes before the
    payload, a replaced correlation id stays after it, and a deleted one leaves nothing."""
    pkt = encode_packet([(0, 1, b"\x02"), (0, 2, b"\x11"), (0, 0x0C, struct.pack(">I", 7)),
                         (0, 0x0F, b"INVITE sip:a SIP/2.0\r\n\r\n"), (0, 0x11, b"call-1")])
    out = codec.rewrite(pkt, set={"node_name": "n1", "correlation_id": "call-2"},
                        impl=codec_impl)
    assert _types(out) == [1, 2, 0x0C, 0x13, 0x0F, 0x11]
    assert out.endswith(struct.pack(">HHH", 0, 0x11, 12) + b"call-2")
    assert _types(codec.rewrite(pkt, delete=["correlation_id"], impl=codec_impl)) == \
        [1, 2, 0x0C, 0x0F]
    # duplicates of a replaced key: the first one is replaced in place, the others go
    dup = encode_packet([(0, 0x0C, b"\0\0\0\1"), (0, 0x13, b"a"), (0, 0x0C, b"\0\0\0\2"),
                         (0, 0x0F, b"x")])
    out = codec.rewrite(dup, set={"capture_id": 9}, impl=codec_impl)
    assert codec_impl.decode(out).chunks == [(0, 0x0C, b"\0\0\0\x09"), (0, 0x13, b"a"),
                                             (0, 0x0F, b"x")]
    # no payload chunk at all: added chunks go at the end
    nopay = encode_packet([(0, 1, b"\x02"), (0, 0x0C, b"\0\0\0\1")])
    assert _types(codec.rewrite(nopay, set={"node_name": "n", "capture_id": 2},
                                impl=codec_impl)) == [1, 0x0C, 0x13]


def test_rewrite_of_v2_input_adds_before_the_payload(codec_impl):
    raw = _v2(2, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    out = codec.rewrite(raw, set={"capture_id": 5, "node_name": "n"}, impl=codec_impl)
    assert _types(out) == [1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 0x13, 0x0F]
    assert codec_impl.decode(out).capture_id == 5


def test_long_set_list_replaces_once(codec_impl):
    """More than 64 set chunks (past the builder's bitmask): still one copy per key, in place."""
    names = {f"3:0x{0x100 + i:04x}": f"v{i}" for i in range(70)}
    last = 0x100 + 69
    pkt = encode_packet([(0, 1, b"\x02"), (3, last, b"old1"), (3, last, b"old2"),
                         (0, 0x0F, b"payload"), (3, last, b"old3"), (3, 0x100, b"x")])
    out = codec.rewrite(pkt, set=names, impl=codec_impl)
    chunks = codec_impl.decode(out).chunks
    assert chunks[0] == (0, 1, b"\x02")
    assert chunks[1] == (3, last, b"v69")                       # in place of old1
    assert [c for c in chunks if c[:2] == (3, last)] == [(3, last, b"v69")]
    assert [c for c in chunks if c[:2] == (3, 0x100)] == [(3, 0x100, b"v0")]
    assert chunks[-1] == (3, 0x100, b"v0")                      # replaced after the payload
    assert chunks.index((0, 0x0F, b"payload")) == 2 + 68       # 68 added before it
    assert out == codec.rewrite(pkt, set=names, impl=_pycodec)


def test_v3_v2_v3_keeps_what_v2_carries(codec_impl, corpus_dir):
    sip = [p for p in all_corpus_packets() if codec_impl.decode(p).proto_type == 1]
    for pkt in sip[::5]:
        a = codec_impl.decode(pkt)
        v2 = codec.rewrite(pkt, version=2, impl=codec_impl)
        assert v2[0] == 2
        b = codec_impl.decode(codec.to_v3(v2, impl=codec_impl))
        for f in ("proto_family", "proto_id", "src_ip", "dst_ip", "src_port", "dst_port",
                  "timestamp", "timestamp_us", "payload"):
            assert getattr(a, f) == getattr(b, f), f
        assert b.capture_id == a.capture_id & 0xFFFF
        assert b.proto_type == 1      # v2 carries raw SIP only


def test_v2_refuses_what_is_not_sip(codec_impl, corpus_dir):
    """HEPv2 has no proto-type field: the Kamailio log packets (type 100) and the rtpengine RTCP
    reports (type 5) would reach a v2 collector as SIP. Both codecs refuse them, with an error
    named after the drop reason the data plane counts."""
    refused = {}
    for pkt in all_corpus_packets():
        ptype = codec_impl.decode(pkt).proto_type
        if ptype == 1:
            continue
        for call, kw in ((codec_impl.to_v2, {}),
                         (codec.rewrite, {"set": {"capture_id": 1}, "version": 2,
                                          "impl": codec_impl})):
            with pytest.raises(Unconvertible) as ei:
                call(pkt, **kw)
            assert ei.value.name == "unconvertible" and isinstance(ei.value, HepError)
            assert "not SIP" in str(ei.value)
        refused[ptype] = refused.get(ptype, 0) + 1
    assert refused == {100: 80, 5: 24}
    # a rule that makes a packet SIP makes it convertible
    log = next(p for p in all_corpus_packets() if codec_impl.decode(p).proto_type == 100)
    assert codec.rewrite(log, set={"proto_type": 1}, version=2, impl=codec_impl)[0] == 2
    # no proto-type chunk at all: not known to be SIP either
    bare = encode_packet([(0, 1, b"\x02"), (0, 3, bytes(4)), (0, 4, bytes(4)), (0, 0x0F, b"x")])
    with pytest.raises(Unconvertible, match="no proto type"):
        codec_impl.to_v2(bare)


@pytest.mark.parametrize("version", [1, 2])
def test_v12_near_the_size_limit(codec_impl, version):
    """A v1/v2 datagram close to 65535 bytes is valid, but its v3 form (chunk headers added) is
    longer than a HEP length field can say. decode shows the chunks of that form (both codecs
    the same list), and converting it to v3 is refused as "length"."""
    hdr = 28 if version == 2 else 16
    raw = _v2(2, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), version=version,
              payload=b"M" * (65535 - hdr))
    assert len(raw) == 65535
    p = codec_impl.decode(raw)
    assert p.chunks == _pycodec.decode(raw).chunks
    assert [t for _v, t, _b in p.chunks] == ([1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 15] if version == 2
                                             else [1, 2, 3, 4, 7, 8, 11, 15])
    assert p.chunks[-1] == (0, 0x0F, b"M" * (65535 - hdr)) and p.payload == p.chunks[-1][2]
    with pytest.raises(HepError) as ei:
        codec.to_v3(raw, impl=codec_impl)
    assert ei.value.name == "length"
    # still sendable as v2 when it is SIP: the v2 form is the same size
    if version == 2:
        assert codec_impl.to_v2(raw) == raw


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
    out = codec.rewrite(pkt, set={"node_name": "n"}, impl=codec_impl)
    i = pkt.index(b"\x00\x00\x00\x0f\x00\x0areal")     # the generic payload chunk
    assert out[6:i] == pkt[6:i] and out[i + 7:] == pkt[i:]  # node name (7 bytes) goes before it
    assert out[i:i + 7] == struct.pack(">HHH", 0, 0x13, 7) + b"n"
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
    out = codec.rewrite(pkt, set={"capture_id": 1}, impl=codec_impl)
    assert out[6:13] == pkt[6:13]                                # family
    assert out[13:23] == struct.pack(">HHHI", 0, 0x0C, 10, 1)     # added before the payload
    assert out[23:] == pkt[13:]                                  # compressed payload untouched


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


set_names = st.sampled_from(["capture_id", "node_name", "correlation_id", "auth_key",
                             "0x0020", "3:0x0101", "8:0x0080", "proto_type"])
set_values = {"capture_id": 77, "node_name": "edge", "correlation_id": "c-1", "auth_key": "k",
              "0x0020": 3, "3:0x0101": "v", "8:0x0080": "w", "proto_type": 1}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(chunk_lists(), st.lists(set_names, max_size=4, unique=True),
       st.lists(set_names, max_size=3, unique=True))
def test_random_rewrites_agree(chunks, sets, deletes):
    """Replace-in-place and add-before-payload give the same bytes in both codecs, whatever the
    chunk order, duplicates and vendor chunks."""
    pkt = encode_packet(chunks)
    kw = {"set": {n: set_values[n] for n in sets}, "delete": deletes}
    try:
        a = codec.rewrite(pkt, impl=codec.get_impl("compiled"), **kw)
    except HepError as e:
        with pytest.raises(HepError) as ei:
            codec.rewrite(pkt, impl=_pycodec, **kw)
        assert ei.value.reason == e.reason
        return
    assert a == codec.rewrite(pkt, impl=_pycodec, **kw)
    touched = {k for n in list(sets) + deletes for k in chunk_keys(n)}
    kept = [c for c in chunks if (c[0], c[1]) not in touched]
    assert [c for c in _pycodec.decode(a).chunks if c in kept] == kept


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


# ---------------------------------------------------------------- chunk cap (parsing cost bound)

def _many_chunks(n: int, sip: bool = True) -> bytes:
    """A valid SIP-over-IPv4 HEPv3 packet of exactly n chunks (n >= 9): the usual fixed chunks,
    empty vendor chunks as filler, the payload last."""
    head = [(0, 1, b"\x02"), (0, 2, b"\x11"), (0, 3, bytes([10, 0, 0, 1])),
            (0, 4, bytes([10, 0, 0, 2])), (0, 7, struct.pack(">H", 5060)),
            (0, 8, struct.pack(">H", 5080)), (0, 0x0B, b"\x01" if sip else b"\x05"),
            (0, 0x0C, struct.pack(">I", 2001))]
    filler = [(9, 0x200, b"")] * (n - len(head) - 1)
    return encode_packet(head + filler + [(0, 0x0F, b"OPTIONS sip:a SIP/2.0\r\n\r\n")])


def test_chunk_cap_default(codec_impl):
    from hepfast.constants import DEFAULT_MAX_CHUNKS
    from hepfast.wire.reasons import CHUNKS, INVALID_NAMES

    assert INVALID_NAMES[CHUNKS] == "chunks" and _pycodec.CHUNKS == CHUNKS
    at_cap = _many_chunks(DEFAULT_MAX_CHUNKS)
    assert codec_impl.reason(at_cap) == 0
    assert len(codec_impl.decode(at_cap).chunks) == DEFAULT_MAX_CHUNKS
    over = _many_chunks(DEFAULT_MAX_CHUNKS + 1)
    assert codec_impl.reason(over) == CHUNKS
    with pytest.raises(HepError) as ei:
        codec_impl.decode(over)
    assert ei.value.name == "chunks"


@pytest.mark.parametrize("cap", [9, 16, 100, 10_000])
def test_chunk_cap_argument(codec_impl, cap):
    from hepfast.wire.reasons import CHUNKS

    assert codec_impl.reason(_many_chunks(cap), max_chunks=cap) == 0
    assert codec_impl.reason(_many_chunks(cap + 1), max_chunks=cap) == CHUNKS
    assert codec_impl.reason(_many_chunks(cap + 1), max_chunks=cap + 1) == 0


def test_chunk_cap_is_checked_before_the_next_chunk_is_read(codec_impl):
    """Past the cap nothing more is read: a malformed chunk there is reported as "chunks"; bytes
    after the HEP length (not part of the packet) count for nothing."""
    from hepfast.wire.reasons import CHUNK, CHUNKS

    pkt = _many_chunks(16)
    broken = bytearray(pkt + b"\x00\x00\x00")                       # 3 bytes: not a chunk
    broken[4:6] = struct.pack(">H", len(broken))
    assert codec_impl.reason(bytes(broken), max_chunks=17) == CHUNK
    assert codec_impl.reason(bytes(broken), max_chunks=16) == CHUNKS
    assert codec_impl.reason(pkt + b"\x00" * 12, max_chunks=16) == 0


def test_ten_thousand_chunk_packet_is_refused_by_default(codec_impl):
    from hepfast.wire.reasons import CHUNKS

    huge = _many_chunks(10_000)
    assert len(huge) < 65536
    assert codec_impl.reason(huge) == CHUNKS
    assert codec_impl.reason(huge, max_chunks=16384) == 0     # the config's upper bound


def test_rewrite_at_the_cap_may_add_chunks(codec_impl):
    """The cap bounds input: a packet at the cap still rewrites (v3 and v2) with set chunks that
    take the result past it, and both codecs build the same bytes."""
    from hepfast.constants import DEFAULT_MAX_CHUNKS

    pkt = _many_chunks(DEFAULT_MAX_CHUNKS)
    for version in (3, 2):
        out = codec.rewrite(pkt, set={"node_name": "edge-1", "3:0x0101": "x"}, version=version,
                            impl=codec_impl)
        assert out == codec.rewrite(pkt, set={"node_name": "edge-1", "3:0x0101": "x"},
                                    version=version, impl=_pycodec)
    assert codec_impl.decode(codec.rewrite(pkt, version=2, impl=codec_impl)).capture_id == 2001


def test_decode_takes_the_chunk_cap_on_both_codecs(codec_impl):
    """decode(data, max_chunks) is the same API on the compiled codec and its pure twin."""
    from hepfast.wire.packet import HepError

    pkt = encode_packet([(0, 0x0b, b"\x01")] + [(0x1234, 0x0100 + i, b"v") for i in range(600)]
                        + [(0, 0x0f, b"x")])
    with pytest.raises(HepError) as err:
        codec_impl.decode(pkt)
    assert err.value.reason == 8                            # "chunks", over the default 512
    p = codec_impl.decode(pkt, 1000)
    assert sum(1 for c in p.chunks if c[0] == 0x1234) == 600
