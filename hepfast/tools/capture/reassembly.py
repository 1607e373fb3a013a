"""TCP reassembly per flow direction (bounded), and read_capture over it."""
from __future__ import annotations

from collections.abc import Iterator

from hepfast.tools.capture.common import (
    TCP_MAX_PENDING_BYTES,
    TCP_MAX_PENDING_SEGMENTS,
    TCP_RST,
    TCP_SYN,
    Datagram,
)
from hepfast.tools.capture.reader import _packets, _Seg


class _Flow:
    __slots__ = ("next_seq", "pending", "pending_bytes")

    def __init__(self, next_seq: int):
        self.next_seq = next_seq
        self.pending: dict[int, _Seg] = {}
        self.pending_bytes = 0


def _rel(a: int, b: int) -> int:
    """a - b in 32-bit sequence space, as a signed number."""
    d = (a - b) & 0xFFFFFFFF
    return d - (1 << 32) if d & 0x80000000 else d


class TcpReassembler:
    """Per-direction TCP reassembly: feed segments in capture order, get in-order new bytes.

    `feed` returns a list of Datagrams (ip_proto 6), one per segment that advanced the stream (a
    held segment is delivered, with its own timestamp, when the gap before it fills)."""

    def __init__(self, max_segments: int = TCP_MAX_PENDING_SEGMENTS,
                 max_bytes: int = TCP_MAX_PENDING_BYTES):
        self.flows: dict[tuple, _Flow] = {}
        self.max_segments = max_segments
        self.max_bytes = max_bytes

    def feed(self, s: _Seg) -> list[Datagram]:
        key = (s.src, s.sport, s.dst, s.dport)
        if s.flags & TCP_RST:
            self.flows.pop(key, None)
            return []
        flow = self.flows.get(key)
        seq, data = s.seq, s.data
        if s.flags & TCP_SYN:
            seq = (seq + 1) & 0xFFFFFFFF       # the SYN takes one sequence number
            # A retransmitted SYN falls at or just behind the stream position; anything else is a
            # new connection on this 4-tuple.
            if flow is None or not -(1 << 20) <= _rel(seq, flow.next_seq) <= 0:
                flow = self.flows[key] = _Flow(seq)
        if not data:
            return []
        if flow is None:
            # The SYN was not captured: the stream starts at the first data we see.
            flow = self.flows[key] = _Flow(seq)
        s = s._replace(seq=seq)
        out: list[Datagram] = []
        if _rel(seq, flow.next_seq) > 0:
            self._hold(flow, s, out)
            return out
        self._take(flow, s, out)
        self._drain(flow, out)
        return out

    def _take(self, flow: _Flow, s: _Seg, out: list[Datagram]) -> None:
        skip = -_rel(s.seq, flow.next_seq)     # bytes of this segment already delivered
        if skip >= len(s.data):
            return                             # a pure retransmission
        new = s.data[skip:] if skip > 0 else s.data
        flow.next_seq = (flow.next_seq + len(new)) & 0xFFFFFFFF
        out.append(Datagram(s.ts_sec, s.ts_usec, s.family, 6, s.src, s.dst, s.sport, s.dport,
                            new))

    def _drain(self, flow: _Flow, out: list[Datagram]) -> None:
        while flow.pending:
            ready = [q for q in flow.pending if _rel(q, flow.next_seq) <= 0]
            if not ready:
                return
            for q in ready:
                s = flow.pending.pop(q)
                flow.pending_bytes -= len(s.data)
                self._take(flow, s, out)

    def _hold(self, flow: _Flow, s: _Seg, out: list[Datagram]) -> None:
        old = flow.pending.get(s.seq)
        if old is not None:
            if len(old.data) >= len(s.data):
                return
            flow.pending_bytes -= len(old.data)
        flow.pending[s.seq] = s
        flow.pending_bytes += len(s.data)
        while flow.pending and (len(flow.pending) > self.max_segments
                                or flow.pending_bytes > self.max_bytes):
            # The capture lost what fills the gap: skip it and go on from the earliest held data.
            flow.next_seq = min(flow.pending, key=lambda q: _rel(q, flow.next_seq))
            self._drain(flow, out)

    def flush(self) -> list[Datagram]:
        """At the end of a capture: deliver held data, skipping the gaps nothing filled."""
        out: list[Datagram] = []
        for flow in self.flows.values():
            while flow.pending:
                flow.next_seq = min(flow.pending, key=lambda q: _rel(q, flow.next_seq))
                self._drain(flow, out)
        return out


def read_capture(path) -> Iterator[Datagram]:
    """Every UDP datagram and every TCP segment that advances its stream, from a pcap/pcapng."""
    tcp = TcpReassembler()
    for p in _packets(path):
        if isinstance(p, Datagram):
            yield p
        else:
            yield from tcp.feed(p)
    yield from tcp.flush()
