"""The admin HTTP API on `admin.listen`: /metrics, /healthz, /status, POST /reload.

A ThreadingHTTPServer in a daemon thread of the supervisor; each request gets its own thread, so a
slow scrape or a reload never blocks another request. The API only reads the shared counter block
and the supervisor's attributes, plus `sup.request_reload()` (thread-safe on the supervisor side).

- GET /metrics  Prometheus text exposition of a private registry (hepfast.observe.metrics).
- GET /healthz  200 "ok" while sup.healthy(); 503 and the reason otherwise.
- GET /status   JSON (msgspec, schema: Status in hepfast.observe.status): generation, uptime, workers,
                packets and rates per listener / rule / destination target, drops and invalid
                packets by reason, target health, reload counts and the last reload error.
- POST /reload  re-reads the config file: 200 and a message when applied; 400 and the error
                naming the field when refused (the old config keeps running).

Rates come from a sampler thread that keeps a counter snapshot every `sample_s` seconds: a rate is
the difference between the live counters and the newest snapshot at least `sample_s` old, divided
by the time between them. Errors in a handler answer 500 and are logged; they never end the server
thread.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import msgspec
import numpy as np

from hepfast import __version__
from hepfast.observe.metrics import Snapshot, build_registry, exposition, target_label
from hepfast.observe.status import Status, build_status  # noqa: F401 - re-exported

log = logging.getLogger("hepfast.observe.admin")

DEFAULT_LISTEN = "127.0.0.1:9096"


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


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def handle_error(self, request, client_address):
        # Default prints a traceback to stderr; ours goes to the log, one line, and serving goes on.
        log.exception("admin API: error serving %s", client_address)


class AdminServer:
    """The admin API over a supervisor `sup` (see the module doc). `start()`, `stop()`, `.port`."""

    def __init__(self, sup, listen=DEFAULT_LISTEN, *, sample_s: float = 1.0,
                 sampler: bool = True, clock=time.monotonic):
        self.sup = sup
        self.host, self._port = parse_listen(listen)
        self.sample_s = sample_s
        self.clock = clock
        self.registry = build_registry(sup)
        self._samples: deque[tuple[float, np.ndarray]] = deque(maxlen=8)
        self._samples_lock = threading.Lock()
        self._want_sampler = sampler
        self._stop = threading.Event()
        self._httpd: _Server | None = None
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return self._httpd.server_address[1] if self._httpd else self._port

    @property
    def url(self) -> str:
        return f"http://{target_label(self.host, self.port)}"

    def start(self) -> None:
        """Bind and serve in daemon threads. OSError (address in use) says what to change."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_cls = type("_AdminServer", (_Server,), {"address_family": family})
        try:
            self._httpd = server_cls((self.host, self._port), _make_handler(self))
        except OSError as exc:
            raise OSError(exc.errno, f"admin API: cannot listen on "
                          f"{target_label(self.host, self._port)}: {exc.strerror} (is another "
                          "hepfast running? change admin.listen)") from None
        self.sample()
        t = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                             name="hepfast-admin", daemon=True)
        t.start()
        self._threads.append(t)
        if self._want_sampler:
            s = threading.Thread(target=self._sampler, name="hepfast-admin-sampler", daemon=True)
            s.start()
            self._threads.append(s)
        log.info("admin API on %s (/metrics /healthz /status, POST /reload)", self.url)

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        for t in self._threads:
            t.join(timeout=2.0)
        self._threads.clear()

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

    def metrics(self) -> bytes:
        return exposition(self.registry)


def _make_handler(admin: AdminServer):
    from prometheus_client import CONTENT_TYPE_LATEST

    class Handler(BaseHTTPRequestHandler):
        server_version = f"hepfast/{__version__}"
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):     # the default writes every request to stderr
            log.debug("admin API %s: " + fmt, self.client_address[0], *args)

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
                  headers: dict | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _dispatch(self, routes: dict) -> None:
            path = urlsplit(self.path).path.rstrip("/") or "/"
            fn = routes.get(path)
            try:
                if fn is None:
                    allowed = [m for m, r in (("GET", GET_ROUTES), ("POST", POST_ROUTES))
                               if path in r]
                    if allowed:
                        self._send(405, f"{path}: use {' or '.join(allowed)}\n".encode(),
                                   headers={"Allow": ", ".join(allowed)})
                    else:
                        self._send(404, f"{path}: not found; try /metrics, /healthz, /status, "
                                   "POST /reload\n".encode())
                    return
                fn(self)
            except (BrokenPipeError, ConnectionResetError):
                pass
            except Exception as exc:  # noqa: BLE001 - answer 500, keep serving
                log.exception("admin API: %s %s failed", self.command, path)
                try:
                    self._send(500, f"internal error: {exc!r}\n".encode())
                except OSError:
                    pass

        def do_GET(self):
            self._dispatch(GET_ROUTES)

        def do_HEAD(self):
            self._dispatch(GET_ROUTES)

        def do_POST(self):
            # Drain a request body if any: keep-alive clients expect it consumed.
            n = int(self.headers.get("Content-Length") or 0)
            if 0 < n <= 1 << 20:
                self.rfile.read(n)
            self._dispatch(POST_ROUTES)

    def get_metrics(h):
        h._send(200, admin.metrics(), CONTENT_TYPE_LATEST)

    def get_healthz(h):
        ok, why = admin.sup.healthy()
        h._send(200 if ok else 503, (("ok" if ok else f"unhealthy: {why}") + "\n").encode())

    def get_status(h):
        h._send(200, msgspec.json.encode(admin.status()) + b"\n", "application/json")

    def get_index(h):
        h._send(200, (f"hepfast {__version__} admin API\n"
                      "GET /metrics /healthz /status, POST /reload\n").encode())

    def post_reload(h):
        ok, msg = admin.sup.request_reload()
        if ok:
            h._send(200, f"reloaded: {msg}\n".encode())
        else:
            h._send(400, f"reload refused, the previous config keeps running: {msg}\n".encode())

    GET_ROUTES = {"/metrics": get_metrics, "/healthz": get_healthz, "/status": get_status,
                  "/": get_index}
    POST_ROUTES = {"/reload": post_reload}
    return Handler
