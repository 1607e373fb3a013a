"""Logging for the control plane: one line per event, optionally JSON lines, and rate limiting.

- `setup_logging(json=False, level="info")` configures the root logger once (calling it again
  replaces what it installed, never stacks handlers). Every record is exactly one line: newlines
  in messages and tracebacks are escaped, so `grep` and log shippers see one event per line.
- `RateLimitedLogger` is for problems that can repeat per packet or per send (a bad source, a
  target refusing): at most `burst` lines per key per `interval`; the rest are counted and reported
  as "N similar messages suppressed" when the key logs again after its window, or on `flush()`.
  Message formatting happens only for lines actually written (cold path).
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


def setup_logging(json: bool = False, level="info", stream=None) -> logging.Handler:
    """Configure the root logger: one line per event to `stream` (stderr), JSON lines if `json`."""
    root = logging.getLogger()
    for h in _installed:
        root.removeHandler(h)
    _installed.clear()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else LineFormatter())
    root.addHandler(handler)
    root.setLevel(_level(level))
    _installed.append(handler)
    return handler


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
