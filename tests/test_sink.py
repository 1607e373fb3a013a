"""hepfast sink: the in-process Sink and the CLI (real process, loopback, bounded)."""
from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hepfast.wire import chunks

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"
REPO = Path(__file__).resolve().parents[1]


def read_records(path: Path) -> list[bytes]:
    data, out, pos = path.read_bytes(), [], 0
    while pos < len(data):
        (n,) = struct.unpack_from(">I", data, pos)
        out.append(data[pos + 4:pos + 4 + n])
        pos += 4 + n
    return out


def corpus_packets(name: str) -> list[bytes]:
    path = CORPUS / f"{name}.hepraw"
    if not path.exists():
        pytest.skip(f"shared corpus not found at {CORPUS}")
    return read_records(path)


def packet(ptype=1, capture_id=7, ts=None, payload=b"hello"):
    sec, usec = ts if ts else (1_700_000_000, 5)
    return chunks.encode_packet([
        (0, 1, b"\x02"), (0, 2, b"\x11"), (0, 3, bytes([10, 0, 0, 1])), (0, 4, bytes([10, 0, 0, 2])),
        (0, 7, struct.pack(">H", 5060)), (0, 8, struct.pack(">H", 5061)),
        (0, 9, struct.pack(">I", sec)), (0, 10, struct.pack(">I", usec)),
        (0, 11, bytes([ptype])), (0, 12, struct.pack(">I", capture_id)), (0, 15, payload)])


def send_all(port: int, pkts: list[bytes], pause_every: int = 200) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i, p in enumerate(pkts):
            s.sendto(p, ("127.0.0.1", port))
            if i % pause_every == pause_every - 1:
                time.sleep(0.002)        # let a slow receiver drain: loopback drops otherwise
    finally:
        s.close()


def test_in_process_sink_counts_and_keeps_bytes():
    from hepfast.tools.sink import Sink

    pkts = [packet(1, 2001), packet(1, 2001), packet(5, 2002), packet(100, 2001), b"garbage!"]
    with Sink("127.0.0.1:0", latency=True).start(timeout=20) as sink:
        send_all(sink.port, pkts)
        assert sink.wait_for(len(pkts), timeout=10)
        assert sink.packets == pkts
        s = sink.summary(expect=6)
    assert s["received"] == 5
    assert s["invalid"] == 1
    assert s["by_proto_type"] == {"1": 2, "5": 1, "100": 1}
    assert s["by_capture_id"] == {"2001": 3, "2002": 1}
    assert s["lost"] == 1 and s["extra"] == 0
    assert s["latency_us"] is None          # old timestamps are not latency samples


def test_latency_from_fresh_timestamps():
    from hepfast.tools.sink import Sink

    now = time.time() - 0.004               # stamped 4 ms ago
    ts = (int(now), int((now % 1) * 1e6))
    with Sink("127.0.0.1:0", latency=True).start(timeout=20) as sink:
        send_all(sink.port, [packet(ts=ts) for _ in range(10)])
        assert sink.wait_for(10, timeout=10)
        lat = sink.summary()["latency_us"]
    assert lat["samples"] == 10
    assert 3000 <= lat["p50"] <= lat["p99"] <= lat["max"]


def _start_cli(*extra: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "hepfast", "sink", "--listen", "127.0.0.1:0", "--timeout", "30",
         *extra], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stderr.readline()
    assert line.startswith("listening on 127.0.0.1:"), line
    return proc, int(line.rsplit(":", 1)[1])


@pytest.mark.parametrize("mode", ["fast", "raw"])
def test_cli_sink_corpus(tmp_path, mode):
    pkts = corpus_packets("kamailio-hep3-udp")
    raw = tmp_path / "out.hepraw"
    extra = ["--idle", "1", "--expect", str(len(pkts) + 1)]
    if mode == "raw":
        extra += ["--raw", str(raw), "--jsonl", str(tmp_path / "out.jsonl")]
    proc, port = _start_cli(*extra)
    try:
        send_all(port, pkts)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["received"] == len(pkts)
    assert summary["invalid"] == 0
    assert summary["by_proto_type"] == {"1": 1120, "100": 80}
    assert summary["by_capture_id"] == {"2001": 1200}
    assert summary["lost"] == 1
    assert summary["stopped"] == "idle"
    if mode == "raw":
        assert read_records(raw) == pkts
        lines = (tmp_path / "out.jsonl").read_text().splitlines()
        assert len(lines) == len(pkts)
        first = json.loads(lines[0])
        assert first["capture_id"] == 2001 and first["version"] == 3


def test_cli_sink_stops_on_timeout_without_traffic():
    proc = subprocess.run(
        [sys.executable, "-m", "hepfast", "sink", "--listen", "127.0.0.1:0", "--timeout", "0.5"],
        cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    summary = json.loads(proc.stdout)
    assert summary["received"] == 0 and summary["stopped"] == "timeout"


def test_cli_sink_bad_listen():
    proc = subprocess.run([sys.executable, "-m", "hepfast", "sink", "--listen", "nowhere"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "HOST:PORT" in proc.stderr


def test_no_latency_unless_the_traffic_is_stamped():
    """A fresh capture time (a live agent, synthetic calls) is not a send time: without
    latency=True (`--stamped`) there is no latency in the summary at all."""
    from hepfast.tools.sink import Sink

    now = time.time() - 0.004
    ts = (int(now), int((now % 1) * 1e6))
    with Sink("127.0.0.1:0").start(timeout=20) as sink:
        send_all(sink.port, [packet(ts=ts) for _ in range(10)])
        assert sink.wait_for(10, timeout=10)
        s = sink.summary()
    assert s["received"] == 10 and "latency_us" not in s


@pytest.mark.parametrize("stamped", [False, True])
def test_cli_latency_only_with_stamped(stamped):
    extra = ["--idle", "1", "--quiet"] + (["--stamped"] if stamped else [])
    proc, port = _start_cli(*extra)
    try:
        now = time.time() - 0.002
        send_all(port, [packet(ts=(int(now), int((now % 1) * 1e6))) for _ in range(5)])
        out, _err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    line = out.strip().splitlines()[-1]
    assert ", " not in line                     # compact, like decode
    summary = json.loads(line)
    assert summary["received"] == 5
    if stamped:
        assert summary["latency_us"]["samples"] == 5
    else:
        assert "latency_us" not in summary


def test_cli_jsonl_records_are_decode_records(tmp_path):
    """--jsonl writes the objects `hepfast decode` writes for the same bytes (index = arrival)."""
    from hepfast.tools import capture

    pkts = [packet(1, 2001, payload=b"INVITE sip:a@b SIP/2.0\r\nCall-ID: j1\r\n\r\n"),
            packet(100, 2001, payload=b"log"), b"garbage!", packet(5, 2002, payload=b"{}")]
    jl = tmp_path / "out.jsonl"
    proc, port = _start_cli("--idle", "1", "--jsonl", str(jl), "--quiet")
    try:
        send_all(port, pkts)
        proc.communicate(timeout=30)
    finally:
        proc.kill()
    lines = jl.read_text().splitlines()
    assert all(", " not in ln for ln in lines)
    got = [json.loads(ln) for ln in lines]
    assert got[2] == {"index": 2, "invalid": "magic", "length": len(b"garbage!")}
    raw = tmp_path / "same.hepraw"
    capture.write_hepraw(raw, [p for p in pkts if p != b"garbage!"])
    dec = subprocess.run([sys.executable, "-m", "hepfast", "decode", str(raw)], cwd=REPO,
                         capture_output=True, text=True, timeout=30)
    assert dec.returncode == 0, dec.stderr
    decoded = [json.loads(ln) for ln in dec.stdout.splitlines()]
    for d in decoded:
        d.pop("index")                                  # decode numbers the file's records
    assert [{k: v for k, v in g.items() if k != "index"} for g in got if "invalid" not in g] \
        == decoded
    assert [g["index"] for g in got] == [0, 1, 2, 3]
    assert got[0]["sip_call_id"] == "j1" and got[0]["proto_type_name"] == "sip"
