"""A real Prometheus server scrapes the admin API (over a fake supervisor whose counters the test
sets) every second; its query API must report exactly those values.

Skips with the reason when the `prometheus` binary is absent (the test command installs it with
scripts/ensure-deps.sh). The `prometheus` fixture (tests/promhelper.py) is reusable: the end-to-end
variant with real traffic through the switch imports it the same way.
"""
from __future__ import annotations

import pytest

from hepfast.dataplane import counters as C
from hepfast.wire import reasons
from hepfast.observe.admin import AdminServer
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
