"""Rows/s into PostgreSQL through the `postgres` destination (issue 13).

    python3 bench/postgres_bench.py [--rows 200000] [--batch-rows 5000] [--writers 2]
        [--rounds 3] [--server-defaults] [--worker-pps 20000]

Starts a throwaway PostgreSQL server on 127.0.0.1 (tests/pghelper.py) with fsync, full page
writes and synchronous commit on, plus the settings docs/postgres.md recommends for a capture
database (RECOMMENDED below; `--server-defaults` leaves PostgreSQL's defaults), and measures,
each on the corpus' messages repeated to `--rows` rows with fresh timestamps spread over one
hour, in the default HOMER 7 schema (every index heplify-server creates):
- `convert-py`: hepfast.egress.homer7.row_of alone (the reference converter);
- `convert-c`: hepfast.egress._pgrow.RowEncoder over ring batches of 1024 records (what the
  egress runs);
- `copy-wN`: the egress's COPY transactions alone with N writer connections, rows already
  converted (the database's side), for N = 1 and `--writers`;
- `egress`: PostgresEgress end to end with `--writers` writers, as the egress process runs it:
  rings read in batches of 1024, send_batch converting and queueing, batches committed; timed
  until the last commit;
- diagnostics (`--no-diagnostic` skips them): `egress-base`, the egress as it was before the
  C encoder and several writers (row_of in Python, one writer: the baseline of this run);
  `copy-w1-unsorted`, copy-w1 with the JSON keys in heplify-server's order (the server sorts
  each object); `copy-noidx`, copy-wN with the tables created without their indexes (not the
  schema hepfast creates), to show what the indexes cost.
Rates are rows per wall-clock second (median of the rounds); `cpu_s` is this process's CPU time;
`srv_us` is the CPU of every PostgreSQL process (backends, WAL writer, checkpointer) per row,
so that cores / (srv_us + client us) bounds the rate on this machine.
With `--worker-pps R` (default 20000; 0 skips it) it also runs `hepfast run` (1 worker) on the
corpus replayed at R packets/s for `--worker-seconds`: forwarding to a UDP sink only, with a
file destination added, and with a postgres destination added, and reports the worker's CPU ns
per packet (/proc schedstat of the worker process, bench/driver.py's cpu_by_role) in each run
and their ratios, plus a control: UDP alone while a process spins on the other core about as
much as the storage does (`udp+busy`), to tell the neighbour core's load from the storage; the storage work is the egress process's (its ns/packet is reported too). On
2+ cores the worker is then pinned alone to core 0 and everything else (this script, the sink,
replay, the supervisor, the egress process, PostgreSQL) to core 1, so that the storage's CPU
does not compete with the worker for its core (the row stages before run unpinned).
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
from hepfast.egress._pgrow import RowEncoder  # noqa: E402
from hepfast.egress._ring import Ring, format_ring  # noqa: E402
from hepfast.egress.postgres import PostgresEgress, _Batch  # noqa: E402
from hepfast.wire import codec  # noqa: E402
from tests.conftest import corpus_names, load_corpus  # noqa: E402
from tests.pghelper import PgServer, missing_reason  # noqa: E402

# docs/postgres.md "Server settings": what an operator of a capture database sets. Durability
# is untouched (fsync, full_page_writes, synchronous_commit stay on).
RECOMMENDED = {"shared_buffers": "1GB", "wal_buffers": "64MB", "wal_compression": "lz4",
               "max_wal_size": "8GB", "min_wal_size": "1GB", "checkpoint_timeout": "15min",
               "checkpoint_completion_target": "0.9"}
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


def workload(n: int) -> list[bytes]:
    base = [p for name in corpus_names() for p, _ in load_corpus(name)]
    if not base:
        raise SystemExit("corpus not found (../shared/corpus)")
    t0 = int(time.time()) - 1800
    return [codec.rewrite(base[i % len(base)], set={"timestamp": t0 + (i * 3600) // n})
            for i in range(n)]


def _ring(pkts: list[bytes]) -> Ring:
    size = 1 << 28
    while size < 2 * sum(len(p) + 16 for p in pkts):
        size <<= 1
    mm = mmap.mmap(-1, 4096 + size)
    format_ring(mm, size)
    return Ring(mm)


def server_cpu(srv: PgServer) -> float:
    """CPU seconds of the postmaster and all its children so far."""
    tck = os.sysconf("SC_CLK_TCK")
    with open(os.path.join(srv.data, "postmaster.pid")) as f:
        root = int(f.readline())
    total = 0.0
    for pid in [root] + _children(root):
        try:
            with open(f"/proc/{pid}/stat") as f:
                st = f.read().rsplit(")", 1)[1].split()
            total += (int(st[11]) + int(st[12]) + int(st[13]) + int(st[14])) / tck
        except (OSError, IndexError, ValueError):
            pass
    return total


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def pin_server(srv: PgServer, cores: set[int]) -> None:
    with open(os.path.join(srv.data, "postmaster.pid")) as f:
        root = int(f.readline())
    for pid in [root] + _children(root):
        try:
            os.sched_setaffinity(pid, cores)
        except OSError:
            pass


def bench_convert_py(pkts: list[bytes]) -> tuple[float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    for p in pkts:
        H.row_of(p)
    return time.perf_counter() - t0, time.process_time() - c0


def bench_convert_c(pkts: list[bytes]) -> tuple[float, float]:
    ring = _ring(pkts)
    for p in pkts:
        ring.push(p)
    ring.publish()
    enc = RowEncoder(H.PARTITION_SECONDS)
    now = time.time()
    n = 0
    c0, t0 = time.process_time(), time.perf_counter()
    while True:
        b = ring.read(1024)
        if not b.count:
            ring.release(b)
            break
        n += sum(g[2] for g in enc.encode(b.span, now, 1 << 30)[0])
        ring.release(b)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert n == len(pkts), n
    return dt, cpu


_OLD_ORDER = {k: i for i, k in enumerate(H.PROTOCOL_KEYS + H.SIP_KEYS + ("node", "proto"))}


def _unsorted_batches(pkts: list[bytes], batch_rows: int) -> list[_Batch]:
    """The same rows with their JSON keys in heplify-server's order (not jsonb's): what the
    server does when it has to sort every object (diagnostic)."""
    real = H._json
    H._json = lambda d: real(dict(sorted(d.items(), key=lambda kv: _OLD_ORDER[kv[0]])))
    try:
        rows = [H.row_of(p) for p in pkts]
    finally:
        H._json = real
    out = []
    for i in range(0, len(rows), batch_rows):
        b = _Batch(0.0)
        for r in rows[i:i + batch_rows]:
            b.tables.setdefault(r.table, []).append(r.data)
            b.parts.add((r.table, H.partition_start(r.ts_us)))
            b.rows += 1
        out.append(b)
    return out


def _batches(pkts: list[bytes], batch_rows: int) -> list[_Batch]:
    """The batches the egress would seal, rows converted by the C encoder."""
    ring = _ring(pkts)
    for p in pkts:
        ring.push(p)
    ring.publish()
    enc = RowEncoder(H.PARTITION_SECONDS)
    out = [_Batch(0.0)]
    while True:
        r = ring.read(1024)
        if not r.count:
            ring.release(r)
            break
        for table, start, n, data in enc.encode(r.span, time.time(), 1 << 30)[0]:
            b = out[-1]
            b.tables.setdefault(table, []).append(data)
            b.parts.add((table, start))
            b.rows += n
        ring.release(r)
        if out[-1].rows >= batch_rows:
            out.append(_Batch(0.0))
    return [b for b in out if b.rows]


def bench_copy(srv: PgServer, pkts: list[bytes], batch_rows: int, writers: int,
               indexes: bool = True, sorted_keys: bool = True) -> tuple[float, float]:
    db = srv.create_db()
    batches = (_batches if sorted_keys else _unsorted_batches)(pkts, batch_rows)
    eg = PostgresEgress("bench", srv.dsn(db), batch_rows=batch_rows,
                        queue_rows=len(pkts) + batch_rows, retention_days=0, writers=writers)
    real = H.table_ddl
    if not indexes:
        H.table_ddl = lambda table: real(table)[:1]
    try:
        # the DDL first (as in steady state: partitions exist before their hour starts)
        with srv.connect(db) as conn:
            for b in batches:
                eg._ddl(conn, b)
        eg.open()
        time.sleep(0.3)                         # the writers' retention pass at connect
        c0, t0 = time.process_time(), time.perf_counter()
        with eg._lock:
            eg._waiting = len(pkts)
            eg._sealed.extend(batches)
            eg._cv.notify_all()
        done = 0
        while done < len(pkts):
            time.sleep(0.005)
            f, e, q = eg.settle()
            assert not e and not q, eg.metrics()
            done += f
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        H.table_ddl = real
    eg.close()
    drop_db(srv, db)
    return dt, cpu


def bench_egress(srv: PgServer, pkts: list[bytes], batch_rows: int, writers: int,
                 compiled: bool = True) -> tuple[float, float]:
    db = srv.create_db()
    size = 1 << 26
    mm = mmap.mmap(-1, 4096 + size)
    format_ring(mm, size)
    ring = Ring(mm)
    eg = PostgresEgress("bench", srv.dsn(db), batch_rows=batch_rows,
                        queue_rows=max(200_000, 2 * batch_rows), retention_days=0,
                        writers=writers, compiled=compiled)
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
        else:
            time.sleep(0.002)
        ring.release(b)
        if i >= len(pkts) and ring.used == 0:
            eg.close()
        f, e, q = eg.settle()
        assert not e and not q, eg.metrics()
        done += f
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    drop_db(srv, db)
    return dt, cpu


def drop_db(srv: PgServer, db: str) -> None:
    """So that its autovacuum does not run into the next measurement."""
    with srv.connect(autocommit=True) as c:
        c.execute(f"DROP DATABASE {db} WITH (FORCE)")


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


# Burns about 70% of its core (what the egress process and PostgreSQL take at 20k rows/s)
# for argv[1] seconds.
_BUSY = """
import sys, time
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    t = time.monotonic() + 0.007
    while time.monotonic() < t:
        pass
    time.sleep(0.003)
"""


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
    for mode in ("udp", "udp+file", "udp+postgres", "udp+busy"):
        db = srv.create_db()
        sink = Sink("127.0.0.1:0", keep=False).start()
        tmpd = tempfile.mkdtemp(prefix="hepfast-bench-")
        pg = {"udp": "", "udp+busy": "", "udp+postgres": f"""
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
                busy = None
                if mode == "udp+busy":                  # the control: core 1 loaded alike
                    busy = subprocess.Popen([sys.executable, "-c", _BUSY, str(seconds + 5)])
                subprocess.run([sys.executable, "-m", "hepfast", "replay",
                                str(CORPUS_DIR / "kamailio-hep3-udp.hepraw"), "--to",
                                f"127.0.0.1:{sw.port}", "--rate", str(pps), "--count",
                                str(count), "--quiet"], check=True, timeout=seconds * 5 + 30,
                               cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
                got = sink.wait_quiet(quiet=0.5, timeout=30)
                if busy is not None:
                    busy.kill()
                    busy.wait()
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
    out["worker_ratio_busy"] = round(out["udp+busy"]["worker_ns_per_pkt"] / base, 3) if base \
        else None
    out["worker_ratio"] = round(out["udp+postgres"]["worker_ns_per_pkt"] / base, 3) if base \
        else None
    out["worker_ratio_file"] = round(out["udp+file"]["worker_ns_per_pkt"] / base, 3) if base \
        else None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--batch-rows", type=int, default=5000)
    ap.add_argument("--writers", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--server-defaults", action="store_true",
                    help="PostgreSQL's own settings instead of RECOMMENDED")
    ap.add_argument("--no-diagnostic", action="store_true", help="skip copy-noidx")
    ap.add_argument("--stages", default="", help="comma-separated subset of the stage names")
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
    settings = dict(DURABLE) if a.server_defaults else {**DURABLE, **RECOMMENDED}
    srv = PgServer(settings)
    print("server settings: " + ", ".join(f"{k}={v}" for k, v in settings.items())
          + ("" if a.server_defaults else "  (docs/postgres.md recommended + durable)"))
    results: dict[str, dict] = {}
    workers: dict = {}
    try:
        stages = [] if a.skip_rows else [
            ("convert-py", lambda: bench_convert_py(pkts)),
            ("convert-c", lambda: bench_convert_c(pkts)),
            ("copy-w1", lambda: bench_copy(srv, pkts, a.batch_rows, 1))]
        if not a.skip_rows and a.writers != 1:
            stages.append((f"copy-w{a.writers}",
                           lambda: bench_copy(srv, pkts, a.batch_rows, a.writers)))
        if not a.skip_rows:
            stages.append(("egress", lambda: bench_egress(srv, pkts, a.batch_rows, a.writers)))
        if not a.skip_rows and not a.no_diagnostic:
            stages += [
                ("egress-base", lambda: bench_egress(srv, pkts, a.batch_rows, 1, compiled=False)),
                ("copy-w1-unsorted", lambda: bench_copy(srv, pkts, a.batch_rows, 1,
                                                        sorted_keys=False)),
                ("copy-noidx", lambda: bench_copy(srv, pkts, a.batch_rows, a.writers,
                                                  indexes=False))]
        if a.stages:
            stages = [x for x in stages if x[0] in a.stages.split(",")]
        for name, fn in stages:
            runs = []
            for _ in range(a.rounds):
                s0 = server_cpu(srv)
                dt, cpu = fn()
                runs.append((dt, cpu, server_cpu(srv) - s0))
            dt = statistics.median(r[0] for r in runs)
            cpu = statistics.median(r[1] for r in runs)
            scpu = statistics.median(r[2] for r in runs)
            results[name] = {"rows_per_s": round(len(pkts) / dt), "seconds": round(dt, 3),
                             "cpu_s": round(cpu, 3), "us_per_row": round(dt / len(pkts) * 1e6, 2),
                             "client_us_per_row": round(cpu / len(pkts) * 1e6, 2),
                             "srv_us_per_row": round(scpu / len(pkts) * 1e6, 2)}
            r = results[name]
            print(f"  {name}: {r['rows_per_s']} rows/s", flush=True)
        if a.worker_pps:
            if pinned:
                os.sched_setaffinity(0, {1})    # inherited by replay, the sink, the switch
                pin_server(srv, {1})
            workers = worker_cpu(srv, a.worker_pps, a.worker_seconds, pinned)
    finally:
        srv.stop()
    print(f"{'stage':<16} {'rows/s':>9} {'us/row':>7} {'wall s':>7} {'cpu s':>7} "
          f"{'client us':>9} {'srv us':>7}")
    for name, r in results.items():
        print(f"{name:<16} {r['rows_per_s']:>9} {r['us_per_row']:>7} {r['seconds']:>7} "
              f"{r['cpu_s']:>7} {r['client_us_per_row']:>9} {r['srv_us_per_row']:>7}")
    if "copy-noidx" in results:
        print("diagnostics: egress-base = the previous egress (row_of in Python, one writer); "
              "copy-w1-unsorted = JSON keys not in jsonb's order; copy-noidx = tables without "
              "their indexes (not hepfast's schema)")
    for mode in ("udp", "udp+file", "udp+postgres", "udp+busy"):
        if mode in workers:
            w = workers[mode]
            print(f"worker {mode:<13} delivered {w['delivered']}/{w['sent']}  worker "
                  f"{w['worker_ns_per_pkt']} ns/pkt  egress {w['egress_ns_per_pkt']} ns/pkt  "
                  f"stored {w['stored']}")
    if workers:
        print(f"worker ns/pkt with postgres / without: {workers['worker_ratio']}; with a file "
              f"destination / without: {workers['worker_ratio_file']}; UDP alone with core 1 "
              f"kept busy by a spinning process (control) / without: "
              f"{workers['worker_ratio_busy']}")
    doc = {"bench": "postgres", "rows": a.rows, "batch_rows": a.batch_rows,
           "writers": a.writers, "server": settings, "cpus": os.cpu_count(), **results,
           "workers": workers}
    line = json.dumps(doc)
    print(line)
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"postgres-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
