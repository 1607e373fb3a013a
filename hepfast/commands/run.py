"""`hepfast run`: the switch. Without -c it runs the bundled default config."""
from __future__ import annotations

import json
import sys
import time

HELP = "run the HEP switch (bundled default config without -c)"


def add_arguments(p) -> None:
    p.add_argument("-c", "--config", help="TOML config (default: the bundled default.toml)")
    p.add_argument("--workers", type=int, help="override switch.workers")
    p.add_argument("--duration", type=float, help="stop by itself after S seconds")
    p.add_argument("--no-admin", action="store_true", help="do not serve admin.listen")
    p.add_argument("--log-json", action="store_true", help="log events as JSON lines")
    p.add_argument("-q", "--quiet", action="store_true", help="no live counters on a terminal")


def summary(sup) -> dict:
    """Counter totals by name: what the switch did, for the final JSON line and tests."""
    snap = sup.counters.snapshot()
    from hepfast.wire.reasons import DROP_NAMES, INVALID_NAMES

    c = sup.compiled
    out = {
        "generation": sup.generation,
        "datagrams": snap["datagrams"],
        "received": snap["received"],
        "invalid": {INVALID_NAMES[i]: v for i, v in enumerate(snap["invalid_by_reason"]) if v},
        "dropped": {DROP_NAMES[i]: v for i, v in enumerate(snap["dropped"][:len(DROP_NAMES)])
                    if v},
        "rules": {n: snap["rules"][sup.rule_slot(n)] for n in c.rule_names},
        "forwarded": {f"{d.name}/{t.host}:{t.port}":
                      snap["forwarded"][sup.target_slot(d.name, t.host, t.port)]
                      for d in c.destinations for t in d.targets},
        "send_errors": {f"{d.name}/{t.host}:{t.port}":
                        snap["send_errors"][sup.target_slot(d.name, t.host, t.port)]
                        for d in c.destinations for t in d.targets},
        "copies": snap["copies"],
        "routed": snap["routed"],
        "overflows": snap["overflows"],
        "restarts": sup.restarts,
        "reloads": dict(sup.reload_counts),
    }
    out["forwarded_total"] = sum(out["forwarded"].values())
    out["dropped_total"] = sum(out["dropped"].values())
    out["invalid_total"] = sum(out["invalid"].values())
    return out


def main(args) -> int:
    import logging

    from hepfast.config import ConfigError
    from hepfast.dataplane.supervisor import Supervisor

    try:
        from hepfast.observe.log import setup_logging

        setup_logging(json=args.log_json, level=logging.INFO)
    except ImportError:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        sup = Supervisor(args.config, workers=args.workers, admin=not args.no_admin)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        print("fix the config (`hepfast check -c FILE` shows the same error) and start again",
              file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot read the config: {exc}", file=sys.stderr)
        return 2
    try:
        sup.start()
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sup.shutdown()
        return 1
    # Ready means every worker has bound its tables: only then do we say "running".
    ready_by = time.monotonic() + 10
    while not sup.healthy()[0] and time.monotonic() < ready_by:
        time.sleep(0.01)
    ok, why = sup.healthy()
    if not ok:
        print(f"warning: not all workers are up yet ({why})", file=sys.stderr, flush=True)
    for name, host, port in sup.bound:
        print(f"listening {name} udp {host}:{port}", file=sys.stderr, flush=True)
    if sup.admin is not None:
        print(f"admin http://{_fmt(sup.compiled.admin_listen[0])}:{getattr(sup.admin, 'port', '')}"
              "/metrics", file=sys.stderr, flush=True)
    print(f"hepfast running: {sup.nworkers} workers, config {sup.config_path} "
          f"(SIGHUP reloads, SIGTERM stops)", file=sys.stderr, flush=True)
    sup.install_signals()
    deadline = time.monotonic() + args.duration if args.duration else None
    live = sys.stderr.isatty() and not args.quiet
    prev = {"t": time.monotonic(), "rx": 0, "fwd": 0}

    def tick(s) -> None:
        if deadline and time.monotonic() >= deadline:
            s.stop()
        if not live:
            return
        sm = summary(s)
        now = time.monotonic()
        dt = max(1e-6, now - prev["t"])
        rx, fwd = sm["datagrams"], sm["forwarded_total"]
        sys.stderr.write(f"\r\x1b[2Krx {(rx - prev['rx']) / dt:,.0f}/s  fwd "
                         f"{(fwd - prev['fwd']) / dt:,.0f}/s  total rx {rx:,} fwd {fwd:,} "
                         f"invalid {sm['invalid_total']:,} dropped {sm['dropped_total']:,}")
        sys.stderr.flush()
        prev.update(t=now, rx=rx, fwd=fwd)

    code = sup.serve(on_tick=tick, tick_s=0.5 if args.duration else 1.0)
    if live:
        sys.stderr.write("\n")
    print(json.dumps(summary(sup), separators=(",", ":")), flush=True)
    return code


def _fmt(host: str) -> str:
    return f"[{host}]" if ":" in host else host
