"""What the UDP and TCP listener groups share: refusing an address another process serves."""
from __future__ import annotations

import errno
import socket


def check_not_served(li, socktype: int = socket.SOCK_DGRAM) -> None:
    """Refuse a listen address another process already serves: bind a probe socket of the same
    type without SO_REUSEPORT; it fails when any socket holds the address."""
    kind = "tcp " if socktype == socket.SOCK_STREAM else ""
    probe = socket.socket(li.family, socktype)
    try:
        if li.family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind((li.host, li.port))
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise OSError(exc.errno, f"listener {li.name!r}: {kind}{li.host}:{li.port} is "
                          "already served by another process (another hepfast?). Stop it, "
                          "change listeners.listen, or start with --allow-shared-port to share "
                          "the port on purpose") from None
        raise OSError(exc.errno, f"listener {li.name!r}: cannot bind {kind}{li.host}:{li.port}: "
                      f"{exc.strerror}") from None
    finally:
        probe.close()
