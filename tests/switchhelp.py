"""Helpers for end-to-end tests: a `hepfast run` subprocess, loopback senders, corpus loaders.

Everything binds to 127.0.0.1 with ephemeral ports; every wait is bounded.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class SwitchProcess:
    """`python -m hepfast run -c CONFIG` on loopback; stop() returns its final JSON summary."""

    def __init__(self, tmp_path: Path, config: str, workers: int | None = 1, extra=()):
        self.cfg = tmp_path / f"hepfast-{time.monotonic_ns()}.toml"
        self.cfg.write_text(textwrap.dedent(config))
        self.errlog = open(tmp_path / f"{self.cfg.stem}.err", "w+")
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hepfast", "run", "-c", str(self.cfg), "--quiet",
             *(["--workers", str(workers)] if workers else []), *extra],
            stdout=subprocess.PIPE, stderr=self.errlog, text=True, env=env, cwd=ROOT)
        self.port = self._wait_port()
        self.summary: dict | None = None

    def stderr(self) -> str:
        if self.errlog.closed:                  # after stop(): the file is still there
            return Path(self.errlog.name).read_text()
        self.errlog.seek(0)
        return self.errlog.read()

    def _wait_port(self, timeout: float = 20.0) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            err = self.stderr()
            if "hepfast running" in err:
                self.ports = {ln.split()[1]: int(ln.rsplit(":", 1)[1])
                              for ln in err.splitlines() if ln.startswith("listening ")}
                return next(iter(self.ports.values()))
            if self.proc.poll() is not None:
                raise RuntimeError(f"hepfast run exited {self.proc.returncode}:\n{self.stderr()}")
            time.sleep(0.05)
        self.proc.kill()
        raise RuntimeError(f"hepfast run did not report its port:\n{self.stderr()}")

    def send(self, packets, port: int | None = None, pace_every: int = 50,
             pace_s: float = 0.001) -> None:
        """Send datagrams from one socket (one flow), pausing briefly every few packets so that
        neither the switch's nor the sinks' socket buffers overflow on a busy CI machine."""
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            for i, p in enumerate(packets):
                s.sendto(p, ("127.0.0.1", port or self.port))
                if pace_every and i % pace_every == pace_every - 1:
                    time.sleep(pace_s)
        finally:
            s.close()

    def stop(self, timeout: float = 20.0) -> dict:
        if self.summary is None:
            self.proc.send_signal(signal.SIGTERM)
            out, _ = self.proc.communicate(timeout=timeout)
            assert self.proc.returncode == 0, f"exit {self.proc.returncode}:\n{self.stderr()}"
            self.summary = json.loads(out.strip().splitlines()[-1])
            self.errlog.close()
        return self.summary

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if not self.errlog.closed:
            self.errlog.close()


def one_destination(ports: list[int], mode: str, workers: int = 1) -> str:
    """Config text: one listener on an ephemeral port, every packet to destination `d` (its
    targets on 127.0.0.1:`ports`, in `mode`)."""
    targets = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
    return f"""
        [switch]
        workers = {workers}
        [[listeners]]
        name = "agents"
        listen = "127.0.0.1:0"
        [destinations.d]
        targets = [{targets}]
        mode = "{mode}"
        [[rules]]
        name = "all"
        forward = ["d"]
        """


def agents_to(port: int | list[int], rules: str, *, listener: str = "", destination: str = "",
              name: str = "out") -> str:
    """Config text most switch tests start from: one UDP listener "agents" on an ephemeral port
    (`listener`: more of its keys), one destination `name` to 127.0.0.1:`port` (or each port of
    a list; `destination`: more of its keys), then `rules` (TOML [[rules]] tables). Each part
    may be indented as the caller's source is. The worker count is SwitchProcess(workers=...)'s."""
    ports = port if isinstance(port, list) else [port]
    targets = ", ".join(f'"127.0.0.1:{p}"' for p in ports)
    parts = ["[[listeners]]", 'name = "agents"', 'listen = "127.0.0.1:0"',
             textwrap.dedent(listener).strip(), f"[destinations.{name}]",
             f"targets = [{targets}]", textwrap.dedent(destination).strip(),
             textwrap.dedent(rules).strip()]
    return "\n".join(x for x in parts if x) + "\n"


def check_accounting(s: dict) -> None:
    """The counters balance: every datagram is invalid or accepted; every accepted packet is
    routed or dropped by a reason of the packet (rule, no_route, sample, duplicate, rate_limit,
    call_rate_limit); every copy is forwarded or dropped by a reason of its destination (nothing
    is left in a ring after a clean stop)."""
    d = s["dropped"]
    assert s["datagrams"] == s["invalid_total"] + s["received"], s
    assert s["received"] == s["routed"] + sum(d.get(r, 0) for r in (
        "rule", "no_route", "sample", "duplicate", "rate_limit", "call_rate_limit")), s
    per_dest = sum(sum(v.values()) for v in s["dropped_by_destination"].values())
    assert s["copies"] == s["forwarded_total"] + per_dest, s
    assert s["in_flight"] == 0, s


def corpus_messages(name_part: str = "", *, sip_only: bool = False,
                    limit: int | None = None) -> list[bytes]:
    """The HEP messages of the corpus captures whose name contains `name_part` (all of them by
    default), optionally only SIP, at most `limit`; skips the test when the corpus is absent."""
    import pytest

    from hepfast.wire import codec
    from tests.conftest import corpus_names, load_corpus

    out = [p for n in corpus_names() if name_part in n for p, _ in load_corpus(n)]
    if not out:
        pytest.skip("real-traffic corpus not found (expected ../shared/corpus)")
    if sip_only:
        out = [p for p in out if codec.decode(p).proto_type == 1]
    return out[:limit] if limit else out
