"""sd_notify(3) without libsystemd: tell a supervising systemd (Type=notify) how the switch is.

systemd passes the address of a unix datagram socket in $NOTIFY_SOCKET: a filesystem path, or an
abstract-namespace name written with a leading "@" (the kernel's leading NUL byte). A message is
newline-separated KEY=VALUE assignments in one datagram: READY=1 once every worker is up,
RELOADING=1 (with MONOTONIC_USEC, as systemd 253+ expects for Type=notify-reload) then READY=1
around a reload, STOPPING=1 when shutting down, STATUS=free text for `systemctl status`.

`notify()` never raises: without $NOTIFY_SOCKET (not under systemd) it returns False and does
nothing, and a socket error is returned as False too; the switch does not depend on it.
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping


def _address(value: str) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        return b"\0" + value[1:].encode()       # abstract namespace
    if value.startswith("/"):
        return value
    return None                                 # vsock addresses etc.: not supported


def notify(message: str, environ: Mapping[str, str] | None = None) -> bool:
    """Send one sd_notify message; True when it was sent."""
    env = os.environ if environ is None else environ
    addr = _address(env.get("NOTIFY_SOCKET", ""))
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(message.encode(), addr)
        return True
    except OSError:
        return False


def ready(status: str = "") -> bool:
    return notify("READY=1" + (f"\nSTATUS={status}" if status else "") + f"\nMAINPID={os.getpid()}")


def reloading() -> bool:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def stopping() -> bool:
    return notify("STOPPING=1")
