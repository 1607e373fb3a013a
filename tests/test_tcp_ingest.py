"""HEP over TCP into a real `hepfast run`: framing by the HEPv3 length field whatever the read
boundaries, bad framing closing only its own connection, the guards (idle, stalled, too big,
connection limit), and idle connections beside the UDP fast path."""
from __future__ import annotations

import collections
import random
import resource
import socket
import time

import pytest

from hepfast.tools.sink import Sink
from tests.switchhelp import corpus_messages, SwitchProcess, check_accounting


def corpus() -> list[bytes]:
    return corpus_messages()


def config(sink_port: int, *, workers: int = 1, listener_extra: str = "") -> str:
    return f"""
        [switch]
        workers = {workers}
        [[listeners]]
        name = "tcp"
        listen = "127.0.0.1:0"
        transport = "tcp"
        {listener_extra}
        [[listeners]]
        name = "udp"
        listen = "127.0.0.1:0"
        [destinations.out]
        targets = ["127.0.0.1:{sink_port}"]
        [[rules]]
        name = "all"
        forward = ["out"]
        """


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def send_cut(s: socket.socket, stream: bytes, rng: random.Random, *, max_cut: int = 3000):
    """Write `stream` in pieces of random size (1 byte to several messages), pausing now and
    then so the pieces travel as separate segments."""
    pos = 0
    while pos < len(stream):
        n = rng.choice((1, 2, 5, 7, rng.randint(1, max_cut)))
        s.sendall(stream[pos:pos + n])
        pos += n
        if rng.random() < 0.05:
            time.sleep(0.001)


def closed_by_peer(s: socket.socket, timeout: float = 10.0) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


@pytest.fixture
def sink():
    s = Sink("127.0.0.1:0").start(timeout=60)
    yield s
    s.close()


def test_messages_cut_at_any_boundary_arrive_byte_identical(tmp_path, sink):
    pkts = corpus()
    sw = SwitchProcess(tmp_path, config(sink.port, workers=2), workers=2, extra=["--no-admin"])
    rng = random.Random(7)
    try:
        conns = [connect(sw.ports["tcp"]) for _ in range(3)]
        for s in conns:
            send_cut(s, b"".join(pkts), rng)
        for s in conns:
            s.close()
        assert sink.wait_for(3 * len(pkts), timeout=60)
        summary = sw.stop()
    finally:
        sw.kill()
    assert collections.Counter(sink.packets) == collections.Counter(pkts * 3)
    assert summary["datagrams"] == 3 * len(pkts) and summary["invalid_total"] == 0
    c = summary["connections"]["tcp"]
    assert c["accepted"] == 3 and c["closed"] == {"eof": 3} and c["open"] == 0
    check_accounting(summary)


def test_garbage_closes_only_its_own_connection(tmp_path, sink):
    pkts = corpus()[:300]
    sw = SwitchProcess(tmp_path, config(sink.port), workers=1, extra=["--no-admin"])
    try:
        bad, good = connect(sw.ports["tcp"]), connect(sw.ports["tcp"])
        bad.sendall(b"".join(pkts[:10]) + b"GARBAGE!" + b"".join(pkts[10:20]))
        assert closed_by_peer(bad)
        good.sendall(b"".join(pkts))
        good.close()
        assert sink.wait_for(10 + len(pkts), timeout=30)
        v2 = connect(sw.ports["tcp"])                    # HEPv2 has no length to frame by
        v2.sendall(bytes([2, 16, 2, 17]) + bytes(40))
        assert closed_by_peer(v2)
        sink.wait_quiet(0.3, timeout=10)
        summary = sw.stop()
    finally:
        sw.kill()
    assert collections.Counter(sink.packets) == collections.Counter(pkts[:10] + pkts)
    assert summary["invalid"] == {"magic": 1, "version": 1}
    assert summary["connections"]["tcp"]["closed"] == {"invalid": 2, "eof": 1}
    check_accounting(summary)


def test_guards_idle_stalled_too_big_and_limit(tmp_path, sink):
    pkt = corpus()[0]
    sw = SwitchProcess(tmp_path, config(sink.port, listener_extra="""
        idle_timeout = 0.5
        message_timeout = 0.5
        max_message = 1000
        max_connections = 3
        """), workers=1, extra=["--no-admin"])
    try:
        port = sw.ports["tcp"]
        idle = connect(port)
        stalled = connect(port)
        stalled.sendall(pkt[:len(pkt) // 2])             # half a message, then nothing
        big = connect(port)
        big.sendall(b"HEP3" + (2000).to_bytes(2, "big"))  # announces more than max_message
        assert closed_by_peer(big)
        assert closed_by_peer(stalled)
        assert closed_by_peer(idle)
        held = [connect(port) for _ in range(3)]          # the limit: three at once
        extra = connect(port)
        assert closed_by_peer(extra)
        for s in held:
            s.sendall(pkt)
        assert sink.wait_for(3, timeout=30)
        summary = sw.stop()
    finally:
        sw.kill()
    closed = summary["connections"]["tcp"]["closed"]
    assert closed["too_big"] == 1 and closed["stalled"] == 1 and closed["idle"] == 1
    assert closed["limit"] == 1 and closed["stop"] == 3
    check_accounting(summary)


def test_idle_connections_do_not_disturb_udp(tmp_path, sink):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 4096 and hard != resource.RLIM_INFINITY:
        pytest.skip(f"needs 4096 open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))
    pkts = corpus()
    sw = SwitchProcess(tmp_path, config(sink.port, workers=2), workers=2, extra=["--no-admin"])
    idle: list[socket.socket] = []
    try:
        idle = [connect(sw.ports["tcp"]) for _ in range(1000)]
        busy = [connect(sw.ports["tcp"]) for _ in range(16)]
        for s in busy:
            s.sendall(b"".join(pkts[:50]))
        sw.send(pkts, port=sw.ports["udp"])
        assert sink.wait_for(len(pkts) + 16 * 50, timeout=60)
        for s in busy:
            s.close()
        summary = sw.stop()
    finally:
        for s in idle:
            s.close()
        sw.kill()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert collections.Counter(sink.packets) == collections.Counter(pkts + pkts[:50] * 16)
    assert summary["connections"]["tcp"]["accepted"] == 1016
    check_accounting(summary)
