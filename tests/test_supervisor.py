"""Supervision end to end: reload under load without loss, a bad reload changes nothing, a killed
worker is replaced while traffic flows, SIGTERM drains what is queued."""
from __future__ import annotations

import collections
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from hepfast.wire import codec
from tests.conftest import corpus_names, load_corpus
from tests.switchhelp import SwitchProcess, check_accounting


def corpus_sip() -> list[bytes]:
    for n in corpus_names():
        if "kamailio" in n:
            return [p for p, _ in load_corpus(n) if codec.decode(p).proto_type == 1]
    pytest.skip("real-traffic corpus not found (expected ../shared/corpus)")


def _config(dest: str, a_port: int, b_port: int, workers: int = 2, broken: bool = False,
            rcvbuf: int | None = None) -> str:
    rule_key = "forwrd" if broken else "forward"
    return f"""
        [switch]
        workers = {workers}
        {f"rcvbuf = {rcvbuf}" if rcvbuf else ""}
        [admin]
        listen = "127.0.0.1:0"
        [[listeners]]
        name = "agents"
        listen = "127.0.0.1:0"
        [destinations.a]
        targets = ["127.0.0.1:{a_port}"]
        [destinations.b]
        targets = ["127.0.0.1:{b_port}"]
        [[rules]]
        name = "all"
        {rule_key} = ["{dest}"]
        """


def _admin(sw: SwitchProcess) -> str:
    for line in sw.stderr().splitlines():
        if line.startswith("admin http://"):
            return line.split()[1].rsplit("/", 1)[0]
    raise AssertionError(f"no admin line:\n{sw.stderr()}")


def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _status(base: str) -> dict:
    code, body = _get(base + "/status")
    assert code == 200
    return json.loads(body)


def _wait(pred, timeout=15.0, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _workers_on(base: str, gen: int) -> bool:
    ws = _status(base)["workers"]
    return bool(ws) and all(w["generation"] == gen and w["alive"] for w in ws)


class Pacer(threading.Thread):
    """Send packets at a steady moderate rate from a few sockets until stopped (bounded).

    The pause before each packet comes from one clock read, clamped at zero: two reads could
    disagree and ask time.sleep for a negative time, which raises and silently ended the
    traffic. Anything else that ends the thread early is kept in `error` for the test to show."""

    def __init__(self, port: int, packets: list[bytes], pps: int = 1500, limit_s: float = 60):
        super().__init__(daemon=True)
        self.port, self.packets, self.pps, self.limit_s = port, packets, pps, limit_s
        self.sent: list[bytes] = []
        self.stop_ev = threading.Event()
        self.error: BaseException | None = None

    def run(self):
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
        try:
            t0 = time.monotonic()
            i = 0
            while not self.stop_ev.is_set():
                now = time.monotonic()
                if now - t0 >= self.limit_s:
                    break
                delay = t0 + i / self.pps - now
                if delay > 0:
                    time.sleep(delay)
                p = self.packets[i % len(self.packets)]
                socks[i % 4].sendto(p, ("127.0.0.1", self.port))
                self.sent.append(p)
                i += 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test, not lost in a thread
            self.error = exc
        finally:
            for s in socks:
                s.close()

    def sent_now(self) -> int:
        return len(self.sent)

    def finish(self) -> int:
        """Stop, join (bounded), and fail the test if the thread died: how many were sent."""
        self.stop_ev.set()
        self.join(10)
        assert not self.is_alive(), "the pacing thread did not stop"
        assert self.error is None, f"the pacing thread died: {self.error!r}"
        return len(self.sent)


@pytest.fixture
def two_sinks():
    from hepfast.tools.sink import Sink

    a, b = Sink("127.0.0.1:0").start(timeout=180), Sink("127.0.0.1:0").start(timeout=180)
    yield a, b
    a.close()
    b.close()


def _forwarded_to(base: str, dest: str) -> int:
    return next(d["packets"] for d in _status(base)["destinations"] if d["name"] == dest)


def test_reload_under_load_loses_nothing(tmp_path, two_sinks):
    a, b = two_sinks
    sw = SwitchProcess(tmp_path, _config("a", a.port, b.port))
    base = _admin(sw)
    pacer = Pacer(sw.port, corpus_sip())
    try:
        pacer.start()
        gen = 1
        for i in range(5):
            # some traffic on each generation (a count, not a time: a busy machine is slow)
            n = pacer.sent_now()
            _wait(lambda n=n: pacer.sent_now() >= n + 200 or pacer.error,
                  what="traffic before the reload")
            assert pacer.error is None, f"the pacing thread died: {pacer.error!r}"
            dest = "b" if i % 2 == 0 else "a"
            sw.cfg.write_text(_config(dest, a.port, b.port))
            code, body = _get_post(base + "/reload") if i % 2 else (_hup(sw), b"")
            assert code == 200, body
            gen += 1
            _wait(lambda g=gen: _workers_on(base, g), what=f"workers on generation {gen}")
        # The last reload pointed the rule at "b". Every worker is on it, so what the switch
        # forwarded to "a" is final; once sink a has all of it, a must not get one more.
        a_final = _forwarded_to(base, "a")
        _wait(lambda: a.received >= a_final, what="sink a to receive what was sent to a")
        a_before, b_before = a.received, b.received
        n = pacer.sent_now()
        _wait(lambda: pacer.sent_now() >= n + 200 or pacer.error, what="traffic after the reload")
        # a broken config: refused, counted, nothing changes
        sw.cfg.write_text(_config("a", a.port, b.port, broken=True))
        code, body = _get_post(base + "/reload")
        assert code == 400 and b"forwrd" in body, body
        n = pacer.sent_now()
        _wait(lambda: pacer.sent_now() >= n + 200 or pacer.error,
              what="traffic after the refused reload")
        total = pacer.finish()
        _wait(lambda: a.received + b.received >= total, what="all packets at the sinks")
        metrics = _get(base + "/metrics")[1].decode()
        summary = sw.stop()
    finally:
        pacer.stop_ev.set()
        sw.kill()
    assert a_before == a_final
    assert a.received == a_before, "a packet went to the old destination after the reload"
    assert b.received > b_before
    assert collections.Counter(a.packets + b.packets) == collections.Counter(pacer.sent)
    assert summary["reloads"] == {"ok": 5, "error": 1}
    assert summary["generation"] == 6
    assert 'hepfast_config_reloads_total{result="error"} 1.0' in metrics
    assert 'hepfast_config_reloads_total{result="ok"} 5.0' in metrics
    check_accounting(summary)
    assert summary["forwarded_total"] == total


def _hup(sw: SwitchProcess) -> int:
    sw.proc.send_signal(signal.SIGHUP)
    return 200


def _get_post(url: str):
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_killed_worker_is_replaced_while_traffic_flows(tmp_path, two_sinks):
    a, b = two_sinks
    sw = SwitchProcess(tmp_path, _config("a", a.port, b.port))
    base = _admin(sw)
    pacer = Pacer(sw.port, corpus_sip(), pps=1000)
    try:
        pacer.start()
        _wait(lambda: a.received > 100, what="traffic")
        victim = _status(base)["workers"][0]["pid"]
        os.kill(victim, signal.SIGKILL)
        _wait(lambda: _get(base + "/healthz")[0] == 503 or
              _status(base)["workers"][0]["pid"] != victim, what="the kill to be seen")
        _wait(lambda: _get(base + "/healthz")[0] == 200 and
              _status(base)["workers"][0]["pid"] not in (0, victim),
              what="a replacement worker")
        new_pid = _status(base)["workers"][0]["pid"]
        after = a.received
        _wait(lambda: a.received > after + 300, what="traffic after the restart")
        metrics = _get(base + "/metrics")[1].decode()
        pacer.stop_ev.set()
        pacer.join(10)
        summary = sw.stop()
    finally:
        pacer.stop_ev.set()
        sw.kill()
    assert new_pid != victim
    assert "hepfast_worker_restarts_total 1.0" in metrics
    assert summary["restarts"] == 1
    check_accounting(summary)


def test_sigterm_drains_queued_packets(tmp_path, two_sinks):
    a, b = two_sinks
    pkts = corpus_sip()[:600]
    sw = SwitchProcess(tmp_path, _config("a", a.port, b.port, workers=1), extra=["--no-admin"])
    try:
        sw.send(pkts, pace_every=100)
        summary = sw.stop()            # SIGTERM right after the last send; exit code 0 asserted
    finally:
        sw.kill()
    assert a.wait_for(len(pkts), timeout=15)
    assert summary["forwarded_total"] == len(pkts)
    assert collections.Counter(a.packets) == collections.Counter(pkts)


def test_restart_backoff_is_bounded_and_grows():
    from hepfast.dataplane.supervisor import restart_delay

    delays = [restart_delay(n) for n in range(0, 12)]
    assert delays[0] == delays[1] == 0.0            # a single crash: replaced at once
    assert all(b >= a for a, b in zip(delays, delays[1:], strict=False))
    assert delays[3] > delays[2] > 0 and max(delays) == 30.0


def test_kernel_receive_drops_are_counted(tmp_path, two_sinks):
    """Stop the only worker, overflow its socket, let it go: the kernel's own drop count
    (SO_MEMINFO) is reported, and received + dropped-by-kernel equals what was sent."""
    a, b = two_sinks
    sw = SwitchProcess(tmp_path, _config("a", a.port, b.port, workers=1, rcvbuf=1 << 20))
    base = _admin(sw)
    pkts = corpus_sip()
    try:
        pid = _status(base)["workers"][0]["pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            sent = 0
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            for i in range(40_000):          # ~24 MB: well past the 1 MiB receive buffer
                s.sendto(pkts[i % len(pkts)], ("127.0.0.1", sw.port))
                sent += 1
        finally:
            os.kill(pid, signal.SIGCONT)
        for _ in range(20):                 # the drop count rides on the next datagrams
            s.sendto(pkts[0], ("127.0.0.1", sw.port))
            sent += 1
            time.sleep(0.01)
        s.close()
        _wait(lambda: a.received > 0, what="forwarding to resume")
        a.wait_quiet(0.5, timeout=30)
        metrics = _get(base + "/metrics")[1].decode()
        summary = sw.stop()
    finally:
        sw.kill()
    assert summary["overflows"] > 0
    assert summary["datagrams"] + summary["overflows"] == sent
    line = [ln for ln in metrics.splitlines()
            if ln.startswith('hepfast_receive_overflows_total{listener="agents"}')]
    assert line and float(line[0].rsplit(" ", 1)[1]) > 0
