"""A listener's `allow` CIDRs and `auth_key`, end to end against a real `hepfast run`.

- The ACL is decided before the auth key: a sender outside `allow` is counted "acl" whatever its
  packet holds (with no key, a wrong one or the right one), so the auth counter only ever speaks
  of senders that were allowed to talk.
- The key is compared whole (and in constant time, on the worker side): a prefix, a longer key,
  one byte off, a trailing NUL are all "auth"; only the exact key passes.
- A packet with more than one auth-key chunk is refused ("auth"), whichever of them is right:
  otherwise what the switch checked and what a collector reads could be different chunks.
- An IPv4-mapped IPv6 `allow` range never matches (IPv4 senders are matched as IPv4), so
  `hepfast check` refuses it and says the IPv4 form to write.

Senders bind distinct loopback addresses (Linux routes all of 127.0.0.0/8 to lo) so that allowed
and refused sources meet the same listener in one run. Every wait is bounded.
"""
from __future__ import annotations

import collections
import socket
import struct
import subprocess
import sys
import time

import pytest

from hepfast.tools.sink import Sink
from hepfast.wire import codec
from hepfast.wire.chunks import encode_chunk
from tests.conftest import corpus_names, load_corpus
from tests.switchhelp import ROOT, SwitchProcess, check_accounting

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="recvmmsg/sendmmsg: Linux only")

KEY = "s3cret-key"
ALLOWED, REFUSED = "127.0.0.2", "127.0.0.3"
AUTH_KEY_CHUNK = 0x000E


def corpus(n: int) -> list[bytes]:
    for name in corpus_names():
        if "kamailio" in name:
            return [p for p, _ in load_corpus(name)][:n]
    pytest.skip("real-traffic corpus not found (expected ../shared/corpus)")


def keyed(pkts: list[bytes], key: str) -> list[bytes]:
    return [codec.rewrite(p, set={"auth_key": key}) for p in pkts]


def with_extra_chunk(pkt: bytes, body: bytes) -> bytes:
    """`pkt` (HEPv3) with one more auth-key chunk at its end."""
    extra = encode_chunk(0, AUTH_KEY_CHUNK, body)
    assert pkt[:4] == b"HEP3"
    return b"HEP3" + struct.pack(">H", len(pkt) + len(extra)) + pkt[6:] + extra


def send_from(source: str, port: int, packets: list[bytes]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        for i, p in enumerate(packets):
            s.sendto(p, ("127.0.0.1", port))
            if i % 20 == 19:                 # a short pause now and then: no buffer overflows
                time.sleep(0.002)


@pytest.fixture
def sink():
    s = Sink("127.0.0.1:0").start(timeout=120)
    try:
        yield s
    finally:
        s.close()


def switch(tmp_path, sink_port: int, allow: str) -> SwitchProcess:
    return SwitchProcess(tmp_path, f"""
        [switch]
        workers = 1
        default = "out"
        [[listeners]]
        name = "agents"
        listen = "127.0.0.1:0"
        allow = {allow}
        auth_key = "{KEY}"
        [destinations.out]
        targets = ["127.0.0.1:{sink_port}"]
        """, extra=["--no-admin"])


def run(tmp_path, sink: Sink, allow: str, by_source: dict[str, list[bytes]],
        expect_forwarded: list[bytes]) -> dict:
    sw = switch(tmp_path, sink.port, allow)
    try:
        for source, pkts in by_source.items():
            send_from(source, sw.port, pkts)
        assert sink.wait_for(len(expect_forwarded), timeout=30), \
            f"{len(sink.packets)} of {len(expect_forwarded)} arrived"
        summary = sw.stop()
    finally:
        sw.kill()
    sink.wait_quiet(0.3, timeout=10)
    check_accounting(summary)
    assert collections.Counter(sink.packets) == collections.Counter(expect_forwarded)
    return summary


def test_acl_is_checked_before_the_auth_key(tmp_path, sink):
    pkts = corpus(40)
    right, wrong = keyed(pkts, KEY), keyed(pkts, "guess")
    summary = run(tmp_path, sink, f'["{ALLOWED}/32"]', {
        REFUSED: pkts + wrong + right,          # not allowed: "acl", whatever the key
        ALLOWED: wrong + right,                 # allowed: the key decides
    }, expect_forwarded=right)
    assert summary["invalid"] == {"acl": 3 * len(pkts), "auth": len(pkts)}
    assert summary["forwarded_total"] == len(pkts)


def test_auth_key_is_compared_whole(tmp_path, sink):
    base = corpus(10)
    near_misses = [KEY[:-1], KEY + "X", KEY[:-1] + "z", "S" + KEY[1:], KEY + "\x00",
                   KEY[:1], KEY * 2]
    bad = [p for k in near_misses for p in keyed(base, k)]
    empty_key = [with_extra_chunk(p, b"") for p in base]             # a zero-length key chunk
    good = keyed(base, KEY)
    summary = run(tmp_path, sink, '["127.0.0.0/8"]', {ALLOWED: bad + empty_key + good},
                  expect_forwarded=good)
    assert summary["invalid"] == {"auth": len(bad) + len(empty_key)}
    assert summary["forwarded_total"] == len(good)


def test_more_than_one_auth_key_chunk_is_refused(tmp_path, sink):
    base = corpus(20)
    right = keyed(base, KEY)
    wrong = keyed(base, "guess")
    doubled = ([with_extra_chunk(p, KEY.encode()) for p in wrong]       # wrong, then right
               + [with_extra_chunk(p, b"guess") for p in right]         # right, then wrong
               + [with_extra_chunk(p, KEY.encode()) for p in right])    # right twice
    summary = run(tmp_path, sink, '["127.0.0.0/8"]', {ALLOWED: doubled + right},
                  expect_forwarded=right)
    assert summary["invalid"] == {"auth": len(doubled)}


def test_ipv4_mapped_allow_range_is_refused_with_the_ipv4_form(tmp_path):
    cfg = tmp_path / "mapped.toml"
    cfg.write_text('[[listeners]]\nname = "agents"\nlisten = "127.0.0.1:0"\n'
                   'allow = ["10.0.0.0/8", "::ffff:127.0.0.0/104"]\n'
                   '[destinations.out]\ntargets = ["127.0.0.1:9"]\n'
                   '[switch]\ndefault = "out"\n')
    r = subprocess.run([sys.executable, "-m", "hepfast", "check", "-c", str(cfg)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "listeners[0].allow[1]" in r.stderr
    assert 'write the IPv4 form "127.0.0.0/8"' in r.stderr
    # the plain IPv4 range and an ordinary IPv6 one are fine
    cfg.write_text(cfg.read_text().replace("::ffff:127.0.0.0/104", "2001:db8::/32"))
    r = subprocess.run([sys.executable, "-m", "hepfast", "check", "-c", str(cfg)], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
