"""The /status document of the admin API: its schema (msgspec Structs) and how it is built.

`build_status(sup, snap, ref, dt)` turns a counter snapshot of the supervisor `sup` into a Status:
packets and rates per listener / rule / destination target, drops and invalid packets by reason,
target health, workers and reload counts. Rates are against the `ref` totals taken `dt` seconds
earlier (hepfast.observe.admin keeps the samples).
"""
from __future__ import annotations

import time

import msgspec
import numpy as np

from hepfast import __version__
from hepfast.dataplane import counters as C
from hepfast.wire.reasons import DROP_NAMES, INVALID_NAMES
from hepfast.observe.metrics import (
    Snapshot,
    drop_label,
    invalid_label,
    iter_listeners,
    iter_rules,
    iter_targets,
    proto_label,
    target_label,
)


# ------------------------------------------------------------------------------ /status schema

class Counted(msgspec.Struct):
    packets: int
    rate: float                     # packets per second over the last sample window


class TargetStatus(msgspec.Struct):
    target: str                     # "host:port"
    packets: int                    # forwarded
    rate: float
    send_errors: int
    up: bool
    last_error_age_s: float | None  # None: never failed


class EgressStatus(msgspec.Struct):
    pid: int
    alive: bool
    up: bool                        # its store accepts writes
    detail: str
    ring_used_bytes: int            # waiting in the rings (all workers)
    ring_size_bytes: int
    metrics: dict[str, float]       # the egress kind's own (files written, bytes, ...)


class DestinationStatus(msgspec.Struct):
    name: str
    mode: str
    transport: str
    packets: int                    # sum over targets
    rate: float
    targets: list[TargetStatus]
    dropped: dict[str, int] = {}    # copies dropped by reasons of this destination
    egress: EgressStatus | None = None   # ring-fed destinations


class RuleStatus(msgspec.Struct):
    name: str
    packets: int
    rate: float


class ListenerStatus(msgspec.Struct):
    name: str
    address: str
    transport: str
    received: int
    received_rate: float
    invalid: int
    invalid_rate: float
    overflows: int
    proto_types: dict[str, int]     # received by proto type name (non-zero only)


class WorkerStatus(msgspec.Struct):
    index: int
    pid: int
    alive: bool
    generation: int
    heartbeat_age_s: float
    datagrams: int = 0              # read by this worker (how switch.spread spreads)
    copies: int = 0
    forwarded: int = 0


class SocketStatus(msgspec.Struct):
    listener: str
    spread: str                     # "packet" or "flow"
    rcvbuf_asked: int
    rcvbuf_granted: int             # what the kernel reports (twice the usable size)


class Reloads(msgspec.Struct):
    ok: int
    error: int
    last_error: str | None
    in_progress: bool = False       # a reload is being applied now
    waiting: int = 0                # requests waiting for a reload's result


class Totals(msgspec.Struct):
    datagrams: int
    received: int
    invalid: int
    routed: int
    copies: int
    forwarded: int
    dropped: int
    overflows: int


class GuardStatus(msgspec.Struct):
    """The switch-wide guard tables (dedup, rate limits, calls): their size and the page size
    backing them (4 KiB, or 2048 on a huge-page tmpfs as switch.run_dir; 0: unknown)."""
    bytes: int
    page_kib: int
    path: str


class Status(msgspec.Struct):
    version: str
    generation: int
    started_at: float               # unix time
    uptime_s: float
    healthy: bool
    health: str                     # "ok" or why not
    rate_window_s: float            # seconds the rates are measured over (0: no sample yet)
    workers: list[WorkerStatus]
    restarts: int
    reloads: Reloads
    totals: Totals
    listeners: list[ListenerStatus]
    rules: list[RuleStatus]
    destinations: list[DestinationStatus]
    dropped: dict[str, Counted]     # by reason
    invalid: dict[str, Counted]     # by reason, all listeners
    sockets: list[SocketStatus] = []
    guard: GuardStatus | None = None


# ------------------------------------------------------------------------------ status building

def _address(sup, li) -> str:
    # The bound port, not the configured one: "port 0" listeners (tests) get a real port.
    for name, host, port in getattr(sup, "bound", ()) or ():
        if name == li.name:
            return target_label(host, port)
    return target_label(li.host, li.port)


def build_status(sup, snap: Snapshot, ref: np.ndarray | None, dt: float) -> Status:
    """The /status document from a snapshot; rates against `ref` totals taken `dt` seconds ago."""
    tot = snap.total
    if ref is not None and dt > 0:
        delta = tot.astype(np.int64) - ref.astype(np.int64)
        rates = np.maximum(delta, 0).astype(np.float64) / dt
    else:
        rates = np.zeros(len(tot), dtype=np.float64)
        dt = 0.0

    def rate(lo: int, hi: int | None = None) -> float:
        return round(float(rates[lo] if hi is None else rates[lo:hi].sum()), 3)

    listeners = []
    for li, idx in iter_listeners(sup):
        r0 = C.OFF_RECEIVED + idx * 256
        i0 = C.OFF_INVALID + idx * C.N_INVALID
        row = tot[r0:r0 + 256]
        listeners.append(ListenerStatus(
            name=li.name, address=_address(sup, li), transport=getattr(li, "transport", "udp"),
            received=int(row.sum()), received_rate=rate(r0, r0 + 256),
            invalid=int(tot[i0:i0 + C.N_INVALID].sum()), invalid_rate=rate(i0, i0 + C.N_INVALID),
            overflows=snap.overflow(idx),
            proto_types={proto_label(n): int(row[n]) for n in np.flatnonzero(row).tolist()}))

    rules = [RuleStatus(name, snap.rule(slot), rate(C.OFF_RULE + slot))
             for name, slot in iter_rules(sup)]

    dests: dict[str, DestinationStatus] = {}
    for d in sup.compiled.destinations:
        dests[d.name] = DestinationStatus(d.name, getattr(d, "mode", ""),
                                          getattr(d, "transport", "udp"), 0, 0.0, [])
    dest_slots = getattr(getattr(sup, "slots", None), "destinations", None)
    if dest_slots is not None:
        block = tot[C.OFF_DEST_DROP:C.OFF_FORWARDED].reshape(C.MAX_DEST_SLOTS, C.N_DROP)
        for name, ds in dests.items():
            slot = dest_slots.slots.get(name)
            if slot is not None:
                ds.dropped = {DROP_NAMES[r]: int(block[slot][r]) for r in range(len(DROP_NAMES))
                              if block[slot][r]}
    for e in (sup.egress_status() if hasattr(sup, "egress_status") else []):
        ds = dests.get(e["destination"])
        if ds is not None:
            ds.egress = EgressStatus(int(e["pid"]), bool(e["alive"]), bool(e["up"]),
                                     str(e["detail"]), int(e["ring_used_bytes"]),
                                     int(e["ring_size_bytes"]),
                                     {k: float(v) for k, v in e["metrics"].items()})
    for t in iter_targets(sup):
        if t.destination not in dests:          # a target a reload removed: counts kept
            dests[t.destination] = DestinationStatus(t.destination, "", "retired", 0, 0.0, [])
        ds = dests[t.destination]
        ts = TargetStatus(t.target, snap.forwarded(t.slot), rate(C.OFF_FORWARDED + t.slot),
                          snap.send_errors(t.slot), snap.up(t.slot),
                          _round(snap.last_error_age_s(t.slot)))
        ds.targets.append(ts)
        ds.packets += ts.packets
        ds.rate = round(ds.rate + ts.rate, 3)

    # Packet-level reasons plus each destination's reasons summed over destinations.
    dblock = tot[C.OFF_DEST_DROP:C.OFF_FORWARDED].reshape(C.MAX_DEST_SLOTS, C.N_DROP)
    drates = rates[C.OFF_DEST_DROP:C.OFF_FORWARDED].reshape(C.MAX_DEST_SLOTS, C.N_DROP)
    dropped = {drop_label(r): Counted(int(tot[C.OFF_DROP + r]) + int(dblock[:, r].sum()),
                                      round(float(rates[C.OFF_DROP + r] + drates[:, r].sum()), 3))
               for r in range(C.N_DROP) if _known_drop(r) or tot[C.OFF_DROP + r]
               or dblock[:, r].any()}
    inv = snap.invalid().sum(axis=0)
    inv_rates = rates[C.OFF_INVALID:C.OFF_OVERFLOW].reshape(C.MAX_LISTENERS, C.N_INVALID).sum(axis=0)
    invalid = {invalid_label(r): Counted(int(inv[r]), round(float(inv_rates[r]), 3))
               for r in range(1, len(INVALID_NAMES))}

    totals = Totals(
        datagrams=int(tot[C.H_DATAGRAMS]),
        received=int(tot[C.OFF_RECEIVED:C.OFF_INVALID].sum()),
        invalid=int(tot[C.OFF_INVALID:C.OFF_OVERFLOW].sum()),
        routed=int(tot[C.H_ROUTED]), copies=int(tot[C.H_COPIES]),
        forwarded=int(tot[C.OFF_FORWARDED:C.OFF_SEND_ERR].sum()),
        dropped=int(tot[C.OFF_DROP:C.OFF_DEST_DROP].sum()) + int(dblock.sum()),
        overflows=int(tot[C.OFF_OVERFLOW:C.OFF_RULE].sum()))

    ok, why = sup.healthy()
    workers = [WorkerStatus(int(w["index"]), int(w.get("pid") or 0), bool(w.get("alive")),
                            int(w.get("generation", 0)),
                            round(float(w.get("heartbeat_age_s", 0.0)), 3),
                            int(w.get("datagrams", 0)), int(w.get("copies", 0)),
                            int(w.get("forwarded", 0)))
               for w in sup.workers_alive()]
    sockets = [SocketStatus(name, str(g.get("spread", "")), int(g.get("rcvbuf_asked", 0)),
                            int(g.get("rcvbuf_granted", 0)))
               for name, g in getattr(sup, "granted", {}).items()]
    return Status(
        version=__version__, generation=int(sup.generation), started_at=float(sup.started_at),
        uptime_s=round(max(0.0, time.time() - sup.started_at), 3), healthy=bool(ok),
        health=str(why), rate_window_s=round(dt, 3), workers=workers,
        restarts=int(sup.restarts),
        reloads=Reloads(int(sup.reload_counts.get("ok", 0)), int(sup.reload_counts.get("error", 0)),
                        sup.last_reload_error, bool(getattr(sup, "reload_in_progress", False)),
                        int(getattr(sup, "reload_waiting", 0))),
        totals=totals, listeners=listeners, rules=rules, destinations=list(dests.values()),
        dropped=dropped, invalid=invalid, sockets=sockets,
        guard=GuardStatus(**gi) if (gi := getattr(sup, "guard_info", None)) else None)


def _known_drop(r: int) -> bool:
    return drop_label(r) != f"code{r}"


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)
