"""hepfast.observe.admin (the admin HTTP API over a fake supervisor) and hepfast.observe.log.

Real HTTP on 127.0.0.1 with an ephemeral port; the rate sampler runs on a fake clock the test
advances, so rates are exact without any sleeping.
"""
from __future__ import annotations

import io
import json
import logging
import socket
import urllib.error
import urllib.request

import pytest

from hepfast.dataplane import counters as C
from hepfast.wire import reasons
from hepfast.observe.admin import AdminServer, parse_listen
from hepfast.observe.log import RateLimitedLogger, setup_logging
from tests.promhelper import FakeSup


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def sup():
    return FakeSup(workers=2)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def admin(sup, clock):
    a = AdminServer(sup, "127.0.0.1:0", sampler=False, clock=clock)
    a.start()
    try:
        yield a
    finally:
        a.stop()


def http(admin, path, method="GET", data=None):
    """(status, headers, body text) without raising on 4xx/5xx."""
    req = urllib.request.Request(f"{admin.url}{path}", method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


def test_port_zero_gets_a_real_port(admin):
    assert admin.port > 0
    assert admin.url == f"http://127.0.0.1:{admin.port}"


def test_metrics_endpoint(admin, sup):
    sup.add(0, C.OFF_RECEIVED + 1, 7)
    sup.add(1, C.OFF_RECEIVED + 1, 3)
    code, headers, body = http(admin, "/metrics")
    assert code == 200
    assert headers["Content-Type"].startswith("text/plain")
    assert 'hepfast_packets_received_total{listener="agents",proto_type="sip"} 10.0' in body
    assert "process_cpu_seconds_total" in body
    sup.add(0, C.OFF_RECEIVED + 1, 5)                  # read at scrape time, not cached
    assert 'proto_type="sip"} 15.0' in http(admin, "/metrics")[2]


def test_healthz(admin, sup):
    assert http(admin, "/healthz")[:1] == (200,)
    assert http(admin, "/healthz")[2].strip() == "ok"
    sup.alive[1] = False
    code, _, body = http(admin, "/healthz")
    assert code == 503
    assert "worker 1 is not running" in body
    sup.alive[1] = True
    assert http(admin, "/healthz")[0] == 200


def test_status_document(admin, sup):
    sup.add(0, C.OFF_RECEIVED + 0 * 256 + 1, 8)              # agents sip
    sup.add(1, C.OFF_RECEIVED + 1 * 256 + 5, 2)              # edge rtcp
    sup.add(0, C.OFF_INVALID + 1 * C.N_INVALID + reasons.ACL, 3)
    sup.add(0, C.OFF_RULE + 5, 8)                            # "sip"
    sup.add(1, C.OFF_FORWARDED + 7, 5)                       # homer 127.0.0.1:9061
    sup.add(0, C.OFF_FORWARDED + 3, 3)                       # homer 127.0.0.1:9062
    sup.add(1, C.OFF_DROP + reasons.DROP_RULE, 2)
    sup.generation = 3
    sup.reload_counts = {"ok": 2, "error": 1}
    sup.last_reload_error = 'rules[0].forward[0]: unknown destination "homr"'
    sup.restarts = 1
    code, headers, body = http(admin, "/status")
    assert code == 200
    assert headers["Content-Type"] == "application/json"
    st = json.loads(body)
    assert st["generation"] == 3
    assert st["healthy"] is True and st["health"] == "ok"
    assert 64 < st["uptime_s"] < 3600
    assert [w["index"] for w in st["workers"]] == [0, 1]
    assert st["restarts"] == 1
    assert st["reloads"] == {"ok": 2, "error": 1,
                             "last_error": 'rules[0].forward[0]: unknown destination "homr"'}
    lis = {li["name"]: li for li in st["listeners"]}
    assert lis["agents"]["received"] == 8 and lis["agents"]["proto_types"] == {"sip": 8}
    assert lis["edge"]["received"] == 2 and lis["edge"]["invalid"] == 3
    assert lis["edge"]["address"] == "127.0.0.1:40000"       # the bound port, not 0
    assert {r["name"]: r["packets"] for r in st["rules"]} == {"sip": 8, "rtcp": 0, "rest": 0}
    dests = {d["name"]: d for d in st["destinations"]}
    assert dests["homer"]["packets"] == 8
    assert [(t["target"], t["packets"], t["up"]) for t in dests["homer"]["targets"]] == \
        [("127.0.0.1:9061", 5, True), ("127.0.0.1:9062", 3, True)]
    assert dests["qos"]["targets"][0]["target"] == "[::1]:9063"
    assert st["dropped"]["rule"]["packets"] == 2
    assert st["invalid"]["acl"]["packets"] == 3
    assert st["totals"]["received"] == 10 and st["totals"]["forwarded"] == 8


def test_status_rates(admin, sup, clock):
    sup.add(0, C.OFF_RECEIVED + 1, 100)
    admin.sample()                                      # reference at t=1000
    clock.t += 2.0
    sup.add(0, C.OFF_RECEIVED + 1, 300)                 # +400 in 2 s over two workers
    sup.add(1, C.OFF_RECEIVED + 1, 100)
    sup.add(1, C.OFF_RULE + 2, 50)                      # rtcp: 25/s
    sup.add(0, C.OFF_FORWARDED + 11, 10)                # qos: 5/s
    sup.add(0, C.OFF_DROP + reasons.DROP_NO_ROUTE, 6)   # 3/s
    st = json.loads(http(admin, "/status")[2])
    assert st["rate_window_s"] == 2.0
    lis = {li["name"]: li for li in st["listeners"]}
    assert lis["agents"]["received_rate"] == 200.0
    assert lis["edge"]["received_rate"] == 0.0
    assert {r["name"]: r["rate"] for r in st["rules"]}["rtcp"] == 25.0
    dests = {d["name"]: d for d in st["destinations"]}
    assert dests["qos"]["rate"] == 5.0 and dests["qos"]["targets"][0]["rate"] == 5.0
    assert st["dropped"]["no_route"] == {"packets": 6, "rate": 3.0}


def test_status_target_down(admin, sup):
    import time
    slot = sup.target_slot("homer", "127.0.0.1", 9061)
    sup.add(1, C.OFF_SEND_ERR + slot, 4)
    sup.counters.rows[1][C.OFF_LAST_ERR + slot] = time.monotonic_ns()
    st = json.loads(http(admin, "/status")[2])
    t = st["destinations"][0]["targets"][0]
    assert t["target"] == "127.0.0.1:9061"
    assert t["up"] is False and t["send_errors"] == 4
    assert 0 <= t["last_error_age_s"] < 60


def test_reload_ok(admin, sup):
    code, _, body = http(admin, "/reload", method="POST", data=b"")
    assert code == 200
    assert "generation 2" in body
    assert sup.reload_calls == 1
    st = json.loads(http(admin, "/status")[2])
    assert st["generation"] == 2 and st["reloads"]["ok"] == 1
    assert 'hepfast_config_reloads_total{result="ok"} 1.0' in http(admin, "/metrics")[2]


def test_reload_error_names_the_field(admin, sup):
    sup.reload_result = (False, 'rules[2].forward[0]: unknown destination "homr"')
    code, _, body = http(admin, "/reload", method="POST", data=b"")
    assert code == 400
    assert 'rules[2].forward[0]: unknown destination "homr"' in body
    assert "previous config keeps running" in body
    st = json.loads(http(admin, "/status")[2])
    assert st["generation"] == 1
    assert st["reloads"]["error"] == 1
    assert "rules[2].forward[0]" in st["reloads"]["last_error"]
    assert 'hepfast_config_reloads_total{result="error"} 1.0' in http(admin, "/metrics")[2]


def test_handler_error_answers_500_and_keeps_serving(admin, sup, caplog):
    def boom():
        raise RuntimeError("supervisor exploded")
    sup.request_reload = boom
    with caplog.at_level(logging.ERROR, logger="hepfast.observe.admin"):
        code, _, body = http(admin, "/reload", method="POST", data=b"")
    assert code == 500 and "supervisor exploded" in body
    assert http(admin, "/healthz")[0] == 200


def test_unknown_path_and_wrong_method(admin):
    code, _, body = http(admin, "/nope")
    assert code == 404 and "/metrics" in body
    code, headers, _ = http(admin, "/reload")
    assert code == 405 and headers["Allow"] == "POST"
    code, headers, _ = http(admin, "/status", method="POST", data=b"")
    assert code == 405 and headers["Allow"] == "GET"


def test_stop_releases_the_port(sup):
    a = AdminServer(sup, "127.0.0.1:0", sampler=True, sample_s=0.05)
    a.start()
    port = a.port
    assert http(a, "/healthz")[0] == 200
    a.stop()
    with socket.socket() as s:
        with pytest.raises(OSError):
            s.settimeout(1)
            s.connect(("127.0.0.1", port))


def test_address_in_use_says_what_to_change(sup):
    a = AdminServer(sup, "127.0.0.1:0", sampler=False)
    a.start()
    try:
        b = AdminServer(sup, f"127.0.0.1:{a.port}", sampler=False)
        with pytest.raises(OSError, match="admin.listen"):
            b.start()
    finally:
        a.stop()


def test_ipv6_listen(sup):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support")
    a = AdminServer(sup, "[::1]:0", sampler=False)
    try:
        a.start()
    except OSError as exc:
        pytest.skip(f"cannot bind [::1]: {exc}")
    try:
        assert a.url.startswith("http://[::1]:")
        assert http(a, "/healthz")[0] == 200
    finally:
        a.stop()


def test_parse_listen():
    assert parse_listen("127.0.0.1:9096") == ("127.0.0.1", 9096)
    assert parse_listen("[::1]:9096") == ("::1", 9096)
    assert parse_listen(("0.0.0.0", 0)) == ("0.0.0.0", 0)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen("localhost")


# ------------------------------------------------------------------------------ hepfast.observe.log

@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_setup_logging_one_line_per_event(restore_root_logging):
    buf = io.StringIO()
    setup_logging(json=False, level="info", stream=buf)
    setup_logging(json=False, level="info", stream=buf)      # replaces, does not stack
    log = logging.getLogger("hepfast.test")
    log.info("first\nsecond")
    log.debug("hidden at info")
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("with traceback")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith("INFO hepfast.test: first\\nsecond")
    assert "ValueError: bad" in lines[1] and "ERROR" in lines[1]


def test_setup_logging_json(restore_root_logging):
    buf = io.StringIO()
    setup_logging(json=True, level="debug", stream=buf)
    logging.getLogger("hepfast.test").warning("target %s down", "10.0.0.1:9060",
                                              extra={"target": "10.0.0.1:9060"})
    doc = json.loads(buf.getvalue())
    assert doc["level"] == "warning" and doc["logger"] == "hepfast.test"
    assert doc["msg"] == "target 10.0.0.1:9060 down"
    assert doc["target"] == "10.0.0.1:9060"
    assert doc["ts"].endswith("Z")


def test_setup_logging_bad_level(restore_root_logging):
    with pytest.raises(ValueError, match="unknown log level"):
        setup_logging(level="loud")


def test_rate_limited_logger(caplog):
    clock = Clock(0.0)
    rl = RateLimitedLogger("hepfast.test.rl", burst=3, interval=10.0, clock=clock)
    with caplog.at_level(logging.INFO, logger="hepfast.test.rl"):
        written = [rl.warning("bad-src", "bad packet from %s", "10.0.0.9") for _ in range(10)]
        assert written == [True] * 3 + [False] * 7
        assert rl.warning("other", "another key") is True           # keys are independent
        assert rl.suppressed("bad-src") == 7
        clock.t = 10.5                                              # next window
        assert rl.warning("bad-src", "bad packet from %s", "10.0.0.9") is True
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs.count("bad packet from 10.0.0.9") == 4
    assert "7 similar messages suppressed (bad-src)" in msgs
    # the report comes before the first line of the new window
    assert msgs.index("7 similar messages suppressed (bad-src)") == len(msgs) - 2


def test_rate_limited_flush_and_key_bound(caplog):
    clock = Clock(0.0)
    rl = RateLimitedLogger("hepfast.test.rl2", burst=1, interval=60.0, max_keys=4, clock=clock)
    with caplog.at_level(logging.INFO, logger="hepfast.test.rl2"):
        for i in range(4):
            rl.info(("send_error", i), "x")
            rl.info(("send_error", i), "x")                          # suppressed
        clock.t = 1.0
        rl.info(("send_error", 99), "x")                             # evicts the oldest
        assert len(rl._keys) <= 4
        total = rl.flush()
    msgs = [r.getMessage() for r in caplog.records]
    assert 0 < total < 4                    # some were reported at eviction, the rest by flush
    assert sum(int(m.split()[0]) for m in msgs if "similar messages suppressed" in m) == 4
    assert rl.flush() == 0                                           # nothing pending twice
