"""Storage destinations' write rate and disk cost, one egress in this process.

Distinct messages (synthetic calls: every Call-ID, tag and timestamp its own, so compression is
not flattered by repeats; or the real corpus, repeated, with --source corpus) are pushed into a
shared-memory ring the way a worker does, and the `pcap` and `parquet` egress kinds drain it exactly as their egress process
would (hepfast.egress.process.run_egress's batches of 1024), into a temporary directory. Prints a
table (rows/s, bytes on disk per stored message next to the raw HEP bytes per message) and one
JSON line. The `file` destination (.hepraw: the raw HEP bytes written with writev) is the
baseline measured in the same run.

    python3 bench/storage_bench.py [--messages 400000] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import mmap
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hepfast.egress import _ring  # noqa: E402
from hepfast.egress.file import FileEgress  # noqa: E402
from hepfast.egress.parquet import ParquetEgress  # noqa: E402
from hepfast.egress.pcap import PcapEgress  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"
RING_BYTES = 1 << 27            # 128 MiB: refilled between rounds of drains


def corpus() -> list[bytes]:
    from hepfast.tools.capture import read_hepraw

    files = sorted(CORPUS.glob("*.hepraw")) if CORPUS.is_dir() else []
    return [p for f in files for p in read_hepraw(f)]


def synthetic_messages(count: int) -> list[bytes]:
    from hepfast.tools import synthetic

    out: list[bytes] = []
    seed = 1
    while len(out) < count:
        print(f"  generating synthetic calls: {len(out)}/{count}", file=sys.stderr, flush=True)
        out += [p.data for p in synthetic.generate(
            {"calls": 5000, "cps": 200.0, "ipv6": 0.2, "seed": seed,
             "start": 1.7e9 + seed * 100})]
        seed += 1
    return out[:count]


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def run(kind: str, make, msgs: list[bytes], total: int, ring) -> dict:
    out = tempfile.mkdtemp(prefix=f"hepfast-bench-{kind}-")
    try:
        eg = make(out)
        eg.open()
        busy = 0.0
        done = 0
        raw = 0
        i = 0
        last = time.monotonic()
        while done < total:
            while done + ring_count(ring) < total:           # refill (not timed)
                p = msgs[i % len(msgs)]
                if ring.push(p) != _ring.PUSH_OK:
                    break
                raw += len(p)
                i += 1
            ring.publish()
            while True:
                b = ring.read(1024)
                if b.count == 0:
                    ring.release(b)
                    break
                t0 = time.perf_counter()
                eg.send_batch(b)
                busy += time.perf_counter() - t0
                done += b.count
                ring.release(b)
            if time.monotonic() - last > 2:
                print(f"  {kind}: {done}/{total}", file=sys.stderr, flush=True)
                last = time.monotonic()
        t0 = time.perf_counter()
        eg.flush()
        eg.close()
        busy += time.perf_counter() - t0
        disk = du(out)
        m = eg.metrics()
        return {"kind": kind, "records": done, "seconds": busy, "rate": done / busy,
                "disk_bytes": disk, "raw_hep_bytes": raw, "bytes_per_msg": disk / done,
                "raw_per_msg": raw / done, "written": m["records_written_total"]}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def ring_count(ring) -> int:
    return ring.pushed - ring.consumed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=400_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kinds", default="file,pcap,parquet")
    ap.add_argument("--source", choices=("synthetic", "corpus"), default="synthetic")
    a = ap.parse_args(argv)
    source = a.source
    msgs = corpus() if source == "corpus" else synthetic_messages(a.messages)
    if not msgs:
        print(f"no corpus at {CORPUS}", file=sys.stderr)
        return 2
    mm = mmap.mmap(-1, _ring.HEADER_BYTES + RING_BYTES)
    _ring.format_ring(mm, RING_BYTES)
    ring = _ring.Ring(mm)
    kinds = {
        "file": lambda d: FileEgress("bench", d, rotate_bytes=1 << 30, keep=None),
        "pcap": lambda d: PcapEgress("bench", d, rotate_bytes=1 << 30, keep=None),
        "parquet": lambda d: ParquetEgress("bench", d, rotate_bytes=1 << 30,
                                           row_group_rows=65536),
    }
    kinds = {k: v for k, v in kinds.items() if k in a.kinds.split(",")}
    best: dict[str, dict] = {}
    for r in range(a.rounds):
        for kind, make in kinds.items():
            res = run(kind, make, msgs, a.messages, ring)
            print(f"round {r + 1} {kind}: {res['rate']:,.0f} records/s", file=sys.stderr)
            if kind not in best or res["rate"] > best[kind]["rate"]:
                best[kind] = res
    real = corpus()
    once = {}
    if real:                                   # disk cost of real traffic, each message once
        for kind, make in kinds.items():
            once[kind] = run(kind, make, real, len(real), ring)
    print(f"\n{source}: {len(msgs)} distinct messages, {a.messages} per run, best of "
          f"{a.rounds}, one process")
    print(f"{'kind':<8} {'records/s':>12} {'disk B/msg':>11} {'raw HEP B/msg':>14} "
          f"{'raw/disk':>9}")
    for kind, res in best.items():
        print(f"{kind:<8} {res['rate']:>12,.0f} {res['bytes_per_msg']:>11.1f} "
              f"{res['raw_per_msg']:>14.1f} {res['raw_per_msg'] / res['bytes_per_msg']:>9.2f}")
    if once:
        print(f"\nreal corpus written once ({len(real)} messages; small files: the Parquet "
              f"footer weighs here)")
        for kind, res in once.items():
            print(f"{kind:<8} {'':>12} {res['bytes_per_msg']:>11.1f} {res['raw_per_msg']:>14.1f} "
                  f"{res['raw_per_msg'] / res['bytes_per_msg']:>9.2f}")
    print(json.dumps({"bench": "storage", "source": source, "results": best,
                      "corpus_once": once}))
    ring.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
