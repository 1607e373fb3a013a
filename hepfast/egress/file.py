"""The `file` destination: rotating .hepraw files, written straight from the rings.

Files live in one directory (created with mode 0o750 when missing) and are named
`NAME-YYYYmmddTHHMMSSZ-SEQ.hepraw` (UTC time the file was opened, SEQ a counter that continues
across restarts), so names sort in time order. Invariants:
- The file being written is `<final name>.part`; it is renamed to its final name when rotated
  or closed, so anything matching `*.hepraw` is a finished file that a reader can take whole.
  A file left as .part by a crash is cut back to its last whole record and renamed by the next
  `open()`.
- Records are written exactly as the ring holds them (4-byte big-endian length, then the
  packet): `hepfast.tools.capture.read_hepraw` reads them back. Nothing is buffered in Python;
  each batch is one or a few writev calls (Batch.write_hepraw).
- Rotation: once a file reaches `rotate_bytes` (checked after each batch, so a file may pass it
  by up to one batch) or is `rotate_seconds` old (checked on each batch and on each idle
  `flush()`); 0 disables either. A file is opened only when there is something to write, so a
  quiet destination leaves no empty files. After each rotation at most `keep` finished files of
  this destination are kept, the oldest deleted (0 or None keeps everything, as in the config).
- Errors (disk full, permissions, a missing mount): the error text becomes `health()` detail,
  the file is cut back to its last whole record and finished, the records not written are
  counted as failed (never as forwarded), and opening a new file is retried at most every
  `retry_s` seconds, also from idle `flush()`, so health recovers without traffic. Nothing is
  raised to the egress loop.
- With `fsync=True` a file and its directory are fsynced when the file is finished (not per
  batch).
"""
from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from hepfast.egress.base import Egress, register

if TYPE_CHECKING:
    from hepfast.egress._ring import Batch

log = logging.getLogger(__name__)

SUFFIX = ".hepraw"
PART = ".part"
DIR_MODE = 0o750
FILE_MODE = 0o640
_NAME_TAIL = re.compile(r"-(\d{8}T\d{6}Z)-(\d+)\.hepraw(\.part)?$")


def _cut_to_whole_records(path: str) -> int:
    """Truncate a .hepraw file after its last whole record; returns the new length."""
    size = os.path.getsize(path)
    good = 0
    with open(path, "rb") as f:
        while True:
            head = f.read(4)
            if len(head) < 4:
                break
            end = good + 4 + int.from_bytes(head, "big")
            if end > size:
                break
            good = end
            f.seek(good)
    if good != size:
        os.truncate(path, good)
    return good


@register("file")
class FileEgress(Egress):
    """Rotating .hepraw files in directory `path`; see the module docstring. Subclasses that
    write another format over the same rotation (hepfast.egress.pcap) set `suffix` and
    `_name_tail` and override `_recover_part` and `send_batch`."""

    suffix = SUFFIX
    _name_tail = _NAME_TAIL

    def __init__(self, name: str, path: str | os.PathLike[str], rotate_bytes: int = 1 << 30,
                 rotate_seconds: float = 3600.0, keep: int | None = 24, *,
                 fsync: bool = False, retry_s: float = 1.0,
                 clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if not name or "/" in name or name.startswith("."):
            raise ValueError(f"file egress name {name!r}: non-empty, no '/', no leading '.'")
        if rotate_bytes < 0 or rotate_seconds < 0:
            raise ValueError("rotate_bytes and rotate_seconds must be >= 0 (0: no rotation)")
        if keep is not None and keep < 0:
            raise ValueError("keep must be >= 0 (0 or None: keep every file)")
        super().__init__(name)
        self.path = os.fspath(path)
        self.rotate_bytes = rotate_bytes
        self.rotate_seconds = rotate_seconds
        self.keep = keep
        self.fsync = fsync
        self.retry_s = retry_s
        self._clock = clock
        self._monotonic = monotonic
        self._fd = -1
        self._part = ""
        self._opened_at = 0.0
        self._file_bytes = 0
        self._seq = 0
        self._up = True
        self._detail = ""
        self._retry_at = 0.0
        self._closed = False
        self.files_written = 0
        self.files_deleted = 0
        self.files_recovered = 0
        self.bytes_written = 0
        self.records_written = 0
        self.records_failed = 0
        self.write_errors = 0

    @classmethod
    def from_settings(cls, name: str, settings: dict) -> FileEgress:
        keep = int(settings.get("keep", 0))
        return cls(name, settings["path"], rotate_bytes=int(settings["rotate_bytes"]),
                   rotate_seconds=float(settings["rotate_seconds"]), keep=keep or None)

    # ---------------------------------------------------------------------------- contract

    def open(self) -> None:
        self._closed = False
        try:
            self._prepare_dir()
        except OSError as e:
            self._fail(e)

    def send_batch(self, batch: Batch) -> int:
        count = batch.count
        if count == 0:
            return 0
        if self._fd >= 0 and self._due_by_time():
            self._finish()
        if not self._ensure_file():
            self.records_failed += count
            return 0
        try:
            records, nbytes = batch.write_hepraw(self._fd)
        except OSError as e:
            records = int(getattr(e, "records", 0))
            self._account(records, int(getattr(e, "bytes", 0)))
            self.records_failed += count - records
            self._fail(e)
            return records
        self._account(records, nbytes)
        if self.rotate_bytes and self._file_bytes >= self.rotate_bytes:
            self._finish()
        return records

    def flush(self) -> None:
        if self._fd >= 0:
            if self._due_by_time():
                self._finish()
        elif not self._up and not self._closed:
            self._ensure_file()                     # probe, so health recovers without traffic

    def health(self) -> tuple[bool, str]:
        if not self._up:
            return False, self._detail
        if self._fd >= 0:
            return True, f"writing {self._part}"
        return True, f"ready in {self.path}"

    def close(self) -> None:
        if self._fd >= 0:
            self._finish()
        self._closed = True

    def metrics(self) -> dict[str, float]:
        return {
            "up": 1.0 if self._up else 0.0,
            "files_written_total": float(self.files_written),
            "files_deleted_total": float(self.files_deleted),
            "files_recovered_total": float(self.files_recovered),
            "bytes_written_total": float(self.bytes_written),
            "records_written_total": float(self.records_written),
            "records_failed_total": float(self.records_failed),
            "write_errors_total": float(self.write_errors),
            "current_file_bytes": float(self._file_bytes if self._fd >= 0 else 0),
        }

    # ---------------------------------------------------------------------------- files

    def finished_files(self) -> list[str]:
        """Paths of this destination's finished files, oldest first."""
        return [os.path.join(self.path, n) for _, n in self._listing(part=False)]

    @property
    def current_file(self) -> str | None:
        """Path of the .part file being written, if any."""
        return self._part if self._fd >= 0 else None

    def _listing(self, part: bool) -> list[tuple[tuple[str, int], str]]:
        out = []
        prefix = self.name + "-"
        for entry in os.listdir(self.path):
            if not entry.startswith(prefix):
                continue
            m = self._name_tail.fullmatch(entry, len(self.name))
            if m is None or bool(m.group(3)) != part:
                continue
            out.append(((m.group(1), int(m.group(2))), entry))
        out.sort()
        return out

    def _prepare_dir(self) -> None:
        """Create the directory, finish .part files left by a crash, continue SEQ."""
        if not os.path.isdir(self.path):
            os.makedirs(self.path, mode=DIR_MODE, exist_ok=True)
            os.chmod(self.path, DIR_MODE)
        for key, entry in self._listing(part=True):
            part = os.path.join(self.path, entry)
            if self._recover_part(part) == 0:
                os.unlink(part)
            else:
                os.rename(part, part[:-len(PART)])
                self.files_recovered += 1
            self._seq = max(self._seq, key[1] + 1)
        for key, _ in self._listing(part=False):
            self._seq = max(self._seq, key[1] + 1)
        self._prune()

    def _recover_part(self, path: str) -> int:
        """Cut a .part file left by a crash back to its last whole record; its new length."""
        return _cut_to_whole_records(path)

    def _ensure_file(self) -> bool:
        if self._fd >= 0:
            return True
        if not self._up and self._monotonic() < self._retry_at:
            return False
        try:
            if not self._up:
                self._prepare_dir()
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
            while True:
                final = os.path.join(self.path,
                                     f"{self.name}-{stamp}-{self._seq:06d}{self.suffix}")
                self._seq += 1
                if os.path.exists(final):
                    continue
                try:
                    fd = os.open(final + PART,
                                 os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
                except FileExistsError:
                    continue
                break
        except OSError as e:
            self._fail(e)
            return False
        self._fd = fd
        self._part = final + PART
        self._opened_at = self._monotonic()
        self._file_bytes = 0
        if not self._up:
            log.info("file egress %s: writing again (%s)", self.name, self._part)
            self._up = True
            self._detail = ""
        return True

    def _account(self, records: int, nbytes: int) -> None:
        self.records_written += records
        self.bytes_written += nbytes
        self._file_bytes += nbytes

    def _due_by_time(self) -> bool:
        return bool(self.rotate_seconds) and \
            self._monotonic() - self._opened_at >= self.rotate_seconds

    def _finish(self) -> None:
        """Close the current file and give it its final name (an empty one is removed)."""
        fd, part, size = self._fd, self._part, self._file_bytes
        self._fd = -1
        self._file_bytes = 0
        try:
            if self.fsync and size:
                os.fsync(fd)
        except OSError as e:
            self._fail(e)
        finally:
            os.close(fd)
        try:
            if size == 0:
                os.unlink(part)
                return
            os.rename(part, part[:-len(PART)])
            if self.fsync:
                dfd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
        except OSError as e:
            self._fail(e)
            return
        self.files_written += 1
        self._prune()

    def _prune(self) -> None:
        if not self.keep:
            return
        try:
            finished = self._listing(part=False)
        except OSError as e:
            log.warning("file egress %s: cannot list %s: %s", self.name, self.path,
                        e.strerror or e)
            return
        for _, entry in finished[:max(0, len(finished) - self.keep)]:
            try:
                os.unlink(os.path.join(self.path, entry))
            except FileNotFoundError:
                pass
            except OSError as e:
                log.warning("file egress %s: cannot delete old file %s: %s",
                            self.name, entry, e.strerror or e)
                return
            self.files_deleted += 1

    def _fail(self, e: OSError) -> None:
        """Go down with the error text; cut the current file back to its last whole record and
        finish it; retry after retry_s."""
        self.write_errors += 1
        detail = f"{self.path}: {e.strerror or e}"
        if e.filename:
            detail = f"{e.filename}: {e.strerror or e}"
        if self._up or detail != self._detail:
            log.warning("file egress %s: %s", self.name, detail)
        self._up = False
        self._detail = detail
        self._retry_at = self._monotonic() + self.retry_s
        if self._fd >= 0:
            try:
                os.ftruncate(self._fd, self._file_bytes)
            except OSError:
                pass                                # read_hepraw ignores a cut last record
            self._finish()
