"""The load generator behind `hepfast replay`: sources -> pre-built packet set -> paced sending.

Sources: pcap/pcapng (HEP inside is re-sent as is; raw SIP over UDP, and SIP over TCP after
reassembly and framing, is wrapped into HEPv3 with the original addresses, ports and capture
time), `.hepraw` files, and `synthetic:OPTIONS` (hepfast.tools.synthetic).

Invariants:
- Everything is built before the first packet leaves: one contiguous numpy buffer + int64 offsets
  (`PacketSet`). The send loop (hepfast.tools._sender.Sender) only reads it, except the loop marks
  (below) and `--stamp`, which patches the timestamp chunk bodies in place at offsets found here.
- Loop 0 sends the source packets byte for byte. Loops 1.. send a second, template buffer in
  which every SIP Call-ID and every correlation id carries a fixed-width mark `~L` + 6 digits;
  the C send loop overwrites a packet's digits in place right before the packet joins a batch
  (no rebuild, no return to Python per loop), so every loop is new calls with the same structure
  and sizes. Loop numbers wrap after 999999.
- The work is a sequence of global positions g = loop * n + index; `--processes N` gives each
  forked process a contiguous share of it, so the totals add up exactly.
"""
from __future__ import annotations

import os
import re
import socket
import struct
import sys
import time
from typing import NamedTuple

import numpy as np

from hepfast.wire import chunks

MARK = b"~L"
MARK_DIGITS = 6
MARK_LEN = len(MARK) + MARK_DIGITS


class ReplayError(ValueError):
    """A source or option that cannot be used; the message says what to do."""


class Packet(NamedTuple):
    ts_ns: int              # capture time in epoch ns (schedule for --speed)
    data: bytes


# ----------------------------------------------------------------------------------- sources

_SIP_FIRST = re.compile(rb"^(?:SIP/2\.0 \d{3} |[A-Z][A-Z0-9_.!%*+`'~-]* \S+ SIP/2\.0\r?\n)")


# A TCP segment that may start a SIP message (the first line can span segments).
_SIP_START = re.compile(rb"^(?:SIP/|[A-Z][A-Z0-9_.!%*+`'~-]*(?: |$))")


def looks_like_sip(data: bytes) -> bool:
    return bool(_SIP_FIRST.match(data[:200]))


def wrap_sip(dg, payload: bytes, ts: tuple[int, int], capture_id: int = 0,
             node: str | None = None) -> bytes:
    """HEPv3 (Kamailio's chunk order) for one SIP message seen in a capture."""
    import ipaddress

    v6 = dg.family == 6
    c = [(0, 1, bytes([10 if v6 else 2])), (0, 2, bytes([dg.ip_proto])),
         (0, 5 if v6 else 3, ipaddress.ip_address(dg.src_ip).packed),
         (0, 6 if v6 else 4, ipaddress.ip_address(dg.dst_ip).packed),
         (0, 7, struct.pack(">H", dg.src_port)), (0, 8, struct.pack(">H", dg.dst_port)),
         (0, 9, struct.pack(">I", ts[0])), (0, 10, struct.pack(">I", ts[1])),
         (0, 11, b"\x01"), (0, 12, struct.pack(">I", capture_id))]
    if node:
        c.append((0, 0x13, node.encode()))
    c.append((0, 15, payload))
    return chunks.encode_packet(c)


def read_capture_packets(path: str, capture_id: int = 0, node: str | None = None) -> list[Packet]:
    """HEP packets from a pcap/pcapng: HEP re-sent as is, raw SIP wrapped. A SIP message split
    over TCP segments gets the capture time of the segment where it starts."""
    from hepfast.tools import capture

    out: list[Packet] = []
    # per TCP flow direction: (buffered bytes, (sec, usec) of their first byte, "hep"/"sip"/None)
    streams: dict[tuple, list] = {}
    for dg in capture.read_capture(path):
        ts = (dg.ts_sec, dg.ts_usec)
        tns = dg.ts_sec * 1_000_000_000 + dg.ts_usec * 1000
        if dg.ip_proto == 17:
            if capture.looks_like_hep(dg.data):
                out.append(Packet(tns, dg.data))
            elif looks_like_sip(dg.data):
                out.append(Packet(tns, wrap_sip(dg, dg.data, ts, capture_id, node)))
            continue
        if dg.ip_proto != 6 or not dg.data:
            continue
        key = (dg.src_ip, dg.src_port, dg.dst_ip, dg.dst_port)
        st = streams.get(key)
        if st is None or not st[0]:
            kind = ("hep" if dg.data[:4] == b"HEP3"[:len(dg.data[:4])] else
                    "sip" if _SIP_START.match(dg.data[:16]) else None)
            if kind is None:
                streams.pop(key, None)
                continue                    # not at a message boundary: wait for one
            st = streams[key] = [b"", ts, kind]
        buf = st[0] + dg.data
        try:
            if st[2] == "hep":
                msgs, rest = capture.split_hep_stream(buf)
            else:
                msgs, rest = capture.split_sip_stream(buf)
        except capture.StreamError:
            streams.pop(key, None)
            continue
        for k, m in enumerate(msgs):
            mts = st[1] if k == 0 else ts
            if st[2] == "hep":
                out.append(Packet(mts[0] * 1_000_000_000 + mts[1] * 1000, m))
            elif looks_like_sip(m):
                out.append(Packet(mts[0] * 1_000_000_000 + mts[1] * 1000,
                                  wrap_sip(dg, m, mts, capture_id, node)))
        start_ts = st[1] if not msgs else ts
        st[0], st[1] = rest, start_ts
    return out


def _hep_time_ns(data: bytes) -> int:
    from hepfast.tools._receiver import peek

    r = peek(data)
    return (r[4] * 1_000_000_000 + r[5] * 1000) if r[0] == 0 else 0


def load_source(spec: str, capture_id: int = 0, node: str | None = None) -> list[Packet]:
    if spec.startswith("synthetic:") or spec == "synthetic":
        from hepfast.tools import synthetic

        try:
            return [Packet(p.ts_ns, p.data) for p in synthetic.generate(spec)]
        except synthetic.SynthError as exc:
            raise ReplayError(str(exc)) from None
    from hepfast.tools import capture

    if not os.path.exists(spec):
        raise ReplayError(f"{spec}: no such file (give a pcap, pcapng, .hepraw or synthetic:...)")
    try:
        kind = capture.file_kind(spec)
    except capture.CaptureError as exc:
        raise ReplayError(str(exc)) from None
    if kind == "hepraw":
        return [Packet(_hep_time_ns(d), d) for d in capture.read_hepraw(spec)]
    return read_capture_packets(spec, capture_id, node)


# ----------------------------------------------------------------------------------- building

_CALL_ID = re.compile(rb"(?im)^(?:call-id|i)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$")


def _ts_offsets(p: bytes) -> tuple[int, int, int]:
    """(offset of the seconds body, of the microseconds body, 1 if little-endian HEPv2)."""
    if p[:4] == b"HEP3":
        so = uo = -1
        pos, total = 6, min(len(p), (p[4] << 8) | p[5])
        while pos + 6 <= total:
            v, t, ln = struct.unpack_from(">HHH", p, pos)
            if ln < 6:
                break
            if v == 0 and t == 9 and ln == 10:
                so = pos + 6
            elif v == 0 and t == 10 and ln == 10:
                uo = pos + 6
            pos += ln
        return so, uo, 0
    if len(p) >= 4 and p[0] == 2:
        alen = 4 if p[2] == 2 else 16
        if len(p) >= 20 + 2 * alen:
            return 8 + 2 * alen, 12 + 2 * alen, 1
    return -1, -1, 0


def _mark_sip(payload: bytes) -> bytes:
    head_end = payload.find(b"\r\n\r\n")
    head = payload if head_end < 0 else payload[:head_end + 2]
    out, last = [], 0
    for m in _CALL_ID.finditer(head):
        if m.end(1) > m.start(1):
            out.append(payload[last:m.end(1)])
            out.append(MARK + b"0" * MARK_DIGITS)
            last = m.end(1)
    out.append(payload[last:])
    return b"".join(out)


def loop_template(p: bytes) -> bytes:
    """The packet with the loop mark after its Call-ID(s) and correlation id."""
    if p[:4] == b"HEP3":
        total = min(len(p), (p[4] << 8) | p[5])
        pos, parts, ptype = 6, [], None
        while pos + 6 <= total:
            v, t, ln = struct.unpack_from(">HHH", p, pos)
            if ln < 6 or pos + ln > total:
                return p
            parts.append((v, t, p[pos + 6:pos + ln]))
            if v == 0 and t == 11 and ln == 7:
                ptype = p[pos + 6]
            pos += ln
        new = []
        for v, t, body in parts:
            if v == 0 and t == 15 and (ptype in (1, None)) and looks_like_sip(body):
                body = _mark_sip(body)
            elif v == 0 and t == 0x11 and body:
                body = body + MARK + b"0" * MARK_DIGITS
            new.append((v, t, body))
        try:
            return chunks.encode_packet(new)
        except chunks.ChunkError:
            return p
    if len(p) >= 4 and p[0] in (1, 2):
        alen = 4 if p[2] == 2 else 16
        hdr = 8 + 2 * alen + (12 if p[0] == 2 else 0)
        return p[:hdr] + _mark_sip(p[hdr:])
    return p


def _pack(datas: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    lens = np.fromiter((len(d) for d in datas), dtype=np.int64, count=len(datas))
    offsets = np.zeros(len(datas) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    buf = np.frombuffer(bytearray(b"".join(datas)) or bytearray(1), dtype=np.uint8)
    return buf, offsets


def _stamp_arrays(datas: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    ts_off = np.full(2 * len(datas), -1, dtype=np.int64)
    ts_le = np.zeros(len(datas), dtype=np.uint8)
    base = 0
    for i, d in enumerate(datas):
        so, uo, le = _ts_offsets(d)
        if so >= 0:
            ts_off[2 * i] = base + so
        if uo >= 0:
            ts_off[2 * i + 1] = base + uo
        ts_le[i] = le
        base += len(d)
    return ts_off, ts_le


class PacketSet:
    """The pre-built packets: base buffer (loop 0) and, when loops > 1 are needed, the loop
    template buffer with the positions of its mark digits."""

    def __init__(self, packets: list[Packet], loops_needed: bool = True,
                 stamp: bool = False):
        if not packets:
            raise ReplayError("the sources hold no packets to send")
        self.n = len(packets)
        datas = [p.data for p in packets]
        self.buf, self.offsets = _pack(datas)
        ts = np.fromiter((p.ts_ns for p in packets), dtype=np.int64, count=self.n)
        rel = ts - ts[0]
        self.sched = np.maximum.accumulate(np.maximum(rel, 0))    # never backwards
        # Loop k+1 starts one mean inter-packet gap after loop k's last packet.
        gap = int(self.sched[-1] // max(1, self.n - 1)) if self.n > 1 else 1_000_000
        self.span_ns = int(self.sched[-1]) + max(gap, 1)
        self.ts_off, self.ts_le = _stamp_arrays(datas) if stamp else (None, None)
        self.tbuf = self.toffsets = self.tts_off = self.mark_pos = None
        if loops_needed:
            tdatas = [loop_template(d) for d in datas]
            self.tbuf, self.toffsets = _pack(tdatas)
            raw = self.tbuf.tobytes()
            pos, marks = 0, []
            while True:
                j = raw.find(MARK, pos)
                if j < 0:
                    break
                if raw[j + 2:j + MARK_LEN] == b"0" * MARK_DIGITS:
                    marks.append(j + len(MARK))
                pos = j + 1
            self.mark_pos = np.asarray(marks, dtype=np.int64)
            self.tts_off, _ = _stamp_arrays(tdatas) if stamp else (None, None)

    @property
    def nbytes(self) -> int:
        """Bytes of one pass over the packet set (loop 0, the packets as loaded)."""
        return int(self.offsets[-1])

    def bytes_between(self, g0: int, g1: int) -> int:
        """Bytes of the packets at global positions [g0, g1): loop 0 from the base buffer,
        later loops from the template, whose marked Call-IDs make them a little longer."""
        return self._bytes_before(g1) - self._bytes_before(g0)

    def _bytes_before(self, g: int) -> int:
        loops, i = divmod(max(0, g), self.n)
        if loops == 0:
            return int(self.offsets[i])
        t = self.toffsets if self.toffsets is not None else self.offsets
        return self.nbytes + (loops - 1) * int(t[-1]) + int(t[i])

    def mark_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(mark_pos, mark_start): the first digit of every loop mark in the template buffer,
        grouped per packet (packet i owns mark_pos[mark_start[i]:mark_start[i+1]]). The sender
        rewrites them in place, per packet, as each loop reaches it."""
        if self.tbuf is None:
            return np.zeros(0, dtype=np.int64), np.zeros(self.n + 1, dtype=np.int64)
        start = np.searchsorted(self.mark_pos, self.toffsets, side="left").astype(np.int64)
        return self.mark_pos, start

    def template_packet(self, loop: int, i: int) -> bytes:
        """Packet i as loop `loop` (>= 1) sends it (for tests; the sender patches in place)."""
        raw = bytearray(self.tbuf[self.toffsets[i]:self.toffsets[i + 1]].tobytes())
        digits = f"{loop % (10 ** MARK_DIGITS):0{MARK_DIGITS}d}".encode()
        for m in self.mark_pos[(self.mark_pos >= self.toffsets[i])
                               & (self.mark_pos < self.toffsets[i + 1])]:
            m = int(m - self.toffsets[i])
            raw[m:m + MARK_DIGITS] = digits
        return bytes(raw)


def load(sources: list[str], capture_id: int = 0, node: str | None = None) -> list[Packet]:
    pkts: list[Packet] = []
    for s in sources:
        pkts.extend(load_source(s, capture_id, node))
    return pkts


# ----------------------------------------------------------------------------------- sending

class Plan(NamedTuple):
    to: tuple[str, int]
    transport: str          # udp | tcp | tls
    rate: float             # pps for this process (0: as fast as possible)
    speed: float            # >0: keep capture timing divided by speed
    g0: int                 # first global position
    g1: int                 # end (exclusive); -1: until the deadline
    duration: float         # seconds (0: none)
    batch: int
    stamp: bool
    tls: tuple = ()         # tls: (ca, cert, key, server_name, verify)


def connect_tls(to: tuple[str, int], tls: tuple) -> socket.socket:
    """A blocking TLS connection (hepfast.egress.stream.make_client_context)."""
    from hepfast.egress.stream import make_client_context

    ca, cert, key, server_name, verify = (tuple(tls) + ("", "", "", "", True))[:5]
    try:
        ctx = make_client_context(ca, cert, key, verify)
    except (OSError, ValueError) as exc:
        raise ReplayError(f"tls: {exc}") from None
    raw = connect(to, "tcp")
    try:
        return ctx.wrap_socket(raw, server_hostname=server_name or to[0])
    except (OSError, ValueError) as exc:
        raw.close()
        raise ReplayError(f"tls handshake with {to[0]}:{to[1]} failed: {exc}") from None


class _TlsRelay:
    """The C send loop writes plain bytes into one end of a socketpair; this thread moves them
    into the TLS connection (so the sender stays the same C loop as for tcp)."""

    def __init__(self, tls_sock: socket.socket) -> None:
        import threading

        self.tls = tls_sock
        self.ours, self.theirs = socket.socketpair()
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name="tls-relay")
        self.thread.start()

    def _run(self) -> None:
        buf = bytearray(1 << 18)
        try:
            while True:
                n = self.theirs.recv_into(buf)
                if n == 0:
                    break
                self.tls.sendall(memoryview(buf)[:n])
        except OSError as exc:
            self.error = exc.strerror or str(exc)

    def finish(self) -> None:
        try:
            self.ours.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.thread.join(timeout=30)
        for s in (self.ours, self.theirs):
            s.close()
        _close_stream(self.tls)


def _close_stream(sock: socket.socket, timeout_s: float = 5.0) -> None:
    """End our side, then read until the peer closes (bounded) before closing: a socket closed
    with unread data (a TLS server's session tickets) sends a reset, and a reset makes the
    peer's kernel discard what its application has not read yet."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_WR)
        sock.settimeout(timeout_s)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and sock.recv(65536):
            pass
    except (OSError, ValueError):
        pass
    sock.close()


def connect(to: tuple[str, int], transport: str) -> socket.socket:
    fam = socket.AF_INET6 if ":" in to[0] else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM if transport == "tcp" else socket.SOCK_DGRAM)
    if transport == "udp":
        try:
            s.setsockopt(socket.SOL_SOCKET, 32, 8 << 20)        # SO_SNDBUFFORCE
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
    else:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        s.connect(to)
    except OSError as exc:
        s.close()
        raise ReplayError(f"cannot connect to {to[0]}:{to[1]} over {transport}: "
                          f"{exc.strerror or exc} (is the receiver running?)") from None
    return s


def make_sender(pset: PacketSet, plan: Plan, fd: int):
    """A hepfast.tools._sender.Sender for this plan with the packet set loaded (iovecs built once)."""
    from hepfast.tools._sender import Sender

    sender = Sender(fd, plan.rate if not plan.speed else 0.0, plan.batch, plan.stamp,
                    plan.transport in ("tcp", "tls"))
    mark_pos, mark_start = pset.mark_index()
    sched = (pset.sched / plan.speed).astype(np.int64) if plan.speed else None
    span = max(1, int(pset.span_ns / plan.speed)) if plan.speed else 0
    sender.load(pset.buf, pset.offsets, pset.tbuf, pset.toffsets, mark_pos, mark_start,
                pset.ts_off, pset.tts_off, pset.ts_le, sched, span)
    return sender


def run_plan(pset: PacketSet, plan: Plan, counters=None, progress=None) -> dict:
    """Send the positions [g0, g1) (or until the duration ends) on one connection.
    counters: an int64 array of 4 (sent, errors, skipped, done) updated about 4 times a second.
    The send loop (C) crosses loop boundaries itself; Python only runs between 0.25 s slices."""
    from hepfast.tools._sender import monotonic_ns

    relay = None
    if plan.transport == "tls":
        relay = _TlsRelay(connect_tls(plan.to, plan.tls))
        sock = relay.ours
    else:
        sock = connect(plan.to, plan.transport)
    sender = make_sender(pset, plan, sock.fileno())
    g, g1 = plan.g0, plan.g1 if plan.g1 >= 0 else 1 << 62
    t_start = monotonic_ns()
    deadline = t_start + int(plan.duration * 1e9) if plan.duration else 0
    sender.start(t_start)
    broken = None
    try:
        while g < g1:
            g = sender.send(g, g1, 0.25, deadline)
            if counters is not None:
                counters[0], counters[1], counters[2] = sender.sent, sender.errors, sender.skipped
            if progress is not None:
                progress(sender.sent, sender.errors, monotonic_ns() - t_start)
            if sender.broken_errno:
                broken = os.strerror(sender.broken_errno)
                break
            if deadline and monotonic_ns() >= deadline:
                break
    finally:
        seconds = (monotonic_ns() - t_start) / 1e9
        if relay is not None:
            relay.finish()
            if relay.error and not broken:
                broken = relay.error
        else:
            if plan.transport == "tcp" and not broken:
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            sock.close()
        if counters is not None:
            counters[0], counters[1], counters[2], counters[3] = (
                sender.sent, sender.errors, sender.skipped, int(seconds * 1e9))
    out = {"sent": int(sender.sent), "errors": int(sender.errors),
           "skipped": int(sender.skipped), "seconds": seconds, "calls": int(sender.calls),
           "sleeps": int(sender.sleeps)}
    if broken:
        out["broken"] = broken
    return out


def split(g0: int, g1: int, parts: int) -> list[tuple[int, int]]:
    """Contiguous shares of [g0, g1) that add up exactly."""
    total = g1 - g0
    return [(g0 + total * k // parts, g0 + total * (k + 1) // parts) for k in range(parts)]


def run_processes(pset: PacketSet, plans: list[Plan], progress=None) -> dict:
    """Fork one process per plan (copy-on-write of the packet set), sum their counters."""
    import mmap
    import signal

    shm = mmap.mmap(-1, 8 * 4 * len(plans))
    counters = np.frombuffer(shm, dtype=np.int64).reshape(len(plans), 4)
    pids = []
    t0 = time.monotonic()
    for k, plan in enumerate(plans):
        pid = os.fork()
        if pid == 0:                                    # child
            code = 0
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides
                run_plan(pset, plan, counters[k])
            except BaseException as exc:                # report, never unwind into the parent
                print(f"hepfast replay: process {k}: {exc}", file=sys.stderr)
                code = 1
            finally:
                os._exit(code)
        pids.append(pid)
    failed = 0
    try:
        alive = set(pids)
        while alive:
            for pid in list(alive):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    alive.discard(pid)
                    failed += os.waitstatus_to_exitcode(status) != 0
            if progress is not None:
                progress(int(counters[:, 0].sum()), int(counters[:, 1].sum()),
                         int((time.monotonic() - t0) * 1e9))
            time.sleep(0.05)
    except KeyboardInterrupt:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    out = {"sent": int(counters[:, 0].sum()), "errors": int(counters[:, 1].sum()),
           "skipped": int(counters[:, 2].sum()),
           "seconds": max(float(counters[:, 3].max()) / 1e9, 1e-9),
           "per_process": [int(x) for x in counters[:, 0]]}
    if failed:
        out["failed_processes"] = failed
    return out
