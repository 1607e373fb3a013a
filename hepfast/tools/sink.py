"""A HEP receiving end for tests, demos and benchmarks (`hepfast sink`).

One UDP socket with a large receive buffer. Two receive paths share one set of counters
(`hepfast.tools._sender.Receiver`, counting with the switch's own C parser):
- the fast path, a recvmmsg loop in Cython, when nothing needs the packets themselves (benchmarks);
- the Python path (`recv_into` in a tight loop) when the packets are kept (`Sink.packets`, for
  tests), written as JSON lines, or written raw as .hepraw (4-byte big-endian length + bytes).

Latency is arrival time (CLOCK_REALTIME) minus the HEP timestamp, measured only when asked
(`latency=True`, `hepfast sink --stamped`): the HEP timestamp is a send time only in
`hepfast replay --stamp` traffic. Everything else carries a capture time (an agent's, or the
synthetic calls' schedule), and a difference with it is not a latency. Even then only packets
stamped within 10 s of their arrival count.

JSON lines (`jsonl=`) are the objects `hepfast decode` writes (HepPacket.to_record, compact), the
index being the arrival order; a datagram that does not parse is `{"index", "invalid", "length"}`.

`Sink` runs in-process (in a thread) for tests: `Sink("127.0.0.1:0").start()`, `.port`,
`.packets`, `.wait_for(n, timeout)`, `.close()`.

`StreamSink` is the same over TCP or TLS (`hepfast sink --listen tcp:HOST:PORT`, `tls:...` with
a certificate): every connection is framed by the HEPv3 length (hepfast.tools.capture.framing,
closed on garbage, counted as invalid), each packet counted by the same Receiver. Its close() is
a collector's orderly stop: the listening socket goes first, then every connection is shut down
for writing and read until the sender closes its side (bounded), so nothing the sender wrote
before it noticed is lost.
"""
from __future__ import annotations

import json
import socket
import struct
import sys
import threading
import time
from typing import IO

RCVBUF = 8 << 20
LATENCY_WINDOW_S = 10.0


def parse_hostport(text: str, default_host: str = "127.0.0.1") -> tuple[str, int]:
    """("host", port) from "host:port", "[v6]:port" or ":port"; ValueError says what is wrong."""
    text = text.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r}: write IPv6 addresses as [ADDR]:PORT")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r}: expected HOST:PORT")
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"{text!r}: the port must be a number") from None
    if not 0 <= p <= 65535:
        raise ValueError(f"{text!r}: the port must be 0..65535")
    return (host or default_host), p


def family_of(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def open_udp_listener(host: str, port: int, rcvbuf: int = RCVBUF) -> socket.socket:
    sock = socket.socket(family_of(host), socket.SOCK_DGRAM)
    try:
        # The kernel caps this at net.core.rmem_max unless we are root (SO_RCVBUFFORCE).
        sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)          # SO_RCVBUFFORCE
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.bind((host, port))
    return sock


def _percentile(hist, n: int, q: float) -> int:
    import numpy as np

    cum = np.cumsum(hist)
    target = max(1, int(np.ceil(q * n)))
    idx = int(np.searchsorted(cum, target))
    return min(idx, len(hist) - 1)


class Sink:
    """A UDP HEP receiver. keep=True stores every datagram's bytes in `.packets`."""

    def __init__(self, listen: str | tuple[str, int] = "127.0.0.1:0", *, keep: bool = True,
                 jsonl: IO[str] | None = None, raw: IO[bytes] | None = None,
                 rcvbuf: int = RCVBUF, batch: int = 64, latency: bool = False):
        from hepfast.tools._receiver import Receiver

        host, port = parse_hostport(listen) if isinstance(listen, str) else listen
        self.sock = open_udp_listener(host, port, rcvbuf)
        self.address = self.sock.getsockname()[:2]
        self.keep = keep
        self.jsonl = jsonl
        self.raw = raw
        self.latency = latency
        # A zero window counts no latency sample at all.
        self.receiver = Receiver(batch, LATENCY_WINDOW_S if latency else 0.0)
        self._index = 0
        self.packets: list[bytes] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = time.monotonic()

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def received(self) -> int:
        return int(self.receiver.totals[0])

    # ------------------------------------------------------------------ receiving
    def serve(self, idle: float | None = None, timeout: float | None = None,
              progress=None) -> str:
        """Receive until close(), `idle` seconds without packets (after the first one), or
        `timeout` seconds in all. Returns why it stopped: "closed", "idle" or "timeout"."""
        deadline = None if timeout is None else time.monotonic() + timeout
        slow = self.keep or self.jsonl is not None or self.raw is not None
        next_progress = time.monotonic() + 1.0
        while not self._stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return "timeout"
            slice_s = 0.2 if deadline is None else max(0.001, min(0.2, deadline - now))
            if slow:
                stopped_idle = self._serve_python(slice_s, idle)
            else:
                stopped_idle = self.receiver.run(self.sock.fileno(), slice_s, idle or 0.0)
            if stopped_idle:
                return "idle"
            if progress is not None and time.monotonic() >= next_progress:
                progress(self)
                next_progress += 1.0
        return "closed"

    def _serve_python(self, slice_s: float, idle: float | None) -> bool:
        from hepfast.tools._receiver import realtime_ns

        sock, acct = self.sock, self.receiver.account
        buf = bytearray(65536)
        view = memoryview(buf)
        end = time.monotonic() + slice_s
        sock.settimeout(0.02)
        last = time.monotonic()
        while True:
            try:
                n = sock.recv_into(buf)
            except socket.timeout:
                now = time.monotonic()
                if idle and self.received and now - self._last_arrival >= idle:
                    return True
                if now >= end:
                    return False
                continue
            except OSError:
                # e.g. ECONNREFUSED queued by an ICMP error; a receiver has nothing to fix.
                continue
            data = bytes(view[:n])
            acct(data, realtime_ns())
            self._last_arrival = last = time.monotonic()
            if self.raw is not None:
                self.raw.write(struct.pack(">I", n))
                self.raw.write(data)
            if self.jsonl is not None:
                self.jsonl.write(json.dumps(_decode_dict(data, self._index),
                                            separators=(",", ":")) + "\n")
            self._index += 1
            if self.keep:
                with self._cond:
                    self.packets.append(data)
                    self._cond.notify_all()
            if last >= end:
                return False

    _last_arrival = 0.0

    # ------------------------------------------------------------------ in-process use
    def start(self, idle: float | None = None, timeout: float | None = None) -> Sink:
        self._thread = threading.Thread(target=self.serve, args=(idle, timeout),
                                        name=f"sink:{self.port}", daemon=True)
        self._thread.start()
        return self

    def wait_for(self, n: int, timeout: float = 10.0) -> bool:
        """True once at least n packets arrived (keep=True sinks), False after timeout."""
        end = time.monotonic() + timeout
        with self._cond:
            while len(self.packets) < n:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.1))
        return True

    def wait_quiet(self, quiet: float = 0.3, timeout: float = 10.0) -> int:
        """Wait until no packet arrived for `quiet` seconds; returns the count received."""
        end = time.monotonic() + timeout
        last_n, last_change = -1, time.monotonic()
        while time.monotonic() < end:
            n = self.received
            if n != last_n:
                last_n, last_change = n, time.monotonic()
            elif time.monotonic() - last_change >= quiet:
                break
            time.sleep(0.02)
        return self.received

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.sock.close()

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ results
    def summary(self, expect: int | None = None) -> dict:
        r = self.receiver
        tot = [int(x) for x in r.totals]
        received, invalid = tot[0], tot[1]
        first_ns, last_ns = tot[6], tot[7]
        secs = (last_ns - first_ns) / 1e9 if received > 1 else 0.0
        out: dict = {
            "received": received,
            "invalid": invalid,
            "bytes": tot[2],
            "by_proto_type": {str(i): int(c) for i, c in enumerate(r.by_proto_type) if c},
            "by_capture_id": {str(int(r.cap_ids[i])): int(r.cap_counts[i])
                              for i in range(tot[9])},
            "seconds": round(secs, 6),
            "pps": round(received / secs, 1) if secs > 0 else 0.0,
        }
        if tot[8]:
            out["by_capture_id"]["other"] = tot[8]
        if expect is not None:
            out["expected"] = expect
            out["lost"] = max(0, expect - received)
            out["extra"] = max(0, received - expect)
        samples = tot[3]
        if not self.latency:
            return out              # no send time in the packets: no latency to report
        if samples:
            out["latency_us"] = {
                "samples": samples,
                "p50": _percentile(r.lat_hist, samples, 0.50),
                "p99": _percentile(r.lat_hist, samples, 0.99),
                "max": tot[4],
            }
        else:
            out["latency_us"] = None
        return out


class StreamSink(Sink):
    """A TCP (or, with `tls`, an ssl.SSLContext of the server side, TLS) HEP receiver."""

    def __init__(self, listen: str | tuple[str, int] = "127.0.0.1:0", *, keep: bool = True,
                 jsonl: IO[str] | None = None, raw: IO[bytes] | None = None,
                 latency: bool = False, tls=None, rcvbuf: int = RCVBUF, batch: int = 64):
        from hepfast.tools._receiver import Receiver

        host, port = parse_hostport(listen) if isinstance(listen, str) else listen
        self.sock = socket.socket(family_of(host), socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(128)
        self.sock.setblocking(False)
        self.address = self.sock.getsockname()[:2]
        self.tls = tls
        self.keep = keep
        self.jsonl = jsonl
        self.raw = raw
        self.latency = latency
        self.receiver = Receiver(batch, LATENCY_WINDOW_S if latency else 0.0)
        self._index = 0
        self.packets: list[bytes] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = time.monotonic()
        self.connections = 0
        self.closed_bad = 0
        self.tls_failures = 0

    def serve(self, idle: float | None = None, timeout: float | None = None,
              progress=None) -> str:
        import selectors
        import ssl

        from hepfast.tools._receiver import realtime_ns
        from hepfast.tools.capture.framing import StreamError, split_hep_stream

        sel = selectors.DefaultSelector()
        sel.register(self.sock, selectors.EVENT_READ, None)
        bufs: dict = {}
        deadline = None if timeout is None else time.monotonic() + timeout
        next_progress = time.monotonic() + 1.0
        why = "closed"

        def drop(conn) -> None:
            sel.unregister(conn)
            bufs.pop(conn, None)
            conn.close()

        def take(conn, data: bytes) -> None:
            try:
                msgs, rest = split_hep_stream(bufs[conn] + data)
            except StreamError:
                self.receiver.account(data[:1], realtime_ns())     # counted as invalid
                self.closed_bad += 1
                drop(conn)
                return
            bufs[conn] = rest
            now = realtime_ns()
            for m in msgs:
                self._deliver(m, now)

        def read(conn) -> bool:
            """Read until the socket would block (TLS: OpenSSL may hold several records already
            read from the kernel, which no readiness event announces). False once closed."""
            while conn in bufs:
                try:
                    data = conn.recv(1 << 18)
                except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                        ssl.SSLWantWriteError):
                    return True
                except (OSError, ssl.SSLError):
                    drop(conn)
                    return False
                if not data:
                    drop(conn)
                    return False
                take(conn, data)
            return False

        def accept() -> None:
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            if self.tls is not None:
                conn.settimeout(5.0)
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (OSError, ssl.SSLError):
                    self.tls_failures += 1
                    conn.close()
                    return
            conn.setblocking(False)
            self.connections += 1
            bufs[conn] = b""
            sel.register(conn, selectors.EVENT_READ, "conn")

        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    why = "timeout"
                    break
                if idle and self.received and now - self._last_arrival >= idle:
                    why = "idle"
                    break
                for key, _ev in sel.select(0.05):
                    if key.data is None:
                        accept()
                    else:
                        read(key.fileobj)
                if progress is not None and time.monotonic() >= next_progress:
                    progress(self)
                    next_progress += 1.0
            # The orderly stop: no new connections, each open one told (FIN) and read to its end.
            sel.unregister(self.sock)
            self.sock.close()
            end = time.monotonic() + 2.0
            for conn in list(bufs):
                try:
                    # socket.socket's own: SSLSocket.shutdown would drop the TLS layer and
                    # read the rest of the stream as raw records.
                    socket.socket.shutdown(conn, socket.SHUT_WR)
                except OSError:
                    pass
            while bufs and time.monotonic() < end:
                for key, _ev in sel.select(0.05):
                    if key.data is not None:
                        read(key.fileobj)
            for conn in list(bufs):
                drop(conn)
        finally:
            sel.close()
        return why

    def _deliver(self, data: bytes, now_ns: int) -> None:
        self.receiver.account(data, now_ns)
        self._last_arrival = time.monotonic()
        if self.raw is not None:
            self.raw.write(struct.pack(">I", len(data)))
            self.raw.write(data)
        if self.jsonl is not None:
            self.jsonl.write(json.dumps(_decode_dict(data, self._index),
                                        separators=(",", ":")) + "\n")
        self._index += 1
        if self.keep:
            with self._cond:
                self.packets.append(data)
                self._cond.notify_all()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.sock.close()
        except OSError:
            pass


def server_context(cert: str, key: str, ca: str = ""):
    """The server side of a tls sink: its certificate and key; with `ca`, clients must present
    a certificate that CA signed."""
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if ca:
        ctx.load_verify_locations(cafile=ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def parse_listen(text: str) -> tuple[str, str, int]:
    """("udp" | "tcp" | "tls", host, port) from "[udp:|tcp:|tls:]HOST:PORT"."""
    scheme, sep, rest = text.partition(":")
    if sep and scheme in ("udp", "tcp", "tls"):
        host, port = parse_hostport(rest)
        return scheme, host, port
    host, port = parse_hostport(text)
    return "udp", host, port


def _decode_dict(data: bytes, index: int | None = None) -> dict:
    from hepfast.wire import codec

    try:
        pkt = codec.decode(data)
    except codec.HepError as exc:
        return {**({} if index is None else {"index": index}), "invalid": exc.name,
                "length": len(data)}
    return pkt.to_record(index)


def progress_line(sink: Sink) -> None:
    s = sink.summary()
    sys.stderr.write(f"\rreceived {s['received']:>10}  invalid {s['invalid']:>6}  "
                     f"pps {s['pps']:>10.0f}  ")
    sys.stderr.flush()
