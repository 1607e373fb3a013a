"""Per-worker counters in one shared-memory block (the layout the data plane writes).

The supervisor maps an anonymous shared mmap before forking; each worker owns one row of uint64
(no atomics: one writer per row) and the control plane sums the rows at scrape time. A replaced
worker takes over its predecessor's row, so totals never go backwards (Prometheus counters).

Rule and target counters are indexed by *slots*, not positions: a name keeps its slot across
reloads (SlotMap), so a reload that reorders rules does not move counts between rules.
"""
from __future__ import annotations

import mmap
import os

import numpy as np

from hepfast.constants import (  # noqa: F401 - the layout, re-exported for the control plane
    H_BATCHES,
    H_COPIES,
    H_DATAGRAMS,
    H_DRAIN_LEFT,
    H_GENERATION,
    H_HEARTBEAT,
    H_PID,
    H_REFUSED,
    H_RESTARTS,
    H_ROUTED,
    H_STATE,
    HEADER,
    MAX_DEST_SLOTS,
    MAX_LISTENERS,
    MAX_RULE_SLOTS,
    MAX_TARGET_SLOTS,
    N_CONN,
    N_DROP,
    N_GUARD,
    N_INVALID,
    OFF_CONN,
    OFF_DEST_DROP,
    OFF_DROP,
    OFF_FORWARDED,
    OFF_GUARD,
    OFF_INVALID,
    OFF_LAST_ERR,
    OFF_LAST_ERRNO,
    OFF_LAST_OK,
    OFF_OVERFLOW,
    OFF_QUEUED,
    OFF_RECEIVED,
    OFF_RULE,
    OFF_SEND_ERR,
    STRIDE,
)

# Compatibility names used by the control plane.
MAX_RULES = MAX_RULE_SLOTS
MAX_TARGETS = MAX_TARGET_SLOTS


class Counters:
    """The shared block: `rows` is a (rows, STRIDE) uint64 array over a MAP_SHARED mapping, of
    an anonymous mmap (tests, tools) or of the run directory's `counters` file (the switch: the
    supervisor creates it, workers and egress processes map it)."""

    def __init__(self, rows: int, *, path: str | None = None, create: bool = False):
        if path is None:
            self._mm = mmap.mmap(-1, max(1, rows) * STRIDE * 8,
                                 flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        else:
            fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o600)
            try:
                if create:
                    os.ftruncate(fd, max(1, rows) * STRIDE * 8)
                self._mm = mmap.mmap(fd, 0, flags=mmap.MAP_SHARED)
            finally:
                os.close(fd)
        self.rows = np.frombuffer(self._mm, dtype=np.uint64).reshape(-1, STRIDE)
        self.workers = self.rows.shape[0]

    def row(self, i: int) -> np.ndarray:
        return self.rows[i]

    def total(self) -> np.ndarray:
        return self.rows.sum(axis=0, dtype=np.uint64)

    def received(self, t=None):
        t = self.total() if t is None else t
        return t[OFF_RECEIVED:OFF_INVALID].reshape(MAX_LISTENERS, 256)

    def invalid(self, t=None):
        t = self.total() if t is None else t
        return t[OFF_INVALID:OFF_OVERFLOW].reshape(MAX_LISTENERS, N_INVALID)

    def snapshot(self) -> dict:
        """Totals as plain ints, for tests and /status."""
        t = self.total()
        return {
            "datagrams": int(t[H_DATAGRAMS]),
            "received": int(t[OFF_RECEIVED:OFF_INVALID].sum()),
            "invalid": int(t[OFF_INVALID:OFF_OVERFLOW].sum()),
            "invalid_by_reason": t[OFF_INVALID:OFF_OVERFLOW].reshape(
                MAX_LISTENERS, N_INVALID).sum(axis=0).tolist(),
            "overflows": int(t[OFF_OVERFLOW:OFF_RULE].sum()),
            "rules": t[OFF_RULE:OFF_DROP].tolist(),
            "dropped": t[OFF_DROP:OFF_DEST_DROP].tolist(),
            "dest_dropped": t[OFF_DEST_DROP:OFF_FORWARDED].reshape(MAX_DEST_SLOTS, N_DROP),
            "forwarded": t[OFF_FORWARDED:OFF_SEND_ERR].tolist(),
            "send_errors": t[OFF_SEND_ERR:OFF_LAST_ERR].tolist(),
            "queued": t[OFF_QUEUED:OFF_LAST_ERRNO].tolist(),
            "copies": int(t[H_COPIES]),
            "routed": int(t[H_ROUTED]),
            "drain_left": int(t[H_DRAIN_LEFT]),
            "guard": t[OFF_GUARD:OFF_GUARD + N_GUARD].tolist(),
        }
