"""The loop of one egress process: rings in, one destination out.

`run_egress` owns the destination's lifecycle (open, send, flush, close) and the consumer side
of every ring that feeds it (one per worker). Invariants:
- Rings are served round-robin, one batch per ring per pass, so a busy worker cannot starve the
  others; every batch read is released right after `send_batch`, whatever it returned (the
  rings never wait for the destination: what it did not accept is counted as errors).
- Counts: `on_forwarded(n)` with what the destination accepted, `on_error(n)` with the rest,
  once per batch; the returned totals are the sums of the same numbers. A deferred destination
  (hepfast.egress.base) reports later instead: what its `settle()` returns after each
  `send_batch`, `flush()` and after `close()` goes to on_forwarded, on_error and
  `on_queue_full` (on_error when not given).
- Idle: when a whole pass finds every ring empty, the destination is flushed and the loop
  sleeps, starting at `idle_sleep_s` and doubling up to `max_idle_sleep_s`; any record resets
  it. No wake-up channel: workers publish per batch, so the latency cost is at most one sleep.
- Stop: once `should_stop()` is true the rings are drained until a pass finds them all empty
  or `drain_deadline_s` passes (producers are expected to have stopped; whatever is still in
  flight at the deadline is reported in `left_bytes`), then `flush()` and `close()`.
- An exception from the destination is a bug, not a per-record failure: that batch is counted
  as errors and released, the destination is closed, and the exception propagates (the
  process dies and is restarted; the offending records are not replayed).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from hepfast.egress.base import Egress

if TYPE_CHECKING:
    from hepfast.egress._ring import Ring


def _nothing(n: int) -> None:
    pass


def _never() -> bool:
    return False


def run_egress(egress: Egress, rings: Sequence[Ring], *,
               on_forwarded: Callable[[int], None] = _nothing,
               on_error: Callable[[int], None] = _nothing,
               on_queue_full: Callable[[int], None] | None = None,
               should_stop: Callable[[], bool] = _never,
               idle_sleep_s: float = 0.005, max_idle_sleep_s: float = 0.010,
               batch_records: int = 1024, drain_deadline_s: float = 5.0,
               sleep: Callable[[float], None] = time.sleep,
               monotonic: Callable[[], float] = time.monotonic) -> dict[str, int]:
    """Serve `rings` into `egress` until `should_stop()`, then drain and close. Returns totals:
    forwarded, errors, batches, drained (records moved after the stop), left_bytes (still in
    the rings when the drain ended); queue_full (deferred destinations)."""
    totals = {"forwarded": 0, "errors": 0, "batches": 0, "drained": 0, "left_bytes": 0,
              "queue_full": 0}
    deferred = bool(getattr(egress, "deferred", False))
    full_cb = on_error if on_queue_full is None else on_queue_full

    def settle() -> None:
        if not deferred:
            return
        fwd, err, full = (max(0, int(v)) for v in egress.settle())
        totals["forwarded"] += fwd
        totals["errors"] += err
        totals["queue_full"] += full
        if fwd:
            on_forwarded(fwd)
        if err:
            on_error(err)
        if full:
            full_cb(full)

    def one_pass() -> int:
        moved = 0
        for ring in rings:
            batch = ring.read(batch_records)
            count = batch.count
            if count == 0:
                ring.release(batch)
                continue
            try:
                sent = egress.send_batch(batch)
            except BaseException:
                ring.release(batch)
                totals["errors"] += count
                on_error(count)
                raise
            ring.release(batch)
            totals["batches"] += 1
            moved += count
            if deferred:
                settle()
                continue
            sent = max(0, min(int(sent), count))
            totals["forwarded"] += sent
            if sent:
                on_forwarded(sent)
            if count - sent:
                totals["errors"] += count - sent
                on_error(count - sent)
        return moved

    egress.open()
    try:
        pause = idle_sleep_s
        while not should_stop():
            if one_pass():
                pause = idle_sleep_s
                continue
            egress.flush()
            settle()
            sleep(pause)
            pause = min(pause * 2, max_idle_sleep_s)
        deadline = monotonic() + drain_deadline_s
        while True:
            moved = one_pass()
            totals["drained"] += moved
            if not moved or monotonic() >= deadline:
                break
        totals["left_bytes"] = sum(ring.used for ring in rings)
        egress.flush()
    finally:
        egress.close()
        settle()
    return totals
