"""`hepfast replay`: send captures, .hepraw files or synthetic calls as HEP, paced, in parallel."""
from __future__ import annotations

HELP = "send HEP from pcap/pcapng/.hepraw/synthetic: sources to HOST:PORT (the load generator)"


def add_arguments(p) -> None:
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="pcap, pcapng, .hepraw, or synthetic:calls=N,cps=X,ipv6=F,"
                        "capture_id=N,node=NAME,version=2|3,rtcp=N,log=N,talk=S,seed=N")
    p.add_argument("--to", required=True, metavar="HOST:PORT", help="where to send")
    pace = p.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=0.0, metavar="PPS",
                      help="packets per second in total (default: as fast as possible)")
    pace.add_argument("--speed", type=float, default=0.0, metavar="X",
                      help="keep the capture's own timing, X times faster")
    span = p.add_mutually_exclusive_group()
    span.add_argument("--loop", type=int, default=0, metavar="N",
                      help="send the packet set N times, new Call-IDs each loop")
    span.add_argument("--duration", type=float, default=0.0, metavar="S",
                      help="loop until S seconds have passed")
    span.add_argument("--count", type=int, default=0, metavar="N",
                      help="send exactly N packets (looping as needed)")
    p.add_argument("--processes", type=int, default=1, metavar="N",
                   help="sending processes (each its own socket); the work is split exactly")
    p.add_argument("--transport", choices=["udp", "tcp", "tls"], default="udp",
                   help="tcp and tls: one stream per process, packets back to back")
    p.add_argument("--tls-ca", default="", metavar="FILE",
                   help="tls: CA file that signed the receiver's certificate (default: system)")
    p.add_argument("--tls-cert", default="", metavar="FILE", help="tls: client certificate")
    p.add_argument("--tls-key", default="", metavar="FILE", help="tls: its private key")
    p.add_argument("--tls-server-name", default="", metavar="NAME",
                   help="tls: the name the receiver's certificate must carry (default: --to host)")
    p.add_argument("--tls-no-verify", action="store_true",
                   help="tls: do not verify the receiver's certificate (tests only)")
    p.add_argument("--stamp", action="store_true",
                   help="write the send time into the HEP timestamp (sink measures latency)")
    p.add_argument("--batch", type=int, default=64, metavar="N", help="packets per sendmmsg")
    p.add_argument("--capture-id", type=int, default=0, metavar="N",
                   help="capture id for raw SIP wrapped from pcaps (default 0)")
    p.add_argument("--node", metavar="NAME", help="node name chunk for raw SIP wrapped from pcaps")
    p.add_argument("--quiet", action="store_true", help="no live progress on a terminal")


def main(args) -> int:
    import json
    import sys
    import time

    from hepfast.tools import replay
    from hepfast.tools.sink import parse_hostport

    def fail(msg: str, code: int = 2) -> int:
        print(f"hepfast replay: {msg}", file=sys.stderr)
        return code

    try:
        to = parse_hostport(args.to)
    except ValueError as exc:
        return fail(f"--to {exc}")
    if to[1] == 0:
        return fail("--to needs a port other than 0")
    for name in ("loop", "count", "processes", "batch"):
        if getattr(args, name) < 0 or (name in ("processes", "batch") and getattr(args, name) < 1):
            return fail(f"--{name} must be positive")
    if args.rate < 0 or args.speed < 0 or args.duration < 0:
        return fail("--rate, --speed and --duration must be positive")

    t_build = time.monotonic()
    try:
        packets = replay.load(args.sources, args.capture_id, args.node)
        n = len(packets)
        if args.count:
            g1 = args.count
        elif args.duration:
            g1 = -1
        else:
            g1 = max(1, args.loop) * n
        loops_needed = g1 < 0 or g1 > n
        pset = replay.PacketSet(packets, loops_needed=loops_needed, stamp=args.stamp)
    except (replay.ReplayError, OSError) as exc:
        return fail(str(exc), 1 if isinstance(exc, OSError) else 2)
    del packets
    build_s = time.monotonic() - t_build

    live = not args.quiet and sys.stderr.isatty()
    last = [0.0]

    def progress(sent: int, errors: int, elapsed_ns: int) -> None:
        now = time.monotonic()
        if now - last[0] < 1.0:
            return
        last[0] = now
        secs = max(elapsed_ns / 1e9, 1e-9)
        want = f" / {args.rate:.0f}" if args.rate else ""
        sys.stderr.write(f"\rsent {sent:>11}  pps {sent / secs:>10.0f}{want}  errors {errors:>6}  ")
        sys.stderr.flush()

    nproc = args.processes
    shares = [(0, g1)]
    base = dict(to=to, transport=args.transport, speed=args.speed, duration=args.duration,
                batch=args.batch, stamp=args.stamp, rate=args.rate / nproc,
                tls=(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name,
                     not args.tls_no_verify) if args.transport == "tls" else ())
    try:
        if nproc == 1:
            res = replay.run_plan(pset, replay.Plan(g0=0, g1=g1, **base),
                                  progress=progress if live else None)
        else:
            if g1 < 0:
                # Until the deadline: each process starts at its own share of the packet set.
                shares = [(n * k // nproc, -1) for k in range(nproc)]
            else:
                shares = replay.split(0, g1, nproc)
            plans = [replay.Plan(g0=a, g1=b, **base) for a, b in shares]
            res = replay.run_processes(pset, plans, progress if live else None)
    except replay.ReplayError as exc:
        return fail(str(exc), 1)
    finally:
        if live:
            sys.stderr.write("\n")
    secs = max(res["seconds"], 1e-9)
    # Each process sent the first `sent` positions of its share (exact unless some failed:
    # errors and skipped packets are counted by number only).
    sent_by = res.get("per_process", [res["sent"]])
    bytes_sent = sum(pset.bytes_between(a, a + k) for (a, _b), k in zip(shares, sent_by, strict=True))
    summary = {"sent": res["sent"], "seconds": round(secs, 6), "pps": round(res["sent"] / secs, 1),
               "errors": res["errors"], "skipped": res["skipped"], "packets": n,
               "bytes_per_pass": pset.nbytes, "bytes_sent": bytes_sent,
               "processes": nproc, "transport": args.transport,
               "build_seconds": round(build_s, 3)}
    if args.rate:
        # Accuracy over the whole run: sent / elapsed against the requested --rate.
        summary["rate"] = args.rate
        summary["rate_error_pct"] = round(100 * (res["sent"] / secs - args.rate) / args.rate, 3)
    for k in ("broken", "per_process", "failed_processes"):
        if k in res:
            summary[k] = res[k]
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 1 if ("broken" in res or res.get("failed_processes")) else 0
