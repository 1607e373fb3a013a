"""End-to-end tests of the UDP switch: real `hepfast run` processes, real sockets on loopback."""
from __future__ import annotations

import collections
import socket
import struct
import sys
import time

import pytest

from hepfast.wire import codec
from hepfast.wire import hashing
from hepfast.wire.chunks import encode_packet
from hepfast.tools.sink import Sink
from tests.conftest import corpus_names, load_corpus
from tests.switchhelp import SwitchProcess, check_accounting, free_udp_port, one_destination

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="recvmmsg/sendmmsg: Linux only")


def corpus(name_part: str) -> list[bytes]:
    for n in corpus_names():
        if name_part in n:
            return [p for p, _ in load_corpus(n)]
    pytest.skip("real-traffic corpus not found (expected ../shared/corpus)")


def pass_through(tmp_path, port: int, listener_extra: str = "") -> SwitchProcess:
    """One worker, one listener, every packet to one target through `switch.default`."""
    return SwitchProcess(tmp_path, f"""
        [switch]
        workers = 1
        default = "out"
        [[listeners]]
        name = "agents"
        listen = "127.0.0.1:0"
        {listener_extra}
        [destinations.out]
        targets = ["127.0.0.1:{port}"]
        """, extra=["--no-admin"])


def test_fanout_split_rewrite_drop(tmp_path, sinks):
    kam, rtp = corpus("kamailio"), corpus("rtpengine")
    a, b, q = sinks(3)
    sw = SwitchProcess(tmp_path, f"""
        [switch]
        workers = 1
        [admin]
        listen = "127.0.0.1:0"
        [[listeners]]
        name = "agents"
        listen = "127.0.0.1:0"
        [destinations.rewritten]
        targets = ["127.0.0.1:{a.port}"]
        [destinations.plain]
        targets = ["127.0.0.1:{b.port}"]
        [destinations.qos]
        targets = ["127.0.0.1:{q.port}"]
        [[rules]]
        name = "sip-rewritten"
        match.proto_type = ["sip"]
        set.capture_id = 3001
        set.node_name = "edge-1"
        forward = ["rewritten"]
        continue = true
        [[rules]]
        name = "sip-plain"
        match.proto_type = ["sip"]
        forward = ["plain"]
        [[rules]]
        name = "rtcp"
        match.proto_type = ["rtcp"]
        forward = ["qos"]
        [[rules]]
        name = "logs"
        match.proto_type = ["log"]
        drop = true
        """, extra=["--no-admin"])
    try:
        sw.send(kam + rtp)
        sip = [p for p in kam if codec.decode(p).proto_type == 1]
        assert len(sip) == 1120
        for s, n in ((a, len(sip)), (b, len(sip)), (q, len(rtp))):
            assert s.wait_for(n, timeout=30), (s.port, len(s.packets), n)
        summary = sw.stop()
    finally:
        sw.kill()
    # untouched packets: byte-identical
    assert collections.Counter(b.packets) == collections.Counter(sip)
    assert collections.Counter(q.packets) == collections.Counter(rtp)
    # rewritten ones: new values, every other chunk unchanged and in order
    originals = {codec.decode(p).payload + (codec.decode(p).correlation_id_raw or b""): p
                 for p in sip}
    assert len(a.packets) == len(sip)
    for out in a.packets:
        o = codec.decode(out)
        assert (o.capture_id, o.node_name) == (3001, "edge-1")
        src = codec.decode(originals[o.payload + (o.correlation_id_raw or b"")])
        keep = [c for c in src.chunks if (c[0], c[1]) not in ((0, 0x0C), (0, 0x13))]
        assert [c for c in o.chunks if (c[0], c[1]) not in ((0, 0x0C), (0, 0x13))] == keep
    time.sleep(0.3)
    assert len(a.packets) == len(b.packets) == len(sip) and len(q.packets) == len(rtp)
    assert summary["rules"] == {"sip-rewritten": 1120, "sip-plain": 1120, "rtcp": 24,
                                "logs": 80}
    assert summary["dropped"] == {"rule": 80}
    assert summary["received"] == summary["datagrams"] == len(kam) + len(rtp)
    check_accounting(summary)


def _call_of(pkt: bytes) -> bytes | None:
    return codec.decode(pkt).call_key()


def _affinity_run(tmp_path, targets, packets):
    sinks = [Sink(("127.0.0.1", port)).start(timeout=120) for port in targets]
    sw = SwitchProcess(tmp_path, one_destination(targets, "hash", workers=2), workers=2,
                       extra=["--no-admin"])
    try:
        # several source sockets, so that SO_REUSEPORT spreads flows over both workers
        chunks = [packets[i::4] for i in range(4)]
        for c in chunks:
            sw.send(c)
        total = len(packets)
        end = time.monotonic() + 30
        while sum(len(s.packets) for s in sinks) < total and time.monotonic() < end:
            time.sleep(0.05)
        summary = sw.stop()
    finally:
        sw.kill()
        for s in sinks:
            s.close()
    where = {}
    for i, s in enumerate(sinks):
        for p in s.packets:
            where.setdefault(_call_of(p), set()).add(i)
    check_accounting(summary)
    assert summary["forwarded_total"] == total
    return where, summary


def test_call_affinity_hash_and_two_processes_agree(tmp_path):
    kam = corpus("kamailio")
    # RTCP-like and log packets whose correlation id is a corpus Call-ID
    calls = sorted({_call_of(p) for p in kam if codec.decode(p).proto_type == 1})
    extra = [encode_packet([(0, 1, b"\x02"), (0, 2, b"\x11"), (0, 3, bytes([127, 0, 0, 1])),
                            (0, 4, bytes([127, 0, 0, 2])), (0, 0x0B, b"\x05"),
                            (0, 0x11, cid), (0, 0x0F, b'{"type":200}')]) for cid in calls]
    packets = kam + extra
    targets = [free_udp_port() for _ in range(3)]
    where1, s1 = _affinity_run(tmp_path, targets, packets)
    where2, s2 = _affinity_run(tmp_path, targets, packets)
    assert len(calls) == 80
    for cid in calls:
        assert len(where1[cid]) == 1, f"call {cid!r} split over targets {where1[cid]}"
    assert where1 == where2                       # two switch processes agree, target for target
    # and the choice is the documented rendezvous hash of the call key over the targets
    seeds = [hashing.target_seed("127.0.0.1", p) for p in targets]
    for cid in calls:
        assert where1[cid] == {hashing.rendezvous(hashing.hash64(cid), seeds)}
    used = collections.Counter(next(iter(v)) for v in where1.values())
    assert len(used) == 3                          # 80 calls spread over all three targets


def _malformed() -> dict[str, list[bytes]]:
    good = encode_packet([(0, 1, b"\x02"), (0, 0x0B, b"\x01"), (0, 0x0F, b"x")])
    return {
        "short": [b"", b"HE", b"HEP3\x00"],
        "magic": [b"GET / HTTP/1.1\r\n\r\n", b"\x00" * 40],
        "length": [good[:4] + struct.pack(">H", len(good) + 10) + good[6:],
                   good[:4] + b"\x00\x03" + good[6:]],
        "chunk": [good[:-1] + b"", b"HEP3\x00\x0c\x00\x00\x00\x01\x00\x05",
                  b"HEP3\x00\x0d\x00\x00\x00\x07\x00\x07\x01"],
        "version": [b"HEP2\x00\x06", b"\x02\x10\x07\x11" + b"\x00" * 40],
    }


def test_malformed_counted_by_reason_valid_still_arrive(tmp_path, sinks):
    kam = corpus("kamailio")[:300]
    bad = _malformed()
    # fix the "chunk" entry whose total no longer matches: rebuild its length field
    bad["chunk"][0] = bad["chunk"][0][:4] + struct.pack(">H", len(bad["chunk"][0])) + \
        bad["chunk"][0][6:]
    (s,) = sinks(1)
    sw = pass_through(tmp_path, s.port)
    mixed = []
    flat = [(r, p) for r, ps in bad.items() for p in ps]
    for i, p in enumerate(kam):
        mixed.append(p)
        if i % 20 == 0:
            mixed.append(flat[(i // 20) % len(flat)][1])
    n_bad = collections.Counter(flat[(i // 20) % len(flat)][0] for i in range(0, len(kam), 20))
    try:
        sw.send(mixed)
        assert s.wait_for(len(kam), timeout=30)
        summary = sw.stop()
    finally:
        sw.kill()
    assert collections.Counter(s.packets) == collections.Counter(kam)
    assert summary["invalid"] == dict(n_bad)
    assert summary["forwarded_total"] == len(kam)
    check_accounting(summary)


def test_unreachable_target_counted_others_unaffected(tmp_path, sinks):
    kam = corpus("kamailio")[:400]
    (s,) = sinks(1)
    dead = free_udp_port()           # nothing listens: ICMP port unreachable on loopback
    sw = SwitchProcess(tmp_path, f"""
        [switch]
        workers = 1
        [[listeners]]
        name = "agents"
        listen = "127.0.0.1:0"
        [destinations.both]
        targets = ["127.0.0.1:{dead}", "127.0.0.1:{s.port}"]
        mode = "all"
        [[rules]]
        name = "all"
        forward = ["both"]
        """, extra=["--no-admin"])
    try:
        sw.send(kam)
        assert s.wait_for(len(kam), timeout=30)
        summary = sw.stop()
    finally:
        sw.kill()
    assert collections.Counter(s.packets) == collections.Counter(kam)
    assert summary["forwarded"][f"both/127.0.0.1:{s.port}"] == len(kam)
    assert summary["send_errors"][f"both/127.0.0.1:{dead}"] > 0
    check_accounting(summary)


def _v2_packets(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        payload = f"OPTIONS sip:x SIP/2.0\r\nCall-ID: v2-{i}\r\n\r\n".encode()
        out.append(bytes([2, 16, 2, 17]) + struct.pack(">HH", 5060, 5080) +
                   bytes([10, 0, 0, 1, 10, 0, 0, 2]) +
                   struct.pack("<IIHH", 1700000000 + i, i, 2001, 0) + payload)
    return out


def test_hepv2_in_v3_and_v2_out(tmp_path, sinks):
    v3sink, v2sink = sinks(2)
    kam = corpus("kamailio")[:50]
    v2 = _v2_packets(50)
    sw = SwitchProcess(tmp_path, f"""
        [switch]
        workers = 1
        [[listeners]]
        name = "agents"
        listen = "127.0.0.1:0"
        [destinations.new]
        targets = ["127.0.0.1:{v3sink.port}"]
        [destinations.old]
        targets = ["127.0.0.1:{v2sink.port}"]
        hep_version = 2
        [[rules]]
        name = "all"
        forward = ["new", "old"]
        """, extra=["--no-admin"])
    # HEPv2 has no proto type: only SIP can go to the v2 collector; the rest is counted.
    kam_sip = [p for p in kam if codec.decode(p).proto_type == 1]
    assert 0 < len(kam_sip) < len(kam)
    try:
        sw.send(v2 + kam)
        assert v3sink.wait_for(100, timeout=30)
        assert v2sink.wait_for(len(v2) + len(kam_sip), timeout=30)
        summary = sw.stop()
    finally:
        sw.kill()
    v3_out = collections.Counter(v3sink.packets)
    assert all(p[:4] == b"HEP3" for p in v3sink.packets)
    assert v3_out == collections.Counter(kam + [codec.to_v3(p) for p in v2])
    assert all(p[0] == 2 for p in v2sink.packets)
    assert collections.Counter(v2sink.packets) == collections.Counter(
        v2 + [codec.to_v2(p) for p in kam_sip])
    assert summary["dropped_by_destination"] == {
        "old": {"unconvertible": len(kam) - len(kam_sip)}}
    check_accounting(summary)


def test_no_python_allocation_per_packet(tmp_path):
    """Run the data-plane loop in this process over 100k packets: the interpreter's allocated
    block count must not grow with the packet count."""
    import numpy as np

    from hepfast.dataplane import counters as C
    from hepfast.dataplane._worker import Worker
    from hepfast.plan.compile import compile_text
    from hepfast.plan.emit import write_plan_for

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    lsock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    lsock.bind(("127.0.0.1", 0))
    lsock.setblocking(False)
    compiled = compile_text(f"""
        [switch]
        workers = 1
        [[listeners]]
        name = "agents"
        listen = "127.0.0.1:0"
        [destinations.out]
        targets = ["127.0.0.1:{sink.getsockname()[1]}"]
        [[rules]]
        name = "sip"
        match.proto_type = ["sip"]
        set.capture_id = 9
        forward = ["out"]
        [[rules]]
        name = "rest"
        forward = ["out"]
        """.replace("\n        ", "\n"))
    ctr = C.Counters(1)
    plan = write_plan_for(compiled, str(tmp_path / "plan.bin"))
    out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    out.connect(sink.getsockname())
    out.setblocking(False)
    w = Worker([lsock.fileno()], 64)
    w.set_counters(ctr.row(0))
    w.bind(plan, [out.fileno()], [None])
    pkts = corpus("kamailio")
    import multiprocessing as mp

    total = 100_000

    def blast():
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(total):
            tx.sendto(pkts[i % len(pkts)], lsock.getsockname())
            if i % 64 == 63:
                time.sleep(0.0002)

    sender = mp.get_context("fork").Process(target=blast)
    w.run(1, 0)
    before = sys.getallocatedblocks()
    sender.start()
    end = time.monotonic() + 60
    handled = 0
    while time.monotonic() < end and (sender.is_alive() or handled < total):
        got = w.run(50, 10)
        handled += got
        if not sender.is_alive() and got == 0:
            break
    after = sys.getallocatedblocks()
    sender.join(10)
    row = ctr.row(0)
    assert handled > 50_000, handled           # most of the 100k went through the loop
    assert int(row[C.H_DATAGRAMS]) == handled
    assert int(row[C.OFF_RULE]) + int(row[C.OFF_RULE + 1]) == handled
    # a Python object per packet would add tens of thousands of blocks
    assert after - before < 500, (before, after, handled)
    sink.close()
    lsock.close()
    del np


@pytest.mark.parametrize("allow,auth,expect", [
    ('["10.0.0.0/8"]', '""', "acl"),            # 127.0.0.1 is not allowed
    ('["::/0"]', '""', "acl"),                 # an IPv6 rule never admits an IPv4 sender
    ('["127.0.0.0/8"]', '"s3cret"', "auth"),   # allowed, but the corpus has no auth chunk
    ('["127.0.0.0/8"]', '""', None),           # allowed, no key: forwarded
])
def test_listener_acl_and_auth(tmp_path, sinks, allow, auth, expect):
    kam = corpus("kamailio")[:100]
    (s,) = sinks(1)
    sw = pass_through(tmp_path, s.port, f"allow = {allow}\n        auth_key = {auth}")
    try:
        sw.send(kam)
        if expect is None:
            assert s.wait_for(len(kam), timeout=30)
        summary = sw.stop()
    finally:
        sw.kill()
    check_accounting(summary)
    if expect is None:
        assert summary["forwarded_total"] == len(kam) and not summary["invalid"]
    else:
        assert summary["invalid"] == {expect: len(kam)} and s.packets == []


def test_auth_key_match_forwards(tmp_path, sinks):
    kam = corpus("kamailio")[:50]
    keyed = [codec.rewrite(p, set={"auth_key": "s3cret"}) for p in kam]
    wrong = [codec.rewrite(p, set={"auth_key": "guess"}) for p in kam[:10]]
    (s,) = sinks(1)
    sw = pass_through(tmp_path, s.port, 'auth_key = "s3cret"')
    try:
        sw.send(keyed + wrong)
        assert s.wait_for(len(keyed), timeout=30)
        summary = sw.stop()
    finally:
        sw.kill()
    assert collections.Counter(s.packets) == collections.Counter(keyed)
    assert summary["invalid"] == {"auth": len(wrong)}
    check_accounting(summary)


def _mode_run(tmp_path, mode: str, target_ports: list[int], packets: list[bytes]) -> dict:
    sw = SwitchProcess(tmp_path, one_destination(target_ports, mode), extra=["--no-admin"])
    try:
        sw.send(packets, pace_every=10, pace_s=0.002)
        time.sleep(0.5)
        return sw.stop()
    finally:
        sw.kill()


def test_roundrobin_spreads_evenly(tmp_path, sinks):
    ss = sinks(3)
    pkts = corpus("kamailio")[:300]
    summary = _mode_run(tmp_path, "roundrobin", [s.port for s in ss], pkts)
    for s in ss:
        assert s.wait_for(100, timeout=20)
    assert sorted(len(s.packets) for s in ss) == [100, 100, 100]
    assert collections.Counter(p for s in ss for p in s.packets) == collections.Counter(pkts)
    check_accounting(summary)


def _dest_drops(summary: dict, dest: str) -> int:
    """Copies for `dest` dropped (send_error, queue_full, ...): per destination when the summary
    has that, else the switch-wide send-side reasons (a single-destination config)."""
    if "dropped_by_destination" in summary:
        return sum(summary["dropped_by_destination"].get(dest, {}).values())
    d = summary["dropped"]
    return d.get("send_error", 0) + d.get("queue_full", 0)


def _is_subsequence(part: list[bytes], whole: list[bytes]) -> bool:
    it = iter(whole)
    return all(any(p == w for w in it) for p in part)


def test_failover_moves_to_the_next_target(tmp_path, sinks):
    """How many copies go to the dead target before its ICMP error comes back depends on
    scheduling (and it is retried after a while), so that is no count to bound. What is exact:
    the first copy goes to the first target (the kernel takes it; the error comes later); every
    copy is forwarded to a target or dropped; failover only leaves the first target once it is
    marked down, so copies at the live one prove the detection; the live target got exactly what
    the switch forwarded to it, in order."""
    (live,) = sinks(1)
    dead = free_udp_port()
    pkts = corpus("kamailio")[:300]
    summary = _mode_run(tmp_path, "failover", [dead, live.port], pkts)
    to_dead = summary["forwarded"][f"d/127.0.0.1:{dead}"]
    to_live = summary["forwarded"][f"d/127.0.0.1:{live.port}"]
    assert summary["copies"] == len(pkts)
    assert to_dead + to_live + _dest_drops(summary, "d") == len(pkts)
    assert to_dead > 0                                                # tried first
    assert to_live > 0                                                # detected, moved over
    assert summary["send_errors"][f"d/127.0.0.1:{live.port}"] == 0
    assert live.wait_for(to_live, timeout=20)
    live.wait_quiet(0.3, timeout=10)
    assert len(live.packets) == to_live                               # nothing invented
    assert _is_subsequence(live.packets, pkts)                        # one flow: in order
    check_accounting(summary)
