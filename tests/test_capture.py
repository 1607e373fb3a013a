"""Capture files: pcap/pcapng readers on the corpus and on files written here (every link type,
IPv6, VLAN, IP options and fragments), TCP reassembly, HEP and SIP stream framing."""
from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hepfast.tools import capture
from hepfast.wire import chunks
from hepfast.tools.capture import (
    CaptureError, Datagram, StreamError, TcpSegment, build_frame, iter_hep_messages, read_capture,
    split_hep_stream, split_sip_stream, tcp_datagrams, write_pcap, write_pcapng,
)

UDP4 = Datagram(1700000000, 123456, 4, 17, "10.1.2.3", "10.9.8.7", 5060, 9060, b"hello udp")
UDP6 = Datagram(1700000001, 999999, 6, 17, "2001:db8::1", "fe80::2", 5061, 9061, b"v6 payload")


def _hep(payload: bytes = b"x", ptype: int = 1) -> bytes:
    return chunks.encode_packet([(0, 1, b"\x02"), (0, 2, b"\x11"), (0, 11, bytes([ptype])),
                                 (0, 15, payload)])


def _sip(i: int, body: bytes = b"", compact: bool = False) -> bytes:
    cl = b"l" if compact else b"Content-Length"
    return (b"MESSAGE sip:bob@example.com SIP/2.0\r\nCall-ID: call-%d\r\n%s: %d\r\n\r\n"
            % (i, cl, len(body)) + body)


# ------------------------------------------------------------------------------- corpus

def test_corpus_pcap_payloads_are_the_hepraw_records(corpus_dir, corpus_name):
    pcap = corpus_dir / f"{corpus_name}.pcap"
    dgs = list(read_capture(pcap))
    records = list(capture.read_hepraw(corpus_dir / f"{corpus_name}.hepraw"))
    assert len(dgs) == len(records) > 0
    assert [d.data for d in dgs] == records
    assert all(d.family == 4 and d.ip_proto == 17 and d.dst_ip == "127.0.0.1"
               and d.dst_port == 9060 for d in dgs)
    assert all(1795822000 < d.ts_sec < 1795823000 and 0 <= d.ts_usec < 1_000_000 for d in dgs)
    assert [m for _dg, m in iter_hep_messages(pcap)] == records
    assert capture.file_kind(pcap) == "pcap"
    assert capture.file_kind(corpus_dir / f"{corpus_name}.hepraw") == "hepraw"


def test_hepraw_round_trip_and_content_detection(tmp_path):
    recs = [_hep(b"a"), _hep(b"bb"), b"\x02" + bytes(40)]
    f = tmp_path / "looks-like.pcap"            # the name lies; the content decides
    assert capture.write_hepraw(f, recs) == 3
    assert list(capture.read_hepraw(f)) == recs
    assert [m for dg, m in iter_hep_messages(f)] == recs
    assert all(dg is None for dg, _m in iter_hep_messages(f))


def test_not_a_capture(tmp_path):
    f = tmp_path / "x.pcap"
    f.write_bytes(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(CaptureError, match="not a pcap or pcapng"):
        list(read_capture(f))
    with pytest.raises(CaptureError, match="neither pcap, pcapng nor .hepraw"):
        list(iter_hep_messages(f))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(CaptureError):
        list(read_capture(empty))


# ------------------------------------------------------------------------------- writing + reading

@pytest.mark.parametrize("linktype", [0, 1, 101, 113, 276])
@pytest.mark.parametrize("nanosecond,big_endian", [(False, False), (True, True), (True, False)])
def test_pcap_link_types_round_trip(tmp_path, linktype, nanosecond, big_endian):
    f = tmp_path / "t.pcap"
    assert write_pcap(f, [UDP4, UDP6], linktype, nanosecond=nanosecond,
                      big_endian=big_endian) == 2
    assert list(read_capture(f)) == [UDP4, UDP6]


@pytest.mark.parametrize("tsresol,big_endian,step", [(6, False, 1), (9, True, 1), (3, False, 1000),
                                                     (0x80 | 20, False, None)])
def test_pcapng_round_trip(tmp_path, tsresol, big_endian, step):
    f = tmp_path / "t.pcapng"
    dgs = [UDP4, UDP6]
    write_pcapng(f, dgs, tsresol=tsresol, big_endian=big_endian)
    got = list(read_capture(f))
    assert [g._replace(ts_usec=0) for g in got] == [d._replace(ts_usec=0) for d in dgs]
    if step:            # decimal resolution: exact to what the unit can hold
        assert [g.ts_usec for g in got] == [d.ts_usec // step * step for d in dgs]
    else:               # 2^-20 s units: within a microsecond (rounding of both conversions)
        assert all(0 <= d.ts_usec - g.ts_usec <= 1 for g, d in zip(got, dgs, strict=True))


def test_pcapng_interfaces_sections_and_simple_blocks(tmp_path):
    f1, f2 = tmp_path / "a.pcapng", tmp_path / "b.pcapng"
    write_pcapng(f1, [(0, UDP4), (1, UDP6), (2, UDP4)], linktypes=(1, 113, 276))
    assert list(read_capture(f1)) == [UDP4, UDP6, UDP4]
    write_pcapng(f2, [UDP6], linktypes=(101,), big_endian=True, simple=True)
    # Two sections back to back, the second in the other byte order: interfaces restart.
    both = tmp_path / "both.pcapng"
    both.write_bytes(f1.read_bytes() + f2.read_bytes())
    got = list(read_capture(both))
    assert got[:3] == [UDP4, UDP6, UDP4]
    assert got[3] == UDP6._replace(ts_sec=0, ts_usec=0)      # SPBs carry no timestamp


def _raw_pcap(path, frames, linktype=1):
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype))
        for fr in frames:
            f.write(struct.pack("<IIII", 7, 8, len(fr), len(fr)) + fr)


def _eth(ip: bytes, etype: int = 0x0800, tags=()) -> bytes:
    vl = b"".join(struct.pack(">HH", tpid, vid) for tpid, vid in tags)
    return b"\x02" * 6 + b"\x04" * 6 + vl + struct.pack(">H", etype) + ip


def _ipv4_udp(payload: bytes, options: bytes = b"", frag: int = 0, proto: int = 17) -> bytes:
    udp = struct.pack(">HHHH", 1000, 2000, 8 + len(payload), 0) + payload
    ihl = 5 + len(options) // 4
    return struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(udp), 1, frag, 64, proto,
                       0, bytes([1, 2, 3, 4]), bytes([5, 6, 7, 8])) + options + udp


def test_vlan_ip_options_fragments_and_padding(tmp_path):
    f = tmp_path / "l2.pcap"
    frames = [
        _eth(_ipv4_udp(b"vlan"), tags=[(0x8100, 42)]),
        _eth(_ipv4_udp(b"qinq"), tags=[(0x88A8, 1), (0x8100, 2)]),
        _eth(_ipv4_udp(b"opts", options=b"\x01\x01\x01\x00")),         # IHL 6
        _eth(_ipv4_udp(b"first", frag=0x2000)),                         # MF set, offset 0: kept
        _eth(_ipv4_udp(b"later", frag=0x0010)),                         # offset 16: skipped
        _eth(_ipv4_udp(b"pad") + b"\0" * 20),                           # Ethernet padding
        _eth(_ipv4_udp(b"arp"), etype=0x0806),
        _eth(_ipv4_udp(b"icmp", proto=1)),
    ]
    _raw_pcap(f, frames)
    got = list(read_capture(f))
    assert [d.data for d in got] == [b"vlan", b"qinq", b"opts", b"first", b"pad"]
    assert got[0] == Datagram(7, 8, 4, 17, "1.2.3.4", "5.6.7.8", 1000, 2000, b"vlan")


def test_ipv6_extension_headers(tmp_path):
    udp = struct.pack(">HHHH", 3000, 4000, 8 + 3, 0) + b"ext"
    hop = bytes([60, 0]) + bytes(6)                     # hop-by-hop -> destination options
    dst = bytes([44, 1]) + bytes(14)                    # dest opts (16 bytes) -> fragment
    frag_first = bytes([17, 0, 0, 0]) + bytes(4)        # fragment offset 0 -> UDP
    frag_later = bytes([17, 0, 0, 0x10]) + bytes(4)     # offset 2: skipped
    src, dsta = bytes(15) + b"\x01", bytes(15) + b"\x02"

    def v6(ext):
        body = ext + udp
        return struct.pack(">IHBB16s16s", 6 << 28, len(body), 0, 64, src, dsta) + body

    f = tmp_path / "v6.pcap"
    _raw_pcap(f, [_eth(v6(hop + dst + frag_first), 0x86DD), _eth(v6(hop + dst + frag_later),
                                                                 0x86DD)])
    got = list(read_capture(f))
    assert got == [Datagram(7, 8, 6, 17, "::1", "::2", 3000, 4000, b"ext")]


def test_truncated_and_garbage_frames_are_skipped(tmp_path):
    good = build_frame(UDP4)
    rng = random.Random(7)
    frames = [good[:10], good[:30], good[:41], b"", bytes(rng.randrange(256) for _ in range(80)),
              good]
    f = tmp_path / "junk.pcap"
    _raw_pcap(f, frames)
    got = list(read_capture(f))
    assert got[-1] == UDP4._replace(ts_sec=7, ts_usec=8)
    # A file cut in the middle of a record ends the capture without an error.
    f.write_bytes(f.read_bytes()[:-5])
    assert UDP4.data not in [d.data for d in read_capture(f)]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=120), max_size=12), st.sampled_from([0, 1, 101, 113, 276, 9]))
def test_random_frames_never_raise(tmp_path_factory, frames, linktype):
    f = tmp_path_factory.mktemp("fuzz") / "r.pcap"
    _raw_pcap(f, [build_frame(UDP4, linktype if linktype != 9 else 1)[:14] + fr
                  for fr in frames], linktype)
    for d in read_capture(f):
        assert d.family in (4, 6) and d.ip_proto in (6, 17)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_random_pcapng_bodies_never_raise(tmp_path_factory, junk):
    f = tmp_path_factory.mktemp("fuzzng") / "r.pcapng"
    write_pcapng(f, [UDP4])
    f.write_bytes(f.read_bytes() + junk)
    assert list(read_capture(f))[0] == UDP4


# ------------------------------------------------------------------------------- TCP

def _stream(dgs, src="10.0.0.1"):
    return b"".join(d.data for d in dgs if d.src_ip == src)


def _tcp(tmp_path, segs, name="tcp.pcap"):
    f = tmp_path / name
    write_pcap(f, segs)
    return list(read_capture(f))


def test_tcp_in_order_and_one_datagram_per_segment(tmp_path):
    data = bytes(range(256)) * 20
    segs = tcp_datagrams(data, src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=1, dst_port=2,
                         mss=500)
    got = _tcp(tmp_path, segs)
    assert _stream(got) == data
    assert len(got) == len(segs) - 1                    # the SYN carries nothing
    assert all(d.ip_proto == 6 and (d.src_port, d.dst_port) == (1, 2) for d in got)


def test_tcp_out_of_order_and_retransmissions(tmp_path):
    data = b"".join(b"<%04d>" % i for i in range(200))
    segs = tcp_datagrams(data, src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=1, dst_port=2,
                         mss=97)
    body = segs[1:]
    rng = random.Random(3)
    shuffled = body[:]
    rng.shuffle(shuffled)
    dup = [rng.choice(body) for _ in range(30)]
    # Partial overlap: a resend that starts inside already delivered data.
    s = body[3]
    overlap = TcpSegment(s.dg._replace(data=s.dg.data[40:] + body[4].dg.data), s.seq + 40)
    got = _tcp(tmp_path, [segs[0], *shuffled, *dup, overlap])
    assert _stream(got) == data
    got2 = _tcp(tmp_path, [segs[0], body[0], body[1], body[1], body[3], overlap, body[2],
                           *body[4:]], "b.pcap")
    assert _stream(got2) == data
    assert all(d.data for d in got + got2)            # a resend never yields an empty datagram


def test_tcp_without_syn_and_sequence_wraparound(tmp_path):
    data = b"0123456789" * 100
    segs = tcp_datagrams(data, src_ip="::1", dst_ip="::2", src_port=5, dst_port=6, mss=64,
                         isn=0xFFFFFF00)
    got = _tcp(tmp_path, segs)
    assert _stream(got, "::1") == data and got[0].family == 6
    # Capture started mid-connection: the stream starts at the first data seen.
    got = _tcp(tmp_path, segs[3:], "nosyn.pcap")
    assert _stream(got, "::1") == data[64 * 2:]


def test_tcp_directions_and_new_connection(tmp_path):
    a = tcp_datagrams(b"client says hi", src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=7,
                      dst_port=8, isn=100)
    b = tcp_datagrams(b"server answers", src_ip="10.0.0.2", dst_ip="10.0.0.1", src_port=8,
                      dst_port=7, isn=5000)
    c = tcp_datagrams(b"second conn", src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=7,
                      dst_port=8, isn=99999)
    rst = TcpSegment(a[0].dg, 200, capture.TCP_RST)
    got = _tcp(tmp_path, [*a, *b, rst, *c])
    assert _stream(got) == b"client says hisecond conn"
    assert _stream(got, "10.0.0.2") == b"server answers"


def test_tcp_gap_is_given_up_at_the_bound_and_at_the_end(tmp_path):
    data = bytes(range(100)) * 10
    segs = tcp_datagrams(data, src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=1, dst_port=2,
                         mss=10)
    lost = segs[5]                                     # never captured
    r = capture.TcpReassembler(max_segments=8)
    fed = []
    f = tmp_path / "gap.pcap"
    write_pcap(f, [s for s in segs if s is not lost])
    for p in capture._packets(f):
        fed.extend(r.feed(p))
    out = b"".join(d.data for d in fed)
    assert out == data[:40] + data[50:]               # only the lost 10 bytes are missing
    # Read with the default bound: held until the end of the capture, then delivered.
    assert _stream(list(read_capture(f))) == data[:40] + data[50:]


def test_sip_over_tcp_split_across_segments(tmp_path):
    msgs = [_sip(i, b"body %d\r\n" % i) for i in range(5)]
    stream = b"\r\n\r\n".join(msgs)                   # with keep-alives between messages
    segs = tcp_datagrams(stream, src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=5060,
                         dst_port=5060, sizes=[7, 50, 3, 200, 1, 90])
    got = _tcp(tmp_path, [segs[0], *reversed(segs[1:])])
    buf, out = b"", []
    for d in got:
        m, buf = split_sip_stream(buf + d.data)
        out += m
    assert out == msgs and buf == b""


def test_hep_over_tcp_and_udp_on_any_port(tmp_path):
    hs = [_hep(b"m%d" % i * (i * 30)) for i in range(6)]
    segs = tcp_datagrams(b"".join(hs), src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=4000,
                         dst_port=9062, sizes=[3, 4, 100, 17])
    garbage_flow = tcp_datagrams(b"GET / HTTP/1.1\r\n\r\n", src_ip="10.0.0.3", dst_ip="10.0.0.2",
                                 src_port=4001, dst_port=9062)
    udp = [UDP4._replace(data=hs[0], dst_port=12345), UDP4._replace(data=b"SIP/2.0 200 OK"),
           UDP4._replace(data=b"\x80\x00" + bytes(30))]                  # RTP: not HEP
    f = tmp_path / "hep.pcap"
    write_pcap(f, [*udp, *garbage_flow, *segs])
    got = [m for _dg, m in iter_hep_messages(f)]
    assert got == [hs[0], *hs]


def test_hep_tcp_stream_broken_then_resynced(tmp_path):
    hs = [_hep(b"k%d" % i) for i in range(3)]
    bad = b"HEP3\x00\x02junk"                          # length < 6: the stream is closed
    segs = tcp_datagrams(hs[0] + bad, src_ip="10.0.0.1", dst_ip="10.0.0.2", src_port=1,
                         dst_port=2, sizes=[len(hs[0]), len(bad)])
    more = tcp_datagrams(b"tail" + hs[1] + hs[2], src_ip="10.0.0.1", dst_ip="10.0.0.2",
                         src_port=1, dst_port=2, isn=segs[-1].seq + len(bad) - 1, syn=False,
                         sizes=[4, len(hs[1]), len(hs[2])])
    f = tmp_path / "resync.pcap"
    write_pcap(f, [*segs, *more])
    assert [m for _dg, m in iter_hep_messages(f)] == hs


def test_looks_like_hep():
    v1 = bytes([1, 16, 2, 17]) + bytes(12) + b"SIP"
    v2_6 = bytes([2, 52, 10, 6]) + bytes(48) + b"SIP"
    assert capture.looks_like_hep(_hep()) and capture.looks_like_hep(v1)
    assert capture.looks_like_hep(v2_6)
    assert not capture.looks_like_hep(bytes([2, 28, 2, 17]) + bytes(20))   # v2 too short
    assert not capture.looks_like_hep(bytes([1, 16, 7, 17]) + bytes(20))   # family 7
    assert not capture.looks_like_hep(bytes([1, 1, 2, 0]) + bytes(20))     # STUN-like
    assert not capture.looks_like_hep(b"")


# ------------------------------------------------------------------------------- framing

def test_split_hep_stream():
    a, b = _hep(b"one"), _hep(b"two" * 50)
    assert split_hep_stream(b"") == ([], b"")
    assert split_hep_stream(a + b) == ([a, b], b"")
    assert split_hep_stream(a + b[:9]) == ([a], b[:9])
    assert split_hep_stream(bytearray(a + b"HE")) == ([a], b"HE")
    for junk in (b"HEP2\x00\x10" + bytes(10), a + b"XEP3\x00\x10", b"HEP3\x00\x05", b"XY"):
        with pytest.raises(StreamError):
            split_hep_stream(junk)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=6), st.randoms())
def test_split_hep_stream_incremental(payloads, rnd):
    msgs = [_hep(p) for p in payloads]
    stream = b"".join(msgs)
    out, buf, pos = [], b"", 0
    while pos < len(stream):
        step = rnd.randint(1, 64)
        m, buf = split_hep_stream(buf + stream[pos:pos + step])
        out += m
        pos += step
    assert out == msgs and buf == b""


def test_split_sip_stream():
    m1, m2, m3 = _sip(1, b"hello"), _sip(2), _sip(3, b"xyz" * 10, compact=True)
    assert split_sip_stream(b"\r\n\r\n" + m1 + b"\r\n" + m2 + m3) == ([m1, m2, m3], b"")
    assert split_sip_stream(m1[:-2]) == ([], m1[:-2])                  # body incomplete
    assert split_sip_stream(m1 + m2[:20]) == ([m1], m2[:20])           # headers incomplete
    assert split_sip_stream(b"\r\n") == ([], b"")                      # keep-alive pong only
    no_cl = b"OPTIONS sip:x SIP/2.0\r\nCall-ID: q\r\n\r\n"
    assert split_sip_stream(no_cl + m1) == ([no_cl, m1], b"")
    with pytest.raises(StreamError, match="Content-Length"):
        split_sip_stream(b"INVITE sip:x SIP/2.0\r\nContent-Length: ten\r\n\r\n")
    with pytest.raises(StreamError, match="no end of SIP headers"):
        split_sip_stream(b"INVITE sip:x SIP/2.0\r\nX: " + b"a" * capture.SIP_MAX_HEADERS)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=200), st.booleans(), st.sampled_from(
    [b"", b"\r\n", b"\r\n\r\n"])), min_size=1, max_size=5), st.randoms())
def test_split_sip_stream_incremental(parts, rnd):
    msgs = [_sip(i, body, compact) for i, (body, compact, _ka) in enumerate(parts)]
    stream = b"".join(ka + m for m, (_b, _c, ka) in zip(msgs, parts, strict=True))
    out, buf, pos = [], b"", 0
    while pos < len(stream):
        step = rnd.randint(1, 80)
        m, buf = split_sip_stream(buf + stream[pos:pos + step])
        out += m
        pos += step
    assert out == msgs and buf == b""
