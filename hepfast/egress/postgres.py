"""The `postgres` destination: HEP packets stored as HOMER 7 rows (hepfast.egress.homer7) with
binary COPY, in the egress process, off the fast path.

Flow and invariants:
- `send_batch` converts each record to its row (the ring's bytes are not kept) and appends it
  to the open batch; records the schema does not store are counted failed (`rows_skipped`),
  rows beyond `queue_rows` waiting rows are refused as queue_full. The open batch is sealed
  at `batch_rows` rows or when it is `flush_seconds` old; sealed batches wait in a FIFO and are
  written oldest first, one transaction each.
- This egress is *deferred* (hepfast.egress.base): a row counts as forwarded only when the
  transaction holding it has committed; `settle()` hands the loop what committed, failed or
  was refused since its last call.
- Threads: with `threaded` (the default) one writer thread owns the connection and writes the
  sealed batches, so converting rows (the egress loop's thread) and COPY (the server, and
  psycopg waiting on it without the GIL) overlap. The two share the FIFO, the row count and
  the counters under one lock; a sealed batch is never touched by the loop's thread again.
  Without `threaded` the same work runs inline in send_batch/flush (tests).
- One transaction per batch: create the partitions its rows need, one COPY per table, and a
  row in `hepfast_batches` with the batch's unique id. When the connection breaks, the batch
  stays at the head of the FIFO; after reconnecting, its id is looked up first: present means
  the commit happened before the break (it is settled, not written again), absent means
  nothing of it is stored and it is written again. So a retried batch is stored exactly once.
- Connection loss: reconnect with backoff (`retry_s` doubling up to `retry_max_s`), from
  `send_batch` and idle `flush()`; meanwhile rows queue up to `queue_rows`. An error the server
  reports about the transaction itself (not the connection) is retried once, with the table and
  partition DDL run again (another writer creating the same partition at the same moment makes
  `CREATE TABLE IF NOT EXISTS` fail once); a second one fails that batch's rows, counted, so
  one bad batch cannot block the FIFO.
- Retention: partitions whose slice ended more than `retention_days` ago are dropped (checked
  at connect and hourly; 0 keeps everything), and batch ids older than a day are forgotten.
- The DSN's password never leaves this module: log lines and health details are masked
  (hepfast.observe.redact); `dsn_env` names an environment variable holding the DSN instead.
"""
from __future__ import annotations

import collections
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from hepfast.egress import homer7 as H
from hepfast.egress.base import Egress, register
from hepfast.observe.redact import dsn_password, mask_secrets

if TYPE_CHECKING:
    from hepfast.egress._ring import Batch

log = logging.getLogger(__name__)

ROTATE_EVERY_S = 3600.0


class _Batch:
    __slots__ = ("id", "tables", "rows", "parts", "born", "tries")

    def __init__(self, born: float) -> None:
        self.id = uuid.uuid4().hex
        self.tables: dict[str, list[bytes]] = {}
        self.rows = 0
        self.parts: set[tuple[str, int]] = set()
        self.born = born
        self.tries = 0


@register("postgres")
class PostgresEgress(Egress):
    """HOMER 7 rows into PostgreSQL; see the module docstring."""

    deferred = True

    def __init__(self, name: str, dsn: str, *, batch_rows: int = 5000,
                 flush_seconds: float = 1.0, queue_rows: int = 200_000,
                 retention_days: int = 7, retry_s: float = 0.5, retry_max_s: float = 5.0,
                 connect_timeout_s: float = 5.0, threaded: bool = True,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if batch_rows < 1 or queue_rows < batch_rows:
            raise ValueError("batch_rows must be >= 1 and queue_rows >= batch_rows")
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
        self._lock = threading.RLock()
        self._cv = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._conn = None
        self._open: _Batch | None = None
        self._sealed: collections.deque[_Batch] = collections.deque()
        self._waiting = 0                       # rows in _open and _sealed
        self._unsure: _Batch | None = None      # head batch whose commit may have happened
        self._tables: set[str] = set()
        self._parts: set[tuple[str, int]] = set()
        self._backoff = retry_s
        self._retry_at = 0.0
        self._rotate_at = 0.0
        self._up = False
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
                   retention_days=int(settings["retention_days"]))

    # ---------------------------------------------------------------------------- contract

    def open(self) -> None:
        self._stopping = False
        self._connect()
        if self.threaded and self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"pg-{self.name}",
                                            daemon=True)
            self._thread.start()

    def send_batch(self, batch: Batch) -> int:
        now = self._mono()
        rows = [H.row_of(bytes(rec)) for _meta, rec in batch]
        with self._lock:
            for row in rows:
                if row is None:
                    self.rows_skipped += 1
                    self._settle[1] += 1
                    continue
                if self._waiting >= self.queue_rows:
                    self.queue_full += 1
                    self._settle[2] += 1
                    continue
                b = self._open
                if b is None:
                    b = self._open = _Batch(now)
                b.tables.setdefault(row.table, []).append(row.data)
                b.parts.add((row.table, H.partition_start(row.ts_us)))
                b.rows += 1
                self._waiting += 1
                if b.rows >= self.batch_rows or now - b.born >= self.flush_seconds:
                    self._seal()
        if not self.threaded:
            self._service()
        return batch.count

    def flush(self) -> None:
        with self._lock:
            b = self._open
            if b is not None and self._mono() - b.born >= self.flush_seconds:
                self._seal()
        if not self.threaded:
            self._service()

    def settle(self) -> tuple[int, int, int]:
        with self._lock:
            out = tuple(self._settle)
            self._settle = [0, 0, 0]
        return out  # type: ignore[return-value]

    def health(self) -> tuple[bool, str]:
        return self._up, self._detail

    def close(self, timeout_s: float = 60.0) -> None:
        """Seal and write what waits (one attempt per batch if the server is reachable); what
        cannot be written now is counted failed."""
        with self._cv:
            if self._open is not None:
                self._seal()
            self._retry_at = 0.0
            self._stopping = True
            self._cv.notify_all()
        t = self._thread
        if t is not None:
            t.join(timeout_s)
            if t.is_alive():
                self._say(logging.WARNING, "%s: writer still busy after %.0f s at close",
                          self.name, timeout_s)
            self._thread = None
        else:
            self._service()
        with self._lock:
            lost = self._waiting
            if lost:
                self._say(logging.WARNING, "%s: %d rows not stored at close (%s)", self.name,
                          lost, self._detail)
                self.rows_failed += lost
                self._settle[1] += lost
                self._sealed.clear()
                self._waiting = 0
        if t is None or not t.is_alive():
            self._drop_conn()

    def metrics(self) -> dict[str, float]:
        return {
            "up": 1.0 if self._up else 0.0,
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
        }

    # ---------------------------------------------------------------------------- internals

    def _say(self, level: int, fmt: str, *args) -> None:
        log.log(level, "postgres egress " + mask_secrets(fmt % args, self._secrets))

    def _drop_conn(self) -> None:
        conn, self._conn = self._conn, None
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

    def _due(self) -> bool:
        """(lock held) Something for the writer: a batch and no backoff, a reconnect attempt,
        a retention pass, or the stop."""
        now = self._mono()
        if self._stopping:
            return True
        if self._conn is None:
            return now >= self._retry_at
        return bool(self._sealed) or now >= self._rotate_at

    def _run(self) -> None:
        """The writer thread: serve until close() asks to stop, then one last pass."""
        while True:
            with self._cv:
                if not self._due():
                    self._cv.wait(0.2)
                stop = self._stopping
            try:
                self._service()
            except Exception as e:  # noqa: BLE001 - a bug must not kill the writer silently
                self._say(logging.ERROR, "%s: writer: %s: %s", self.name, type(e).__name__, e)
                with self._lock:
                    self._retry_at = self._mono() + self.retry_max_s
            if stop:
                return

    def _service(self) -> None:
        """Write the sealed batches oldest first while the connection holds; reconnect (with
        backoff) when there is none; the retention pass when due."""
        self._write_sealed()
        if self._conn is None and not self._stopping:
            self._connect()
        if self._conn is not None and self._mono() >= self._rotate_at:
            self._rotate()

    def _down(self, kind: str, exc: BaseException) -> None:
        self.errors[kind] += 1
        detail = mask_secrets(f"{type(exc).__name__}: {exc}".strip(), self._secrets)
        detail = " ".join(detail.split())
        if self._up or detail != self._detail:
            self._say(logging.WARNING, "%s: %s", self.name, detail)
        self._up = False
        self._detail = detail
        self._drop_conn()
        self._retry_at = self._mono() + self._backoff
        self._backoff = min(self._backoff * 2, self.retry_max_s)

    def _connect(self) -> bool:
        if self._conn is not None:
            return True
        if self._mono() < self._retry_at:
            return False
        import psycopg

        try:
            conn = psycopg.connect(self._dsn, connect_timeout=max(1, int(self.connect_timeout_s)),
                                   application_name=f"hepfast-{self.name}"[:63])
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '10s'")
                conn.execute(H.BATCH_DDL)
        except psycopg.Error as e:
            self._down("connect", e)
            try:
                conn.close()                   # type: ignore[possibly-undefined]
            except Exception:  # noqa: BLE001 - may not exist or be broken
                pass
            return False
        self._conn = conn
        self.connects += 1
        self._tables.clear()
        self._parts.clear()
        self._backoff = self.retry_s
        if not self._up:
            self._say(logging.INFO, "%s: connected", self.name)
        self._up = True
        self._detail = "connected"
        self._rotate_at = 0.0
        return True

    def _write_sealed(self) -> None:
        while True:
            with self._lock:
                if not self._sealed:
                    return
                b = self._sealed[0]
            if not self._connect() or not self._write(b):
                return
            with self._lock:
                self._sealed.popleft()

    def _write(self, b: _Batch) -> bool:
        """One transaction for batch `b`; True when it is settled (stored or failed)."""
        import psycopg

        conn = self._conn
        t0 = time.perf_counter()
        try:
            if self._unsure is b:
                self.batches_retried += 1
                row = conn.execute(f"SELECT 1 FROM {H.BATCH_TABLE} WHERE batch_id = %s",
                                   (b.id,)).fetchone()
                conn.commit()
                self._unsure = None
                if row is not None:
                    self.batches_found_committed += 1
                    self._settled_ok(b, t0)
                    return True
            with conn.transaction():
                for table in b.tables:
                    if table not in self._tables:
                        for q in H.table_ddl(table):
                            conn.execute(q)
                for table, start in sorted(b.parts - self._parts):
                    conn.execute(H.partition_ddl(table, start))
                for table, rows in b.tables.items():
                    sql = f"COPY {table} ({','.join(H.COLUMNS)}) FROM STDIN (FORMAT BINARY)"
                    with conn.cursor() as cur, cur.copy(sql) as cp:
                        cp.write(H.COPY_HEADER)
                        for i in range(0, len(rows), 1000):
                            cp.write(b"".join(rows[i:i + 1000]))
                        cp.write(H.COPY_TRAILER)
                conn.execute(f"INSERT INTO {H.BATCH_TABLE} (batch_id, destination, rows) "
                             f"VALUES (%s, %s, %s)", (b.id, self.name, b.rows))
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            # The commit may or may not have reached the server: check before writing again.
            self._unsure = b
            self._down("connection", e)
            return False
        except psycopg.Error as e:
            b.tries += 1
            self._tables.clear()               # the failed transaction may have held DDL
            self._parts.clear()
            last = b.tries >= 2
            self._say(logging.WARNING, "%s: batch of %d rows refused%s: %s", self.name, b.rows,
                      "" if last else " (retrying it once)", " ".join(str(e).split()))
            with self._lock:
                self.errors["data"] += 1
                if not last:
                    return False
                self.rows_failed += b.rows
                self._settle[1] += b.rows
                self._waiting -= b.rows
            return True
        self._tables.update(b.tables)
        created = b.parts - self._parts
        self.partitions_created += len(created)
        self._parts |= b.parts
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

    def _rotate(self) -> None:
        """Drop partitions past retention_days, forget old batch ids."""
        import psycopg

        self._rotate_at = self._mono() + ROTATE_EVERY_S
        conn = self._conn
        try:
            with conn.transaction():
                conn.execute(f"DELETE FROM {H.BATCH_TABLE} "
                             f"WHERE committed_at < now() - interval '1 day'")
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
                        conn.execute(f"DROP TABLE IF EXISTS {n}")
                    self.partitions_dropped += 1
                    self._parts = {p for p in self._parts
                                   if H.partition_name(*p) != n}
        except (psycopg.OperationalError, psycopg.InterfaceError) as e:
            self._down("connection", e)
        except psycopg.Error as e:
            self.errors["data"] += 1
            self._say(logging.WARNING, "%s: retention: %s", self.name, " ".join(str(e).split()))
