"""The worker process: binds the compiled tables to the Cython loop (hepfast.dataplane._worker)
and runs it until SIGTERM, then drains its sockets."""
from __future__ import annotations

import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import numpy as np

from hepfast.constants import MODE
from hepfast.dataplane import counters as C
from hepfast.plan.compile import compile_text

EXIT_BOOT_ERROR = 3
SLICE_MS = 100
RCVBUF = 8 << 20


@dataclass
class ListenerTables:
    auth_key: bytes
    allow: np.ndarray
    allow_fam: np.ndarray


@dataclass
class BoundTables:
    """What ext/dataplane/_worker.pyx Worker.bind() reads: the compiled rules plus per-worker sockets."""
    compiled: object
    flags: np.ndarray
    fwd_start: np.ndarray
    fwd_count: np.ndarray
    fwd: np.ndarray
    set_off: np.ndarray
    set_len: np.ndarray
    set_blob: np.ndarray
    skip_start: np.ndarray
    skip_count: np.ndarray
    skip: np.ndarray
    rule_slot: np.ndarray
    default_dest: int
    dest_modes: list[int]
    dest_versions: list[int]
    dest_tstart: list[int]
    dest_tcount: list[int]
    target_fds: list[int]
    target_slots: list[int]
    target_seeds: list[int]
    listeners: list[ListenerTables]
    sockets: list = field(default_factory=list)


def target_key(dest: str, host: str, port: int) -> str:
    return f"{dest}/{host}:{port}"


def _c(a, dtype) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=dtype)


def bind_tables(compiled, rule_slots: dict, target_slots: dict, sock_cache: dict) -> BoundTables:
    """Turn a Compiled config into BoundTables, opening (or reusing from sock_cache) one connected
    UDP socket per target. Connected sockets are what makes ICMP errors visible per target."""
    fds, slots, seeds, tstart, tcount, modes, versions = [], [], [], [], [], [], []
    used = set()
    for d in compiled.destinations:
        tstart.append(len(fds))
        tcount.append(len(d.targets))
        modes.append(MODE[d.mode])
        versions.append(int(d.hep_version))
        for t in d.targets:
            key = (t.host, t.port)
            s = sock_cache.get(key)
            if s is None:
                s = socket.socket(t.family, socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, RCVBUF)
                s.connect((t.host, t.port))
                s.setblocking(False)
                sock_cache[key] = s
            used.add(key)
            fds.append(s.fileno())
            slots.append(target_slots[target_key(d.name, t.host, t.port)])
            seeds.append(int(t.seed))
    for key in [k for k in sock_cache if k not in used]:
        sock_cache.pop(key).close()
    listeners = [ListenerTables(auth_key=bytes(li.auth_key),
                                allow=_c(li.allow, np.uint64).reshape(-1, 4),
                                allow_fam=_c(li.allow_fam, np.uint8))
                 for li in compiled.listeners]
    return BoundTables(
        compiled=compiled,
        flags=_c(compiled.flags, np.uint32), fwd_start=_c(compiled.fwd_start, np.int32),
        fwd_count=_c(compiled.fwd_count, np.int32), fwd=_c(compiled.fwd, np.int32),
        set_off=_c(compiled.set_off, np.int64), set_len=_c(compiled.set_len, np.int64),
        set_blob=_c(compiled.set_blob, np.uint8), skip_start=_c(compiled.skip_start, np.int32),
        skip_count=_c(compiled.skip_count, np.int32), skip=_c(compiled.skip, np.uint32),
        rule_slot=_c([rule_slots[n] for n in compiled.rule_names], np.int32),
        default_dest=int(compiled.default_dest), dest_modes=modes, dest_versions=versions,
        dest_tstart=tstart, dest_tcount=tcount, target_fds=fds, target_slots=slots,
        target_seeds=seeds, listeners=listeners,
    )


class _WorkerState:
    stop = False


def worker_main(index: int, listener_socks: list[socket.socket], row: np.ndarray,
                ctl: np.ndarray, rundir: str, batch: int) -> int:
    """Body of a forked worker process. Returns its exit code."""
    state = _WorkerState()

    def on_term(signum, frame):
        state.stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        from hepfast.dataplane._worker import Worker

        worker = Worker([s.fileno() for s in listener_socks], batch)
        worker.blocking = 1 if len(listener_socks) == 1 else 0
        worker.set_counters(row)
        for i in range(len(listener_socks)):
            worker.set_overflow_base(i, int(row[C.OFF_OVERFLOW + i]))
        sock_cache: dict = {}
        gen = -1
    except Exception as exc:  # noqa: BLE001 - reported, then the boot-error exit code
        print(f"hepfast worker {index}: cannot start: {exc}", file=sys.stderr, flush=True)
        return EXIT_BOOT_ERROR
    row[C.H_PID] = os.getpid()
    row[C.H_STATE] = 1
    while not state.stop:
        want = int(ctl[0])
        if want != gen:
            try:
                doc = msgspec.json.decode(Path(rundir, f"gen-{want}.json").read_bytes())
                compiled = compile_text(doc["text"], doc["source"])
                tables = bind_tables(compiled, doc["rule_slots"], doc["target_slots"],
                                     sock_cache)
                worker.bind(tables)
                gen = want
                row[C.H_GENERATION] = gen
            except Exception as exc:  # noqa: BLE001 - the supervisor validated it; keep running
                print(f"hepfast worker {index}: cannot apply generation {want}: {exc}",
                      file=sys.stderr, flush=True)
                if gen < 0:
                    return EXIT_BOOT_ERROR
                gen = want      # keep the old tables; do not retry every slice
        worker.run(SLICE_MS)
    # Drain: what is already queued in our sockets, bounded in time.
    row[C.H_STATE] = 2
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and worker.run(0, 0) > 0:
        pass
    worker.flush()
    row[C.H_STATE] = 3
    return 0

