"""Compressed payloads (chunk 0x0010, zlib or gzip; issue 14) through `hepfast run`: they route on
their SIP method when a rule needs the payload, leave as each destination asks (keep, inflate,
compress: byte-checked), and a bomb or a corrupt stream is refused and counted while the worker
keeps forwarding."""
from __future__ import annotations

import collections
import gzip
import sys
import time
import zlib

import pytest

from hepfast.wire import codec
from hepfast.wire.chunks import encode_packet
from tests.switchhelp import SwitchProcess, agents_to, check_accounting, corpus_messages

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="recvmmsg/sendmmsg: Linux only")


def with_payload_chunk(pkt: bytes, ctype: int, body: bytes) -> bytes:
    """The packet with its payload chunk (0x000f) replaced, in place, by (0, ctype, body)."""
    p = codec.decode(pkt)
    return encode_packet([(v, ctype, body) if (v, t) == (0, 0x0F) else (v, t, b)
                          for v, t, b in p.chunks])


def zlib_form(pkt: bytes) -> bytes:
    return with_payload_chunk(pkt, 0x10, zlib.compress(codec.decode(pkt).payload))


def gzip_form(pkt: bytes) -> bytes:
    return with_payload_chunk(pkt, 0x10, gzip.compress(codec.decode(pkt).payload))


def _inflated(pkt: bytes) -> tuple:
    """The packet's chunks in order, a compressed payload's body replaced by what it inflates
    to (two zlib builds may encode the same bytes differently)."""
    return tuple((v, t, zlib.decompress(b, 47) if (v, t) == (0, 0x10) else b)
                 for v, t, b in codec.decode(pkt).chunks)


def _method(pkt: bytes) -> str:
    return codec.decode(pkt).payload.split(b" ", 1)[0].decode()


CONFIG = """
    [switch]
    workers = 1
    [[listeners]]
    name = "agents"
    listen = "127.0.0.1:0"
    [destinations.keep]
    targets = ["127.0.0.1:{keep}"]
    [destinations.inflate]
    targets = ["127.0.0.1:{inflate}"]
    payload = "inflate"
    [destinations.compress]
    targets = ["127.0.0.1:{compress}"]
    payload = "compress"
    [destinations.rest]
    targets = ["127.0.0.1:{rest}"]
    [[rules]]
    name = "invites"
    match.sip_method = "INVITE"
    forward = ["keep", "inflate", "compress"]
    [[rules]]
    name = "sip"
    match.proto_type = "sip"
    forward = ["rest"]
    """


def test_compressed_payloads_route_and_leave_as_asked(tmp_path, sinks):
    sip = corpus_messages("kamailio", sip_only=True)
    invites = [m for m in sip if _method(m) == "INVITE"]
    others = [m for m in sip if _method(m) != "INVITE"][:200]
    assert len(invites) == 240
    plain_inv, zlib_inv, gzip_inv = invites[:80], invites[80:160], invites[160:]
    zin = [zlib_form(m) for m in zlib_inv]
    gin = [gzip_form(m) for m in gzip_inv]
    zoth = [zlib_form(m) for m in others[:100]] + [gzip_form(m) for m in others[100:]]
    keep, infl, comp, rest = sinks(4)
    sw = SwitchProcess(tmp_path, CONFIG.format(keep=keep.port, inflate=infl.port,
                                               compress=comp.port, rest=rest.port),
                       extra=["--no-admin"])
    try:
        sw.send(plain_inv + zin + gin + zoth)
        for s, n in ((keep, 240), (infl, 240), (comp, 240), (rest, 200)):
            assert s.wait_for(n, timeout=30), (s.port, len(s.packets), n)
        time.sleep(0.3)
        summary = sw.stop()
    finally:
        sw.kill()
    C = collections.Counter
    # routed on their SIP method although compressed; "keep" gets the bytes as received
    assert C(keep.packets) == C(plain_inv + zin + gin)
    assert C(rest.packets) == C(zoth)
    # "inflate": the payload chunk inflated in its place, every other byte as sent
    assert C(infl.packets) == C(plain_inv + zlib_inv + gzip_inv)
    # "compress": plain payloads become 0x0010 zlib in place; compressed ones stay as they came
    came = set(zin + gin)
    assert C(p for p in comp.packets if p in came) == C(zin + gin)
    made = [p for p in comp.packets if p not in came]
    assert len(made) == 80
    for p in made:
        assert (0, 0x0F) not in [(v, t) for v, t, _b in codec.decode(p).chunks]
        body = next(b for v, t, b in codec.decode(p).chunks if (v, t) == (0, 0x10))
        assert body[:1] == b"\x78"                       # a zlib stream, as captagent sends
    assert C(map(_inflated, made)) == C(map(_inflated, map(zlib_form, plain_inv)))
    assert summary["rules"] == {"invites": 240, "sip": 200}
    assert summary["guard"]["inflated"] == 160 + 200
    assert summary["guard"]["compressed"] == 80
    assert summary["invalid_total"] == 0
    check_accounting(summary)


def test_bomb_and_corrupt_streams_refused_worker_keeps_forwarding(tmp_path, sinks):
    sip = corpus_messages("kamailio", sip_only=True)
    base = sip[0]
    bomb = with_payload_chunk(base, 0x10, zlib.compress(b"INVITE " + b"A" * 200_000))
    assert len(bomb) < 2000                       # small on the wire, 200 KB inflated
    gbomb = with_payload_chunk(base, 0x10, gzip.compress(b"A" * 100_000))
    corrupt = with_payload_chunk(base, 0x10, b"\x78\x9c" + bytes(range(40)))
    cut = with_payload_chunk(base, 0x10, zlib.compress(codec.decode(base).payload)[:-9])
    notz = with_payload_chunk(base, 0x10, b"not compressed at all")
    keep, infl, comp, rest = sinks(4)
    sw = SwitchProcess(tmp_path, CONFIG.format(keep=keep.port, inflate=infl.port,
                                               compress=comp.port, rest=rest.port),
                       extra=["--no-admin"])
    good = [zlib_form(m) for m in sip[:300]]
    try:
        sw.send([bomb, gbomb, corrupt, cut, notz] * 20 + good)
        n_inv = sum(1 for m in sip[:300] if _method(m) == "INVITE")
        assert rest.wait_for(300 - n_inv, timeout=30)
        assert keep.wait_for(n_inv, timeout=30)
        time.sleep(0.3)
        summary = sw.stop()
    finally:
        sw.kill()
    assert summary["invalid"] == {"compressed_too_big": 40, "compressed_corrupt": 60}
    assert summary["received"] == 300
    assert len(keep.packets) + len(rest.packets) == 300
    check_accounting(summary)


def test_compressed_payloads_pass_untouched_when_nothing_reads_them(tmp_path, sinks):
    """Without a rule that needs the payload nothing is inflated: a bomb is just bytes."""
    (out,) = sinks(1)
    base = corpus_messages("kamailio", sip_only=True)[0]
    bomb = with_payload_chunk(base, 0x10, zlib.compress(b"A" * 200_000))
    sw = SwitchProcess(tmp_path, agents_to(out.port, """
        [[rules]]
        name = "sip"
        match.proto_type = "sip"
        forward = ["out"]
        """), extra=["--no-admin"])
    try:
        sw.send([bomb] * 5)
        assert out.wait_for(5, timeout=30)
        summary = sw.stop()
    finally:
        sw.kill()
    assert out.packets == [bomb] * 5
    assert summary["guard"]["inflated"] == 0 and summary["invalid_total"] == 0


def test_a_hepv2_destination_gets_the_inflated_payload(tmp_path, sinks):
    """HEPv2 has no compressed-payload chunk: a v2 destination gets the payload inflated, as the
    plain copy of the same message would leave (even when no rule reads payloads), and a bomb
    is refused as it is for a reading rule."""
    (v2,) = sinks(1)
    sip = corpus_messages("kamailio", sip_only=True)[:150]
    base = sip[0]
    bomb = with_payload_chunk(base, 0x10, zlib.compress(b"A" * 200_000))
    sw = SwitchProcess(tmp_path, agents_to(v2.port, """
        [[rules]]
        name = "sip"
        match.proto_type = "sip"
        forward = ["old"]
        """, destination="""
        hep_version = 2
        """, name="old"), extra=["--no-admin"])
    try:
        sw.send(sip)
        assert v2.wait_for(150, timeout=30)
        sw.send([zlib_form(m) for m in sip[:75]] + [gzip_form(m) for m in sip[75:]] + [bomb])
        assert v2.wait_for(300, timeout=30)
        time.sleep(0.3)
        summary = sw.stop()
    finally:
        sw.kill()
    plain, inflated = v2.packets[:150], v2.packets[150:]
    assert all(p[0] == 2 for p in v2.packets)
    assert collections.Counter(inflated) == collections.Counter(plain)
    assert collections.Counter(codec.decode(p).payload for p in inflated) == \
        collections.Counter(codec.decode(m).payload for m in sip)
    assert summary["invalid"] == {"compressed_too_big": 1}
    assert summary["guard"]["inflated"] == 150
    check_accounting(summary)


def test_a_compressed_and_a_plain_copy_are_duplicates(tmp_path, sinks):
    """Dedup reads the inflated payload: one agent compressing and one not still send copies of
    one capture. (Listener dedup parses a whole batch ahead; malformed datagrams in the batch
    are still refused by reason.)"""
    (out,) = sinks(1)
    sip = corpus_messages("kamailio", sip_only=True)[:200]
    sw = SwitchProcess(tmp_path, agents_to(out.port, """
        [[rules]]
        name = "all"
        forward = ["out"]
        """, listener="""
        dedup = true
        dedup_window_ms = 120000
        """), extra=["--no-admin"])
    try:
        batch = []
        for i, m in enumerate(sip):
            first, second = (zlib_form(m), m) if i % 2 else (m, gzip_form(m))
            batch += [first, b"HEP3\x00\x05", second]
        sw.send(batch)
        assert out.wait_for(200, timeout=30)
        time.sleep(0.5)
        summary = sw.stop()
    finally:
        sw.kill()
    want = [zlib_form(m) if i % 2 else m for i, m in enumerate(sip)]
    assert collections.Counter(out.packets) == collections.Counter(want)
    assert summary["dropped"] == {"duplicate": 200}
    assert summary["invalid"] == {"length": 200}
    check_accounting(summary)
