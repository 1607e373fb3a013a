"""The `postgres` destination: HEP packets stored as HOMER 7 rows (hepfast.egress.homer7) with
binary COPY, in the egress process, off the fast path.

Flow and invariants:
- `send_batch` converts a ring batch into rows: in C (hepfast.egress._pgrow, one buffer of
  binary COPY tuples per table and partition, no Python object per row), records it hands back
  and every record without `compiled` by homer7.row_of, the reference the C encoder must equal
  byte for byte. Records the schema does not store are counted failed (`rows_skipped`); rows
  beyond `queue_rows` waiting rows are refused as queue_full. The rows go to the open batch,
  sealed once it holds at least `batch_rows` rows (it may hold up to one ring batch more) or is
  `flush_seconds` old; sealed batches wait in a FIFO.
- This egress is *deferred* (hepfast.egress.base): a row counts as forwarded only when the
  transaction holding it has committed; `settle()` hands the loop what committed, failed or
  was refused since its last call.
- Writers: `writers` connections, each with its own thread (with `threaded`, the default),
  take sealed batches from the head of the FIFO and write one transaction each, so several
  COPYs run in the server at once and converting rows (the egress loop's thread; the C encoder
  and psycopg's network waits release the GIL) overlaps all of them. Batches may commit out of
  order. The FIFO, the row count and the counters are shared under one lock; a batch a writer
  has taken is that writer's alone until it is settled. Without `threaded` the writers run
  inline, in turn, in send_batch/flush (tests).
- One transaction per batch: one COPY per table (through the partitioned parent), and a row in
  `hepfast_batches` with the batch's unique id. When the connection breaks, the writer keeps
  its batch; after reconnecting it looks the id up first: present means the commit happened
  before the break (settled, not written again), absent means nothing of it is stored and it
  is written again. So a retried batch is stored exactly once, whatever the number of writers.
- DDL (tables, indexes, partitions) is committed before the batch's transaction, one table or
  one partition per transaction under a transaction-level advisory lock (DDL_LOCK), so writers
  (and other hepfast nodes on the same database) never race on CREATE ... IF NOT EXISTS, and
  no transaction waits for a lock while holding one on another parent (no deadlock between
  a writer creating partitions and one copying). The tables and partitions known to exist are
  shared by the writers; the retention pass creates the current and the next hour's partitions
  of the known tables ahead of time.
- Connection loss: each writer reconnects with backoff (`retry_s` doubling up to
  `retry_max_s`); meanwhile rows queue up to `queue_rows`. An error the server reports about
  the transaction itself (not the connection) is retried once, with the DDL run again; a
  second one fails that batch's rows, counted, so one bad batch cannot block the FIFO.
- Durability: a committed batch survives a connection loss and a server restart. With the
  server's `synchronous_commit = on` (its default, which this egress does not change) it also
  survives a server or machine crash; docs/postgres.md lists the server settings.
- Spool (`spool`, hepfast.egress.spool): records that would be refused as queue_full go to
  disk instead, and once it holds anything every new record does (no overtaking); while the
  row queue is at most half full and a writer is connected, the loop's thread turns the oldest
  segment into one sealed batch (through a private ring and the same encoder), and the segment
  is deleted (done) when that batch is settled. At close, segments whose batch is not settled
  are released, so the next start writes them; their rows are not counted failed. All spool
  calls happen under the lock (writers settle batches in their threads).
- Retention: partitions whose slice ended more than `retention_days` ago are dropped (checked
  at connect and hourly, by the first writer; 0 keeps everything), and batch ids older than a
  day are forgotten.
- The DSN's password never leaves this module: log lines and health details are masked
  (hepfast.observe.redact); `dsn_env` names an environment variable holding the DSN instead.
"""
from __future__ import annotations

import collections
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from hepfast.egress import homer7 as H
from hepfast.egress.base import Egress, register
from hepfast.egress.spool import Spool
from hepfast.observe.redact import dsn_password, mask_secrets

if TYPE_CHECKING:
    from hepfast.egress._ring import Batch

log = logging.getLogger(__name__)

ROTATE_EVERY_S = 3600.0
DDL_LOCK = 0x68657066617374          # pg_advisory_xact_lock key of the DDL ("hepfast")
WRITE_CHUNK = 1 << 18                # bytes per COPY data message (at least)


class _Batch:
    __slots__ = ("id", "tables", "rows", "parts", "born", "tries", "seg")

    def __init__(self, born: float, seg: int = -1) -> None:
        self.id = uuid.uuid4().hex
        self.seg = seg                              # the spool segment it replays, else -1
        self.tables: dict[str, list[bytes]] = {}    # table -> buffers of whole COPY tuples
        self.rows = 0
        self.parts: set[tuple[str, int]] = set()
        self.born = born
        self.tries = 0


class _Writer:
    """One connection, its backoff and the batch it is writing (`unsure`: the connection broke
    while it was being written, so its commit may have happened)."""

    __slots__ = ("idx", "conn", "cur", "unsure", "backoff", "retry_at", "thread")

    def __init__(self, idx: int, retry_s: float) -> None:
        self.idx = idx
        self.conn = None
        self.cur: _Batch | None = None
        self.unsure = False
        self.backoff = retry_s
        self.retry_at = 0.0
        self.thread: threading.Thread | None = None


@register("postgres")
class PostgresEgress(Egress):
    """HOMER 7 rows into PostgreSQL; see the module docstring."""

    deferred = True

    def __init__(self, name: str, dsn: str, *, batch_rows: int = 5000,
                 flush_seconds: float = 1.0, queue_rows: int = 200_000,
                 retention_days: int = 7, writers: int = 2, retry_s: float = 0.5,
                 retry_max_s: float = 5.0, connect_timeout_s: float = 5.0,
                 threaded: bool = True, compiled: bool = True, spool: str | None = None,
                 spool_max_bytes: int = 1 << 30,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if batch_rows < 1 or queue_rows < batch_rows:
            raise ValueError("batch_rows must be >= 1 and queue_rows >= batch_rows")
        if writers < 1:
            raise ValueError("writers must be >= 1")
        super().__init__(name)
        self._dsn = dsn
        self._secrets = [s for s in (dsn_password(dsn),) if s]
        self.batch_rows = batch_rows
        self.flush_seconds = flush_seconds
        self.queue_rows = queue_rows
        self.retention_days = retention_days
        self.retry_s = retry_s
        self.retry_max_s = retry_max_s
        self.connect_timeout_s = connect_timeout_s
        self._mono = monotonic
        self.threaded = threaded
        self._enc = None
        if compiled:
            from hepfast.egress._pgrow import RowEncoder

            self._enc = RowEncoder(H.PARTITION_SECONDS)
        self._lock = threading.RLock()
        self._cv = threading.Condition(self._lock)
        self._writers = [_Writer(i, retry_s) for i in range(writers)]
        self._stopping = False
        self._open: _Batch | None = None
        self._sealed: collections.deque[_Batch] = collections.deque()
        self._waiting = 0                       # rows in _open, _sealed and the writers' batches
        self._tables: set[str] = set()          # known to exist (shared by the writers)
        self._parts: set[tuple[str, int]] = set()
        self._rotate_at = 0.0
        self._spool = Spool(os.path.join(spool, re.sub(r"[^A-Za-z0-9_.-]+", "_", name)),
                            spool_max_bytes) if spool else None
        self._spool_rows = 0                    # rows of spool segments being written
        self._replay = None                     # a private ring the spool's packets go through
        self._detail = "not connected yet"
        self._settle = [0, 0, 0]                # forwarded, failed, queue_full since settle()
        self.rows_written = 0
        self.rows_failed = 0
        self.rows_skipped = 0
        self.queue_full = 0
        self.batches = 0
        self.batches_retried = 0
        self.batches_found_committed = 0
        self.batch_seconds_sum = 0.0
        self.batch_seconds_last = 0.0
        self.connects = 0
        self.errors = collections.Counter({"connect": 0, "connection": 0, "data": 0})
        self.partitions_created = 0
        self.partitions_dropped = 0

    @classmethod
    def from_settings(cls, name: str, settings: dict) -> PostgresEgress:
        dsn = settings.get("dsn") or ""
        env = settings.get("dsn_env") or ""
        if env:
            dsn = os.environ.get(env, "")
            if not dsn:
                raise ValueError(f"postgres destination {name}: environment variable {env} "
                                 f"(dsn_env) is not set")
        return cls(name, dsn, batch_rows=int(settings["batch_rows"]),
                   flush_seconds=float(settings["flush_seconds"]),
                   queue_rows=int(settings["queue_rows"]),
                   retention_days=int(settings["retention_days"]),
                   writers=int(settings.get("writers", 2)),
                   spool=settings.get("spool") or None,
                   spool_max_bytes=int(settings.get("spool_max_bytes") or 1 << 30))

    # ---------------------------------------------------------------------------- contract

    def open(self) -> None:
        self._stopping = False
        for w in self._writers:
            self._connect(w)
        if self.threaded:
            for w in self._writers:
                if w.thread is None:
                    w.thread = threading.Thread(target=self._run, args=(w,),
                                                name=f"pg-{self.name}-{w.idx}", daemon=True)
                    w.thread.start()

    def send_batch(self, batch: Batch) -> int:
        now = self._mono()
        wall = time.time()
        with self._lock:
            room = max(0, self.queue_rows - self._waiting)
            spill = self._spool is not None and (not self._spool.empty or room < batch.count)
        if spill:
            self._spill([bytes(rec) for _meta, rec in batch])
            self._refill(now)
            if not self.threaded:
                self._service_all()
            return batch.count
        groups: list = []
        skipped = over = 0
        if self._enc is not None:
            groups, skipped, over, slow = self._enc.encode(batch.span, wall, room)
            rows = [H.row_of(rec, wall) for rec in slow]
        else:
            rows = [H.row_of(bytes(rec), wall) for _meta, rec in batch]
        with self._lock:
            self.rows_skipped += skipped
            self._settle[1] += skipped
            self.queue_full += over
            self._settle[2] += over
            b = self._open
            if b is None and (groups or rows):
                b = self._open = _Batch(now)
            for table, start, n, data in groups:
                b.tables.setdefault(table, []).append(data)
                b.parts.add((table, start))
                b.rows += n
                self._waiting += n
            for row in rows:
                if row is None:
                    self.rows_skipped += 1
                    self._settle[1] += 1
                    continue
                if self._waiting >= self.queue_rows:
                    self.queue_full += 1
                    self._settle[2] += 1
                    continue
                b.tables.setdefault(row.table, []).append(row.data)
                b.parts.add((row.table, H.partition_start(row.ts_us)))
                b.rows += 1
                self._waiting += 1
            if b is not None and (b.rows >= self.batch_rows or now - b.born >= self.flush_seconds):
                self._seal()
        if not self.threaded:
            self._service_all()
        return batch.count

    def flush(self) -> None:
        with self._lock:
            b = self._open
            if b is not None and self._mono() - b.born >= self.flush_seconds:
                self._seal()
        self._refill(self._mono())
        if not self.threaded:
            self._service_all()

    # ---------------------------------------------------------------------------- spool

    def _spill(self, packets: list[bytes]) -> None:
        """Records the row queue cannot take, to the spool (oldest segments deleted past
        spool_max_bytes: those records are lost, counted queue_full)."""
        with self._lock:
            sp = self._spool
            before = sp.dropped_records
            sp.append(packets)
            lost = sp.dropped_records - before
            self.queue_full += lost
            self._settle[2] += lost

    def _refill(self, now: float) -> None:
        """While the row queue is at most half full and a writer is connected: the oldest
        spool segment becomes one sealed batch (its segment deleted once that batch is
        settled, released for a later replay when it is not by close)."""
        sp = self._spool
        if sp is None:
            return
        while True:
            with self._lock:
                if self._stopping or sp.empty or self._waiting > self.queue_rows // 2 or \
                        not any(w.conn is not None for w in self._writers):
                    return
                got = sp.take_segment()
            if got is None:
                return
            seq, packets = got
            groups, rows, skipped = self._convert(packets, time.time())
            b = _Batch(now, seq)
            for table, start, n, data in groups:
                b.tables.setdefault(table, []).append(data)
                b.parts.add((table, start))
                b.rows += n
            for row in rows:
                if row is None:
                    skipped += 1
                    continue
                b.tables.setdefault(row.table, []).append(row.data)
                b.parts.add((row.table, H.partition_start(row.ts_us)))
                b.rows += 1
            with self._lock:
                self.rows_skipped += skipped
                self._settle[1] += skipped
                if not b.rows:
                    sp.done(seq)
                    continue
                self._waiting += b.rows
                self._spool_rows += b.rows
                self._sealed.append(b)
                self._cv.notify()

    def _convert(self, packets: list[bytes], wall: float) -> tuple[list, list, int]:
        """(groups, rows, skipped) of spooled packets: through a private ring and the C
        encoder (its slow records by row_of), or row_of alone without `compiled`."""
        if self._enc is None:
            return [], [H.row_of(p, wall) for p in packets], 0
        if self._replay is None:
            import mmap

            from hepfast.egress._ring import Ring, format_ring

            mm = mmap.mmap(-1, 4096 + (8 << 20))
            format_ring(mm, 8 << 20)
            self._replay = Ring(mm)
        ring = self._replay
        groups: list = []
        rows: list = []
        skipped = 0
        i = 0
        while i < len(packets) or ring.used:
            while i < len(packets) and ring.push(packets[i]) == 0:
                i += 1
            ring.publish()
            b = ring.read(1 << 20)
            try:
                g, sk, _over, slow = self._enc.encode(b.span, wall, 1 << 40)
            finally:
                ring.release(b)
            groups += g
            skipped += sk
            rows += [H.row_of(p, wall) for p in slow]
        return groups, rows, skipped

    def _spool_settled(self, b: _Batch) -> None:
        """(lock held) Batch b replayed a spool segment and is settled: the segment goes."""
        if b.seg >= 0 and self._spool is not None:
            self._spool_rows -= b.rows
            self._spool.done(b.seg)

    def settle(self) -> tuple[int, int, int]:
        with self._lock:
            out = tuple(self._settle)
            self._settle = [0, 0, 0]
        return out  # type: ignore[return-value]

    def health(self) -> tuple[bool, str]:
        up = sum(1 for w in self._writers if w.conn is not None)
        if up:
            n = len(self._writers)
            return True, "connected" if up == n else f"{up} of {n} writers connected"
        return False, self._detail

    def close(self, timeout_s: float = 60.0) -> None:
        """Seal and write what waits (one attempt per batch if the server is reachable; a
        connection found broken on the way is replaced once); what cannot be written now is
        counted failed."""
        with self._cv:
            if self._open is not None:
                self._seal()
            for w in self._writers:
                w.retry_at = 0.0
            self._stopping = True
            self._cv.notify_all()
        busy = False
        if self.threaded:
            end = time.monotonic() + timeout_s
            for w in self._writers:
                t = w.thread
                if t is None:
                    continue
                t.join(max(0.0, end - time.monotonic()))
                if t.is_alive():
                    busy = True
                    self._say(logging.WARNING, "%s: writer %d still busy after %.0f s at close",
                              self.name, w.idx, timeout_s)
                else:
                    w.thread = None
        else:
            self._service_all()
        with self._lock:
            # rows replaying a spool segment stay in the spool (replayed by the next start)
            held = [b for b in self._sealed] + [w.cur for w in self._writers
                                                if w.thread is None and w.cur is not None]
            kept = 0
            for b in held:
                if b.seg >= 0 and self._spool is not None:
                    self._spool.release(b.seg)
                    kept += b.rows
            lost = self._waiting - kept
            if lost:
                self._say(logging.WARNING, "%s: %d rows not stored at close (%s)", self.name,
                          lost, self._detail)
                self.rows_failed += lost
                self._settle[1] += lost
            if kept:
                self._say(logging.WARNING, "%s: %d spooled rows left in the spool at close",
                          self.name, kept)
            self._sealed.clear()
            self._waiting = 0
            self._spool_rows = 0
            for w in self._writers:
                if w.thread is None:
                    w.cur = None
                    w.unsure = False
            if self._spool is not None and not busy:
                self._spool.close()
        if not busy:
            for w in self._writers:
                self._drop_conn(w)

    def metrics(self) -> dict[str, float]:
        sp = self._spool
        return {
            "up": 1.0 if self.health()[0] else 0.0,
            "writers_connected": float(sum(1 for w in self._writers if w.conn is not None)),
            "rows_written_total": float(self.rows_written),
            "rows_failed_total": float(self.rows_failed),
            "rows_skipped_total": float(self.rows_skipped),
            "rows_queue_full_total": float(self.queue_full),
            "queue_rows": float(self._waiting),
            "batches_total": float(self.batches),
            "batches_retried_total": float(self.batches_retried),
            "batch_seconds_sum": float(self.batch_seconds_sum),
            "batch_seconds_last": float(self.batch_seconds_last),
            "connects_total": float(self.connects),
            "errors_connect_total": float(self.errors["connect"]),
            "errors_connection_total": float(self.errors["connection"]),
            "errors_data_total": float(self.errors["data"]),
            "partitions_created_total": float(self.partitions_created),
            "partitions_dropped_total": float(self.partitions_dropped),
            "spool_bytes": float(sp.bytes if sp is not None else 0),
            "spool_records": float(sp.records if sp is not None else 0),
            "spool_written_total": float(sp.written_records if sp is not None else 0),
            "spool_replayed_total": float(sp.replayed_records if sp is not None else 0),
            "spool_dropped_total": float(sp.dropped_records if sp is not None else 0),
        }

    # ---------------------------------------------------------------------------- internals

    def _say(self, level: int, fmt: str, *args) -> None:
        log.log(level, "postgres egress " + mask_secrets(fmt % args, self._secrets))

    @staticmethod
    def _drop_conn(w: _Writer) -> None:
        conn, w.conn = w.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass

    def _seal(self) -> None:
        """(lock held)"""
        if self._open is not None and self._open.rows:
            self._sealed.append(self._open)
            self._cv.notify()
        self._open = None

    def _due(self, w: _Writer) -> bool:
        """(lock held) Something for writer w: a batch and no backoff, a reconnect attempt, a
        retention pass (the first writer), or the stop."""
        now = self._mono()
        if self._stopping:
            return True
        if w.conn is None:
            return now >= w.retry_at
        return w.cur is not None or bool(self._sealed) or (w.idx == 0 and now >= self._rotate_at)

    def _run(self, w: _Writer) -> None:
        """A writer thread: serve until close() asks to stop, then one last pass."""
        while True:
            with self._cv:
                if not self._due(w):
                    self._cv.wait(0.2)
                stop = self._stopping
            try:
                if stop:
                    self._final(w)
                else:
                    self._service(w)
            except Exception as e:  # noqa: BLE001 - a bug must not kill the writer silently
                self._say(logging.ERROR, "%s: writer %d: %s: %s", self.name, w.idx,
                          type(e).__name__, e)
                with self._lock:
                    w.retry_at = self._mono() + self.retry_max_s
            if stop:
                return

    def _service_all(self) -> None:
        for w in self._writers:
            self._final(w) if self._stopping else self._service(w)

    def _final(self, w: _Writer) -> None:
        """The pass at close: write what waits; a connection found broken on the way (the
        server restarted since the last batch) gets one more attempt on a fresh one."""
        self._service(w)
        if w.conn is None and (w.cur is not None or self._sealed):
            w.retry_at = 0.0
            self._service(w)

    def _service(self, w: _Writer) -> None:
        """Write batches from the FIFO while w's connection holds; reconnect (with backoff)
        when there is none; the retention pass when due (first writer)."""
        self._write_sealed(w)
        if w.conn is None and not self._stopping:
            self._connect(w)
        if w.idx == 0 and w.conn is not None and self._mono() >= self._rotate_at:
            self._rotate(w)

    def _down(self, w: _Writer, kind: str, exc: BaseException) -> None:
        detail = mask_secrets(f"{type(exc).__name__}: {exc}".strip(), self._secrets)
        detail = " ".join(detail.split())
        was_up = w.conn is not None
        self._drop_conn(w)
        with self._lock:
            self.errors[kind] += 1
            if was_up or detail != self._detail:
                self._say(logging.WARNING, "%s: writer %d: %s", self.name, w.idx, detail)
            self._detail = detail
            w.retry_at = self._mono() + w.backoff
            w.backoff = min(w.backoff * 2, self.retry_max_s)

    def _connect(self, w: _Writer) -> bool:
        if w.conn is not None:
            return True
        if self._mono() < w.retry_at:
            return False
        import psycopg

        try:
            conn = psycopg.connect(self._dsn, connect_timeout=max(1, int(self.connect_timeout_s)),
                                   application_name=f"hepfast-{self.name}"[:63])
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '10s'")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK,))
                conn.execute(H.BATCH_DDL)
        except psycopg.Error as e:
            self._down(w, "connect", e)
            try:
                conn.close()                   # type: ignore[possibly-undefined]
            except Exception:  # noqa: BLE001 - may not exist or be broken
                pass
            return False
        with self._lock:
            first = not any(x.conn is not None for x in self._writers)
            w.conn = conn
            self.connects += 1
            w.backoff = self.retry_s
            self._detail = "connected"
            if w.idx == 0:
                self._rotate_at = 0.0
        if first:
            self._say(logging.INFO, "%s: connected", self.name)
        return True

    def _write_sealed(self, w: _Writer) -> None:
        while True:
            if w.cur is None:
                with self._lock:
                    if not self._sealed:
                        return
                if not self._connect(w):
                    return                      # leave the FIFO to connected writers
                with self._lock:
                    if not self._sealed:
                        return
                    w.cur = self._sealed.popleft()
                    w.unsure = False
            if not self._connect(w) or not self._write(w, w.cur):
                return
            w.cur = None

    def _ddl(self, conn, b: _Batch) -> None:
        """Tables and partitions b needs that are not known to exist: each created in its own
        committed transaction, under the DDL advisory lock."""
        with self._lock:
            tables = [t for t in b.tables if t not in self._tables]
            parts = sorted(b.parts - self._parts)
        for t in tables:
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '30s'")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK,))
                for q in H.table_ddl(t):
                    conn.execute(q)
            with self._lock:
                self._tables.add(t)
        for t, start in parts:
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '30s'")
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK,))
                conn.execute(H.partition_ddl(t, start))
            with self._lock:
                if (t, start) not in self._parts:
                    self._parts.add((t, start))
                    self.partitions_created += 1

    def _write(self, w: _Writer, b: _Batch) -> bool:
        """One transaction for batch `b`; True when it is settled (stored or failed)."""
        import psycopg

        conn = w.conn
        t0 = time.perf_counter()
        try:
            if w.unsure:
                with self._lock:
                    self.batches_retried += 1
                row = conn.execute(f"SELECT 1 FROM {H.BATCH_TABLE} WHERE batch_id = %s",
                                   (b.id,)).fetchone()
                conn.commit()
                w.unsure = False
                if row is not None:
                    with self._lock:
                        self.batches_found_committed += 1
                    self._settled_ok(b, t0)
                    return True
            self._ddl(conn, b)
            with conn.transaction():
                for table, bufs in b.tables.items():
                    sql = f"COPY {table} ({','.join(H.COLUMNS)}) FROM STDIN (FORMAT BINARY)"
                    with conn.cursor() as cur, cur.copy(sql) as cp:
                        cp.write(H.COPY_HEADER)
                        pend: list[bytes] = []
                        size = 0
                        for buf in bufs:
                            pend.append(buf)
                            size += len(buf)
                            if size >= WRITE_CHUNK:
                                cp.write(pend[0] if len(pend) == 1 else b"".join(pend))
                                pend.clear()
                                size = 0
                        pend.append(H.COPY_TRAILER)
                        cp.write(b"".join(pend))
                conn.execute(f"INSERT INTO {H.BATCH_TABLE} (batch_id, destination, rows) "
                             f"VALUES (%s, %s, %s)", (b.id, self.name, b.rows))
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            # The commit may or may not have reached the server: check before writing again.
            w.unsure = True
            self._down(w, "connection", e)
            return False
        except psycopg.Error as e:
            b.tries += 1
            last = b.tries >= 2
            self._say(logging.WARNING, "%s: batch of %d rows refused%s: %s", self.name, b.rows,
                      "" if last else " (retrying it once)", " ".join(str(e).split()))
            with self._lock:
                self._tables.clear()            # DDL may have failed or been undone
                self._parts.clear()
                self.errors["data"] += 1
                if not last:
                    return False
                self.rows_failed += b.rows
                self._settle[1] += b.rows
                self._waiting -= b.rows
                self._spool_settled(b)
            return True
        self._settled_ok(b, t0)
        return True

    def _settled_ok(self, b: _Batch, t0: float) -> None:
        dt = time.perf_counter() - t0
        with self._lock:
            self.batches += 1
            self.batch_seconds_last = dt
            self.batch_seconds_sum += dt
            self.rows_written += b.rows
            self._settle[0] += b.rows
            self._waiting -= b.rows
            self._spool_settled(b)

    def _rotate(self, w: _Writer) -> None:
        """Drop partitions past retention_days, forget old batch ids, create the current and
        the next slice's partitions of the tables written so far."""
        import psycopg

        self._rotate_at = self._mono() + ROTATE_EVERY_S
        conn = w.conn
        try:
            with conn.transaction():
                conn.execute(f"DELETE FROM {H.BATCH_TABLE} "
                             f"WHERE committed_at < now() - interval '1 day'")
            ahead = _Batch(0.0)
            now_s = int(time.time())
            with self._lock:
                for t in self._tables:
                    ahead.tables[t] = []
                    for s in (now_s, now_s + H.PARTITION_SECONDS):
                        ahead.parts.add((t, H.partition_start(s * 1_000_000)))
            self._ddl(conn, ahead)
            if not self.retention_days:
                return
            horizon = time.time() - self.retention_days * 86400
            names = [r[0] for r in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "JOIN pg_class p ON p.oid = i.inhparent "
                "WHERE p.relname LIKE 'hep\\_proto\\_%'").fetchall()]
            conn.commit()
            for n in names:
                end = H.partition_end_of(n)
                if end is not None and end <= horizon:
                    with conn.transaction():
                        conn.execute("SET LOCAL lock_timeout = '30s'")
                        conn.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK,))
                        conn.execute(f"DROP TABLE IF EXISTS {n}")
                    with self._lock:
                        self.partitions_dropped += 1
                        self._parts = {p for p in self._parts
                                       if H.partition_name(*p) != n}
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            self._down(w, "connection", e)
        except psycopg.Error as e:
            with self._lock:
                self.errors["data"] += 1
            self._say(logging.WARNING, "%s: retention: %s", self.name, " ".join(str(e).split()))
