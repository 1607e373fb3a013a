"""The `postgres` destination against a real PostgreSQL server (tests/pghelper.py: a throwaway
cluster on a loopback port): the corpus through `hepfast run` into the HOMER 7 tables,
connection kills and a server restart without loss or duplicates, homer-app's call lookup,
and the egress's own behaviour (queue bound, retried batches, retention, the DSN's secrecy)."""
from __future__ import annotations

import collections
import json
import mmap
import time
import urllib.request

import pytest

from hepfast.config import ConfigError
from hepfast.egress import homer7 as H
from tests.conftest import corpus_names, load_corpus
from tests.pghelper import PASSWORD, pg_db, pg_server, wait_for  # noqa: F401 - the fixtures
from tests.switchhelp import SwitchProcess, check_accounting

# The JSON keys heplify-server writes (database/header.go: makeProtoHeader, makeRTCDataHeader,
# and the default SIP header list of database.go buildTemplate), written out here on purpose:
# the mapping must match them, not its own constants.
HEPLIFY_PROTOCOL_KEYS = {"protocolFamily", "protocol", "srcIp", "dstIp", "srcPort", "dstPort",
                         "timeSeconds", "timeUseconds", "payloadType", "captureId",
                         "correlation_id"}
HEPLIFY_SIP_KEYS = {"ruri_user", "ruri_domain", "from_user", "from_tag", "to_user", "to_tag",
                    "callid", "cseq", "method", "user_agent"}
HEPLIFY_RTC_KEYS = {"node", "proto"}
TABLE_OF_APP = {"SIP": "hep_proto_1_call", "LOG": "hep_proto_100_default",
                "JSON/RTCP": "hep_proto_5_default"}


def corpus_pairs() -> list[tuple[bytes, dict]]:
    out = [pair for n in corpus_names() for pair in load_corpus(n)]
    if not out:
        pytest.skip("real-traffic corpus not found (expected ../shared/corpus)")
    return out


def config(dsn: str, extra: str = "", workers: int = 1) -> str:
    return f"""
        [switch]
        workers = {workers}
        [admin]
        listen = "127.0.0.1:0"
        [[listeners]]
        name = "agents"
        listen = "127.0.0.1:0"
        [destinations.pg]
        transport = "postgres"
        dsn = "{dsn}"
        retention_days = 0
        {extra}
        [[rules]]
        name = "all"
        forward = ["pg"]
        """


def admin_get(sw: SwitchProcess, path: str) -> str:
    for line in sw.stderr().splitlines():
        if line.startswith("admin http://"):
            base = line.split()[1].rsplit("/", 1)[0]
            with urllib.request.urlopen(base + path, timeout=10) as r:
                return r.read().decode()
    raise AssertionError(sw.stderr())


def egress_status(sw: SwitchProcess, rows: int | None = None) -> dict:
    """The pg destination's egress status; with `rows`, once it reports that many rows
    written (the egress process refreshes its status about once a second)."""
    def get() -> dict:
        doc = json.loads(admin_get(sw, "/status"))
        return next(d for d in doc["destinations"] if d["name"] == "pg")["egress"]
    if rows is None:
        return get()
    st = wait_for(lambda: (lambda e: e if e["metrics"].get("rows_written_total") == rows
                           else None)(get()), timeout=30)
    assert st, get()
    return st


TABLES = ("hep_proto_1_call", "hep_proto_1_registration", "hep_proto_1_default",
          "hep_proto_5_default", "hep_proto_100_default")


def count_rows(srv, db: str) -> int:
    try:
        with srv.connect(db) as c:
            have = {r[0] for r in c.execute("SELECT tablename FROM pg_tables").fetchall()}
            return sum(c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                       for t in TABLES if t in have)
    except Exception:  # noqa: BLE001 - server restarting: not yet
        return -1


def all_rows(srv, db: str) -> list[tuple]:
    """(table, sid, create_date as epoch us, protocol_header, data_header, raw) of every row."""
    out = []
    with srv.connect(db) as c:
        have = {r[0] for r in c.execute("SELECT tablename FROM pg_tables").fetchall()}
        for t in TABLES:
            if t not in have:
                continue
            for sid, cd, ph, dh, raw in c.execute(
                    f"SELECT sid, (extract(epoch FROM create_date) * 1000000)::bigint, "
                    f"protocol_header, data_header, raw FROM {t}").fetchall():
                out.append((t, sid, cd, ph, dh, raw))
    return out


def expected_key(exp: dict) -> tuple:
    """What a stored row must say about a corpus message, from tshark's decoding."""
    v6 = exp["hep3.ip_family"] == "IPv6"
    src = exp["hep3.source_ipv6_address" if v6 else "hep3.source_ipv4_address"]
    dst = exp["hep3.destination_ipv6_address" if v6 else "hep3.destination_ipv4_address"]
    app = exp["hep3.application_protocol"]
    if app == "SIP":
        sid = exp["sip.Call-ID"]
        method = exp.get("sip.Method") or str(exp["sip.Status-Code"])
    else:
        sid = exp["hep3.correlation_id"]
        method = None
    ts = exp["hep3.timestamp_unix"] * 1_000_000 + exp["hep3.timestamp_microsec"]
    return (TABLE_OF_APP[app], sid, method, src, dst, exp["hep3.source_port"],
            exp["hep3.destination_port"], ts, str(exp["hep3.capture_node_id"]),
            {"UDP": 17, "TCP": 6}[exp["hep3.transport_layer_protocol"]],
            {"IPv4": 2, "IPv6": 10}[exp["hep3.ip_family"]])


def row_key(row: tuple) -> tuple:
    table, sid, cd, ph, dh, _raw = row
    ts = ph["timeSeconds"] * 1_000_000 + ph["timeUseconds"]
    assert cd == ts, (cd, ph)                      # create_date is the HEP timestamp
    return (table, sid, dh.get("method"), ph["srcIp"], ph["dstIp"], ph["srcPort"],
            ph["dstPort"], ts, ph["captureId"], ph["protocol"], ph["protocolFamily"])


@pytest.fixture(scope="module")
def stored(pg_server, tmp_path_factory):  # noqa: F811 - pytest fixture
    """The whole corpus forwarded once through `hepfast run` into a fresh database."""
    pairs = corpus_pairs()
    db = pg_server.create_db()
    tmp = tmp_path_factory.mktemp("pg")
    sw = SwitchProcess(tmp, config(pg_server.dsn(db)), workers=1)
    try:
        sw.send([p for p, _ in pairs])
        got = wait_for(lambda: count_rows(pg_server, db) >= len(pairs), timeout=60)
        assert got, f"{count_rows(pg_server, db)} rows of {len(pairs)}\n{sw.stderr()}"
        status = egress_status(sw, rows=len(pairs))
        status_text = admin_get(sw, "/status")
        metrics = admin_get(sw, "/metrics")
        summary = sw.stop()
        stderr = sw.stderr()
    finally:
        sw.kill()
    return {"db": db, "pairs": pairs, "summary": summary, "status": status,
            "status_text": status_text,
            "metrics": metrics, "stderr": stderr, "dsn": pg_server.dsn(db)}


def test_corpus_one_row_per_message_with_the_right_values(pg_server, stored):  # noqa: F811 - pytest fixture
    rows = all_rows(pg_server, stored["db"])
    assert len(rows) == len(stored["pairs"])
    assert collections.Counter(row_key(r) for r in rows) == \
        collections.Counter(expected_key(e) for _, e in stored["pairs"])
    # the raw column is the payload as sent
    by_ts = {(r[3]["timeSeconds"], r[3]["timeUseconds"], r[3]["srcPort"]): r[5] for r in rows}
    from hepfast.wire import codec
    for p, _e in stored["pairs"][:50]:
        d = codec.decode(p)
        assert by_ts[(d.timestamp, d.timestamp_us, d.src_port)] == d.payload.decode()
    # forwarded means committed: the switch counted exactly what the database has
    s = stored["summary"]
    fwd = {k: v for k, v in s["forwarded"].items() if k.startswith("pg/")}
    assert list(fwd.values()) == [len(rows)]
    check_accounting(s)


def test_json_keys_are_heplify_servers(pg_server, stored):  # noqa: F811 - pytest fixture
    rows = all_rows(pg_server, stored["db"])
    for table, sid, _cd, ph, dh, _raw in rows:
        assert set(ph) == HEPLIFY_PROTOCOL_KEYS, ph
        assert set(dh) == (HEPLIFY_SIP_KEYS if table.startswith("hep_proto_1_")
                           else HEPLIFY_RTC_KEYS), dh
        if table.startswith("hep_proto_1_"):
            assert dh["callid"] == sid and ph["correlation_id"] == sid
            assert dh["cseq"].split()[-1] in H.CALL_METHODS
        else:
            assert dh["proto"] == {"hep_proto_5_default": "rtcp",
                                   "hep_proto_100_default": "log"}[table]
            assert dh["node"] == ph["captureId"]
    invites = [r for r in rows if r[4].get("method") == "INVITE"]
    assert invites and all(r[4]["from_tag"] and not r[4]["to_tag"] for r in invites[:10])


def test_homer_app_call_lookup_returns_exactly_the_call(pg_server, stored):  # noqa: F811 - pytest fixture
    """homer-app's search (data/service/search.go): `create_date between ? AND ?` plus
    `data_header->>'callid' = ?` on hep_proto_1_call; and its transaction query over the call's
    tables, `sid = ANY(ARRAY[?])`."""
    pairs = stored["pairs"]
    calls = collections.Counter(e["sip.Call-ID"] for _, e in pairs if "sip.Call-ID" in e)
    cid = sorted(calls)[len(calls) // 2]
    want = sorted(expected_key(e)[7] for _, e in pairs if e.get("sip.Call-ID") == cid)
    ts = [e["hep3.timestamp_unix"] for _, e in pairs]
    t0 = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(min(ts) - 60))
    t1 = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(max(ts) + 60))
    with pg_server.connect(stored["db"]) as c:
        got = c.execute("SELECT protocol_header, data_header FROM hep_proto_1_call "
                        "WHERE create_date between %s AND %s AND data_header->>'callid' = %s",
                        (t0, t1, cid)).fetchall()
        assert sorted(ph["timeSeconds"] * 1_000_000 + ph["timeUseconds"] for ph, _ in got) \
            == want
        assert {dh["callid"] for _, dh in got} == {cid}
        logs = c.execute("SELECT sid FROM hep_proto_100_default WHERE create_date between %s "
                         "AND %s AND sid = ANY(ARRAY[%s])", (t0, t1, cid)).fetchall()
        assert len(logs) == sum(1 for _, e in pairs if e["hep3.application_protocol"] == "LOG"
                                and e.get("hep3.correlation_id") == cid) >= 1
        # outside the time range: nothing
        assert c.execute("SELECT count(*) FROM hep_proto_1_call WHERE create_date between "
                         "%s AND %s AND data_header->>'callid' = %s",
                         ("2000-01-01T00:00:00Z", "2000-01-02T00:00:00Z", cid)).fetchone()[0] == 0


def test_the_password_appears_nowhere(stored):
    assert PASSWORD in stored["dsn"]
    for where in ("stderr", "metrics", "status_text"):
        assert PASSWORD not in stored[where], where
    assert PASSWORD not in json.dumps(stored["status"])
    assert PASSWORD not in json.dumps(stored["summary"])
    assert stored["status"]["up"] is True
    assert stored["status"]["metrics"]["rows_written_total"] == len(stored["pairs"])
    assert 'hepfast_egress_rows_written_total{destination="pg"}' in stored["metrics"]
    assert "127.0.0.1" in stored["status_text"] and "***" in json.dumps(stored["summary"])


def test_tables_are_partitioned_by_hour(pg_server, stored):  # noqa: F811 - pytest fixture
    with pg_server.connect(stored["db"]) as c:
        parts = [r[0] for r in c.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'hep_proto_1_call' "
            "AND c.relkind = 'r'").fetchall()]
    hours = {time.strftime("%Y%m%d_%H00", time.gmtime(e["hep3.timestamp_unix"]))
             for _, e in stored["pairs"] if e["hep3.application_protocol"] == "SIP"}
    assert sorted(parts) == sorted(f"hep_proto_1_call_{h}" for h in hours)


def test_connection_kills_and_a_restart_lose_nothing_and_duplicate_nothing(
        pg_server, pg_db, tmp_path):  # noqa: F811 - pytest fixture
    """Small batches; the corpus in three parts: after the first is stored every connection is
    killed (pg_terminate_backend); the second goes in right away; then the server is restarted
    while the third is sent. Every message is stored exactly once."""
    pairs = corpus_pairs()
    n = len(pairs)
    parts = [pairs[: n // 3], pairs[n // 3: 2 * n // 3], pairs[2 * n // 3:]]
    sw = SwitchProcess(tmp_path, config(pg_server.dsn(pg_db),
                                        "batch_rows = 50\nflush_seconds = 0.2"), workers=1)
    try:
        sw.send([p for p, _ in parts[0]])
        assert wait_for(lambda: count_rows(pg_server, pg_db) == len(parts[0]), timeout=60)
        assert pg_server.terminate_backends(pg_db) >= 1
        sw.send([p for p, _ in parts[1]])
        pg_server.stop_server()
        sw.send([p for p, _ in parts[2]])
        time.sleep(0.5)                         # let the egress find the server gone
        pg_server.start()
        assert wait_for(lambda: count_rows(pg_server, pg_db) >= n, timeout=90), \
            f"{count_rows(pg_server, pg_db)} of {n}\n{sw.stderr()}"
        st = egress_status(sw, rows=n)
        summary = sw.stop()
    finally:
        sw.kill()
    rows = all_rows(pg_server, pg_db)
    assert collections.Counter(row_key(r) for r in rows) == \
        collections.Counter(expected_key(e) for _, e in pairs)
    m = st["metrics"]
    assert m["connects_total"] >= 2 and m["errors_connection_total"] + \
        m["errors_connect_total"] >= 1, m
    assert [v for k, v in summary["forwarded"].items() if k.startswith("pg/")] == [n]
    check_accounting(summary)


# ------------------------------------------------------------------------- the egress alone

def _ring_with(packets):
    from hepfast.egress._ring import Ring, format_ring

    mm = mmap.mmap(-1, 4096 + (1 << 22))
    format_ring(mm, 1 << 22)
    ring = Ring(mm)
    for p in packets:
        assert ring.push(p) == 0
    ring.publish()
    return ring


def _feed(eg, ring, n=100000):
    b = ring.read(n)
    try:
        return eg.send_batch(b)
    finally:
        ring.release(b)


def test_a_batch_whose_commit_was_lost_is_not_written_twice(pg_server, pg_db):  # noqa: F811 - pytest fixture
    """The ambiguous case: the commit reached the server but the answer did not. The batch is
    retried; its id is found in hepfast_batches, so it is settled without a second copy."""
    from hepfast.egress.postgres import PostgresEgress

    pkts = [p for p, _ in corpus_pairs()[:30]]
    eg = PostgresEgress("pg", pg_server.dsn(pg_db), batch_rows=30, retention_days=0,
                        threaded=False)
    eg.open()
    _feed(eg, _ring_with(pkts))
    assert eg.settle() == (30, 0, 0)
    # replay the same batch as if its acknowledgement had been lost
    from hepfast.egress.postgres import _Batch

    again = _Batch(0.0)
    with pg_server.connect(pg_db) as c:
        bid = c.execute("SELECT batch_id FROM hepfast_batches").fetchone()[0]
    again.id = bid
    again.rows = 30
    again.tables = {"hep_proto_1_call": [H.row_of(p).data for p in pkts]}
    w = eg._writers[0]
    w.cur, w.unsure = again, True               # as left by a connection lost at the commit
    eg._waiting += 30
    eg.flush()
    assert eg.settle() == (30, 0, 0)
    assert eg.batches_found_committed == 1
    assert count_rows(pg_server, pg_db) == 30
    eg.close()


def test_a_refused_transaction_is_retried_once_then_its_batch_fails(pg_server, pg_db,  # noqa: F811
                                                                    monkeypatch):
    """A transaction the server refuses (here: broken partition DDL) is retried once; refused
    again, its batch fails (counted) and the next batch is written."""
    from hepfast.egress.postgres import PostgresEgress

    pkts = [p for p, _ in corpus_pairs()[:40]]
    real = H.partition_ddl
    broken = {"left": 1}

    def flaky(table, start):
        if broken["left"]:
            broken["left"] -= 1
            return "CREATE TABLE nonsense ("          # a syntax error, once
        return real(table, start)

    monkeypatch.setattr(H, "partition_ddl", flaky)
    eg = PostgresEgress("pg", pg_server.dsn(pg_db), batch_rows=20, retention_days=0,
                        threaded=False)
    eg.open()
    _feed(eg, _ring_with(pkts[:20]))
    eg.flush()                                  # the retry
    assert eg.settle() == (20, 0, 0)
    assert eg.metrics()["errors_data_total"] == 1 and count_rows(pg_server, pg_db) == 20
    monkeypatch.setattr(H, "partition_ddl", lambda table, start: "CREATE TABLE nonsense (")
    eg._parts.clear()                           # make the next batch run its partition DDL
    _feed(eg, _ring_with(pkts[20:40]))
    eg.flush()
    assert eg.settle() == (0, 20, 0)
    assert eg.metrics()["errors_data_total"] == 3 and eg.metrics()["queue_rows"] == 0
    monkeypatch.setattr(H, "partition_ddl", real)
    _feed(eg, _ring_with(pkts[:20]))
    eg.close()
    assert eg.settle() == (20, 0, 0) and count_rows(pg_server, pg_db) == 40


@pytest.mark.parametrize("compiled", [True, False])
def test_queue_bound_and_close_while_the_server_is_away(pg_server, compiled):  # noqa: F811
    """No server (a closed port): rows wait up to queue_rows, the rest is queue_full; close()
    counts the waiting rows as failed; health says why, without the password. Both row
    converters (C, and row_of alone) count the same."""
    from hepfast.egress.postgres import PostgresEgress
    from tests.pghelper import _free_port

    dsn = f"postgresql://hepfast:{PASSWORD}@127.0.0.1:{_free_port()}/x"
    eg = PostgresEgress("pg", dsn, batch_rows=10, queue_rows=40, connect_timeout_s=2,
                        threaded=False, compiled=compiled)
    eg.open()
    up, detail = eg.health()
    assert not up and detail and PASSWORD not in detail
    pkts = [p for p, _ in corpus_pairs()[:100]]
    _feed(eg, _ring_with(pkts))
    assert eg.settle() == (0, 0, 60)
    assert eg.metrics()["queue_rows"] == 40
    eg.close()
    assert eg.settle() == (0, 40, 0)
    assert eg.metrics()["errors_connect_total"] >= 1


def test_retention_drops_old_partitions(pg_server, pg_db):  # noqa: F811 - pytest fixture
    from hepfast.egress.postgres import PostgresEgress
    from hepfast.wire import codec

    old = time.time() - 3 * 86400
    pkts = []
    for p, _ in corpus_pairs()[:5]:
        pkts.append(codec.rewrite(p, set={"timestamp": int(old)}))
    fresh = [p for p, _ in corpus_pairs()[5:10]]
    fresh = [codec.rewrite(p, set={"timestamp": int(time.time())}) for p in fresh]
    eg = PostgresEgress("pg", pg_server.dsn(pg_db), batch_rows=1000, retention_days=1,
                        threaded=False)
    eg.open()
    _feed(eg, _ring_with(pkts + fresh))
    eg.close()
    assert eg.settle() == (10, 0, 0)
    assert count_rows(pg_server, pg_db) == 10
    eg2 = PostgresEgress("pg", pg_server.dsn(pg_db), retention_days=1, threaded=False)
    eg2.open()
    eg2.flush()                                 # first flush after connecting: retention pass
    assert eg2.partitions_dropped >= 1
    eg2.close()
    assert count_rows(pg_server, pg_db) == 5


def test_config_postgres_needs_a_dsn_and_masks_it_in_labels(monkeypatch, tmp_path):
    from hepfast.config import parse_config
    from hepfast.plan.compile import compile_config

    base = """
        [[listeners]]
        name = "a"
        listen = "127.0.0.1:0"
        [destinations.pg]
        transport = "postgres"
        {x}
        [[rules]]
        name = "r"
        forward = ["pg"]
        """
    with pytest.raises(ConfigError, match="dsn"):
        parse_config(base.format(x=""))
    with pytest.raises(ConfigError, match="not both"):
        parse_config(base.format(x='dsn = "postgresql://u@h/d"\ndsn_env = "PGX"'))
    with pytest.raises(ConfigError, match="queue_rows"):
        parse_config(base.format(x='dsn = "postgresql://u@h/d"\nbatch_rows = 10\n'
                                       'queue_rows = 5'))
    with pytest.raises(ConfigError, match=r"destinations\.pg\.writers"):
        parse_config(base.format(x='dsn = "postgresql://u@h/d"\nwriters = 0'))
    cfg = parse_config(base.format(x='dsn = "postgresql://u@h/d"\nwriters = 3'))
    from hepfast.egress.postgres import PostgresEgress

    (dest,) = compile_config(cfg).destinations
    eg = PostgresEgress.from_settings("pg", dict(dest.settings))
    assert len(eg._writers) == 3 and eg.batch_rows == 5000 and eg._spool is None
    with pytest.raises(ConfigError, match=r"destinations\.pg\.spool"):
        parse_config(base.format(x='dsn = "postgresql://u@h/d"\nspool = ""'))
    with pytest.raises(ConfigError, match=r"destinations\.pg\.keepalive"):
        parse_config(base.format(x='dsn = "postgresql://u@h/d"\nkeepalive = 3'))
    spool = tmp_path / "sp"
    cfg = parse_config(base.format(x=f'dsn = "postgresql://u@h/d"\nspool = "{spool}"\n'
                                       f'spool_max_bytes = 2097152'))
    (dest,) = compile_config(cfg).destinations
    eg = PostgresEgress.from_settings("pg", dict(dest.settings))
    assert eg._spool is not None and eg._spool.max_bytes == 2097152
    assert eg._spool.path == str(spool / "pg")
    cfg = parse_config(base.format(x=f'dsn = "postgresql://u:{PASSWORD}@h/d"'))
    label = [t.configured for d in compile_config(cfg).destinations for t in d.targets]
    assert label == ["postgresql://u:***@h/d"]
    monkeypatch.setenv("HEPFAST_TEST_DSN", f"postgresql://u:{PASSWORD}@h/d")
    cfg = parse_config(base.format(x='dsn_env = "HEPFAST_TEST_DSN"'))
    comp = compile_config(cfg)
    assert [t.configured for d in comp.destinations for t in d.targets] == \
        ["$HEPFAST_TEST_DSN"]
    from hepfast.observe.redact import secrets_of
    assert PASSWORD in secrets_of(cfg)


# ------------------------------------------------------------- the compiled row encoder

NOW = 1_700_000_000.375                         # create_date of packets without a timestamp


def _reference(pkt: bytes):
    r = H.row_of(pkt, NOW)
    return None if r is None else (r.table, r.ts_us, r.data)


def test_compiled_rows_equal_row_of_on_the_corpus():
    """Every corpus packet: the C encoder's row is row_of's, byte for byte, and none of them
    needs the Python fallback (real traffic takes the fast path)."""
    from hepfast.egress._pgrow import RowEncoder

    enc = RowEncoder(H.PARTITION_SECONDS)
    pkts = [p for p, _ in corpus_pairs()]
    got = [enc.row(p, NOW) for p in pkts]
    assert "slow" not in got
    assert got == [_reference(p) for p in pkts]
    assert sum(g is not None for g in got) == len(pkts)


def test_compiled_span_encoding_groups_rows_like_row_of():
    """A ring batch through encode(): per (table, partition) the concatenated tuples of
    row_of in record order; rows of packets without a timestamp dated `now`; undecodable
    records skipped; rows past `limit` counted over, not encoded."""
    from hepfast.egress._pgrow import RowEncoder
    from hepfast.wire import codec

    base = [p for p, _ in corpus_pairs()]
    pkts = [codec.rewrite(base[i % len(base)], set={"timestamp": 1_700_000_000 + i * 600})
            for i in range(60)]
    pkts.append(codec.rewrite(base[0], delete=["timestamp", "timestamp_us"]))
    pkts += [b"HEP3\x00\x05junk", b"\x00" * 40]
    nul = codec.rewrite(base[0], set={"node_name": "a\x00b"})
    enc = RowEncoder(H.PARTITION_SECONDS)
    ring = _ring_with(pkts + [nul])
    b = ring.read(1000)
    groups, skipped, over, slow = enc.encode(b.span, NOW, 1000)
    ring.release(b)
    assert (skipped, over, slow) == (2, 0, [nul])         # NUL: row_of's to clean
    want: dict = {}
    for p in pkts:
        r = H.row_of(p, NOW)
        if r is not None:
            key = (r.table, H.partition_start(r.ts_us))
            want.setdefault(key, [0, b""])
            want[key][0] += 1
            want[key][1] += r.data
    assert {(t, s): [n, data] for t, s, n, data in groups} == want
    assert len(want) > 3                        # several hours and tables: several groups
    ring = _ring_with(pkts)
    b = ring.read(1000)
    groups, skipped, over, slow = enc.encode(b.span, NOW, 25)
    ring.release(b)
    assert (sum(g[2] for g in groups), skipped, over) == (25, 2, 36)


def _text():
    from hypothesis import strategies as st

    return st.one_of(st.sampled_from([b"", b"abc", b"a\x00b", b"\xc3\xa9t\xc3\xa9", b"\xff\xfe",
                                      b"x;tag=1", b"<sip:u@h>;tag= T ", b'"q\\"x" <sip:a@b>']),
                     st.binary(max_size=12))


def _sip_payloads():
    from hypothesis import strategies as st

    start = st.sampled_from([b"INVITE sip:bob@example.com SIP/2.0", b"SIP/2.0 200 OK",
                             b"register sip:r@h;x=1 SIP/2.0", b"SIP/2.0 180", b"BYE x SIP/2.0",
                             b"bogus line", b"OPTIONS sip:[::1]:5060 SIP/2.0"])
    names = st.sampled_from([b"Call-ID", b"i", b"CSeq", b"cseq ", b"From", b"f", b"To", b"t",
                             b"User-Agent", b"X-Other", b" folded", b""])
    values = st.one_of(_text(), st.sampled_from([
        b" 1 INVITE", b"2 ack", b" 3 REGISTER ", b"4\tBYE", b"5 X", b"6 \xc3\xa9ACK",
        b" <sip:alice@a.example>;tag=abc", b"sip:u@h;tag=", b"<sip:x@y;tag=in>;TAG = out ",
        b"Bob <tel:+123;p=1>;x;tag=t2", b" abc@host ", b"ua/1.0 \x01\x7f"]))
    header = st.tuples(names, st.sampled_from([b":", b" :", b""]), values).map(b"".join)
    callid = st.tuples(st.sampled_from([b"Call-ID: ", b"i:"]), st.one_of(
        st.sampled_from([b"abc@h", b"id-1", b"x\xc3\xa9y", b" spaced "]), _text())).map(b"".join)
    cseq = st.sampled_from([b"CSeq: 1 INVITE", b"CSeq: 2 REGISTER", b"cseq:3 bye",
                            b"CSeq: 4 OPTIONS", b"CSeq: 5 X", b"CSeq: 6 \xc3\xa9AC"])
    eol = st.sampled_from([b"\r\n", b"\r\n", b"\n"])
    headers = st.tuples(st.lists(header, max_size=7), callid, cseq, st.randoms()).map(
        lambda t: t[3].sample(t[0] + [t[1], t[2]], len(t[0]) + 2))
    return st.tuples(start, headers, eol,
                     st.sampled_from([b"", b"\r\n", b"\r\nv=0\r\n", b"\n\nbody\x00"])).map(
        lambda t: t[0] + b"".join(t[2] + h for h in t[1]) + t[2] + t[3])


def _packets():
    from hypothesis import strategies as st

    from hepfast.wire import codec

    def u(n):
        return st.integers(0, (1 << (8 * n)) - 1).map(lambda v: v.to_bytes(n, "big"))
    chunk = st.one_of(
        st.tuples(st.just(1), st.sampled_from([b"\x02", b"\x0a", b"\x00", b"\x07"])),
        st.tuples(st.just(2), u(1)), st.tuples(st.just(3), u(4)), st.tuples(st.just(4), u(4)),
        st.tuples(st.just(5), u(16)), st.tuples(st.just(6), u(16)),
        st.tuples(st.just(7), u(2)), st.tuples(st.just(8), u(2)),
        st.tuples(st.just(9), st.one_of(st.just(b"\x00" * 4), u(4))),
        st.tuples(st.just(10), st.one_of(st.just(b"\x00" * 4), u(4))),
        st.tuples(st.just(12), u(4)), st.tuples(st.just(0x11), _text()),
        st.tuples(st.just(0x13), _text()), st.tuples(st.just(0x10), st.binary(max_size=8)))
    ptype = st.sampled_from([1, 1, 1, 1, 1, 5, 100, 34, 53, 0, 200]).map(
        lambda t: (0x0B, bytes([t])))
    payload = st.tuples(st.just(0x0F), st.one_of(_sip_payloads(), _sip_payloads(), _text()))
    corr = st.tuples(st.just(0x11), st.sampled_from([b"corr-1", b"c\xc3\xa9"]))
    chunks = st.tuples(st.lists(st.one_of(chunk, corr), max_size=12), ptype,
                       st.lists(payload, min_size=1, max_size=2),
                       st.permutations(range(3))).map(
        lambda t: [c for i in t[3] for c in (t[0], [t[1]], t[2])[i]])
    return chunks.map(lambda cs: codec.encode([(0, ct, body) for ct, body in cs]))


def test_compiled_rows_equal_row_of_on_generated_packets():
    """Generated packets (odd chunks, SIP header variants, NUL, invalid UTF-8, compact and
    duplicate headers, tags inside and outside <...>): the C row is row_of's, byte for byte,
    or the packet is handed to row_of ("slow"; the corpus test shows real traffic is not)."""
    from hypothesis import HealthCheck, given, settings

    from hepfast.egress._pgrow import RowEncoder

    enc = RowEncoder(H.PARTITION_SECONDS)
    seen = collections.Counter()

    @settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_packets())
    def check(pkt):
        got = enc.row(pkt, NOW)
        seen["slow" if got == "slow" else "none" if got is None else "row"] += 1
        if got != "slow":
            assert got == _reference(pkt)

    check()
    assert seen["row"] >= 60 and seen["none"] >= 60, seen


# ------------------------------------------------------------------ several writers

def test_several_writers_store_every_row_once_through_connection_kills(pg_server, pg_db):  # noqa: F811
    """Three writer threads, small batches, the corpus fed in ring batches while every
    connection is killed twice: each row is stored exactly once (ids checked after each
    reconnect) and the counters add up."""
    from hepfast.egress.postgres import PostgresEgress
    from hepfast.wire import codec

    base = [p for p, _ in corpus_pairs()]
    t0 = int(time.time()) - 600
    pkts = [codec.rewrite(base[i % len(base)], set={"timestamp": t0 + i // 10,
                                                    "timestamp_us": i % 1_000_000})
            for i in range(3 * len(base))]
    eg = PostgresEgress("pg", pg_server.dsn(pg_db), batch_rows=100, flush_seconds=0.05,
                        retention_days=0, writers=3, retry_s=0.05, retry_max_s=0.2)
    eg.open()
    assert eg.health() == (True, "connected")
    kills = []
    done = [0, 0, 0]

    def connected() -> int:
        with pg_server.connect(pg_db) as c:
            return c.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                             "AND pid <> pg_backend_pid()", (pg_db,)).fetchone()[0]
    for i in range(0, len(pkts), 200):
        _feed(eg, _ring_with(pkts[i:i + 200]))
        if i in (800, 2400):
            assert wait_for(connected, timeout=60)      # the writers are back after a kill
            kills.append(pg_server.terminate_backends(pg_db))
        done = [a + b for a, b in zip(done, eg.settle(), strict=True)]
    eg.close()
    done = [a + b for a, b in zip(done, eg.settle(), strict=True)]
    assert len(kills) == 2 and min(kills) >= 1, kills
    assert done == [len(pkts), 0, 0], (done, eg.metrics())
    with pg_server.connect(pg_db) as c:
        stored = collections.Counter(
            (sid, cd) for t in ("hep_proto_1_call", "hep_proto_100_default",
                                "hep_proto_5_default")
            for sid, cd in c.execute(f"SELECT sid, create_date FROM {t}").fetchall())
        batches = c.execute("SELECT count(*), sum(rows) FROM hepfast_batches").fetchone()
    assert sum(stored.values()) == len(pkts) and max(stored.values()) == 1
    m = eg.metrics()
    assert batches == (m["batches_total"], len(pkts))   # one id per settled batch
    assert m["rows_written_total"] == len(pkts) and m["queue_rows"] == 0
    assert m["connects_total"] >= 3 + 1


def test_close_right_after_the_connections_were_killed_still_stores_the_tail(
        pg_server, pg_db):  # noqa: F811 - pytest fixtures
    """Stop just after every connection was killed (the egress does not know yet): the last
    partial batch finds its connection broken at close, gets one fresh one, and is stored."""
    from hepfast.egress.postgres import PostgresEgress

    pkts = [p for p, _ in corpus_pairs()[:50]]
    eg = PostgresEgress("pg", pg_server.dsn(pg_db), batch_rows=30, retention_days=0,
                        writers=1, threaded=False)
    eg.open()
    _feed(eg, _ring_with(pkts[:30]))
    assert eg.settle() == (30, 0, 0)
    assert pg_server.terminate_backends(pg_db) == 1
    _feed(eg, _ring_with(pkts[30:]))            # 20 rows: not a full batch, not sealed yet
    assert eg.settle() == (0, 0, 0)
    eg.close()
    assert eg.settle() == (20, 0, 0)
    assert count_rows(pg_server, pg_db) == 50 and eg.metrics()["errors_connection_total"] == 1


def test_compiled_span_with_slow_records_and_many_groups_equals_row_of():
    """A span mixing packets the C path hands back (NUL in the node name) with ones it encodes,
    spread over more (table, hour) groups than the encoder holds at once (64): every row
    row_of gives comes out exactly once, from the groups or through `slow`."""
    from hepfast.egress._pgrow import RowEncoder
    from hepfast.wire import codec

    base = [p for p, _ in corpus_pairs()]
    pkts = []
    for i in range(400):
        p = codec.rewrite(base[i % len(base)], set={"timestamp": 1_700_000_000 + (i % 90) * 3600})
        pkts.append(codec.rewrite(p, set={"node_name": "n\x00x"}) if i % 7 == 3 else p)
    enc = RowEncoder(H.PARTITION_SECONDS)
    ring = _ring_with(pkts)
    b = ring.read(1000)
    groups, skipped, over, slow = enc.encode(b.span, NOW, 1000)
    ring.release(b)
    assert (skipped, over, len(slow)) == (0, 0, sum(1 for i in range(400) if i % 7 == 3))
    got = collections.Counter()
    for table, start, n, _data in groups:
        got[(table, start)] += n
    for p in slow:
        r = H.row_of(p, NOW)
        got[(r.table, H.partition_start(r.ts_us))] += 1
    want = collections.Counter((r.table, H.partition_start(r.ts_us))
                               for r in (H.row_of(p, NOW) for p in pkts))
    assert got == want and len(want) > 64
    fast = b"".join(d for t, s, n, d in sorted(groups, key=lambda g: (g[0], g[1])))
    ref = b"".join(H.row_of(p, NOW).data for p in sorted(
        (p for i, p in enumerate(pkts) if i % 7 != 3),
        key=lambda p: (H.row_of(p, NOW).table, H.partition_start(H.row_of(p, NOW).ts_us))))
    assert fast == ref                          # record order kept within each group


# ------------------------------------------------------------------ the spool

def _unique_packets(n: int) -> list[bytes]:
    from hepfast.wire import codec

    base = [p for p, _ in corpus_pairs()]
    t0 = int(time.time()) - 300
    return [codec.rewrite(base[i % len(base)], set={"timestamp": t0, "timestamp_us": i})
            for i in range(n)]


def _stored_keys(srv, db: str) -> collections.Counter:
    with srv.connect(db) as c:
        have = {r[0] for r in c.execute("SELECT tablename FROM pg_tables").fetchall()}
        return collections.Counter(
            (sid, cd) for t in TABLES if t in have
            for sid, cd in c.execute(f"SELECT sid, create_date FROM {t}").fetchall())


def _drain(eg, want: int, timeout: float = 60.0) -> list[int]:
    """flush() until `want` rows are settled as forwarded (bounded)."""
    done = [0, 0, 0]
    end = time.monotonic() + timeout
    while done[0] < want and time.monotonic() < end:
        eg.flush()
        done = [a + b for a, b in zip(done, eg.settle(), strict=True)]
        time.sleep(0.02)
    return done


@pytest.mark.parametrize("threaded", [False, True])
def test_spool_backs_the_row_queue_while_the_database_is_away(pg_server, pg_db,  # noqa: F811
                                                              tmp_path, threaded):
    """Server stopped: rows fill the queue (queue_rows), the rest goes to the spool instead of
    queue_full; server back: the queue and then the spool are written, every row once, the
    spool emptied. Inline and with writer threads."""
    from hepfast.egress.postgres import PostgresEgress

    pkts = _unique_packets(120)
    eg = PostgresEgress("pg", pg_server.dsn(pg_db), batch_rows=10, queue_rows=40,
                        retention_days=0, writers=2, retry_s=0.05, retry_max_s=0.2,
                        threaded=threaded, spool=str(tmp_path / "spool"))
    eg.open()
    _feed(eg, _ring_with(pkts[:20]))
    assert _drain(eg, 20) == [20, 0, 0]
    pg_server.stop_server()
    try:
        for i in range(20, 120, 25):
            _feed(eg, _ring_with(pkts[i:i + 25]))
        assert eg.settle() == (0, 0, 0)             # nothing lost, nothing refused
        m = eg.metrics()
        assert m["spool_records"] == 75 and m["queue_rows"] == 25, m
    finally:
        pg_server.start()
    assert _drain(eg, 100) == [100, 0, 0]
    eg.close()
    assert eg.settle() == (0, 0, 0)
    stored = _stored_keys(pg_server, pg_db)
    assert sum(stored.values()) == 120 and max(stored.values()) == 1
    m = eg.metrics()
    assert m["spool_records"] == 0 and m["spool_replayed_total"] == 75
    assert not [f for f in (tmp_path / "spool").rglob("*.spool")]


def test_spooled_rows_survive_a_close_and_are_replayed_by_the_next_start(
        pg_server, pg_db, tmp_path):  # noqa: F811 - pytest fixtures
    """Closed while the database is away: the rows in memory fail (counted), the spooled ones
    stay on disk; the next egress on that spool stores them once the database is back."""
    from hepfast.egress.postgres import PostgresEgress

    pkts = _unique_packets(100)
    spool = str(tmp_path / "spool")
    kw = dict(batch_rows=10, queue_rows=40, retention_days=0, retry_s=0.05, retry_max_s=0.2,
              threaded=False, spool=spool, connect_timeout_s=2)
    pg_server.stop_server()
    try:
        eg = PostgresEgress("pg", pg_server.dsn(pg_db), **kw)
        eg.open()
        for i in range(0, 100, 25):
            _feed(eg, _ring_with(pkts[i:i + 25]))
        eg.close()
        assert eg.settle() == (0, 25, 0)            # memory: lost; the spool: kept
        assert eg.metrics()["spool_records"] == 75
    finally:
        pg_server.start()
    eg2 = PostgresEgress("pg", pg_server.dsn(pg_db), **kw)
    eg2.open()
    assert _drain(eg2, 75) == [75, 0, 0]
    eg2.close()
    stored = _stored_keys(pg_server, pg_db)
    assert sum(stored.values()) == 75 and max(stored.values()) == 1
    assert eg2.metrics()["spool_records"] == 0
