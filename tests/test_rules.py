"""Rule compilation and matching: the compiled tables, the pure-Python evaluator
(hepfast.plan.match_rules, the oracle) and the C matcher (ext/plan/matcher.pxd through
hepfast.plan._matcher.evaluate) agree on every corpus packet and on generated packets and rules; the
corpus counts match what tshark saw; sampling keeps whole calls.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hepfast.plan import _matcher as _rules
from hepfast.wire import codec
from hepfast import plan as rules
from hepfast import constants as K
from hepfast.wire.chunks import encode_packet
from hepfast.config import from_dict, parse_config
from hepfast.wire.hashing import hash64, mix64
from hepfast.plan import compile_config, match_rules, route, sip_info_of
from tests.conftest import corpus_names, load_corpus

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "listeners": [{"name": "agents", "listen": "127.0.0.1:9060"},
                  {"name": "edge", "listen": "[::1]:9060"}],
    "destinations": {"homer": {"targets": ["127.0.0.1:9161", "127.0.0.1:9162"]},
                     "qos": {"targets": ["127.0.0.1:9163"]}},
}


def compiled(rule_list, **top):
    return compile_config(from_dict({**BASE, **top, "rules": rule_list}))


def both(c, data: bytes, listener: int = 0) -> list[int]:
    """C and Python verdicts, asserted equal."""
    pkt = codec.decode(data)
    py = match_rules(c, pkt, listener, sip=sip_info_of(pkt))
    cy = _rules.evaluate(c, data, listener)
    assert cy == py, (cy, py, pkt)
    return cy


def corpus_packets() -> list[tuple[bytes, dict]]:
    return [pair for name in corpus_names() for pair in load_corpus(name)]


needs_corpus = pytest.mark.skipif(not corpus_names(), reason="real-traffic corpus not found at "
                                  "../shared/corpus")


def pkt(*, fam=4, src="10.1.2.3", dst="10.9.9.9", sport=5060, dport=5060, ptype=1, capid=2001,
        proto=17, corr=None, node=None, payload=b"", extra=()) -> bytes:
    ch = []
    if fam is not None:
        ch.append((0, 1, bytes([2 if fam == 4 else 10])))
    if proto is not None:
        ch.append((0, 2, bytes([proto])))
    for t4, t6, a in ((3, 5, src), (4, 6, dst)):
        if a is not None:
            ip = ipaddress.ip_address(a)
            ch.append((0, t4 if ip.version == 4 else t6, ip.packed))
    if sport is not None:
        ch.append((0, 7, struct.pack(">H", sport)))
    if dport is not None:
        ch.append((0, 8, struct.pack(">H", dport)))
    if ptype is not None:
        ch.append((0, 11, bytes([ptype])))
    if capid is not None:
        ch.append((0, 12, struct.pack(">I", capid)))
    if corr is not None:
        ch.append((0, 0x11, corr))
    if node is not None:
        ch.append((0, 0x13, node))
    ch.extend(extra)
    if payload is not None:
        ch.append((0, 15, payload))
    return encode_packet(ch)


def sip_request(method=b"INVITE", ruri=b"sip:bob@Example.com", frm=b"alice", to=b"bob",
                cid=b"call-1@host", extra=b"") -> bytes:
    return (method + b" " + ruri + b" SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1\r\n"
            b"From: \"A\" <sip:" + frm + b"@a.example>;tag=1\r\nTo: <sip:" + to
            + b"@b.example>\r\nCall-ID: " + cid + b"\r\nCSeq: 1 " + method + b"\r\n" + extra
            + b"\r\n")


def sip_response(status=b"200 OK", cid=b"call-1@host", extra=b"") -> bytes:
    return (b"SIP/2.0 " + status + b"\r\nFrom: <sip:alice@a>;tag=1\r\nTo: <sip:bob@b>;tag=2\r\n"
            b"i: " + cid + b"\r\nCSeq: 1 INVITE\r\n" + extra + b"\r\n")


# ---------------------------------------------------------------- tables

def test_key_order_matches_the_config_schema():
    """The table's key numbers (hepfast/constants.py, generated into C) follow config.Match."""
    from hepfast.config import MATCH_KEYS

    assert rules.KEY_NAMES == MATCH_KEYS
    assert rules.NKEYS == len(rules.KEY_NAMES)


def test_default_config_tables():
    c = compile_config(from_dict(__import__("tomllib").loads(
        (REPO / "hepfast" / "config" / "default.toml").read_text())))
    assert c.nrules == 3 and c.rule_names == ("sip", "rtcp", "logs")
    assert c.key_mask.dtype == np.uint32 and c.key_start.shape == (3, rules.NKEYS)
    assert c.ranges.dtype == np.uint64 and c.ranges.shape[1] == 2
    assert all(int(m) == 1 << rules.PROTO_TYPE for m in c.key_mask)
    s, n = c.key_start[1, rules.PROTO_TYPE], c.key_count[1, rules.PROTO_TYPE]
    assert sorted(map(tuple, c.ranges[s:s + n].tolist())) == [(5, 5), (32, 32)]
    assert list(c.flags) == [rules.HAS_REWRITE, 0, rules.DROP]
    assert [d.name for d in c.destinations] == ["homer", "qos"]
    assert [(t.host, t.port) for t in c.destinations[0].targets] == \
        [("127.0.0.1", 9161), ("127.0.0.1", 9162)]
    assert c.default_dest == -1 and c.workers == 2 and c.batch == 64
    assert c.admin_listen == ("127.0.0.1", 9096)
    assert c.listeners[0][:3] == ("agents", "127.0.0.1", 9060)
    for arr in (c.key_mask, c.ranges, c.flags, c.set_blob, c.skip):
        assert not arr.flags.writeable and arr.flags.c_contiguous
    with pytest.raises(ValueError):
        c.flags[0] = 0


def test_rewrite_plan_equals_codec_build_set():
    c = compiled([{"name": "r", "forward": ["homer"], "delete": ["auth_key", "0x0011"],
                   "set": {"node_name": "edge", "capture_id": 7, "src_ip": "::1",
                           "3:0x0101": "v"}}])
    setbuf, skip = rules.rewrite_plan(c, 0)
    want = codec.build_set({"node_name": "edge", "capture_id": 7, "src_ip": "::1",
                            "3:0x0101": "v"}, ["auth_key", "0x0011"])
    assert (setbuf, skip) == want
    assert (3 << 16 | 0x0101) in skip and 0x03 in skip and 0x05 in skip
    out = codec.decode(codec.rewrite(pkt(corr=b"x", node=b"old"), {"node_name": "edge",
                                                                   "capture_id": 7},
                                     ["0x0011"]))
    assert out.node_name == "edge" and out.capture_id == 7 and out.correlation_id is None


def test_generation_and_digest():
    a = parse_config('# one\n[[listeners]]\nname = "a"\nlisten = "127.0.0.1:1"\n')
    b = parse_config('[[listeners]]  # two\nname = "a"\nlisten = "127.0.0.1:1"\n')
    ca, cb = compile_config(a), compile_config(b)
    assert ca.digest == cb.digest and cb.generation > ca.generation
    d = parse_config('[[listeners]]\nname = "a"\nlisten = "127.0.0.1:2"\n')
    assert compile_config(d).digest != ca.digest


def test_host_names_resolve():
    c = compiled([], destinations={"h": {"targets": ["localhost:9060"]}})
    t = c.destinations[0].targets[0]
    assert t.configured == "localhost:9060" and t.port == 9060
    assert ipaddress.ip_address(t.host).is_loopback


def test_bind_rejects_inconsistent_tables():
    c = compiled([{"name": "r", "forward": ["homer"], "match": {"proto_type": "sip"}}])
    bad = dataclasses.replace(c, key_count=np.full_like(c.key_count, 5))
    with pytest.raises(ValueError, match="indexes past"):
        _rules.evaluate(bad, pkt(), 0)
    bad = dataclasses.replace(c, flags=c.flags.astype(np.int64))
    with pytest.raises(TypeError):
        _rules.evaluate(bad, pkt(), 0)
    bad = dataclasses.replace(c, fwd=np.array([7], np.int32))
    with pytest.raises(ValueError, match="destination"):
        _rules.evaluate(bad, pkt(), 0)


def test_empty_rule_set_and_invalid_packet():
    c = compiled([])
    assert both(c, pkt()) == []
    assert route(c, codec.decode(pkt()), 0) == rules.Route([], [], "no_route")
    with pytest.raises(ValueError):
        _rules.evaluate(c, b"HEP3\x00\x05", 0)


# ---------------------------------------------------------------- matching semantics

def test_cidr_families_do_not_mix():
    c = compiled([
        {"name": "any6", "match": {"src_ip": ["::/0"]}, "forward": ["homer"], "continue": True},
        {"name": "any4", "match": {"src_ip": ["0.0.0.0/0"]}, "forward": ["homer"],
         "continue": True},
        {"name": "net10", "match": {"src_ip": ["10.0.0.0/8"]}, "forward": ["homer"],
         "continue": True},
        {"name": "mapped", "match": {"src_ip": ["::ffff:0:0/96"]}, "forward": ["homer"],
         "continue": True},
        {"name": "host", "match": {"dst_ip": ["2001:db8::1", "10.9.9.9"]}, "forward": ["qos"],
         "continue": True},
    ])
    assert both(c, pkt(src="10.1.2.3")) == [1, 2, 4]
    assert both(c, pkt(src="192.168.1.1", dst="10.9.9.8")) == [1]
    assert both(c, pkt(fam=6, src="::ffff:10.1.2.3", dst="2001:db8::1")) == [0, 3, 4]
    assert both(c, pkt(fam=6, src="2001:db8::5", dst="2001:db8::2")) == [0]
    # No address chunk of the packet's family: address keys do not match.
    assert both(c, pkt(fam=4, src="2001:db8::5", dst=None)) == []
    assert both(c, pkt(fam=None, src=None, dst=None)) == []


def test_keys_and_or():
    c = compiled([
        {"name": "a", "match": {"proto_type": ["rtcp", "sip"], "src_port": ["5000-5070"],
                                "capture_id": 2001, "listener": "edge"}, "forward": ["homer"]},
        {"name": "b", "match": {"ip_proto": "tcp"}, "forward": ["qos"]},
        {"name": "c", "match": {"hep_version": 2, "ip_family": 6}, "forward": ["qos"]},
    ])
    assert both(c, pkt(), 1) == [0]
    assert both(c, pkt(), 0) == []                      # other listener
    assert both(c, pkt(sport=5071), 1) == []           # port out of range
    assert both(c, pkt(ptype=5, sport=5000), 1) == [0]
    assert both(c, pkt(capid=2002), 1) == []
    assert both(c, pkt(capid=None), 1) == []           # absent is not a value
    assert both(c, pkt(proto=6), 0) == [1]
    v2 = codec.to_v2(pkt(fam=6, src="::1", dst="::2", proto=17))
    assert both(c, v2, 0) == [2]
    assert both(c, codec.to_v2(pkt()), 0) == []


def test_string_globs_and_new_sip_keys():
    """Globs next to exact values; sip_cseq_method and sip_user_agent; sip_header (issue 14 A;
    tests/test_match_patterns.py has the rest)."""
    c = compiled([
        {"name": "pfx", "match": {"sip_ruri_user": ["+4930*", "bob"]}, "forward": ["homer"],
         "continue": True},
        {"name": "ua", "match": {"sip_user_agent": "Acme-?"}, "forward": ["homer"],
         "continue": True},
        {"name": "cseq", "match": {"sip_cseq_method": "INVITE", "sip_status": "2xx"},
         "forward": ["homer"], "continue": True},
        {"name": "hdr", "match": {"sip_header": {"name": "x-TENANT", "value": "acme-*"}},
         "forward": ["qos"], "continue": True},
    ])
    assert both(c, pkt(payload=sip_request(ruri=b"sip:+49301@h",
                                           extra=b"User-Agent: Acme-2\r\n"))) == [0, 1]
    assert both(c, pkt(payload=sip_request(extra=b"X-Tenant: acme-1\r\n"))) == [0, 3]
    assert both(c, pkt(payload=sip_response(extra=b"Server: Acme-3\r\n"))) == [1, 2]
    assert both(c, pkt(payload=sip_response(b"486 Busy"))) == []
    # the scan for User-Agent and CSeq also summarises the header names for sip_header
    assert int(c.flags[3]) & rules.NEEDS_SIP and c.sip_want == (
        rules.SIP_WANT["user_agent"] | rules.SIP_WANT["cseq"] | K.SIP_WANT_NAMES)


def test_strings_exact_and_folded():
    c = compiled([
        {"name": "node", "match": {"node_name": "edge-1"}, "forward": ["homer"], "continue": True},
        {"name": "corr", "match": {"correlation_id": ["call-1@host", ""]}, "forward": ["homer"],
         "continue": True},
        {"name": "method", "match": {"sip_method": "invite"}, "forward": ["homer"],
         "continue": True},
        {"name": "domain", "match": {"sip_ruri_domain": "EXAMPLE.com", "sip_ruri_user": "bob"},
         "forward": ["homer"], "continue": True},
        {"name": "users", "match": {"sip_from_user": "alice", "sip_to_user": "bob",
                                    "sip_call_id": "call-1@host"}, "forward": ["homer"],
         "continue": True},
        {"name": "status", "match": {"sip_status": ["4xx", 200]}, "forward": ["homer"],
         "continue": True},
    ])
    assert both(c, pkt(node=b"edge-1", corr=b"call-1@host")) == [0, 1]
    assert both(c, pkt(node=b"EDGE-1", corr=b"")) == [1]       # node names are case-sensitive
    assert both(c, pkt(node=None, corr=None)) == []
    assert both(c, pkt(payload=sip_request())) == [2, 3, 4]
    assert both(c, pkt(payload=sip_request(method=b"INVITE", ruri=b"sip:Bob@example.com"))) \
        == [2, 4]                                              # user parts are case-sensitive
    assert both(c, pkt(payload=sip_request(method=b"BYE", cid=b"other"))) == [3]
    assert both(c, pkt(payload=sip_response(b"200 OK"))) == [4, 5]     # users, call-id match
    assert both(c, pkt(payload=sip_response(b"486 Busy Here", cid=b"x"))) == [5]
    assert both(c, pkt(payload=sip_response(b"503 Unavailable", cid=b"x"))) == []
    # Not proto type SIP, or not SIP text: SIP keys do not match.
    assert both(c, pkt(ptype=5, payload=sip_request())) == []
    assert both(c, pkt(payload=b"hello world")) == []
    assert _rules.fold_hash(b"INVITE") == rules.hash_str(rules.SIP_METHOD, b"iNvItE") \
        == hash64(b"invite")
    assert c.needs_sip and int(c.flags[0]) & rules.NEEDS_SIP == 0
    assert int(c.flags[2]) & rules.NEEDS_SIP


def test_first_match_continue_drop_default():
    c = compiled([
        {"name": "tag", "set": {"node_name": "x"}, "continue": True},
        {"name": "sip", "match": {"proto_type": "sip"}, "forward": ["homer"], "continue": True},
        {"name": "sip2", "match": {"proto_type": "sip"}, "forward": ["qos"]},
        {"name": "never", "match": {"proto_type": "sip"}, "forward": ["qos"]},
        {"name": "logs", "match": {"proto_type": "log"}, "drop": True},
        {"name": "after", "match": {"proto_type": "log"}, "forward": ["qos"]},
    ], switch={"default": "qos"})
    assert both(c, pkt()) == [0, 1, 2]
    assert both(c, pkt(ptype=100)) == [0, 4]
    assert both(c, pkt(ptype=5)) == [0]
    p = codec.decode(pkt())
    assert route(c, p, 0) == rules.Route([0, 1, 2], [(1, 0), (2, 1)], None)
    assert route(c, codec.decode(pkt(ptype=100)), 0).drop == "rule"
    assert route(c, codec.decode(pkt(ptype=5)), 0).drop == "no_route"
    c2 = compiled([{"name": "sip", "match": {"proto_type": "sip"}, "forward": ["homer"]}],
                  switch={"default": "qos"})
    assert route(c2, codec.decode(pkt(ptype=5)), 0) == rules.Route([], [(-1, 1)], None)
    assert c2.default_dest == 1


@pytest.mark.parametrize("sender,allowed", [
    ("10.1.2.3", True), ("11.1.2.3", False), ("2001:db8::7", True), ("2001:db9::7", False),
    ("::ffff:10.1.2.3", True), ("::ffff:11.1.2.3", False), ("::1", False),
])
def test_listener_allow(sender, allowed):
    """`allow` is about the datagram's sender (socket address): C helper == Python twin."""
    c = compiled([], listeners=[
        {"name": "a", "listen": "127.0.0.1:9060", "allow": ["10.0.0.0/8", "2001:db8::/32"]},
        {"name": "b", "listen": "127.0.0.1:9061"},
        {"name": "c", "listen": "127.0.0.1:9062", "allow": ["::/0"]}])
    assert _rules.listener_allows(c, 0, sender) == rules.listener_allows(c, 0, sender) == allowed
    assert _rules.listener_allows(c, 1, sender) and rules.listener_allows(c, 1, sender)
    v6 = ipaddress.ip_address(sender).version == 6 and \
        ipaddress.ip_address(sender).ipv4_mapped is None
    assert _rules.listener_allows(c, 2, sender) == rules.listener_allows(c, 2, sender) == v6


# ---------------------------------------------------------------- sampling

def test_sampling_keeps_whole_calls():
    c = compiled([{"name": "s", "forward": ["homer"], "sample": 0.1},
                  {"name": "rest", "forward": ["qos"]}])
    assert int(c.flags[0]) & rules.HAS_SAMPLE and c.needs_call_key
    kept = 0
    for i in range(2000):
        cid = f"call-{i}@host".encode()
        verdicts = {tuple(both(c, p)) for p in (
            pkt(payload=sip_request(cid=cid)), pkt(payload=sip_response(cid=cid)),
            pkt(ptype=5, corr=cid, payload=b"{}"), pkt(ptype=100, corr=cid))}
        assert len(verdicts) == 1, verdicts                     # the call goes one way
        (v,) = verdicts
        assert v == (0,)                                         # sampled out: not passed on
        p = codec.decode(pkt(ptype=5, corr=cid))
        keep = route(c, p, 0).drop is None
        kept += keep
        assert keep == (mix64(hash64(cid)) < int(c.sample[0]))
        assert route(c, p, 0).drop == (None if keep else "sample")
    assert 140 < kept < 260, kept                                # deterministic hashes: ~200
    # Without a call key a packet is sampled by its flow: a flow goes one way, flows differ.
    flows = set()
    for port in range(1000, 1400):
        datas = [pkt(ptype=5, sport=port, payload=body) for body in (b"a", b"bb", b"")]
        for d in datas:
            both(c, d)
        verdicts = {route(c, codec.decode(d), 0).drop for d in datas}
        assert len(verdicts) == 1
        flows |= verdicts
    assert flows == {None, "sample"}


@needs_corpus
def test_sample_hash_matches_python_on_corpus():
    for data, _ in corpus_packets():
        assert _rules.sample_hash(data) == rules.sample_key_hash(codec.decode(data))


def test_sample_one_is_no_sampling():
    c = compiled([{"name": "s", "forward": ["homer"], "sample": 1.0}])
    assert int(c.flags[0]) & rules.HAS_SAMPLE == 0 and not c.needs_call_key


@needs_corpus
def test_call_hash_matches_python_on_corpus():
    for data, _ in corpus_packets():
        key = codec.decode(data).call_key()
        assert _rules.call_hash(data) == (hash64(key) if key else None)


# ---------------------------------------------------------------- the corpus

CORPUS_RULES = [
    {"name": "invite", "match": {"sip_method": "INVITE"}},
    {"name": "ok", "match": {"sip_status": "2xx"}},
    {"name": "v6", "match": {"ip_family": 6}},
    {"name": "tcp", "match": {"ip_proto": "tcp"}},
    {"name": "log", "match": {"proto_type": "log"}},
    {"name": "rtpengine", "match": {"capture_id": 2002, "proto_type": "rtcp"}},
    {"name": "lo4", "match": {"src_ip": "127.0.0.0/8", "dst_ip": ["127.0.0.1"]}},
    {"name": "lo6", "match": {"src_ip": "::1"}},
    {"name": "ports", "match": {"dst_port": ["5060", "5070-5090"]}},
    {"name": "hep3", "match": {"hep_version": 3, "listener": "agents"}},
    # issue 14 A: a response by the request it answers; a Call-ID glob
    {"name": "cseq-bye", "match": {"sip_cseq_method": "bye", "sip_status": "2xx"}},
    {"name": "cid-glob", "match": {"sip_call_id": ["*0@127.0.0.?", "7*"]}},
]


def _tshark_truth(e: dict) -> list[bool]:
    status = e.get("sip.Status-Code")
    return [
        e.get("sip.Method") == "INVITE",
        status is not None and 200 <= int(status) <= 299,
        e["hep3.ip_family"] == "IPv6",
        e["hep3.transport_layer_protocol"] == "TCP",
        e["hep3.application_protocol"] == "LOG",
        e["hep3.capture_node_id"] == 2002 and e["hep3.application_protocol"] == "JSON/RTCP",
        (e.get("hep3.source_ipv4_address") or "").startswith("127.")
        and e.get("hep3.destination_ipv4_address") == "127.0.0.1",
        e.get("hep3.source_ipv6_address") == "::1",
        e["hep3.destination_port"] == 5060 or 5070 <= e["hep3.destination_port"] <= 5090,
        True,
        e.get("sip.CSeq.method") == "BYE" and status is not None and 200 <= int(status) <= 299,
        re.fullmatch(r".*0@127\.0\.0\..", e.get("sip.Call-ID") or "", re.S) is not None
        or (e.get("sip.Call-ID") or "").startswith("7"),
    ]


@needs_corpus
def test_corpus_every_key_agrees_with_tshark():
    """All rules continue, so each packet lists every rule it matches: C == Python == tshark."""
    c = compiled([{**r, "forward": ["homer"], "continue": True} for r in CORPUS_RULES])
    counts = np.zeros(len(CORPUS_RULES), int)
    for data, e in corpus_packets():
        got = both(c, data)
        want = [i for i, t in enumerate(_tshark_truth(e)) if t]
        assert got == want, (e["idx"], got, want)
        counts[got] += 1
    names = [r["name"] for r in CORPUS_RULES]
    by = dict(zip(names, counts.tolist(), strict=True))
    assert by["invite"] == 240 and by["ok"] == 320 and by["v6"] == 140 and by["tcp"] == 80
    assert by["log"] == 80 and by["rtpengine"] == 24 and by["hep3"] == 1224
    assert by["cseq-bye"] == 160 and by["cid-glob"] > 0


@needs_corpus
def test_corpus_call_ids_and_users():
    pairs = corpus_packets()
    first = next(e for _, e in pairs if e.get("sip.Method") == "INVITE")
    cid = first["sip.Call-ID"]
    fields = sip_info_of(codec.decode(pairs[first["idx"]][0]))
    c = compiled([
        {"name": "call", "match": {"sip_call_id": cid}, "forward": ["homer"], "continue": True},
        {"name": "corr", "match": {"correlation_id": cid}, "forward": ["homer"],
         "continue": True},
        {"name": "users", "match": {"sip_from_user": fields["sip_from_user"],
                                    "sip_to_user": fields["sip_to_user"],
                                    "sip_ruri_user": fields["sip_ruri_user"],
                                    "sip_ruri_domain": fields["sip_ruri_domain"].upper()},
         "forward": ["qos"]},
    ])
    n_call = n_corr = n_users = 0
    for data, e in pairs:
        got = both(c, data)
        assert (0 in got) == (e.get("sip.Call-ID") == cid)
        assert (1 in got) == (e.get("hep3.correlation_id") == cid)
        n_call += 0 in got
        n_corr += 1 in got
        n_users += 2 in got
    assert n_call >= 7 and n_corr >= 1 and n_users >= 1


@needs_corpus
@pytest.mark.parametrize("rule_set", [
    [{"name": "sip", "match": {"proto_type": "sip"}, "forward": ["homer"],
      "set": {"node_name": "x"}},
     {"name": "rtcp", "match": {"proto_type": ["rtcp", "qos"]}, "forward": ["qos"]},
     {"name": "logs", "match": {"proto_type": "log"}, "drop": True}],
    [{"name": "bye", "match": {"sip_method": ["BYE", "ack"]}, "drop": True},
     {"name": "half", "match": {"proto_type": ["sip", "rtcp", "log"]}, "sample": 0.5,
      "forward": ["homer"], "continue": True},
     {"name": "v6", "match": {"src_ip": "::/0"}, "forward": ["qos"]},
     {"name": "rest", "forward": ["qos"]}],
    [{"name": "nothing", "match": {"node_name": "absent", "sip_status": "1xx"},
      "forward": ["homer"]}],
])
def test_corpus_rule_sets_c_equals_python(rule_set):
    c = compiled(rule_set)
    seen = set()
    for data, _ in corpus_packets():
        seen.add(tuple(both(c, data)))
    assert len(seen) >= 1


# ---------------------------------------------------------------- property tests

V4 = ["10.1.2.3", "10.200.0.1", "192.168.1.1", "127.0.0.1"]
V6 = ["::1", "2001:db8::1", "::ffff:10.1.2.3", "2001:db8:1::9"]
CIDRS = ["10.0.0.0/8", "10.1.0.0/16", "192.168.1.1", "0.0.0.0/0", "::/0", "2001:db8::/32",
         "::ffff:0:0/96", "::1"]
CALLS = [b"call-1@host", b"call-2@host", b"Call-1@host", b""]
NAMES = [b"edge-1", b"EDGE-1", b""]
USERS = [b"alice", b"bob", b"Bob"]
DOMAINS = [b"example.com", b"Example.COM", b"10.0.0.1"]


# Extra headers for the issue 14 A keys (sip_user_agent, sip_header), compact forms included.
EXTRA_HEADERS = [b"", b"User-Agent: Acme-2\r\n", b"Server: gw.example.com\r\n",
                 b"X-Tenant: acme-1\r\nx-tenant: Beta\r\n", b"s: call me\r\n",
                 b"Subject: x\r\nUser-Agent: bob\r\n"]


@st.composite
def sip_payloads(draw):
    kind = draw(st.sampled_from(["req", "resp", "junk", "empty"]))
    cid = draw(st.sampled_from(CALLS))
    extra = draw(st.sampled_from(EXTRA_HEADERS))
    if kind == "req":
        return sip_request(method=draw(st.sampled_from([b"INVITE", b"invite", b"BYE", b"ACK"])),
                           ruri=b"sip:" + draw(st.sampled_from(USERS)) + b"@"
                           + draw(st.sampled_from(DOMAINS)),
                           frm=draw(st.sampled_from(USERS)), to=draw(st.sampled_from(USERS)),
                           cid=cid, extra=extra)
    if kind == "resp":
        return sip_response(draw(st.sampled_from([b"100 Trying", b"200 OK", b"486 Busy"])),
                            cid=cid, extra=extra)
    if kind == "junk":
        return draw(st.binary(max_size=40))
    return b""


@st.composite
def packets(draw):
    ch = []

    def maybe(p=0.8):
        return draw(st.floats(0, 1)) < p

    if maybe():
        ch.append((0, 1, bytes([draw(st.sampled_from([2, 10, 24, 7]))])))
    if maybe():
        ch.append((0, 2, bytes([draw(st.sampled_from([6, 17, 132]))])))
    for t4, t6 in ((3, 5), (4, 6)):
        if maybe():
            ch.append((0, t4, ipaddress.ip_address(draw(st.sampled_from(V4))).packed))
        if maybe(0.4):
            ch.append((0, t6, ipaddress.ip_address(draw(st.sampled_from(V6))).packed))
    for t in (7, 8):
        if maybe():
            ch.append((0, t, struct.pack(">H", draw(st.sampled_from([0, 5060, 5080, 65535])))))
    if maybe():
        ch.append((0, 11, bytes([draw(st.sampled_from([1, 1, 5, 32, 100]))])))
    if maybe():
        ch.append((0, 12, struct.pack(">I", draw(st.sampled_from([0, 2001, 0xFFFFFFFF])))))
    if maybe(0.5):
        ch.append((0, 0x11, draw(st.sampled_from(CALLS))))
    if maybe(0.5):
        ch.append((0, 0x13, draw(st.sampled_from(NAMES))))
    if maybe(0.2):
        ch.append((3, 0x101, b"vendor"))
    if maybe(0.9):
        ch.append((0, draw(st.sampled_from([15, 15, 15, 16])), draw(sip_payloads())))
    ch = draw(st.permutations(ch))
    if ch and maybe(0.2):
        ch.append(draw(st.sampled_from(ch)))                     # a duplicate: last one wins
    data = encode_packet(ch)
    if maybe(0.15):
        try:
            data = codec.to_v2(data)
        except codec.HepError:
            pass
    return data


MATCH_VALUES = {
    "listener": st.sampled_from(["agents", "edge"]),
    "hep_version": st.sampled_from([2, 3]),
    "proto_type": st.sampled_from(["sip", "rtcp", "qos", "log", 7]),
    "ip_family": st.sampled_from([4, 6]),
    "ip_proto": st.sampled_from(["udp", "tcp", 132]),
    "src_ip": st.sampled_from(CIDRS),
    "dst_ip": st.sampled_from(CIDRS),
    "src_port": st.sampled_from([5060, "5000-5070", 0, "65535"]),
    "dst_port": st.sampled_from([5080, "0-5060", "1-65535"]),
    "capture_id": st.sampled_from([2001, "0-10", 4294967295]),
    "node_name": st.sampled_from([n.decode() for n in NAMES]),
    "correlation_id": st.sampled_from([c.decode() for c in CALLS]),
    "sip_method": st.sampled_from(["INVITE", "bye", "Ack"]),
    "sip_status": st.sampled_from([200, "1xx", "4xx", "480-489"]),
    "sip_call_id": st.sampled_from([c.decode() for c in CALLS if c]),
    "sip_from_user": st.sampled_from([u.decode() for u in USERS]),
    "sip_to_user": st.sampled_from([u.decode() for u in USERS]),
    "sip_ruri_user": st.sampled_from([u.decode() for u in USERS]),
    "sip_ruri_domain": st.sampled_from([d.decode() for d in DOMAINS]),
}
# issue 14 A: globs on the string keys, and the new keys
MATCH_VALUES.update({
    "node_name": st.sampled_from([n.decode() for n in NAMES] + ["edge-*", "*-1", "?DGE*"]),
    "correlation_id": st.sampled_from([c.decode() for c in CALLS] + ["call-?@*", "*@host"]),
    "sip_method": st.sampled_from(["INVITE", "bye", "Ack", "IN*", "?ye", "*"]),
    "sip_call_id": st.sampled_from([c.decode() for c in CALLS if c] + ["*-1@host", "C*"]),
    "sip_from_user": st.sampled_from([u.decode() for u in USERS] + ["b*", "?lice"]),
    "sip_ruri_domain": st.sampled_from([d.decode() for d in DOMAINS] + ["*.com", "10.*"]),
    "sip_cseq_method": st.sampled_from(["INVITE", "bye", "*E", "ACK"]),
    "sip_user_agent": st.sampled_from(["Acme*", "bob", "*.example.com", "*"]),
    "sip_header": st.sampled_from([{"name": "X-Tenant", "value": ["acme*", "beta"]},
                                   {"name": "subject", "value": "*"},
                                   {"name": "s", "value": ["call me", "?"]}]),
    "correlation_id_field": st.sampled_from([
        {"separator": "@", "field": 1, "value": ["host", "h*"]},
        {"separator": "-", "field": 0, "value": "call"},
        {"separator": "@", "field": -2, "value": ["*-1", "Call*"]}]),
})


@st.composite
def rule_sets(draw):
    out = []
    for i in range(draw(st.integers(1, 6))):
        keys = draw(st.lists(st.sampled_from(sorted(MATCH_VALUES)), max_size=3, unique=True))
        match = {k: draw(st.lists(MATCH_VALUES[k], min_size=1, max_size=3)) for k in keys}
        r = {"name": f"r{i}", "match": match}
        action = draw(st.sampled_from(["fwd", "drop", "cont", "sample"]))
        if action == "drop":
            r["drop"] = True
        else:
            r["forward"] = [draw(st.sampled_from(["homer", "qos"]))]
            if action == "cont":
                r["continue"] = True
            if action == "sample":
                r["sample"] = draw(st.sampled_from([0.01, 0.3, 0.5, 0.99]))
                r["continue"] = draw(st.booleans())
        out.append(r)
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rule_sets(), st.lists(packets(), min_size=1, max_size=8), st.integers(0, 1))
def test_c_matches_python_on_generated_rules_and_packets(rule_set, datas, listener):
    c = compiled(rule_set)
    for data in datas:
        both(c, data, listener)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(CIDRS), st.sampled_from(V4 + V6))
def test_cidr_row_agrees_with_ipaddress(cidr, addr):
    net = ipaddress.ip_network(cidr)
    a = ipaddress.ip_address(addr)
    hi, lo, mhi, mlo = rules.cidr_row(net)
    ahi, alo = rules.addr128(a.packed)
    table = (ahi & mhi) == hi and (alo & mlo) == lo and net.version == a.version
    assert table == (a.version == net.version and a in net)
