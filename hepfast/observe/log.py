"""Logging for the control plane: one line per event, optionally JSON lines, and rate limiting.

- `setup_logging(json=False, level="info")` configures the root logger once (calling it again
  replaces what it installed, never stacks handlers). Every record is exactly one line: newlines
  in messages and tracebacks are escaped, so `grep` and log shippers see one event per line.
- `RateLimitedLogger` is for problems that can repeat per packet or per send (a bad source, a
  target refusing): at most `burst` lines per key per `interval`; the rest are counted and reported
  as "N similar messages suppressed" when the key logs again after its window, or on `flush()`.
  Message formatting happens only for lines actually written (cold path).
- `say(msg, level=..., **fields)` is for the lines an operator reads at start and stop
  ("listening agents udp 0.0.0.0:9060", "error: ..."): exactly `msg` as plain text, or a JSON
  object (msg + fields) once `setup_logging(json=True)` ran, so `--log-json` makes every line JSON.
- On a terminal, a live counter line (`live_line(text)`, drawn with a carriage return and no
  newline) and log lines share stderr: every line written through this module first clears the
  live line, then draws it again, so a log line never glues onto the counters.
- `summary_line(summary)` formats the periodic one-line counters summary (the switch logs it
  every 60 s when stderr is not a terminal).
"""
from __future__ import annotations

import logging
import sys
import threading
import time

import msgspec

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "warn": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL}

# Attributes every LogRecord has; anything else was passed with extra={...} and goes into JSON.
_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def _level(level) -> int:
    if isinstance(level, int):
        return level
    try:
        return LEVELS[str(level).strip().lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}: use one of "
                         f"{', '.join(sorted(set(LEVELS) - {'warn'}))}") from None


def _ts(created: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + \
        f".{int(created % 1 * 1000):03d}Z"


class LineFormatter(logging.Formatter):
    """`2024-05-01T10:00:00.123Z WARNING hepfast.dataplane.supervisor: message` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += " | " + self.formatException(record.exc_info)
        line = f"{_ts(record.created)} {record.levelname} {record.name}: {msg}"
        return line.replace("\r", "\\r").replace("\n", "\\n")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, pid, extras, and exc when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": _ts(record.created), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage(), "pid": record.process}
        for k, v in vars(record).items():
            if k not in _STD_ATTRS and not k.startswith("_"):
                doc[k] = v
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return msgspec.json.encode(doc, enc_hook=repr).decode()


_installed: list[logging.Handler] = []

CLEAR_LINE = "\r\x1b[2K"       # carriage return + erase the whole line (ANSI)


class _Live:
    """The live counter line currently shown on a terminal stream (one per process)."""

    lock = threading.RLock()
    text = ""
    stream = None


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def write_line(line: str, stream=None) -> None:
    """Write one complete line to `stream` (stderr): on a terminal, clear the live counter line
    first and draw it again after, so the two never share a line."""
    stream = stream if stream is not None else sys.stderr
    with _Live.lock:
        tty = _isatty(stream)
        if tty:
            stream.write(CLEAR_LINE)
        stream.write(line + "\n")
        if tty and _Live.text and _Live.stream is stream:
            stream.write(_Live.text)
        stream.flush()


def live_line(text: str, stream=None) -> None:
    """Show `text` as the live counter line (replacing the previous one); terminals only."""
    stream = stream if stream is not None else sys.stderr
    with _Live.lock:
        _Live.text, _Live.stream = text, stream
        stream.write(CLEAR_LINE + text)
        stream.flush()


def live_end(keep: bool = True, stream=None) -> None:
    """Stop drawing the live line: leave its last state on screen (keep) or erase it."""
    stream = stream if stream is not None else sys.stderr
    with _Live.lock:
        if _Live.text:
            stream.write("\n" if keep else CLEAR_LINE)
            stream.flush()
        _Live.text, _Live.stream = "", None


class LineHandler(logging.StreamHandler):
    """A StreamHandler whose lines go through write_line (live-line aware)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            write_line(self.format(record), self.stream)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


class _State:
    json = False
    stream = None


def setup_logging(json: bool = False, level="info", stream=None) -> logging.Handler:
    """Configure the root logger: one line per event to `stream` (stderr), JSON lines if `json`.
    Also decides how `say` writes (plain text, or JSON)."""
    root = logging.getLogger()
    for h in _installed:
        root.removeHandler(h)
    _installed.clear()
    handler = LineHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else LineFormatter())
    root.addHandler(handler)
    root.setLevel(_level(level))
    _installed.append(handler)
    _State.json, _State.stream = json, stream
    return handler


def json_enabled() -> bool:
    """Whether setup_logging(json=True) is in force (every line is a JSON object)."""
    return _State.json


def say(msg: str, level: int | str = logging.INFO, logger: str = "hepfast", **fields) -> None:
    """An operator-facing line: `msg` exactly, as plain text on stderr, or, with JSON logging, a
    JSON object {ts, level, logger, msg, pid, **fields}. Use for start/stop lines and command
    errors; events that belong in the log proper use logging directly."""
    if _State.json:
        logging.getLogger(logger).log(_level(level), "%s", msg, extra=fields)
    else:
        write_line(msg.replace("\r", "\\r").replace("\n", "\\n"), _State.stream)


def summary_line(summary: dict, prev: dict | None = None, seconds: float | None = None) -> str:
    """One line of counters from `hepfast run`'s summary dict (its final JSON object):
    totals, and rates over the last interval when `prev` (the summary `seconds` ago) is given.
    Reasons and labels appear only when non-zero, so a healthy switch gives a short line:
    `counters gen 1: datagrams 1200 received 1200 forwarded 2400 invalid 0 dropped 0 ...`."""
    def n(key: str) -> int:
        return int(summary.get(key, 0) or 0)

    def reasons(key: str) -> str:
        d = {k: v for k, v in (summary.get(key) or {}).items() if v}
        return (" (" + ", ".join(f"{k} {v}" for k, v in sorted(d.items())) + ")") if d else ""

    send_errors = sum((summary.get("send_errors") or {}).values())
    parts = [f"counters gen {summary.get('generation', '?')}:",
             f"datagrams {n('datagrams')}", f"received {n('received')}",
             f"forwarded {n('forwarded_total')}",
             f"invalid {n('invalid_total')}{reasons('invalid')}",
             f"dropped {n('dropped_total')}{reasons('dropped')}"]
    if send_errors:
        parts.append(f"send_errors {send_errors}")
    for key in ("overflows", "restarts"):
        if n(key):
            parts.append(f"{key} {n(key)}")
    if prev is not None and seconds and seconds > 0:
        def rate(key: str) -> str:
            return f"{max(0, n(key) - int(prev.get(key, 0) or 0)) / seconds:.0f}/s"
        parts.append(f"| last {seconds:.0f} s: rx {rate('datagrams')} "
                     f"fwd {rate('forwarded_total')} invalid {rate('invalid_total')} "
                     f"dropped {rate('dropped_total')}")
    return " ".join(parts)


class RateLimitedLogger:
    """At most `burst` lines per key per `interval` seconds; the others counted and reported.

    `rl.warning(key, "target %s: %s", target, err)` — key is what makes two messages "similar"
    (e.g. ("send_error", target)). Keys are bounded (`max_keys`): the stalest are forgotten, with
    their suppressed counts reported first.
    """

    def __init__(self, logger: logging.Logger | str, burst: int = 5, interval: float = 60.0,
                 max_keys: int = 4096, clock=time.monotonic):
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.burst = burst
        self.interval = interval
        self.max_keys = max_keys
        self.clock = clock
        self._lock = threading.Lock()
        # key -> [window start, lines written in window, suppressed in window, level]
        self._keys: dict[object, list] = {}

    def log(self, level: int, key, msg: str, *args) -> bool:
        """Log unless the key is over its budget; returns whether the line was written."""
        now = self.clock()
        report = None
        with self._lock:
            st = self._keys.get(key)
            if st is not None and now - st[0] >= self.interval:
                if st[2]:
                    report = (st[3], key, st[2])
                st = None
            if st is None:
                if len(self._keys) >= self.max_keys:
                    self._evict(now)
                st = self._keys[key] = [now, 0, 0, level]
            if st[1] >= self.burst:
                st[2] += 1
                st[3] = max(st[3], level)
                write = False
            else:
                st[1] += 1
                write = True
        if report:
            self._report(*report)
        if write:
            self.logger.log(level, msg, *args)
        return write

    def _evict(self, now: float) -> None:
        # Forget the oldest quarter; report their suppressed counts so nothing vanishes silently.
        old = sorted(self._keys.items(), key=lambda kv: kv[1][0])[:max(1, len(self._keys) // 4)]
        for key, st in old:
            del self._keys[key]
            if st[2]:
                self._report(st[3], key, st[2])

    def _report(self, level: int, key, n: int) -> None:
        self.logger.log(level, "%d similar messages suppressed (%s)", n, _key_text(key))

    def flush(self) -> int:
        """Report every pending suppressed count now (e.g. at shutdown); returns their sum."""
        with self._lock:
            pending = [(st[3], key, st[2]) for key, st in self._keys.items() if st[2]]
            for st in self._keys.values():
                st[2] = 0
        for p in pending:
            self._report(*p)
        return sum(p[2] for p in pending)

    def suppressed(self, key) -> int:
        st = self._keys.get(key)
        return st[2] if st else 0

    def debug(self, key, msg, *args) -> bool:
        return self.log(logging.DEBUG, key, msg, *args)

    def info(self, key, msg, *args) -> bool:
        return self.log(logging.INFO, key, msg, *args)

    def warning(self, key, msg, *args) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key, msg, *args) -> bool:
        return self.log(logging.ERROR, key, msg, *args)


def _key_text(key) -> str:
    if isinstance(key, tuple):
        return " ".join(str(k) for k in key)
    return str(key)
