"""Synthetic HEP traffic for `hepfast replay synthetic:...`: complete SIP calls plus their RTCP
reports and log lines, the way a capture agent and a media relay would send them.

Each call: INVITE, 100, 180, 200 (INVITE and 200 with SDP), ACK, BYE, 200 as proto type 1; per
side `rtcp` RTCP reports as proto type 5 (JSON in rtpengine's shape) and `log` log lines as proto
type 100, both with the call's Call-ID as correlation id. Call i starts at start + i/cps; packets
are returned in time order (calls overlap). HEPv2 carries only SIP (it has no proto type or
correlation id), so version=2 yields the SIP messages only.

Deterministic for a given `seed` (and `start`): the same spec builds the same bytes.
"""
from __future__ import annotations

import ipaddress
import json
import random
import struct
import time
from typing import NamedTuple

from hepfast.wire import chunks


class SynthError(ValueError):
    """A bad `synthetic:` option; the message names the option and what is accepted."""


class Packet(NamedTuple):
    ts_ns: int              # capture time (epoch ns): the HEP timestamp and the --speed schedule
    data: bytes


DEFAULTS = {
    "calls": 10, "cps": 10.0, "ipv6": 0.0, "capture_id": 2001, "node": "", "version": 3,
    "rtcp": 1, "log": 1, "talk": 3.0, "seed": 1, "start": 0.0,
}
_TYPES = {"calls": int, "cps": float, "ipv6": float, "capture_id": int, "node": str,
          "version": int, "rtcp": int, "log": int, "talk": float, "seed": int, "start": float}


def parse_spec(spec: str) -> dict:
    """Options of "synthetic:calls=100,cps=50,..." (all optional)."""
    body = spec.split(":", 1)[1] if ":" in spec else ""
    opts = dict(DEFAULTS)
    for item in filter(None, (s.strip() for s in body.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in _TYPES or not sep:
            raise SynthError(f"synthetic: unknown option {item!r}; known: "
                             + ", ".join(f"{k}=" for k in _TYPES))
        try:
            opts[key] = _TYPES[key](value.strip())
        except ValueError:
            raise SynthError(f"synthetic: {key}={value!r} is not a {_TYPES[key].__name__}") \
                from None
    if opts["version"] not in (2, 3):
        raise SynthError("synthetic: version must be 2 or 3")
    if opts["calls"] < 0 or opts["cps"] <= 0 or not 0 <= opts["ipv6"] <= 1:
        raise SynthError("synthetic: calls >= 0, cps > 0 and 0 <= ipv6 <= 1")
    return opts


def _hep(family: int, ip_proto: int, src: bytes, dst: bytes, sport: int, dport: int,
         ts_ns: int, ptype: int, capture_id: int, payload: bytes, corr: bytes | None,
         node: bytes | None) -> bytes:
    v6 = family == 6
    c = [(0, 1, bytes([10 if v6 else 2])), (0, 2, bytes([ip_proto])),
         (0, 5 if v6 else 3, src), (0, 6 if v6 else 4, dst),
         (0, 7, struct.pack(">H", sport)), (0, 8, struct.pack(">H", dport)),
         (0, 9, struct.pack(">I", ts_ns // 1_000_000_000)),
         (0, 10, struct.pack(">I", ts_ns // 1000 % 1_000_000)),
         (0, 11, bytes([ptype])), (0, 12, struct.pack(">I", capture_id))]
    if corr is not None:
        c.append((0, 0x11, corr))
    if node:
        c.append((0, 0x13, node))
    c.append((0, 15, payload))
    return chunks.encode_packet(c)


def _sdp(ip: str, port: int, sess: int) -> bytes:
    fam = "IP6" if ":" in ip else "IP4"
    return (f"v=0\r\no=- {sess} {sess} IN {fam} {ip}\r\ns=hepfast\r\nc=IN {fam} {ip}\r\n"
            f"t=0 0\r\nm=audio {port} RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n").encode()


_MAXFWD = [("Max-Forwards", "70")]


def _sip(first: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [first] + [f"{k}: {v}" for k, v in headers]
    if body:
        lines.append("Content-Type: application/sdp")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def generate(spec: str | dict) -> list[Packet]:
    o = parse_spec(spec) if isinstance(spec, str) else {**DEFAULTS, **spec}
    rnd = random.Random(o["seed"])
    start_ns = int((o["start"] or time.time()) * 1e9)
    node = o["node"].encode() if o["node"] else None
    v3 = o["version"] == 3
    out: list[Packet] = []
    for n in range(o["calls"]):
        t = start_ns + int(n * 1e9 / o["cps"])
        v6 = rnd.random() < o["ipv6"]
        fam = 6 if v6 else 4
        if v6:
            a_ip, b_ip = f"fd00::a:{n % 65536:x}", f"fd00::b:{(n * 7) % 65536:x}"
        else:
            a_ip, b_ip = f"10.0.{(n >> 8) & 255}.{n & 255 or 1}", f"10.1.{(n >> 8) & 255}.{n & 255 or 1}"
        a, b = ipaddress.ip_address(a_ip).packed, ipaddress.ip_address(b_ip).packed
        ua = f"[{a_ip}]" if v6 else a_ip
        ub = f"[{b_ip}]" if v6 else b_ip
        cid = f"{rnd.getrandbits(64):016x}-{n}@hepfast.gen"
        ftag, ttag = f"{rnd.getrandbits(32):08x}", f"{rnd.getrandbits(32):08x}"
        a_rtp, b_rtp = 20000 + 2 * (n % 5000), 30000 + 2 * (n % 5000)
        caller, callee = f"alice{n}", f"bob{n}"
        frm = f"<sip:{caller}@example.com>;tag={ftag}"
        to0 = f"<sip:{callee}@example.net>"
        to1 = f"{to0};tag={ttag}"
        via = f"SIP/2.0/UDP {ua}:5060;branch=z9hG4bK{rnd.getrandbits(40):010x}"
        via2 = f"SIP/2.0/UDP {ua}:5060;branch=z9hG4bK{rnd.getrandbits(40):010x}"
        via3 = f"SIP/2.0/UDP {ub}:5060;branch=z9hG4bK{rnd.getrandbits(40):010x}"
        ruri = f"sip:{callee}@{ub}:5060"

        def req(method, uri, v, to, cseq, body=b"", contact=True, _cid=cid, _frm=frm,
                _contact=f"<sip:{caller}@{ua}:5060>"):
            h = [("Via", v)] + _MAXFWD + [("From", _frm), ("To", to), ("Call-ID", _cid),
                                         ("CSeq", f"{cseq} {method}")]
            if contact:
                h.append(("Contact", _contact))
            return _sip(f"{method} {uri} SIP/2.0", h, body)

        def resp(code, reason, v, to, cseq, method, body=b"", _cid=cid, _frm=frm,
                 _contact=f"<sip:{callee}@{ub}:5060>"):
            h = [("Via", v), ("From", _frm), ("To", to), ("Call-ID", _cid),
                 ("CSeq", f"{cseq} {method}")]
            if code >= 180:
                h.append(("Contact", _contact))
            return _sip(f"SIP/2.0 {code} {reason}", h, body)

        answer = t + 1_000_000_000 + rnd.randrange(0, 500_000_000)
        bye = answer + int(o["talk"] * 1e9)
        msgs = [  # (time, from caller?, payload)
            (t, True, req("INVITE", ruri, via, to0, 1, _sdp(a_ip, a_rtp, n + 1000))),
            (t + 2_000_000, False, resp(100, "Trying", via, to0, 1, "INVITE")),
            (t + 40_000_000, False, resp(180, "Ringing", via, to1, 1, "INVITE")),
            (answer, False, resp(200, "OK", via, to1, 1, "INVITE", _sdp(b_ip, b_rtp, n + 2000))),
            (answer + 5_000_000, True, req("ACK", f"sip:{callee}@{ub}:5060", via2, to1, 1,
                                           contact=False)),
            (bye, False, _sip(f"BYE sip:{caller}@{ua}:5060 SIP/2.0",
                              [("Via", via3)] + _MAXFWD + [("From", to1), ("To", frm),
                                                          ("Call-ID", cid), ("CSeq", "1 BYE")])),
            (bye + 3_000_000, True, _sip("SIP/2.0 200 OK",
                                         [("Via", via3), ("From", to1), ("To", frm),
                                          ("Call-ID", cid), ("CSeq", "1 BYE")])),
        ]
        for ts, from_a, payload in msgs:
            src, dst = (a, b) if from_a else (b, a)
            pkt = _hep(fam, 17, src, dst, 5060, 5060, ts, 1, o["capture_id"], payload, None, node)
            if not v3:
                from hepfast.wire import codec

                pkt = codec.to_v2(pkt)
            out.append(Packet(ts, pkt))
        if not v3:
            continue
        cid_b = cid.encode()
        for k in range(o["log"]):
            line = f"call {cid} from {caller} to {callee}: INVITE relayed ({k + 1})".encode()
            out.append(Packet(t + 1_000_000 + k, _hep(fam, 17, a, b, 5060, 5060, t + 1_000_000 + k,
                                                      100, o["capture_id"], line, cid_b, node)))
        for k in range(o["rtcp"]):
            for side in (0, 1):
                ts = answer + (k + 1) * int(o["talk"] * 1e9) // (o["rtcp"] + 1) + side * 1000
                ssrc, peer = rnd.getrandbits(32), rnd.getrandbits(32)
                report = {
                    "sender_information": {"ntp_timestamp_sec": ts // 1_000_000_000 + 2208988800,
                                           "ntp_timestamp_usec": ts // 1000 % 1_000_000,
                                           "octets": 160 * 50 * (k + 1) * 3,
                                           "rtp_timestamp": rnd.getrandbits(32),
                                           "packets": 50 * (k + 1) * 3},
                    "ssrc": ssrc, "type": 200, "report_count": 1,
                    "report_blocks": [{"source_ssrc": peer, "highest_seq_no": rnd.randrange(65536),
                                       "fraction_lost": 0, "ia_jitter": rnd.randrange(1, 40),
                                       "packets_lost": rnd.randrange(0, 3), "lsr": 0, "dlsr": 0}],
                    "sdes_information": [{"ssrc": ssrc, "type": 1,
                                          "text": f"{caller if side == 0 else callee}@hepfast"}],
                }
                src, dst = (a, b) if side == 0 else (b, a)
                sp, dp = (a_rtp + 1, b_rtp + 1) if side == 0 else (b_rtp + 1, a_rtp + 1)
                payload = json.dumps(report, separators=(",", ":")).encode()
                out.append(Packet(ts, _hep(fam, 17, src, dst, sp, dp, ts, 5, o["capture_id"],
                                           payload, cid_b, node)))
    # The HEP timestamp has microseconds: keep the schedule equal to what the packets say.
    out = [Packet(p.ts_ns // 1000 * 1000, p.data) for p in out]
    out.sort(key=lambda p: p.ts_ns)
    return out
