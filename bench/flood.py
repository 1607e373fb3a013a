#!/usr/bin/env python3
"""Flood benchmark: hostile datagrams at the machine's rate, mixed with valid traffic, through
`hepfast run` with two workers (issue 15).

Phases, on loopback only, each bounded:
  baseline  valid traffic alone (`hepfast replay --rate VALID_RATE`) for --baseline-seconds
  flood     the same valid traffic, plus one process sending invalid datagrams as fast as the
            kernel takes them (sendmmsg, no pacing) for --seconds (default 60)
The invalid set (built from a fixed seed, every datagram checked to be refused by the codec):
random bytes, zero-length and tiny datagrams, HEPv3 whose total length lies (longer than the
datagram, below 6), zero-length, short and overlong chunks, fixed-size chunks of the wrong size,
cut packets, 10,000-chunk packets, 64 KiB datagrams, HEPv2 with bad address families or cut
headers, foreign magics and HEP versions. Each phase's valid traffic goes to a fresh
`hepfast sink`, so delivered counts are per phase.

Prints a table and one JSON line (also written under bench/results/): valid sent/delivered per
phase, invalid sent (expected reason) against what the switch counted by reason, kernel drops on
the listening socket, worker RSS before and after the flood, the forwarding rate before and
during the flood and the rate at which the switch took datagrams in.

usage: python3 bench/flood.py [--seconds 60] [--baseline-seconds 5] [--valid-rate 5000]
                              [--workers 2] [--corpus FILE.hepraw]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
CORPUS = REPO.parent / "shared" / "corpus" / "kamailio-hep3-udp.hepraw"
PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")


def free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------- the hostile set

def hostile_set(seed: int = 15) -> list[tuple[str, bytes]]:
    """(kind, datagram) pairs, each refused by the codec. Deterministic for a seed."""
    from hepfast.wire.chunks import encode_chunk, encode_packet
    from hepfast.wire.codec import reason

    rnd = random.Random(seed)
    sip = (b"INVITE sip:bob@example.com SIP/2.0\r\nCall-ID: flood@h\r\n"
           b"From: <sip:a@a>;tag=1\r\nTo: <sip:b@b>\r\n\r\n")
    base = [(0, 1, b"\x02"), (0, 2, b"\x11"), (0, 3, b"\x0a\x00\x00\x01"),
            (0, 4, b"\x0a\x00\x00\x02"), (0, 7, b"\x13\xc4"), (0, 8, b"\x13\xc4"),
            (0, 0x0B, b"\x01"), (0, 0x0C, struct.pack(">I", 2001))]
    good = encode_packet(base + [(0, 0x0F, sip)])

    def with_total(p: bytes, total: int) -> bytes:
        return p[:4] + struct.pack(">H", total & 0xFFFF) + p[6:]

    def hep3(body: bytes) -> bytes:
        return b"HEP3" + struct.pack(">H", len(body) + 6) + body

    out: list[tuple[str, bytes]] = []
    for _ in range(200):
        out.append(("random", rnd.randbytes(rnd.randint(1, 1500))))
    for n in (0, 1, 2, 3):
        out += [("tiny", rnd.randbytes(n))] * 5
    for _ in range(60):
        k = rnd.randrange(3)
        if k == 0:
            out.append(("hep3_lying_total", with_total(good, len(good) + rnd.randint(1, 5000))))
        elif k == 1:
            out.append(("hep3_lying_total", with_total(good, rnd.randint(0, 5))))
        else:
            out.append(("hep3_lying_total", with_total(good, rnd.randint(0, 0xFFFF))))
    for _ in range(60):
        pre = b"".join(encode_chunk(*c) for c in base[:rnd.randint(0, len(base))])
        k = rnd.randrange(4)
        if k == 0:      # zero-length chunk header
            bad = struct.pack(">HHH", 0, rnd.randrange(64), 0)
        elif k == 1:    # chunk length below its own header
            bad = struct.pack(">HHH", 0, 0x0F, rnd.randint(1, 5)) + b"xx"
        elif k == 2:    # overlong: past the end of the packet
            bad = struct.pack(">HHH", 0, 0x0F, rnd.randint(200, 0xFFFF)) + sip[:100]
        else:           # a fixed-size chunk of the wrong size (a 3-byte port)
            bad = struct.pack(">HHH", 0, 7, 9) + b"\x13\xc4\x00"
        out.append(("hep3_bad_chunk", hep3(pre + bad)))
    for _ in range(30):
        cut = rnd.randint(7, len(good) - 1)
        p = good[:cut]
        out.append(("hep3_cut", with_total(p, len(p))))
    many = encode_packet([(9, 0x200, b"")] * 9999 + [(0, 0x0F, sip)])
    out += [("chunks_10000", many)] * 4
    for _ in range(4):
        out.append(("dgram_64k", b"HEP3\xff\xff" + rnd.randbytes(65507 - 6)))
    for _ in range(60):
        fam = rnd.choice([0, 1, 3, 7, 11, 255])
        v = rnd.choice([1, 2])
        hdr = bytes([v, 28, fam, 17]) + rnd.randbytes(40) + sip
        out.append(("hepv2_bad_family", hdr))
    for _ in range(20):
        v = rnd.choice([1, 2])
        out.append(("hepv2_cut", bytes([v, 28, rnd.choice([2, 10]), 17]) +
                    rnd.randbytes(rnd.randint(0, 12))))
    for magic in (b"HEP2", b"HEP1", b"HEP4", b"EEP1", b"EEP3", b"XXXX", b"\x00\x00\x00\x00"):
        out += [("magic_version", magic + good[4:])] * 4
    out = [(k, d) for k, d in out if reason(d) != 0]
    rnd.shuffle(out)
    return out


def flood_child(port: int, seconds: float, out_path: str) -> int:
    """Send the hostile set in a loop for `seconds`, as fast as possible; write a JSON report."""
    import numpy as np

    from hepfast.tools._sender import Sender
    from hepfast.wire.codec import reason
    from hepfast.wire.reasons import INVALID_NAMES

    pkts = hostile_set()
    blob = np.frombuffer(b"".join(d for _, d in pkts), dtype=np.uint8).copy()
    offs = np.zeros(len(pkts) + 1, dtype=np.int64)
    offs[1:] = np.cumsum([len(d) for _, d in pkts])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    s.connect(("127.0.0.1", port))
    snd = Sender(s.fileno(), rate=0.0, batch=64)
    snd.load(blob, offs)
    g, end = 0, time.monotonic() + seconds
    t0 = time.monotonic()
    while time.monotonic() < end:
        try:
            g = snd.send(g, g + 10**12, max_seconds=min(0.25, max(end - time.monotonic(), 0.001)))
        except OSError:
            g += 1                      # ECONNREFUSED from an earlier datagram: keep going
    el = time.monotonic() - t0
    n = len(pkts)
    per_kind: Counter = Counter()
    per_reason: Counter = Counter()
    sent_bytes = 0
    for i, (kind, d) in enumerate(pkts):
        c = g // n + (1 if i < g % n else 0)
        per_kind[kind] += c
        per_reason[INVALID_NAMES[reason(d)]] += c
        sent_bytes += c * len(d)
    Path(out_path).write_text(json.dumps({"sent": g, "seconds": el, "bytes": sent_bytes,
                                          "set_size": n, "by_kind": dict(per_kind),
                                          "by_reason": dict(per_reason)}))
    return 0


# ---------------------------------------------------------------- processes

def tree_children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def cmdline(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()[:80]
    except OSError:
        return "?"


class Switch:
    def __init__(self, cfg: Path, workers: int, tmp: Path):
        self.err = open(tmp / "switch.err", "w+")
        self.proc = subprocess.Popen([PY, "-m", "hepfast", "run", "-c", str(cfg), "--quiet",
                                      "--workers", str(workers), "--no-admin"],
                                     cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=self.err,
                                     text=True)
        end = time.monotonic() + 30
        while time.monotonic() < end:
            self.err.seek(0)
            if "hepfast running" in self.err.read():
                break
            if self.proc.poll() is not None:
                self.err.seek(0)
                raise RuntimeError(f"hepfast run exited:\n{self.err.read()[-2000:]}")
            time.sleep(0.05)
        else:
            self.proc.kill()
            raise RuntimeError("hepfast run did not start in 30 s")

    def workers(self) -> list[int]:
        return [p for p in tree_children(self.proc.pid) if "hepfast" in cmdline(p) or
                "multiprocessing" in cmdline(p) or "python" in cmdline(p)]

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        self.err.close()
        return json.loads(out.strip().splitlines()[-1])


class Sink:
    def __init__(self, port: int):
        self.proc = subprocess.Popen([PY, "-m", "hepfast", "sink", "--listen",
                                      f"127.0.0.1:{port}", "--quiet", "--timeout", "3600"],
                                     cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.proc.stderr.readline()                       # "listening on ..."

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        return json.loads(out.strip().splitlines()[-1])


def replay(source: str, port: int, rate: float, seconds: float) -> subprocess.Popen:
    return subprocess.Popen([PY, "-m", "hepfast", "replay", source, "--to", f"127.0.0.1:{port}",
                             "--rate", str(rate), "--duration", str(seconds), "--quiet"],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish(p: subprocess.Popen, timeout: float) -> dict:
    out, err = p.communicate(timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{p.args[:4]} failed: {err.strip()[-1000:]}")
    return json.loads(out.strip().splitlines()[-1])


def cpu_load() -> float:
    return os.getloadavg()[0]


# ---------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="flood phase (default 60)")
    ap.add_argument("--baseline-seconds", type=float, default=5.0)
    ap.add_argument("--valid-rate", type=float, default=5000.0, help="valid packets/s")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--corpus", type=Path, default=CORPUS)
    ap.add_argument("--flood-child", nargs=3, metavar=("PORT", "SECONDS", "OUT"),
                    help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.flood_child:
        return flood_child(int(a.flood_child[0]), float(a.flood_child[1]), a.flood_child[2])
    source = str(a.corpus) if a.corpus.exists() else "synthetic:calls=400,cps=100,seed=15"
    if source.startswith("synthetic"):
        print(f"# no corpus at {a.corpus}: valid traffic is {source}", file=sys.stderr)

    from hepfast.wire.reasons import INVALID_NAMES

    listen, target = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="hepfast-flood-") as tmpd:
        tmp = Path(tmpd)
        cfg = tmp / "flood.toml"
        cfg.write_text("\n".join([
            "[switch]", f"workers = {a.workers}", 'default = "drop"', "",
            "[[listeners]]", 'name = "agents"', f'listen = "127.0.0.1:{listen}"', "",
            "[destinations.sink]", f'targets = ["127.0.0.1:{target}"]', "",
            "[[rules]]", 'name = "all"', 'forward = ["sink"]', ""]))
        sw = Switch(cfg, a.workers, tmp)
        rows: dict[str, dict] = {}
        try:
            time.sleep(0.5)
            # --- baseline: valid only
            sink = Sink(target)
            rp = replay(source, listen, a.valid_rate, a.baseline_seconds)
            base = finish(rp, a.baseline_seconds * 3 + 60)
            time.sleep(0.5)
            got = sink.stop()
            rows["baseline"] = {"valid_sent": base["sent"], "valid_delivered": got["received"],
                                "seconds": base["seconds"],
                                "forwarded_pps": round(got["received"] / base["seconds"], 1)}
            workers = sw.workers()
            rss_before = {p: rss_kib(p) for p in workers}
            load0 = cpu_load()
            # --- flood: valid + hostile at full speed
            sink = Sink(target)
            rep_path = tmp / "flood.json"
            fl = subprocess.Popen([PY, str(Path(__file__).resolve()), "--flood-child",
                                   str(listen), str(a.seconds), str(rep_path)],
                                  cwd=REPO, env=ENV)
            rp = replay(source, listen, a.valid_rate, a.seconds)
            peak = dict(rss_before)
            t_end = time.monotonic() + a.seconds + 120
            while fl.poll() is None and time.monotonic() < t_end:
                time.sleep(1.0)
                for p in workers:
                    r = rss_kib(p)
                    if r is not None and (peak.get(p) or 0) < r:
                        peak[p] = r
            if fl.poll() is None:
                fl.kill()
            fl.wait(30)
            valid = finish(rp, 120)
            time.sleep(1.0)
            got = sink.stop()
            flood = json.loads(rep_path.read_text())
            rss_after = {p: rss_kib(p) for p in workers}
            load1 = cpu_load()
            rows["flood"] = {"valid_sent": valid["sent"], "valid_delivered": got["received"],
                             "seconds": valid["seconds"],
                             "forwarded_pps": round(got["received"] / valid["seconds"], 1)}
        finally:
            summary = sw.stop()
        restarts = summary.get("restarts", 0)

    inv_sent = flood["by_reason"]
    inv_counted = summary.get("invalid", {})
    valid_sent = sum(r["valid_sent"] for r in rows.values())
    valid_delivered = sum(r["valid_delivered"] for r in rows.values())
    flood_pps = flood["sent"] / flood["seconds"]
    took_pps = (summary["datagrams"] - rows["baseline"]["valid_sent"]) / flood["seconds"]

    print(f"\nflood: {flood['sent']:,} invalid datagrams in {flood['seconds']:.1f} s "
          f"({flood_pps:,.0f}/s, {flood['bytes'] / flood['seconds'] / 1e6:,.0f} MB/s) from a set "
          f"of {flood['set_size']}, with valid traffic at {a.valid_rate:,.0f}/s, "
          f"{a.workers} workers")
    print(f"\n{'phase':<10} {'valid sent':>11} {'delivered':>11} {'lost':>7} {'fwd/s':>9}")
    for name, r in rows.items():
        print(f"{name:<10} {r['valid_sent']:>11,} {r['valid_delivered']:>11,} "
              f"{r['valid_sent'] - r['valid_delivered']:>7,} {r['forwarded_pps']:>9,.0f}")
    print(f"\n{'invalid reason':<15} {'sent':>12} {'counted':>12}")
    for reason in INVALID_NAMES[1:]:
        s, c = inv_sent.get(reason, 0), inv_counted.get(reason, 0)
        if s or c:
            print(f"{reason:<15} {s:>12,} {c:>12,}")
    print(f"{'total':<15} {sum(inv_sent.values()):>12,} {sum(inv_counted.values()):>12,}")
    print(f"\nkernel drops on the listening socket (SO_RXQ_OVFL): {summary.get('overflows'):,}; "
          f"switch took in {took_pps:,.0f} datagrams/s during the flood; "
          f"worker restarts: {restarts}")
    print(f"\n{'worker pid':<11} {'RSS before':>11} {'peak':>9} {'after':>9}  (KiB)")
    for p in rss_before:
        print(f"{p:<11} {rss_before[p] or 0:>11,} {peak.get(p) or 0:>9,} "
              f"{rss_after.get(p) or 0:>9,}")
    print(f"(load average {load0:.2f} before the flood, {load1:.2f} after)")

    result = {
        "bench": "flood", "seconds": a.seconds, "workers": a.workers,
        "valid_rate": a.valid_rate, "valid_source": Path(source).name,
        "phases": rows, "valid_sent": valid_sent, "valid_delivered": valid_delivered,
        "valid_lost": valid_sent - valid_delivered,
        "invalid_sent": flood["sent"], "invalid_pps": round(flood_pps),
        "invalid_mb_per_s": round(flood["bytes"] / flood["seconds"] / 1e6, 1),
        "invalid_by_kind": flood["by_kind"], "invalid_sent_by_reason": inv_sent,
        "invalid_counted_by_reason": inv_counted,
        "kernel_drops": summary.get("overflows"), "switch_datagrams_per_s": round(took_pps),
        "worker_rss_kib": {"before": list(rss_before.values()), "peak": list(peak.values()),
                           "after": list(rss_after.values())},
        "restarts": restarts, "loadavg": [round(load0, 2), round(load1, 2)],
    }
    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    line = json.dumps(result, separators=(",", ":"))
    (out_dir / f"flood-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
