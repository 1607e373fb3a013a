"""A disk spool of one stream target: what cannot be sent now, kept in order on disk.

A spool is a directory of segment files `SEQ.spool` (SEQ: 20 decimal digits, so names sort in
order). A segment is a sequence of records, each `u32 length | u32 crc32(packet) | packet`
(big-endian). Invariants:
- Order: records leave (`take_segment`) in the order they entered (`append`), oldest segment
  first; `prepend` writes a segment that goes before every other one (the stream egress puts the
  unsent part of its memory queue there when it stops, since that is older than what it spooled).
- One segment is written at a time (the newest); it is closed once it reaches `segment_bytes`,
  or when it is the next one to be read, so a reader never sees a segment still growing.
- A segment handed out by `take_segment` stays on disk until `done(seq)`: a crash replays it.
  `set_progress(seq, n)` (the stream egress calls it when it stops) writes `SEQ.pos`, the count of
  records of that segment already sent, so a clean restart skips them; after a crash (kill -9)
  the segment is replayed from its start (duplicates of at most one segment, never a loss).
- A torn or corrupt record (a crash in the middle of a write, a bad disk block: length running
  past the file, or a checksum that does not match) ends its segment: it and whatever follows
  are cut off when the spool is opened (`torn` counts them), never replayed.
- `max_bytes` bounds the files' total size: an append that would pass it deletes the oldest
  segments not being replayed (their records counted in `dropped_records`); if nothing can be
  deleted the appended records themselves are refused (also counted, and returned to the caller).
- Durability: nothing is fsynced; a killed process loses nothing (the page cache keeps it), a
  kernel crash or power loss may lose the last seconds.
"""
from __future__ import annotations

import os
import re
import struct
import time
import zlib
from collections.abc import Iterable

SUFFIX = ".spool"
_NAME = re.compile(r"(\d{20})\.spool")
_HEAD = struct.Struct(">II")
# Sequence numbers start in the middle so that prepend can always go below the oldest.
_FIRST_SEQ = 10 ** 19


def encode_records(packets: Iterable[bytes | memoryview]) -> tuple[bytes, int]:
    """The spool form of `packets` and how many there are."""
    parts = []
    n = 0
    crc = zlib.crc32
    pack = _HEAD.pack
    for p in packets:
        parts.append(pack(len(p), crc(p)))
        parts.append(p)
        n += 1
    return b"".join(parts), n


def decode_records(data: bytes) -> tuple[list[bytes], int]:
    """(packets, bytes of whole valid records) of a segment's content: stops at the first torn
    or corrupt record."""
    out = []
    pos, n = 0, len(data)
    mv = memoryview(data)
    while n - pos >= 8:
        ln, crc = _HEAD.unpack_from(data, pos)
        end = pos + 8 + ln
        if end > n:
            break
        pkt = mv[pos + 8:end]
        if zlib.crc32(pkt) != crc:
            break
        out.append(bytes(pkt))
        pos = end
    return out, pos


class Spool:
    """The spool directory of one target; see the module docstring."""

    def __init__(self, path: str, max_bytes: int, segment_bytes: int = 4 << 20) -> None:
        if max_bytes <= 0:
            raise ValueError("spool max_bytes must be > 0")
        self.path = path
        self.max_bytes = max_bytes
        self.segment_bytes = max(64 << 10, min(segment_bytes, max_bytes // 4 or 1))
        self._segs: dict[int, list[int]] = {}   # seq -> [bytes, records, mtime]
        self._wfd = -1
        self._wseq = -1
        self._taken: set[int] = set()
        self._progress: dict[int, int] = {}
        self.bytes = 0
        self.records = 0
        self.dropped_records = 0
        self.dropped_segments = 0
        self.torn = 0
        self.written_records = 0
        self.replayed_records = 0
        self.errors = 0
        self.last_error = ""
        self._open()

    # ---------------------------------------------------------------------------- state

    def __len__(self) -> int:
        return self.records

    @property
    def empty(self) -> bool:
        return not self._segs

    def oldest_age_s(self, now: float | None = None) -> float:
        """Seconds since the oldest segment was last written (0 when empty)."""
        if not self._segs:
            return 0.0
        now = time.time() if now is None else now
        return max(0.0, now - self._segs[min(self._segs)][2])

    def _file(self, seq: int) -> str:
        return os.path.join(self.path, f"{seq:020d}{SUFFIX}")

    def _open(self) -> None:
        os.makedirs(self.path, mode=0o750, exist_ok=True)
        for entry in sorted(os.listdir(self.path)):
            m = _NAME.fullmatch(entry)
            if m is None:
                continue
            seq = int(m.group(1))
            path = os.path.join(self.path, entry)
            with open(path, "rb") as f:
                data = f.read()
            packets, good = decode_records(data)
            if good != len(data):
                self.torn += 1
                os.truncate(path, good)
            if not packets:
                os.unlink(path)
                self._drop_pos(seq)
                continue
            self._segs[seq] = [good, len(packets), os.stat(path).st_mtime]
            self.bytes += good
            self.records += len(packets)
            try:
                with open(path[:-len(SUFFIX)] + ".pos") as f:
                    self._progress[seq] = max(0, min(int(f.read().strip() or 0), len(packets)))
            except (OSError, ValueError):
                pass

    def _drop_pos(self, seq: int) -> None:
        self._progress.pop(seq, None)
        try:
            os.unlink(self._file(seq)[:-len(SUFFIX)] + ".pos")
        except FileNotFoundError:
            pass

    # ---------------------------------------------------------------------------- writing

    def append(self, packets: list) -> int:
        """Write `packets` at the end. Returns how many were refused (spool full and nothing
        older to delete, or a disk error): the caller counts them as lost."""
        if not packets:
            return 0
        blob, n = encode_records(packets)
        if not self._make_room(len(blob)):
            self.dropped_records += n
            return n
        try:
            if self._wfd < 0:
                self._wseq = (max(self._segs) + 1) if self._segs else _FIRST_SEQ
                self._wfd = os.open(self._file(self._wseq),
                                    os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
                self._segs[self._wseq] = [0, 0, time.time()]
            _write_all(self._wfd, blob)
        except OSError as e:
            self._error(e)
            self.dropped_records += n
            return n
        seg = self._segs[self._wseq]
        seg[0] += len(blob)
        seg[1] += n
        seg[2] = time.time()
        self.bytes += len(blob)
        self.records += n
        self.written_records += n
        if seg[0] >= self.segment_bytes:
            self._close_write()
        return 0

    def prepend(self, packets: list) -> int:
        """Write `packets` as a new oldest segment. Returns how many were refused."""
        if not packets:
            return 0
        blob, n = encode_records(packets)
        seq = (min(self._segs) - 1) if self._segs else _FIRST_SEQ
        if self.bytes + len(blob) > self.max_bytes and not self._make_room(len(blob)):
            self.dropped_records += n
            return n
        try:
            fd = os.open(self._file(seq), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         0o640)
            try:
                _write_all(fd, blob)
            finally:
                os.close(fd)
        except OSError as e:
            self._error(e)
            self.dropped_records += n
            return n
        self._segs[seq] = [len(blob), n, time.time()]
        self.bytes += len(blob)
        self.records += n
        self.written_records += n
        return 0

    def _make_room(self, need: int) -> bool:
        while self.bytes + need > self.max_bytes:
            victims = [s for s in sorted(self._segs) if s not in self._taken and s != self._wseq]
            if not victims:
                if self._wseq >= 0 and self._wseq not in self._taken and self._segs.get(
                        self._wseq, [0])[0] > 0:
                    self._close_write()
                    continue
                return False
            seq = victims[0]
            size, recs, _ = self._segs.pop(seq)
            try:
                os.unlink(self._file(seq))
            except OSError as e:
                self._error(e)
            self._drop_pos(seq)
            self.bytes -= size
            self.records -= recs
            self.dropped_records += recs - self._progress.get(seq, 0)
            self.dropped_segments += 1
        return True

    def _close_write(self) -> None:
        if self._wfd >= 0:
            os.close(self._wfd)
        self._wfd = -1
        self._wseq = -1

    # ---------------------------------------------------------------------------- reading

    def take_segment(self) -> tuple[int, list[bytes]] | None:
        """The oldest segment not taken yet: (seq, its packets not sent before). It stays on
        disk until done(seq). None when there is none."""
        free = [s for s in sorted(self._segs) if s not in self._taken]
        if not free:
            return None
        seq = free[0]
        if seq == self._wseq:
            self._close_write()
        try:
            with open(self._file(seq), "rb") as f:
                data = f.read()
        except OSError as e:
            self._error(e)
            self._forget(seq)
            return None
        packets, good = decode_records(data)
        if good != len(data):
            self.torn += 1
        skip = self._progress.get(seq, 0)
        self._taken.add(seq)
        return seq, packets[skip:]

    def set_progress(self, seq: int, sent: int) -> None:
        """Record that the first `sent` records (counted from the segment's start) were sent."""
        if seq not in self._segs:
            return
        self._progress[seq] = sent
        try:
            with open(self._file(seq)[:-len(SUFFIX)] + ".pos", "w") as f:
                f.write(str(sent))
        except OSError as e:
            self._error(e)

    def progress(self, seq: int) -> int:
        return self._progress.get(seq, 0)

    def release(self, seq: int) -> None:
        """Give a taken segment back (not sent yet): it will be taken again."""
        self._taken.discard(seq)

    def done(self, seq: int) -> None:
        """Every record of taken segment `seq` was sent: delete it."""
        self._taken.discard(seq)
        if seq in self._segs:
            self.replayed_records += self._segs[seq][1] - self._progress.get(seq, 0)
        self._forget(seq)

    def _forget(self, seq: int) -> None:
        seg = self._segs.pop(seq, None)
        if seg is not None:
            self.bytes -= seg[0]
            self.records -= seg[1]
        try:
            os.unlink(self._file(seq))
        except FileNotFoundError:
            pass
        except OSError as e:
            self._error(e)
        self._drop_pos(seq)

    def close(self) -> None:
        self._close_write()

    def _error(self, e: OSError) -> None:
        self.errors += 1
        self.last_error = f"{e.filename or self.path}: {e.strerror or e}"


def _write_all(fd: int, data: bytes) -> None:
    mv = memoryview(data)
    while mv:
        n = os.write(fd, mv)
        mv = mv[n:]
