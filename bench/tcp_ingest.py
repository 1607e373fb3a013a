#!/usr/bin/env python3
"""TCP ingest vs UDP ingest through the same `hepfast run`, in one run.

One worker pinned to core 0 serves a UDP and a TCP listener and forwards everything to a sink;
`hepfast replay` (core 1) offers the corpus at a fixed rate, first over UDP (one socket), then
over TCP (--processes N connections). For each it prints delivered packets, the worker's CPU
ns per packet (schedstat) and packets per CPU-second; the TCP/UDP ratio of packets per
CPU-second is the figure the TCP issue asks about (at least 0.60). A JSON line ends the output.

usage: python3 bench/tcp_ingest.py [--rate 100000] [--seconds 3] [--connections 16]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from driver import CORPUS, PY, REPO, cpu_by_role, free_port, start_sink, stop_sink  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=100000.0, help="offered packets/s")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--connections", type=int, default=16, help="TCP connections (processes)")
    ap.add_argument("--corpus", default=str(CORPUS))
    args = ap.parse_args()
    udp_port, tcp_port, target = free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "tcp.toml"
        cfg.write_text(f"""
[switch]
workers = 1
[[listeners]]
name = "udp"
listen = "127.0.0.1:{udp_port}"
[[listeners]]
name = "tcp"
listen = "127.0.0.1:{tcp_port}"
transport = "tcp"
[destinations.sink]
targets = ["127.0.0.1:{target}"]
[[rules]]
name = "all"
forward = ["sink"]
""")
        sw = subprocess.Popen(["taskset", "-c", "0", PY, "-m", "hepfast", "run", "-c", str(cfg),
                               "--quiet", "--no-admin"], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)
        rows = {}
        try:
            for transport, port, procs in (("udp", udp_port, 1),
                                           ("tcp", tcp_port, args.connections)):
                sink = start_sink(target)
                c0 = cpu_by_role(sw.pid)["worker"]
                n = int(args.rate * args.seconds)
                rep = subprocess.run(
                    ["taskset", "-c", "1", PY, "-m", "hepfast", "replay", args.corpus, "--to",
                     f"127.0.0.1:{port}", "--rate", str(args.rate), "--count", str(n),
                     "--transport", transport, "--processes", str(procs), "--quiet"],
                    cwd=REPO, capture_output=True, text=True, timeout=args.seconds * 5 + 60)
                if rep.returncode != 0:
                    raise RuntimeError(f"replay {transport}: {rep.stderr.strip()[-500:]}")
                time.sleep(0.5)
                c1 = cpu_by_role(sw.pid)["worker"]
                got = stop_sink(sink)["received"]
                ns = (c1 - c0) / got if got else None
                rows[transport] = {"offered": n, "delivered": got,
                                   "worker_ns_per_pkt": round(ns, 1) if ns else None,
                                   "pkts_per_cpu_s": round(1e9 / ns) if ns else None}
                print(f"# {transport}: {rows[transport]}", file=sys.stderr)
        finally:
            sw.terminate()
            sw.communicate(timeout=30)
    ratio = None
    if rows.get("udp", {}).get("pkts_per_cpu_s") and rows.get("tcp", {}).get("pkts_per_cpu_s"):
        ratio = round(rows["tcp"]["pkts_per_cpu_s"] / rows["udp"]["pkts_per_cpu_s"], 3)
    print(f"{'ingest':<6} {'offered':>9} {'delivered':>10} {'ns/pkt':>8} {'pkts/CPU-s':>11}")
    for t, r in rows.items():
        print(f"{t:<6} {r['offered']:>9} {r['delivered']:>10} {r['worker_ns_per_pkt'] or 0:>8.0f} "
              f"{r['pkts_per_cpu_s'] or 0:>11}")
    print(f"tcp/udp packets per CPU-second: {ratio}")
    print(json.dumps({"rows": rows, "tcp_over_udp": ratio}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
