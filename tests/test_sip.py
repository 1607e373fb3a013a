"""SIP scanning: hepfast.wire.sip on hand-written messages, and the C scanner (ext/wire/sipscan.pxd, reached
through hepfast.wire._codec.sip_scan) against it on every corpus payload and on random input."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hepfast.wire import sip
from hepfast.wire.sip import FIELDS, call_id, sip_fields, sip_summary

INVITE = (
    b"INVITE sip:bob@example.com;transport=udp SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bK1\r\n"
    b'From: "Alice <boss>" <sip:alice:secret@example.org>;tag=1\r\n'
    b"To: <sips:bob@example.com>\r\n"
    b"Call-ID:   abc-123@10.0.0.1  \r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Content-Length: 24\r\n"
    b"\r\n"
    b"Call-ID: not-a-header\r\n"
)


def test_request_fields():
    f = sip_fields(INVITE)
    assert f == {
        "sip_method": "INVITE", "sip_status": None, "sip_call_id": "abc-123@10.0.0.1",
        "sip_from_user": "alice", "sip_to_user": "bob", "sip_ruri_user": "bob",
        "sip_ruri_domain": "example.com", "sip_cseq_method": f["sip_cseq_method"],
        "sip_user_agent": f["sip_user_agent"],
    }
    assert sip_summary(INVITE) == {"sip_method": "INVITE", "sip_call_id": "abc-123@10.0.0.1"}
    assert call_id(INVITE) == b"abc-123@10.0.0.1"


def test_response_compact_headers_and_case():
    msg = (b"SIP/2.0 180 Ringing\n"
           b"f: sip:+15551234@gw.example;tag=9\n"
           b"t: <tel:+15559876;phone-context=example>\n"
           b"I : xyz@host\n\n")
    f = sip_fields(msg)
    assert f["sip_status"] == 180 and f["sip_method"] is None
    assert (f["sip_from_user"], f["sip_to_user"], f["sip_call_id"]) == ("+15551234", "+15559876",
                                                                       "xyz@host")
    assert f["sip_ruri_user"] is None and f["sip_ruri_domain"] is None
    assert sip_summary(msg) == {"sip_status": 180, "sip_call_id": "xyz@host"}
    assert call_id(b"SIP/2.0 200 OK\r\nCALL-id: Q\r\n\r\n") == b"Q"


def test_first_occurrence_decides_and_only_headers():
    msg = b"BYE sip:x@h SIP/2.0\r\nCall-ID:\r\ni: second\r\n\r\n"
    assert sip_fields(msg)["sip_call_id"] is None      # the first (empty) one decides
    assert call_id(msg) is None
    body_only = b"BYE sip:x@h SIP/2.0\r\nCSeq: 2 BYE\r\n\r\nCall-ID: in-body\r\n"
    assert call_id(body_only) is None
    folded = b"BYE sip:x@h SIP/2.0\r\nSubject: a\r\n Call-ID: folded\r\ni: real\r\n\r\n"
    assert call_id(folded) == b"real"


@pytest.mark.parametrize("uri,user,domain", [
    (b"sip:alice@[2001:db8::1]:5060;transport=tcp", "alice", "[2001:db8::1]"),
    (b"sip:example.com", None, "example.com"),
    (b"SIPS:carol@Example.COM?subject=x", "carol", "Example.COM"),
    (b"tel:+1555;npdi", "+1555", None),
    (b"urn:service:sos", None, None),
    (b"sip:@host", None, "host"),
])
def test_ruri(uri, user, domain):
    msg = b"OPTIONS " + uri + b" SIP/2.0\r\n\r\n"
    assert sip.ruri(msg) == (user, domain)


@pytest.mark.parametrize("payload", [
    b"", b"\r\n\r\n", b"SIP/2.0 2000 Bad\r\n", b"SIP/2.0 099 x\r\n", b"SIP/2.0 20", b"INVITE\r\n",
    b"INVITE sip:a@b SIP/3.0\r\n", b"INVITE  sip:a@b SIP/2.0\r\n", b"INV(TE sip:a@b SIP/2.0\r\n",
    b"INVITE sip:a@b SIP/2.0 \r\n", b"\x00\xff\x10HEP3", b'{"json": 1}',
])
def test_not_sip(payload):
    assert sip_summary(payload) == {}
    assert sip_fields(payload) == dict.fromkeys(FIELDS)


def test_status_line_forms():
    assert sip_fields(b"SIP/2.0 200")["sip_status"] == 200          # no reason phrase
    assert sip_fields(b"SIP/2.0 603 Decline\r\n")["sip_status"] == 603
    assert sip_fields(b"SIP/2.0 200OK\r\n")["sip_status"] is None


def test_corpus_payloads_match_tshark(corpus_packets):
    from hepfast.wire.codec import decode

    for data, exp in corpus_packets:
        s = sip_summary(decode(data).payload)
        if "sip.Call-ID" not in exp:
            assert s == {}, exp["idx"]
            continue
        assert s["sip_call_id"] == exp["sip.Call-ID"]
        if "sip.Method" in exp:
            assert s["sip_method"] == exp["sip.Method"]
        else:
            assert s["sip_status"] == exp["sip.Status-Code"]


@given(st.binary(max_size=300))
def test_never_raises_on_bytes(data):
    f = sip_fields(data)
    assert set(f) == set(FIELDS)
    cid = call_id(data)
    assert cid is None or (cid and cid in data)
    if f["sip_call_id"] is not None:           # the fast path finds the same header
        assert cid is not None and cid.decode("utf-8", "replace") == f["sip_call_id"]


# ----------------------------------------------------------------------- C scanner vs Python

def _scanner():
    from hepfast.wire import _codec

    if not hasattr(_codec, "sip_scan"):
        pytest.skip("hepfast.wire._codec has no sip_scan yet (the wrapper over ext/wire/sipscan.pxd)")
    return _codec


PIECES = [b"SIP/2.0 ", b"200", b" OK", b"INVITE", b"ACK", b" ", b"sip:", b"sips:", b"tel:",
          b"SIP:", b"@", b":", b";", b"<", b">", b'"', b"\\", b"\r\n", b"\n", b"\r", b"Call-ID",
          b"call-id", b"i", b"From", b"f", b"To", b"T", b"\t", b"SIP/2.0", b"[", b"]", b"?",
          b"alice", b"example.com", b"\x00", b"\xff", b"\xc3\xa9", b"\r\n\r\n", b"5", b"1"]
sip_like = st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join)


def _mutations():
    base = [INVITE, b"SIP/2.0 200 OK\r\nf: <sip:a@b>\r\nt: \"x\\\"<\" <tel:1>\r\ni: c\r\n\r\n"]
    return st.tuples(st.sampled_from(base), st.lists(st.tuples(
        st.integers(0, 400), st.integers(0, 8), st.sampled_from(PIECES)), max_size=6))


def _apply(base: bytes, edits) -> bytes:
    b = bytearray(base)
    for pos, cut, piece in edits:
        pos = min(pos, len(b))
        b[pos:pos + cut] = piece
    return bytes(b)


def _same(codec, data: bytes) -> None:
    # Not SIP: the wrapper may answer {} instead of every key set to None.
    assert (codec.sip_scan(data) or dict.fromkeys(FIELDS)) == sip_fields(data), data
    if hasattr(codec, "sip_call_id"):
        assert codec.sip_call_id(data) == call_id(data), data


def test_c_scanner_matches_on_corpus(corpus_packets):
    codec = _scanner()
    from hepfast.wire.codec import decode

    for data, _exp in corpus_packets:
        _same(codec, decode(data).payload)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=200), sip_like))
def test_c_scanner_matches_on_random(data):
    _same(_scanner(), data)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations())
def test_c_scanner_matches_on_mutated_sip(m):
    _same(_scanner(), _apply(*m))


def test_c_scanner_accepts_buffers():
    codec = _scanner()
    assert codec.sip_scan(bytearray(INVITE)) == sip_fields(INVITE)
    assert codec.sip_scan(memoryview(INVITE)) == sip_fields(INVITE)
    assert not any((codec.sip_scan(b"") or {}).values())
