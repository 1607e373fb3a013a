"""The switch: a supervisor process, its data-plane workers and its egress processes.

Roles and invariants:
- The supervisor is the only process that reads the config. It validates and compiles it once
  (hepfast.plan.compile: DNS resolved here, limits checked), assigns counter slots (names keep
  their slot for the whole run, hepfast.plan.emit.Slots) and writes an immutable plan file per
  generation into the run directory (hepfast.dataplane.rundir). Workers and egress processes are
  fresh interpreters that map that plan read-only; they never parse TOML or resolve names.
- It opens every listening socket (one SO_REUSEPORT socket per worker per listener), keeps them
  for its whole life and hands each worker its own by fd inheritance (nothing else is inherited).
  A respawned worker gets the very socket its predecessor read, so datagrams that arrived
  meanwhile wait in its queue; a reload never closes one. With `switch.spread = "packet"` a
  reuseport program spreads every datagram over the group, so one busy sender uses every worker.
  A listen address some other process already serves is refused at start (unless
  `allow_shared_port`).
- Reload (SIGHUP or POST /reload, always carried out by the main loop; requests that arrive
  while one is pending share its result): compile, check what cannot change, assign slots, write
  the candidate plan, ask for its generation in the control block, then wait until every live
  worker has acknowledged it. A worker that cannot take it keeps the old plan and says why; the
  supervisor then asks everyone back to the old generation and reports the reload as an error
  with that reason. Only after success are egress processes started, restarted or retired and
  the old plan file removed.
- Ring-fed destinations (file, later tcp/tls/storage) have one egress process each, fed by one
  shared-memory ring per worker; the rings outlive their processes, so a crashed or restarted
  egress process loses nothing that was queued.
- Signal handlers only set flags; the main loop acts on them (gunicorn's arbiter pattern).
  Children get SIGTERM from the kernel when the supervisor dies (PR_SET_PDEATHSIG).
- Stop: workers drain their sockets (bounded by switch.drain_timeout) and count what is left;
  then the supervisor counts what arrived after that, then egress processes drain their rings.
- Worker exit codes: 0 after a drain, 3 when it could not start: such children are respawned
  with exponential backoff instead of a tight loop.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import hepfast
from hepfast import constants as K
from hepfast.config import DEFAULT_CONFIG_PATH, ConfigError
from hepfast.dataplane import counters as C
from hepfast.dataplane import rundir as R
from hepfast.dataplane.worker import EXIT_BOOT_ERROR
from hepfast.ingress import tcp, udp
from hepfast.plan.compile import Compiled, compile_text
from hepfast.plan.emit import Slots, emit, target_key
from hepfast.plan.format import write_plan

log = logging.getLogger("hepfast.switch")

RECV_TIMEOUT_US = 100_000
RELOAD_ACK_TIMEOUT_S = 10.0


def _pythonpath_env() -> dict:
    """The environment for children: this hepfast importable whatever the cwd."""
    env = dict(os.environ)
    root = str(Path(hepfast.__file__).resolve().parents[1])
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        env["PYTHONPATH"] = os.pathsep.join([root, *parts])
    return env


@dataclass
class Child:
    """A worker or an egress process slot: who runs there now and how often it failed."""
    index: int                  # worker index, or egress slot
    row: int                    # counter row
    proc: subprocess.Popen | None = None
    started: float = 0.0
    fails: int = 0
    next_start: float = 0.0
    dest: str = ""              # egress: destination name
    dest_slot: int = -1
    settings: tuple = ()
    retiring: bool = False

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0


def restart_delay(fails: int) -> float:
    """Seconds before respawning a child that failed `fails` times in a row at start-up (or
    within a second of it): the first crash is replaced at once, repeated ones back off
    exponentially up to 30 s, so a child that cannot start never spins in a tight loop."""
    return 0.0 if fails <= 1 else min(30.0, 0.5 * 2 ** (fails - 1))


@dataclass
class _ReloadRequest:
    path: Path | None
    done: threading.Event = field(default_factory=threading.Event)
    result: tuple[bool, str] = (False, "not run")


class Supervisor:
    """Owns sockets, counters, plans and children. `start()`, then `serve()` until a stop signal
    (or call `stop()` from another thread)."""

    def __init__(self, config_path: str | Path | None = None, *, workers: int | None = None,
                 admin: bool = True, allow_shared_port: bool = False):
        self.config_path = Path(config_path) if config_path else DEFAULT_CONFIG_PATH
        text = self.config_path.read_text()
        self.compiled: Compiled = compile_text(text, str(self.config_path))
        self._workers_override = workers
        self.nworkers = workers or self.compiled.workers
        self.batch = self.compiled.batch
        self.allow_shared_port = allow_shared_port
        run_base = self.compiled.config.switch.run_dir or None
        R.remove_stale(base=run_base)
        self.rundir = R.create(base=run_base)
        self.ctl = R.make_ctl(self.rundir)
        self.ctl.arr[R.CTL_SUPERVISOR] = os.getpid()
        self.egress_row0 = self.nworkers
        self.own_row = self.nworkers + K.MAX_EGRESS       # the supervisor's own counters
        self.counters = R.make_counters(self.rundir, self.own_row + 1)
        sw = self.compiled.config.switch
        from hepfast.dataplane import guard as G

        G.create(R.guard_path(self.rundir), sw.dedup_slots, sw.call_slots)
        gm = G.open_map(R.guard_path(self.rundir))
        # What pages back the tables (4 or 2048 KiB; /status "guard"): every dedup lookup is a
        # random place in them, so 4 KiB pages add a TLB miss to each.
        self.guard_info = {"bytes": len(gm), "page_kib": G.page_kib(gm),
                           "path": R.guard_path(self.rundir)}
        gm.close()
        self.slots = Slots()
        self.generation = 0
        self.plan_slots: dict = {}
        self.reload_counts = {"ok": 0, "error": 0}
        self.last_reload_error: str | None = None
        self.restarts = 0
        self.started_at = time.time()
        self.listener_socks: list[list[socket.socket]] = []   # [worker][listener]
        self.bound: list[tuple[str, str, int]] = []           # (name, host, port)
        self.granted: dict[str, dict] = {}                    # listener -> socket buffers
        self.workers = [Child(i, i) for i in range(self.nworkers)]
        self.egress: dict[int, Child] = {}                    # egress slot -> child
        self._lock = threading.Lock()          # one reload at a time
        self._plock = threading.Lock()         # the pending request slot
        self._flags: set[str] = set()
        self._pending: _ReloadRequest | None = None
        self.reload_in_progress = False
        self.reload_waiting = 0                 # requests waiting for a reload's result
        self._serving = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self.admin = None
        self._want_admin = admin
        # Callbacks the command sets (systemd notification): reload_start(), reload_end(ok),
        # stopping().
        self.hooks: dict = {}
        self._watch_state: dict = {}
        self._next_watch = 0.0
        self._env = _pythonpath_env()
        self._publish_first()

    # ----------------------------------------------------------------------- generations

    def _slot_names(self, c: Compiled) -> dict:
        try:
            return self.slots.assign(c)
        except ValueError as exc:
            raise ConfigError("", str(exc)) from None

    def _write(self, c: Compiled, gen: int, slots: dict, source: str) -> None:
        header, arrays = emit(c, slots, generation=gen, source=source, workers=self.nworkers)
        write_plan(R.plan_path(self.rundir, gen), header, arrays)

    def _ensure_rings(self, c: Compiled, slots: dict) -> list[str]:
        """Ring files for every ring-fed destination and worker; returns those created."""
        made = []
        for di, d in enumerate(c.destinations):
            if d.egress != "ring":
                continue
            for w in range(self.nworkers):
                path = R.ring_path(self.rundir, slots["destinations"][di], w)
                if os.path.exists(path):
                    if R.ring_size(path) < d.ring_bytes:
                        raise ConfigError(f"destinations.{d.name}.ring_bytes",
                                          "cannot grow while running (restart hepfast)")
                    continue
                R.create_ring(path, d.ring_bytes)
                made.append(path)
        return made

    def _publish_first(self) -> None:
        slots = self._slot_names(self.compiled)
        self._ensure_rings(self.compiled, slots)
        self._write(self.compiled, 1, slots, str(self.config_path))
        self.generation = 1
        self.plan_slots = slots
        self._want(1)

    def rule_slot(self, name: str) -> int:
        return self.slots.rules.slots[name]

    def target_slot(self, dest: str, host: str, port: int | None = None) -> int:
        """The counter slot of a target, by its configured "host:port" (or store path), or by
        the resolved (host, port) of a target of the current config."""
        if port is None:
            return self.slots.targets.slots[target_key(dest, host)]
        for d in self.compiled.destinations:
            if d.name == dest:
                for t in d.targets:
                    if (t.host, t.port) == (host, port):
                        return self.slots.targets.slots[target_key(dest, t.configured)]
        raise KeyError(f"{dest}/{host}:{port}")

    def target_views(self) -> list[tuple[str, str, str, str, int]]:
        """(destination, mode, transport, target label, slot) for every target this run has
        counted, current ones first: a target a reload removed keeps its series and its counts
        in the totals."""
        out, seen = [], set()
        for d in self.compiled.destinations:
            for t in d.targets:
                label = (f"[{t.host}]:{t.port}" if ":" in t.host else f"{t.host}:{t.port}") \
                    if t.port else t.configured
                slot = self.slots.targets.slots[target_key(d.name, t.configured)]
                out.append((d.name, d.mode, d.transport, label, slot))
                seen.add(slot)
        for key, slot in self.slots.targets.slots.items():
            if slot not in seen:
                dest, _, configured = key.partition("/")
                out.append((dest, "", "retired", configured, slot))
        return out

    def dest_slot(self, name: str) -> int:
        return self.slots.destinations.slots[name]

    def listener_index(self, name: str) -> int:
        return [li.name for li in self.compiled.listeners].index(name)

    # ----------------------------------------------------------------------- reload

    def request_reload(self, path: str | Path | None = None,
                       timeout: float = 60.0) -> tuple[bool, str]:
        """Validate and apply the config file. Carried out by the main loop when it runs (the
        admin API calls this from its threads); requests that arrive while one is pending
        share its result. A bad config changes nothing."""
        p = Path(path) if path else None
        if not self._serving or threading.current_thread() is threading.main_thread():
            with self._lock:
                return self._reload(p)
        with self._plock:                  # never held during a reload: requests queue at once
            req = self._pending
            if req is None or req.done.is_set():
                req = self._pending = _ReloadRequest(p)
            elif p is not None:
                req.path = p
        self._signal("reload-request")
        with self._plock:
            self.reload_waiting += 1
        try:
            if not req.done.wait(timeout):
                return False, "reload still in progress (timed out waiting for it)"
        finally:
            with self._plock:
                self.reload_waiting -= 1
        return req.result

    def _refuse(self, msg: str) -> tuple[bool, str]:
        self.reload_counts["error"] += 1
        self.last_reload_error = msg
        log.error("reload refused, still running generation %d: %s", self.generation, msg)
        return False, msg

    def _reload(self, path: Path | None) -> tuple[bool, str]:
        self._hook("reload_start")
        self.reload_in_progress = True
        try:
            result = self._reload_inner(path)
        finally:
            self.reload_in_progress = False
            self._hook("reload_end")
        return result

    def _hook(self, name: str, *args) -> None:
        fn = self.hooks.get(name)
        if fn is not None:
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - a notification must never stop the switch
                log.exception("hook %s failed", name)

    def _reload_inner(self, path: Path | None) -> tuple[bool, str]:
        p = path or self.config_path
        try:
            text = p.read_text()
            c = compile_text(text, str(p))
            self._check_unchangeable(c)
            slots = self._slot_names(c)
            made = self._ensure_rings(c, slots)
        except (ConfigError, OSError) as exc:
            return self._refuse(str(exc))
        gen = self.generation + 1
        old = self.generation
        try:
            self._write(c, gen, slots, str(p))
        except OSError as exc:
            return self._refuse(f"cannot write the plan: {exc}")
        self._want(gen)
        ok, why = self._await_generation(gen)
        if not ok:
            self._want(old)
            self._await_generation(old)
            _unlink(R.plan_path(self.rundir, gen))
            for path_ in made:
                _unlink(path_)
            return self._refuse(why)
        previous = self.compiled
        self.compiled, self.generation, self.plan_slots = c, gen, slots
        _unlink(R.plan_path(self.rundir, old))
        self._apply_socket_options(c)
        self._sync_egress()
        self.reload_counts["ok"] += 1
        self.last_reload_error = None
        log.info("reloaded %s: generation %d (%s)", p, gen, _changes(previous, c))
        return True, f"generation {gen}"

    def _check_unchangeable(self, c: Compiled) -> None:
        old = [(li.name, li.host, li.port, li.transport) for li in self.compiled.listeners]
        new = [(li.name, li.host, li.port, li.transport) for li in c.listeners]
        if old != new:
            raise ConfigError("listeners", "listeners cannot change on reload "
                              "(restart hepfast to rebind sockets)")
        if c.batch != self.batch:
            raise ConfigError("switch.batch", "batch cannot change on reload (restart hepfast)")
        for key in ("dedup_slots", "call_slots", "run_dir"):
            if getattr(c.config.switch, key) != getattr(self.compiled.config.switch, key):
                raise ConfigError(f"switch.{key}", f"{key} cannot change on reload (the "
                                                   "tables are made at start: restart hepfast)")
        if self._workers_override is None and c.workers != self.nworkers:
            raise ConfigError("switch.workers", f"the number of workers cannot change on reload "
                              f"(running {self.nworkers}; restart hepfast to change it)")
        if c.admin_listen != self.compiled.admin_listen and self.admin is not None:
            raise ConfigError("admin.listen", "admin.listen cannot change on reload "
                              "(restart hepfast to rebind the admin API)")

    def _want(self, gen: int) -> None:
        """Ask the workers for generation `gen` (they echo the epoch once they acted on it)."""
        self.ctl.arr[R.CTL_GENERATION] = gen
        self.ctl.arr[R.CTL_EPOCH] += 1

    def _await_generation(self, gen: int) -> tuple[bool, str]:
        """Wait until every live worker has acted on the latest request and runs `gen` (ok),
        or one refuses it (its reason)."""
        epoch = int(self.ctl.arr[R.CTL_EPOCH])
        deadline = time.monotonic() + RELOAD_ACK_TIMEOUT_S
        while True:
            waiting = []
            for w in self.workers:
                if w.proc is None or w.proc.poll() is not None:
                    continue                      # respawned later with the wanted generation
                row = self.counters.row(w.row)
                if int(row[K.H_SEEN]) < epoch:
                    waiting.append(w.index)       # has not acted on this request yet
                    continue
                if int(row[K.H_GENERATION]) == gen:
                    continue
                if int(row[K.H_REFUSED]) == gen:
                    why = R.read_error(self.rundir, w.index, gen) or \
                        f"worker {w.index} refused generation {gen}"
                    return False, why
                waiting.append(w.index)
            if not waiting:
                return True, ""
            if time.monotonic() > deadline:
                return False, (f"workers {waiting} did not take generation {gen} within "
                               f"{RELOAD_ACK_TIMEOUT_S:g} s")
            time.sleep(0.005)

    # ----------------------------------------------------------------------- sockets

    def _open_listeners(self) -> None:
        self.listener_socks = [[] for _ in range(self.nworkers)]
        sw = self.compiled.config.switch
        for li in self.compiled.listeners:
            if li.transport in ("tcp", "tls"):
                group = tcp.open_group(li, self.nworkers, exclusive=not self.allow_shared_port)
            else:
                group = udp.open_group(li, self.nworkers, rcvbuf=sw.rcvbuf,
                                       recv_timeout_us=RECV_TIMEOUT_US,
                                       exclusive=not self.allow_shared_port)
            for w, s in enumerate(group):
                self.listener_socks[w].append(s)
            self.bound.append((li.name, li.host, group[0].getsockname()[1]))
            if li.transport == "udp":
                self._spread(li.name, group, sw.spread)
                self.granted[li.name] = udp.buffers(group[0], sw.rcvbuf, sw.spread)

    def _spread(self, name: str, group: list[socket.socket], how: str) -> None:
        try:
            udp.set_spread(group, how)
        except OSError as exc:
            log.warning("listener %s: cannot spread by packet (%s); the kernel spreads by flow",
                        name, exc)

    def _apply_socket_options(self, c: Compiled) -> None:
        sw = c.config.switch
        for li_i, li in enumerate(c.listeners):
            if li.transport != "udp":
                continue
            group = [socks[li_i] for socks in self.listener_socks if len(socks) > li_i]
            for s in group:
                udp.set_rcvbuf(s, sw.rcvbuf)
            if group:
                self._spread(li.name, group, sw.spread)
                self.granted[li.name] = udp.buffers(group[0], sw.rcvbuf, sw.spread)

    def refresh_kernel_counters(self) -> None:
        """The kernel's own per-socket drop counts (SO_MEMINFO), summed per listener into the
        supervisor's row: exact, and free for the workers."""
        row = self.counters.row(self.own_row)
        for li in range(len(self.bound)):
            if self.compiled.listeners[li].transport != "udp":
                continue
            total = 0
            for socks in self.listener_socks:
                if li < len(socks):
                    total += udp.socket_drops(socks[li])
            row[K.OFF_OVERFLOW + li] = max(int(row[K.OFF_OVERFLOW + li]), total)

    # ----------------------------------------------------------------------- children

    def _spawn_worker(self, w: Child) -> None:
        row = self.counters.row(w.row)
        row[K.H_GENERATION] = 0
        row[K.H_REFUSED] = 0
        row[K.H_SEEN] = 0
        row[K.H_STATE] = 0
        row[K.H_HEARTBEAT] = time.monotonic_ns()
        fds = [s.fileno() for s in self.listener_socks[w.index]]
        w.proc = subprocess.Popen(
            [sys.executable, "-m", "hepfast.dataplane.worker", self.rundir, str(w.index),
             ",".join(map(str, fds)), str(os.getpid())],
            pass_fds=fds, stdin=subprocess.DEVNULL, env=self._env)
        w.started = time.monotonic()

    def _spawn_egress(self, e: Child) -> None:
        row = self.counters.row(e.row)
        row[K.H_STATE] = 0
        row[K.H_HEARTBEAT] = time.monotonic_ns()
        e.proc = subprocess.Popen(
            [sys.executable, "-m", "hepfast.egress.main", self.rundir, str(self.generation),
             str(e.dest_slot), str(e.row), str(self.nworkers), str(os.getpid())],
            stdin=subprocess.DEVNULL, env=self._env)
        e.started = time.monotonic()

    def _sync_egress(self) -> None:
        """One egress process per ring-fed destination of the current plan: start new ones,
        restart those whose settings changed, retire the others (they drain first)."""
        want = {}
        for di, d in enumerate(self.compiled.destinations):
            if d.egress == "ring":
                slot = self.plan_slots["egress"][d.name]
                want[slot] = (d.name, self.plan_slots["destinations"][di], d.settings)
        for slot, e in list(self.egress.items()):
            if slot not in want or want[slot][2] != e.settings:
                self._stop_child(e, retire=slot not in want)
                if slot not in want:
                    del self.egress[slot]
        for slot, (name, dslot, settings) in want.items():
            e = self.egress.get(slot)
            if e is None or e.proc is None:
                e = Child(slot, self.egress_row0 + slot, dest=name, dest_slot=dslot,
                          settings=settings)
                self.egress[slot] = e
                self._spawn_egress(e)

    def _await_ready(self, c: Child, timeout: float = 15.0) -> None:
        """A child still starting (importing, mapping) would die of SIGTERM before its handler
        is set and skip its drain: let it reach its loop first (bounded)."""
        end = time.monotonic() + timeout
        while c.proc is not None and c.proc.poll() is None and time.monotonic() < end \
                and int(self.counters.row(c.row)[K.H_STATE]) == 0:
            time.sleep(0.01)

    def _stop_child(self, c: Child, retire: bool, timeout: float | None = None) -> None:
        if c.proc is None:
            return
        self._await_ready(c)
        if c.proc.poll() is None:
            c.proc.send_signal(signal.SIGTERM)
            try:
                c.proc.wait(timeout if timeout is not None
                            else self.compiled.config.switch.drain_timeout + 10)
            except subprocess.TimeoutExpired:
                c.proc.kill()
                c.proc.wait(5)
        c.proc = None
        if retire and c.dest_slot >= 0:
            for w in range(self.nworkers):
                _unlink(R.ring_path(self.rundir, c.dest_slot, w))

    def start(self) -> None:
        self._open_listeners()
        for w in self.workers:
            self._spawn_worker(w)
        self._sync_egress()
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
        for w in self.workers:
            row = self.counters.row(w.row)
            out.append({"index": w.index, "pid": w.pid,
                        "alive": w.proc is not None and w.proc.poll() is None,
                        "generation": int(row[K.H_GENERATION]),
                        "heartbeat_age_s": max(0.0, (now - int(row[K.H_HEARTBEAT])) / 1e9),
                        "datagrams": int(row[K.H_DATAGRAMS]),
                        "copies": int(row[K.H_COPIES]),
                        "forwarded": int(row[K.OFF_FORWARDED:K.OFF_SEND_ERR].sum()),
                        "queued": int(row[K.OFF_QUEUED:K.OFF_LAST_ERRNO].sum())})
        return out

    def egress_status(self) -> list[dict]:
        out = []
        for _slot, e in sorted(self.egress.items()):
            doc = {}
            try:
                with open(os.path.join(self.rundir, f"egress-{e.dest_slot}.json")) as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                pass
            used = size = 0
            for w in range(self.nworkers):
                try:
                    u, z = R.ring_used(R.ring_path(self.rundir, e.dest_slot, w))
                except OSError:
                    continue
                used, size = used + u, size + z
            out.append({"destination": e.dest, "pid": e.pid,
                        "alive": e.proc is not None and e.proc.poll() is None,
                        "up": bool(doc.get("up", False)), "detail": doc.get("detail", ""),
                        "metrics": doc.get("metrics", {}),
                        "ring_used_bytes": used, "ring_size_bytes": size})
        return out

    def healthy(self) -> tuple[bool, str]:
        if len(self.bound) != len(self.compiled.listeners):
            return False, "listeners not bound"
        for w in self.workers_alive():
            if not w["alive"]:
                return False, f"worker {w['index']} is not running"
            if w["generation"] == 0:
                return False, f"worker {w['index']} is starting"
        for e in self.egress.values():
            if e.proc is None or e.proc.poll() is not None:
                return False, f"egress process of {e.dest} is not running"
            if int(self.counters.row(e.row)[K.H_STATE]) == 0:
                return False, f"egress process of {e.dest} is starting"
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
        children = [(w, "worker") for w in self.workers] + \
            [(e, "egress") for e in self.egress.values()]
        for c, kind in children:
            if c.proc is None:
                continue
            code = c.proc.poll()
            if code is None:
                continue
            lived = time.monotonic() - c.started
            c.proc = None
            c.fails = c.fails + 1 if (code == EXIT_BOOT_ERROR or lived < 1.0) else 0
            delay = restart_delay(c.fails)
            c.next_start = time.monotonic() + delay
            self.restarts += 1
            self.counters.row(self.own_row)[K.H_RESTARTS] = self.restarts
            what = f"worker {c.index}" if kind == "worker" else f"egress process of {c.dest}"
            log.warning("%s exited with %s; restarting%s", what, code,
                        f" in {delay:.1f}s" if delay else "")

    def _respawn(self) -> None:
        now = time.monotonic()
        for w in self.workers:
            if w.proc is None and now >= w.next_start:
                self._spawn_worker(w)
            elif w.proc is not None and now - w.started > 5 and \
                    (time.monotonic_ns() - int(self.counters.row(w.row)[K.H_HEARTBEAT])) > 10e9:
                log.error("worker %d (pid %d) stuck for 10 s: killing it", w.index, w.pid)
                _kill(w.pid, signal.SIGKILL)
        for e in self.egress.values():
            if e.proc is None and now >= e.next_start:
                self._spawn_egress(e)

    def serve(self, on_tick=None, tick_s: float = 1.0) -> int:
        """Supervise until stopped. on_tick(sup) is called about every tick_s (live counters)."""
        self._serving = True
        next_tick = time.monotonic() + tick_s
        try:
            while "stop" not in self._flags:
                # Sleep until the next tick or respawn; signals (SIGCHLD, SIGHUP, SIGTERM) and
                # reload requests wake us through the wake pipe at once.
                wake_at = min([next_tick] + [c.next_start for c in self.workers if c.proc is None]
                              + [c.next_start for c in self.egress.values() if c.proc is None])
                timeout = max(0.0, min(1.0, wake_at - time.monotonic()))
                try:
                    r, _, _ = select.select([self._wake_r], [], [], timeout)
                    if r:
                        os.read(self._wake_r, 4096)
                except (InterruptedError, BlockingIOError):
                    pass
                flags, self._flags = self._flags, set()
                if "stop" in flags:
                    self._flags.add("stop")
                self._reap()
                self._respawn()
                if "reload" in flags:
                    with self._lock:
                        self._reload(None)
                if "reload-request" in flags:
                    self._serve_pending()
                now = time.monotonic()
                if now >= self._next_watch:
                    self._next_watch = now + 1.0
                    self.watch()
                if on_tick and now >= next_tick:
                    next_tick = now + tick_s
                    self.refresh_kernel_counters()
                    on_tick(self)
        finally:
            self._serving = False
            self._serve_pending()
        self.watch()                          # what happened since the last second, before stop
        self._hook("stopping")
        log.info("stopping: draining %d worker(s)", self.nworkers)
        return self.shutdown()

    def watch(self) -> None:
        """Log what an operator must hear of (called about once a second): a target going down
        and coming back, with the error; a destination dropping copies because its queue or
        ring is full (at most every 10 s per destination)."""
        rows = self.counters.rows
        now = time.monotonic_ns()
        last_err = rows[:, K.OFF_LAST_ERR:K.OFF_LAST_OK].max(axis=0)
        last_ok = rows[:, K.OFF_LAST_OK:K.OFF_QUEUED].max(axis=0)
        errno_ = rows[:, K.OFF_LAST_ERRNO:K.OFF_CONN].max(axis=0)
        tot = rows.sum(axis=0, dtype=np.uint64)
        st = self._watch_state
        for dest, _mode, transport, label, slot in self.target_views():
            if transport == "retired":
                continue
            le, lo = int(last_err[slot]), int(last_ok[slot])
            down = le > 0 and le > lo and now - le < 3e9
            key = ("down", slot)
            if down and not st.get(key):
                code = int(errno_[slot])
                why = os.strerror(code) if code else "send failed"
                after = ("its copies are counted as send_error until it answers again"
                         if transport == "udp" else
                         "its packets wait in its queue or spool, or count as queue_full")
                log.warning("target %s/%s is down: %s (%d send errors so far); %s", dest, label,
                            why, int(tot[K.OFF_SEND_ERR + slot]), after)
            elif not down and st.get(key):
                log.info("target %s/%s is back", dest, label)
            st[key] = down
        full = K.DROP["queue_full"]
        for name, dslot in self.slots.destinations.slots.items():
            n = int(tot[K.OFF_DEST_DROP + dslot * K.N_DROP + full])
            key = ("full", dslot)
            prev, when = st.get(key, (n, 0))
            if n > prev and now - when > 10e9:
                log.warning("destination %s: %d copies dropped because its queue is full (%d in "
                            "all); the collector or store is slower than the traffic, see "
                            "docs/operations.md", name, n - prev, n)
                st[key] = (n, now)
            elif key not in st:
                st[key] = (n, 0)

    def _serve_pending(self) -> None:
        with self._plock:
            req, self._pending = self._pending, None
        with self._lock:
            if req is not None and not req.done.is_set():
                req.result = self._reload(req.path)
                req.done.set()

    def shutdown(self, timeout: float | None = None) -> int:
        """Stop: workers drain their sockets, what arrived after that is counted, egress
        processes drain their rings, everything is cleaned up. Returns 0 if every child exited
        cleanly."""
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        drain = self.compiled.config.switch.drain_timeout
        timeout = drain + 5.0 if timeout is None else timeout
        for w in self.workers:
            self._await_ready(w)
            if w.proc is not None and w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        ok = True
        deadline = time.monotonic() + timeout
        for w in self.workers:
            if w.proc is None:
                continue
            try:
                ok &= w.proc.wait(max(0.1, deadline - time.monotonic())) == 0
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(5)
                ok = False
            w.proc = None
        # Datagrams that arrived after the workers' drain: counted, not silently lost.
        row = self.counters.row(self.own_row)
        for socks in self.listener_socks:
            for s in socks:
                if s.type == socket.SOCK_DGRAM:
                    row[K.H_DRAIN_LEFT] += udp.discard(s)
        self.refresh_kernel_counters()
        for e in self.egress.values():
            code = None
            if e.proc is not None:
                self._stop_child(e, retire=False, timeout=drain + 10.0)
                code = 0
            ok &= code in (0, None)
        if self.admin is not None:
            self.admin.stop()
        for socks in self.listener_socks:
            for sk in socks:
                sk.close()
        R.remove(self.rundir)
        os.close(self._wake_r)
        os.close(self._wake_w)
        return 0 if ok else 1


def _changes(old: Compiled, new: Compiled) -> str:
    """A short description of what a reload changed, for the log."""
    parts = []
    ro, rn = set(old.rule_names), set(new.rule_names)
    if rn - ro:
        parts.append("rules added: " + ", ".join(sorted(rn - ro)))
    if ro - rn:
        parts.append("rules removed: " + ", ".join(sorted(ro - rn)))
    do = {d.name: d for d in old.destinations}
    dn = {d.name: d for d in new.destinations}
    if set(dn) - set(do):
        parts.append("destinations added: " + ", ".join(sorted(set(dn) - set(do))))
    if set(do) - set(dn):
        parts.append("destinations removed: " + ", ".join(sorted(set(do) - set(dn))))
    changed = [n for n in set(do) & set(dn) if do[n] != dn[n]]
    if changed:
        parts.append("destinations changed: " + ", ".join(sorted(changed)))
    if old.digest == new.digest:
        return "no change"
    return "; ".join(parts) or "rule details changed"


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


__all__ = ["Supervisor", "restart_delay", "C"]
