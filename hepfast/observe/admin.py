"""The admin HTTP API on `admin.listen`: /metrics, /healthz, /status, POST /reload.

Served from daemon threads of the supervisor. The API only reads the shared counter block and the
supervisor's attributes, plus `sup.request_reload()` (thread-safe on the supervisor side).

- GET /metrics  Prometheus text exposition of a private registry (hepfast.observe.metrics);
                behind the token when `admin.metrics_auth`.
- GET /healthz  200 "ok" while sup.healthy(); 503 and the reason otherwise. Never needs a token.
- GET /status   JSON (msgspec; schema: Status in hepfast.observe.status): generation, uptime,
                workers, packets and rates per listener / rule / destination target, drops and
                invalid packets by reason, target health, reloads and the last reload error.
- POST /reload  re-reads the config file: 200 and a message when applied; 400 and the error
                naming the field when refused (the old config keeps running).

Who may ask (checked in this order; every refusal says why):
- Host: when the API listens on a loopback address, the Host header must name a loopback
  address or "localhost", with this port or none (403 otherwise): a web page whose DNS name
  was rebound to 127.0.0.1 sends its own name, so it cannot read /status.
- Origin: a request that carries an Origin other than the API's own (`http://` + Host) is
  refused with 403: a cross-site form POST to /reload from a browser always carries one.
- Token: when a token is configured (`admin.token`, or the variable `admin.token_env` names),
  /status and POST /reload (and /metrics with metrics_auth) need `Authorization: Bearer TOKEN`,
  compared in constant time; 401 otherwise. Without a token the API only starts on loopback
  (hepfast.config.validate refuses the rest, naming admin.token). The token is read from the
  supervisor's current config on every request, so a reload can rotate it.

Resources are bounded: at most `max_connections` (32) connections are served at once, each by
its own thread; one more is answered 503 and closed at once. A connection has `timeout_s` (5 s)
to deliver a complete request (head and body) from the moment it may send one, both for a new
connection and between keep-alive requests; a half-sent request is then dropped. Bodies above
64 KiB are refused (413).

Secrets (auth keys, tokens, DSN passwords; hepfast.observe.redact) are masked in every answer
(reload messages, /status including the last reload error, 500 errors) and, while the API
runs, in every log line of the process (a SecretFilter on the root logger's handlers), with the
secrets of the running config and of the config file as it is now (a refused file's included).

Rates come from a sampler thread that keeps a counter snapshot every `sample_s` seconds: a rate is
the difference between the live counters and the newest snapshot at least `sample_s` old, divided
by the time between them. Errors in a handler answer 500 and are logged; they never end the server
thread.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import logging
import os
import re
import socket
import socketserver
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
import numpy as np

from hepfast import __version__
from hepfast.config.errors import ConfigError
from hepfast.config.validate import admin_token, is_loopback
from hepfast.observe.log import RateLimitedLogger
from hepfast.observe.metrics import Snapshot, build_registry, exposition, target_label
from hepfast.observe.redact import (
    SecretFilter,
    install_log_filter,
    mask_secrets,
    redact,
    remove_log_filter,
    secrets_of,
)
from hepfast.observe.status import Status, build_status  # noqa: F401 - re-exported

log = logging.getLogger("hepfast.observe.admin")
# Refused tokens can come by the thousand (a scanner, a misconfigured poller): a few lines a minute.
_refusals = RateLimitedLogger(log, burst=5, interval=60.0)

DEFAULT_LISTEN = "127.0.0.1:9096"
MAX_CONNECTIONS = 32
TIMEOUT_S = 5.0
MAX_BODY = 64 * 1024

_BUSY_BODY = b"admin API busy: too many connections, retry in a second\n"
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
         b"Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s"
         % (len(_BUSY_BODY), _BUSY_BODY))


# ------------------------------------------------------------------------------ the server

def parse_listen(listen) -> tuple[str, int]:
    """("host", port) from "host:port", "[v6]:port" or a (host, port) tuple."""
    if isinstance(listen, (tuple, list)):
        return str(listen[0]), int(listen[1])
    text = str(listen).strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"admin listen address {listen!r}: expected HOST:PORT, "
                         "IPv6 as [ADDR]:PORT (admin.listen)")
    return host or "127.0.0.1", int(port)


class _DeadlineReader(io.RawIOBase):
    """The connection's input, under a deadline for the whole request rather than per read: a
    client trickling one byte a second cannot hold its thread longer than `deadline`."""

    def __init__(self, sock: socket.socket, io_timeout: float):
        super().__init__()
        self.sock = sock
        self.io_timeout = io_timeout
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("request not complete in time")
            self.sock.settimeout(min(left, self.io_timeout))
        try:
            return self.sock.recv_into(b)
        finally:
            self.sock.settimeout(self.io_timeout)   # what follows is a write: its own timeout


class _Server(socketserver.TCPServer):
    """Accepts on one thread, serves each connection on its own thread, at most `max_connections`
    at once; the one over the limit is answered 503 from the accepting thread and closed."""

    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address, handler, max_connections: int):
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open_lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.refused = 0                    # connections answered 503 (busy)
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self._busy(request, client_address)
            return
        with self._open_lock:
            self._open.add(request)
        t = threading.Thread(target=self._serve, args=(request, client_address),
                             name="hepfast-admin-conn", daemon=True)
        try:
            t.start()
        except RuntimeError:                # no thread to be had: as if busy
            self._done(request)

    def _serve(self, request, client_address):
        try:
            self.finish_request(request, client_address)
        except Exception:  # noqa: BLE001 - one connection's failure is logged, not raised
            self.handle_error(request, client_address)
        finally:
            self._done(request)

    def _done(self, request) -> None:
        with self._open_lock:
            self._open.discard(request)
        self.shutdown_request(request)
        self._slots.release()

    def _busy(self, request, client_address) -> None:
        self.refused += 1
        try:
            request.setblocking(False)
            try:
                request.recv(65536)         # closing over unread input would reset the answer
            except OSError:
                pass
            request.send(_BUSY)
        except OSError:
            pass
        if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
            log.warning("admin API: too many connections open; refused %d so far (latest from "
                        "%s)", self.refused, client_address[0])
        self.shutdown_request(request)

    def close_connections(self) -> None:
        with self._open_lock:
            socks = list(self._open)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request, client_address):
        # Default prints a traceback to stderr; ours goes to the log, one line, and serving goes on.
        log.exception("admin API: error serving %s", client_address)


class AdminServer:
    """The admin API over a supervisor `sup` (see the module doc). `start()`, `stop()`, `.port`.

    `token` / `metrics_auth` given here win over the supervisor's config (tests, embedding);
    left None, they are read from `sup.compiled.config.admin` on every request."""

    def __init__(self, sup, listen=DEFAULT_LISTEN, *, token: str | None = None,
                 metrics_auth: bool | None = None, max_connections: int = MAX_CONNECTIONS,
                 timeout_s: float = TIMEOUT_S, sample_s: float = 1.0, sampler: bool = True,
                 clock=time.monotonic):
        self.sup = sup
        self.host, self._port = parse_listen(listen)
        self.loopback = is_loopback(self.host)
        self._token = token
        self._metrics_auth = metrics_auth
        self.max_connections = max_connections
        self.timeout_s = timeout_s
        self.sample_s = sample_s
        self.clock = clock
        self.registry = build_registry(sup)
        self._samples: deque[tuple[float, np.ndarray]] = deque(maxlen=8)
        self._samples_lock = threading.Lock()
        self._want_sampler = sampler
        self._stop = threading.Event()
        self._httpd: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._filter = SecretFilter(self.secrets)
        self._root_filter: SecretFilter | None = None
        self._file_secrets: tuple[tuple, list[str]] = ((), [])

    @property
    def port(self) -> int:
        return self._httpd.server_address[1] if self._httpd else self._port

    @property
    def url(self) -> str:
        return f"http://{target_label(self.host, self.port)}"

    @property
    def refused(self) -> int:
        """Connections answered 503 because max_connections were open."""
        return self._httpd.refused if self._httpd else 0

    def start(self) -> None:
        """Bind and serve in daemon threads. OSError (address in use) says what to change."""
        if not self.loopback and not self.token():
            # hepfast.config.validate refuses such a config first; this guards direct use.
            raise ConfigError("admin.token", f"the admin API on {self.host} (not loopback) needs "
                                             f"a bearer token: set admin.token")
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_cls = type("_AdminServer", (_Server,), {"address_family": family})
        try:
            self._httpd = server_cls((self.host, self._port), _make_handler(self),
                                     self.max_connections)
        except OSError as exc:
            raise OSError(exc.errno, f"admin API: cannot listen on "
                          f"{target_label(self.host, self._port)}: {exc.strerror} (is another "
                          "hepfast running? change admin.listen)") from None
        log.addFilter(self._filter)
        # The whole process's log lines too (the supervisor logs refused reloads, which can
        # quote a value from the file), as long as the API runs.
        self._root_filter = install_log_filter(self.secrets)
        self.sample()
        t = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                             name="hepfast-admin", daemon=True)
        t.start()
        self._threads.append(t)
        if self._want_sampler:
            s = threading.Thread(target=self._sampler, name="hepfast-admin-sampler", daemon=True)
            s.start()
            self._threads.append(s)
        log.info("admin API on %s (/metrics /healthz /status, POST /reload%s)", self.url,
                 "; token required" if self.token() else "; no token: loopback only")

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.close_connections()
            self._httpd.server_close()
        for t in self._threads:
            t.join(timeout=2.0)
        self._threads.clear()
        log.removeFilter(self._filter)
        if self._root_filter is not None:
            remove_log_filter(self._root_filter)
            self._root_filter = None

    # -- who may ask, and what they must not see

    def _admin_config(self):
        cfg = getattr(getattr(self.sup, "compiled", None), "config", None)
        return getattr(cfg, "admin", None)

    def token(self) -> str:
        """The bearer token in force ("" for none)."""
        if self._token is not None:
            return self._token
        a = self._admin_config()
        return admin_token(a) if a is not None else ""

    def metrics_auth(self) -> bool:
        if self._metrics_auth is not None:
            return self._metrics_auth
        a = self._admin_config()
        return bool(a is not None and a.metrics_auth)

    def secrets(self) -> list[str]:
        """Secrets of the running config and of the config file as it is now, plus the token."""
        out = [self._token] if self._token else []
        cfg = getattr(getattr(self.sup, "compiled", None), "config", None)
        if cfg is not None:
            out += secrets_of(cfg)
        return out + self._secrets_in_file()

    def _secrets_in_file(self) -> list[str]:
        path = getattr(self.sup, "config_path", None)
        if not path:
            return []
        try:
            st = os.stat(path)
        except OSError:
            return []
        stamp = (str(path), st.st_mtime_ns, st.st_size)
        if self._file_secrets[0] != stamp:
            self._file_secrets = (stamp, _file_secrets(Path(path)))
        return self._file_secrets[1]

    def mask(self, text: str) -> str:
        return mask_secrets(text, self.secrets())

    # -- rates

    def sample(self) -> None:
        """Record a counter snapshot for rates (the sampler thread calls this every sample_s)."""
        total = self.sup.counters.rows.sum(axis=0, dtype=np.uint64)
        with self._samples_lock:
            self._samples.append((self.clock(), total))

    def _sampler(self) -> None:
        while not self._stop.wait(self.sample_s):
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a bad read must not end the rates for good
                log.exception("admin API: counter sample failed")

    def _reference(self, now: float) -> tuple[np.ndarray | None, float]:
        with self._samples_lock:
            samples = list(self._samples)
        best = None
        for t, total in samples:        # oldest first: keep the newest one old enough
            if now - t >= self.sample_s * 0.999:
                best = (t, total)
        if best is None and samples and now - samples[0][0] > 0:
            best = samples[0]
        if best is None:
            return None, 0.0
        return best[1], now - best[0]

    # -- documents

    def status(self) -> Status:
        now = self.clock()
        snap = Snapshot(self.sup.counters)
        ref, dt = self._reference(now)
        return build_status(self.sup, snap, ref, dt)

    def status_json(self) -> bytes:
        """/status as sent: secrets masked."""
        return msgspec.json.encode(redact(self.status(), self.secrets())) + b"\n"

    def metrics(self) -> bytes:
        return exposition(self.registry)


def _file_secrets(path: Path) -> list[str]:
    """Secrets in a config file that may not validate (or parse): what a refused reload quotes."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    try:
        from hepfast.config.load import tomllib
        return secrets_of(tomllib.loads(text))
    except Exception:  # noqa: BLE001 - not TOML: pick `key = "value"` lines by hand
        found = []
        for m in re.finditer(r"(?im)\b(auth_key|token|password|secret|dsn)\s*=\s*([\"'])(.*?)\2",
                             text):
            found += secrets_of({m.group(1).lower(): m.group(3)})
        return found


def _host_port(value: str) -> tuple[str, str] | None:
    """("host", "port" or "") from a Host header value, None when malformed."""
    v = value.strip()
    if v.startswith("["):
        host, sep, rest = v[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        return host, rest[1:]
    if v.count(":") > 1:
        return None
    host, _, port = v.partition(":")
    return host, port


def _make_handler(admin: AdminServer):
    from prometheus_client import CONTENT_TYPE_LATEST

    class Handler(BaseHTTPRequestHandler):
        server_version = f"hepfast/{__version__}"
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            self.rfile.close()          # the plain makefile() reader: replaced by ours
            self._reader = _DeadlineReader(self.connection, admin.timeout_s)
            self.rfile = io.BufferedReader(self._reader)

        def handle_one_request(self):
            # The deadline runs from the moment the client may send: idle keep-alive time counts.
            self._reader.deadline = time.monotonic() + admin.timeout_s
            super().handle_one_request()

        def log_message(self, fmt, *args):     # the default writes every request to stderr
            log.debug("admin API %s: " + fmt, self.client_address[0], *args)

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
                  headers: dict | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            if self.close_connection:
                self.send_header("Connection", "close")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _text(self, code: int, text: str, headers: dict | None = None) -> None:
            self._send(code, (admin.mask(text).rstrip("\n") + "\n").encode(), headers=headers)

        # -- checks

        def _foreign(self) -> str | None:
            """Why this request is not from a client of this API (Host, Origin), or None."""
            host = self.headers.get("Host")
            if admin.loopback and host is not None:
                hp = _host_port(host)
                if hp is None or not is_loopback(hp[0]) or hp[1] not in ("", str(admin.port)):
                    return (f"Host {host!r} is not this admin API: it answers only to loopback "
                            f"names (127.0.0.1:{admin.port}, localhost:{admin.port}, "
                            f"[::1]:{admin.port})")
            origin = self.headers.get("Origin")
            if origin is not None and (host is None or
                                       origin.strip().lower() != f"http://{host.strip().lower()}"):
                return (f"cross-origin request refused (Origin {origin!r}): the admin API is "
                        f"not for web pages")
            return None

        def _authorized(self) -> bool | None:
            """None: no token needed; True: the right bearer token; False: missing or wrong."""
            token = admin.token()
            if not token:
                return None
            scheme, _, cred = (self.headers.get("Authorization") or "").strip().partition(" ")
            if scheme.lower() != "bearer":
                return False
            # Digests first: compare_digest is constant-time only between equal lengths.
            return hmac.compare_digest(hashlib.sha256(cred.strip().encode()).digest(),
                                       hashlib.sha256(token.encode()).digest())

        def _dispatch(self, routes: dict) -> None:
            path = urlsplit(self.path).path.rstrip("/") or "/"
            try:
                why = self._foreign()
                if why:
                    self.close_connection = True
                    self._text(403, why)
                    return
                fn = routes.get(path)
                if fn is None:
                    allowed = [m for m, r in (("GET", GET_ROUTES), ("POST", POST_ROUTES))
                               if path in r]
                    if allowed:
                        self._text(405, f"{path}: use {' or '.join(allowed)}",
                                   headers={"Allow": ", ".join(allowed)})
                    else:
                        self._text(404, f"{path}: not found; try /metrics, /healthz, /status, "
                                   "POST /reload")
                    return
                if path in PROTECTED or (path == "/metrics" and admin.metrics_auth()):
                    ok = self._authorized()
                    if ok is False:
                        given = "Authorization" in self.headers
                        _refusals.warning(("token", self.client_address[0]),
                                          "admin API: %s %s from %s refused: %s token",
                                          self.command, path, self.client_address[0],
                                          "wrong" if given else "no")
                        challenge = 'Bearer realm="hepfast admin"' + \
                            (', error="invalid_token"' if given else "")
                        self._text(401, f"{self.command} {path} needs the admin token "
                                   f"(admin.token): send \"Authorization: Bearer TOKEN\""
                                   + ("; the token sent is wrong" if given else ""),
                                   headers={"WWW-Authenticate": challenge})
                        return
                fn(self)
            except (BrokenPipeError, ConnectionResetError):
                pass
            except Exception as exc:  # noqa: BLE001 - answer 500, keep serving
                log.exception("admin API: %s %s failed", self.command, path)
                try:
                    self._text(500, f"internal error: {exc!r}")
                except OSError:
                    pass

        def do_GET(self):
            self._dispatch(GET_ROUTES)

        def do_HEAD(self):
            self._dispatch(GET_ROUTES)

        def do_POST(self):
            # Consume the body (keep-alive clients expect it), bounded; no chunked bodies.
            if self.headers.get("Transfer-Encoding"):
                self.close_connection = True
                self._text(411, "send the body with a Content-Length, not chunked")
                return
            n = (self.headers.get("Content-Length") or "0").strip()
            if not n.isdigit():
                self.close_connection = True
                self._text(400, f"bad Content-Length {n!r}")
                return
            if int(n) > MAX_BODY:
                self.close_connection = True
                self._text(413, f"body too large ({n} bytes; at most {MAX_BODY})")
                return
            if int(n):
                self.rfile.read(int(n))
            self._dispatch(POST_ROUTES)

    def get_metrics(h):
        h._send(200, admin.metrics(), CONTENT_TYPE_LATEST)

    def get_healthz(h):
        ok, why = admin.sup.healthy()
        h._text(200 if ok else 503, "ok" if ok else f"unhealthy: {why}")

    def get_status(h):
        h._send(200, admin.status_json(), "application/json")

    def get_index(h):
        h._text(200, f"hepfast {__version__} admin API\n"
                     "GET /metrics /healthz /status, POST /reload")

    def post_reload(h):
        ok, msg = admin.sup.request_reload()
        if ok:
            h._text(200, f"reloaded: {msg}")
        else:
            h._text(400, f"reload refused, the previous config keeps running: {msg}")

    GET_ROUTES = {"/metrics": get_metrics, "/healthz": get_healthz, "/status": get_status,
                  "/": get_index}
    POST_ROUTES = {"/reload": post_reload}
    PROTECTED = {"/status", "/reload"}
    return Handler
