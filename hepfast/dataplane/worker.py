"""The worker process: maps the supervisor's plan, binds it to the Cython loop
(hepfast.dataplane._worker) and runs it until told to stop, then drains its sockets.

Started by the supervisor as `python -m hepfast.dataplane.worker RUNDIR INDEX FDS PARENT`, a fresh
interpreter (not a fork), so it holds only what it needs: its listening sockets (FDS, inherited),
the run directory's shared files, and its own target sockets. It never parses TOML, resolves a
name or imports hepfast.config: everything comes from the plan file of the generation the control
block asks for (hepfast.plan.format).

Protocol with the supervisor (all through the run directory, see hepfast.dataplane.rundir):
- ctl[CTL_GENERATION] is the generation wanted. Between two slices the worker maps that plan,
  builds the new state aside and swaps it in (Worker.bind is transactional), then writes the
  generation to its counter row (H_GENERATION): that is its acknowledgement. If it cannot take the
  plan it keeps the old one, writes the reason to `w<INDEX>.err` and the generation to H_REFUSED.
- It exits when the supervisor dies (PR_SET_PDEATHSIG, and a parent check every slice), so no
  worker ever forwards unsupervised.
- On SIGTERM it drains: forwards what its sockets hold until they are empty or the plan's
  drain_timeout passes, then reads and counts (H_DRAIN_LEFT) whatever is still queued.

Exit codes: 0 after a drain, EXIT_BOOT_ERROR when it could not start (the supervisor backs off).
HEPFAST_FAULT (tests only): "refuse:G" refuses generation G; "refuse:G:W" only in worker W.
"""
from __future__ import annotations

import os
import signal
import socket
import sys
import time

from hepfast.constants import (
    EGRESS,
    H_GENERATION,
    H_HEARTBEAT,
    H_PID,
    H_REFUSED,
    H_SEEN,
    H_STATE,
)
from hepfast.dataplane import rundir as R
from hepfast.plan.format import Plan, read_plan

EXIT_BOOT_ERROR = 3
SLICE_MS = 100


class _Stop:
    flag = False


def die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGTERM us when the supervisor dies; exit now if it already has."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        sys.exit(0)


class Binder:
    """Turns a Plan into what Worker.bind takes: one connected UDP socket per udp target (kept
    across generations while host and port stay), this worker's ring of each ring-fed
    destination."""

    def __init__(self, rundir: str, index: int):
        self.rundir = rundir
        self.index = index
        self.socks: dict[tuple, socket.socket] = {}
        self.rings: dict[str, tuple] = {}

    def arguments(self, plan: Plan) -> tuple[list[int], list]:
        fds: list[int] = []
        rings: list = []
        used_socks, used_rings = set(), set()
        for d in plan.destinations:
            for t in d.targets:
                if d.egress == EGRESS["udp"]:
                    key = (t.family, t.host, t.port)
                    s = self.socks.get(key)
                    if s is None:
                        s = socket.socket(t.family, socket.SOCK_DGRAM)
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, plan.sndbuf)
                        s.connect((t.host, t.port))
                        s.setblocking(False)
                        self.socks[key] = s
                    used_socks.add(key)
                    fds.append(s.fileno())
                    rings.append(None)
                else:
                    path = R.ring_path(self.rundir, d.slot, self.index)
                    if path not in self.rings:
                        self.rings[path] = R.map_ring(path)
                    used_rings.add(path)
                    fds.append(-1)
                    rings.append(self.rings[path][1])
        self._unused = ([k for k in self.socks if k not in used_socks],
                        [p for p in self.rings if p not in used_rings])
        return fds, rings

    def release_unused(self) -> None:
        """After a successful bind: close what the new plan no longer uses."""
        socks, rings = getattr(self, "_unused", ([], []))
        for k in socks:
            self.socks.pop(k).close()
        for p in rings:
            f, mm = self.rings.pop(p)
            try:
                mm.close()
            except BufferError:
                pass
            f.close()
        self._unused = ([], [])


def _fault(want: int, index: int) -> None:
    spec = os.environ.get("HEPFAST_FAULT", "")
    for item in filter(None, spec.split(",")):
        parts = item.split(":")
        if parts[0] == "refuse" and int(parts[1]) == want and (
                len(parts) < 3 or int(parts[2]) == index):
            raise RuntimeError(f"injected fault: worker {index} refuses generation {want}")


def main(argv: list[str]) -> int:
    rundir, index, fds_s, parent = argv[0], int(argv[1]), argv[2], int(argv[3])
    die_with_parent(parent)
    stop = _Stop()

    def on_term(signum, frame):
        stop.flag = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    fds = [int(x) for x in fds_s.split(",")]
    try:
        ctl = R.map_ctl(rundir)
        counters = R.map_counters(rundir)
        row = counters.row(index)
        want = int(ctl.arr[R.CTL_GENERATION])
        plan = read_plan(R.plan_path(rundir, want))
        from hepfast.dataplane._worker import Worker

        batch = plan.batch
        worker = Worker(fds, batch)
        worker.blocking = 1 if len(fds) == 1 else 0
        worker.set_counters(row)
        from hepfast.dataplane import guard as G

        guard_map = G.open_map(R.guard_path(rundir))     # kept for the worker's life
        worker.set_guard(guard_map)
        binder = Binder(rundir, index)
    except Exception as exc:  # noqa: BLE001 - reported, then the boot-error exit code
        print(f"hepfast worker {index}: cannot start: {exc}", file=sys.stderr, flush=True)
        return EXIT_BOOT_ERROR
    row[H_PID] = os.getpid()
    gen, refused = -1, 0
    current: Plan | None = None
    drain_timeout = 2.0
    while not stop.flag:
        epoch = int(ctl.arr[R.CTL_EPOCH])         # read before the generation it announces
        want = int(ctl.arr[R.CTL_GENERATION])
        if want != gen and want != refused:
            try:
                _fault(want, index)
                plan = current if current is not None and current.generation == want \
                    else read_plan(R.plan_path(rundir, want))
                if plan.batch != batch:
                    raise ValueError(f"batch cannot change while running ({batch})")
                tfds, rings = binder.arguments(plan)
                worker.bind(plan, tfds, rings)
                binder.release_unused()
                if current is not None and current is not plan:
                    current.close()
                current, gen = plan, want
                drain_timeout = plan.drain_timeout
                row[H_GENERATION] = gen
                row[H_STATE] = 1
                _report_modules()
            except Exception as exc:  # noqa: BLE001 - keep the old plan, say why
                msg = f"worker {index} cannot take generation {want}: {exc}"
                R.write_error(rundir, index, want, msg)
                print(f"hepfast {msg}", file=sys.stderr, flush=True)
                refused = want
                row[H_REFUSED] = want
                if gen < 0:
                    return EXIT_BOOT_ERROR
        # What this worker has acted on: the supervisor waits for it before it answers a reload
        # (so no worker is still busy with a generation the supervisor has given up).
        row[H_SEEN] = epoch
        worker.run(SLICE_MS)
        if os.getppid() != parent:
            break                       # the supervisor is gone: drain and exit
    # Drain: forward what our sockets hold, bounded in time; count what is left.
    row[H_STATE] = 2
    deadline = time.monotonic() + drain_timeout
    while time.monotonic() < deadline and worker.run(0, 0) > 0:
        pass
    worker.flush()
    worker.close_connections()
    worker.discard()
    row[H_HEARTBEAT] = time.monotonic_ns()
    row[H_STATE] = 3
    return 0


def _report_modules() -> None:
    """Tests: HEPFAST_REPORT_MODULES=FILE writes the modules this process has imported."""
    path = os.environ.get("HEPFAST_REPORT_MODULES")
    if path:
        with open(f"{path}.{os.getpid()}", "w") as f:
            f.write("\n".join(sorted(sys.modules)))


def run_child(entry) -> None:
    """The end of a child process's `__main__`: run entry(argv), flush, and exit with its code
    without unwinding the interpreter (no atexit handler of inherited state runs twice)."""
    code = 1
    try:
        code = entry(sys.argv[1:])
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run_child(main)
