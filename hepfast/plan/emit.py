"""Compiled config + counter slots -> the plan file's header and arrays (hepfast.plan.format).

The supervisor owns the slots (names keep a slot for the whole run); this module only lays them
into the plan, so that every worker and egress process counts into the same places.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from hepfast import constants as K
from hepfast.plan.compile import Compiled, payload_mode
from hepfast.plan.format import (
    GUARD_ARRAYS,
    RULE_ARRAYS,
    PlanDestination,
    PlanListener,
    PlanTarget,
)


class SlotMap:
    """Stable small-integer slots for names (rules, targets, destinations) within one run.

    A name keeps its slot for the whole run, also after a reload removed it (its counts stay in
    the totals, which never go backwards); slots are never reused, so a new name never inherits
    another's counts. `assign` raises ValueError when the run has used them all: the reload is
    refused and a restart starts over."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.slots: dict[str, int] = {}

    def assign(self, names: list[str]) -> list[int]:
        new = [n for n in dict.fromkeys(names) if n not in self.slots]
        if len(self.slots) + len(new) > self.capacity:
            raise ValueError(f"this run has used {len(self.slots)} of {self.capacity} slots and "
                             f"needs {len(new)} more; restart hepfast to start over")
        for n in new:
            self.slots[n] = len(self.slots)
        return [self.slots[n] for n in names]


def target_key(dest: str, configured: str) -> str:
    """A target's slot name: its destination and the address as configured (not as resolved,
    so a changed DNS answer keeps the counters where they were)."""
    return f"{dest}/{configured}"


@dataclass
class Slots:
    rules: SlotMap = field(default_factory=lambda: SlotMap(K.MAX_RULE_SLOTS))
    targets: SlotMap = field(default_factory=lambda: SlotMap(K.MAX_TARGET_SLOTS))
    destinations: SlotMap = field(default_factory=lambda: SlotMap(K.MAX_DEST_SLOTS))
    egress: SlotMap = field(default_factory=lambda: SlotMap(K.MAX_EGRESS))

    def assign(self, c: Compiled) -> dict:
        """Slots for everything in c (raises ValueError when the run has run out of them)."""
        rule = self.rules.assign(list(c.rule_names))
        dest = self.destinations.assign([d.name for d in c.destinations])
        tgt = self.targets.assign([target_key(d.name, t.configured)
                                   for d in c.destinations for t in d.targets])
        ring = [d.name for d in c.destinations if d.egress == "ring"]
        egr = dict(zip(ring, self.egress.assign(ring), strict=True))
        return {"rules": rule, "destinations": dest, "targets": tgt, "egress": egr}


_VERIFY = {"none": 0, "optional": 1, "required": 2}


def _listener_tls(lc) -> dict:
    """PlanListener's tls fields: absolute paths (workers may not share the cwd)."""
    if lc.transport != "tls":
        return {}
    cert, key, ca = (os.path.abspath(p) if p else "" for p in (lc.tls_cert, lc.tls_key, lc.tls_ca))
    return dict(tls_cert=cert, tls_key=key, tls_ca=ca, tls_verify=_VERIFY[lc.verify_client],
                tls_min_version=lc.tls_min_version)


def emit(c: Compiled, slots: dict, *, generation: int, source: str,
         workers: int | None = None) -> tuple[dict, dict]:
    """(header fields, arrays) for hepfast.plan.format.write_plan."""
    cfg = c.config
    arrays = {name: getattr(c, name) for name in RULE_ARRAYS}
    # Guards: rate state lives in the run's guard file by rule slot, so a rule a reload keeps
    # (same name, same slot) keeps its rate limit's and its calls' state.
    arrays.update({name: getattr(c, name) for name in GUARD_ARRAYS})
    listeners = []
    for i, li in enumerate(c.listeners):
        arrays[f"allow{i}"] = li.allow
        arrays[f"allow_fam{i}"] = li.allow_fam
        lc = cfg.listeners[i]
        nw = max(1, workers or c.workers)
        listeners.append(PlanListener(
            li.name, li.transport, li.host, li.port, li.family, bytes(li.auth_key),
            lc.max_message, lc.message_timeout, lc.max_reads,
            max(1, -(-lc.max_connections // nw)), lc.idle_timeout,
            dedup_ms=lc.dedup_window_ms if lc.dedup else 0, **_listener_tls(lc)))
    dests = []
    ti = 0
    for di, d in enumerate(c.destinations):
        targets = []
        for t in d.targets:
            targets.append(PlanTarget(t.host, t.port, t.family, int(t.seed),
                                      slots["targets"][ti], t.configured))
            ti += 1
        dests.append(PlanDestination(
            name=d.name, transport=d.transport, mode=K.MODE[d.mode], hep_version=d.hep_version,
            egress=K.EGRESS[d.egress], slot=slots["destinations"][di],
            egress_slot=slots["egress"].get(d.name, -1), ring_bytes=d.ring_bytes,
            auth_key=bytes(d.auth_key), strip_auth_key=d.strip_auth_key,
            settings=dict(d.settings), targets=targets,
            call_key=d.call_key, call_key_sep=d.call_key_sep, call_key_field=d.call_key_field,
            payload=K.PAYLOAD[payload_mode(cfg.destinations[d.name])]))
    header = dict(
        generation=generation, digest=c.digest, source=source, batch=c.batch,
        workers=c.workers, max_chunks=cfg.switch.max_chunks, rcvbuf=cfg.switch.rcvbuf,
        sndbuf=cfg.switch.sndbuf, spread=cfg.switch.spread,
        drain_timeout=cfg.switch.drain_timeout, default_dest=c.default_dest,
        needs_sip=c.needs_sip, needs_call_key=c.needs_call_key, nrules=c.nrules,
        rule_names=list(c.rule_names), rule_slots=list(slots["rules"]), listeners=listeners,
        destinations=dests, sip_want=c.sip_want, needs_inflate=c.needs_inflate,
        dedup_expire_ms=c.dedup_expire_ms, call_idle_ms=int(cfg.switch.call_idle_timeout * 1000))
    return header, arrays


def write_plan_for(c: Compiled, path: str, *, generation: int = 1, source: str = "<config>",
                   slots: Slots | None = None):
    """Write the plan of a compiled config with fresh (or given) slots and map it back: what a
    supervisor does, in one call, for tests, benchmarks and tools. Returns the Plan."""
    from hepfast.plan.format import read_plan, write_plan

    header, arrays = emit(c, (slots or Slots()).assign(c), generation=generation, source=source)
    write_plan(path, header, arrays)
    return read_plan(path)
