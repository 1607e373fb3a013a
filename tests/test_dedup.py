"""Dedup across workers (issue 14): the shared table (two processes racing on the same identities:
exactly one wins), the identity's Python twin, and `hepfast run` on the corpus sent twice from two
source ports over two workers."""
from __future__ import annotations

import collections
import multiprocessing
import os
import random
import socket
import sys
import time

import numpy as np
import pytest

from hepfast.dataplane import guard as G
from hepfast.wire import codec
from hepfast.tools.sink import Sink
from tests.switchhelp import SwitchProcess, agents_to, check_accounting, corpus_messages

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="recvmmsg/sendmmsg: Linux only")

_guard = pytest.importorskip("hepfast.dataplane._guard")


def _table(tmp_path, dedup_slots=1 << 16, call_slots=1 << 12):
    path = str(tmp_path / "guard")
    G.create(path, dedup_slots, call_slots)
    return path


# ------------------------------------------------------------------ the table itself

def test_xxh64_twin_and_reference_vectors():
    assert _guard.xxh64(b"") == G.xxh64(b"") == 0xEF46DB3751D8E999
    assert _guard.xxh64(b"abc") == G.xxh64(b"abc") == 0x44BC2CF5AD770999
    rnd = random.Random(7)
    for n in list(range(0, 70)) + [255, 256, 1000]:
        data, seed = rnd.randbytes(n), rnd.getrandbits(64)
        assert _guard.xxh64(data, seed) == G.xxh64(data, seed), n


def test_identity_twin_on_the_corpus():
    msgs = corpus_messages()
    for salt in (0, 7):
        for m in msgs:
            assert _guard.identity(m, salt) == G.dedup_identity(codec.decode(m), salt)
    # what differs between two agents' copies does not count; what differs between messages does
    base = codec.decode(msgs[0])
    assert _guard.identity(msgs[0], 0) != _guard.identity(msgs[0], 1)
    other = [m for m in msgs if codec.decode(m).payload != base.payload][0]
    assert _guard.identity(other) != _guard.identity(msgs[0])


def test_dedup_window_and_expiry(tmp_path):
    g = _guard.Guard(G.open_map(_table(tmp_path)))
    h = 0x1234_5678_9ABC_DEF0
    assert g.dedup(h, 1000, 500) == _guard.NEW
    assert g.dedup(h, 1000, 500) == _guard.HIT
    assert g.dedup(h, 1499, 500) == _guard.HIT
    assert g.dedup(h, 995, 500) == _guard.HIT        # another worker's slightly older clock
    assert g.dedup(h, 1500, 500) == _guard.NEW       # the window is over: seen anew
    assert g.dedup(h, 1600, 500) == _guard.HIT
    assert g.dedup(h ^ (1 << 40), 1600, 500) == _guard.NEW   # another tag, same bucket


def test_full_bucket_degrades_to_forward(tmp_path):
    g = _guard.Guard(G.open_map(_table(tmp_path, dedup_slots=1024)))
    # nine identities of one bucket (same low bits, different tags): eight fit, the ninth not
    hs = [(i << 40) | 0x18 for i in range(1, 10)]
    assert [g.dedup(h, 10, 1000) for h in hs] == [_guard.NEW] * 8 + [_guard.FULL]
    assert g.dedup(hs[8], 10, 1000) == _guard.FULL   # not remembered: never a false duplicate
    assert g.dedup(hs[8], 1010, 1000) == _guard.NEW  # the others expired, room again


def _race(path, hashes, q, start):
    g = _guard.Guard(G.open_map(path))
    out = np.zeros(len(hashes), np.uint8)
    start.wait()
    g.dedup_many(hashes, out, 60_000)
    q.put(out.tobytes())


def test_two_processes_racing_on_the_same_identities_exactly_one_wins(tmp_path):
    path = _table(tmp_path, dedup_slots=1 << 18)
    rnd = np.random.default_rng(3)
    hashes = rnd.integers(0, 2 ** 63, 50_000, dtype=np.uint64)
    ctx = multiprocessing.get_context("fork")
    q, start = ctx.Queue(), ctx.Event()
    # each process walks the same identities, one forwards and one backwards, so they meet
    # in the middle and race on every identity there
    procs = [ctx.Process(target=_race, args=(path, h, q, start))
             for h in (hashes, np.ascontiguousarray(hashes[::-1]))]
    for p in procs:
        p.start()
    start.set()
    outs = [np.frombuffer(q.get(timeout=60), np.uint8) for _ in procs]
    for p in procs:
        p.join(10)
    a, b = outs[0], outs[1][::-1]
    assert not np.any((a == _guard.FULL) | (b == _guard.FULL))
    assert np.all((a == _guard.NEW) ^ (b == _guard.NEW)), "an identity won twice or never"
    assert 0 < int(np.sum(a == _guard.NEW)) < len(hashes)


# ------------------------------------------------------------------ through `hepfast run`

def _config(port: int, dedup: bool, window_ms: int) -> str:
    return agents_to(port, """
        [[rules]]
        name = "all"
        forward = ["out"]
        """, listener=f"dedup = true\ndedup_window_ms = {window_ms}" if dedup else "")


def _send_twice(port: int, packets: list[bytes]) -> None:
    """Every packet from two source ports, one right after the other (two flows, so the
    kernel's spread puts copies on both workers)."""
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i, p in enumerate(packets):
            a.sendto(p, ("127.0.0.1", port))
            b.sendto(p, ("127.0.0.1", port))
            if i % 25 == 24:
                time.sleep(0.001)
    finally:
        a.close()
        b.close()


@pytest.fixture
def sink():
    s = Sink("127.0.0.1:0").start(timeout=120)
    yield s
    s.close()


@pytest.mark.parametrize("dedup", [True, False], ids=["dedup", "no-dedup"])
def test_corpus_sent_twice_over_two_workers(tmp_path, sink, dedup):
    msgs = corpus_messages()
    ident = {m: _guard.identity(m) for m in msgs}
    distinct = len(set(ident.values()))
    # The window outlasts the test: which copies meet does not depend on timing.
    sw = SwitchProcess(tmp_path, _config(sink.port, dedup, 120_000), workers=2,
                       extra=["--no-admin"])
    try:
        _send_twice(sw.port, msgs)
        want = distinct if dedup else 2 * len(msgs)
        assert sink.wait_for(want, timeout=60), (len(sink.packets), want)
        time.sleep(0.5)                      # nothing more arrives
        summary = sw.stop()
    finally:
        sw.kill()
    per_worker = [w["datagrams"] for w in summary["workers"]]
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker), per_worker
    assert summary["received"] == 2 * len(msgs)
    if dedup:
        # Each identity forwarded exactly once (the corpus has 80 log lines that repeat an
        # earlier one's payload and addresses: those are duplicates too), only sent bytes.
        got = collections.Counter(ident[p] for p in sink.packets)
        assert len(sink.packets) == distinct and set(got.values()) == {1}
        assert set(sink.packets) <= set(msgs)
        assert summary["dropped"] == {"duplicate": 2 * len(msgs) - distinct}
    else:
        assert collections.Counter(sink.packets) == collections.Counter(msgs * 2)
        assert "duplicate" not in summary["dropped"]
    assert summary["guard"]["dedup_table_full"] == 0
    check_accounting(summary)


def test_window_expiry_lets_a_later_copy_through(tmp_path, sink):
    sip = corpus_messages("kamailio", sip_only=True)
    sip = list({_guard.identity(m): m for m in sip}.values())[:300]
    window = 1000
    sw = SwitchProcess(tmp_path, _config(sink.port, True, window),
                       workers=1, extra=["--no-admin"])
    try:
        _send_twice(sw.port, sip)            # pairs a few microseconds apart: one of each
        assert sink.wait_for(len(sip), timeout=30)
        time.sleep(3 * window / 1000)        # well past the window
        sw.send(sip)                         # seen anew
        assert sink.wait_for(2 * len(sip), timeout=30)
        time.sleep(0.5)
        summary = sw.stop()
    finally:
        sw.kill()
    assert collections.Counter(sink.packets) == collections.Counter(sip * 2)
    assert summary["dropped"] == {"duplicate": len(sip)}
    check_accounting(summary)


def test_rule_dedup_applies_when_the_rule_takes_the_packet(tmp_path, sink):
    """A rule's own dedup drops only what that rule takes; other packets pass twice."""
    msgs = corpus_messages("kamailio")
    sip = [m for m in msgs if codec.decode(m).proto_type == 1]
    logs = [m for m in msgs if codec.decode(m).proto_type == 100]
    sw = SwitchProcess(tmp_path, agents_to(sink.port, """
        [[rules]]
        name = "sip"
        match.proto_type = "sip"
        dedup = true
        dedup_window_ms = 120000
        forward = ["out"]
        [[rules]]
        name = "rest"
        forward = ["out"]
        """), workers=2, extra=["--no-admin"])
    try:
        _send_twice(sw.port, sip + logs)
        want = len(sip) + 2 * len(logs)
        assert sink.wait_for(want, timeout=60), (len(sink.packets), want)
        time.sleep(0.5)
        summary = sw.stop()
    finally:
        sw.kill()
    assert collections.Counter(sink.packets) == collections.Counter(sip + logs * 2)
    assert summary["rules"] == {"sip": 2 * len(sip), "rest": 2 * len(logs)}
    assert summary["dropped"] == {"duplicate": len(sip)}
    check_accounting(summary)


def test_dedup_survives_a_reload(tmp_path, sink):
    """The table lives in the run directory: copies sent after a reload are still duplicates
    of what came before it."""
    sip = corpus_messages("kamailio", sip_only=True, limit=200)
    sip = list({_guard.identity(m): m for m in sip}.values())
    sw = SwitchProcess(tmp_path, _config(sink.port, True, 120_000), workers=2,
                       extra=["--no-admin"])
    try:
        sw.send(sip)
        assert sink.wait_for(len(sip), timeout=30)
        text = sw.cfg.read_text().replace('name = "all"', 'name = "all"\nset.capture_id = 7')
        sw.cfg.write_text(text)
        os.kill(sw.proc.pid, 1)              # SIGHUP: reload
        end = time.monotonic() + 20
        while "generation 2" not in sw.stderr() and time.monotonic() < end:
            time.sleep(0.05)
        assert "generation 2" in sw.stderr(), sw.stderr()
        sw.send(sip)
        # the table's size is fixed at start: a reload that changes it is refused, named
        sw.cfg.write_text(text + "\n[switch]\ndedup_slots = 4096\n")
        os.kill(sw.proc.pid, 1)
        end = time.monotonic() + 20
        while "reload refused" not in sw.stderr() and time.monotonic() < end:
            time.sleep(0.05)
        assert "switch.dedup_slots" in sw.stderr(), sw.stderr()
        time.sleep(1.0)
        summary = sw.stop()
    finally:
        sw.kill()
    assert collections.Counter(sink.packets) == collections.Counter(sip)
    assert summary["dropped"] == {"duplicate": len(sip)}
    assert summary["generation"] == 2 and summary["reloads"] == {"ok": 1, "error": 1}
