#!/usr/bin/env python3
"""TCP and TLS ingest vs UDP ingest through the same `hepfast run`, in one run.

One worker pinned to core 0 serves a UDP, a TCP and a TLS listener (certificates made with the
`openssl` command in a temporary directory; no TLS row without it) and forwards everything to a
sink; `hepfast replay` (core 1) offers the corpus at a fixed rate, first over UDP (one socket),
then over TCP and TLS (--processes N connections each). For each it prints delivered packets,
the worker's CPU ns per packet (schedstat) and packets per CPU-second; the TCP/UDP ratio of
packets per CPU-second is the figure the TCP issue asks about (at least 0.60), TLS/UDP the
cost of decryption on top. A JSON line ends the output.

usage: python3 bench/tcp_ingest.py [--rate 100000] [--seconds 3] [--connections 16] [--no-tls]
"""
from __future__ import annotations

import argparse
import json
import shutil
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
    ap.add_argument("--no-tls", action="store_true", help="no TLS row")
    args = ap.parse_args()
    udp_port, tcp_port, tls_port, target = free_port(), free_port(), free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        tls = None if args.no_tls or not shutil.which("openssl") else make_cert(Path(tmp))
        cfg = Path(tmp) / "tcp.toml"
        tls_listener = "" if tls is None else f"""
[[listeners]]
name = "tls"
listen = "127.0.0.1:{tls_port}"
transport = "tls"
tls_cert = "{tls["crt"]}"
tls_key = "{tls["key"]}"
"""
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
{tls_listener}
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
            runs = [("udp", udp_port, 1), ("tcp", tcp_port, args.connections)]
            if tls is not None:
                runs.append(("tls", tls_port, args.connections))
            for transport, port, procs in runs:
                extra = [] if transport != "tls" else ["--tls-ca", tls["crt"],
                                                       "--tls-server-name", "localhost"]
                sink = start_sink(target)
                c0 = cpu_by_role(sw.pid)["worker"]
                n = int(args.rate * args.seconds)
                rep = subprocess.run(
                    ["taskset", "-c", "1", PY, "-m", "hepfast", "replay", args.corpus, "--to",
                     f"127.0.0.1:{port}", "--rate", str(args.rate), "--count", str(n),
                     "--transport", transport, "--processes", str(procs), "--quiet", *extra],
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
    def over_udp(t: str) -> float | None:
        if rows.get("udp", {}).get("pkts_per_cpu_s") and rows.get(t, {}).get("pkts_per_cpu_s"):
            return round(rows[t]["pkts_per_cpu_s"] / rows["udp"]["pkts_per_cpu_s"], 3)
        return None

    print(f"{'ingest':<6} {'offered':>9} {'delivered':>10} {'ns/pkt':>8} {'pkts/CPU-s':>11}")
    for t, r in rows.items():
        print(f"{t:<6} {r['offered']:>9} {r['delivered']:>10} {r['worker_ns_per_pkt'] or 0:>8.0f} "
              f"{r['pkts_per_cpu_s'] or 0:>11}")
    print(f"tcp/udp packets per CPU-second: {over_udp('tcp')}")
    if "tls" in rows:
        print(f"tls/udp packets per CPU-second: {over_udp('tls')}")
    print(json.dumps({"rows": rows, "tcp_over_udp": over_udp("tcp"),
                      "tls_over_udp": over_udp("tls")}))
    return 0


def make_cert(d: Path) -> dict[str, str]:
    """A self-signed certificate for localhost (replay verifies it with itself as the CA)."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(d / "tls.key"),
                    "-out", str(d / "tls.crt")], check=True, capture_output=True)
    return {"crt": str(d / "tls.crt"), "key": str(d / "tls.key")}


if __name__ == "__main__":
    sys.exit(main())
