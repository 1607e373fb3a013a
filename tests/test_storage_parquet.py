"""The `parquet` destination: DuckDB reads the store and finds one row per packet whose columns
equal the corpus's independent decoding (tshark's, .expected.jsonl) and the SIP scanner twin
(hepfast.wire.sip); a switch killed with SIGKILL mid-write leaves only whole files; forwarding
to a UDP collector while storing delivers exactly what it does without storage; retention."""
from __future__ import annotations

import collections
import os
import re
import signal
import threading
import time

import pytest

from hepfast.egress.parquet import ParquetEgress
from hepfast.tools.sink import Sink
from hepfast.wire import codec
from hepfast.wire.sip import sip_fields
from tests.switchhelp import SwitchProcess, check_accounting
from tests.test_egress_switch import _status
from tests.test_storage_pcap import PROTO, corpus_pairs, drain, ring_with

duckdb = pytest.importorskip("duckdb", reason="duckdb (a test dependency: make test installs it)")
pytest.importorskip("pyarrow", reason="pyarrow (the storage extra: make test installs it)")

_CSEQ = re.compile(rb"^CSeq[ \t]*:[ \t]*(\d+)[ \t]+(\S+)", re.M | re.I)


def rows(path) -> list[dict]:
    con = duckdb.connect()
    rel = con.sql(f"SELECT * FROM read_parquet('{path}/**/*.parquet', hive_partitioning = true) "
                  f"ORDER BY ts, src_port, dst_port, payload")
    names = rel.columns
    return [dict(zip(names, r, strict=True)) for r in rel.fetchall()]


def expected_row(pkt: bytes, e: dict) -> dict:
    """The row a packet must have: network fields from tshark's decoding, the SIP fields from
    tshark where it has them and from the scanner twin otherwise."""
    h = codec.decode(pkt)
    v6 = e["hep3.ip_family"] == "IPv6"
    sip = sip_fields(h.payload) if h.proto_type == 1 else dict.fromkeys(sip_fields(b""))
    m = _CSEQ.search(h.payload.split(b"\r\n\r\n", 1)[0]) if h.proto_type == 1 else None
    return {
        "ts_us": e["hep3.timestamp_unix"] * 1_000_000 + e["hep3.timestamp_microsec"],
        "hep_version": 3,
        "proto_type": PROTO[e["hep3.application_protocol"]],
        "capture_id": e["hep3.capture_node_id"],
        "node_name": None,
        "family": 6 if v6 else 4,
        "transport": e["hep3.transport_layer_protocol"].lower(),
        "src_ip": e["hep3.source_ipv6_address" if v6 else "hep3.source_ipv4_address"],
        "dst_ip": e["hep3.destination_ipv6_address" if v6 else "hep3.destination_ipv4_address"],
        "src_port": e["hep3.source_port"],
        "dst_port": e["hep3.destination_port"],
        "correlation_id": e.get("hep3.correlation_id"),
        "sip_method": e.get("sip.Method"),
        "sip_status": e.get("sip.Status-Code"),
        "call_id": e.get("sip.Call-ID"),
        "from_user": sip["sip_from_user"],
        "to_user": sip["sip_to_user"],
        "ruri_user": sip["sip_ruri_user"],
        "ruri_domain": sip["sip_ruri_domain"],
        "cseq": int(m.group(1)) if m else None,
        "cseq_method": e.get("sip.CSeq.method"),
        "payload_len": e["hep3.payload.size"],
        "payload": h.payload,
    }


def as_compared(r: dict) -> dict:
    """A DuckDB row in expected_row's terms (the partition columns checked against ts)."""
    ts = r["ts"]
    us = int(ts.timestamp()) * 1_000_000 + ts.microsecond
    assert str(r["date"]) == ts.strftime("%Y-%m-%d") and int(r["hour"]) == ts.hour
    out = {k: v for k, v in r.items() if k not in ("ts", "date", "hour")}
    out["ts_us"] = us
    out["payload"] = bytes(r["payload"])
    out["payload_len"] = len(out["payload"])
    return out


def check_store(path, pairs) -> None:
    got = [as_compared(r) for r in rows(path)]
    want = [expected_row(p, e) for p, e in pairs]
    key = lambda r: (r["ts_us"], r["src_port"], r["dst_port"], r["payload"])  # noqa: E731
    got.sort(key=key)
    want.sort(key=key)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g == w
    # the columns that tell traffic apart are really filled, not all null
    assert sum(g["call_id"] is not None for g in got) == 1120
    assert sum(g["correlation_id"] is not None for g in got) == 184
    assert {g["family"] for g in got} == {4, 6} and {g["transport"] for g in got} == {"udp",
                                                                                        "tcp"}


def test_every_column_equals_the_corpus(tmp_path):
    pairs = corpus_pairs()
    eg = ParquetEgress("pq", tmp_path / "pq", row_group_rows=500)
    eg.open()
    assert drain(ring_with([p for p, _ in pairs]), eg, per_batch=101) == len(pairs)
    eg.close()
    m = eg.metrics()
    assert m["records_written_total"] == len(pairs) and m["row_groups_written_total"] >= 3
    files = eg.finished_files()
    assert files and all(re.search(r"/date=\d{4}-\d\d-\d\d/hour=\d\d/pq-[^/]+\.parquet$", f)
                         for f in files)
    check_store(tmp_path / "pq", pairs)
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(files[0]).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"


def test_text_that_is_not_utf8_is_decoded_like_the_twin(tmp_path):
    """A Call-ID and From user with bytes that are not UTF-8: the columns hold what
    hepfast.wire.sip (errors="replace") reads; the payload keeps the bytes as they came."""
    payload = (b"INVITE sip:b\xc3\xa9b@example.com SIP/2.0\r\nFrom: <sip:\xff\xfeal@x>;tag=1\r\n"
               b"To: <sip:bob@example.com>\r\nCall-ID: abc\xe2\x82@host\r\n"
               b"CSeq: 4711 INVITE\r\n\r\n")
    pkt = codec.encode([("proto_family", 2), ("proto_id", 17), ("src_ip4", "10.0.0.1"),
                        ("dst_ip4", "10.0.0.2"), ("src_port", 5060), ("dst_port", 5080),
                        ("timestamp", 1_700_000_000), ("timestamp_us", 5), ("proto_type", 1),
                        ("capture_id", 7), ("node_name", "edge-1"), ("payload", payload)])
    eg = ParquetEgress("pq", tmp_path / "pq")
    eg.open()
    drain(ring_with([pkt]), eg)
    eg.close()
    (r,) = rows(tmp_path / "pq")
    twin = sip_fields(payload)
    assert (r["call_id"], r["from_user"], r["to_user"], r["ruri_user"], r["ruri_domain"]) == \
        (twin["sip_call_id"], twin["sip_from_user"], twin["sip_to_user"],
         twin["sip_ruri_user"], twin["sip_ruri_domain"])
    assert "\ufffd" in r["call_id"] and r["ruri_user"] == "b\u00e9b"
    assert (r["cseq"], r["cseq_method"], r["node_name"]) == (4711, "INVITE", "edge-1")
    assert bytes(r["payload"]) == payload
    assert str(r["date"]) == "2023-11-14" and int(r["hour"]) == 22


def test_retention_by_bytes_and_by_days(tmp_path):
    pairs = corpus_pairs()
    pkts = [p for p, _ in pairs]
    path = tmp_path / "pq"
    eg = ParquetEgress("pq", path)
    eg.open()
    for i in range(4):                       # four finished files
        drain(ring_with(pkts[i * 300:(i + 1) * 300]), eg)
        eg.close()
    files = eg.finished_files()
    assert len(files) == 4
    for age, f in enumerate(reversed(files)):   # the first file is the oldest
        os.utime(f, (time.time() - 86400 * (age + 1) - 60,) * 2)
    sizes = {f: os.path.getsize(f) for f in files}
    eg2 = ParquetEgress("pq", path, retention_days=3.5)
    eg2.open()                               # opening applies retention
    assert eg2.finished_files() == files[1:]
    budget = sizes[files[2]] + sizes[files[3]]
    eg3 = ParquetEgress("pq", path, retention_bytes=budget)
    eg3.open()
    assert eg3.finished_files() == files[2:]
    assert eg2.metrics()["files_deleted_total"] == 1 and eg3.metrics()["files_deleted_total"] == 1


# ------------------------------------------------------------------------------ end to end

def config(sink_port: int | str, *, stores: str = "", forward: str = '"collector"',
           admin: bool = False, workers: int = 1) -> str:
    return f"""
        [switch]
        workers = {workers}
        {'[admin]' if admin else ''}
        {'listen = "127.0.0.1:0"' if admin else ''}
        [[listeners]]
        name = "agents"
        listen = "127.0.0.1:0"
        [destinations.collector]
        targets = ["127.0.0.1:{sink_port}"]
        {stores}
        [[rules]]
        name = "all"
        forward = [{forward}]
        """


def parquet_dest(path, extra: str = "") -> str:
    return f"""
        [destinations.pq]
        transport = "parquet"
        path = "{path}"
        {extra}
        """


def run_once(tmp_path, text: str, pkts: list[bytes]) -> tuple[list[bytes], dict]:
    s = Sink("127.0.0.1:0").start(timeout=60)
    try:
        sw = SwitchProcess(tmp_path, text.replace("SINK", str(s.port)), workers=None,
                           extra=["--no-admin"])
        try:
            sw.send(pkts)
            assert s.wait_for(len(pkts), timeout=60)
            s.wait_quiet(0.3, timeout=10)
            summary = sw.stop()
        finally:
            sw.kill()
        return list(s.packets), summary
    finally:
        s.close()


def test_udp_collector_gets_the_same_with_storage_and_the_store_is_complete(tmp_path):
    """The same corpus through the same switch, without storage and with a pcap and a Parquet
    destination in the same rule: the collector receives exactly the same packets (byte for
    byte, once each), and the Parquet store holds every packet with the corpus's values."""
    pairs = corpus_pairs()
    pkts = [p for p, _ in pairs]
    plain, s1 = run_once(tmp_path, config("SINK"), pkts)
    pq_dir, cap_dir = tmp_path / "pq", tmp_path / "cap"
    stores = parquet_dest(pq_dir) + f"""
        [destinations.cap]
        transport = "pcap"
        path = "{cap_dir}"
        """
    text = config("SINK", stores=stores, forward='"collector", "pq", "cap"', workers=2)
    stored, s2 = run_once(tmp_path, text, pkts)
    assert collections.Counter(plain) == collections.Counter(pkts)
    assert collections.Counter(stored) == collections.Counter(plain)
    for s in (s1, s2):
        check_accounting(s)
    assert s2["forwarded"][f"pq/{pq_dir}"] == len(pkts)
    assert s2["forwarded"][f"cap/{cap_dir}"] == len(pkts)
    assert not list(pq_dir.rglob("*.part"))
    check_store(pq_dir, pairs)


def test_sigkill_mid_write_leaves_only_whole_files(tmp_path):
    """Traffic keeps flowing into a Parquet store that finishes a file every 0.3 s; once
    finished files and a file being written both exist, the egress process and the switch are
    killed with SIGKILL. Every *.parquet left is whole (DuckDB and pyarrow read every row of
    it); the half-written file is only a .part, which the next start deletes."""
    import pyarrow.parquet as pq

    pkts = [p for p, _ in corpus_pairs()]
    path = tmp_path / "pq"
    extra = "rotate_seconds = 0.3\nflush_seconds = 0.05\nrow_group_rows = 200"
    text = config(9, stores=parquet_dest(path, extra), forward='"pq"', admin=True)
    sw = SwitchProcess(tmp_path, text, workers=1)
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            sw.send(pkts[:300], pace_every=50, pace_s=0.002)

    t = threading.Thread(target=traffic, daemon=True)
    killed_with_part = False
    try:
        egress_pid = next(d["egress"]["pid"] for d in _status(sw)["destinations"]
                          if d["name"] == "pq")
        t.start()
        end = time.monotonic() + 60
        while time.monotonic() < end:
            if len(list(path.rglob("*.parquet"))) >= 2 and list(path.rglob("*.part")):
                os.kill(egress_pid, signal.SIGKILL)
                sw.proc.send_signal(signal.SIGKILL)
                killed_with_part = True
                break
            time.sleep(0.01)
    finally:
        stop.set()
        t.join(30)
        sw.kill()
    assert killed_with_part, "no moment with finished and unfinished files at once"
    files = sorted(path.rglob("*.parquet"))
    parts = sorted(path.rglob("*.part"))
    assert files and parts
    total = 0
    for f in files:
        n = pq.ParquetFile(f).metadata.num_rows
        assert n > 0 and pq.read_table(f).num_rows == n
        total += n
    con = duckdb.connect()
    assert con.sql(f"SELECT count(*) FROM read_parquet('{path}/**/*.parquet')").fetchall() \
        == [(total,)]
    for p in parts:                                     # unreadable as a file: no footer yet
        with pytest.raises(Exception):  # noqa: B017 - pyarrow's error type varies by version
            pq.ParquetFile(p)
    eg = ParquetEgress("pq", path)
    eg.open()
    assert not list(path.rglob("*.part"))
    assert eg.metrics()["files_discarded_total"] == len(parts)
    assert sorted(path.rglob("*.parquet")) == files


def test_config_keys_of_parquet(tmp_path):
    from hepfast.config.errors import ConfigError
    from hepfast.config.load import parse_config
    from hepfast.egress.main import make_egress
    from hepfast.plan import compile_config

    base = f"""
        [[listeners]]
        name = "agents"
        listen = "127.0.0.1:9060"
        [destinations.pq]
        transport = "parquet"
        path = "{tmp_path}"
        row_group_rows = 1000
        retention_bytes = 1000000
        retention_days = 3
        flush_seconds = 2.5
        rotate_seconds = 600
        [[rules]]
        name = "all"
        forward = ["pq"]
        """
    plan = compile_config(parse_config(base, implemented=True))
    eg = make_egress(next(d for d in plan.destinations if d.name == "pq"))
    assert isinstance(eg, ParquetEgress)
    assert (eg.row_group_rows, eg.retention_bytes, eg.retention_days, eg.flush_seconds,
            eg.rotate_seconds) == (1000, 1_000_000, 3, 2.5, 600)
    for key in ("row_group_rows", "retention_bytes"):
        bad = base.replace('transport = "parquet"', 'transport = "pcap"')
        bad = "\n".join(ln for ln in bad.splitlines()
                        if not ln.strip().startswith(("row_group", "retention_b"))
                        or ln.strip().startswith(key))
        with pytest.raises(ConfigError) as err:
            parse_config(bad, implemented=True)
        assert f"destinations.pq.{key}" in str(err.value)


def test_check_names_a_missing_pyarrow(tmp_path, monkeypatch):
    """Without pyarrow, `hepfast check` refuses a parquet destination naming it and the fix."""
    import importlib.util

    from hepfast.config.errors import ConfigError
    from hepfast.config.load import parse_config

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pyarrow" else real(name, *a))
    text = f"""
        [[listeners]]
        name = "agents"
        listen = "127.0.0.1:9060"
        [destinations.pq]
        transport = "parquet"
        path = "{tmp_path}"
        [[rules]]
        name = "all"
        forward = ["pq"]
        """
    with pytest.raises(ConfigError) as err:
        parse_config(text, implemented=True)
    assert "destinations.pq.transport" in str(err.value) and "hepfast[storage]" in str(err.value)
    parse_config(text)                      # the schema itself does not need it
