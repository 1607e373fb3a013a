"""The `pcap` destination: rotating pcap files of the packets the HEP messages describe.

Wireshark, tshark and sngrep open these as if they had been captured on the wire: each HEP
message becomes the packet it carries, rebuilt from its chunks (hepfast.egress._store
PcapRenderer, whose twin is hepfast.tools.capture.writer.build_frame): Ethernet, IPv4 or IPv6 by
the HEP family, TCP when the HEP IP protocol says TCP (flags ACK|PSH, sequence numbers running
per flow within a file, from 1) and UDP otherwise, the original addresses, ports and capture
time. The payload is written as it came: SIP as sent, and for proto types that have no wire
form of their own here (RTCP as JSON, logs) the agent's JSON or text over UDP with the HEP
addresses. HEP carries microseconds, so files are microsecond pcap (magic a1b2c3d4, little
endian, Ethernet). With `encapsulate = true` the file holds the HEP messages themselves, over
UDP from and to port 9060 between the HEP addresses, for those who want the chunks too.

Files, rotation, `keep`, crash recovery and error handling are the file destination's
(hepfast.egress.file: `NAME-YYYYmmddTHHMMSSZ-SEQ.pcap`, written as `.part` and renamed when
finished; a .part left by a crash is cut back to its last whole pcap record); only the record
format differs. One batch is rendered in C and written with one write() call.
"""
from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

from hepfast.egress.base import register
from hepfast.egress.file import FileEgress

if TYPE_CHECKING:
    from hepfast.egress._ring import Batch

PCAP_HEADER_BYTES = 24
PCAP_RECORD_HEADER_BYTES = 16


def _cut_to_whole_pcap_records(path: str) -> int:
    """Truncate a pcap file after its last whole record; 0 when not even the header is whole."""
    size = os.path.getsize(path)
    if size < PCAP_HEADER_BYTES:
        os.truncate(path, 0)
        return 0
    good = PCAP_HEADER_BYTES
    with open(path, "rb") as f:
        order = "little" if f.read(4) in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else "big"
        f.seek(good)
        while True:
            head = f.read(PCAP_RECORD_HEADER_BYTES)
            if len(head) < PCAP_RECORD_HEADER_BYTES:
                break
            end = good + PCAP_RECORD_HEADER_BYTES + int.from_bytes(head[8:12], order)
            if end > size:
                break
            good = end
            f.seek(good)
    if good != size:
        os.truncate(path, good)
    return good if good > PCAP_HEADER_BYTES else 0


@register("pcap")
class PcapEgress(FileEgress):
    """Rotating pcap files in directory `path`; see the module docstring."""

    suffix = ".pcap"
    _name_tail = re.compile(r"-(\d{8}T\d{6}Z)-(\d+)\.pcap(\.part)?$")

    def __init__(self, name: str, path, rotate_bytes: int = 1 << 30,
                 rotate_seconds: float = 3600.0, keep: int | None = 24, *,
                 encapsulate: bool = False, **kw) -> None:
        super().__init__(name, path, rotate_bytes, rotate_seconds, keep, **kw)
        from hepfast.egress._store import PcapRenderer, pcap_header

        self.encapsulate = bool(encapsulate)
        self._renderer = PcapRenderer(encapsulate=self.encapsulate)
        self._header = pcap_header()
        self.records_skipped = 0

    @classmethod
    def from_settings(cls, name: str, settings: dict) -> PcapEgress:
        keep = int(settings.get("keep", 0))
        return cls(name, settings["path"], rotate_bytes=int(settings["rotate_bytes"]),
                   rotate_seconds=float(settings["rotate_seconds"]), keep=keep or None,
                   encapsulate=bool(settings.get("encapsulate", False)))

    def _recover_part(self, path: str) -> int:
        return _cut_to_whole_pcap_records(path)

    def send_batch(self, batch: Batch) -> int:
        count = batch.count
        if count == 0:
            return 0
        if self._fd >= 0 and self._due_by_time():
            self._finish()
        if not self._ensure_file():
            self.records_failed += count
            return 0
        fresh = self._file_bytes == 0
        if fresh:
            self._renderer.reset()
        data, done, skipped = self._renderer.render(batch.span)
        self.records_skipped += skipped
        self.records_failed += skipped
        view = memoryview(self._header + data if fresh else data)
        try:
            pos = 0
            while pos < len(view):
                pos += os.write(self._fd, view[pos:])
        except OSError as e:
            self.records_failed += done            # the file is cut back to before this batch
            self._fail(e)
            return 0
        self._account(done, len(view))
        if self.rotate_bytes and self._file_bytes >= self.rotate_bytes:
            self._finish()
        return done

    def metrics(self) -> dict[str, float]:
        return {**super().metrics(), "records_skipped_total": float(self.records_skipped)}
