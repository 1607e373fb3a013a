"""Per-worker counters in one shared-memory block (the layout the data plane writes).

The supervisor maps an anonymous shared mmap before forking; each worker owns one row of uint64
(no atomics: one writer per row) and the control plane sums the rows at scrape time. A replaced
worker takes over its predecessor's row, so totals never go backwards (Prometheus counters).

Rule and target counters are indexed by *slots*, not positions: a name keeps its slot across
reloads (SlotMap), so a reload that reorders rules does not move counts between rules.
"""
from __future__ import annotations

import mmap

import numpy as np

MAX_LISTENERS = 16
MAX_RULES = 256
MAX_TARGETS = 256
N_INVALID = 8          # hepfast.wire.reasons.INVALID_NAMES
N_DROP = 8             # hepfast.wire.reasons.DROP_NAMES (+ spare)

# header words
H_PID = 0
H_HEARTBEAT = 1        # CLOCK_MONOTONIC ns of the last loop iteration
H_GENERATION = 2       # config generation the worker runs
H_BATCHES = 3          # recvmmsg calls that returned packets
H_DATAGRAMS = 4        # datagrams read, valid or not
H_COPIES = 5           # copies queued for sending (fan-out counts each)
H_ROUTED = 6           # accepted packets that at least one rule or the default forwarded
H_STATE = 7            # 0 starting, 1 running, 2 draining, 3 exited
H_RESTARTS = 8         # (row 0 only) workers replaced after a crash
HEADER = 16

OFF_RECEIVED = HEADER                                   # [listener][proto_type 0..255]
OFF_INVALID = OFF_RECEIVED + MAX_LISTENERS * 256        # [listener][reason]
OFF_OVERFLOW = OFF_INVALID + MAX_LISTENERS * N_INVALID  # [listener] SO_RXQ_OVFL
OFF_RULE = OFF_OVERFLOW + MAX_LISTENERS                 # [rule slot]
OFF_DROP = OFF_RULE + MAX_RULES                         # [drop reason]
OFF_FORWARDED = OFF_DROP + N_DROP                       # [target slot]
OFF_SEND_ERR = OFF_FORWARDED + MAX_TARGETS              # [target slot]
OFF_LAST_ERR = OFF_SEND_ERR + MAX_TARGETS               # [target slot] monotonic ns of last error
OFF_LAST_OK = OFF_LAST_ERR + MAX_TARGETS                # [target slot] monotonic ns of last send
STRIDE = OFF_LAST_OK + MAX_TARGETS


class Counters:
    """The shared block: `rows` is a (workers, STRIDE) uint64 array over a MAP_SHARED mmap."""

    def __init__(self, workers: int):
        self.workers = workers
        self._mm = mmap.mmap(-1, max(1, workers) * STRIDE * 8,
                             flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self.rows = np.frombuffer(self._mm, dtype=np.uint64).reshape(max(1, workers), STRIDE)

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
            "dropped": t[OFF_DROP:OFF_FORWARDED].tolist(),
            "forwarded": t[OFF_FORWARDED:OFF_SEND_ERR].tolist(),
            "send_errors": t[OFF_SEND_ERR:OFF_LAST_ERR].tolist(),
            "copies": int(t[H_COPIES]),
            "routed": int(t[H_ROUTED]),
        }


class SlotMap:
    """Stable small-integer slots for names (rules, destination targets) across reloads."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.slots: dict[str, int] = {}

    def assign(self, names: list[str]) -> list[int]:
        free = sorted(set(range(self.capacity)) - set(self.slots.values()))
        out = []
        for n in names:
            if n not in self.slots:
                if not free:
                    # Reuse slots of names no longer configured before giving up.
                    live = set(names)
                    for old in [k for k in self.slots if k not in live]:
                        free.append(self.slots.pop(old))
                    free.sort()
                if not free:
                    raise ValueError(f"more than {self.capacity} distinct names")
                self.slots[n] = free.pop(0)
            out.append(self.slots[n])
        return out
