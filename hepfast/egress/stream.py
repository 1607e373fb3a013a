"""The `tcp` and `tls` destinations: persistent HEP streams to each target, from one egress
process per destination.

A stream is the packets themselves, back to back (HEPv3 is self-delimiting; hep-protocol.md
section 4); TLS is the standard library's `ssl` around the same bytes. Everything runs in the
egress loop's one thread on non-blocking sockets, so nothing here ever blocks the rings:
- Routing (per record, the destination's mode among the targets that are connected): hash is
  rendezvous of the record's meta (low 32 bits of the hash of the destination's call key,
  Destination.call_key, computed by the worker) with each target's seed,
  failover the first connected target, roundrobin the next connected one, all every target.
  With no target connected, hash takes the best-ranked target overall, failover the first,
  roundrobin any: the records wait there (queue, spool) rather than being lost at once.
- Per target, records leave strictly in the order they were routed to it: one FIFO of chunks
  (each chunk a run of whole packets, one per batch) written with non-blocking `send`; a chunk
  partly written when the connection breaks is resumed at the first packet that was not
  completely written, on the next connection. So per source connection, packets reach a target
  in the order they arrived.
- Bounds: at most `queue_packets` packets and `queue_bytes` bytes wait in memory per target.
  What does not fit goes to the target's spool (hepfast.egress.spool, `spool` set) or is dropped
  and counted as queue_full. Once a spool holds anything, every new record for that target goes
  to the spool too, and the spool is replayed (oldest first) before live traffic for that target
  resumes, so a call is never reordered. At close, what is still in memory is put at the head of
  the spool (older than what it holds); without a spool it is counted as send_error.
- Counting (what main.py binds with `bind_counting`): forwarded per target when the kernel
  accepted the packet's last byte on that target's socket (TLS: when `ssl` took it). A packet the
  kernel accepted on a connection that broke before the peer read it is lost and stays counted as
  forwarded: HEP has no acknowledgement (docs/transports.md). Dropped per destination:
  queue_full (memory queue full without a spool, or spool full: its oldest segment deleted), and
  send_error (left in memory at the stop, without a spool).
- Connections: non-blocking connect (at most CONNECT_TIMEOUT_S, the TLS handshake included),
  TCP_NODELAY, keepalive (`keepalive` s idle, probes every third of it, 3 probes) and
  TCP_USER_TIMEOUT of the same length, so a dead peer is noticed while data waits. A collector
  never talks back: readable data is discarded, end of stream or an error closes the
  connection. Reconnects back off exponentially from reconnect_min_s to reconnect_max_s, each
  delay jittered to 50-100 % so that many switches do not reconnect in step.
- Target state: `state(i, up, errno)` on every connect and disconnect and about once a second
  while down, so hepfast_destination_up is 1 exactly while the target is connected.
"""
from __future__ import annotations

import errno as _errno
import logging
import os
import random
import re
import select
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hepfast.egress.base import Egress, register
from hepfast.egress.spool import Spool

if TYPE_CHECKING:
    from hepfast.egress._ring import Batch

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0
STATE_REFRESH_S = 1.0
_MASK = 0xFFFFFFFFFFFFFFFF
MODES = ("hash", "all", "failover", "roundrobin")

DOWN, CONNECTING, HANDSHAKE, UP = range(4)


def _mix64(x: int) -> int:
    x &= _MASK
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _MASK
    x ^= x >> 31
    return x


class _Counting:
    """What the egress reports to; main.py binds the real one (counter cells)."""

    def forwarded(self, i: int, n: int) -> None: ...
    def failed(self, i: int, n: int) -> None: ...
    def queue_full(self, n: int) -> None: ...
    def state(self, i: int, up: bool, err: int) -> None: ...


def _packet_ends(buf: memoryview | bytes) -> list[int]:
    """End offsets of the HEPv3 packets of a chunk (the length at offset 4; stream destinations
    send HEPv3 only, validation refuses hep_version = 2 for them). [] if it is not HEPv3."""
    ends = []
    pos, n = 0, len(buf)
    while n - pos >= 6:
        if bytes(buf[pos:pos + 4]) != b"HEP3":
            return []
        ln = (buf[pos + 4] << 8) | buf[pos + 5]
        if ln < 6:
            return []
        pos += ln
        ends.append(pos)
    return ends


class _Chunk:
    __slots__ = ("data", "off", "records", "lens", "seq", "seg_base")

    def __init__(self, data: bytes, records: int, lens: list[int] | None = None,
                 seq: int = -1, seg_base: int = 0) -> None:
        self.data = data
        self.off = 0
        self.records = records
        self.lens = lens          # packet lengths (spool chunks), else found by _packet_ends
        self.seq = seq            # spool segment it came from (-1: live)
        self.seg_base = seg_base  # records of that segment before this chunk


class Target:
    """One target's connection, queue and spool."""

    def __init__(self, egress: StreamEgress, index: int, host: str, port: int, family: int,
                 seed: int, label: str, spool: Spool | None) -> None:
        self.e = egress
        self.i = index
        self.host, self.port, self.family, self.seed, self.label = host, port, family, seed, label
        self.sock: socket.socket | None = None
        self.state = DOWN
        self.deadline = 0.0
        self.next_attempt = 0.0
        self.backoff = egress.reconnect_min_s
        self.detail = "not connected yet"
        self.errno = 0
        self.queue: deque[_Chunk] = deque()
        self.q_packets = 0
        self.q_bytes = 0
        self.spool = spool
        self.connects = 0
        self.disconnects = 0
        self.bytes_sent = 0
        self.last_state = 0.0

    # ---------------------------------------------------------------------------- queueing

    def take(self, views: list, lens: list[int]) -> None:
        """Records routed here, in order (views valid during this call only)."""
        n = len(views)
        nbytes = sum(lens)
        e = self.e
        if self.spool is not None and not self.spool.empty:
            self._spill(views)
            return
        if self.q_packets + n > e.queue_packets or self.q_bytes + nbytes > e.queue_bytes:
            fit = 0
            room_p = e.queue_packets - self.q_packets
            room_b = e.queue_bytes - self.q_bytes
            while fit < n and fit < room_p and lens[fit] <= room_b:
                room_b -= lens[fit]
                fit += 1
            if fit:
                self._push(b"".join(views[:fit]), fit)
            rest = views[fit:]
            if self.spool is not None:
                self._spill(rest)
            else:
                e.count.queue_full(len(rest))
                e.queue_full += len(rest)
            return
        self._push(b"".join(views), n)

    def _push(self, data: bytes, records: int) -> None:
        self.queue.append(_Chunk(data, records))
        self.q_packets += records
        self.q_bytes += len(data)

    def _spill(self, views: list) -> None:
        assert self.spool is not None
        before = self.spool.dropped_records
        refused = self.spool.append(views)
        lost = self.spool.dropped_records - before
        if lost:
            self.e.count.queue_full(lost)
            self.e.queue_full += lost
        del refused

    def _refill(self) -> None:
        """Memory queue empty and a spool with records: load its oldest segment."""
        sp = self.spool
        if sp is None or self.queue:
            return
        while True:
            got = sp.take_segment()
            if got is None:
                return
            seq, packets = got
            if not packets:
                sp.done(seq)
                continue
            base = sp.progress(seq)
            lens = [len(p) for p in packets]
            self.queue.append(_Chunk(b"".join(packets), len(packets), lens, seq, base))
            self.q_packets += len(packets)
            self.q_bytes += sum(lens)
            return

    # ---------------------------------------------------------------------------- sending

    def write(self) -> None:
        """Write queued chunks until the socket would block or the queue is empty."""
        while self.state == UP:
            if not self.queue:
                self._refill()
                if not self.queue:
                    return
            c = self.queue[0]
            try:
                n = self.sock.send(memoryview(c.data)[c.off:])  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError,
                    ssl.SSLWantReadError):
                return
            except (OSError, ssl.SSLError) as exc:
                self.fail(exc)
                return
            if n <= 0:
                return
            c.off += n
            self.bytes_sent += n
            if c.off < len(c.data):
                continue
            self.queue.popleft()
            self.q_packets -= c.records
            self.q_bytes -= len(c.data)
            self.e.count.forwarded(self.i, c.records)
            self.e.forwarded += c.records
            if c.seq >= 0 and self.spool is not None:
                self.spool.done(c.seq)

    def _cut_partial(self) -> None:
        """The head chunk was partly written on a connection that broke: count the packets
        written completely, keep the rest starting at the first one that was not."""
        if not self.queue or self.queue[0].off == 0:
            return
        c = self.queue[0]
        ends = [sum(c.lens[:k + 1]) for k in range(len(c.lens))] if c.lens else \
            _packet_ends(c.data)
        done = 0
        cut = 0
        for end in ends:
            if end > c.off:
                break
            done += 1
            cut = end
        if not ends:
            c.off = 0                       # not splittable: resend the chunk whole
            return
        if done:
            self.e.count.forwarded(self.i, done)
            self.e.forwarded += done
        self.q_packets -= done
        self.q_bytes -= cut
        c.data = c.data[cut:]
        c.off = 0
        c.records -= done
        if c.lens:
            c.lens = c.lens[done:]
        c.seg_base += done

    # ---------------------------------------------------------------------------- connection

    def connect(self, now: float) -> None:
        self.next_attempt = 0.0
        try:
            s = socket.socket(self.family, socket.SOCK_STREAM)
        except OSError as exc:
            self.fail(exc)
            return
        s.setblocking(False)
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ka = self.e.keepalive
            if ka > 0:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(ka)))
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(ka / 3)))
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(ka * 1000))
        except OSError:
            pass
        self.sock = s
        self.state = CONNECTING
        self.deadline = now + CONNECT_TIMEOUT_S
        rc = s.connect_ex((self.host, self.port))
        if rc not in (0, _errno.EINPROGRESS, _errno.EAGAIN):
            self.fail(OSError(rc, os.strerror(rc)))

    def on_event(self, ev: int) -> None:
        s = self.sock
        if s is None:
            return
        if self.state == CONNECTING:
            if ev & (select.POLLOUT | select.POLLERR | select.POLLHUP):
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    self.fail(OSError(err, os.strerror(err)))
                    return
                if self.e.tls is None:
                    self._up()
                    return
                try:
                    self.sock = self.e.tls.wrap_socket(
                        s, server_hostname=self.e.server_name(self.label),
                        do_handshake_on_connect=False)
                except (OSError, ValueError) as exc:
                    self.fail(exc)
                    return
                self.state = HANDSHAKE
                self._handshake()
            return
        if self.state == HANDSHAKE:
            self._handshake()
            return
        if self.state == UP and ev & (select.POLLIN | select.POLLERR | select.POLLHUP):
            try:
                data = s.recv(65536)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError,
                    ssl.SSLWantWriteError):
                return
            except (OSError, ssl.SSLError) as exc:
                self.fail(exc)
                return
            if not data:
                self.fail(OSError(_errno.ECONNRESET, "the collector closed the connection"))

    def _handshake(self) -> None:
        try:
            self.sock.do_handshake()  # type: ignore[union-attr]
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except ssl.SSLCertVerificationError as exc:
            self.fail(OSError(_errno.EPROTO, f"TLS: {exc.verify_message or exc}"))
            return
        except (OSError, ssl.SSLError) as exc:
            self.fail(exc)
            return
        self._up()

    def want(self) -> int:
        if self.state == CONNECTING:
            return select.POLLOUT
        if self.state == HANDSHAKE:
            return select.POLLIN | select.POLLOUT
        if self.state == UP:
            return select.POLLIN
        return 0

    def _up(self) -> None:
        self.state = UP
        self.connects += 1
        self.backoff = self.e.reconnect_min_s
        if self.detail != "connected":
            log.info("stream %s: connected to %s", self.e.name, self.label)
        self.detail = "connected"
        self.errno = 0
        self.e.count.state(self.i, True, 0)
        self.last_state = self.e.monotonic()

    def fail(self, exc: BaseException) -> None:
        was_up = self.state == UP
        self.close_socket()
        self._cut_partial()
        code = getattr(exc, "errno", None) or _errno.EIO
        text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        detail = f"{self.label}: {text}"
        if was_up or detail != self.detail:
            log.warning("stream %s: %s (reconnecting)", self.e.name, detail)
        if was_up:
            self.disconnects += 1
        self.detail = detail
        self.errno = int(code)
        now = self.e.monotonic()
        self.next_attempt = now + self.backoff * (0.5 + 0.5 * self.e.random())
        self.backoff = min(self.backoff * 2, self.e.reconnect_max_s)
        self.e.count.state(self.i, False, self.errno)
        self.last_state = now

    def close_socket(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None
        self.state = DOWN


_TRAIL = re.compile(r"[^A-Za-z0-9_.-]+")


@register("tcp")
class StreamEgress(Egress):
    """HEP over TCP to every target of one destination; see the module docstring."""

    use_tls = False

    def __init__(self, name: str, targets: list[tuple[str, int, int, int, str]], *,
                 mode: str = "hash", keepalive: float = 15.0, queue_packets: int = 100_000,
                 queue_bytes: int = 64 << 20, spool: str | None = None,
                 spool_max_bytes: int = 1 << 30, reconnect_min_s: float = 0.5,
                 reconnect_max_s: float = 30.0, tls_server_name: str = "",
                 tls_ca: str = "", tls_cert: str = "", tls_key: str = "",
                 tls_verify: bool = True,
                 monotonic: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] = random.random) -> None:
        super().__init__(name)
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        if not targets:
            raise ValueError("a stream destination needs targets")
        self.mode = mode
        self.keepalive = float(keepalive)
        self.queue_packets = int(queue_packets)
        self.queue_bytes = int(queue_bytes)
        self.reconnect_min_s = float(reconnect_min_s)
        self.reconnect_max_s = max(float(reconnect_max_s), self.reconnect_min_s)
        self.monotonic = monotonic
        self.random = rand
        self.tls_server_name = tls_server_name
        self.tls: ssl.SSLContext | None = None
        if self.use_tls:
            self.tls = make_client_context(tls_ca, tls_cert, tls_key, tls_verify)
        self.count: Any = _Counting()
        self.spool_dir = spool
        share = max(1, int(spool_max_bytes) // len(targets))
        self.targets = []
        for i, (host, port, family, seed, label) in enumerate(targets):
            sp = None
            if spool:
                sp = Spool(os.path.join(spool, _TRAIL.sub("_", label)), share)
            self.targets.append(Target(self, i, host, port, family, seed, label, sp))
        self._seeds = [t.seed for t in self.targets]
        self._rr = 0
        self._hash_pool: list[int] = []
        self._hash_cache: dict[int, int] = {}
        self._poll = select.poll()
        self._polled: dict[int, tuple[Target, int]] = {}
        self.forwarded = 0
        self.queue_full = 0
        self.lost_at_close = 0
        self._closed = False

    @classmethod
    def from_destination(cls, dest) -> StreamEgress:
        """From a plan destination (hepfast.plan.format.PlanDestination)."""
        targets = [(t.host, t.port, t.family, t.seed, t.configured) for t in dest.targets]
        from hepfast.constants import MODE_NAMES

        settings = {k: v for k, v in dict(dest.settings).items() if k not in ("targets", "mode")}
        return cls(dest.name, targets, mode=MODE_NAMES[dest.mode], **settings)

    def bind_counting(self, counting) -> None:
        """Where counts go (main.py: the counter block); see the module docstring."""
        self.count = counting

    def server_name(self, label: str) -> str:
        if self.tls_server_name:
            return self.tls_server_name
        host = label.rpartition(":")[0]
        return host.strip("[]")

    # ---------------------------------------------------------------------------- contract

    def open(self) -> None:
        self._closed = False
        now = self.monotonic()
        for t in self.targets:
            self.count.state(t.i, False, 0)
            t.last_state = now
            t.connect(now)
        self._pump(0)

    def send_batch(self, batch: Batch) -> int:
        """Routes every record to its target's queue; returns the batch's count: each record is
        now counted by the egress itself (forwarded, queue_full, or later)."""
        count = batch.count
        if count == 0:
            return 0
        ts = self.targets
        nt = len(ts)
        if nt == 1 or self.mode == "all":
            views = []
            lens = []
            for _meta, v in batch:
                views.append(v)
                lens.append(len(v))
            for t in ts:
                t.take(views, lens)
        else:
            up = [t.i for t in ts if t.state == UP]
            per: list[list] = [[] for _ in range(nt)]
            if self.mode == "failover":
                dest = up[0] if up else 0
                p = per[dest]
                for _meta, v in batch:
                    p.append(v)
            elif self.mode == "roundrobin":
                pool = up or list(range(nt))
                k = len(pool)
                rr = self._rr
                for _meta, v in batch:
                    per[pool[rr % k]].append(v)
                    rr += 1
                self._rr = rr % k
            else:
                pool = up or list(range(nt))
                seeds = [self._seeds[i] for i in pool]
                # Choices stay valid while the set of connected targets does (bounded).
                if self._hash_pool != pool or len(self._hash_cache) > 200_000:
                    self._hash_pool = pool
                    self._hash_cache = {}
                cache = self._hash_cache
                for meta, v in batch:
                    j = cache.get(meta)
                    if j is None:
                        best, bw = 0, -1
                        for k, s in enumerate(seeds):
                            w = _mix64(meta ^ s)
                            if w > bw:
                                best, bw = k, w
                        j = cache[meta] = pool[best]
                    per[j].append(v)
            for t, views in zip(ts, per, strict=True):
                if views:
                    t.take(views, [len(v) for v in views])
        self._pump(0)
        return count

    def flush(self) -> None:
        self._pump(0)

    def health(self) -> tuple[bool, str]:
        ups = [t for t in self.targets if t.state == UP]
        if ups:
            if len(ups) == len(self.targets):
                return True, f"connected to {', '.join(t.label for t in ups)}"
            return True, "; ".join(t.detail for t in self.targets if t.state != UP)
        return False, "; ".join(t.detail for t in self.targets)

    def close(self) -> None:
        """A last bounded attempt to write what is queued, then spool it or count it lost."""
        end = self.monotonic() + 1.0
        while any(t.queue and t.state == UP for t in self.targets) and self.monotonic() < end:
            self._pump(0.05)
        self._end_streams(end + 1.0)
        for t in self.targets:
            t.close_socket()
            t._cut_partial()
            live = [c for c in t.queue if c.seq < 0]
            if t.spool is not None:
                if live:
                    pkts: list = []
                    for c in live:
                        pos = 0
                        for end in _packet_ends(c.data):
                            pkts.append(c.data[pos:end])
                            pos = end
                    lost = t.spool.prepend(pkts)
                    if lost:
                        self.count.queue_full(lost)
                        self.queue_full += lost
                for c in t.queue:
                    if c.seq >= 0:
                        t.spool.set_progress(c.seq, c.seg_base)
                        t.spool.release(c.seq)
                t.spool.close()
            else:
                n = sum(c.records for c in live)
                if n:
                    self.count.failed(t.i, n)
                    self.lost_at_close += n
            t.queue.clear()
            t.q_packets = t.q_bytes = 0
        self._closed = True

    def _end_streams(self, deadline: float) -> None:
        """End every connection in order: our side first, then read until the collector
        closes (bounded). Closing with unread bytes (a TLS server's session tickets) would
        send a reset, and a reset makes the collector's kernel discard what it has not read."""
        open_ = [t for t in self.targets if t.state == UP and not t.queue]
        for t in open_:
            try:
                socket.socket.shutdown(t.sock, socket.SHUT_WR)  # type: ignore[arg-type]
            except OSError:
                t.close_socket()
        for t in open_:
            while t.sock is not None:
                left = deadline - self.monotonic()
                if left <= 0:
                    break
                try:
                    t.sock.settimeout(left)
                    if not t.sock.recv(65536):
                        break
                except (OSError, ValueError):
                    break

    def metrics(self) -> dict[str, float]:
        spools = [t.spool for t in self.targets if t.spool is not None]
        now = time.time()
        return {
            "up": 1.0 if any(t.state == UP for t in self.targets) else 0.0,
            "stream_targets_connected": float(sum(t.state == UP for t in self.targets)),
            "stream_connects_total": float(sum(t.connects for t in self.targets)),
            "stream_disconnects_total": float(sum(t.disconnects for t in self.targets)),
            "stream_queue_packets": float(sum(t.q_packets for t in self.targets)),
            "stream_queue_bytes": float(sum(t.q_bytes for t in self.targets)),
            "stream_bytes_sent_total": float(sum(t.bytes_sent for t in self.targets)),
            "spool_bytes": float(sum(s.bytes for s in spools)),
            "spool_records": float(sum(s.records for s in spools)),
            "spool_age_seconds": float(max((s.oldest_age_s(now) for s in spools), default=0.0)),
            "spool_written_total": float(sum(s.written_records for s in spools)),
            "spool_replayed_total": float(sum(s.replayed_records for s in spools)),
            "spool_dropped_total": float(sum(s.dropped_records for s in spools)),
            "spool_dropped_segments_total": float(sum(s.dropped_segments for s in spools)),
            "spool_torn_total": float(sum(s.torn for s in spools)),
            "spool_errors_total": float(sum(s.errors for s in spools)),
        }

    # ---------------------------------------------------------------------------- the pump

    def _pump(self, timeout_s: float) -> None:
        """Connect what is due, handle socket events, write what is queued."""
        now = self.monotonic()
        for t in self.targets:
            if t.state == DOWN:
                if now >= t.next_attempt:
                    t.connect(now)
                elif now - t.last_state >= STATE_REFRESH_S:
                    self.count.state(t.i, False, t.errno)
                    t.last_state = now
            elif t.state in (CONNECTING, HANDSHAKE) and now >= t.deadline:
                t.fail(OSError(_errno.ETIMEDOUT, "connect timed out"))
        want: dict[int, tuple[Target, int]] = {}
        for t in self.targets:
            mask = t.want()
            if t.state == UP and t.queue:
                mask |= select.POLLOUT
            if mask and t.sock is not None:
                want[t.sock.fileno()] = (t, mask)
        for fd, entry in list(self._polled.items()):
            # A closed socket's number may come back for another target: compare both.
            if want.get(fd) != entry:
                try:
                    self._poll.unregister(fd)
                except (KeyError, ValueError, OSError):
                    pass
                del self._polled[fd]
        for fd, (t, mask) in want.items():
            if fd not in self._polled:
                self._poll.register(fd, mask)
                self._polled[fd] = (t, mask)
        if self._polled:
            for fd, ev in self._poll.poll(int(timeout_s * 1000)):
                entry = self._polled.get(fd)
                if entry is not None and entry[0].sock is not None \
                        and entry[0].sock.fileno() == fd:
                    entry[0].on_event(ev)
        for t in self.targets:
            if t.state == UP:
                t.write()


@register("tls")
class TlsStreamEgress(StreamEgress):
    """HEP over TLS; see the module docstring."""

    use_tls = True


def make_client_context(ca: str = "", cert: str = "", key: str = "",
                        verify: bool = True) -> ssl.SSLContext:
    """The client side of a tls destination (and `hepfast replay --transport tls`): the CA file
    (else the system's), an optional client certificate, verification of the server's name
    and certificate unless verify is false."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if verify:
        if ca:
            ctx.load_verify_locations(cafile=ca)
        else:
            ctx.load_default_certs()
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key or None)
    return ctx
