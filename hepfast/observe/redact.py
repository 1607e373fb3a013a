"""Secrets out of what operators and clients see: errors, log lines, /status, reload answers.

The configuration holds shared secrets: listener and destination auth keys, the admin token (or
the environment variable it comes from), passwords inside postgres DSNs. None of them may appear
in an error message, a log line or an admin API answer, even when the message quotes the value
that was wrong.

- `secrets_of(cfg)`: every secret value in a `Config`, a msgspec Struct or an already-parsed TOML
  dict (a config the validation refused still has its secrets masked).
- `mask_secrets(text, secrets)`: each known secret replaced by `***`, plus what looks like a
  secret without being known: the password of a `scheme://user:password@host` URL,
  `password=...` / `auth_key = "..."` / `token=...` assignments, `Bearer ...` credentials.
- `redact(obj, secrets)`: the same over a JSON-like document (dicts, lists, Structs); the values
  of secret-named keys (`auth_key`, `token`, `password`, `secret`) are masked whatever they are,
  a `dsn` keeps everything but its password.
- `SecretFilter(secrets)`: a logging.Filter that masks the formatted message and the traceback
  of every record it sees; `install_log_filter(secrets)` attaches one to every handler of the
  root logger, which covers every logger of the process.

Masking is a text substitution, longest secret first; a very short secret masks every place its
characters occur, which garbles a message but never leaks the secret.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable
from urllib.parse import urlsplit

import msgspec

MASK = "***"

# Keys whose value is a secret wherever they appear (config tables, JSON documents).
SECRET_KEYS = frozenset({"auth_key", "token", "password", "passwd", "secret", "api_key"})
# Environment variables that hold secrets without the config naming them.
SECRET_ENV = ("HEPFAST_ADMIN_TOKEN",)

_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@'\"]*:)"
                           r"(?P<pw>[^\s@/'\"]+)(?=@)")
_ASSIGNMENT = re.compile(r"(?i)(?P<head>\b(?:[a-z0-9]+_)*(?:auth_key|token|password|passwd|"
                         r"secret|api_key)\s*=\s*(?P<q>[\"']?))(?P<val>[^\"'\s,;&}]+)")
_BEARER = re.compile(r"(?i)(?P<head>\bbearer\s+)(?P<val>[A-Za-z0-9._~+/=-]+)")


def mask_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with every secret in `secrets` and every secret-looking value replaced by ***."""
    if not isinstance(text, str):
        text = str(text)
    for s in sorted({s for s in secrets if isinstance(s, str) and s}, key=len, reverse=True):
        text = text.replace(s, MASK)
    text = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    text = _ASSIGNMENT.sub(lambda m: m.group("head") + MASK, text)
    return _BEARER.sub(lambda m: m.group("head") + MASK, text)


def dsn_password(dsn: str) -> str:
    """The password inside a DSN: URL form (`postgresql://u:pw@h/db`) or keyword form."""
    if not isinstance(dsn, str):
        return ""
    try:
        pw = urlsplit(dsn).password
    except ValueError:
        pw = None
    if pw:
        return pw
    m = re.search(r"(?i)\bpassword\s*=\s*(?:'((?:[^'\\]|\\.)*)'|(\S+))", dsn)
    return (m.group(1) or m.group(2) or "") if m else ""


def secrets_of(cfg, environ=None) -> list[str]:
    """Every secret value in a Config, Struct or parsed TOML dict (and token_env's value)."""
    env = os.environ if environ is None else environ
    found: list[str] = []

    def walk(obj) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                key = str(k).lower()
                if key in SECRET_KEYS and isinstance(v, str) and v:
                    found.append(v)
                elif key == "dsn" and isinstance(v, str):
                    pw = dsn_password(v)
                    if pw:
                        found.append(pw)
                elif key == "token_env" and isinstance(v, str) and v and env.get(v):
                    found.append(env[v])
                elif key == "dsn_env" and isinstance(v, str) and v and env.get(v):
                    pw = dsn_password(env[v])
                    if pw:
                        found.append(pw)
                else:
                    walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    if isinstance(cfg, msgspec.Struct):
        cfg = msgspec.to_builtins(cfg)
    walk(cfg)
    found += [env[name] for name in SECRET_ENV if env.get(name)]
    return found


def redact(obj, secrets: Iterable[str] = ()):
    """A copy of a JSON-like document with secrets masked (see the module doc)."""
    secrets = list(secrets)

    def walk(o, key: str = ""):
        if isinstance(o, dict):
            return {k: walk(v, str(k).lower()) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [walk(v) for v in o]
        if isinstance(o, str):
            if key in SECRET_KEYS and o:
                return MASK
            if key == "dsn":
                pw = dsn_password(o)
                return mask_secrets(o.replace(pw, MASK) if pw else o, secrets)
            return mask_secrets(o, secrets)
        return o

    if isinstance(obj, msgspec.Struct):
        obj = msgspec.to_builtins(obj)
    return walk(obj)


class SecretFilter(logging.Filter):
    """Masks secrets in each record's message and traceback. `secrets`: a list or a callable
    returning one (called per record, so a reload's new secrets are covered)."""

    def __init__(self, secrets: Iterable[str] | Callable[[], Iterable[str]] = ()):
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            secrets = self._secrets() if callable(self._secrets) else self._secrets
            msg = mask_secrets(record.getMessage(), secrets)
            if record.exc_info:
                # Formatters print exc_info themselves, unmasked: fold the masked traceback into
                # the message instead (LineFormatter's own " | " layout).
                tb = logging.Formatter().formatException(record.exc_info)
                msg += " | " + mask_secrets(tb, secrets)
                record.exc_info = None
                record.exc_text = None
            record.msg, record.args = msg, ()
        except Exception:  # noqa: BLE001 - a filter must never lose the record
            record.msg, record.args = MASK + " (message withheld: masking failed)", ()
            record.exc_info = None
        return True


def install_log_filter(secrets: Iterable[str] | Callable[[], Iterable[str]],
                       logger: logging.Logger | None = None) -> SecretFilter:
    """Attach one SecretFilter to every handler of `logger` (the root logger by default), so
    that every logger's records are masked on their way out; returns it for `remove_log_filter`.
    Handlers added later are not covered: call this after hepfast.observe.log.setup_logging."""
    f = SecretFilter(secrets)
    for h in (logger or logging.getLogger()).handlers:
        h.addFilter(f)
    return f


def remove_log_filter(f: SecretFilter, logger: logging.Logger | None = None) -> None:
    for h in (logger or logging.getLogger()).handlers:
        h.removeFilter(f)
