"""The admin HTTP API on `admin.listen`: /metrics, /healthz, /status, POST /reload.

A ThreadingHTTPServer in a daemon thread of the supervisor; each request gets its own thread, so a
slow scrape or a reload never blocks another request. The API only reads the shared counter block
and the supervisor's attributes, plus `sup.request_reload()` (thread-safe on the supervisor side).

- GET /metrics  Prometheus text exposition of a private registry (hepfast.observe.metrics).
- GET /healthz  200 "ok" while sup.healthy(); 503 and the reason otherwise.
- GET /status   JSON (msgspec, schema: the Status struct below): generation, uptime, workers,
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
from hepfast.dataplane import counters as C
from hepfast.wire.reasons import INVALID_NAMES
from hepfast.observe.metrics import (
    Snapshot,
    build_registry,
    drop_label,
    exposition,
    invalid_label,
    iter_listeners,
    iter_rules,
    iter_targets,
    proto_label,
    target_label,
)

log = logging.getLogger("hepfast.observe.admin")

DEFAULT_LISTEN = "127.0.0.1:9096"


# ------------------------------------------------------------------------------ /status schema

class Counted(msgspec.Struct):
    packets: int
    rate: float                     # packets per second over the last sample window


class TargetStatus(msgspec.Struct):
    target: str                     # "host:port"
    packets: int                    # forwarded
    rate: float
    send_errors: int
    up: bool
    last_error_age_s: float | None  # None: never failed


class DestinationStatus(msgspec.Struct):
    name: str
    mode: str
    transport: str
    packets: int                    # sum over targets
    rate: float
    targets: list[TargetStatus]


class RuleStatus(msgspec.Struct):
    name: str
    packets: int
    rate: float


class ListenerStatus(msgspec.Struct):
    name: str
    address: str
    transport: str
    received: int
    received_rate: float
    invalid: int
    invalid_rate: float
    overflows: int
    proto_types: dict[str, int]     # received by proto type name (non-zero only)


class WorkerStatus(msgspec.Struct):
    index: int
    pid: int
    alive: bool
    generation: int
    heartbeat_age_s: float


class Reloads(msgspec.Struct):
    ok: int
    error: int
    last_error: str | None


class Totals(msgspec.Struct):
    datagrams: int
    received: int
    invalid: int
    routed: int
    copies: int
    forwarded: int
    dropped: int
    overflows: int


class Status(msgspec.Struct):
    version: str
    generation: int
    started_at: float               # unix time
    uptime_s: float
    healthy: bool
    health: str                     # "ok" or why not
    rate_window_s: float            # seconds the rates are measured over (0: no sample yet)
    workers: list[WorkerStatus]
    restarts: int
    reloads: Reloads
    totals: Totals
    listeners: list[ListenerStatus]
    rules: list[RuleStatus]
    destinations: list[DestinationStatus]
    dropped: dict[str, Counted]     # by reason
    invalid: dict[str, Counted]     # by reason, all listeners


# ------------------------------------------------------------------------------ status building

def _address(sup, li) -> str:
    # The bound port, not the configured one: "port 0" listeners (tests) get a real port.
    for name, host, port in getattr(sup, "bound", ()) or ():
        if name == li.name:
            return target_label(host, port)
    return target_label(li.host, li.port)


def build_status(sup, snap: Snapshot, ref: np.ndarray | None, dt: float) -> Status:
    """The /status document from a snapshot; rates against `ref` totals taken `dt` seconds ago."""
    tot = snap.total
    if ref is not None and dt > 0:
        delta = tot.astype(np.int64) - ref.astype(np.int64)
        rates = np.maximum(delta, 0).astype(np.float64) / dt
    else:
        rates = np.zeros(len(tot), dtype=np.float64)
        dt = 0.0

    def rate(lo: int, hi: int | None = None) -> float:
        return round(float(rates[lo] if hi is None else rates[lo:hi].sum()), 3)

    listeners = []
    for li, idx in iter_listeners(sup):
        r0 = C.OFF_RECEIVED + idx * 256
        i0 = C.OFF_INVALID + idx * C.N_INVALID
        row = tot[r0:r0 + 256]
        listeners.append(ListenerStatus(
            name=li.name, address=_address(sup, li), transport=getattr(li, "transport", "udp"),
            received=int(row.sum()), received_rate=rate(r0, r0 + 256),
            invalid=int(tot[i0:i0 + C.N_INVALID].sum()), invalid_rate=rate(i0, i0 + C.N_INVALID),
            overflows=snap.overflow(idx),
            proto_types={proto_label(n): int(row[n]) for n in np.flatnonzero(row).tolist()}))

    rules = [RuleStatus(name, snap.rule(slot), rate(C.OFF_RULE + slot))
             for name, slot in iter_rules(sup)]

    dests: dict[str, DestinationStatus] = {}
    for d in sup.compiled.destinations:
        dests[d.name] = DestinationStatus(d.name, getattr(d, "mode", ""),
                                          getattr(d, "transport", "udp"), 0, 0.0, [])
    for t in iter_targets(sup):
        ds = dests[t.destination]
        ts = TargetStatus(t.target, snap.forwarded(t.slot), rate(C.OFF_FORWARDED + t.slot),
                          snap.send_errors(t.slot), snap.up(t.slot),
                          _round(snap.last_error_age_s(t.slot)))
        ds.targets.append(ts)
        ds.packets += ts.packets
        ds.rate = round(ds.rate + ts.rate, 3)

    dropped = {drop_label(r): Counted(int(tot[C.OFF_DROP + r]), rate(C.OFF_DROP + r))
               for r in range(C.N_DROP) if _known_drop(r) or tot[C.OFF_DROP + r]}
    inv = snap.invalid().sum(axis=0)
    inv_rates = rates[C.OFF_INVALID:C.OFF_OVERFLOW].reshape(C.MAX_LISTENERS, C.N_INVALID).sum(axis=0)
    invalid = {invalid_label(r): Counted(int(inv[r]), round(float(inv_rates[r]), 3))
               for r in range(1, len(INVALID_NAMES))}

    totals = Totals(
        datagrams=int(tot[C.H_DATAGRAMS]),
        received=int(tot[C.OFF_RECEIVED:C.OFF_INVALID].sum()),
        invalid=int(tot[C.OFF_INVALID:C.OFF_OVERFLOW].sum()),
        routed=int(tot[C.H_ROUTED]), copies=int(tot[C.H_COPIES]),
        forwarded=int(tot[C.OFF_FORWARDED:C.OFF_SEND_ERR].sum()),
        dropped=int(tot[C.OFF_DROP:C.OFF_DEST_DROP].sum()),
        overflows=int(tot[C.OFF_OVERFLOW:C.OFF_RULE].sum()))

    ok, why = sup.healthy()
    workers = [WorkerStatus(int(w["index"]), int(w.get("pid") or 0), bool(w.get("alive")),
                            int(w.get("generation", 0)),
                            round(float(w.get("heartbeat_age_s", 0.0)), 3))
               for w in sup.workers_alive()]
    return Status(
        version=__version__, generation=int(sup.generation), started_at=float(sup.started_at),
        uptime_s=round(max(0.0, time.time() - sup.started_at), 3), healthy=bool(ok),
        health=str(why), rate_window_s=round(dt, 3), workers=workers,
        restarts=int(sup.restarts),
        reloads=Reloads(int(sup.reload_counts.get("ok", 0)), int(sup.reload_counts.get("error", 0)),
                        sup.last_reload_error),
        totals=totals, listeners=listeners, rules=rules, destinations=list(dests.values()),
        dropped=dropped, invalid=invalid)


def _known_drop(r: int) -> bool:
    return drop_label(r) != f"code{r}"


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


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
