""".hepraw files: records of a 4-byte big-endian length, then one HEP message."""
from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator

# ------------------------------------------------------------------------------------- .hepraw

def read_hepraw(path) -> Iterator[bytes]:
    """Records of a .hepraw file: a 4-byte big-endian length, then that many bytes. A truncated
    last record is ignored."""
    with open(path, "rb") as f:
        while True:
            head = f.read(4)
            if len(head) < 4:
                return
            (n,) = struct.unpack(">I", head)
            rec = f.read(n)
            if len(rec) < n:
                return
            yield rec


def write_hepraw(path, packets: Iterable[bytes]) -> int:
    """Write packets as .hepraw records; returns how many were written."""
    count = 0
    with open(path, "wb") as f:
        for p in packets:
            f.write(struct.pack(">I", len(p)))
            f.write(p)
            count += 1
    return count


# ------------------------------------------------------------------------------------- frames
