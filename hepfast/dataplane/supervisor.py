"""The switch: a supervisor process and its forked data-plane workers.

Roles and invariants:
- The supervisor validates and compiles the config, opens every listening socket (one
  SO_REUSEPORT socket per worker per listener, so the kernel spreads flows), maps the shared
  counter block, forks the workers and then only supervises: reload, respawn, admin API.
- Listening sockets live in the supervisor for its whole life. A respawned worker inherits the very
  socket its predecessor read, so datagrams that arrived meanwhile wait in its queue; a reload never
  closes one. Nothing is lost to a reload or a worker crash short of the socket buffer filling.
- Reload: the supervisor validates and compiles the new text first (a bad config changes nothing
  and is counted as an error), writes it with the stable counter slots to the run directory, then
  bumps the shared target generation. Each worker sees it between two batches (at most one
  `slice` later), compiles the same text itself (compilation is deterministic) and swaps tables.
- Signal handlers only set flags; the supervisor loop acts on them (gunicorn's arbiter pattern).
- Worker exit codes: 0 after a drain on SIGTERM, 3 when it could not start (bad environment): such
  workers are respawned with exponential backoff instead of a tight loop.
"""
from __future__ import annotations

import errno
import logging
import mmap
import os
import select
import signal
import socket
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from hepfast.config import DEFAULT_CONFIG_PATH, ConfigError
from hepfast.dataplane import counters as C
from hepfast.dataplane.worker import EXIT_BOOT_ERROR, RCVBUF, target_key, worker_main
from hepfast.plan.compile import compile_text

log = logging.getLogger("hepfast.dataplane.supervisor")

RECV_TIMEOUT_US = 100_000
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


@dataclass
class WorkerSlot:
    index: int
    pid: int = 0
    started: float = 0.0
    fails: int = 0
    next_start: float = 0.0


def restart_delay(fails: int) -> float:
    """Seconds before respawning a worker that failed `fails` times in a row at start-up (or
    within a second of it): the first crash is replaced at once, repeated ones back off
    exponentially up to 30 s, so a worker that cannot start never spins in a tight loop."""
    return 0.0 if fails <= 1 else min(30.0, 0.5 * 2 ** (fails - 1))


class Supervisor:
    """Owns sockets, counters and workers. `start()`, then `serve()` until a stop signal (or call
    `stop()` from another thread)."""

    def __init__(self, config_path: str | Path | None = None, *, workers: int | None = None,
                 admin: bool = True):
        self.config_path = Path(config_path) if config_path else DEFAULT_CONFIG_PATH
        text = self.config_path.read_text()
        self.compiled = compile_text(text, str(self.config_path))
        self.nworkers = workers or self.compiled.workers
        self.batch = self.compiled.batch
        self.counters = C.Counters(self.nworkers)
        self._ctl_mm = mmap.mmap(-1, 64, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
        self.ctl = np.frombuffer(self._ctl_mm, dtype=np.int64)
        self.rundir = tempfile.mkdtemp(prefix="hepfast-")
        self.rule_slots = C.SlotMap(C.MAX_RULES)
        self.target_slots = C.SlotMap(C.MAX_TARGETS)
        self.generation = 0
        self.reload_counts = {"ok": 0, "error": 0}
        self.last_reload_error: str | None = None
        self.restarts = 0
        self.started_at = time.time()
        self.listener_socks: list[list[socket.socket]] = []   # [worker][listener]
        self.bound: list[tuple[str, str, int]] = []           # (name, host, port)
        self.slots = [WorkerSlot(i) for i in range(self.nworkers)]
        self._lock = threading.Lock()
        self._flags: set[str] = set()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.admin = None
        self._want_admin = admin
        self._publish(text, str(self.config_path), self.compiled)

    # -- config generations

    def _publish(self, text: str, source: str, compiled) -> None:
        names = list(compiled.rule_names)
        tkeys = [target_key(d.name, t.host, t.port)
                 for d in compiled.destinations for t in d.targets]
        rs = dict(zip(names, self.rule_slots.assign(names), strict=True))
        ts = dict(zip(tkeys, self.target_slots.assign(tkeys), strict=True))
        gen = self.generation + 1
        Path(self.rundir, f"gen-{gen}.json").write_bytes(msgspec.json.encode(
            {"text": text, "source": source, "rule_slots": rs, "target_slots": ts}))
        self.compiled = compiled
        self.generation = gen
        self.ctl[0] = gen

    def rule_slot(self, name: str) -> int:
        return self.rule_slots.slots[name]

    def target_slot(self, dest: str, host: str, port: int) -> int:
        return self.target_slots.slots[target_key(dest, host, port)]

    def listener_index(self, name: str) -> int:
        return [li.name for li in self.compiled.listeners].index(name)

    def request_reload(self, path: str | Path | None = None) -> tuple[bool, str]:
        """Validate and apply the config file (thread-safe). A bad one changes nothing."""
        with self._lock:
            p = Path(path) if path else self.config_path
            try:
                text = p.read_text()
                compiled = compile_text(text, str(p))
                old = [(li.name, li.host, li.port, li.transport) for li in self.compiled.listeners]
                new = [(li.name, li.host, li.port, li.transport) for li in compiled.listeners]
                if old != new:
                    raise ConfigError("listeners", "listeners cannot change on reload "
                                      "(restart hepfast to rebind sockets)")
                if compiled.batch != self.batch:
                    raise ConfigError("switch.batch", "batch cannot change on reload "
                                      "(restart hepfast)")
            except (ConfigError, OSError) as exc:
                self.reload_counts["error"] += 1
                self.last_reload_error = str(exc)
                log.error("reload refused, still running generation %d: %s",
                          self.generation, exc)
                return False, str(exc)
            self._publish(text, str(p), compiled)
            self.reload_counts["ok"] += 1
            self.last_reload_error = None
            log.info("reloaded %s: generation %d", p, self.generation)
            return True, f"generation {self.generation}"

    # -- sockets and workers

    def _open_listeners(self) -> None:
        self.listener_socks = [[] for _ in range(self.nworkers)]
        for li in self.compiled.listeners:
            port = li.port
            for w in range(self.nworkers):
                s = socket.socket(li.family, socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                _set_rcvbuf(s)
                try:
                    s.setsockopt(socket.SOL_SOCKET, SO_RXQ_OVFL, 1)
                except OSError:
                    pass
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
                             struct.pack("ll", 0, RECV_TIMEOUT_US))
                self.listener_socks[w].append(s)
            self.bound.append((li.name, li.host, port))

    def _spawn(self, slot: WorkerSlot) -> None:
        row = self.counters.row(slot.index)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(self._wake_r)
                os.close(self._wake_w)
                code = worker_main(slot.index, self.listener_socks[slot.index], row, self.ctl,
                                   self.rundir, self.batch)
            except BaseException as exc:  # noqa: BLE001 - a worker must never unwind into us
                print(f"hepfast worker {slot.index} crashed: {exc!r}", file=sys.stderr)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        slot.pid = pid
        slot.started = time.monotonic()
        row[C.H_HEARTBEAT] = time.monotonic_ns()

    def start(self) -> None:
        self._open_listeners()
        for s in self.slots:
            self._spawn(s)
        if self._want_admin and self.compiled.admin_listen:
            try:
                from hepfast.observe.admin import AdminServer
            except ImportError:
                AdminServer = None
            if AdminServer is not None:
                host, port = self.compiled.admin_listen
                self.admin = AdminServer(self, f"[{host}]:{port}" if ":" in host
                                         else f"{host}:{port}")
                self.admin.start()

    def workers_alive(self) -> list[dict]:
        now = time.monotonic_ns()
        out = []
        for s in self.slots:
            row = self.counters.row(s.index)
            out.append({"index": s.index, "pid": s.pid, "alive": s.pid > 0 and _alive(s.pid),
                        "generation": int(row[C.H_GENERATION]),
                        "heartbeat_age_s": max(0.0, (now - int(row[C.H_HEARTBEAT])) / 1e9)})
        return out

    def healthy(self) -> tuple[bool, str]:
        if len(self.bound) != len(self.compiled.listeners):
            return False, "listeners not bound"
        for w in self.workers_alive():
            if not w["alive"]:
                return False, f"worker {w['index']} is not running"
            if w["generation"] == 0:
                return False, f"worker {w['index']} is starting"
        return True, "ok"

    def _signal(self, name: str) -> None:
        self._flags.add(name)
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *a: self._signal("stop"))
        signal.signal(signal.SIGINT, lambda *a: self._signal("stop"))
        signal.signal(signal.SIGHUP, lambda *a: self._signal("reload"))
        signal.signal(signal.SIGCHLD, lambda *a: self._signal("child"))

    def stop(self) -> None:
        self._signal("stop")

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for s in self.slots:
                if s.pid == pid:
                    code = os.waitstatus_to_exitcode(status)
                    lived = time.monotonic() - s.started
                    s.pid = 0
                    s.fails = s.fails + 1 if (code == EXIT_BOOT_ERROR or lived < 1.0) else 0
                    delay = restart_delay(s.fails)
                    s.next_start = time.monotonic() + delay
                    self.restarts += 1
                    self.counters.rows[0][C.H_RESTARTS] = self.restarts
                    log.warning("worker %d (pid %d) exited with %s; restarting%s", s.index, pid,
                                code, f" in {delay:.1f}s" if delay else "")

    def serve(self, on_tick=None, tick_s: float = 1.0) -> int:
        """Supervise until stopped. on_tick(sup) is called about every tick_s (live counters)."""
        next_tick = time.monotonic() + tick_s
        while "stop" not in self._flags:
            # Sleep until the next tick or respawn; signals (SIGCHLD, SIGHUP, SIGTERM) wake us
            # through the wake pipe at once. An idle supervisor costs next to no CPU.
            wake_at = min([next_tick] + [s.next_start for s in self.slots if s.pid == 0])
            timeout = max(0.0, min(1.0, wake_at - time.monotonic()))
            try:
                select.select([self._wake_r], [], [], timeout)
            except InterruptedError:
                pass
            try:
                os.read(self._wake_r, 4096) if _readable(self._wake_r) else None
            except BlockingIOError:
                pass
            flags, self._flags = self._flags, set()
            if "stop" in flags:
                self._flags.add("stop")
            if "reload" in flags:
                self.request_reload()
            self._reap()
            now = time.monotonic()
            for s in self.slots:
                if s.pid == 0 and now >= s.next_start:
                    self._spawn(s)
                elif s.pid and now - s.started > 5 and \
                        (time.monotonic_ns() - int(self.counters.row(s.index)[C.H_HEARTBEAT])) \
                        > 10e9:
                    log.error("worker %d (pid %d) stuck for 10 s: killing it", s.index, s.pid)
                    _kill(s.pid, signal.SIGKILL)
            if on_tick and now >= next_tick:
                next_tick = now + tick_s
                on_tick(self)
        return self.shutdown()

    def shutdown(self, timeout: float = 5.0) -> int:
        """SIGTERM the workers (they drain their sockets), wait, clean up. Returns 0 if all
        exited cleanly."""
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for s in self.slots:
            if s.pid:
                _kill(s.pid, signal.SIGTERM)
        ok = True
        deadline = time.monotonic() + timeout
        for s in self.slots:
            while s.pid:
                try:
                    pid, status = os.waitpid(s.pid, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid:
                    ok &= os.waitstatus_to_exitcode(status) == 0
                    s.pid = 0
                    break
                if time.monotonic() > deadline:
                    _kill(s.pid, signal.SIGKILL)
                    ok = False
                time.sleep(0.02)
        if self.admin is not None:
            self.admin.stop()
        for socks in self.listener_socks:
            for sk in socks:
                sk.close()
        for f in Path(self.rundir).glob("*"):
            f.unlink()
        os.rmdir(self.rundir)
        return 0 if ok else 1


def _set_rcvbuf(s: socket.socket) -> None:
    # A deep receive queue is what absorbs bursts, reloads and worker restarts without loss.
    # SO_RCVBUFFORCE (root / CAP_NET_ADMIN) passes net.core.rmem_max; else we get the cap.
    try:
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0): check its state.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def _readable(fd: int) -> bool:
    r, _, _ = select.select([fd], [], [], 0)
    return bool(r)

