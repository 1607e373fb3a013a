"""Globs, prefixes, sip_header, sip_cseq_method, sip_user_agent, correlation_id_field and the
per-destination call key (issue 14 A).

The compiled matcher (ext/plan/matcher.pxd through hepfast.plan._matcher) must select exactly the
packets the pure-Python reference (hepfast.plan.oracle, whose globs are regular expressions built
from the pattern tokens) selects: on hand-written cases whose answer is written down, on the
corpus (cross-checked with tshark's own decoding where it has the field), and on
hypothesis-generated SIP messages and patterns. The call key is checked C against Python here and
through real `hepfast run` processes: hash mode keeps every key on one target, the documented
rendezvous target, and the seed's example routes RTCP by the domain part of its correlation id.
"""
from __future__ import annotations

import ipaddress
import re
import struct
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hepfast import constants as K
from hepfast.config import ConfigError, from_dict
from hepfast.config.values import parse_glob
from hepfast.plan import _matcher as C
from hepfast.plan import compile_config, match_rules, oracle, sip_info_of
from hepfast.wire import _codec, codec, hashing, sip
from hepfast.wire.chunks import encode_packet
from tests.conftest import corpus_names, load_corpus

BASE = {
    "listeners": [{"name": "agents", "listen": "127.0.0.1:9060"}],
    "destinations": {"homer": {"targets": ["127.0.0.1:9161", "127.0.0.1:9162"]},
                     "qos": {"targets": ["127.0.0.1:9163"]}},
}

needs_corpus = pytest.mark.skipif(not corpus_names(), reason="real-traffic corpus not found at "
                                  "../shared/corpus")


def compiled(rules, **top):
    return compile_config(from_dict({**BASE, **top, "rules": rules}))


def both(c, data: bytes) -> list[int]:
    """C and Python verdicts, asserted equal."""
    pkt = codec.decode(data)
    py = match_rules(c, pkt, 0, sip=sip_info_of(pkt))
    cy = C.evaluate(c, data, 0)
    assert cy == py, (cy, py, pkt.payload[:300])
    return cy


def hep(payload: bytes, *, ptype=1, corr=None, capid=2001, src="10.1.2.3") -> bytes:
    ip = ipaddress.ip_address(src)
    ch = [(0, 1, b"\x02" if ip.version == 4 else b"\x0a"), (0, 2, b"\x11"),
          (0, 3 if ip.version == 4 else 5, ip.packed),
          (0, 4 if ip.version == 4 else 6, ipaddress.ip_address(
              "10.9.9.9" if ip.version == 4 else "2001:db8::9").packed),
          (0, 7, struct.pack(">H", 5060)), (0, 8, struct.pack(">H", 5060)),
          (0, 11, bytes([ptype])), (0, 12, struct.pack(">I", capid))]
    if corr is not None:
        ch.append((0, 0x11, corr))
    ch.append((0, 15, payload))
    return encode_packet(ch)


def every_rule(matches: list[dict]) -> list[dict]:
    """One continuing rule per match table: a packet lists every rule it matches."""
    return [{"name": f"r{i}", "match": m, "forward": ["homer"], "continue": True}
            for i, m in enumerate(matches)]


# ---------------------------------------------------------------- the glob language

def test_parse_glob_tokens_escapes_and_errors():
    assert parse_glob("INVITE") == (b"INVITE", None)                  # no wildcard: exact
    assert parse_glob("a\\*b") == (b"a*b", None)                      # escaped: still exact
    assert parse_glob("\\\\") == (b"\\", None)
    assert parse_glob("sip:+4930*") == (None, tuple(b"sip:+4930") + (K.GLOB_STAR,))
    assert parse_glob("a**?") == (None, (0x61, K.GLOB_STAR, K.GLOB_ANY))   # stars collapse
    assert parse_glob("\\?*") == (None, (0x3F, K.GLOB_STAR))
    assert parse_glob("é*")[1][:2] == tuple("é".encode())             # bytes, UTF-8
    for bad in ("x\\", "a\\b", "\\n*"):
        with pytest.raises(ValueError, match="backslash"):
            parse_glob(bad)
    with pytest.raises(ValueError, match="at most 128"):
        parse_glob("*" + "a" * 128)
    assert parse_glob("a" * 500) == (b"a" * 500, None)                 # exact values: any length


@pytest.mark.parametrize("pattern,value,fold,want", [
    ("sip:+4930*", b"sip:+4930123", False, True),
    ("sip:+4930*", b"sip:+4931123", False, False),
    ("sip:+4930*", b"sip:+4930", False, True),                        # * also matches nothing
    ("*.example.com", b"a.b.example.com", False, True),
    ("*.example.com", b"example.com", False, False),
    ("*.example.com", b"X.EXAMPLE.COM", True, True),                  # folded key
    ("*.example.com", b"X.EXAMPLE.COM", False, False),
    ("a?c", b"abc", False, True),
    ("a?c", b"ac", False, False),
    ("a*b*c", b"aXbYbZc", False, True),
    ("a*b*c", b"aXbYbZ", False, False),
    ("*ab*ab*", b"xabyab", False, True),
    ("*ab*ab*", b"xaby", False, False),
    ("*aab", b"aaab", False, True),                                   # suffix anchored at the end
    ("a*a", b"a", False, False),                                      # prefix and suffix overlap
    ("\\**", b"*star", False, True),
    ("\\**", b"star", False, False),
    ("*", b"", False, True),
    # a middle segment that starts with a byte only itself matches is found with memchr: a
    # first candidate that fails, a later one that holds, none, and the last possible place
    ("*@10.99.*", b"c1@10.98.1@10.99.7", False, True),
    ("*@10.99.*", b"c1@10.98.1@10.9", False, False),
    ("*@10.99.*", b"c1-10.99.1", False, False),
    ("x*.9*", b"x1.9", False, True),
    ("*-q*", b"A-Q-", True, True),
])
def test_glob_cases(pattern, value, fold, want):
    toks = parse_glob(pattern)[1]
    if fold:
        toks = tuple(t | 0x20 if 0x41 <= t <= 0x5A else t for t in toks)
    assert C.glob(toks, value, fold) == want
    assert oracle.glob_match(toks, value.lower() if fold else value) == want


@settings(max_examples=3000, deadline=None)
@given(st.text("ab*?\\", max_size=8), st.binary(max_size=10).map(
    lambda b: bytes(b"abAB*?\\"[x % 7] for x in b)), st.booleans())
def test_glob_c_equals_regex_reference(pattern, value, fold):
    try:
        exact, toks = parse_glob(pattern)
    except ValueError:
        return
    if toks is None:
        return
    if fold:
        toks = tuple(t | 0x20 if 0x41 <= t <= 0x5A else t for t in toks)
    assert C.glob(toks, value, fold) == oracle.glob_match(toks, value.lower() if fold else value)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=12).map(lambda b: bytes(b"a@b."[x % 4] for x in b)),
       st.integers(-6, 5))
def test_select_field_c_equals_split(value, field):
    assert C.field_of(value, ord("@"), field) == oracle.select_field(value, ord("@"), field)
    parts = value.split(b"@")
    assert oracle.select_field(value, ord("@"), field) == (
        parts[field] if -len(parts) <= field < len(parts) else None)


# ---------------------------------------------------------------- the SIP scanner's new fields

def test_cseq_method_user_agent_and_server():
    req = (b"REGISTER sip:example.com SIP/2.0\r\nCSeq:  42 \tregister\r\n"
           b"User-Agent: Acme/1.0\r\nServer: ignored\r\n\r\n")
    f = sip.sip_fields(req)
    assert (f["sip_cseq_method"], f["sip_user_agent"]) == ("register", "Acme/1.0")
    resp = b"SIP/2.0 200 OK\r\nServer: Gw 2\r\nCSeq: 7 INVITE\r\n\r\n"
    f = sip.sip_fields(resp)
    assert (f["sip_cseq_method"], f["sip_user_agent"]) == ("INVITE", "Gw 2")
    for odd in (b"CSeq: INVITE", b"CSeq: 1", b"CSeq: 1INVITE", b"CSeq:"):
        assert sip.sip_fields(b"SIP/2.0 200 OK\r\n" + odd + b"\r\n\r\n")["sip_cseq_method"] \
            is None
    for m in (req, resp):
        assert _codec.sip_scan(m) == sip.sip_fields(m)


def test_header_values_compact_case_and_repeats():
    msg = (b"INVITE sip:b@h SIP/2.0\r\nX-Tenant: acme-1\r\nx-tenant:  \r\nX-TENANT: beta\r\n"
           b"c: application/sdp\r\nContent-Type: text/plain\r\nk: timer\r\n"
           b" X-Tenant: folded\r\n\r\nX-Tenant: body\r\n")
    assert sip.header_values(msg, b"x-tenant") == [b"acme-1", b"beta"]
    assert sip.header_values(msg, b"content-type") == [b"application/sdp", b"text/plain"]
    assert sip.header_values(msg, b"supported") == [b"timer"]
    assert sip.header_values(b"not sip\r\nX-Tenant: a\r\n", b"x-tenant") == []
    # every compact form of the brief, both ways
    assert sip.COMPACT == {
        b"i": b"call-id", b"f": b"from", b"t": b"to", b"m": b"contact", b"v": b"via",
        b"l": b"content-length", b"c": b"content-type", b"k": b"supported", b"s": b"subject",
        b"e": b"content-encoding", b"o": b"event", b"u": b"allow-events", b"r": b"refer-to",
        b"b": b"referred-by", b"x": b"session-expires", b"a": b"accept-contact",
        b"j": b"reject-contact", b"d": b"request-disposition", b"y": b"identity",
        b"n": b"identity-info"}


@pytest.mark.parametrize("short,full", sorted(sip.COMPACT.items()))
def test_sip_header_compact_forms_match_by_either_name(short, full):
    """A rule naming the full header matches its compact form and the reverse, in C and Python."""
    c = compiled(every_rule([{"sip_header": {"name": full.decode().title(), "value": "v*"}},
                             {"sip_header": {"name": short.decode().upper(), "value": "v*"}}]))
    for written in (short, full.upper(), full):
        msg = b"OPTIONS sip:x@h SIP/2.0\r\n" + written + b": v1\r\n\r\n"
        assert both(c, hep(msg)) == [0, 1], written
    assert both(c, hep(b"OPTIONS sip:x@h SIP/2.0\r\nX-" + full + b": v1\r\n\r\n")) == []


def test_sip_header_and_across_tables_any_occurrence():
    c = compiled(every_rule([
        {"sip_header": {"name": "X-Tenant", "value": ["acme*"]}},
        {"sip_header": [{"name": "X-Tenant", "value": "acme*"},
                        {"name": "X-Region", "value": ["eu-?", "us"]}]},
        {"sip_header": {"name": "X-Tenant", "value": "*"}},       # present, not empty
        {"sip_header": {"name": "X-Tenant", "value": "beta"}},    # exact
    ]))
    base = b"MESSAGE sip:x@h SIP/2.0\r\n"
    assert both(c, hep(base + b"X-Tenant: beta\r\nX-Tenant: acme-7\r\n\r\n")) == [0, 2, 3]
    assert both(c, hep(base + b"X-Tenant: acme\r\nX-Region: eu-1\r\n\r\n")) == [0, 1, 2]
    assert both(c, hep(base + b"X-Tenant: acme\r\nX-Region: eu-12\r\n\r\n")) == [0, 2]
    assert both(c, hep(base + b"X-Tenant:\r\n\r\n")) == []
    assert both(c, hep(base + b"\r\nX-Tenant: acme\r\n")) == []              # body: not a header
    assert both(c, hep(base + b"X-Tenant: acme\r\n\r\n", ptype=5)) == []     # not proto SIP
    assert both(c, hep(b"SIP/2.0 200 OK\r\nX-Tenant: acme\r\n\r\n")) == [0, 2]


def test_string_keys_take_globs_with_their_case_rules():
    c = compiled(every_rule([
        {"sip_ruri_user": "+4930*"},
        {"sip_ruri_domain": "*.EXAMPLE.com"},                  # case-insensitive key
        {"sip_from_user": ["ali?e", "bob"]},                   # a glob next to an exact value
        {"sip_method": "*e*"},                                 # methods fold: INVITE, REGISTER
        {"sip_call_id": "*@host-?"},
        {"sip_cseq_method": "invite"},
        {"sip_user_agent": ["Acme*", "*Phone*"]},
        {"node_name": "edge-*"},
        {"correlation_id": "*@example.org"},
        {"sip_to_user": "\\*"},                                # a literal star
    ]))

    def req(method=b"INVITE", ruri=b"sip:+49301234@a.example.com", frm=b"alice",
            cid=b"c1@host-1", cseq=b"1 INVITE", ua=b"User-Agent: AcmePhone\r\n", to=b"*"):
        return (method + b" " + ruri + b" SIP/2.0\r\nFrom: <sip:" + frm + b"@x>\r\nTo: <sip:"
                + to + b"@y>\r\nCall-ID: " + cid + b"\r\nCSeq: " + cseq + b"\r\n" + ua
                + b"\r\n")

    assert both(c, hep(req())) == [0, 1, 2, 3, 4, 5, 6, 9]
    assert both(c, hep(req(ruri=b"sip:+4931@A.EXAMPLE.COM", frm=b"Alice", cid=b"c1@host-10",
                           ua=b"Server: SoftPhone\r\n", method=b"OPTIONS", cseq=b"2 OPTIONS",
                           to=b"x"))) == [1, 6]
    assert both(c, hep(req(method=b"REGISTER", frm=b"bob", ua=b"", cseq=b"1 REGISTER"))) \
        == [0, 1, 2, 3, 4, 9]
    resp = (b"SIP/2.0 486 Busy\r\nFrom: <sip:alice@x>\r\nCSeq: 1 INVITE\r\n"
            b"Server: Acme GW\r\n\r\n")
    assert both(c, hep(resp)) == [2, 5, 6]                  # CSeq: a response by its request
    rtcp = encode_packet([(0, 1, b"\x02"), (0, 11, b"\x05"), (0, 0x11, b"x@example.org"),
                          (0, 0x13, b"edge-7"), (0, 15, b"{}")])
    assert both(c, rtcp) == [7, 8]


def test_correlation_id_field_splits_like_s_select():
    """{s.select,1,@} in OpenSIPS: the field after the first @ (0-based), -1 the last."""
    c = compiled(every_rule([
        {"correlation_id_field": {"separator": "@", "field": 1, "value": ["*.example.com"]}},
        {"correlation_id_field": {"separator": "@", "field": -1, "value": "tail"}},
        {"correlation_id_field": [{"separator": "@", "field": 0, "value": "call-?"},
                                  {"separator": ".", "field": -1, "value": "com"}]},
        {"correlation_id_field": {"separator": "@", "field": 1, "value": ""}},
    ]))

    def rtcp(corr):
        return hep(b"{}", ptype=5, corr=corr)

    assert both(c, rtcp(b"call-1@a.example.com")) == [0, 2]
    assert both(c, rtcp(b"call-1@a.example.com@tail")) == [0, 1]     # last "." field: com@tail
    assert both(c, rtcp(b"call-1@")) == [3]                     # an empty field is a value
    assert both(c, rtcp(b"call-1")) == []                       # no field 1: no match
    assert both(c, hep(b"{}", ptype=5)) == []                   # no correlation id


# ---------------------------------------------------------------- the corpus

@needs_corpus
def test_corpus_globs_select_what_tshark_says():
    """Each glob rule against an independent predicate over tshark's decoding of the packet."""
    c = compiled(every_rule([
        {"sip_call_id": "1?-*@127.0.0.1"},
        {"sip_cseq_method": ["INV*"], "sip_status": "2xx"},
        {"sip_method": "?C?", "proto_type": "sip"},
        {"correlation_id": "*@127.0.0.1"},
        {"correlation_id_field": {"separator": "@", "field": 1, "value": "hepfast"}},
        {"sip_header": {"name": "Subject", "value": "Performance*"}},
        {"sip_header": {"name": "l", "value": "0"}},
    ]))
    truth = [
        lambda e: re.fullmatch(r"1.-.*@127\.0\.0\.1", e.get("sip.Call-ID", "")) is not None,
        lambda e: e.get("sip.CSeq.method", "").startswith("INV")
        and str(e.get("sip.Status-Code", "")).startswith("2"),
        lambda e: e.get("sip.Method") == "ACK",
        lambda e: (e.get("hep3.correlation_id") or "").endswith("@127.0.0.1"),
        lambda e: (e.get("hep3.correlation_id") or "").split("@")[1:2] == ["hepfast"],
    ]
    counts = [0] * 7
    for name in corpus_names():
        for data, e in load_corpus(name):
            got = both(c, data)
            for i, t in enumerate(truth):
                assert (i in got) == t(e), (name, e["idx"], i, got)
            p = codec.decode(data)
            if p.proto_type == 1:       # Subject and Content-Length: plain header reads
                head = p.payload.split(b"\r\n\r\n")[0].split(b"\r\n")[1:]
                vals = {ln.split(b":")[0].strip().lower(): ln.split(b":", 1)[1].strip()
                        for ln in head if b":" in ln}
                assert (5 in got) == vals.get(b"subject", b"").startswith(b"Performance")
                assert (6 in got) == (vals.get(b"content-length", b"") == b"0")
            for i in got:
                counts[i] += 1
    assert counts[0] > 0 and counts[1] > 0 and counts[2] == 160 and counts[4] == 24
    assert counts[5] > 0 and counts[6] > 0


@needs_corpus
def test_corpus_dest_key_c_equals_python():
    kinds = [(k, 0, 0) for k in range(len(K.CALL_KEY_NAMES))]
    kinds += [(K.CALL_KEY["call_id"], ord("@"), 0), (K.CALL_KEY["correlation_id"], ord("@"), 1),
              (K.CALL_KEY["correlation_id"], ord("-"), -1), (K.CALL_KEY["call_id"], ord("@"), 5)]
    for name in corpus_names():
        for data, _ in load_corpus(name):
            p = codec.decode(data)
            for kind, sep, field in kinds:
                assert C.dest_hash(data, kind, sep, field) == \
                    oracle.dest_key_hash(p, kind, sep, field)
            # call_id without a split is exactly what sampling keys on
            assert C.dest_hash(data, 0) == C.sample_hash(data)


def test_dest_key_semantics():
    cid, corr = b"abc@sip.example", b"abc@rtcp.example"
    s = hep(b"BYE sip:x@h SIP/2.0\r\nCall-ID: " + cid + b"\r\n\r\n", corr=corr)
    r = hep(b"{}", ptype=5, corr=cid)
    ck = K.CALL_KEY
    at = ord("@")
    assert C.dest_hash(s, ck["call_id"]) == hashing.hash64(cid)
    assert C.dest_hash(s, ck["correlation_id"]) == hashing.hash64(corr)
    assert C.dest_hash(s, ck["call_id"], at, 0) == hashing.hash64(b"abc") \
        == C.dest_hash(r, ck["correlation_id"], at, 0) == C.dest_hash(r, ck["call_id"], at, 0)
    assert C.dest_hash(s, ck["call_id"], at, 3) == hashing.hash64(cid)   # too few: whole value
    assert C.dest_hash(r, ck["call_id"]) == C.dest_hash(
        hep(b"INVITE sip:x@h SIP/2.0\r\ni: " + cid + b"\r\n\r\n"), ck["call_id"])
    assert C.dest_hash(s, ck["src_ip"]) == hashing.hash64(bytes([10, 1, 2, 3]))
    v6 = hep(b"{}", ptype=5, src="2001:db8::7")
    assert C.dest_hash(v6, ck["src_ip"]) == hashing.hash64(
        ipaddress.ip_address("2001:db8::7").packed)
    assert C.dest_hash(s, ck["capture_id"]) == hashing.hash64((2001).to_bytes(4, "big"))
    nokey = hep(b"{}", ptype=5)
    assert C.dest_hash(nokey, ck["call_id"]) == C.dest_hash(nokey, ck["correlation_id"]) \
        == oracle.dest_key_hash(codec.decode(nokey), ck["call_id"])        # the flow


# ---------------------------------------------------------------- generated messages and patterns

HEADER_NAMES = [b"X-Tenant", b"x-tenant", b"Subject", b"s", b"User-Agent", b"Server",
                b"CSeq", b"Call-ID", b"i", b"Contact", b"m", b"Event", b"o", b"Via", b"v"]
WORDS = [b"acme", b"Acme-1", b"beta", b"sip:+4930123@gw", b"1 INVITE", b"2 bye", b"x.example.com",
         b"", b"a*b", b"presence"]


@st.composite
def sip_messages(draw):
    if draw(st.booleans()):
        first = draw(st.sampled_from([b"INVITE", b"bye", b"REGISTER", b"OPTIONS"])) + b" " + \
            draw(st.sampled_from([b"sip:+49301@a.example.com", b"sip:bob@X.EXAMPLE.COM",
                                  b"tel:+4930"])) + b" SIP/2.0"
    else:
        first = b"SIP/2.0 " + draw(st.sampled_from([b"200 OK", b"486 Busy", b"100 Trying"]))
    lines = [first]
    for _ in range(draw(st.integers(0, 7))):
        name = draw(st.sampled_from(HEADER_NAMES))
        sep = draw(st.sampled_from([b": ", b":", b" :\t"]))
        fold = b" " if draw(st.integers(0, 9)) == 0 else b""
        lines.append(fold + name + sep + draw(st.sampled_from(WORDS)))
    body = draw(st.sampled_from([b"", b"X-Tenant: acme\r\n"]))
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    return eol.join(lines) + eol + eol + body


GLOBS = ["acme*", "*a*", "?eta", "*.example.com", "sip:+4930*", "\\*", "a\\*b", "*", "beta",
         "1 INVITE", "presence", "*e?"]
METHOD_GLOBS = ["INV*", "*e", "bye", "?????", "*"]


@st.composite
def pattern_rules(draw):
    keys = {
        "sip_header": lambda: {"name": draw(st.sampled_from(
            ["X-Tenant", "subject", "S", "event", "o", "Contact", "v"])),
            "value": draw(st.lists(st.sampled_from(GLOBS), min_size=1, max_size=3))},
        "sip_user_agent": lambda: draw(st.lists(st.sampled_from(GLOBS), min_size=1,
                                                max_size=3)),
        "sip_cseq_method": lambda: draw(st.lists(st.sampled_from(METHOD_GLOBS), min_size=1,
                                                 max_size=2)),
        "sip_method": lambda: draw(st.lists(st.sampled_from(METHOD_GLOBS), min_size=1,
                                            max_size=2)),
        "sip_ruri_user": lambda: draw(st.sampled_from(["+4930*", "bob", "*"])),
        "sip_ruri_domain": lambda: draw(st.sampled_from(["*.example.com", "x.*", "?.EXAMPLE.*"])),
        "sip_call_id": lambda: draw(st.lists(st.sampled_from(GLOBS), min_size=1, max_size=2)),
    }
    out = []
    for _ in range(draw(st.integers(1, 5))):
        chosen = draw(st.lists(st.sampled_from(sorted(keys)), min_size=1, max_size=2,
                               unique=True))
        out.append({k: keys[k]() for k in chosen})
    return every_rule(out)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern_rules(), st.lists(sip_messages(), min_size=1, max_size=6))
def test_generated_patterns_c_equals_python(rules, messages):
    c = compiled(rules)
    for m in messages:
        assert _codec.sip_scan(m) == (sip.sip_fields(m) if sip.sip_fields(m)["sip_method"]
                                      or sip.sip_fields(m)["sip_status"] else {})
        both(c, hep(m))


@settings(max_examples=300, deadline=None)
@given(sip_messages(), st.sampled_from(HEADER_NAMES), st.lists(st.sampled_from(GLOBS),
                                                                 min_size=1, max_size=3))
def test_generated_sip_header_against_a_plain_reading(message, name, values):
    """sip_header against an independent reading: split the header section into lines."""
    c = compiled(every_rule([{"sip_header": {"name": name.decode(), "value": values}}]))
    head = message.replace(b"\r\n", b"\n").split(b"\n\n")[0].split(b"\n")
    full = sip.COMPACT.get(name.lower(), name.lower())
    found = []
    for ln in head[1:]:
        if ln[:1] in (b" ", b"\t") or b":" not in ln:
            continue
        n, _, v = ln.partition(b":")
        n = n.rstrip(b" \t").lower()
        if sip.COMPACT.get(n, n) == full and v.strip(b" \t"):
            found.append(v.strip(b" \t"))
    is_sip = bool(sip.sip_fields(message)["sip_method"] or sip.sip_fields(message)["sip_status"])
    want = is_sip and any(oracle.glob_match(parse_glob(g)[1], v) if parse_glob(g)[1]
                          else parse_glob(g)[0] == v for v in found for g in values)
    assert (both(c, hep(message)) == [0]) == want


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([None, b"", b"a@b", b"a@b@c", b"@", b"x-y-z"]),
       st.sampled_from([b"", b"{}", b"INVITE sip:x@h SIP/2.0\r\nCall-ID: q@h-1\r\n\r\n",
                        b"SIP/2.0 200 OK\r\ni: r-2@h\r\n\r\n", b"BYE x SIP/2.0\r\n\r\n"]),
       st.sampled_from([1, 5, 100]), st.sampled_from(["10.0.0.1", "2001:db8::1"]),
       st.integers(0, 3), st.sampled_from([0, ord("@"), ord("-")]), st.integers(-3, 2))
def test_generated_dest_key_c_equals_python(corr, payload, ptype, src, kind, sep, field):
    data = hep(payload, ptype=ptype, corr=corr, capid=7, src=src)
    assert C.dest_hash(data, kind, sep, field) == \
        oracle.dest_key_hash(codec.decode(data), kind, sep, field)


# ---------------------------------------------------------------- configuration errors

@pytest.mark.parametrize("rule_match,dest,path", [
    ({"sip_call_id": "a\\b"}, {}, "rules[0].match.sip_call_id"),
    ({"sip_user_agent": ["ok*", "x\\"]}, {}, "rules[0].match.sip_user_agent[1]"),
    ({"sip_ruri_user": "*" + "a" * 200}, {}, "rules[0].match.sip_ruri_user"),
    ({"sip_cseq_method": "INV-*"}, {}, "rules[0].match.sip_cseq_method"),
    ({"sip_header": {"name": "X Tenant", "value": "a"}}, {}, "rules[0].match.sip_header.name"),
    ({"sip_header": [{"name": "X-A", "value": "a"}, {"name": "X-B"}]}, {},
     "rules[0].match.sip_header[1].value"),
    ({"sip_header": {"name": "X-A", "value": "a\\"}}, {}, "rules[0].match.sip_header.value"),
    ({"sip_header": {"name": "X-A", "value": "a", "values": "b"}}, {},
     "rules[0].match.sip_header.values"),
    ({"correlation_id_field": {"separator": "@@", "field": 1, "value": "a"}}, {},
     "rules[0].match.correlation_id_field.separator"),
    ({"correlation_id_field": {"separator": "@", "field": 16, "value": "a"}}, {},
     "rules[0].match.correlation_id_field.field"),
    ({"correlation_id_field": {"separator": "@", "field": -17, "value": "a"}}, {},
     "rules[0].match.correlation_id_field.field"),
    ({}, {"call_key": "flow"}, "destinations.homer.call_key"),
    ({}, {"call_key_separator": "@", "call_key_field": 16}, "destinations.homer.call_key_field"),
    ({}, {"call_key_field": 1}, "destinations.homer.call_key_field"),
    ({}, {"call_key_separator": "ab"}, "destinations.homer.call_key_separator"),
    ({}, {"call_key": "src_ip", "call_key_separator": "@"},
     "destinations.homer.call_key_separator"),
    ({}, {"mode": "roundrobin", "call_key": "src_ip"}, "destinations.homer.call_key"),
])
def test_config_errors_name_the_field(rule_match, dest, path):
    cfg = {**BASE, "destinations": {"homer": {**BASE["destinations"]["homer"], **dest}},
           "rules": [{"name": "r", "match": rule_match, "forward": ["homer"]}]}
    with pytest.raises(ConfigError) as exc:
        compile_config(from_dict(cfg))
    assert exc.value.path == path, str(exc.value)


def test_limits_on_patterns_and_conditions():
    many = [f"p{i}*" for i in range(K.MAX_PATTERNS + 1)]
    with pytest.raises(ConfigError, match="too many glob patterns") as exc:
        compiled([{"name": "r", "match": {"sip_call_id": many}, "forward": ["homer"]}])
    assert exc.value.path == "rules[0].match.sip_call_id"
    exact = [f"p{i}" for i in range(K.MAX_PATTERNS + 1)]              # exact values: hashes
    assert compiled([{"name": "r", "match": {"sip_call_id": exact},
                      "forward": ["homer"]}]).pat_off.shape == (0,)
    conds = [{"name": f"X-{i}", "value": "a"} for i in range(K.MAX_CONDS + 1)]
    with pytest.raises(ConfigError, match="at most") as exc:
        compiled([{"name": "r", "match": {"sip_header": conds}, "forward": ["homer"]}])
    assert exc.value.path == "rules[0].match.sip_header"


def test_scanner_looks_only_for_what_rules_need():
    W = K.SIP_WANT
    assert compiled(every_rule([{"sip_method": "INVITE"}])).sip_want == 0
    assert compiled(every_rule([{"sip_header": {"name": "X", "value": "*"}}])).sip_want == 0
    assert compiled(every_rule([{"sip_cseq_method": "BYE"}, {"sip_from_user": "a*"}])).sip_want \
        == W["cseq"] | W["from"]
    c = compiled(every_rule([{"sip_user_agent": "A*"}]))
    assert c.sip_want == W["user_agent"] and c.needs_sip
    # what a restricted scan leaves out is absent, what it scans is what the full scan finds
    m = b"SIP/2.0 200 OK\r\nCall-ID: x\r\nUser-Agent: A1\r\nCSeq: 1 BYE\r\n\r\n"
    assert both(c, hep(m)) == [0]
    assert both(compiled(every_rule([{"sip_call_id": "x", "sip_user_agent": "A?"}])), hep(m)) \
        == [0]


def test_sip_header_beside_header_keys_uses_the_name_summary():
    """sip_header next to a key that scans the headers: that scan reads the whole section and
    summarises the names (SIP_WANT_NAMES), so the sip_header rules skip packets without their
    header, and still find one that comes after every other wanted header (a scan stopped at
    the last wanted header would have missed it), in full or compact form."""
    c = compiled(every_rule([{"sip_call_id": "x"},
                             {"sip_header": {"name": "X-Tenant", "value": "a*"}},
                             {"sip_header": {"name": "Subject", "value": "hi"}}]))
    assert c.sip_want == K.SIP_WANT["call_id"] | K.SIP_WANT_NAMES
    head = b"INVITE sip:b@h SIP/2.0\r\nCall-ID: x\r\n"
    assert both(c, hep(head + b"x-tenant: acme\r\nSubject: hi\r\n\r\n")) == [0, 1, 2]
    assert both(c, hep(head + b"s: hi\r\n\r\n")) == [0, 2]
    assert both(c, hep(head + b"X-Tenant: beta\r\nX-Tenant: acme\r\n\r\n")) == [0, 1]
    assert both(c, hep(head + b"X-Tenantx: acme\r\nSubjec: hi\r\n\r\n")) == [0]
    assert both(c, hep(head + b"\r\nX-Tenant: acme\r\n")) == [0]        # in the body
    # a sip_header rule alone scans only when reached: no summary asked for
    assert compiled(every_rule([{"sip_header": {"name": "X", "value": "*"}},
                                {"correlation_id": "q"}])).sip_want == 0


# ---------------------------------------------------------------- through `hepfast run`

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="recvmmsg/sendmmsg: Linux only")


def _run(tmp_path, config: str, packets: list[bytes], sinks: list, expect: int) -> dict:
    from tests.switchhelp import SwitchProcess, check_accounting

    sw = SwitchProcess(tmp_path, config, workers=1, extra=["--no-admin"])
    try:
        sw.send(packets)
        end = time.monotonic() + 30
        while sum(len(s.packets) for s in sinks) < expect and time.monotonic() < end:
            time.sleep(0.05)
        for s in sinks:
            s.wait_quiet(0.3, timeout=5)
        summary = sw.stop()
    finally:
        sw.kill()
    check_accounting(summary)
    return summary


def _sinks(n):
    from hepfast.tools.sink import Sink

    return [Sink("127.0.0.1:0").start(timeout=120) for _ in range(n)]


@linux_only
@pytest.mark.parametrize("call_key,sep,field", [
    ("correlation_id", "@", 0), ("call_id", "-", -1), ("src_ip", "", 0), ("capture_id", "", 0),
])
def test_hash_mode_keys_on_the_destination_call_key(tmp_path, call_key, sep, field):
    """Every packet of one key reaches one target, the rendezvous choice of its dest_key."""
    from tests.switchhelp import corpus_messages

    kam = corpus_messages("kamailio")
    rtp = corpus_messages("rtpengine")
    # packets from several source addresses and capture ids, so src_ip / capture_id vary
    extra = [hep(b"{}", ptype=5, corr=f"k{i}@h{i % 3}".encode(), capid=i % 5,
                 src=f"10.0.{i % 7}.{i % 11}") for i in range(120)]
    packets = kam + rtp + extra
    sinks = _sinks(3)
    try:
        targets = ", ".join(f'"127.0.0.1:{s.port}"' for s in sinks)
        split = (f'call_key_separator = "{sep}"\ncall_key_field = {field}\n') if sep else ""
        cfg = f"""
            [[listeners]]
            name = "agents"
            listen = "127.0.0.1:0"
            [destinations.d]
            targets = [{targets}]
            call_key = "{call_key}"
            {split}
            [[rules]]
            name = "all"
            forward = ["d"]
            """
        summary = _run(tmp_path, cfg, packets, sinks, len(packets))
        got = [list(s.packets) for s in sinks]
    finally:
        for s in sinks:
            s.close()
    assert summary["forwarded_total"] == len(packets) == sum(len(g) for g in got)
    kind = K.CALL_KEY[call_key]
    seeds = [hashing.target_seed("127.0.0.1", s.port) for s in sinks]
    where: dict[int, set[int]] = {}
    for i, g in enumerate(got):
        for p in g:
            h = oracle.dest_key_hash(codec.decode(p), kind, ord(sep) if sep else 0, field)
            assert hashing.rendezvous(h, seeds) == i
            where.setdefault(h, set()).add(i)
    assert all(len(v) == 1 for v in where.values())
    assert len({i for v in where.values() for i in v}) >= 2 and len(where) >= 5


@linux_only
def test_seed_example_rtcp_by_domain_with_its_call(tmp_path):
    """The seed's example: RTCP whose correlation id is `callid@domain`, routed by the domain
    part to a dedicated destination, each call's SIP (Call-ID = that correlation id) on the
    same target of it as its RTCP; everything else to the default destination."""
    from tests.switchhelp import corpus_messages

    rtp = corpus_messages("rtpengine")
    kam = corpus_messages("kamailio")
    calls = sorted({codec.decode(p).correlation_id_raw for p in rtp})
    assert len(calls) == 4 and all(c.split(b"@")[1] == b"hepfast" for c in calls)
    sip_of_calls = [hep(b"INVITE sip:bob@example.com SIP/2.0\r\nCall-ID: " + c
                        + b"\r\nCSeq: 1 INVITE\r\n\r\n") for c in calls]
    packets = rtp + kam + sip_of_calls
    sinks = _sinks(3)
    try:
        a, b, dflt = sinks
        cfg = f"""
            [switch]
            default = "homer"
            [[listeners]]
            name = "agents"
            listen = "127.0.0.1:0"
            [destinations.homer]
            targets = ["127.0.0.1:{dflt.port}"]
            [destinations.tenant]
            targets = ["127.0.0.1:{a.port}", "127.0.0.1:{b.port}"]
            mode = "hash"
            [[rules]]
            name = "rtcp-by-domain"
            match.proto_type = "rtcp"
            match.correlation_id_field = {{ separator = "@", field = 1, value = ["hepfast"] }}
            forward = ["tenant"]
            [[rules]]
            name = "sip-by-domain"
            match.sip_call_id = "*@hepfast"
            forward = ["tenant"]
            """
        summary = _run(tmp_path, cfg, packets, sinks, len(packets))
        got = {name: list(s.packets) for name, s in zip(("a", "b", "dflt"), sinks, strict=True)}
        seeds = [hashing.target_seed("127.0.0.1", s.port) for s in (a, b)]
    finally:
        for s in sinks:
            s.close()
    assert summary["rules"]["rtcp-by-domain"] == len(rtp)
    assert summary["rules"]["sip-by-domain"] == len(calls)
    tenant = got["a"] + got["b"]
    assert sorted(tenant) == sorted(rtp + sip_of_calls)
    assert sorted(got["dflt"]) == sorted(kam)
    for cid in calls:
        side = {name for name in ("a", "b") for p in got[name]
                if codec.decode(p).call_key() == cid}
        assert side == {"ab"[hashing.rendezvous(hashing.hash64(cid), seeds)]}, cid


@linux_only
def test_ring_fed_stream_hash_keys_on_the_destination_call_key(tmp_path):
    """A tcp destination: the worker puts the destination's call key (here the capture id) in
    each ring record's meta, and the egress process's rendezvous over it picks the target."""
    from hepfast.tools.sink import StreamSink
    from tests.switchhelp import SwitchProcess, agents_to, check_accounting

    sinks = [StreamSink("127.0.0.1:0").start(timeout=120) for _ in range(2)]
    packets = [hep(b"{}", ptype=5, corr=f"c{i}@x".encode(), capid=i % 16) for i in range(400)]
    try:
        sw = SwitchProcess(tmp_path, agents_to([s.port for s in sinks], """
            [[rules]]
            name = "all"
            forward = ["c"]
            """, destination="""
            transport = "tcp"
            call_key = "capture_id"
            reconnect_min_s = 0.05
            """, name="c"), workers=1, extra=["--no-admin"])
        try:
            end = time.monotonic() + 20
            while min(s.connections for s in sinks) < 1 and time.monotonic() < end:
                time.sleep(0.05)
            assert min(s.connections for s in sinks) >= 1, "both targets connected first"
            sw.send(packets)
            end = time.monotonic() + 30
            while sum(len(s.packets) for s in sinks) < len(packets) and time.monotonic() < end:
                time.sleep(0.05)
            summary = sw.stop()
        finally:
            sw.kill()
        got = [list(s.packets) for s in sinks]
        seeds = [hashing.target_seed("127.0.0.1", s.port) for s in sinks]
    finally:
        for s in sinks:
            s.close()
    check_accounting(summary)
    assert sum(len(g) for g in got) == len(packets)
    for i, g in enumerate(got):
        for p in g:
            meta = oracle.dest_key_hash(codec.decode(p), K.CALL_KEY["capture_id"]) & 0xFFFFFFFF
            assert hashing.rendezvous(meta, seeds) == i
    assert all(got)                                     # 16 capture ids over both targets
