"""Per-destination rewrites end to end: a destination's own auth key replaces (or strip_auth_key
removes) the agent's on the copies it receives, on top of the rule's rewrite; other destinations
get the packet as the rule made it. Also a packet with more chunks than the default cap, on a
switch whose max_chunks allows it, survives those rebuilds."""
from __future__ import annotations


from hepfast.wire import codec
from hepfast.wire.chunks import encode_packet
from tests.switchhelp import corpus_messages, SwitchProcess, check_accounting


def corpus(n: int) -> list[bytes]:
    return corpus_messages("kamailio", limit=n)


def test_destination_auth_key_set_and_strip(tmp_path, sinks):
    plain, keyed, stripped = sinks(3)
    pkts = [codec.rewrite(p, {"auth_key": "agent-key"}) for p in corpus(60)]
    sw = SwitchProcess(tmp_path, f"""
        [switch]
        workers = 1
        [[listeners]]
        name = "agents"
        listen = "127.0.0.1:0"
        [destinations.plain]
        targets = ["127.0.0.1:{plain.port}"]
        [destinations.keyed]
        targets = ["127.0.0.1:{keyed.port}"]
        auth_key = "collector-key"
        [destinations.stripped]
        targets = ["127.0.0.1:{stripped.port}"]
        strip_auth_key = true
        [[rules]]
        name = "all"
        set.capture_id = 4242
        forward = ["plain", "keyed", "stripped"]
        """, extra=["--no-admin"])
    try:
        sw.send(pkts)
        for s in (plain, keyed, stripped):
            assert s.wait_for(len(pkts), timeout=30)
        summary = sw.stop()
    finally:
        sw.kill()
    for s, key in ((plain, b"agent-key"), (keyed, b"collector-key"), (stripped, None)):
        for raw in s.packets:
            p = codec.decode(raw)
            assert p.capture_id == 4242                       # the rule's rewrite, everywhere
            assert p.auth_key == (key.decode() if key else None)
    want = sorted(codec.rewrite(p, {"capture_id": 4242}) for p in pkts)
    assert sorted(plain.packets) == want                      # untouched by the others
    check_accounting(summary)


def test_many_chunks_survive_destination_rebuilds(tmp_path, sinks):
    """600 vendor chunks: over the default cap of 512, allowed by max_chunks = 1000; the
    destination's auth-key rebuild re-parses the switch's own output and must not refuse it."""
    keyed, = sinks(1)
    pkt = encode_packet([(0, 0x01, b"\x02"), (0, 0x02, b"\x11"), (0, 0x03, bytes([10, 0, 0, 1])),
                         (0, 0x04, bytes([10, 0, 0, 2])), (0, 0x07, b"\x13\xc4"),
                         (0, 0x08, b"\x13\xc4"), (0, 0x0b, b"\x01"), (0, 0x0c, b"\0\0\0\x01")]
                        + [(0x1234, 0x0100 + i, b"v") for i in range(600)]
                        + [(0, 0x0f, b"OPTIONS sip:x SIP/2.0\r\nCall-ID: many\r\n\r\n")])
    sw = SwitchProcess(tmp_path, f"""
        [switch]
        workers = 1
        max_chunks = 1000
        [[listeners]]
        name = "agents"
        listen = "127.0.0.1:0"
        [destinations.keyed]
        targets = ["127.0.0.1:{keyed.port}"]
        auth_key = "k"
        [[rules]]
        name = "all"
        set.node_name = "edge"
        forward = ["keyed"]
        """, extra=["--no-admin"])
    try:
        sw.send([pkt] * 5)
        assert keyed.wait_for(5, timeout=30)
        summary = sw.stop()
    finally:
        sw.kill()
    from hepfast.wire import pycodec

    got = pycodec.decode(keyed.packets[0], max_chunks=2000)
    assert sum(1 for c in got.chunks if c[0] == 0x1234) == 600
    assert got.node_name == "edge" and got.auth_key == "k"
    assert summary["invalid_total"] == 0 and "too_big" not in summary["dropped"]
    check_accounting(summary)
