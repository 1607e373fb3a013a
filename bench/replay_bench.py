#!/usr/bin/env python3
"""Generator benchmark: one `hepfast replay` process vs the bare C sendmmsg loop, same run.

Both send the same corpus packets (a .hepraw) to one `hepfast sink` on the other core (sender on
core 0, sink on core 1, taskset). Rounds alternate C / hepfast so drift hits both; the table
shows each round and the JSON line the median pps of each and their ratio (target >= 0.90).
Then paced accuracy: `hepfast replay --rate R` at a few rates up to 80% of the C figure, the
achieved pps against R (target within 2%).

usage: python3 bench/replay_bench.py [--count 1000000] [--rounds 3] [--corpus FILE.hepraw]
"""
from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CORPUS = REPO.parent / "shared" / "corpus" / "kamailio-hep3-udp.hepraw"
PY = sys.executable
sys.path.insert(0, str(BENCH))
from driver import build_c, free_port  # noqa: E402


def run_json(cmd: list[str], timeout: float) -> dict:
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr.strip()[-400:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1_000_000, help="packets per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--corpus", default=str(CORPUS), help="a .hepraw file")
    ap.add_argument("--paced-seconds", type=float, default=3.0)
    ap.add_argument("--rates", default="", help="paced rates to check (default: 1k, 10k, "
                    "and 25/50/80%% of the C figure)")
    args = ap.parse_args()
    corpus = Path(args.corpus)
    if not corpus.exists():
        print(f"corpus {corpus} not found: pass --corpus FILE.hepraw", file=sys.stderr)
        return 2
    cexe = build_c("c_sendmmsg")
    port = free_port()
    sink = subprocess.Popen(["taskset", "-c", "1", PY, "-m", "hepfast", "sink", "--listen",
                             f"127.0.0.1:{port}", "--quiet", "--timeout", "3600"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sink.stderr.readline()
    rows = []
    try:
        for r in range(args.rounds):
            c = run_json(["taskset", "-c", "0", str(cexe), str(corpus), "127.0.0.1", str(port),
                          str(args.count)], 600)
            h = run_json(["taskset", "-c", "0", PY, "-m", "hepfast", "replay", str(corpus),
                          "--to", f"127.0.0.1:{port}", "--count", str(args.count), "--quiet"],
                         600)
            rows.append(("c_sendmmsg", r, c["pps"], c["sent"]))
            rows.append(("hepfast", r, h["pps"], h["sent"]))
        c_pps = sorted(x[2] for x in rows if x[0] == "c_sendmmsg")[args.rounds // 2]
        h_pps = sorted(x[2] for x in rows if x[0] == "hepfast")[args.rounds // 2]
        rates = ([float(x) for x in args.rates.split(",") if x] if args.rates else
                 [1000.0, 10000.0, round(c_pps * 0.25), round(c_pps * 0.5), round(c_pps * 0.8)])
        paced = []
        for rate in rates:
            n = int(rate * args.paced_seconds)
            h = run_json(["taskset", "-c", "0", PY, "-m", "hepfast", "replay", str(corpus),
                          "--to", f"127.0.0.1:{port}", "--rate", str(rate), "--count", str(n),
                          "--quiet"], args.paced_seconds * 5 + 60)
            paced.append({"rate": rate, "pps": h["pps"],
                          "error_pct": round(100 * (h["pps"] - rate) / rate, 3)})
    finally:
        sink.send_signal(signal.SIGTERM)
        out, _ = sink.communicate(timeout=30)
    received = json.loads(out.strip().splitlines()[-1])

    print(f"{'sender':<11} {'round':>5} {'pps':>12} {'sent':>10}")
    for name, r, pps, sent in rows:
        print(f"{name:<11} {r:>5} {pps:>12.0f} {sent:>10}")
    print(f"\n{'paced rate':>10} {'achieved':>12} {'error %':>8}")
    for p in paced:
        print(f"{p['rate']:>10.0f} {p['pps']:>12.0f} {p['error_pct']:>8.3f}")
    result = {"c_pps": c_pps, "hepfast_pps": h_pps, "ratio": round(h_pps / c_pps, 4),
              "paced": paced, "max_paced_error_pct": max(abs(p["error_pct"]) for p in paced),
              "sink_received": received["received"], "count": args.count,
              "rounds": args.rounds}
    line = json.dumps(result)
    out_dir = BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"replay-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(line + "\n")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
