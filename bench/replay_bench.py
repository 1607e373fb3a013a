#!/usr/bin/env python3
"""Generator benchmark: one `hepfast replay` process vs the bare C sendmmsg loop, same run.

Fair both ways: both senders put the same bytes on the wire (the first pass over the corpus as
is, later passes hepfast's loop template, written to a .hepraw for the C loop), in the same batch
size, on a connected UDP socket with the same 8 MiB send buffer, the same count, pinned to core 0,
each into a fresh `hepfast sink` pinned to core 1 that reports what loopback delivered. The
pinning is read back from /proc while each process runs. Rounds alternate the order (C first in
even rounds, hepfast first in odd ones) so drift hits both; the JSON holds the median pps of each,
their ratio (target >= 0.90) and the median of the per-round ratios.

Then paced accuracy: `hepfast replay --rate R` at --rates (1k, 10k) and --fractions of the C
median (25/50/80%), achieved = sent / elapsed over the whole run against R (target within 2%).

usage: python3 bench/replay_bench.py [--count 1000000] [--rounds 5] [--corpus FILE.hepraw]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CORPUS = REPO.parent / "shared" / "corpus" / "kamailio-hep3-udp.hepraw"
PY = sys.executable
SENDER_CPU, SINK_CPU = "0", "1"
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(REPO))
from driver import build_c  # noqa: E402

# numpy's BLAS threads would only idle, but keep every process to exactly one thread of work.
ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")


def write_template(corpus: Path, out: Path) -> int:
    """hepfast's loop template of the corpus (marks reading 000000) as a .hepraw."""
    from hepfast.tools import replay

    pset = replay.PacketSet(replay.load([str(corpus)]), loops_needed=True)
    with open(out, "wb") as f:
        for i in range(pset.n):
            d = pset.tbuf[pset.toffsets[i]:pset.toffsets[i + 1]].tobytes()
            f.write(struct.pack(">I", len(d)) + d)
    return pset.n


def cpus_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Cpus_allowed_list:"):
                    return line.split()[1]
    except OSError:
        pass
    return "?"


class Sink:
    """A fresh `hepfast sink` on SINK_CPU for one run; stops 0.5 s after the traffic does."""

    def __init__(self, expect: int, timeout: float):
        self.proc = subprocess.Popen(
            ["taskset", "-c", SINK_CPU, PY, "-m", "hepfast", "sink", "--listen", "127.0.0.1:0",
             "--quiet", "--idle", "0.5", "--expect", str(expect), "--timeout", str(timeout)],
            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()
        if "listening on" not in line:
            raise RuntimeError(f"sink did not start: {line}{self.proc.stderr.read()[-400:]}")
        self.port = int(line.rsplit(":", 1)[1])
        self.cpus = cpus_of(self.proc.pid)

    def result(self) -> dict:
        out, err = self.proc.communicate(timeout=60)
        return json.loads(out.strip().splitlines()[-1])


def run_sender(cmd: list[str], timeout: float) -> tuple[dict, str]:
    p = subprocess.Popen(["taskset", "-c", SENDER_CPU, *cmd], cwd=REPO, env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.05)
    cpus = cpus_of(p.pid)
    out, err = p.communicate(timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {err.strip()[-400:]}")
    return json.loads(out.strip().splitlines()[-1]), cpus


def one_run(name: str, cmd_for_port, count: int, timeout: float) -> dict:
    sink = Sink(count, timeout + 30)
    res, cpus = run_sender(cmd_for_port(sink.port), timeout)
    got = sink.result()
    return {"sender": name, "pps": res["pps"], "sent": res["sent"], "seconds": res["seconds"],
            "received": got["received"], "sender_cpus": cpus, "sink_cpus": sink.cpus,
            **({"rate": res["rate"]} if "rate" in res else {})}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1_000_000, help="packets per run")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=64, help="packets per sendmmsg (both senders)")
    ap.add_argument("--corpus", default=str(CORPUS), help="a .hepraw file")
    ap.add_argument("--paced-seconds", type=float, default=3.0)
    ap.add_argument("--rates", default="1000,10000", help="absolute paced rates to check (pps)")
    ap.add_argument("--fractions", default="0.25,0.5,0.8",
                    help="paced rates to check as fractions of the C median of this run")
    args = ap.parse_args()
    corpus = Path(args.corpus)
    if not corpus.exists():
        print(f"corpus {corpus} not found: pass --corpus FILE.hepraw", file=sys.stderr)
        return 2
    if len(os.sched_getaffinity(0)) < 2:
        print("needs 2 cores (sender on core 0, sink on core 1)", file=sys.stderr)
        return 2
    cexe = build_c("c_sendmmsg")
    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    template = out_dir / "replay-template.hepraw"
    write_template(corpus, template)
    load_before = os.getloadavg()

    def c_cmd(port: int) -> list[str]:
        return [str(cexe), str(corpus), "127.0.0.1", str(port), str(args.count), "0",
                str(args.batch), str(template)]

    def h_cmd(port: int, rate: float = 0.0, count: int = args.count) -> list[str]:
        cmd = [PY, "-m", "hepfast", "replay", str(corpus), "--to", f"127.0.0.1:{port}",
               "--count", str(count), "--batch", str(args.batch), "--quiet"]
        return cmd + (["--rate", str(rate)] if rate else [])

    rows = []
    for r in range(args.rounds):
        order = [("c_sendmmsg", c_cmd), ("hepfast", h_cmd)]
        if r % 2:
            order.reverse()
        for name, fn in order:
            rows.append({"round": r, **one_run(name, fn, args.count, 600)})

    def med(name: str) -> float:
        return statistics.median(x["pps"] for x in rows if x["sender"] == name)

    c_pps, h_pps = med("c_sendmmsg"), med("hepfast")
    per_round = [next(x for x in rows if x["round"] == r and x["sender"] == "hepfast")["pps"] /
                 next(x for x in rows if x["round"] == r and x["sender"] == "c_sendmmsg")["pps"]
                 for r in range(args.rounds)]
    rates = ([float(x) for x in args.rates.split(",") if x] +
             [float(round(c_pps * float(f))) for f in args.fractions.split(",") if f])
    paced = []
    for rate in rates:
        n = int(rate * args.paced_seconds)
        run = one_run("hepfast", lambda port, rate=rate, n=n: h_cmd(port, rate, n), n,
                      args.paced_seconds * 5 + 60)
        paced.append({"rate": rate, "pct_of_c": round(100 * rate / c_pps, 1), "pps": run["pps"],
                      "error_pct": round(100 * (run["pps"] - rate) / rate, 3),
                      "sent": run["sent"], "received": run["received"]})

    print(f"{'sender':<11} {'round':>5} {'pps':>12} {'sent':>10} {'received':>10} {'cpus':>9}")
    for x in rows:
        print(f"{x['sender']:<11} {x['round']:>5} {x['pps']:>12.0f} {x['sent']:>10} "
              f"{x['received']:>10} {x['sender_cpus'] + '/' + x['sink_cpus']:>9}")
    print(f"\n{'paced rate':>10} {'% of C':>7} {'achieved':>12} {'error %':>8} {'received':>10}")
    for p in paced:
        print(f"{p['rate']:>10.0f} {p['pct_of_c']:>7.1f} {p['pps']:>12.0f} "
              f"{p['error_pct']:>8.3f} {p['received']:>10}")
    pinned = all(x["sender_cpus"] == SENDER_CPU and x["sink_cpus"] == SINK_CPU for x in rows)
    result = {"c_pps": c_pps, "hepfast_pps": h_pps, "ratio": round(h_pps / c_pps, 4),
              "median_round_ratio": round(statistics.median(per_round), 4),
              "round_ratios": [round(x, 4) for x in per_round],
              "paced": paced,
              "max_paced_error_pct": max((abs(p["error_pct"]) for p in paced), default=0.0),
              "lossless": all(x["received"] == x["sent"] for x in rows),
              "pinned": pinned, "count": args.count, "rounds": args.rounds,
              "batch": args.batch, "loadavg_before": [round(x, 2) for x in load_before],
              "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    line = json.dumps(result)
    (out_dir / f"replay-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
