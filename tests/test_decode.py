"""Decoding real traffic: every corpus message through both codecs and through `hepfast decode`
(on the pcaps) against what tshark's HEP dissector decoded independently (.expected.jsonl)."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hepfast.tools import capture
from hepfast.wire import chunks
from hepfast.wire.packet import DECODE_KEYS

REPO = Path(__file__).resolve().parents[1]
APP_PROTO = {"SIP": 1, "LOG": 100, "JSON/RTCP": 5}
TRANSPORT = {"UDP": 17, "TCP": 6}


def _check_dict(d: dict, exp: dict) -> None:
    """A `hepfast decode` object against a tshark object."""
    where = f"message {exp['idx']}"
    assert d["version"] == 3 and exp["hep3.version"] == "HEP3", where
    v6 = exp["hep3.ip_family"] == "IPv6"
    assert d["proto_family"] == (10 if v6 else 2), where
    assert d["proto_id"] == TRANSPORT[exp["hep3.transport_layer_protocol"]], where
    fam = "ipv6" if v6 else "ipv4"
    assert d["src_ip"] == exp[f"hep3.source_{fam}_address"], where
    assert d["dst_ip"] == exp[f"hep3.destination_{fam}_address"], where
    assert d["src_port"] == exp["hep3.source_port"], where
    assert d["dst_port"] == exp["hep3.destination_port"], where
    assert d["timestamp"] == exp["hep3.timestamp_unix"], where
    assert d["timestamp_us"] == exp["hep3.timestamp_microsec"], where
    assert d["proto_type"] == APP_PROTO[exp["hep3.application_protocol"]], where
    assert d["capture_id"] == exp["hep3.capture_node_id"], where
    assert d["correlation_id"] == exp.get("hep3.correlation_id"), where
    assert d["auth_key"] is None and d["node_name"] is None, where
    assert d["payload_len"] == exp["hep3.payload.size"], where
    sip_keys = set(d) - set(DECODE_KEYS)
    if "sip.Call-ID" in exp:
        assert d["sip_call_id"] == exp["sip.Call-ID"], where
        if "sip.Method" in exp:
            assert sip_keys == {"sip_method", "sip_call_id"}, where
            assert d["sip_method"] == exp["sip.Method"], where
        else:
            assert sip_keys == {"sip_status", "sip_call_id"}, where
            assert d["sip_status"] == exp["sip.Status-Code"], where
    else:
        assert not sip_keys, where
    assert list(d)[:len(DECODE_KEYS)] == list(DECODE_KEYS), where


def test_codec_matches_tshark(codec_impl, corpus_packets):
    for data, exp in corpus_packets:
        pkt = codec_impl.decode(data)
        assert pkt.total == exp["hep3.hep_packet_size"] == len(data)
        assert pkt.family == (6 if exp["hep3.ip_family"] == "IPv6" else 4)
        _check_dict(pkt.to_dict(), exp)
        assert codec_impl.reason(data) == 0


def _decode_main(files, capsysbinary) -> tuple[int, list[dict], str]:
    from hepfast.commands import decode

    rc = decode.main(argparse.Namespace(files=[str(f) for f in files]))
    out, err = capsysbinary.readouterr()
    return rc, [json.loads(line) for line in out.splitlines()], err.decode()


def test_decode_command_on_pcap(corpus_dir, corpus_name, corpus_packets, capsysbinary):
    rc, objs, err = _decode_main([corpus_dir / f"{corpus_name}.pcap"], capsysbinary)
    expected = [e for _d, e in corpus_packets]
    assert rc == 0
    assert len(objs) == len(expected)
    for d, exp in zip(objs, expected, strict=True):
        _check_dict(d, exp)
    assert f"{len(expected)} decoded, 0 invalid" in err


def test_decode_subprocess(corpus_dir, corpus_loader):
    pcaps = sorted(corpus_dir.glob("*.pcap"))
    assert pcaps, f"no pcap in {corpus_dir}"
    proc = subprocess.run([sys.executable, "-m", "hepfast", "decode", *map(str, pcaps)],
                          cwd=REPO, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    lines = proc.stdout.splitlines()
    expected = [e for p in pcaps for _d, e in corpus_loader(p.stem)]
    assert len(lines) == len(expected)
    for line, exp in zip(lines, expected, strict=True):
        assert b", " not in line[:40]                  # compact separators
        _check_dict(json.loads(line), exp)


def _hep(payload: bytes = b"SIP/2.0 200 OK\r\ni: k@h\r\n\r\n", ptype: int = 1) -> bytes:
    return chunks.encode_packet([(0, 1, b"\x02"), (0, 2, b"\x11"), (0, 3, bytes([10, 0, 0, 1])),
                                 (0, 4, bytes([10, 0, 0, 2])), (0, 7, b"\x13\xc4"),
                                 (0, 8, b"\x13\xc4"), (0, 9, b"\0\0\0\x01"), (0, 10, b"\0\0\0\x02"),
                                 (0, 11, bytes([ptype])), (0, 12, b"\0\0\0\x07"),
                                 (0, 15, payload)])


def test_invalid_messages_are_counted(tmp_path, capsysbinary):
    good = _hep()
    bad_len = good[:4] + b"\xff\xff" + good[6:]
    bad_chunk = good[:6] + b"\0\0\0\x01\0\x09" + good[12:]
    f = tmp_path / "mixed.hepraw"
    capture.write_hepraw(f, [good, bad_len, b"XXXX1234", bad_chunk, good])
    rc, objs, err = _decode_main([f], capsysbinary)
    assert rc == 0
    assert len(objs) == 2 and objs[0]["sip_status"] == 200 and objs[0]["sip_call_id"] == "k@h"
    assert "message 1: invalid HEP (length)" in err
    assert "message 2: invalid HEP (magic)" in err
    assert "message 3: invalid HEP (chunk)" in err
    assert "2 decoded, 3 invalid (chunk 1, length 1, magic 1)" in err


def test_unreadable_files_exit_1(tmp_path, capsysbinary):
    ok = tmp_path / "ok.hepraw"
    capture.write_hepraw(ok, [_hep()])
    text = tmp_path / "notes.txt"
    text.write_text("just some text, not a capture\n")
    rc, objs, err = _decode_main([tmp_path / "missing.pcap", text, ok], capsysbinary)
    assert rc == 1
    assert len(objs) == 1                       # the readable file is still decoded
    assert "missing.pcap: No such file or directory" in err
    assert "neither pcap, pcapng nor .hepraw" in err


def test_nothing_decoded_exit_1(tmp_path, capsysbinary):
    empty = tmp_path / "empty.hepraw"
    empty.write_bytes(b"")
    rc, objs, err = _decode_main([empty], capsysbinary)
    assert rc == 1 and objs == []
    assert "no HEP message found" in err


def test_decode_pcapng_with_hep_over_tcp_and_v2(tmp_path, capsysbinary):
    """HEPv3 framed out of a TCP stream cut mid-message, plus a HEPv2 datagram on an odd port."""
    msgs = [_hep(b"INVITE sip:bob@example.com SIP/2.0\r\nCall-ID: c%d\r\n\r\n" % i)
            for i in range(3)]
    stream = b"".join(msgs)
    segs = capture.tcp_datagrams(stream, src_ip="10.0.0.1", dst_ip="10.0.0.9", src_port=40000,
                                 dst_port=9062, sizes=[10, len(msgs[0]), 7], ts=(100, 5))
    segs = [segs[0], segs[2], segs[1], segs[3], segs[1], segs[4]]   # reordered + retransmitted
    v2 = (bytes([2, 16, 2, 17]) + b"\x13\xc4\x13\xc5" + bytes([10, 0, 0, 1, 10, 0, 0, 2])
          + (1234).to_bytes(4, "little") + (56).to_bytes(4, "little") + (9).to_bytes(2, "little")
          + b"\0\0" + b"SIP/2.0 486 Busy\r\nCall-ID: v2\r\n\r\n")
    udp = capture.Datagram(101, 0, 4, 17, "10.0.0.1", "10.0.0.9", 1111, 7777, v2)
    f = tmp_path / "mixed.pcapng"
    capture.write_pcapng(f, [*segs, udp], tsresol=9)
    rc, objs, err = _decode_main([f], capsysbinary)
    assert rc == 0, err
    assert [o.get("sip_call_id") for o in objs] == ["c0", "c1", "c2", "v2"]
    assert objs[3]["version"] == 2 and objs[3]["sip_status"] == 486
    assert (objs[3]["timestamp"], objs[3]["timestamp_us"], objs[3]["capture_id"]) == (1234, 56, 9)
    assert all(o["sip_method"] == "INVITE" for o in objs[:3])


@pytest.mark.parametrize("cut", [1, 5, 6, 50])
def test_decode_truncated_hepraw(tmp_path, capsysbinary, cut):
    f = tmp_path / "cut.hepraw"
    capture.write_hepraw(f, [_hep(), _hep()])
    f.write_bytes(f.read_bytes()[:-cut])        # the last record is incomplete: ignored
    rc, objs, _err = _decode_main([f], capsysbinary)
    assert rc == 0 and len(objs) == 1
