#!/usr/bin/env python3
"""What idle agents cost: the resident memory of one worker holding N idle TCP connections, then
N idle TLS connections (handshake done, no data), against the same worker with none.

One `hepfast run` (one worker) serves a tcp and a tls listener (a certificate made with the
`openssl` command in a temporary directory; no TLS row without it). This process opens the
connections (N file descriptors; the soft limit is raised to the hard one), waits until the
worker has accepted them all (its connection gauge, read from the admin API), and reads the
worker's VmRSS from /proc. The kernel's socket buffers are not in it (idle sockets hold none).
The issue's figure: 10,000 idle connections under 100 MB in total.

usage: python3 bench/idle_connections.py [--connections 10000] [--no-tls]
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from driver import PY, REPO, tree_pids  # noqa: E402


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def worker_pid(sup: int) -> int:
    for p in tree_pids(sup):
        try:
            if b"dataplane.worker" in open(f"/proc/{p}/cmdline", "rb").read():
                return p
        except OSError:
            continue
    raise RuntimeError("no worker process")


def gauge(url: str, listener: str) -> float:
    with urllib.request.urlopen(url, timeout=10) as r:
        for ln in r.read().decode().splitlines():
            if ln.startswith("hepfast_connections{") and f'listener="{listener}"' in ln:
                return float(ln.rsplit(" ", 1)[1])
    return 0.0


def wait_open(url: str, listener: str, n: int, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while gauge(url, listener) < n:
        if time.monotonic() > end:
            raise RuntimeError(f"{listener}: only {gauge(url, listener):.0f} of {n} accepted")
        time.sleep(0.2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--no-tls", action="store_true")
    args = ap.parse_args()
    n = args.connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < n + 100:
        raise SystemExit(f"needs {n + 100} open files, the hard limit is {hard}")
    tcp_port, tls_port, admin = free_port(), free_port(), free_port()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        tls = not args.no_tls and shutil.which("openssl") is not None
        if tls:
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                            "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj",
                            "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                            "-keyout", str(d / "k.pem"), "-out", str(d / "c.pem")],
                           check=True, capture_output=True)
        cfg = d / "idle.toml"
        cfg.write_text(f"""
[switch]
workers = 1
[admin]
listen = "127.0.0.1:{admin}"
[[listeners]]
name = "tcp"
listen = "127.0.0.1:{tcp_port}"
transport = "tcp"
max_connections = {n + 10}
idle_timeout = 3600
""" + (f"""
[[listeners]]
name = "tls"
listen = "127.0.0.1:{tls_port}"
transport = "tls"
tls_cert = "{d / 'c.pem'}"
tls_key = "{d / 'k.pem'}"
max_connections = {n + 10}
idle_timeout = 3600
message_timeout = 60
""" if tls else ""))
        sw = subprocess.Popen([PY, "-m", "hepfast", "run", "-c", str(cfg), "--quiet"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{admin}/metrics"
        try:
            end = time.monotonic() + 30
            while True:
                try:
                    gauge(url, "tcp")
                    break
                except OSError:
                    if time.monotonic() > end or sw.poll() is not None:
                        raise RuntimeError(sw.stderr.read() if sw.poll() is not None else
                                           "no admin API") from None
                    time.sleep(0.2)
            wpid = worker_pid(sw.pid)
            base = rss_kib(wpid)
            rows["none"] = {"connections": 0, "worker_rss_kib": base}
            kinds = [("tcp", tcp_port)] + ([("tls", tls_port)] if tls else [])
            for kind, port in kinds:
                ctx = None
                if kind == "tls":
                    ctx = ssl.create_default_context(cafile=str(d / "c.pem"))
                conns = []
                t0 = time.monotonic()
                for _ in range(n):
                    s = socket.create_connection(("127.0.0.1", port), timeout=30)
                    if ctx is not None:
                        s = ctx.wrap_socket(s, server_hostname="localhost")
                    conns.append(s)
                wait_open(url, kind, n)
                took = time.monotonic() - t0
                time.sleep(1.0)
                rss = rss_kib(wpid)
                rows[kind] = {"connections": n, "worker_rss_kib": rss,
                              "per_connection_bytes": round((rss - base) * 1024 / n),
                              "total_mb": round((rss - base) / 1024, 1),
                              "open_seconds": round(took, 1)}
                print(f"# {kind}: {rows[kind]}", file=sys.stderr)
                for s in conns:
                    s.close()
                end = time.monotonic() + 60
                while gauge(url, kind) > 0 and time.monotonic() < end:
                    time.sleep(0.2)
                base = rss_kib(wpid)          # what the next kind adds, from here
        finally:
            sw.terminate()
            sw.communicate(timeout=60)
    print(f"{'idle':<5} {'connections':>11} {'worker RSS KiB':>15} {'B/conn':>7} {'MB':>6}")
    for k, r in rows.items():
        print(f"{k:<5} {r['connections']:>11} {r['worker_rss_kib']:>15} "
              f"{r.get('per_connection_bytes', 0):>7} {r.get('total_mb', 0):>6}")
    print(json.dumps({"bench": "idle_connections", "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
