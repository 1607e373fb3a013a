"""Codec micro-benchmark: packets/s for parse and parse+rewrite over the corpus packets held in one
contiguous buffer, compiled vs the pure-Python reference, side by side in one run.

    python3 bench/codec.py [--seconds S] [--json FILE]

Prints a table and one JSON line. Targets (issue #2): compiled parse >= 5 M packets/s on one
core, and >= 50x the pure-Python codec measured in the same run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hepfast.wire import _codec
from hepfast.wire import pycodec as _pycodec
from hepfast.wire import codec  # noqa: E402
from hepfast.tools.capture import read_hepraw  # noqa: E402

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"


def load() -> list[bytes]:
    pkts = []
    for f in sorted(CORPUS.glob("*.hepraw")):
        pkts.extend(read_hepraw(f))
    if not pkts:
        sys.exit(f"no corpus packets under {CORPUS}: the benchmark needs ../shared/corpus")
    return pkts


def rate(fn, n_per_call: int, seconds: float) -> float:
    fn()                                   # warm up
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        el = time.perf_counter() - t0
        if el >= seconds:
            return calls * n_per_call / el


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--json", help="also write the result JSON to this file")
    a = ap.parse_args()
    pkts = load()
    buf = b"".join(pkts)
    lens = np.array([len(p) for p in pkts], dtype=np.int64)
    offs = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    reasons = np.zeros(len(pkts), np.uint8)
    out = np.zeros(len(buf) * 2, np.uint8)
    setbuf, skip = codec.build_set({"capture_id": 3001, "node_name": "edge-1"})
    n = len(pkts)
    res = {
        "packets": n, "bytes": len(buf),
        "parse_compiled": rate(lambda: _codec.parse_batch(buf, offs, lens, reasons), n,
                               a.seconds),
        "parse_pure": rate(lambda: _pycodec.parse_batch(buf, offs, lens, reasons), n,
                           a.seconds),
        "rewrite_compiled": rate(
            lambda: _codec.rewrite_batch(buf, offs, lens, setbuf, skip, out), n, a.seconds),
        "rewrite_pure": rate(
            lambda: _pycodec.rewrite_batch(buf, offs, lens, setbuf, skip, out), n, a.seconds),
    }
    res["parse_ratio"] = res["parse_compiled"] / res["parse_pure"]
    res["rewrite_ratio"] = res["rewrite_compiled"] / res["rewrite_pure"]
    print(f"corpus: {n} packets, {len(buf)} bytes in one buffer")
    print(f"{'':18}{'compiled':>14}{'pure Python':>14}{'ratio':>9}")
    for k in ("parse", "rewrite"):
        print(f"{k + ' pkts/s':18}{res[k + '_compiled']:>14,.0f}{res[k + '_pure']:>14,.0f}"
              f"{res[k + '_ratio']:>8.0f}x")
    print(f"parse ns/packet (compiled): {1e9 / res['parse_compiled']:.1f}")
    line = json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in res.items()})
    print(line)
    if a.json:
        Path(a.json).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
