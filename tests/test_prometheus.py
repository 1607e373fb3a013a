"""A real Prometheus server scrapes the admin API (over a fake supervisor whose counters the test
sets) every second; its query API must report exactly those values.

Skips with the reason when the `prometheus` binary is absent (the test command installs it with
scripts/ensure-deps.sh). The `prometheus` fixture (tests/promhelper.py) is reusable: the end-to-end
variant with real traffic through the switch imports it the same way.
"""
from __future__ import annotations

import time

import pytest

from hepfast import counters as C
from hepfast import reasons
from hepfast.admin import AdminServer
from tests.promhelper import FakeSup, prometheus  # noqa: F401 - the fixture


@pytest.fixture
def served():
    sup = FakeSup(workers=2)
    admin = AdminServer(sup, "127.0.0.1:0")
    admin.start()
    try:
        yield sup, admin
    finally:
        admin.stop()


def test_prometheus_scrapes_exact_values(served, prometheus):  # noqa: F811 - pytest fixture
    sup, admin = served
    sup.add(0, C.OFF_RECEIVED + 1, 1000)             # agents sip, two workers' rows
    sup.add(1, C.OFF_RECEIVED + 1, 234)
    sup.add(1, C.OFF_RECEIVED + 256 + 5, 66)         # edge rtcp
    sup.add(0, C.OFF_FORWARDED + 7, 700)             # homer 127.0.0.1:9061
    sup.add(1, C.OFF_FORWARDED + 3, 534)             # homer 127.0.0.1:9062
    sup.add(0, C.OFF_DROP + reasons.DROP_NO_ROUTE, 66)
    sup.add(1, C.OFF_INVALID + reasons.MAGIC, 5)
    sup.reload_counts = {"ok": 2, "error": 1}

    prom = prometheus([f"127.0.0.1:{admin.port}"], scrape_s=1.0)
    prom.wait_scraped(timeout=30)

    checks = {
        "sum(hepfast_packets_received_total)": 1300,
        'hepfast_packets_received_total{listener="agents",proto_type="sip"}': 1234,
        'hepfast_packets_received_total{listener="edge",proto_type="rtcp"}': 66,
        "sum(hepfast_packets_forwarded_total)": 1234,
        'hepfast_packets_forwarded_total{destination="homer",target="127.0.0.1:9061"}': 700,
        'hepfast_packets_dropped_total{reason="no_route"}': 66,
        'hepfast_packets_invalid_total{listener="agents",reason="magic"}': 5,
        'hepfast_config_reloads_total{result="error"}': 1,
        "hepfast_worker_restarts_total": 0,
        "hepfast_workers": 2,
        'hepfast_destination_up{destination="qos",target="[::1]:9063"}': 1,
    }
    for expr, want in checks.items():
        got = prom.wait_value(expr, want, timeout=30)
        assert got == want, f"{expr}: prometheus reports {got}, expected {want}"

    # Live, not a one-off: new counts show up at the next scrapes.
    sup.add(0, C.OFF_RECEIVED + 1, 66)
    sup.restarts = 1
    assert prom.wait_value("sum(hepfast_packets_received_total)", 1366, timeout=30) == 1366
    assert prom.wait_value("hepfast_worker_restarts_total", 1, timeout=30) == 1
    assert prom.value('up{job="hepfast"}') == 1


# ------------------------------------------------------------------------------ end to end

def _corpus_packets() -> list[bytes]:
    from hepfast import codec
    from tests.conftest import CORPUS_MISSING, corpus_names, load_corpus

    names = corpus_names()
    if not names:
        pytest.skip(CORPUS_MISSING)
    # Only well-formed HEP: the test counts what the switch must accept.
    return [p for n in names for p, _ in load_corpus(n) if codec.reason(p) == 0]


def _admin_base(sw) -> str:
    for line in sw.stderr().splitlines():
        if line.startswith("admin http://"):
            return line.split()[1].rsplit("/", 1)[0]
    raise AssertionError(f"hepfast run printed no admin line:\n{sw.stderr()}")


def test_prometheus_scrapes_the_running_switch(tmp_path, prometheus):  # noqa: F811
    """A real switch forwards the corpus to a sink; Prometheus reports exactly the numbers sent
    and forwarded."""
    from hepfast.sink import Sink
    from tests.switchhelp import SwitchProcess

    packets = _corpus_packets()
    sink = Sink("127.0.0.1:0").start(timeout=120)
    sw = None
    try:
        sw = SwitchProcess(tmp_path, f"""
            [switch]
            workers = 2
            [admin]
            listen = "127.0.0.1:0"
            [[listeners]]
            name = "agents"
            listen = "127.0.0.1:0"
            [destinations.sink]
            targets = ["127.0.0.1:{sink.port}"]
            [[rules]]
            name = "all"
            forward = ["sink"]
            """, workers=2)
        base = _admin_base(sw)
        prom = prometheus([base.removeprefix("http://")], scrape_s=1.0)
        prom.wait_scraped(timeout=30)
        sw.send(packets)
        deadline = time.monotonic() + 30
        while sink.received < len(packets) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sink.received == len(packets)
        n = len(packets)
        target = f"127.0.0.1:{sink.port}"
        assert prom.wait_value("sum(hepfast_packets_received_total)", n) == n
        assert prom.wait_value(
            f'hepfast_packets_forwarded_total{{destination="sink",target="{target}"}}', n) == n
        assert prom.wait_value('hepfast_rule_packets_total{rule="all"}', n) == n
        assert prom.wait_value("sum(hepfast_packets_invalid_total)", 0) == 0
        assert prom.wait_value("hepfast_workers", 2) == 2
        summary = sw.stop()
        assert summary["received"] == n and summary["forwarded_total"] == n
    finally:
        if sw is not None:
            sw.kill()
        sink.close()
