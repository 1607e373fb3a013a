"""`hepfast top`: a live terminal view of a running switch, read from the admin API's /status.

Shows rates per listener, rule and destination target, drops and invalid packets by reason, target
health, workers and reloads. Rates are the admin API's (measured over its sampling window), so
every viewer sees the same numbers. `--once` prints one frame and exits (scripts, tests, pipes);
otherwise the screen is redrawn every `--interval` seconds until q or Ctrl-C. When stdout is not a
terminal frames are printed one after the other, without escape codes.

/status needs the admin token when the switch has one: `--token`, else the HEPFAST_ADMIN_TOKEN
environment variable, else the token of the `-c` config (admin.token or admin.token_env). It is
sent as `Authorization: Bearer TOKEN`; prefer the variable or the config over `--token`, which
other users of the machine can read in the process list.
"""
from __future__ import annotations

HELP = "live view of a running switch (rates per listener, rule, target; drops; health)"

DEFAULT_ADMIN = "127.0.0.1:9096"


def add_arguments(p) -> None:
    p.add_argument("--admin", metavar="HOST:PORT",
                   help=f"admin API address (admin.listen); default: from -c, else {DEFAULT_ADMIN}")
    p.add_argument("-c", "--config", metavar="CONFIG",
                   help="read admin.listen from this configuration file")
    p.add_argument("--token", metavar="TOKEN",
                   help="admin API bearer token; default: $HEPFAST_ADMIN_TOKEN, else from -c")
    p.add_argument("--interval", type=float, default=1.0, metavar="S",
                   help="seconds between refreshes (default 1)")
    p.add_argument("--once", action="store_true",
                   help="print one frame and exit (non-interactive)")


# ------------------------------------------------------------------------------ rendering

def _rate(x: float) -> str:
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e4:
        return f"{x / 1e3:.1f}k"
    return f"{x:.1f}"


def _dur(s: float) -> str:
    s = int(s)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return (f"{d}d" if d else "") + (f"{h}h" if d or h else "") + f"{m:02d}m{s:02d}s"


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for r in [header, *rows]:
        cells = [str(c).rjust(w) if i in right else str(c).ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
    return out


def render(st: dict, admin: str = "", width: int = 0) -> str:
    """One frame of text from a /status document (a dict). `width` > 0 truncates lines."""
    import time

    workers = st.get("workers", [])
    alive = sum(1 for w in workers if w.get("alive"))
    health = "healthy" if st.get("healthy") else f"UNHEALTHY: {st.get('health', '?')}"
    lines = [f"hepfast {st.get('version', '?')}  {admin}  generation {st.get('generation')}  "
             f"up {_dur(st.get('uptime_s', 0))}  workers {alive}/{len(workers)}  {health}  "
             f"{time.strftime('%H:%M:%S')}"]
    rl = st.get("reloads", {})
    last = f"  last error: {rl['last_error']}" if rl.get("last_error") else ""
    tot = st.get("totals", {})
    lines.append(f"reloads ok {rl.get('ok', 0)} error {rl.get('error', 0)}{last}  "
                 f"restarts {st.get('restarts', 0)}  "
                 f"rates over {st.get('rate_window_s', 0):.1f}s")
    lines.append(f"totals: received {tot.get('received', 0)}  invalid {tot.get('invalid', 0)}  "
                 f"forwarded {tot.get('forwarded', 0)}  dropped {tot.get('dropped', 0)}  "
                 f"overflows {tot.get('overflows', 0)}")

    lines.append("")
    rows = [[li["name"], li["address"], li["transport"], _rate(li["received_rate"]),
             li["received"], _rate(li["invalid_rate"]), li["invalid"], li["overflows"]]
            for li in st.get("listeners", [])]
    lines += _table(["LISTENER", "ADDRESS", "TRANSPORT", "RECV/s", "RECEIVED", "INVALID/s",
                     "INVALID", "OVERFLOWS"], rows, {3, 4, 5, 6, 7})

    lines.append("")
    rows = [[r["name"], _rate(r["rate"]), r["packets"]] for r in st.get("rules", [])]
    lines += _table(["RULE", "PKTS/s", "PACKETS"], rows, {1, 2})

    lines.append("")
    rows = []
    for d in st.get("destinations", []):
        for t in d.get("targets", []):
            age = t.get("last_error_age_s")
            rows.append([d["name"], d.get("mode", ""), t["target"], "up" if t["up"] else "DOWN",
                         _rate(t["rate"]), t["packets"], t["send_errors"],
                         "-" if age is None else f"{age:.0f}s ago"])
        if not d.get("targets"):
            rows.append([d["name"], d.get("mode", ""), f"({d.get('transport', '')})", "", "", "",
                         "", ""])
    lines += _table(["DESTINATION", "MODE", "TARGET", "STATE", "FWD/s", "FORWARDED", "SEND_ERR",
                     "LAST_ERROR"], rows, {4, 5, 6})

    for title, key in (("DROPPED", "dropped"), ("INVALID", "invalid")):
        lines.append("")
        items = [(k, v) for k, v in st.get(key, {}).items() if v["packets"] or v["rate"]]
        if not items:
            lines.append(f"{title}: none")
            continue
        lines += _table([f"{title} (reason)", "PKTS/s", "PACKETS"],
                        [[k, _rate(v["rate"]), v["packets"]] for k, v in items], {1, 2})
    if width > 0:
        lines = [ln[:width] for ln in lines]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ fetching

class Unreachable(Exception):
    pass


def fetch(admin: str, timeout: float = 2.0, token: str = "") -> dict:
    """The /status document, or Unreachable saying why."""
    import urllib.error
    import urllib.request

    import msgspec

    url = f"http://{admin}/status"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                    timeout=timeout) as resp:
            return msgspec.json.decode(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            hint = ("the token sent is wrong" if token else
                    "no token given: use --token, HEPFAST_ADMIN_TOKEN or -c CONFIG")
            raise Unreachable(f"{url} answered 401: the admin API needs its token "
                              f"(admin.token); {hint}") from None
        raise Unreachable(f"{url} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Unreachable(f"cannot reach {url} ({reason})") from None
    except msgspec.DecodeError as exc:
        raise Unreachable(f"{url} did not return hepfast status JSON ({exc}); "
                          "is admin.listen another service?") from None


def _admin_address(args) -> tuple[str, str]:
    """(HOST:PORT, token) from the options, the environment and the -c config."""
    import os

    cfg = None
    if args.config:
        from hepfast.config import load_config
        cfg = load_config(args.config)      # ConfigError is reported by main
    address = args.admin or (cfg.admin.listen if cfg is not None else DEFAULT_ADMIN)
    token = args.token or os.environ.get("HEPFAST_ADMIN_TOKEN", "")
    if not token and cfg is not None:
        from hepfast.config.validate import admin_token
        token = admin_token(cfg.admin)
    return address, token


def main(args) -> int:
    import sys

    try:
        admin, token = _admin_address(args)
    except Exception as exc:  # noqa: BLE001 - ConfigError or OSError: say it and stop
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 2
    if args.interval <= 0:
        print("error: --interval must be greater than 0", file=sys.stderr)
        return 2
    try:
        st = fetch(admin, token=token)
    except Unreachable as exc:
        if "answered 401" in str(exc):
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"error: {exc}: is hepfast running? admin.listen is {admin} "
              "(use --admin HOST:PORT or -c CONFIG to look elsewhere)", file=sys.stderr)
        return 1
    if args.once:
        sys.stdout.write(render(st, admin))
        sys.stdout.flush()
        return 0
    if sys.stdout.isatty():
        return _interactive(admin, args.interval, st, token)
    return _stream(admin, args.interval, st, token)


def _stream(admin: str, interval: float, st: dict, token: str = "") -> int:
    """Not a terminal: a frame per interval, separated by blank lines, no escape codes."""
    import sys
    import time

    while True:
        sys.stdout.write(render(st, admin) + "\n")
        sys.stdout.flush()
        time.sleep(interval)
        try:
            st = fetch(admin, token=token)
        except Unreachable as exc:
            print(f"error: {exc}: hepfast stopped?", file=sys.stderr)
            return 1


def _interactive(admin: str, interval: float, st: dict | None, token: str = "") -> int:
    import os
    import select
    import shutil
    import sys
    import time

    stdin_tty = sys.stdin.isatty()
    old = None
    if stdin_tty:
        import termios
        import tty
        fd = sys.stdin.fileno()
        old = termios.tcgetattr(fd)
        tty.setcbreak(fd)
    out = sys.stdout
    out.write("\x1b[?1049h\x1b[?25l")            # alternate screen, hide cursor
    err = None
    try:
        while True:
            size = shutil.get_terminal_size((100, 40))
            frame = render(st, admin, size.columns) if st is not None else ""
            if err:
                frame += f"\n!! {err} (retrying; is hepfast still running?)\n"
            # The hint first: it must survive truncation to the terminal's height.
            lines = ["q: quit", *frame.split("\n")][:max(1, size.lines - 1)]
            out.write("\x1b[H\x1b[2J" + "\n".join(ln[:size.columns] for ln in lines))
            out.flush()
            deadline = time.monotonic() + interval
            while (left := deadline - time.monotonic()) > 0:
                if not stdin_tty:
                    time.sleep(left)
                    break
                r, _, _ = select.select([sys.stdin], [], [], left)
                if r:
                    ch = os.read(sys.stdin.fileno(), 32)
                    if not ch or b"q" in ch.lower() or b"\x03" in ch:
                        return 0
            try:
                st, err = fetch(admin, token=token), None
            except Unreachable as exc:
                err = str(exc)
    except KeyboardInterrupt:
        return 0
    finally:
        out.write("\x1b[?25h\x1b[?1049l")        # cursor back, main screen
        out.flush()
        if old is not None:
            import termios
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, old)
