"""The disk spool of a stream target (hepfast.egress.spool) on its own: order across segments,
prepend, replay progress across a reopen, torn and corrupt records cut at open, the size bound
dropping the oldest segment."""
from __future__ import annotations

import struct

from hepfast.egress.spool import Spool, decode_records, encode_records


def pk(i: int, n: int = 100) -> bytes:
    return f"{i:08d}".encode() + b"p" * (n - 8)


def drain(sp: Spool) -> list[bytes]:
    out = []
    while True:
        got = sp.take_segment()
        if got is None:
            return out
        seq, pkts = got
        out += pkts
        sp.done(seq)


def test_records_round_trip_and_stop_at_damage():
    blob, n = encode_records([pk(1), pk(2), pk(3)])
    assert n == 3 and decode_records(blob) == ([pk(1), pk(2), pk(3)], len(blob))
    bad = bytearray(blob)
    bad[len(blob) // 2] ^= 0xFF                          # inside the second record
    pkts, good = decode_records(bytes(bad))
    assert pkts == [pk(1)] and good == 8 + 100
    assert decode_records(blob[:-1])[0] == [pk(1), pk(2)]  # torn last record


def test_order_across_segments_and_prepend(tmp_path):
    sp = Spool(str(tmp_path), max_bytes=1 << 30, segment_bytes=64 << 10)
    sp.segment_bytes = 4096
    for i in range(0, 300, 10):
        assert sp.append([pk(j) for j in range(i, i + 10)]) == 0
    assert len(list(tmp_path.glob("*.spool"))) > 3
    assert sp.prepend([pk(-2), pk(-1)]) == 0
    assert drain(sp) == [pk(-2), pk(-1)] + [pk(j) for j in range(300)]
    assert sp.empty and sp.bytes == 0 and not list(tmp_path.glob("*.spool"))


def test_reopen_resumes_with_progress_and_cuts_a_torn_tail(tmp_path):
    sp = Spool(str(tmp_path), max_bytes=1 << 30)
    sp.append([pk(j) for j in range(50)])
    seq, pkts = sp.take_segment()
    assert len(pkts) == 50
    sp.set_progress(seq, 20)                             # 20 sent before the stop
    sp.release(seq)
    sp.close()
    seg = next(tmp_path.glob("*.spool"))
    with open(seg, "ab") as f:                           # a crash in the middle of a write
        f.write(struct.pack(">II", 100, 0) + b"HEP3")
    again = Spool(str(tmp_path), max_bytes=1 << 30)
    assert again.torn == 1
    assert drain(again) == [pk(j) for j in range(20, 50)]
    assert again.replayed_records == 30


def test_full_spool_drops_the_oldest_segment(tmp_path):
    sp = Spool(str(tmp_path), max_bytes=1 << 20)
    sp.segment_bytes = 64 << 10
    for i in range(0, 20000, 100):
        assert sp.append([pk(j) for j in range(i, i + 100)]) == 0
    assert sp.bytes <= 1 << 20
    assert sp.dropped_segments > 0 and sp.dropped_records > 0
    kept = drain(sp)
    assert len(kept) + sp.dropped_records == 20000
    assert kept == [pk(j) for j in range(20000 - len(kept), 20000)]    # the newest, in order


def test_a_segment_being_replayed_is_not_dropped(tmp_path):
    """The segment handed to the sender stays until done(); if nothing else can go, new records
    are refused (returned), never the ones in flight."""
    sp = Spool(str(tmp_path), max_bytes=1 << 20)
    sp.segment_bytes = 1 << 20
    sp.append([pk(j, 1000) for j in range(900)])
    seq, pkts = sp.take_segment()
    refused = sp.append([pk(j, 1000) for j in range(900, 1050)])    # past 1 MiB in all
    assert refused == 150 and sp.dropped_records == 150 and sp.records == 900
    sp.done(seq)
    assert sp.empty


def test_spool_metric_names_and_types():
    """The spool's metrics are hepfast_spool_* (issue 11 names hepfast_spool_dropped_total), its
    totals counters; the other egress metrics keep hepfast_egress_*."""
    from prometheus_client.parser import text_string_to_metric_families

    from hepfast.observe.metrics import build_registry, exposition
    from tests.promhelper import FakeSup

    sup = FakeSup()
    sup.egress_status = lambda: [{
        "destination": "c", "ring_used_bytes": 0, "ring_size_bytes": 1 << 20, "alive": True,
        "up": True, "metrics": {"spool_bytes": 4096.0, "spool_dropped_total": 7.0,
                                "spool_torn_total": 1.0, "stream_queue_packets": 3.0}}]
    fams = {f.name: f for f in
            text_string_to_metric_families(exposition(build_registry(sup)).decode())}
    assert fams["hepfast_spool_dropped"].type == "counter"
    assert [(s.name, s.labels, s.value) for s in fams["hepfast_spool_dropped"].samples] == \
        [("hepfast_spool_dropped_total", {"destination": "c"}, 7.0)]
    assert fams["hepfast_spool_torn"].type == "counter"
    assert fams["hepfast_spool_bytes"].type == "gauge"
    assert fams["hepfast_egress_stream_queue_packets"].type == "gauge"
    assert not [n for n in fams if n.startswith("hepfast_egress_spool")]
