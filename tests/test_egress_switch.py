"""Ring-fed egress end to end: a real `hepfast run` forwarding to a UDP collector and to a `file`
destination at once, the ring under a stopped egress process, and how one sender spreads over
the workers (switch.spread)."""
from __future__ import annotations

import collections
import json
import os
import signal
import urllib.request

import pytest

from hepfast.tools.capture import read_hepraw
from hepfast.tools.sink import Sink
from tests.switchhelp import corpus_messages, SwitchProcess, check_accounting


def corpus() -> list[bytes]:
    return corpus_messages()


def config(sink_port: int, rec_dir, *, workers: int, spread: str = "packet",
           file_extra: str = "", admin: bool = False) -> str:
    return f"""
        [switch]
        workers = {workers}
        spread = "{spread}"
        {'[admin]' if admin else ''}
        {'listen = "127.0.0.1:0"' if admin else ''}
        [[listeners]]
        name = "agents"
        listen = "127.0.0.1:0"
        [destinations.collector]
        targets = ["127.0.0.1:{sink_port}"]
        [destinations.rec]
        transport = "file"
        path = "{rec_dir}"
        {file_extra}
        [[rules]]
        name = "all"
        forward = ["collector", "rec"]
        """


def recorded(rec_dir) -> list[bytes]:
    """Every record of the finished .hepraw files, in file order (names sort by time)."""
    return [p for f in sorted(rec_dir.glob("*.hepraw")) for p in read_hepraw(f)]


@pytest.fixture
def sink():
    s = Sink("127.0.0.1:0").start(timeout=60)
    yield s
    s.close()


def test_file_and_udp_at_once_in_order(tmp_path, sink):
    """One worker, one sending flow: the files hold every packet byte-identical and in the
    order it arrived; the collector got every packet too."""
    pkts = corpus()
    rec = tmp_path / "rec"
    sw = SwitchProcess(tmp_path, config(sink.port, rec, workers=1), workers=1,
                       extra=["--no-admin"])
    try:
        sw.send(pkts)
        assert sink.wait_for(len(pkts), timeout=60)
        summary = sw.stop()
    finally:
        sw.kill()
    assert recorded(rec) == pkts
    assert collections.Counter(sink.packets) == collections.Counter(pkts)
    assert summary["forwarded"][f"rec/{rec}"] == len(pkts)
    assert summary["queued"][f"rec/{rec}"] == len(pkts)
    assert not list(rec.glob("*.part"))                    # closed and renamed at stop
    check_accounting(summary)


def test_two_workers_record_everything(tmp_path, sink):
    pkts = corpus()
    rec = tmp_path / "rec"
    sw = SwitchProcess(tmp_path, config(sink.port, rec, workers=2), workers=2,
                       extra=["--no-admin"])
    try:
        for i in range(3):
            sw.send(pkts[i::3])
        assert sink.wait_for(len(pkts), timeout=60)
        summary = sw.stop()
    finally:
        sw.kill()
    assert collections.Counter(recorded(rec)) == collections.Counter(pkts)
    assert collections.Counter(sink.packets) == collections.Counter(pkts)
    check_accounting(summary)


def test_rotation_keeps_at_most_keep_files(tmp_path, sink):
    """Four rounds, each written before the next (the ring empty in between), each past
    rotate_bytes: at least four files were written, the three newest are kept, whole, in order."""
    pkts = corpus()
    rec = tmp_path / "rec"
    sw = SwitchProcess(tmp_path, config(sink.port, rec, workers=1, admin=True,
                                        file_extra="rotate_bytes = 65536\nkeep = 3"),
                       workers=1)
    rounds = [pkts[i * len(pkts) // 4:(i + 1) * len(pkts) // 4] for i in range(4)]
    try:
        for i, r in enumerate(rounds):
            sw.send(r)
            assert sink.wait_for(sum(len(x) for x in rounds[:i + 1]), timeout=60)
            _wait_ring_empty(sw)
        summary = sw.stop()
    finally:
        sw.kill()
    files = sorted(rec.glob("*.hepraw"))
    assert len(files) == 3
    kept = recorded(rec)
    assert 0 < len(kept) < len(pkts)
    assert kept == pkts[-len(kept):]               # the newest files, whole and in order
    check_accounting(summary)


def _wait_ring_empty(sw: SwitchProcess, timeout: float = 30.0) -> None:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        rec = next(d for d in _status(sw)["destinations"] if d["name"] == "rec")
        if rec["egress"]["ring_used_bytes"] == 0:
            return
        time.sleep(0.02)
    raise AssertionError("the file destination did not drain its ring")


def _status(sw: SwitchProcess) -> dict:
    for line in sw.stderr().splitlines():
        if line.startswith("admin http://"):
            base = line.split()[1].rsplit("/", 1)[0]
            with urllib.request.urlopen(base + "/status", timeout=10) as r:
                return json.loads(r.read())
    raise AssertionError(sw.stderr())


def test_a_stopped_egress_fills_its_ring_and_udp_loses_nothing(tmp_path, sink):
    """SIGSTOP the file destination's egress process: its 256 KiB ring fills, the rest of its
    copies are counted as queue_full for that destination, the UDP collector receives every
    packet, and after SIGCONT the ring drains into the files."""
    pkts = corpus()
    rec = tmp_path / "rec"
    sw = SwitchProcess(tmp_path, config(sink.port, rec, workers=1, admin=True,
                                        file_extra="ring_bytes = 262144"), workers=1)
    try:
        egress = next(d["egress"] for d in _status(sw)["destinations"] if d["name"] == "rec")
        os.kill(egress["pid"], signal.SIGSTOP)
        try:
            sw.send(pkts)
            assert sink.wait_for(len(pkts), timeout=60)
            status = _status(sw)
        finally:
            os.kill(egress["pid"], signal.SIGCONT)
        summary = sw.stop()
    finally:
        sw.kill()
    rec_status = next(d for d in status["destinations"] if d["name"] == "rec")
    assert rec_status["dropped"]["queue_full"] > 0
    assert rec_status["egress"]["ring_used_bytes"] > 200_000        # full, while stopped
    assert collections.Counter(sink.packets) == collections.Counter(pkts)
    full = summary["dropped_by_destination"]["rec"]["queue_full"]
    assert summary["forwarded"][f"rec/{rec}"] + full == len(pkts)
    assert "collector" not in summary["dropped_by_destination"]
    assert len(recorded(rec)) == len(pkts) - full
    assert "destination rec:" in sw.stderr() and "queue is full" in sw.stderr()  # logged
    check_accounting(summary)


@pytest.mark.parametrize("spread", ["packet", "flow"])
def test_one_sender_spreads_over_the_workers(tmp_path, sink, spread):
    pkts = corpus()
    rec = tmp_path / "rec"
    sw = SwitchProcess(tmp_path, config(sink.port, rec, workers=2, spread=spread), workers=2,
                       extra=["--no-admin"])
    try:
        sw.send(pkts)                                  # one socket: one flow
        assert sink.wait_for(len(pkts), timeout=60)
        summary = sw.stop()
    finally:
        sw.kill()
    counts = sorted(w["datagrams"] for w in summary["workers"])
    assert sum(counts) == len(pkts)
    if spread == "packet":
        assert all(0.3 * len(pkts) <= c <= 0.7 * len(pkts) for c in counts), counts
    else:
        assert counts == [0, len(pkts)], counts
    check_accounting(summary)
