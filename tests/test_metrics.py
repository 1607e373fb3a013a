"""hepfast.observe.metrics: counters filled by hand in two worker rows -> exact exposition values and labels.

The metric names and labels are the design.md section 4 contract; these tests pin them.
"""
from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.promhelper import FakeSup

from hepfast.dataplane import counters as C
from hepfast.wire import reasons
from hepfast.observe.metrics import (
    HepfastCollector,
    build_registry,
    exposition,
    proto_label,
    target_label,
    target_up,
)


def scrape(sup) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted label items): value} of one exposition."""
    text = exposition(build_registry(sup)).decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def val(m, name, **labels):
    return m[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def sup():
    s = FakeSup(workers=2)
    # Two workers each contribute: the exposition must show the sums.
    s.add(0, C.OFF_RECEIVED + 0 * 256 + 1, 7)        # agents, sip
    s.add(1, C.OFF_RECEIVED + 0 * 256 + 1, 3)
    s.add(1, C.OFF_RECEIVED + 0 * 256 + 5, 4)        # agents, rtcp
    s.add(0, C.OFF_RECEIVED + 1 * 256 + 200, 2)      # edge, unknown proto type 200
    s.add(0, C.OFF_INVALID + 0 * C.N_INVALID + reasons.MAGIC, 6)
    s.add(1, C.OFF_INVALID + 1 * C.N_INVALID + reasons.AUTH, 1)
    s.add(1, C.OFF_OVERFLOW + 1, 9)                  # edge
    s.add(0, C.OFF_RULE + 5, 10)                     # slot 5 = rule "sip"
    s.add(1, C.OFF_RULE + 2, 4)                      # slot 2 = rule "rtcp"
    s.add(0, C.OFF_FORWARDED + 7, 6)                 # homer 127.0.0.1:9061
    s.add(1, C.OFF_FORWARDED + 3, 4)                 # homer 127.0.0.1:9062
    s.add(0, C.OFF_FORWARDED + 11, 4)                # qos [::1]:9063
    s.add(0, C.OFF_DROP + reasons.DROP_NO_ROUTE, 2)
    s.add(1, C.OFF_DROP + reasons.DROP_SAMPLE, 5)
    s.add(1, C.OFF_SEND_ERR + 3, 2)
    s.add(0, C.H_DATAGRAMS, 30)
    s.add(1, C.H_DATAGRAMS, 12)
    s.reload_counts = {"ok": 3, "error": 1}
    s.restarts = 2
    s.generation = 4
    return s


def test_received_by_listener_and_proto_type(sup):
    m = scrape(sup)
    assert val(m, "hepfast_packets_received_total", listener="agents", proto_type="sip") == 10
    assert val(m, "hepfast_packets_received_total", listener="agents", proto_type="rtcp") == 4
    assert val(m, "hepfast_packets_received_total", listener="edge", proto_type="200") == 2
    # Named proto types are exported from zero so rate() sees their first packets.
    assert val(m, "hepfast_packets_received_total", listener="edge", proto_type="sip") == 0
    assert ("hepfast_packets_received_total",
            (("listener", "agents"), ("proto_type", "200"))) not in m


def test_invalid_and_overflows(sup):
    m = scrape(sup)
    assert val(m, "hepfast_packets_invalid_total", listener="agents", reason="magic") == 6
    assert val(m, "hepfast_packets_invalid_total", listener="edge", reason="auth") == 1
    assert val(m, "hepfast_packets_invalid_total", listener="edge", reason="acl") == 0
    reasons_seen = {dict(k[1])["reason"] for k in m if k[0] == "hepfast_packets_invalid_total"}
    assert reasons_seen == {"short", "magic", "length", "chunk", "version", "auth", "acl", "chunks",
                            "compressed_too_big", "compressed_corrupt"}
    assert val(m, "hepfast_receive_overflows_total", listener="edge") == 9
    assert val(m, "hepfast_receive_overflows_total", listener="agents") == 0


def test_rules_by_stable_slot(sup):
    m = scrape(sup)
    assert val(m, "hepfast_rule_packets_total", rule="sip") == 10
    assert val(m, "hepfast_rule_packets_total", rule="rtcp") == 4
    assert val(m, "hepfast_rule_packets_total", rule="rest") == 0


def test_forwarded_per_target(sup):
    m = scrape(sup)
    assert val(m, "hepfast_packets_forwarded_total", destination="homer",
               target="127.0.0.1:9061") == 6
    assert val(m, "hepfast_packets_forwarded_total", destination="homer",
               target="127.0.0.1:9062") == 4
    assert val(m, "hepfast_packets_forwarded_total", destination="qos", target="[::1]:9063") == 4
    assert val(m, "hepfast_send_errors_total", destination="homer", target="127.0.0.1:9062") == 2


def test_dropped_by_reason(sup):
    m = scrape(sup)
    assert val(m, "hepfast_packets_dropped_total", reason="no_route", destination="") == 2
    assert val(m, "hepfast_packets_dropped_total", reason="sample", destination="") == 5
    got = {dict(k[1])["reason"] for k in m if k[0] == "hepfast_packets_dropped_total"}
    assert got == set(reasons.DROP_NAMES)


def test_supervisor_metrics(sup):
    m = scrape(sup)
    assert val(m, "hepfast_config_reloads_total", result="ok") == 3
    assert val(m, "hepfast_config_reloads_total", result="error") == 1
    assert val(m, "hepfast_worker_restarts_total") == 2
    assert val(m, "hepfast_config_generation") == 4
    assert val(m, "hepfast_workers") == 2
    assert val(m, "hepfast_datagrams_total") == 42
    sup.alive[1] = False
    assert val(scrape(sup), "hepfast_workers") == 1


def test_process_metrics_present(sup):
    m = scrape(sup)
    names = {k[0] for k in m}
    assert "process_cpu_seconds_total" in names
    assert "process_resident_memory_bytes" in names


def test_worker_cpu_from_proc(sup, monkeypatch):
    import os
    monkeypatch.setattr(sup, "workers_alive", lambda: [
        {"index": 0, "pid": os.getpid(), "alive": True, "generation": 1, "heartbeat_age_s": 0.5}])
    m = scrape(sup)
    assert val(m, "hepfast_worker_cpu_seconds_total", worker="0") > 0
    assert val(m, "hepfast_worker_resident_memory_bytes", worker="0") > 0
    assert val(m, "hepfast_worker_heartbeat_age_seconds", worker="0") == 0.5


def test_destination_up(sup):
    now = time.monotonic_ns()
    slot = sup.target_slot("homer", "127.0.0.1", 9062)
    sup.counters.rows[1][C.OFF_LAST_ERR + slot] = now - 1_000_000_000     # 1 s ago
    sup.counters.rows[0][C.OFF_LAST_OK + slot] = now - 2_000_000_000      # good send before it
    m = scrape(sup)
    assert val(m, "hepfast_destination_up", destination="homer", target="127.0.0.1:9062") == 0
    assert val(m, "hepfast_destination_up", destination="homer", target="127.0.0.1:9061") == 1
    # A good send after the error (in another worker's row) brings it back.
    sup.counters.rows[0][C.OFF_LAST_OK + slot] = now
    m = scrape(sup)
    assert val(m, "hepfast_destination_up", destination="homer", target="127.0.0.1:9062") == 1


def test_target_up_rule():
    s = 1_000_000_000
    assert target_up(0, 0, 100 * s)                    # never failed
    assert not target_up(99 * s, 50 * s, 100 * s)      # failed 1 s ago, last good before
    assert target_up(99 * s, 99 * s + 1, 100 * s)      # good send after the error
    assert target_up(94 * s, 0, 100 * s)               # error older than 5 s


def test_labels_helpers():
    assert proto_label(1) == "sip"
    assert proto_label(100) == "log"
    assert proto_label(77) == "77"
    assert target_label("10.0.0.1", 9060) == "10.0.0.1:9060"
    assert target_label("::1", 9060) == "[::1]:9060"


def test_reload_moves_no_counts(sup):
    # A reload that reorders rules keeps each name's slot: counts follow the name, not the position.
    sup.compiled.rule_names = ["rest", "rtcp", "sip"]
    m = scrape(sup)
    assert val(m, "hepfast_rule_packets_total", rule="sip") == 10
    assert val(m, "hepfast_rule_packets_total", rule="rtcp") == 4


def test_unpublished_target_is_skipped(sup):
    sup.compiled.destinations[1].targets.append(("127.0.0.9", 1, 2))   # no slot yet
    m = scrape(sup)
    assert not any(k[0] == "hepfast_packets_forwarded_total" and
                   dict(k[1])["target"] == "127.0.0.9:1" for k in m)


def test_private_registry(sup):
    from prometheus_client import REGISTRY

    build_registry(sup)
    assert not any(isinstance(c, HepfastCollector) for c in REGISTRY._collector_to_names)
