"""describe(plan): the human listing `hepfast check` prints."""
from __future__ import annotations

import math

from hepfast.config import as_list
from hepfast.plan.compile import Compiled
from hepfast.plan.tables import CONTINUE, DROP, HAS_SAMPLE, KEY_NAMES, NEEDS_SIP


def describe(c: Compiled) -> str:
    """A human listing of the compiled configuration."""
    cfg = c.config
    lines = [f"config {c.digest[:12]}: {c.workers} worker(s), batch {c.batch}, "
             f"admin on {_hp(*c.admin_listen)}"]
    lines.append("listeners:")
    for i, lst in enumerate(c.listeners):
        extra = []
        if lst.auth_key:
            extra.append("auth key set")
        if len(lst.allow_fam):
            extra.append("allow " + ", ".join(cfg.listeners[i].allow))
        if cfg.listeners[i].dedup:
            extra.append(f"dedup {cfg.listeners[i].dedup_window_ms} ms")
        lines.append(f"  [{i}] {lst.name}: {lst.transport} {_hp(lst.host, lst.port)}"
                     + (f" ({'; '.join(extra)})" if extra else ""))
    lines.append("destinations:")
    if not c.destinations:
        lines.append("  (none)")
    for i, d in enumerate(c.destinations):
        where = ", ".join(_hp(t.host, t.port) + ("" if t.configured == _hp(t.host, t.port)
                                                  else f" ({t.configured})")
                          for t in d.targets) or (d.path or d.dsn or "")
        ck = ""
        if d.mode == "hash" and (d.call_key, d.call_key_sep) != (0, 0):
            from hepfast.constants import CALL_KEY_NAMES

            ck = f" by {CALL_KEY_NAMES[d.call_key]}" + (
                f" field {d.call_key_field} of {chr(d.call_key_sep)!r}" if d.call_key_sep else "")
        payload = cfg.destinations[d.name].payload
        lines.append(f"  [{i}] {d.name}: {d.transport} {d.mode}{ck} HEPv{d.hep_version} -> "
                     f"{where}" + (f" (payload {payload})" if payload != "keep" else ""))
    lines.append(f"rules ({c.nrules}, first match wins unless continue):")
    for r, rule in enumerate(cfg.rules):
        f = int(c.flags[r])
        conds = []
        for k, kname in enumerate(KEY_NAMES):
            if int(c.key_mask[r]) & (1 << k):
                vals = as_list(getattr(rule.match, kname))
                if kname == "sip_header":       # tables: one condition each (AND)
                    conds.extend(f"header {t.name} in [{', '.join(as_list(t.value))}]"
                                 for t in vals)
                elif kname == "correlation_id_field":
                    conds.extend(f"correlation_id field {t.field} (split at {t.separator!r}) in "
                                 f"[{', '.join(as_list(t.value))}]" for t in vals)
                else:
                    conds.append(f"{kname} in [{', '.join(str(v) for v in vals)}]")
        what = " and ".join(conds) if conds else "every packet"
        lines.append(f"  [{r}] {rule.name}: {what}")
        acts = []
        if f & DROP:
            acts.append("drop")
        if rule.forward:
            acts.append("forward to " + ", ".join(rule.forward))
        if rule.set:
            acts.append("set " + ", ".join(f"{k}={v!r}" for k, v in rule.set.items()))
        if rule.delete:
            acts.append("delete " + ", ".join(str(d) for d in rule.delete))
        if f & HAS_SAMPLE:
            acts.append(f"sample {rule.sample:g} of calls")
        acts += _guards(rule)
        if f & CONTINUE:
            acts.append("continue")
        if f & NEEDS_SIP:
            acts.append("scans SIP")
        lines.append("      -> " + "; ".join(acts))
    dflt = "drop" if c.default_dest < 0 else c.destinations[c.default_dest].name
    lines.append(f"default (no rule matched): {dflt}")
    return "\n".join(lines)


def _guards(rule) -> list[str]:
    out = []
    if rule.dedup:
        out.append(f"dedup {rule.dedup_window_ms} ms")
    if rule.rate_limit is not None:
        burst = rule.burst if rule.burst is not None else max(1, math.ceil(rule.rate_limit / 10))
        out.append(f"at most {rule.rate_limit:g} packets/s (burst {burst})")
    if rule.rate_limit_calls is not None:
        out.append(f"at most {rule.rate_limit_calls:g} new calls/s")
    return out


def _hp(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
