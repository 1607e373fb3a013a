"""The `parquet` destination: a columnar store of every packet, partitioned by date and hour.

DuckDB, pandas, Spark and ClickHouse read the directory directly (docs/storage.md: the schema
and queries). Layout: `PATH/date=YYYY-MM-DD/hour=HH/NAME-YYYYmmddTHHMMSSZ-SEQ.parquet`, the
partition chosen by the packet's capture time (UTC; the arrival time when the packet has none),
one file set for every proto type (`proto_type` is a column). Invariants:
- One row per packet accepted; the columns are SCHEMA's, filled per ring batch in C
  (hepfast.egress._store.decode_columns: the switch's parser and SIP scanner), with no Python
  object per record.
- A file is written as `<final name>.part` and renamed to its final name only once it is
  complete (footer written, closed), so every `*.parquet` under PATH is a whole file a reader
  can take; a .part left by a crash has no footer, cannot be read, and is deleted by the next
  `open()` (its rows are lost: at most one file's worth per partition open at the time).
- Row groups (zstd) are written when `row_group_rows` rows are pending for a partition, or
  when rows have waited `flush_seconds` (checked per batch and on idle flush); memory is
  bounded by that. A file is finished past `rotate_bytes` or `rotate_seconds`, when a packet
  of another hour opens more than MAX_OPEN partitions, and at close.
- Retention (after each finished file, and at least every RETENTION_CHECK_S on idle): finished
  files older than `retention_days` (by modification time) are deleted, then the oldest until
  the store holds at most `retention_bytes`; empty partition folders go too. 0 disables either.
- Errors (disk full, permissions): health goes down with the error text, the batch and the
  rows pending in the failed file count as failed, the .part is deleted, and writing is retried
  at most every `retry_s` seconds. Nothing is raised to the egress loop.
"""
from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from hepfast.egress.base import Egress, register

if TYPE_CHECKING:
    from hepfast.egress._ring import Batch

log = logging.getLogger(__name__)

SUFFIX = ".parquet"
PART = ".part"
DIR_MODE = 0o750
MAX_OPEN = 4
RETENTION_CHECK_S = 60.0
_FILE_RE = re.compile(r".+-\d{8}T\d{6}Z-\d+\.parquet$")
_HOUR_US = 3_600_000_000


def _schema():
    import pyarrow as pa

    return pa.schema([
        ("ts", pa.timestamp("us", tz="UTC")),
        ("hep_version", pa.uint8()),
        ("proto_type", pa.uint8()),
        ("capture_id", pa.uint32()),
        ("node_name", pa.string()),
        ("family", pa.uint8()),
        ("transport", pa.string()),
        ("src_ip", pa.string()),
        ("src_port", pa.uint16()),
        ("dst_ip", pa.string()),
        ("dst_port", pa.uint16()),
        ("correlation_id", pa.string()),
        ("sip_method", pa.string()),
        ("sip_status", pa.uint16()),
        ("call_id", pa.string()),
        ("from_user", pa.string()),
        ("to_user", pa.string()),
        ("ruri_user", pa.string()),
        ("ruri_domain", pa.string()),
        ("cseq", pa.uint32()),
        ("cseq_method", pa.string()),
        ("payload", pa.binary()),
    ])


# Writer settings, measured (bench/storage_bench.py): zstd level 1 is within 2% of level 3's size
# at half its cost; dictionary pages only where values repeat (addresses, methods, users, ids);
# min/max statistics on the columns queries filter on by range (time, type, ports, status).
ZSTD_LEVEL = 1
DICTIONARY_COLUMNS = ["hep_version", "proto_type", "capture_id", "node_name", "family",
                      "transport", "src_ip", "dst_ip", "sip_method", "from_user", "to_user",
                      "ruri_user", "ruri_domain", "cseq_method"]
STATISTICS_COLUMNS = ["ts", "proto_type", "capture_id", "src_port", "dst_port", "sip_status",
                      "cseq"]

# Fixed-width columns that may be null, and the mask decode_columns gives for each.
_NULLABLE = {"family": "family_valid", "sip_status": "sip_status_valid", "cseq": "cseq_valid"}


def batch_table(fixed: dict, text: dict, n: int, schema):
    """A pyarrow Table (SCHEMA) from decode_columns' arrays, without a Python object per row."""
    import pyarrow as pa

    arrays = []
    for field in schema:
        name = field.name
        if name == "ts":
            arrays.append(pa.Array.from_buffers(field.type, n,
                                                [None, pa.py_buffer(fixed["ts_us"])]))
        elif name in text:
            off, data, valid = text[name]
            nulls = int(n - np.count_nonzero(valid))
            bitmap = pa.py_buffer(np.packbits(valid, bitorder="little")) if nulls else None
            arrays.append(pa.Array.from_buffers(field.type, n, [bitmap, pa.py_buffer(off),
                                                                pa.py_buffer(data)],
                                                null_count=nulls))
        else:
            mask = fixed[_NULLABLE[name]] == 0 if name in _NULLABLE else None
            arrays.append(pa.array(fixed[name], type=field.type, mask=mask))
    return pa.Table.from_arrays(arrays, schema=schema)


class _Part:
    """The file being written for one hour partition."""

    __slots__ = ("hour", "final", "part", "writer", "pending", "pending_rows", "rows",
                 "opened_at", "waiting_since")

    def __init__(self, hour: int, final: str, writer, now: float) -> None:
        self.hour = hour
        self.final = final
        self.part = final + PART
        self.writer = writer
        self.pending: list = []
        self.pending_rows = 0
        self.rows = 0
        self.opened_at = now
        self.waiting_since = 0.0


@register("parquet")
class ParquetEgress(Egress):
    """Parquet files under `path`, partitioned by date and hour; see the module docstring."""

    def __init__(self, name: str, path: str | os.PathLike[str], rotate_bytes: int = 1 << 30,
                 rotate_seconds: float = 3600.0, *, row_group_rows: int = 65536,
                 flush_seconds: float = 5.0, retention_days: float = 0.0,
                 retention_bytes: int = 0, compression: str = "zstd", retry_s: float = 1.0,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"parquet egress name {name!r}: non-empty, no '/', no leading '.'")
        if row_group_rows < 1 or flush_seconds <= 0:
            raise ValueError("row_group_rows must be >= 1 and flush_seconds > 0")
        super().__init__(name)
        import pyarrow.parquet  # noqa: F401 - fail at start, not at the first packet

        self.path = os.fspath(path)
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = rotate_seconds
        self.row_group_rows = row_group_rows
        self.flush_seconds = flush_seconds
        self.retention_days = retention_days
        self.retention_bytes = retention_bytes
        self.compression = compression
        self.retry_s = retry_s
        self._clock = clock
        self._monotonic = monotonic
        self.schema = _schema()
        self._parts: dict[int, _Part] = {}
        self._seq = 0
        self._up = True
        self._detail = ""
        self._retry_at = 0.0
        self._retention_at = 0.0
        self.files_written = 0
        self.files_deleted = 0
        self.files_discarded = 0
        self.bytes_written = 0
        self.records_written = 0
        self.records_failed = 0
        self.records_skipped = 0
        self.row_groups_written = 0
        self.write_errors = 0

    @classmethod
    def from_settings(cls, name: str, settings: dict) -> ParquetEgress:
        return cls(name, settings["path"], rotate_bytes=int(settings["rotate_bytes"]),
                   rotate_seconds=float(settings["rotate_seconds"]),
                   row_group_rows=int(settings["row_group_rows"]),
                   flush_seconds=float(settings["flush_seconds"]),
                   retention_days=float(settings["retention_days"]),
                   retention_bytes=int(settings["retention_bytes"]))

    # ---------------------------------------------------------------------------- contract

    def open(self) -> None:
        try:
            self._prepare_dir()
        except OSError as e:
            self._fail(e)

    def send_batch(self, batch: Batch) -> int:
        from hepfast.egress._store import decode_columns

        count = batch.count
        if count == 0:
            return 0
        if not self._up:
            if self._monotonic() < self._retry_at:
                self.records_failed += count
                return 0
            try:
                self._prepare_dir()
            except OSError as e:
                self._fail(e)
                self.records_failed += count
                return 0
            self._recovered()
        n, skipped, fixed, text = decode_columns(batch.span, count)
        self.records_skipped += skipped
        self.records_failed += skipped
        if n == 0:
            return 0
        table = batch_table(fixed, text, n, self.schema)
        ts = fixed["ts_us"]
        if not ts.all():                             # no capture time: the arrival time
            ts = np.where(ts == 0, int(self._clock() * 1e6), ts)
        hours = ts // _HOUR_US
        first, last = int(hours.min()), int(hours.max())
        try:
            if first == last:
                self._add(first, table)
            else:
                for h in np.unique(hours):
                    self._add(int(h), table.filter(hours == h))
        except OSError as e:
            self.records_failed += n
            self._fail(e)
            return 0
        return n

    def flush(self) -> None:
        now = self._monotonic()
        try:
            for part in list(self._parts.values()):
                if part.pending_rows and now - part.waiting_since >= self.flush_seconds:
                    self._write_group(part)
                if self.rotate_seconds and now - part.opened_at >= self.rotate_seconds:
                    self._finish(part)
        except OSError as e:
            self._fail(e)
        if not self._up and now >= self._retry_at:
            try:
                self._prepare_dir()
                self._recovered()
            except OSError as e:
                self._fail(e)
        elif now >= self._retention_at:
            self._retention()

    def health(self) -> tuple[bool, str]:
        if not self._up:
            return False, self._detail
        return True, f"writing {len(self._parts)} partition(s) in {self.path}"

    def close(self) -> None:
        try:
            for part in list(self._parts.values()):
                self._finish(part)
        except OSError as e:
            self._fail(e)

    def metrics(self) -> dict[str, float]:
        return {
            "up": 1.0 if self._up else 0.0,
            "files_written_total": float(self.files_written),
            "files_deleted_total": float(self.files_deleted),
            "files_discarded_total": float(self.files_discarded),
            "bytes_written_total": float(self.bytes_written),
            "records_written_total": float(self.records_written),
            "records_failed_total": float(self.records_failed),
            "records_skipped_total": float(self.records_skipped),
            "row_groups_written_total": float(self.row_groups_written),
            "write_errors_total": float(self.write_errors),
            "pending_rows": float(sum(p.pending_rows for p in self._parts.values())),
        }

    # ---------------------------------------------------------------------------- files

    def finished_files(self) -> list[str]:
        """Paths of the finished files under `path`, sorted by name within partitions."""
        return sorted(p for p, _st in self._walk())

    def _walk(self):
        for root, _dirs, files in os.walk(self.path):
            for f in files:
                if _FILE_RE.fullmatch(f):
                    p = os.path.join(root, f)
                    try:
                        yield p, os.stat(p)
                    except FileNotFoundError:
                        continue

    def _prepare_dir(self) -> None:
        """Create the directory; delete .part files a crash left (they have no footer)."""
        if not os.path.isdir(self.path):
            os.makedirs(self.path, mode=DIR_MODE, exist_ok=True)
            os.chmod(self.path, DIR_MODE)
        open_parts = {p.part for p in self._parts.values()}
        for root, _dirs, files in os.walk(self.path):
            for f in files:
                if f.endswith(SUFFIX + PART) and f.startswith(self.name + "-"):
                    p = os.path.join(root, f)
                    if p not in open_parts:
                        os.unlink(p)
                        self.files_discarded += 1
        self._retention()

    def _recovered(self) -> None:
        if not self._up:
            log.info("parquet egress %s: writing again in %s", self.name, self.path)
        self._up = True
        self._detail = ""

    def _add(self, hour: int, table) -> None:
        part = self._parts.get(hour)
        if part is None:
            part = self._open_part(hour)
        if not part.pending_rows:
            part.waiting_since = self._monotonic()
        part.pending.append(table)
        part.pending_rows += table.num_rows
        if part.pending_rows >= self.row_group_rows or \
                self._monotonic() - part.waiting_since >= self.flush_seconds:
            self._write_group(part)
        if (self.rotate_bytes and part.rows and self._size(part) >= self.rotate_bytes) or \
                (self.rotate_seconds and
                 self._monotonic() - part.opened_at >= self.rotate_seconds):
            self._finish(part)

    def _open_part(self, hour: int) -> _Part:
        import pyarrow.parquet as pq

        while len(self._parts) >= MAX_OPEN:
            self._finish(min(self._parts.values(), key=lambda p: p.opened_at))
        t = time.gmtime(hour * 3600)
        folder = os.path.join(self.path, time.strftime("date=%Y-%m-%d", t),
                              time.strftime("hour=%H", t))
        os.makedirs(folder, mode=DIR_MODE, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        while True:
            final = os.path.join(folder, f"{self.name}-{stamp}-{self._seq:06d}{SUFFIX}")
            self._seq += 1
            if not os.path.exists(final) and not os.path.exists(final + PART):
                break
        writer = pq.ParquetWriter(final + PART, self.schema, compression=self.compression,
                                  compression_level=ZSTD_LEVEL if self.compression == "zstd"
                                  else None, use_dictionary=DICTIONARY_COLUMNS,
                                  write_statistics=STATISTICS_COLUMNS)
        part = _Part(hour, final, writer, self._monotonic())
        self._parts[hour] = part
        return part

    def _size(self, part: _Part) -> int:
        try:
            return os.path.getsize(part.part)
        except OSError:
            return 0

    def _write_group(self, part: _Part) -> None:
        import pyarrow as pa

        if not part.pending_rows:
            return
        table = part.pending[0] if len(part.pending) == 1 else pa.concat_tables(part.pending)
        rows = part.pending_rows
        part.pending = []
        part.pending_rows = 0
        try:
            part.writer.write_table(table, row_group_size=rows)
        except OSError:
            self.records_failed += rows
            raise
        part.rows += rows
        self.records_written += rows
        self.row_groups_written += 1

    def _finish(self, part: _Part) -> None:
        """Write what is pending, the footer, and give the file its final name."""
        del self._parts[part.hour]
        try:
            self._write_group(part)
            part.writer.close()
        except OSError:
            self._discard(part)
            raise
        if part.rows == 0:
            os.unlink(part.part)
            return
        size = self._size(part)
        os.rename(part.part, part.final)
        self.bytes_written += size
        self.files_written += 1
        self._retention()

    def _discard(self, part: _Part) -> None:
        self._parts.pop(part.hour, None)
        try:
            part.writer.close()
        except Exception:  # noqa: BLE001 - a broken writer on a failed disk: drop it anyway
            pass
        try:
            os.unlink(part.part)
        except OSError:
            pass
        self.records_failed += part.pending_rows
        self.files_discarded += 1

    def _retention(self) -> None:
        self._retention_at = self._monotonic() + RETENTION_CHECK_S
        if not (self.retention_days or self.retention_bytes):
            return
        try:
            files = sorted(self._walk(), key=lambda e: (e[1].st_mtime, e[0]))
        except OSError as e:
            log.warning("parquet egress %s: cannot list %s: %s", self.name, self.path, e)
            return
        keep = []
        cutoff = self._clock() - self.retention_days * 86400
        for p, st in files:
            if self.retention_days and st.st_mtime < cutoff:
                self._delete(p)
            else:
                keep.append((p, st.st_size))
        if self.retention_bytes:
            total = sum(s for _, s in keep)
            for p, s in keep:
                if total <= self.retention_bytes:
                    break
                self._delete(p)
                total -= s

    def _delete(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as e:
            log.warning("parquet egress %s: cannot delete %s: %s", self.name, path, e)
            return
        self.files_deleted += 1
        folder = os.path.dirname(path)
        for _ in range(2):                           # hour=HH, then date=YYYY-MM-DD
            if os.path.samefile(folder, self.path):
                break
            try:
                os.rmdir(folder)
            except OSError:
                break
            folder = os.path.dirname(folder)

    def _fail(self, e: OSError) -> None:
        self.write_errors += 1
        detail = f"{e.filename or self.path}: {e.strerror or e}"
        if self._up or detail != self._detail:
            log.warning("parquet egress %s: %s", self.name, detail)
        self._up = False
        self._detail = detail
        self._retry_at = self._monotonic() + self.retry_s
        for part in list(self._parts.values()):
            self._discard(part)
