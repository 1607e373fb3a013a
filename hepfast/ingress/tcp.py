"""TCP ingress: the listening sockets of one stream listener, one per worker in a SO_REUSEPORT
group (the kernel spreads new connections over the workers). Each worker accepts, reads and
frames its own connections in its Cython loop (ext/dataplane/_worker.pyx): framing by the HEPv3
length field, never by read boundaries; limits from the listener's config."""
from __future__ import annotations

import socket

from hepfast.ingress.served import check_not_served

BACKLOG = 4096


def open_group(li, n: int, *, exclusive: bool = True) -> list[socket.socket]:
    """n listening sockets for listener `li`, in bind order, non-blocking."""
    port = li.port
    if port and exclusive:
        check_not_served(li, socket.SOCK_STREAM)
    group: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(li.family, socket.SOCK_STREAM)
            group.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if li.family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                s.bind((li.host, port))
            except OSError as exc:
                raise OSError(exc.errno, f"listener {li.name!r}: cannot bind tcp "
                              f"{li.host}:{port}: {exc.strerror} (is another hepfast or "
                              "collector using it? change listeners.listen)") from None
            port = s.getsockname()[1]
            s.listen(BACKLOG)
            s.setblocking(False)
    except BaseException:
        for s in group:
            s.close()
        raise
    return group

