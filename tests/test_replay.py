"""hepfast replay end to end on loopback: real `hepfast replay` processes into in-process sinks.

Bounded: every replay sends a fixed count at a modest --rate (so a Python sink keeps up), with
a subprocess timeout. No timing assertions.
"""
from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path

import pytest

from hepfast.tools import capture
from hepfast.wire import codec
from hepfast.tools.sink import Sink

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
REPO = Path(__file__).resolve().parents[1]
KAM = CORPUS / "kamailio-hep3-udp"
RTP = CORPUS / "rtpengine-rtcp-hep"
LOOP_MARK = re.compile(r"~L(\d{6})$")


def need_corpus():
    if not CORPUS.is_dir():
        pytest.skip(f"shared corpus not found at {CORPUS}")


def replay(*args: str, timeout: float = 60) -> dict:
    proc = subprocess.run([sys.executable, "-m", "hepfast", "replay", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def replay_into_sink(*sources: str, expect: int, extra=(), keep=True) -> tuple[dict, Sink]:
    sink = Sink("127.0.0.1:0", keep=keep, latency="--stamp" in extra).start(timeout=60)
    try:
        summary = replay(*sources, "--to", f"127.0.0.1:{sink.port}", "--rate", "20000", *extra)
        if keep:
            sink.wait_for(expect, timeout=20)
        sink.wait_quiet(0.3, timeout=20)
    finally:
        sink.close()
    return summary, sink


@pytest.mark.parametrize("name", ["kamailio-hep3-udp", "rtpengine-rtcp-hep"])
@pytest.mark.parametrize("ext", ["hepraw", "pcap"])
def test_corpus_replay_is_byte_identical(name, ext):
    need_corpus()
    want = list(capture.read_hepraw(CORPUS / f"{name}.hepraw"))
    summary, sink = replay_into_sink(str(CORPUS / f"{name}.{ext}"), expect=len(want))
    assert summary["sent"] == len(want) and summary["errors"] == 0
    assert sink.packets == want


def _corpus_sip() -> list[codec.HepPacket]:
    return [p for p in (codec.decode(d) for d in capture.read_hepraw(KAM.with_suffix(".hepraw")))
            if p.proto_type == 1]


def test_raw_sip_pcap_is_wrapped_into_hep(tmp_path):
    """UDP SIP (v4 and v6) and a SIP/TCP stream cut across segments become HEP with the original
    addresses, ports, capture times and payloads."""
    need_corpus()
    sip = _corpus_sip()
    udp = [p for p in sip if p.proto_id == 17][:60]
    udp += [p for p in sip if p.proto_id == 17 and p.family == 6][:10]
    assert {p.family for p in udp} == {4, 6}
    tcp = [p for p in sip if p.proto_id == 6][:12]
    assert len(tcp) == 12
    items, expected = [], []
    for k, p in enumerate(udp):
        ts = (1_700_000_000 + k, 1000 * k)
        items.append(capture.Datagram(*ts, p.family, 17, p.src_ip, p.dst_ip, p.src_port,
                                      p.dst_port, p.payload))
        expected.append((p.src_ip, p.dst_ip, p.src_port, p.dst_port, ts, p.payload, 17))
    # One TCP stream (one direction) carrying 12 messages, cut into 7-, 300-, 1000-byte pieces:
    # most messages span two or more segments; a message gets the time of its first segment.
    t = tcp[0]
    stream = b"".join(p.payload for p in tcp)
    sizes = [7, 300, 1000] * (len(stream) // 1307 + 2)
    segs = capture.tcp_datagrams(stream, src_ip="192.0.2.10", dst_ip="192.0.2.20",
                                 src_port=t.src_port, dst_port=5060, sizes=sizes,
                                 ts=(1_700_001_000, 0), ts_step_us=1000)
    starts, pos = [], 0
    for s in segs:
        if s.dg.data:
            starts.append((pos, (s.dg.ts_sec, s.dg.ts_usec)))
            pos += len(s.dg.data)
    msg_at = 0
    for p in tcp:
        ts = [t for off, t in starts if off <= msg_at][-1]
        expected.append(("192.0.2.10", "192.0.2.20", t.src_port, 5060, ts, p.payload, 6))
        msg_at += len(p.payload)
    pcap = tmp_path / "raw-sip.pcap"
    capture.write_pcap(pcap, items + segs)

    summary, sink = replay_into_sink(str(pcap), "--capture-id", "77", expect=len(expected),
                                     extra=())
    got = [codec.decode(d) for d in sink.packets]
    assert summary["sent"] == len(expected) == len(got)
    seen = [(g.src_ip, g.dst_ip, g.src_port, g.dst_port, (g.timestamp, g.timestamp_us),
             g.payload, g.proto_id) for g in got]
    assert seen == expected
    assert {g.proto_type for g in got} == {1} and {g.capture_id for g in got} == {77}
    assert {g.version for g in got} == {3}


def _call_id(p: codec.HepPacket) -> str | None:
    key = p.call_key()
    return key.decode() if key else None


def test_loop_3_gives_disjoint_calls_with_same_structure():
    need_corpus()
    base = [codec.decode(d) for d in capture.read_hepraw(KAM.with_suffix(".hepraw"))]
    n = len(base)
    summary, sink = replay_into_sink(str(KAM.with_suffix(".hepraw")), "--loop", "3",
                                     expect=3 * n)
    assert summary["sent"] == 3 * n
    got = [codec.decode(d) for d in sink.packets]
    assert len(got) == 3 * n
    loops = [got[k * n:(k + 1) * n] for k in range(3)]
    ids = [{_call_id(p) for p in loop} - {None} for loop in loops]
    assert len(ids[0]) == 80
    assert all(len(s) == 80 for s in ids)
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sink.packets[:n] == list(capture.read_hepraw(KAM.with_suffix(".hepraw")))
    for k in (1, 2):
        for b, p in zip(base, loops[k], strict=True):
            # same packet, same call, only the ids carry the loop mark
            assert (p.proto_type, p.src_port, p.dst_port, p.timestamp) == \
                   (b.proto_type, b.src_port, b.dst_port, b.timestamp)
            cid, bcid = _call_id(p), _call_id(b)
            assert cid == f"{bcid}~L{k:06d}"
            if b.correlation_id:
                assert p.correlation_id == f"{b.correlation_id}~L{k:06d}"
            if b.proto_type == 1:
                assert p.payload.replace(f"~L{k:06d}".encode(), b"") == b.payload


def test_synthetic_calls_are_complete():
    summary, sink = replay_into_sink("synthetic:calls=20,cps=100,ipv6=0.3,rtcp=2,node=gen",
                                     expect=20 * (7 + 4 + 1))
    got = [codec.decode(d) for d in sink.packets]
    assert summary["sent"] == len(got) == 20 * 12
    calls: dict[str, list] = defaultdict(list)
    for p in got:
        assert p.node_name == "gen" and p.capture_id == 2001
        calls[_call_id(p)].append(p)
    assert len(calls) == 20 and None not in calls
    fams = set()
    for cid, pkts in calls.items():
        sip = [p.to_dict() for p in pkts if p.proto_type == 1]
        seq = sorted(d.get("sip_method") or str(d.get("sip_status")) for d in sip)
        assert seq == sorted(["INVITE", "100", "180", "200", "ACK", "BYE", "200"])
        rtcp = [p for p in pkts if p.proto_type == 5]
        logs = [p for p in pkts if p.proto_type == 100]
        assert len(rtcp) == 4 and len(logs) == 1
        assert all(p.correlation_id == cid for p in rtcp + logs)
        assert all(json.loads(p.payload)["type"] == 200 for p in rtcp)
        fams.add(pkts[0].family)
    assert fams == {4, 6}


def test_processes_2_send_exactly_the_count():
    need_corpus()
    summary, sink = replay_into_sink(str(KAM.with_suffix(".hepraw")), expect=5001, keep=False,
                                     extra=("--processes", "2", "--count", "5001"))
    assert summary["sent"] == 5001
    assert sum(summary["per_process"]) == 5001 and len(summary["per_process"]) == 2
    assert sink.received == 5001


def test_stamp_gives_latency():
    summary, sink = replay_into_sink("synthetic:calls=5,version=2", expect=35,
                                     extra=("--stamp",))
    got = [codec.decode(d) for d in sink.packets]
    assert {p.version for p in got} == {2}
    lat = sink.summary()["latency_us"]
    assert lat is not None and lat["samples"] == 35


def test_tcp_transport():
    need_corpus()
    want = list(capture.read_hepraw(RTP.with_suffix(".hepraw")))
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(20)
    received = bytearray()

    def serve():
        conn, _ = srv.accept()
        conn.settimeout(20)
        with conn:
            while chunk := conn.recv(65536):
                received.extend(chunk)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        summary = replay(str(RTP.with_suffix(".hepraw")), "--to",
                         f"127.0.0.1:{srv.getsockname()[1]}", "--transport", "tcp", "--loop", "2")
        th.join(20)
    finally:
        srv.close()
    msgs, rest = capture.split_hep_stream(bytes(received))
    assert summary["sent"] == 2 * len(want) and rest == b""
    assert msgs[:len(want)] == want
    assert len(msgs) == 2 * len(want)
    assert {codec.decode(m).correlation_id for m in msgs[len(want):]}.isdisjoint(
        {codec.decode(m).correlation_id for m in want})


def test_unreachable_target_is_counted_not_fatal():
    # A closed UDP port on loopback answers with ICMP: ECONNREFUSED on the next send. Inside one
    # sendmmsg batch the kernel swallows that error, so send one packet per call here.
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    summary = replay("synthetic:calls=10", "--to", f"127.0.0.1:{port}", "--rate", "2000",
                     "--batch", "1")
    assert summary["sent"] + summary["skipped"] == 10 * 10
    assert summary["errors"] >= 1


def test_bad_source_is_a_clear_error(tmp_path):
    bad = tmp_path / "x.txt"
    bad.write_text("hello there, not a capture")
    proc = subprocess.run([sys.executable, "-m", "hepfast", "replay", str(bad), "--to",
                           "127.0.0.1:9"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "pcap" in proc.stderr


# ----------------------------------------------------------------- the C send loop (in process)

def _udp_pair():
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    rx.settimeout(5)
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.connect(rx.getsockname())
    return rx, tx


def _small_set(loops_needed=True, stamp=False):
    from hepfast.tools import replay as rp

    pkts = rp.load(["synthetic:calls=1,rtcp=1,log=1"])[:5]
    return rp.PacketSet(pkts, loops_needed=loops_needed, stamp=stamp)


def test_sender_crosses_loop_boundaries_in_full_batches():
    """Positions 3..26 of a 5-packet set, batch 4: every sendmmsg carries 4 packets even where
    a batch spans two loops (like the C baseline), and each packet carries its own loop's marks,
    loop 0 byte for byte."""
    from hepfast.tools import replay as rp

    pset = _small_set()
    assert len(pset.mark_pos) >= 5      # every packet has a Call-ID or correlation-id mark
    rx, tx = _udp_pair()
    try:
        plan = rp.Plan(to=("127.0.0.1", 0), transport="udp", rate=0.0, speed=0.0, g0=3, g1=27,
                       duration=0.0, batch=4, stamp=False)
        sender = rp.make_sender(pset, plan, tx.fileno())
        g = 3
        while g < 27:
            g = sender.send(g, 27, 5.0, 0)
        got = [rx.recv(65536) for _ in range(24)]
    finally:
        rx.close()
        tx.close()
    assert sender.sent == 24 and sender.errors == 0
    assert sender.calls == 6
    want = []
    for pos in range(3, 27):
        loop, i = divmod(pos, pset.n)
        raw = pset.buf[pset.offsets[i]:pset.offsets[i + 1]].tobytes()
        want.append(raw if loop == 0 else pset.template_packet(loop, i))
    assert got == want
    assert f"~L{5:06d}".encode() in got[-1]          # position 26 = loop 5, packet 1


def test_sender_never_puts_one_template_packet_twice_in_a_batch():
    """With fewer packets than the batch, a batch stops at the loop end: the marks of a packet
    are rewritten in place, so two copies in one sendmmsg would both carry the later loop."""
    from hepfast.tools import replay as rp

    pset = _small_set()
    rx, tx = _udp_pair()
    try:
        plan = rp.Plan(to=("127.0.0.1", 0), transport="udp", rate=0.0, speed=0.0, g0=0,
                       g1=4 * pset.n, duration=0.0, batch=64, stamp=False)
        sender = rp.make_sender(pset, plan, tx.fileno())
        assert sender.send(0, 4 * pset.n, 5.0, 0) == 4 * pset.n
        got = [rx.recv(65536) for _ in range(4 * pset.n)]
    finally:
        rx.close()
        tx.close()
    for pos, data in enumerate(got):
        loop, i = divmod(pos, pset.n)
        if loop:
            assert data == pset.template_packet(loop, i)


def test_sender_rejects_bad_arrays():
    import numpy as np

    from hepfast.tools._sender import Sender

    s = Sender(-1)
    with pytest.raises(ValueError):
        s.send(0, 1)                                 # nothing loaded
    buf = np.zeros(10, dtype=np.uint8)
    with pytest.raises(ValueError):
        s.load(buf, np.array([0, 20], dtype=np.int64))
    with pytest.raises(ValueError):
        s.load(buf, np.array([0, 6, 4], dtype=np.int64))
    with pytest.raises(ValueError):
        s.load(buf, np.array([0, 5, 10], dtype=np.int64), buf.copy(),
               np.array([0, 5, 10], dtype=np.int64), np.array([8], dtype=np.int64),
               np.array([0, 1, 1], dtype=np.int64))  # a mark running past the buffer
    with pytest.raises(ValueError):
        Sender(-1, stamp=True).load(buf, np.array([0, 5, 10], dtype=np.int64))


def test_paced_bursts_scale_with_the_rate():
    from hepfast.tools._sender import Sender

    assert Sender(-1, rate=500).batch == 1
    assert Sender(-1, rate=10_000).batch == 10
    assert Sender(-1, rate=500_000).batch == 64
    assert Sender(-1, rate=500_000, batch=16).batch == 16
    assert Sender(-1).batch == 64


def test_rate_summary_reports_achieved_against_requested():
    need_corpus()
    summary, sink = replay_into_sink(str(RTP.with_suffix(".hepraw")), expect=100, keep=False,
                                     extra=("--count", "100"))
    assert summary["sent"] == 100 and sink.received == 100
    assert summary["rate"] == 20000
    # The summary rounds seconds to 1 us and the error to 0.001 %: compare within what those
    # roundings can make of it (100 packets at 20k/s take only ~5 ms, so 0.5 us matters).
    secs = summary["seconds"]
    want = 100 * (summary["sent"] / secs - 20000) / 20000
    slack = 100 * (summary["sent"] / secs / 20000) * (0.5e-6 / secs) + 0.0005 + 1e-9
    assert abs(summary["rate_error_pct"] - want) <= slack


def test_speed_and_stamp_across_loops():
    """--speed keeps the capture's timing across loops; --stamp patches loop 0 and the
    template alike, so every packet of every loop carries a fresh send time."""
    from hepfast.tools import replay as rp

    n = len(rp.load(["synthetic:calls=1,rtcp=2,log=1"]))
    sink = Sink("127.0.0.1:0", keep=True, latency=True).start(timeout=60)
    try:
        summary = replay("synthetic:calls=1,rtcp=2,log=1", "--to", f"127.0.0.1:{sink.port}",
                         "--loop", "3", "--speed", "50", "--stamp")
        sink.wait_for(3 * n, timeout=20)
        sink.wait_quiet(0.3, timeout=20)
    finally:
        sink.close()
    assert summary["sent"] == 3 * n
    got = [codec.decode(d) for d in sink.packets]
    assert len(got) == 3 * n
    assert len({_call_id(p) for p in got}) == 3
    lat = sink.summary()["latency_us"]
    assert lat is not None and lat["samples"] == 3 * n


def test_summary_bytes_of_one_pass_and_bytes_sent(tmp_path):
    """`bytes_per_pass` is the packet set as loaded; `bytes_sent` what went out: loop 0 byte for
    byte, later loops with their marked (longer) Call-IDs, checked against what a sink got."""
    from hepfast.tools import replay as rp

    pkts = rp.load(["synthetic:calls=2,rtcp=1,log=1,seed=7,start=1700000000"])
    one_pass = sum(len(p.data) for p in pkts)
    summary, sink = replay_into_sink("synthetic:calls=2,rtcp=1,log=1,seed=7,start=1700000000", expect=3 * len(pkts),
                                     extra=("--loop", "3"))
    assert summary["sent"] == 3 * len(pkts) == len(sink.packets)
    assert summary["bytes_per_pass"] == one_pass
    assert "bytes" not in summary
    assert summary["bytes_sent"] == sum(len(p) for p in sink.packets)
    assert summary["bytes_sent"] > 3 * one_pass          # the loop marks make loops 1.. longer
    # split over processes and cut mid-loop, the share arithmetic still adds up
    summary, sink = replay_into_sink("synthetic:calls=2,rtcp=1,log=1,seed=7,start=1700000000", expect=len(pkts) * 2 + 3,
                                     extra=("--count", str(len(pkts) * 2 + 3),
                                            "--processes", "2"))
    assert summary["sent"] == len(sink.packets) == len(pkts) * 2 + 3
    assert summary["bytes_sent"] == sum(len(p) for p in sink.packets)


def test_summary_is_compact_json():
    need_corpus()
    proc = subprocess.run([sys.executable, "-m", "hepfast", "replay",
                           str(CORPUS / "rtpengine-rtcp-hep.hepraw"), "--to", "127.0.0.1:9",
                           "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=60)
    line = proc.stdout.strip().splitlines()[-1]
    assert ", " not in line and json.loads(line)["bytes_per_pass"] > 0
