"""`hepfast sink`: receive HEP over UDP, TCP or TLS, count it, optionally write it out; a JSON
summary at the end.

The summary and the --jsonl lines are compact JSON like `hepfast decode`'s (the lines are the same
objects decode writes, `index` being the arrival order). Latency only with --stamped.
"""
from __future__ import annotations

HELP = "receive HEP over UDP, TCP or TLS (tests, demos, benchmarks): counts, loss, latency, JSON lines"


def add_arguments(p) -> None:
    p.add_argument("--listen", required=True, metavar="[tcp:|tls:]HOST:PORT",
                   help="address to receive on (UDP unless tcp: or tls: comes first: a stream "
                        "framed by the HEPv3 length); port 0 picks a free one (printed on stderr)")
    p.add_argument("--tls-cert", metavar="FILE", help="tls: the sink's certificate (PEM)")
    p.add_argument("--tls-key", metavar="FILE", help="tls: its private key (PEM)")
    p.add_argument("--tls-ca", metavar="FILE",
                   help="tls: require client certificates signed by this CA")
    p.add_argument("--jsonl", metavar="FILE", help="write every packet decoded, one JSON per line "
                   "('-' for stdout, then the summary goes to stderr)")
    p.add_argument("--raw", metavar="FILE", help="write the received bytes as .hepraw")
    p.add_argument("--idle", type=float, metavar="S",
                   help="stop after S seconds without packets (counted from the first packet)")
    p.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds in all")
    p.add_argument("--expect", type=int, metavar="N", help="report `lost` against N packets")
    p.add_argument("--rcvbuf", type=int, default=8 << 20, metavar="BYTES",
                   help="socket receive buffer (default 8 MiB)")
    p.add_argument("--stamped", action="store_true",
                   help="the traffic comes from `hepfast replay --stamp` (its HEP timestamp is the "
                        "send time): report latency_us. Without it no latency is reported, since "
                        "a capture time is not a send time")
    p.add_argument("--quiet", action="store_true", help="no live counters on a terminal")


def main(args) -> int:
    import json
    import signal
    import sys

    from hepfast.tools.sink import (
        Sink,
        StreamSink,
        parse_listen,
        progress_line,
        server_context,
    )

    try:
        scheme, host, port = parse_listen(args.listen)
    except ValueError as exc:
        print(f"hepfast sink: --listen {exc}", file=sys.stderr)
        return 2
    jsonl = raw = None
    out = sys.stdout
    try:
        if args.jsonl == "-":
            jsonl, out = sys.stdout, sys.stderr
        elif args.jsonl:
            jsonl = open(args.jsonl, "w")
        if args.raw:
            raw = open(args.raw, "wb")
        if scheme == "udp":
            sink = Sink((host, port), keep=False, jsonl=jsonl, raw=raw, rcvbuf=args.rcvbuf,
                        latency=args.stamped)
        else:
            ctx = None
            if scheme == "tls":
                if not args.tls_cert or not args.tls_key:
                    print("hepfast sink: tls: needs --tls-cert and --tls-key", file=sys.stderr)
                    return 2
                ctx = server_context(args.tls_cert, args.tls_key, args.tls_ca or "")
            sink = StreamSink((host, port), keep=False, jsonl=jsonl, raw=raw,
                              latency=args.stamped, tls=ctx)
    except OSError as exc:
        print(f"hepfast sink: cannot listen on {args.listen}: {exc.strerror or exc}"
              " (is the port taken? try another or port 0)", file=sys.stderr)
        return 1
    shown_host = f"[{sink.host}]" if ":" in sink.host else sink.host
    print(f"listening on {'' if scheme == 'udp' else scheme + ':'}{shown_host}:{sink.port}",
          file=sys.stderr, flush=True)

    # SIGTERM/SIGINT only ask the loop to stop: the summary is still printed.
    def _stop(signum, frame):
        sink._stop.set()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)

    live = None if args.quiet or not sys.stderr.isatty() else progress_line
    try:
        why = sink.serve(idle=args.idle, timeout=args.timeout, progress=live)
    finally:
        if live:
            sys.stderr.write("\n")
        sink.sock.close()
        for f in (jsonl, raw):
            if f is not None and f is not sys.stdout:
                f.close()
    summary = sink.summary(args.expect)
    summary["stopped"] = why
    print(json.dumps(summary, separators=(",", ":")), file=out, flush=True)
    return 0
