"""The contract between an egress process's loop and the destination it serves.

An egress process runs one destination that the workers cannot serve with a `sendmmsg` of their
own (streams and storage: file now; tcp, tls, pcap, parquet, postgres later). The workers feed
it through one shared-memory ring each (hepfast.egress.ring); `run_egress`
(hepfast.egress.process) is the only caller of these methods, always from one thread:

- `open()` once before the first batch. It must not raise because the peer or the disk is
  unavailable: the egress reports that through `health()` and retries on its own schedule.
- `send_batch(batch)` for every non-empty batch read from a ring. It returns how many records
  the peer / kernel / disk accepted: those are counted as forwarded, the rest of the batch as
  errors. The batch is released right after the call, so an egress that wants to retry must
  copy what it keeps (bounded, counted) during the call; records that were neither accepted nor
  kept are lost, never waited for: a slow destination must not stall the workers' rings.
  Per-record failures are counted, not raised; an exception is a bug (the loop counts the batch
  as errors, releases it and lets the exception end the process).
- `flush()` when every ring is empty (and before `close()`): push out anything buffered and
  do time-based housekeeping (file rotation, reconnect attempts). Cheap when there is nothing
  to do: it runs on every idle pass.
- `health()` -> (up, detail): up when the destination currently accepts records; detail says
  why not (the OS error text, the peer address), for /status and logs.
- `metrics()` -> {name: value}: the egress's own counters and gauges (no prefix, no labels; the
  process entry point exports them as `hepfast_egress_<name>{destination=...}`).
- `close()` once at the end, after the final drain and `flush()`.
- Deferred destinations (`deferred = True`: stores that commit rows later, in batches of their
  own) keep what they take and report outcomes when they are known: the loop ignores
  `send_batch`'s return value for them and calls `settle()` -> (forwarded, failed, queue_full)
  after every `send_batch`, every `flush()` and after `close()`, each record of every batch
  counted exactly once across those calls (forwarded: committed; queue_full: refused because
  the destination's own bounded queue was full; failed: everything else).

Destination kinds register in EGRESS_KINDS (kind name -> class) with `@register("kind")`.
"""
from __future__ import annotations

import abc
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from hepfast.egress._ring import Batch


class Egress(abc.ABC):
    """One destination served by an egress process; see the module docstring."""

    kind: str = ""
    deferred: bool = False

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def from_settings(cls, name: str, settings: dict):
        """Build from the destination's config keys that hepfast.plan.compile.EGRESS_SETTINGS
        lists for this kind (a plain dict, from the plan)."""
        return cls(name, **settings)

    @abc.abstractmethod
    def open(self) -> None: ...

    @abc.abstractmethod
    def send_batch(self, batch: Batch) -> int: ...

    @abc.abstractmethod
    def flush(self) -> None: ...

    @abc.abstractmethod
    def health(self) -> tuple[bool, str]: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @abc.abstractmethod
    def metrics(self) -> dict[str, float]: ...

    def settle(self) -> tuple[int, int, int]:
        """Deferred destinations: (forwarded, failed, queue_full) since the last call."""
        return 0, 0, 0


EGRESS_KINDS: dict[str, type[Egress]] = {}

E = TypeVar("E", bound=type[Egress])


def register(kind: str) -> Callable[[E], E]:
    """Class decorator: make an Egress subclass available as destination kind `kind`."""
    def deco(cls: E) -> E:
        if kind in EGRESS_KINDS and EGRESS_KINDS[kind] is not cls:
            raise ValueError(f"egress kind {kind!r} registered twice")
        cls.kind = kind
        EGRESS_KINDS[kind] = cls
        return cls
    return deco
