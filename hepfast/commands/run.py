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
    p.add_argument("--summary-every", type=float, default=60.0, metavar="S",
                   help="log a one-line counters summary every S seconds when stderr is not a "
                        "terminal (0: never; default 60)")
    p.add_argument("--allow-shared-port", action="store_true",
                   help="share listen ports with another process that serves them already")


def summary(sup) -> dict:
    """Counter totals by name: what the switch did, for the final JSON line and tests.

    Every copy of a packet ends in exactly one place, per destination: forwarded (the kernel or
    the store accepted it), dropped for a reason of that destination (queue_full, send_error,
    too_big, unconvertible), or still in a ring (`in_flight`, 0 after a clean stop)."""
    if hasattr(sup, "refresh_kernel_counters"):
        sup.refresh_kernel_counters()
    snap = sup.counters.snapshot()
    from hepfast.constants import DEST_DROPS
    from hepfast.wire.reasons import DROP_NAMES, INVALID_NAMES

    c = sup.compiled
    dest_dropped = snap["dest_dropped"]
    by_dest = {}
    for name, slot in sup.slots.destinations.slots.items():
        d = {r: int(dest_dropped[slot][DROP_NAMES.index(r)]) for r in DEST_DROPS}
        by_dest[name] = {r: v for r, v in d.items() if v}
    dropped = {DROP_NAMES[i]: v for i, v in enumerate(snap["dropped"][:len(DROP_NAMES)]) if v}
    for d in by_dest.values():
        for r, v in d.items():
            dropped[r] = dropped.get(r, 0) + v
    views = sup.target_views()
    out = {
        "generation": sup.generation,
        "datagrams": snap["datagrams"],
        "received": snap["received"],
        "invalid": {INVALID_NAMES[i]: v for i, v in enumerate(snap["invalid_by_reason"]) if v},
        "dropped": dropped,
        "dropped_by_destination": {k: v for k, v in by_dest.items() if v},
        "rules": {n: snap["rules"][sup.rule_slot(n)] for n in c.rule_names},
        "forwarded": {f"{dest}/{label}": snap["forwarded"][slot]
                      for dest, _m, _t, label, slot in views},
        "send_errors": {f"{dest}/{label}": snap["send_errors"][slot]
                        for dest, _m, _t, label, slot in views},
        "queued": {f"{dest}/{label}": snap["queued"][slot]
                   for dest, _m, transport, label, slot in views if snap["queued"][slot]},
        "copies": snap["copies"],
        "routed": snap["routed"],
        "overflows": snap["overflows"],
        "unread_at_stop": snap["drain_left"],
        "restarts": sup.restarts,
        "reloads": dict(sup.reload_counts),
        "workers": [{"index": w["index"], "datagrams": w["datagrams"],
                     "forwarded": w["forwarded"]} for w in sup.workers_alive()],
    }
    from hepfast.constants import CONN_CLOSE_NAMES, N_CONN, OFF_CONN

    tot = sup.counters.total()
    conns = {}
    for i, li in enumerate(c.listeners):
        if li.transport == "udp":
            continue
        base = OFF_CONN + i * N_CONN
        conns[li.name] = {"open": int(tot[base]), "accepted": int(tot[base + 1]),
                          "closed": {r: int(tot[base + 2 + k])
                                     for k, r in enumerate(CONN_CLOSE_NAMES) if tot[base + 2 + k]}}
    if conns:
        out["connections"] = conns
    g = snap["guard"]
    from hepfast.constants import G_CALLS_FULL, G_COMPRESSED, G_DEDUP_FULL, G_INFLATED

    out["guard"] = {"dedup_table_full": g[G_DEDUP_FULL], "call_table_full": g[G_CALLS_FULL],
                    "inflated": g[G_INFLATED], "compressed": g[G_COMPRESSED],
                    **{k: v for k, v in (getattr(sup, "guard_info", None) or {}).items()
                       if k in ("bytes", "page_kib")}}
    out["forwarded_total"] = sum(out["forwarded"].values())
    out["dropped_total"] = sum(out["dropped"].values())
    out["invalid_total"] = sum(out["invalid"].values())
    out["in_flight"] = out["copies"] - out["forwarded_total"] - sum(
        sum(v.values()) for v in by_dest.values())
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
    from hepfast.cli import config_error_line
    from hepfast.config.env import config_path
    from hepfast.observe import sdnotify
    from hepfast.observe.log import say

    args.config = config_path(args.config)          # -c, else $HEPFAST_CONFIG, else bundled
    try:
        sup = Supervisor(args.config, workers=args.workers, admin=not args.no_admin,
                         allow_shared_port=args.allow_shared_port)
    except (ConfigError, OSError) as exc:
        from hepfast.cli import resolve_config

        path = resolve_config(args.config)[0]
        if isinstance(exc, OSError):
            exc = ConfigError("", f"cannot read: {exc.strerror or exc}")
        say(config_error_line(path, exc), level="error", config=path)
        say(f"fix the config (`hepfast check -c {path}` shows the same error) and start again",
            level="error")
        return 2
    # Secrets of the running config (auth keys, token, DSN passwords) never reach the log, also
    # without the admin API (which installs the same filter while it runs).
    from hepfast.observe.redact import install_log_filter, secrets_of

    install_log_filter(lambda: secrets_of(sup.compiled.config))
    try:
        sup.start()
    except OSError as exc:
        say(f"error: {exc}", level="error")
        sup.shutdown()
        return 1
    # Ready means every worker has bound its tables: only then do we say "running".
    ready_by = time.monotonic() + 10
    while not sup.healthy()[0] and time.monotonic() < ready_by:
        time.sleep(0.01)
    ok, why = sup.healthy()
    if not ok:
        say(f"warning: not all workers are up yet ({why})", level="warning")
    transports = {li.name: li.transport for li in sup.compiled.listeners}
    for name, host, port in sup.bound:
        say(f"listening {name} {transports.get(name, 'udp')} {host}:{port}", listener=name,
            host=host, port=port)
    if sup.admin is not None:
        say(f"admin http://{_fmt(sup.compiled.admin_listen[0])}:{getattr(sup.admin, 'port', '')}"
            "/metrics")
    run_dir = sup.compiled.config.switch.run_dir
    if run_dir:
        from hepfast.dataplane import rundir as R

        kind = R.fs_type(run_dir)
        if kind and kind not in ("tmpfs", "ramfs", "hugetlbfs"):
            say(f"warning: switch.run_dir {run_dir} is on {kind}, not a tmpfs: the shared "
                "tables and rings are written back to that disk; mount a tmpfs there",
                level="warning", run_dir=run_dir, fs=kind)
    say(f"hepfast running: {sup.nworkers} workers, config {sup.config_path} "
        f"(SIGHUP reloads, SIGTERM stops)", workers=sup.nworkers, config=str(sup.config_path))

    sup.hooks = {"reload_start": sdnotify.reloading,
                 "reload_end": lambda: sdnotify.ready(f"running, generation {sup.generation}"),
                 "stopping": sdnotify.stopping}
    sup.install_signals()
    # systemd (Type=notify): ready once every worker is up (here or at a later tick), and only
    # once the signal handlers are in place, since systemd may signal right after READY=1.
    ready = [ok]
    if ok:
        sdnotify.ready(f"running, {sup.nworkers} workers")
    deadline = time.monotonic() + args.duration if args.duration else None
    live = sys.stderr.isatty() and not args.quiet and not args.log_json
    prev = {"t": time.monotonic(), "rx": 0, "fwd": 0}
    periodic = {"next": time.monotonic() + args.summary_every, "prev": None,
                "t": time.monotonic()}
    from hepfast.observe.log import summary_line

    def tick(s) -> None:
        if not ready[0] and s.healthy()[0]:
            ready[0] = True
            sdnotify.ready(f"running, {s.nworkers} workers")
        if deadline and time.monotonic() >= deadline:
            s.stop()
        if not live:
            now = time.monotonic()
            if args.summary_every > 0 and now >= periodic["next"]:
                sm = summary(s)
                logging.getLogger("hepfast.counters").info(
                    "%s", summary_line(sm, periodic["prev"], now - periodic["t"]))
                periodic.update(next=now + args.summary_every, prev=sm, t=now)
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
