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
# What `hepfast decode` adds to the contract keys.
RECORD_KEYS = {"index", "file", "length", "proto_family_name", "proto_id_name",
               "proto_type_name", "payload", "payload_b64", "wrapped"}


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
    sip_keys = set(d) - set(DECODE_KEYS) - RECORD_KEYS
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
    # the contract keys all there, in their order (the additions sit between them)
    assert [k for k in d if k in DECODE_KEYS] == list(DECODE_KEYS), where
    if "proto_type_name" in d:
        assert d["proto_type_name"] == exp["hep3.application_protocol"].split("/")[-1].lower()
        assert d["proto_family_name"] == exp["hep3.ip_family"], where
        assert d["proto_id_name"] == exp["hep3.transport_layer_protocol"].lower(), where
        assert d["length"] == exp["hep3.hep_packet_size"], where
        assert d["index"] == exp["idx"], where
        keys = list(d)
        for num, name in (("proto_type", "proto_type_name"), ("proto_id", "proto_id_name"),
                          ("proto_family", "proto_family_name"), ("version", "length")):
            assert keys.index(name) == keys.index(num) + 1, (where, name)   # next to the number


def test_codec_matches_tshark(codec_impl, corpus_packets):
    for data, exp in corpus_packets:
        pkt = codec_impl.decode(data)
        assert pkt.total == exp["hep3.hep_packet_size"] == len(data)
        assert pkt.family == (6 if exp["hep3.ip_family"] == "IPv6" else 4)
        _check_dict(pkt.to_dict(), exp)
        assert codec_impl.reason(data) == 0


def _decode_main(files, capsysbinary, **kw) -> tuple[int, list[dict], str]:
    from hepfast.commands import decode

    rc = decode.main(argparse.Namespace(files=[str(f) for f in files], **kw))
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
        d = json.loads(line)
        assert d.pop("file").endswith(".pcap")         # several files: each record names its own
        _check_dict(d, exp)


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


def test_names_next_to_numbers_and_unknown_values(tmp_path, capsysbinary):
    odd = chunks.encode_packet([(0, 1, b"\x63"), (0, 2, b"\x84"), (0, 11, b"\x2a"),
                                (0, 15, b"x")])
    f = tmp_path / "odd.hepraw"
    capture.write_hepraw(f, [_hep(), _hep(b"log line", ptype=100), odd])
    rc, objs, _err = _decode_main([f], capsysbinary)
    assert rc == 0
    assert [o["index"] for o in objs] == [0, 1, 2]
    assert "file" not in objs[0]                       # one file: no file key
    a, b, c = objs
    assert (a["proto_type"], a["proto_type_name"]) == (1, "sip")
    assert (a["proto_family"], a["proto_family_name"]) == (2, "IPv4")
    assert (a["proto_id"], a["proto_id_name"]) == (17, "udp")
    assert a["length"] == len(_hep())
    assert (b["proto_type"], b["proto_type_name"]) == (100, "log")
    assert (c["proto_type"], c["proto_type_name"]) == (42, None)          # no name: null
    assert (c["proto_family"], c["proto_family_name"]) == (0x63, None)
    assert (c["proto_id"], c["proto_id_name"]) == (0x84, "sctp")
    assert "payload" not in a


def test_payload_option(tmp_path, capsysbinary):
    import base64
    import zlib

    z = zlib.compress(b"REGISTER sip:x SIP/2.0\r\n\r\n")
    comp = chunks.encode_packet([(0, 1, b"\x02"), (0, 11, b"\x01"), (0, 0x10, z)])
    f = tmp_path / "p.hepraw"
    capture.write_hepraw(f, [_hep(), comp])
    rc, objs, _err = _decode_main([f], capsysbinary, payload=True)
    assert rc == 0
    assert objs[0]["payload"] == "SIP/2.0 200 OK\r\ni: k@h\r\n\r\n"
    assert "payload" not in objs[1] and base64.b64decode(objs[1]["payload_b64"]) == z


def test_index_counts_invalid_messages_too(tmp_path, capsysbinary):
    f = tmp_path / "mixed.hepraw"
    capture.write_hepraw(f, [_hep(), b"XXXX1234", _hep()])
    rc, objs, err = _decode_main([f], capsysbinary)
    assert rc == 0 and [o["index"] for o in objs] == [0, 2]
    assert "message 1: invalid HEP (magic)" in err


def test_raw_sip_pcap_is_wrapped_like_replay(tmp_path, capsysbinary):
    from hepfast.tools.replay import read_capture_packets

    sip = [b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: w%d\r\n\r\n" % i for i in range(3)]
    items = [capture.Datagram(1_700_000_000 + i, 5, 4, 17, "10.0.0.1", "10.0.0.2", 5060, 5080, p)
             for i, p in enumerate(sip)]
    items.append(capture.Datagram(1_700_000_009, 0, 6, 17, "2001:db8::1", "2001:db8::2", 5060,
                                  5060, b"SIP/2.0 200 OK\r\nCall-ID: w6\r\n\r\n"))
    f = tmp_path / "raw.pcap"
    capture.write_pcap(f, items)
    rc, objs, err = _decode_main([f], capsysbinary, payload=True)
    assert rc == 0, err
    assert "no HEP inside; 4 raw SIP messages wrapped into HEPv3" in err
    assert [o["sip_call_id"] for o in objs] == ["w0", "w1", "w2", "w6"]
    assert all(o["wrapped"] is True and o["version"] == 3 for o in objs)
    assert (objs[0]["src_ip"], objs[0]["dst_port"], objs[0]["timestamp"]) == \
        ("10.0.0.1", 5080, 1_700_000_000)
    assert objs[3]["proto_family_name"] == "IPv6" and objs[3]["sip_status"] == 200
    # exactly the packets replay would send
    from hepfast.wire import codec

    sent = [codec.decode(p.data).to_record(i, payload=True)
            for i, p in enumerate(read_capture_packets(str(f)))]
    assert [dict(o, wrapped=None) for o in objs] == [dict(o, wrapped=None) for o in sent]


def test_pcap_without_hep_or_sip_says_so(tmp_path, capsysbinary):
    f = tmp_path / "dns.pcap"
    capture.write_pcap(f, [capture.Datagram(1, 0, 4, 17, "10.0.0.1", "10.0.0.2", 53, 53,
                                            b"\x12\x34\x01\x00not sip")])
    rc, objs, err = _decode_main([f], capsysbinary)
    assert rc == 1 and objs == []
    assert "no HEP message found (nor raw SIP to wrap)" in err
    assert "0 decoded" not in err


def test_errors_alone_give_no_zero_summary(tmp_path, capsysbinary):
    rc, objs, err = _decode_main([tmp_path / "missing.pcap"], capsysbinary)
    assert rc == 1 and objs == []
    assert "cannot read" in err and "missing.pcap" in err
    assert "0 decoded, 0 invalid" not in err
