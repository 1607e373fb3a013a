"""Rows/s into PostgreSQL through the `postgres` destination (issue 13).

    python3 bench/postgres_bench.py [--rows 200000] [--batch-rows 5000] [--rounds 3]

Starts a throwaway PostgreSQL server on 127.0.0.1 (tests/pghelper.py; fsync and synchronous
commit left on, the server's defaults), then measures, each on the corpus' messages repeated to
`--rows` rows with fresh timestamps spread over one hour:
- `convert`: hepfast.egress.homer7.row_of alone (HEP decode, SIP fields, JSON, binary tuple);
- `copy`: the egress's COPY transactions alone, rows already converted (the database's side);
- `egress`: PostgresEgress end to end, as the egress process runs it: rings read in batches of
  1024, send_batch converting and queueing, batches committed; timed until the last commit.
Rates are rows per wall-clock second (median of the rounds); `cpu_s` is this process's CPU time.
With `--worker-pps R` (default 20000; 0 skips it) it also runs `hepfast run` (1 worker) twice on
the corpus replayed at R packets/s for `--worker-seconds`: forwarding to a UDP sink only, then to
the sink and a postgres destination at once, and reports the worker's CPU ns per packet
(/proc schedstat of the worker process, bench/driver.py's cpu_by_role) in each run and their
ratio; the storage work is the egress process's (its ns/packet is reported too). On 2+ cores
the worker is pinned alone to core 0 and everything else (this script, the sink, replay, the
supervisor, the egress process, PostgreSQL) to core 1, so that the storage's CPU does not
compete with the worker for its core.
Prints a table and a JSON line (also written to bench/results/postgres-<time>.json).
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hepfast.egress import homer7 as H  # noqa: E402
from hepfast.egress._ring import Ring, format_ring  # noqa: E402
from hepfast.egress.postgres import PostgresEgress, _Batch  # noqa: E402
from hepfast.wire import codec  # noqa: E402
from tests.conftest import corpus_names, load_corpus  # noqa: E402
from tests.pghelper import PgServer, missing_reason  # noqa: E402


def workload(n: int) -> list[bytes]:
    base = [p for name in corpus_names() for p, _ in load_corpus(name)]
    if not base:
        raise SystemExit("corpus not found (../shared/corpus)")
    t0 = int(time.time()) - 1800
    return [codec.rewrite(base[i % len(base)], set={"timestamp": t0 + (i * 3600) // n})
            for i in range(n)]


def bench_convert(pkts: list[bytes]) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    for p in pkts:
        H.row_of(p)
    return time.perf_counter() - t0, time.process_time() - c0


def bench_copy(srv: PgServer, pkts: list[bytes], batch_rows: int) -> tuple[float, float]:
    db = srv.create_db()
    rows = [H.row_of(p) for p in pkts]
    eg = PostgresEgress("bench", srv.dsn(db), batch_rows=batch_rows,
                        queue_rows=len(rows) + batch_rows, retention_days=0, threaded=False)
    eg.open()
    batches = []
    for i in range(0, len(rows), batch_rows):
        b = _Batch(0.0)
        for r in rows[i:i + batch_rows]:
            b.tables.setdefault(r.table, []).append(r.data)
            b.parts.add((r.table, H.partition_start(r.ts_us)))
            b.rows += 1
        batches.append(b)
    eg._waiting = len(rows)
    c0, t0 = time.process_time(), time.perf_counter()
    eg._sealed.extend(batches)
    eg._write_sealed()
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert eg.settle()[0] == len(rows), eg.metrics()
    eg.close()
    return dt, cpu


def bench_egress(srv: PgServer, pkts: list[bytes], batch_rows: int) -> tuple[float, float]:
    db = srv.create_db()
    size = 1 << 26
    mm = mmap.mmap(-1, 4096 + size)
    format_ring(mm, size)
    ring = Ring(mm)
    eg = PostgresEgress("bench", srv.dsn(db), batch_rows=batch_rows,
                        queue_rows=max(200_000, 2 * batch_rows), retention_days=0)
    eg.open()
    done = 0
    i = 0
    c0, t0 = time.process_time(), time.perf_counter()
    while done < len(pkts):
        while i < len(pkts) and ring.push(pkts[i]) == 0:
            i += 1
        ring.publish()
        b = ring.read(1024)
        if b.count:
            eg.send_batch(b)
        ring.release(b)
        if i >= len(pkts) and ring.used == 0:
            eg.close()
        f, e, q = eg.settle()
        assert not e and not q, eg.metrics()
        done += f
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    return dt, cpu


def _worker_pids(root: int) -> list[int]:
    sys.path.insert(0, str(ROOT / "bench"))
    from driver import tree_pids

    out = []
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"dataplane.worker" in f.read():
                    out.append(pid)
        except OSError:
            pass
    return out


def worker_cpu(srv: PgServer, pps: int, seconds: float, pinned: bool) -> dict:
    import subprocess
    import tempfile

    sys.path.insert(0, str(ROOT / "bench"))
    from driver import cpu_by_role

    from hepfast.tools.sink import Sink
    from tests.conftest import CORPUS_DIR
    from tests.switchhelp import SwitchProcess

    count = int(pps * seconds)
    out = {}
    for mode in ("udp", "udp+file", "udp+postgres"):
        db = srv.create_db()
        sink = Sink("127.0.0.1:0", keep=False).start()
        tmpd = tempfile.mkdtemp(prefix="hepfast-bench-")
        pg = {"udp": "", "udp+postgres": f"""
            [destinations.pg]
            transport = "postgres"
            dsn = "{srv.dsn(db)}"
            retention_days = 0""", "udp+file": f"""
            [destinations.pg]
            transport = "file"
            path = "{tmpd}/rec"
            """}[mode]
        cfg = f"""
            [switch]
            workers = 1
            [[listeners]]
            name = "agents"
            listen = "127.0.0.1:0"
            [destinations.collector]
            targets = ["127.0.0.1:{sink.port}"]
            {pg}
            [[rules]]
            name = "all"
            forward = ["collector"{', "pg"' if pg else ''}]
            """
        with tempfile.TemporaryDirectory() as tmp:
            sw = SwitchProcess(Path(tmp), cfg, workers=1, extra=["--no-admin"])
            try:
                time.sleep(1.0)
                if pinned:
                    for pid in _worker_pids(sw.proc.pid):
                        os.sched_setaffinity(pid, {0})
                c0 = cpu_by_role(sw.proc.pid)
                subprocess.run([sys.executable, "-m", "hepfast", "replay",
                                str(CORPUS_DIR / "kamailio-hep3-udp.hepraw"), "--to",
                                f"127.0.0.1:{sw.port}", "--rate", str(pps), "--count",
                                str(count), "--quiet"], check=True, timeout=seconds * 5 + 30,
                               cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
                got = sink.wait_quiet(quiet=0.5, timeout=30)
                if mode == "udp+postgres":              # let the egress commit what it holds
                    from tests.pghelper import wait_for

                    def stored(db: str = db, want: int = got) -> bool:
                        with srv.connect(db) as c:
                            return sum(c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                                       for t in ("hep_proto_1_call",
                                                 "hep_proto_100_default")) >= want
                    wait_for(stored, timeout=120, every=0.5)
                c1 = cpu_by_role(sw.proc.pid)
                summary = sw.stop()
            finally:
                sw.kill()
                sink.close()
                import shutil
                shutil.rmtree(tmpd, ignore_errors=True)
        out[mode] = {"sent": count, "delivered": got,
                     "worker_ns_per_pkt": round((c1["worker"] - c0["worker"]) / max(1, got), 1),
                     "egress_ns_per_pkt": round((c1["egress"] - c0["egress"]) / max(1, got), 1),
                     "stored": sum(v for k, v in summary["forwarded"].items()
                                   if k.startswith("pg/") and mode == "udp+postgres")}
    base = out["udp"]["worker_ns_per_pkt"]
    out["worker_ratio"] = round(out["udp+postgres"]["worker_ns_per_pkt"] / base, 3) if base \
        else None
    out["worker_ratio_file"] = round(out["udp+file"]["worker_ns_per_pkt"] / base, 3) if base \
        else None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch-rows", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--worker-pps", type=int, default=20000)
    ap.add_argument("--worker-seconds", type=float, default=5.0)
    ap.add_argument("--skip-rows", action="store_true", help="only the worker CPU comparison")
    a = ap.parse_args()
    reason = missing_reason()
    if reason:
        print(f"skipped: {reason}")
        return 0
    pkts = [] if a.skip_rows else workload(a.rows)
    pinned = (os.cpu_count() or 1) >= 2 and a.worker_pps > 0
    if pinned:
        os.sched_setaffinity(0, {1})            # inherited by the server, replay, the switch
    srv = PgServer({"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"})
    results: dict[str, dict] = {}
    workers: dict = {}
    try:
        stages = () if a.skip_rows else (
            ("convert", lambda: bench_convert(pkts)),
            ("copy", lambda: bench_copy(srv, pkts, a.batch_rows)),
            ("egress", lambda: bench_egress(srv, pkts, a.batch_rows)))
        for name, fn in stages:
            runs = [fn() for _ in range(a.rounds)]
            dt = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            results[name] = {"rows_per_s": round(len(pkts) / dt), "seconds": round(dt, 3),
                             "cpu_s": round(cpu, 3), "us_per_row": round(dt / len(pkts) * 1e6, 2)}
        if a.worker_pps:
            workers = worker_cpu(srv, a.worker_pps, a.worker_seconds, pinned)
    finally:
        srv.stop()
    print(f"{'stage':<8} {'rows/s':>10} {'us/row':>8} {'wall s':>8} {'cpu s':>8}")
    for name, r in results.items():
        print(f"{name:<8} {r['rows_per_s']:>10} {r['us_per_row']:>8} {r['seconds']:>8} "
              f"{r['cpu_s']:>8}")
    for mode in ("udp", "udp+file", "udp+postgres"):
        if mode in workers:
            w = workers[mode]
            print(f"worker {mode:<13} delivered {w['delivered']}/{w['sent']}  worker "
                  f"{w['worker_ns_per_pkt']} ns/pkt  egress {w['egress_ns_per_pkt']} ns/pkt  "
                  f"stored {w['stored']}")
    if workers:
        print(f"worker ns/pkt with postgres / without: {workers['worker_ratio']}; with a file "
              f"destination / without: {workers['worker_ratio_file']}")
    doc = {"bench": "postgres", "rows": a.rows, "batch_rows": a.batch_rows,
           "cpus": os.cpu_count(), **results, "workers": workers}
    line = json.dumps(doc)
    print(line)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"postgres-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
