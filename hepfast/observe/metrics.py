"""Prometheus metrics: a custom collector that reads the workers' shared-memory counters at scrape time.

The data plane never calls prometheus-client: each worker bumps plain uint64 cells in its own row
of `hepfast.dataplane.counters.Counters`; a scrape sums the rows once (one numpy reduction) and turns the
cells into metric families. The names and labels of design.md section 4 are a contract: extend,
never rename.

Invariants:
- Counters only grow: a replaced worker takes over its predecessor's row, so the sums are monotonic
  and Prometheus `rate()` sees no spurious resets (except the per-worker CPU counters, which restart
  with their process, as process counters do).
- Rules and targets are exported by their *current* names; their cells are found through the
  supervisor's stable slots, so a reload that reorders rules or targets moves no counts.
- Timestamps (last send error / last good send per target) are per worker; the newest one counts,
  so those cells are reduced with max, never summed.
- The registry is private (never the global one): several supervisors in one test process each
  export only their own counters.

`Snapshot` is shared with the admin API's /status so both report exactly the same numbers.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from hepfast.dataplane import counters as C
from hepfast.wire.chunks import PROTO_TYPES
from hepfast import constants as K
from hepfast.constants import CONN_CLOSE_NAMES, DEST_DROPS
from hepfast.wire.reasons import DROP_NAMES, INVALID_NAMES

# A target whose last send error is younger than this (and newer than its last good send) is down.
TARGET_DOWN_S = 5.0

PROTO_NAMES = {n: name for name, n in PROTO_TYPES.items()}


def proto_label(n: int) -> str:
    """The proto_type label: the design.md name when known ("sip"), else the number ("77")."""
    return PROTO_NAMES.get(int(n), str(int(n)))


def target_label(host: str, port: int) -> str:
    """The target label: "host:port", IPv6 hosts in brackets ("[::1]:9060")."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def invalid_label(i: int) -> str:
    return INVALID_NAMES[i] if i < len(INVALID_NAMES) else f"code{i}"


def drop_label(i: int) -> str:
    return DROP_NAMES[i] if i < len(DROP_NAMES) else f"code{i}"


def target_up(last_err_ns: int, last_ok_ns: int, now_ns: int) -> bool:
    """Up unless the last send error is recent (under TARGET_DOWN_S) and no good send followed it."""
    if last_err_ns == 0:
        return True
    return (now_ns - last_err_ns) > TARGET_DOWN_S * 1e9 or last_err_ns < last_ok_ns


@dataclass
class TargetView:
    destination: str
    mode: str
    transport: str
    target: str         # target_label
    slot: int


def iter_targets(sup) -> list[TargetView]:
    """Every target with its counter slot: the switch's target_views() (current targets and
    those a reload removed, whose counts stay in the totals), else the current config."""
    if hasattr(sup, "target_views"):
        return [TargetView(dest, mode, transport, label, slot)
                for dest, mode, transport, label, slot in sup.target_views()]
    out = []
    for d in sup.compiled.destinations:
        for t in d.targets:
            host, port = t[0], int(t[1])       # Target namedtuple or plain (host, port, family)
            try:
                slot = sup.target_slot(d.name, host, port)
            except (KeyError, ValueError):
                continue                        # not published yet: nothing counted for it
            out.append(TargetView(d.name, getattr(d, "mode", ""),
                                  getattr(d, "transport", "udp"), target_label(host, port), slot))
    return out


def iter_rules(sup) -> list[tuple[str, int]]:
    out = []
    for name in sup.compiled.rule_names:
        try:
            out.append((name, sup.rule_slot(name)))
        except (KeyError, ValueError):
            continue
    return out


def iter_listeners(sup) -> list[tuple[object, int]]:
    """(listener info, counter row index) for the configured listeners."""
    out = []
    for li in sup.compiled.listeners:
        try:
            idx = sup.listener_index(li.name)
        except (KeyError, ValueError):
            continue
        if 0 <= idx < C.MAX_LISTENERS:
            out.append((li, idx))
    return out


class Snapshot:
    """One consistent read of the counter block: summed totals, newest per-target timestamps."""

    def __init__(self, counters: C.Counters, now_ns: int | None = None):
        rows = counters.rows
        self.total = rows.sum(axis=0, dtype=np.uint64)
        self.last_err = rows[:, C.OFF_LAST_ERR:C.OFF_LAST_OK].max(axis=0)
        self.last_ok = rows[:, C.OFF_LAST_OK:C.OFF_QUEUED].max(axis=0)
        self.now_ns = time.monotonic_ns() if now_ns is None else now_ns

    def received(self) -> np.ndarray:        # [listener][proto_type]
        return self.total[C.OFF_RECEIVED:C.OFF_INVALID].reshape(C.MAX_LISTENERS, 256)

    def invalid(self) -> np.ndarray:         # [listener][reason]
        return self.total[C.OFF_INVALID:C.OFF_OVERFLOW].reshape(C.MAX_LISTENERS, C.N_INVALID)

    def overflow(self, li: int) -> int:
        return int(self.total[C.OFF_OVERFLOW + li])

    def rule(self, slot: int) -> int:
        return int(self.total[C.OFF_RULE + slot])

    def dropped(self) -> np.ndarray:
        return self.total[C.OFF_DROP:C.OFF_DEST_DROP]

    def forwarded(self, slot: int) -> int:
        return int(self.total[C.OFF_FORWARDED + slot])

    def send_errors(self, slot: int) -> int:
        return int(self.total[C.OFF_SEND_ERR + slot])

    def up(self, slot: int) -> bool:
        return target_up(int(self.last_err[slot]), int(self.last_ok[slot]), self.now_ns)

    def last_error_age_s(self, slot: int) -> float | None:
        e = int(self.last_err[slot])
        return None if e == 0 else max(0.0, (self.now_ns - e) / 1e9)


def _proc_stat(pid: int) -> tuple[float, int] | None:
    """(CPU seconds user+system, resident bytes) of a process from /proc, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = data[data.rfind(b")") + 2:].split()
    try:
        ticks = int(fields[11]) + int(fields[12])       # utime, stime (fields 14, 15)
        rss_pages = int(fields[21])                     # field 24
    except (IndexError, ValueError):
        return None
    return ticks / _CLK_TCK, rss_pages * _PAGE


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class HepfastCollector(Collector):
    """Yields every hepfast_* family from `sup` (see module doc) at each scrape."""

    def __init__(self, sup):
        self.sup = sup

    def collect(self):
        sup = self.sup
        if hasattr(sup, "refresh_kernel_counters"):
            sup.refresh_kernel_counters()      # the kernel's per-socket drop counts, exact
        snap = Snapshot(sup.counters)

        recv = CounterMetricFamily("hepfast_packets_received",
                                   "Accepted HEP packets by listener and HEP proto type",
                                   labels=["listener", "proto_type"])
        inval = CounterMetricFamily("hepfast_packets_invalid",
                                    "Datagrams refused before routing, by reason "
                                    "(short, magic, length, chunk, version, auth, acl)",
                                    labels=["listener", "reason"])
        ovfl = CounterMetricFamily("hepfast_receive_overflows",
                                   "Datagrams the kernel dropped before hepfast read them "
                                   "(the sockets' own drop counts, SO_MEMINFO)",
                                   labels=["listener"])
        received, invalid = snap.received(), snap.invalid()
        for li, idx in iter_listeners(sup):
            row = received[idx]
            # Named proto types always (so rate() sees them from zero); others once seen.
            for n in sorted(set(PROTO_NAMES) | set(np.flatnonzero(row).tolist())):
                recv.add_metric([li.name, proto_label(n)], int(row[n]))
            for r in range(1, len(INVALID_NAMES)):     # reason 0 is "ok": never counted
                inval.add_metric([li.name, invalid_label(r)], int(invalid[idx][r]))
            ovfl.add_metric([li.name], snap.overflow(idx))
        yield recv
        yield inval
        yield ovfl

        conn = GaugeMetricFamily("hepfast_connections",
                                 "Stream (tcp, tls) connections open now, per listener",
                                 labels=["listener"])
        acc = CounterMetricFamily("hepfast_connections_accepted",
                                  "Stream connections accepted, per listener", labels=["listener"])
        clo = CounterMetricFamily("hepfast_connections_closed",
                                  "Stream connections closed, by reason ("
                                  + ", ".join(CONN_CLOSE_NAMES) + ")",
                                  labels=["listener", "reason"])
        for li, idx in iter_listeners(sup):
            if getattr(li, "transport", "udp") == "udp":
                continue
            base = C.OFF_CONN + idx * C.N_CONN
            conn.add_metric([li.name], float(snap.total[base]))
            acc.add_metric([li.name], int(snap.total[base + 1]))
            for k, reason in enumerate(CONN_CLOSE_NAMES):
                clo.add_metric([li.name, reason], int(snap.total[base + 2 + k]))
        yield conn
        yield acc
        yield clo

        rules = CounterMetricFamily("hepfast_rule_packets", "Packets each rule took",
                                    labels=["rule"])
        for name, slot in iter_rules(sup):
            rules.add_metric([name], snap.rule(slot))
        yield rules

        fwd = CounterMetricFamily("hepfast_packets_forwarded",
                                  "Packets handed to the kernel or connection, per target",
                                  labels=["destination", "target"])
        errs = CounterMetricFamily("hepfast_send_errors",
                                   "Sends that failed, per target", labels=["destination", "target"])
        up = GaugeMetricFamily("hepfast_destination_up",
                               "1 when the target is reachable (no send error in the last "
                               f"{TARGET_DOWN_S:g} s without a good send after it)",
                               labels=["destination", "target"])
        for t in iter_targets(sup):
            fwd.add_metric([t.destination, t.target], snap.forwarded(t.slot))
            errs.add_metric([t.destination, t.target], snap.send_errors(t.slot))
            up.add_metric([t.destination, t.target], 1 if snap.up(t.slot) else 0)
        yield fwd
        yield errs
        yield up

        drops = CounterMetricFamily("hepfast_packets_dropped",
                                    "Valid packets (or copies, for reasons of a destination) not "
                                    "forwarded, by reason; destination is empty for reasons that "
                                    "concern the packet (rule, no_route, sample)",
                                    labels=["reason", "destination"])
        dropped = snap.dropped()
        for r in range(len(DROP_NAMES)):
            if DROP_NAMES[r] not in DEST_DROPS:
                drops.add_metric([drop_label(r), ""], int(dropped[r]))
        dest_slots = getattr(getattr(sup, "slots", None), "destinations", None)
        if dest_slots is not None:
            block = snap.total[C.OFF_DEST_DROP:C.OFF_FORWARDED].reshape(C.MAX_DEST_SLOTS, C.N_DROP)
            for name, slot in dest_slots.slots.items():
                for reason in DEST_DROPS:
                    drops.add_metric([reason, name], int(block[slot][DROP_NAMES.index(reason)]))
        else:                                   # a view without destination slots (tests)
            for reason in DEST_DROPS:
                drops.add_metric([reason, ""], int(dropped[DROP_NAMES.index(reason)]))
        yield drops

        queued = CounterMetricFamily("hepfast_packets_queued",
                                     "Copies workers put into a ring-fed destination's ring "
                                     "(forwarded counts what its store then accepted)",
                                     labels=["destination", "target"])
        for t in iter_targets(sup):
            if t.transport not in ("udp", "retired"):
                queued.add_metric([t.destination, t.target], int(snap.total[C.OFF_QUEUED + t.slot]))
        yield queued

        egress = sup.egress_status() if hasattr(sup, "egress_status") else []
        ring_used = GaugeMetricFamily("hepfast_ring_used_bytes",
                                      "Bytes waiting in a ring-fed destination's rings (all "
                                      "workers)", labels=["destination"])
        ring_size = GaugeMetricFamily("hepfast_ring_size_bytes",
                                      "Capacity of a ring-fed destination's rings (all workers)",
                                      labels=["destination"])
        eg_up = GaugeMetricFamily("hepfast_egress_up",
                                  "1 while a ring-fed destination's egress process runs and its "
                                  "store accepts writes", labels=["destination"])
        extra: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for e in egress:
            ring_used.add_metric([e["destination"]], float(e["ring_used_bytes"]))
            ring_size.add_metric([e["destination"]], float(e["ring_size_bytes"]))
            eg_up.add_metric([e["destination"]], 1.0 if e["alive"] and e["up"] else 0.0)
            for key, value in e.get("metrics", {}).items():
                if key == "up":
                    continue
                fam = extra.get(key)
                if fam is None:
                    fam = extra[key] = _egress_family(key)
                fam.add_metric([e["destination"]], float(value))
        yield ring_used
        yield ring_size
        yield eg_up
        yield from extra.values()

        full = CounterMetricFamily("hepfast_guard_table_full",
                                   "Packets a dedup or call-rate lookup found no room for in "
                                   "its shared table (forwarded without the check)",
                                   labels=["table"])
        full.add_metric(["dedup"], int(snap.total[C.OFF_GUARD + K.G_DEDUP_FULL]))
        full.add_metric(["calls"], int(snap.total[C.OFF_GUARD + K.G_CALLS_FULL]))
        yield full
        yield CounterMetricFamily("hepfast_payloads_inflated",
                                  "Compressed payloads (chunk 0x0010) inflated by the workers",
                                  value=int(snap.total[C.OFF_GUARD + K.G_INFLATED]))
        yield CounterMetricFamily("hepfast_payloads_compressed",
                                  "Copies whose payload was compressed for a destination with "
                                  'payload = "compress"',
                                  value=int(snap.total[C.OFF_GUARD + K.G_COMPRESSED]))

        reloads = CounterMetricFamily("hepfast_config_reloads", "Configuration reloads by result",
                                      labels=["result"])
        for result in ("ok", "error"):
            reloads.add_metric([result], int(sup.reload_counts.get(result, 0)))
        yield reloads
        yield CounterMetricFamily("hepfast_worker_restarts", "Workers replaced after a crash",
                                  value=int(sup.restarts))
        yield CounterMetricFamily("hepfast_datagrams", "Datagrams read, valid or not",
                                  value=int(snap.total[C.H_DATAGRAMS]))

        workers = sup.workers_alive()
        yield GaugeMetricFamily("hepfast_workers", "Data-plane worker processes running",
                                value=sum(1 for w in workers if w.get("alive")))
        yield GaugeMetricFamily("hepfast_config_generation",
                                "Configuration generation the supervisor runs (1 at start, "
                                "+1 per successful reload)", value=int(sup.generation))
        hb = GaugeMetricFamily("hepfast_worker_heartbeat_age_seconds",
                               "Seconds since each worker's last loop iteration", labels=["worker"])
        cpu = CounterMetricFamily("hepfast_worker_cpu_seconds",
                                  "CPU time of each running worker process (user + system)",
                                  labels=["worker"])
        rss = GaugeMetricFamily("hepfast_worker_resident_memory_bytes",
                                "Resident memory of each running worker process", labels=["worker"])
        wdg = CounterMetricFamily("hepfast_worker_datagrams",
                                  "Datagrams each worker read (how evenly switch.spread spreads)",
                                  labels=["worker"])
        for w in workers:
            if "datagrams" in w:
                wdg.add_metric([str(w["index"])], int(w["datagrams"]))
            if not w.get("alive"):
                continue
            label = [str(w["index"])]
            hb.add_metric(label, float(w.get("heartbeat_age_s", 0.0)))
            st = _proc_stat(int(w["pid"])) if w.get("pid") else None
            if st is not None:
                cpu.add_metric(label, st[0])
                rss.add_metric(label, st[1])
        yield hb
        yield cpu
        yield rss
        yield wdg
        granted = getattr(sup, "granted", {})
        rcv = GaugeMetricFamily("hepfast_socket_receive_buffer_bytes",
                                "Receive buffer the kernel granted each listening socket "
                                "(switch.rcvbuf asked; the kernel reports twice the usable size)",
                                labels=["listener"])
        for name, g in granted.items():
            rcv.add_metric([name], float(g.get("rcvbuf_granted", 0)))
        yield rcv


# The disk spool of stream destinations (hepfast.egress.spool): hepfast_spool_*, its *_total
# as counters (reset only when the egress process restarts, as any counter at a restart).
SPOOL_HELP = {
    "spool_bytes": "Bytes in the spool files (bounded by spool_max_bytes)",
    "spool_records": "Packets in the spool files",
    "spool_age_seconds": "Seconds since the oldest spool segment was written (0: empty)",
    "spool_written_total": "Packets written to the spool",
    "spool_replayed_total": "Spooled packets sent after all",
    "spool_dropped_total": "Spooled packets lost: their segment was the oldest when the spool "
                           "reached spool_max_bytes",
    "spool_dropped_segments_total": "Spool segments deleted for spool_max_bytes",
    "spool_torn_total": "Spool segments found with a torn or corrupt last record (cut there)",
    "spool_errors_total": "Spool file errors (disk full, permissions)",
}


def _egress_family(key: str) -> GaugeMetricFamily | CounterMetricFamily:
    """The family of an egress process's metric `key`: hepfast_spool_* for the spool (counters
    for its totals), else the gauge hepfast_egress_KEY."""
    if key.startswith("spool_"):
        name = f"hepfast_{key}"
        doc = SPOOL_HELP.get(key, f"Spool metric {key} (see docs/metrics.md)")
        if key.endswith("_total"):
            return CounterMetricFamily(name[:-len("_total")], doc, labels=["destination"])
        return GaugeMetricFamily(name, doc, labels=["destination"])
    return GaugeMetricFamily(f"hepfast_egress_{key}",
                             f"Egress store metric {key} (see docs/metrics.md)",
                             labels=["destination"])


def build_registry(sup) -> CollectorRegistry:
    """A private registry: the hepfast collector and the supervisor's process metrics."""
    from prometheus_client import ProcessCollector

    registry = CollectorRegistry()
    registry.register(HepfastCollector(sup))
    ProcessCollector(registry=registry)
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The text exposition format (what GET /metrics returns)."""
    from prometheus_client import generate_latest

    return generate_latest(registry)
