"""The `pcap` destination: the compiled renderer against its twin (writer.build_frame), crash
recovery, and end to end through a real `hepfast run`: tshark reads every file and finds every
SIP packet of the corpus as it was captured; rotation keeps at most `keep` files."""
from __future__ import annotations

import collections
import mmap
import os
import shutil
import subprocess

import pytest

from hepfast.egress import _ring
from hepfast.egress.pcap import PcapEgress, _cut_to_whole_pcap_records
from hepfast.tools.capture import read_capture
from hepfast.tools.capture.common import Datagram
from hepfast.tools.capture.writer import write_pcap
from hepfast.tools.sink import Sink
from hepfast.wire import codec
from tests.conftest import corpus_names, load_corpus
from tests.switchhelp import SwitchProcess, check_accounting
from tests.test_egress_switch import _wait_ring_empty

PROTO = {"SIP": 1, "LOG": 100, "JSON/RTCP": 5}


def corpus_pairs() -> list[tuple[bytes, dict]]:
    out = [pair for n in corpus_names() for pair in load_corpus(n)]
    if not out:
        pytest.skip("real-traffic corpus not found (expected ../shared/corpus)")
    return out


def ring_with(packets: list[bytes]) -> _ring.Ring:
    size = 1 << 22
    while size < 2 * sum(len(p) + 16 for p in packets):
        size *= 2
    mm = mmap.mmap(-1, _ring.HEADER_BYTES + size)
    _ring.format_ring(mm, size)
    ring = _ring.Ring(mm)
    for p in packets:
        assert ring.push(p) == _ring.PUSH_OK
    ring.publish()
    return ring


def drain(ring: _ring.Ring, egress, per_batch: int = 300) -> int:
    done = 0
    while True:
        b = ring.read(per_batch)
        if b.count == 0:
            ring.release(b)
            return done
        done += egress.send_batch(b)
        ring.release(b)


def as_datagram(pkt: bytes) -> Datagram:
    h = codec.decode(pkt)
    fam = 6 if h.family == 6 else 4
    return Datagram(h.timestamp, h.timestamp_us, fam, 6 if h.proto_id == 6 else 17,
                    h.src_ip or ("::" if fam == 6 else "0.0.0.0"),
                    h.dst_ip or ("::" if fam == 6 else "0.0.0.0"),
                    h.src_port or 0, h.dst_port or 0, h.payload)


def test_files_equal_write_pcap_of_the_same_packets(tmp_path):
    """The compiled renderer writes byte for byte what the pure writer (write_pcap, build_frame)
    writes for the packets the HEP messages describe, over batches of any size."""
    pkts = [p for p, _ in corpus_pairs()]
    eg = PcapEgress("cap", tmp_path / "cap", rotate_bytes=1 << 30, keep=None)
    eg.open()
    assert drain(ring_with(pkts), eg, per_batch=97) == len(pkts)
    eg.close()
    files = eg.finished_files()
    assert len(files) == 1
    write_pcap(tmp_path / "ref.pcap", [as_datagram(p) for p in pkts])
    assert open(files[0], "rb").read() == (tmp_path / "ref.pcap").read_bytes()
    assert eg.metrics()["records_written_total"] == len(pkts)


def test_encapsulate_writes_the_hep_packets_over_udp_9060(tmp_path):
    pkts = [p for p, _ in corpus_pairs()][:200]
    eg = PcapEgress("cap", tmp_path / "cap", keep=None, encapsulate=True)
    eg.open()
    drain(ring_with(pkts), eg)
    eg.close()
    got = list(read_capture(eg.finished_files()[0]))
    assert [d.data for d in got] == pkts
    assert {(d.ip_proto, d.src_port, d.dst_port) for d in got} == {(17, 9060, 9060)}
    for d, p in zip(got, pkts, strict=True):
        h = codec.decode(p)
        assert (d.src_ip, d.dst_ip, d.ts_sec, d.ts_usec) == (h.src_ip, h.dst_ip, h.timestamp,
                                                            h.timestamp_us)


def test_a_part_file_is_cut_to_its_last_whole_record(tmp_path):
    pkts = [p for p, _ in corpus_pairs()][:50]
    write_pcap(tmp_path / "x.pcap", [as_datagram(p) for p in pkts])
    whole = (tmp_path / "x.pcap").read_bytes()
    part = tmp_path / "cap" / "cap-20260101T000000Z-000007.pcap.part"
    part.parent.mkdir()
    part.write_bytes(whole + b"\x01\x02\x03")          # a record header cut short
    eg = PcapEgress("cap", tmp_path / "cap", keep=None)
    eg.open()
    assert eg.metrics()["files_recovered_total"] == 1
    assert [open(f, "rb").read() for f in eg.finished_files()] == [whole]
    # the next file continues the sequence
    drain(ring_with(pkts[:3]), eg)
    eg.close()
    assert eg.finished_files()[-1].endswith("-000008.pcap")
    (tmp_path / "short.part").write_bytes(whole[:20])
    assert _cut_to_whole_pcap_records(str(tmp_path / "short.part")) == 0


# ------------------------------------------------------------------------------ end to end

def tshark_rows(path) -> list[dict]:
    fields = ["frame.time_epoch", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "udp.srcport",
              "udp.dstport", "tcp.srcport", "tcp.dstport", "sip.Call-ID", "sip.Method",
              "sip.Status-Code", "sip.CSeq.method"]
    cmd = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "separator=\t",
           "-E", "occurrence=f", "-o", "tcp.desegment_tcp_streams:TRUE"]
    for f in fields:
        cmd += ["-e", f]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"tshark cannot read {path}: {r.stderr}"
    rows = []
    for line in r.stdout.splitlines():
        vals = line.split("\t")
        rows.append(dict(zip(fields, vals + [""] * (len(fields) - len(vals)), strict=True)))
    return rows


def _seen(row: dict) -> tuple:
    """(time_us, src, dst, transport, sport, dport, call_id, method, status, cseq method)."""
    sec, _, frac = row["frame.time_epoch"].partition(".")
    us = int(sec) * 1_000_000 + int((frac + "000000")[:6])
    tcp = bool(row["tcp.srcport"])
    return (us, row["ip.src"] or row["ipv6.src"], row["ip.dst"] or row["ipv6.dst"],
            "TCP" if tcp else "UDP", int(row["tcp.srcport" if tcp else "udp.srcport"]),
            int(row["tcp.dstport" if tcp else "udp.dstport"]), row["sip.Call-ID"],
            row["sip.Method"], row["sip.Status-Code"], row["sip.CSeq.method"])


def _expected(e: dict) -> tuple:
    v6 = e["hep3.ip_family"] == "IPv6"
    return (e["hep3.timestamp_unix"] * 1_000_000 + e["hep3.timestamp_microsec"],
            e["hep3.source_ipv6_address" if v6 else "hep3.source_ipv4_address"],
            e["hep3.destination_ipv6_address" if v6 else "hep3.destination_ipv4_address"],
            e["hep3.transport_layer_protocol"], e["hep3.source_port"],
            e["hep3.destination_port"], e["sip.Call-ID"], e.get("sip.Method", ""),
            str(e.get("sip.Status-Code", "")), e["sip.CSeq.method"])


def need_tshark() -> None:
    if shutil.which("tshark") is None:
        pytest.skip("tshark not installed (scripts/ensure-deps.sh installs it: make test)")


def config(sink_port: int, cap_dir, extra: str = "", admin: bool = False) -> str:
    return f"""
        [switch]
        workers = 1
        {'[admin]' if admin else ''}
        {'listen = "127.0.0.1:0"' if admin else ''}
        [[listeners]]
        name = "agents"
        listen = "127.0.0.1:0"
        [destinations.collector]
        targets = ["127.0.0.1:{sink_port}"]
        [destinations.rec]
        transport = "pcap"
        path = "{cap_dir}"
        {extra}
        [[rules]]
        name = "all"
        forward = ["collector", "rec"]
        """


@pytest.fixture
def sink():
    s = Sink("127.0.0.1:0").start(timeout=60)
    yield s
    s.close()


def test_tshark_sees_every_sip_packet_as_captured(tmp_path, sink):
    need_tshark()
    pairs = corpus_pairs()
    pkts = [p for p, _ in pairs]
    cap = tmp_path / "cap"
    sw = SwitchProcess(tmp_path, config(sink.port, cap), workers=1, extra=["--no-admin"])
    try:
        sw.send(pkts)
        assert sink.wait_for(len(pkts), timeout=60)
        summary = sw.stop()
    finally:
        sw.kill()
    check_accounting(summary)
    assert summary["forwarded"][f"rec/{cap}"] == len(pkts)
    files = sorted(cap.glob("*.pcap"))
    assert files and not list(cap.glob("*.part"))
    rows = [r for f in files for r in tshark_rows(f)]
    assert len(rows) == len(pkts)                       # one frame per message, none lost
    sip_seen = collections.Counter(_seen(r) for r in rows if r["sip.Call-ID"])
    sip_expected = collections.Counter(_expected(e) for _, e in pairs if "sip.Call-ID" in e)
    assert sum(sip_expected.values()) == 1120
    assert sip_seen == sip_expected
    transports = collections.Counter(k[3] for k in sip_seen.elements())
    assert transports["TCP"] == 80 and any(":" in k[1] for k in sip_seen)   # TCP and IPv6 too
    # the other proto types are there as UDP with their HEP addresses, payload as sent
    others = [d for f in files for d in read_capture(f) if not d.data.startswith(
        tuple(m.encode() for m in ("INVITE", "ACK", "BYE", "SIP/2.0")))]
    want = sorted(codec.decode(p).payload for p, e in pairs if "sip.Call-ID" not in e)
    assert sorted(d.data for d in others) == want
    assert {d.ip_proto for d in others} == {17}


def test_rotation_keeps_at_most_keep_files(tmp_path, sink):
    """Four rounds, each written before the next and each past rotate_bytes: more than three
    files were written, three are kept, each one readable by tshark, the newest packets last."""
    need_tshark()
    pkts = [p for p, _ in corpus_pairs()]
    cap = tmp_path / "cap"
    sw = SwitchProcess(tmp_path, config(sink.port, cap, "rotate_bytes = 65536\nkeep = 3",
                                        admin=True), workers=1)
    rounds = [pkts[i * len(pkts) // 4:(i + 1) * len(pkts) // 4] for i in range(4)]
    try:
        for i, r in enumerate(rounds):
            sw.send(r)
            assert sink.wait_for(sum(len(x) for x in rounds[:i + 1]), timeout=60)
            _wait_ring_empty(sw)
        summary = sw.stop()
    finally:
        sw.kill()
    check_accounting(summary)
    files = sorted(cap.glob("*.pcap"))
    assert len(files) == 3
    kept = [d for f in files for d in read_capture(f)]
    for f in files:
        assert tshark_rows(f)
    assert 0 < len(kept) < len(pkts)
    tail = [as_datagram(p) for p in pkts[-len(kept):]]
    assert [(d.ts_sec, d.ts_usec, d.data) for d in kept] == \
        [(d.ts_sec, d.ts_usec, d.data) for d in tail]


def test_config_keys_of_pcap(tmp_path):
    """encapsulate reaches the egress kind; it is refused on a destination that is not pcap."""
    from hepfast.config.errors import ConfigError
    from hepfast.config.load import parse_config
    from hepfast.egress.main import make_egress
    from hepfast.plan import compile_config

    base = f"""
        [[listeners]]
        name = "agents"
        listen = "127.0.0.1:9060"
        [destinations.cap]
        transport = "pcap"
        path = "{tmp_path}"
        encapsulate = true
        keep = 5
        [[rules]]
        name = "all"
        forward = ["cap"]
        """
    plan = compile_config(parse_config(base, implemented=True))
    eg = make_egress(next(d for d in plan.destinations if d.name == "cap"))
    assert isinstance(eg, PcapEgress) and eg.encapsulate and eg.keep == 5
    with pytest.raises(ConfigError) as err:
        parse_config(base.replace('transport = "pcap"', 'transport = "file"'), implemented=True)
    assert "destinations.cap.encapsulate" in str(err.value)
    assert os.path.isdir(tmp_path)
