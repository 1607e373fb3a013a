"""A real Prometheus scrapes a real `hepfast run` while a known number of corpus packets flows
through it: the query API must report exactly the packets sent (received) and forwarded."""
from __future__ import annotations

import pytest

from hepfast.wire import codec
from hepfast.tools.sink import Sink
from tests.conftest import corpus_names, load_corpus
from tests.promhelper import prometheus  # noqa: F401 - the fixture
from tests.switchhelp import SwitchProcess, check_accounting


def test_prometheus_counts_real_traffic(tmp_path, prometheus):  # noqa: F811 - pytest fixture
    names = [n for n in corpus_names() if "kamailio" in n]
    if not names:
        pytest.skip("real-traffic corpus not found (expected ../shared/corpus)")
    pkts = [p for p, _ in load_corpus(names[0])]
    n_sip = sum(codec.decode(p).proto_type == 1 for p in pkts)
    sink = Sink("127.0.0.1:0", keep=False).start(timeout=120)
    sw = SwitchProcess(tmp_path, f"""
        [switch]
        workers = 2
        [admin]
        listen = "127.0.0.1:0"
        [[listeners]]
        name = "agents"
        listen = "127.0.0.1:0"
        [destinations.homer]
        targets = ["127.0.0.1:{sink.port}"]
        [[rules]]
        name = "sip"
        match.proto_type = ["sip"]
        forward = ["homer"]
        [[rules]]
        name = "logs"
        drop = true
        """, workers=2)
    try:
        admin = next(ln.split("http://")[1].split("/")[0] for ln in sw.stderr().splitlines()
                     if ln.startswith("admin http://"))
        prom = prometheus([admin], scrape_s=1.0)
        prom.wait_scraped()
        sw.send(pkts)
        got = prom.wait_value("sum(hepfast_packets_received_total)", len(pkts))
        fwd = prom.wait_value("sum(hepfast_packets_forwarded_total)", n_sip)
        sip = prom.wait_value('hepfast_packets_received_total{proto_type="sip"}', n_sip)
        rule = prom.wait_value('hepfast_rule_packets_total{rule="logs"}', len(pkts) - n_sip)
        summary = sw.stop()
    finally:
        sw.kill()
        sink.close()
    assert got == len(pkts)
    assert fwd == n_sip == summary["forwarded_total"]
    assert sip == n_sip
    assert rule == len(pkts) - n_sip
    check_accounting(summary)
