"""The egress process of one ring-fed destination.

Started by the supervisor as
`python -m hepfast.egress.main RUNDIR GENERATION DEST_SLOT ROW WORKERS PARENT`: it maps the plan of
GENERATION (hepfast.plan.format), finds its destination by counter slot, attaches the ring of
every worker (hepfast.dataplane.rundir ring files) and runs hepfast.egress.process.run_egress
with the destination's Egress kind (hepfast.egress.base.EGRESS_KINDS).

What a record is: one packet for this destination, exactly as the rule made it (one record per
packet even when the destination has several targets: the egress process applies the
destination's mode among its targets, since it knows their health). The record's meta is the
low 32 bits of the hash of the destination's call key (Destination.call_key: the worker computes
it) when the mode is "hash" (rendezvous over the targets that are
up keeps a call together), else 0. The workers counted the copies as the mode makes them ("all":
one per target) in OFF_QUEUED of the destination's first target slot.

Counting, in the counter block's row ROW (its own: one writer): what the store accepted goes to
OFF_FORWARDED of the destination's target slot (the workers counted OFF_QUEUED when the copy
entered the ring), what it refused to OFF_SEND_ERR and the destination's send_error drop; the
last success and failure times feed hepfast_destination_up. About once a second it writes
`egress-<DEST_SLOT>.json` (health, the Egress's own metrics, ring depth) for /status and /metrics.
A stream destination (tcp, tls: real targets, one slot each) counts itself through
`TargetCounting` instead: forwarded and send errors per target, drops per destination, and each
target's connection state in its last-ok / last-error cells.

Like a worker it exits when the supervisor dies; on SIGTERM it drains the rings (bounded by the
plan's drain_timeout) and closes the store.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

from hepfast import constants as K
from hepfast.dataplane import rundir as R
from hepfast.dataplane.worker import EXIT_BOOT_ERROR, die_with_parent, run_child
from hepfast.plan.format import read_plan


# Transports whose kind lives in a module of another name.
STREAM_MODULES = {"tcp": "stream", "tls": "stream"}


class TargetCounting:
    """Counts of an egress with several real targets (hepfast.egress.stream), which it reports
    itself (`bind_counting`): per target forwarded and send errors, per destination drops, and
    each target's connection state in its last-ok / last-error cells (hepfast_destination_up)."""

    def __init__(self, row, dest) -> None:
        self.row = row
        self.slots = [t.slot for t in dest.targets]
        self.drop_err = K.OFF_DEST_DROP + dest.slot * K.N_DROP + K.DROP["send_error"]
        self.drop_full = K.OFF_DEST_DROP + dest.slot * K.N_DROP + K.DROP["queue_full"]

    def forwarded(self, i: int, n: int) -> None:
        self.row[K.OFF_FORWARDED + self.slots[i]] += n

    def failed(self, i: int, n: int) -> None:
        self.row[K.OFF_SEND_ERR + self.slots[i]] += n
        self.row[self.drop_err] += n

    def queue_full(self, n: int) -> None:
        self.row[self.drop_full] += n

    def state(self, i: int, up: bool, err: int) -> None:
        now = time.monotonic_ns()
        slot = self.slots[i]
        if up:
            self.row[K.OFF_LAST_OK + slot] = now
        else:
            self.row[K.OFF_LAST_ERR + slot] = max(now, int(self.row[K.OFF_LAST_OK + slot]) + 1)
            self.row[K.OFF_LAST_ERRNO + slot] = err


def status_path(rundir: str, dest_slot: int) -> str:
    return os.path.join(rundir, f"egress-{dest_slot}.json")


def make_egress(dest):
    """The Egress of a plan destination: its kind's from_settings(name, settings), the kind
    found in EGRESS_KINDS (the module hepfast.egress.<transport> registers it when imported)."""
    import importlib

    from hepfast.egress.base import EGRESS_KINDS

    module = STREAM_MODULES.get(dest.transport, dest.transport)
    if dest.transport not in EGRESS_KINDS:
        importlib.import_module(f"hepfast.egress.{module}")
    kind = EGRESS_KINDS[dest.transport]
    if hasattr(kind, "from_destination"):          # kinds with real targets (streams)
        return kind.from_destination(dest)
    return kind.from_settings(dest.name, dict(dest.settings))


def main(argv: list[str]) -> int:
    rundir, gen, dslot, rowi, nworkers, parent = (argv[0], int(argv[1]), int(argv[2]),
                                                  int(argv[3]), int(argv[4]), int(argv[5]))
    die_with_parent(parent)
    stopping = {"flag": False}

    def on_term(signum, frame):
        stopping["flag"] = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        plan = read_plan(R.plan_path(rundir, gen))
        dest = next(d for d in plan.destinations if d.slot == dslot)
        tslot = dest.targets[0].slot
        row = R.map_counters(rundir).row(rowi)
        from hepfast.egress._ring import Ring

        maps = [R.map_ring(R.ring_path(rundir, dslot, w)) for w in range(nworkers)]
        rings = [Ring(mm) for _f, mm in maps]
        egress = make_egress(dest)
    except Exception as exc:  # noqa: BLE001 - reported, then the boot-error exit code
        print(f"hepfast egress {dslot}: cannot start: {exc}", file=sys.stderr, flush=True)
        return EXIT_BOOT_ERROR
    row[K.H_PID] = os.getpid()
    row[K.H_GENERATION] = gen
    row[K.H_STATE] = 1
    drop_err = K.OFF_DEST_DROP + dest.slot * K.N_DROP + K.DROP["send_error"]
    drop_full = K.OFF_DEST_DROP + dest.slot * K.N_DROP + K.DROP["queue_full"]
    last_status = [0.0]

    def write_status(force: bool = False) -> None:
        now = time.monotonic()
        row[K.H_HEARTBEAT] = time.monotonic_ns()
        if not force and now - last_status[0] < 1.0:
            return
        last_status[0] = now
        up, detail = egress.health()
        doc = {"destination": dest.name, "transport": dest.transport, "up": bool(up),
               "detail": detail, "metrics": egress.metrics(),
               "ring_used_bytes": [int(r.used) for r in rings],
               "ring_size_bytes": [int(r.size) for r in rings]}
        tmp = status_path(rundir, dslot) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, status_path(rundir, dslot))

    def forwarded(n: int) -> None:
        row[K.OFF_FORWARDED + tslot] += n
        row[K.OFF_LAST_OK + tslot] = time.monotonic_ns()

    def failed(n: int) -> None:
        row[K.OFF_SEND_ERR + tslot] += n
        row[drop_err] += n
        row[K.OFF_LAST_ERR + tslot] = time.monotonic_ns()

    def queue_full(n: int) -> None:
        row[drop_full] += n

    on_forwarded = forwarded
    if hasattr(egress, "bind_counting"):
        # It counts per target itself; send_batch returns the whole batch as taken (so the
        # loop's own forwarded count is not kept; its errors, a bug's batch, still are).
        egress.bind_counting(TargetCounting(row, dest))

        def on_forwarded(n: int) -> None:
            pass

    def should_stop() -> bool:
        write_status()
        return stopping["flag"] or os.getppid() != parent

    from hepfast.egress.process import run_egress

    run_egress(egress, rings, on_forwarded=on_forwarded, on_error=failed, on_queue_full=queue_full,
               should_stop=should_stop,
               drain_deadline_s=plan.drain_timeout + 1.0)
    write_status(force=True)
    row[K.H_STATE] = 3
    return 0


if __name__ == "__main__":
    run_child(main)
