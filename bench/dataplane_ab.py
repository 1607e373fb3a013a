#!/usr/bin/env python3
"""Data-plane A/B at full batches: the CPU one worker spends per packet under several configs,
measured in one process, alternating, with nothing else running while a pass is timed.

bench/driver.py measures whole processes at a paced rate, where the wake-ups of a mostly idle
forwarder and the scheduling of the generator beside it move each figure by 5-10% from one
measurement to the next: too coarse to tell a 5% difference. Here, per pass:
  1. the listener socket (SO_RCVBUFFORCE, nobody else reads it) is filled with --packets
     distinct corpus messages from this process (not timed);
  2. the config's worker (hepfast.dataplane._worker.Worker, bound to the config's compiled
     plan exactly as `hepfast run` binds it) drains it in full batches of 64: recvmmsg, parse,
     rules, dedup, sendmmsg to a socket nobody reads (the kernel takes every datagram, as it
     does for a collector);
  3. the thread's CPU time (user + system, CLOCK_THREAD_CPUTIME_ID) over the packets handled.
Each round times every config once (the order rotating by round); the report is each config's
median ns per packet and, for each pair of --pairs, the median of the per-round ratios (B / A
within a round: passes milliseconds apart). The process is pinned to one core.

Configs are those of bench/driver.py (same rules, same generated corpus of distinct messages):
  hepfast-1, hepfast-10, hepfast-dedup (hepfast-10 + listener dedup), hepfast-sip10,
  hepfast-sip10-dedup (hepfast-sip10 + listener dedup).
Dedup must never fire here (it would skip the send and flatter dedup): passes walk through
--unique distinct messages, and a message comes back only after the dedup window has passed
(checked: every pass must route all its packets; the run stops with an error otherwise).

usage: python3 bench/dataplane_ab.py [--configs hepfast-10,hepfast-dedup,...] [--rounds 31]
                                     [--packets 16000] [--pairs hepfast-10:hepfast-dedup,...]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import driver  # noqa: E402  (bench/driver.py: configs and the corpus of distinct messages)

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)     # Linux; Python does not name it
GUARD_DIR = [""]
DEFAULT_CONFIGS = "hepfast-1,hepfast-10,hepfast-dedup,hepfast-sip10,hepfast-sip10-dedup"
DEFAULT_PAIRS = "hepfast-10:hepfast-dedup,hepfast-sip10:hepfast-sip10-dedup,hepfast-1:hepfast-10"


class Subject:
    def __init__(self, name: str, tmp: Path, listen_fd: int, target_port: int):
        from hepfast.dataplane import counters as C
        from hepfast.dataplane import guard as G
        from hepfast.dataplane._worker import Worker
        from hepfast.plan import compile_text
        from hepfast.plan.emit import write_plan_for

        cfg = tmp / f"{name}.toml"
        dedup = name in driver.DEDUP_SUBJECTS
        driver.write_config(cfg, 9, target_port,
                            10 if name in ("hepfast-10", "hepfast-dedup") else 1, dedup=dedup,
                            sip10=name in ("hepfast-sip10", "hepfast-sip10-dedup"))
        self.name = name
        self.plan = write_plan_for(compile_text(cfg.read_text()), str(tmp / f"{name}.plan"))
        self.out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.out.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        self.out.connect(("127.0.0.1", target_port))
        self.out.setblocking(False)
        self.ctr = C.Counters(1)
        self.w = Worker([listen_fd], 64)
        self.w.set_counters(self.ctr.row(0))
        if dedup:
            path = os.path.join(GUARD_DIR[0] or str(tmp), f"{name}-{os.getpid()}.guard")
            G.create(path, driver.DEDUP_SLOTS[0], 1 << 14)
            self.guard = G.open_map(path)
            self.w.set_guard(self.guard)
        self.w.bind(self.plan, [self.out.fileno()], [None])
        self.ns: list[float] = []

    def routed(self) -> int:
        return self.ctr.snapshot()["routed"]


def fill(tx: socket.socket, dst, packets: list[bytes]) -> None:
    for p in packets:
        tx.sendto(p, dst)


def drain(s: Subject, n: int) -> tuple[int, int]:
    """Let s's worker handle what the socket holds: (datagrams, thread CPU ns)."""
    got = 0
    t0 = time.thread_time_ns()
    while got < n:
        k = s.w.run(0, 0)
        if k == 0:
            break
        got += k
    return got, time.thread_time_ns() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default=DEFAULT_CONFIGS)
    ap.add_argument("--pairs", default=DEFAULT_PAIRS,
                    help="A:B pairs whose per-round ratio B/A is reported")
    ap.add_argument("--rounds", type=int, default=31)
    ap.add_argument("--packets", type=int, default=16000, help="per pass")
    ap.add_argument("--unique", type=int, default=200_000)
    ap.add_argument("--corpus", default=str(driver.CORPUS))
    ap.add_argument("--cpu", type=int, default=0, help="core to pin to")
    ap.add_argument("--dedup-slots", type=int, default=1 << 20,
                    help="switch.dedup_slots of the dedup configs (default: the default)")
    ap.add_argument("--guard-dir", default="",
                    help="directory of the dedup configs' guard files (default: a temporary "
                         "one); e.g. a tmpfs mounted with huge=within_size")
    args = ap.parse_args()
    driver.DEDUP_SLOTS[0] = args.dedup_slots
    GUARD_DIR[0] = args.guard_dir
    names = [n for n in args.configs.split(",") if n]
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",") if p]
    pairs = [(a, b) for a, b in pairs if a in names and b in names]
    if not Path(args.corpus).exists():
        print(f"corpus {args.corpus} not found: pass --corpus FILE", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {args.cpu})
    from hepfast.tools.capture import read_hepraw

    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        corpus = list(read_hepraw(driver.unique_corpus(Path(args.corpus), tmp / "u.hepraw",
                                                       args.unique)))
        lsock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            lsock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 30)
        except PermissionError:              # not root: as much as net.core.rmem_max allows
            lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 30)
        lsock.bind(("127.0.0.1", 0))
        lsock.setblocking(False)
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))                          # never read: the kernel drops
        tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        subs = [Subject(n, tmp, lsock.fileno(), sink.getsockname()[1]) for n in names]
        n = args.packets
        slices = max(1, len(corpus) // n)
        k = 0
        print(f"# {len(subs)} configs x {args.rounds} rounds x {n} packets, pinned to core "
              f"{args.cpu}; {slices} distinct slices of the corpus", file=sys.stderr)
        for s in subs:                                       # warm-up pass each
            fill(tx, lsock.getsockname(), corpus[k * n:(k + 1) * n])
            k = (k + 1) % slices
            drain(s, n)
        last_use = [-1e9] * slices
        for rnd in range(args.rounds):
            order = subs[rnd % len(subs):] + subs[:rnd % len(subs)]
            for s in order:
                # a slice comes back only well after the longest dedup window (500 ms)
                while time.monotonic() - last_use[k] < 1.5:
                    time.sleep(0.05)
                before = s.routed()
                fill(tx, lsock.getsockname(), corpus[k * n:(k + 1) * n])
                last_use[k] = time.monotonic()
                k = (k + 1) % slices
                got, ns = drain(s, n)
                routed = s.routed() - before
                if got != n or routed != n:
                    print(f"{s.name}: handled {got}, routed {routed} of {n} packets: the "
                          "socket buffer is too small for --packets, or dedup dropped a "
                          "message (raise --unique)", file=sys.stderr)
                    return 1
                s.ns.append(ns / n)
            print(f"# round {rnd + 1}: " + ", ".join(f"{s.name} {s.ns[-1]:.0f}" for s in subs),
                  file=sys.stderr)
    by = {s.name: s for s in subs}
    summary: dict = {"packets": n, "rounds": args.rounds, "configs": {}, "pairs": {}}
    print(f"{'config':<22} {'median ns/pkt':>14} {'min':>7} {'max':>7}")
    for s in subs:
        v = sorted(s.ns)
        summary["configs"][s.name] = {"median_ns_per_pkt": round(v[len(v) // 2], 1),
                                      "rounds_ns_per_pkt": [round(x, 1) for x in s.ns]}
        print(f"{s.name:<22} {v[len(v) // 2]:>14.0f} {v[0]:>7.0f} {v[-1]:>7.0f}")
    for a, b in pairs:
        r = sorted(y / x for x, y in zip(by[a].ns, by[b].ns, strict=True))
        q1, med, q3 = r[len(r) // 4], r[len(r) // 2], r[(3 * len(r)) // 4]
        summary["pairs"][f"{b}/{a}"] = {"median": round(med, 4), "q1": round(q1, 4),
                                        "q3": round(q3, 4)}
        print(f"{b} / {a}: median {med:.3f} (quartiles {q1:.3f} .. {q3:.3f}) over "
              f"{len(r)} rounds")
    line = json.dumps(summary)
    driver.save_result("dataplane-ab", line)
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
