"""UDP ingress: the listening sockets of one listener, one per worker in a SO_REUSEPORT group.

The supervisor owns these sockets for its whole life and hands socket i to worker i; the kernel
spreads datagrams over the group by flow hash, or, with `spread = "packet"`, by a reuseport
program that picks a random member per datagram. Also here: the kernel's own per-socket drop
count (what `hepfast_receive_overflows_total` reports) and the refusal to share a port another
process already serves.
"""
from __future__ import annotations

import ctypes
import socket
import struct

from hepfast.ingress.served import check_not_served

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SO_MEMINFO = 55
SK_MEMINFO_DROPS = 8
SO_ATTACH_REUSEPORT_CBPF = 51
SO_DETACH_REUSEPORT_BPF = 68


def open_group(li, n: int, *, rcvbuf: int, recv_timeout_us: int, exclusive: bool = True
               ) -> list[socket.socket]:
    """n bound sockets for listener `li` (hepfast.plan ListenerInfo), in bind order. With
    `exclusive`, an address another process already serves is refused (OSError saying so)."""
    port = li.port
    if port and exclusive:
        check_not_served(li)
    group: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(li.family, socket.SOCK_DGRAM)
            group.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            set_rcvbuf(s, rcvbuf)
            if li.family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                s.bind((li.host, port))
            except OSError as exc:
                raise OSError(exc.errno, f"listener {li.name!r}: cannot bind "
                              f"{li.host}:{port}: {exc.strerror} (is another hepfast or "
                              "collector using it? change listeners.listen)") from None
            port = s.getsockname()[1]
            # Workers block in recvmmsg(MSG_WAITFORONE) on a single listener; the receive
            # timeout brings them back to check signals, reloads and the heartbeat.
            s.setblocking(True)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                         struct.pack("ll", 0, recv_timeout_us))
    except BaseException:
        for s in group:
            s.close()
        raise
    return group


def set_rcvbuf(s: socket.socket, size: int) -> None:
    """A deep receive queue is what absorbs bursts, reloads and worker restarts without loss.
    SO_RCVBUFFORCE (root / CAP_NET_ADMIN) passes net.core.rmem_max; else we get the cap."""
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def buffers(s: socket.socket, asked: int, spread: str) -> dict:
    return {"rcvbuf_asked": asked,
            "rcvbuf_granted": s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
            "spread": spread}


def set_spread(group: list[socket.socket], how: str) -> None:
    """"packet": attach the random-pick program to the group; "flow": detach it (the kernel's
    flow hash decides). A group of one needs neither."""
    if not group:
        return
    if how == "packet" and len(group) > 1:
        attach_random_spread(group[0], len(group))
    elif how == "flow":
        try:
            group[0].setsockopt(socket.SOL_SOCKET, SO_DETACH_REUSEPORT_BPF, 0)
        except OSError:
            pass                    # none attached: the kernel already spreads by flow


def attach_random_spread(s: socket.socket, n: int) -> None:
    """A classic BPF reuseport program: every datagram goes to socket random() % n of the group
    (the sockets in bind order: worker i's socket is index i)."""
    SKF_AD_OFF, SKF_AD_RANDOM = -0x1000, 56
    prog = [
        (0x20, 0, 0, (SKF_AD_OFF + SKF_AD_RANDOM) & 0xFFFFFFFF),   # ld  #random
        (0x94, 0, 0, n),                                            # mod #n
        (0x16, 0, 0, 0),                                            # ret a
    ]
    code = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(prog), ctypes.addressof(buf))
    s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def socket_drops(s: socket.socket) -> int:
    """The kernel's count of datagrams this socket dropped (sk_drops, via SO_MEMINFO)."""
    try:
        raw = s.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 9 * 4)
    except OSError:
        return 0
    return struct.unpack("9I", raw[:36])[SK_MEMINFO_DROPS]


def discard(s: socket.socket) -> int:
    """Read and count what is queued on a socket without forwarding it."""
    n = 0
    while True:
        try:
            s.recv(65536, socket.MSG_DONTWAIT)
        except OSError:
            return n
        n += 1
