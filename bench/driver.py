#!/usr/bin/env python3
"""Forwarder benchmark: the bare C forwarder vs `hepfast run`, side by side in one run.

The forwarder under test is pinned to core 0; the generator (`hepfast replay`, paced) and the
sink (`hepfast sink`, recvmmsg fast path) to core 1. For each subject and each offered rate step
it measures the delivered rate, the loss and the forwarder's CPU time per forwarded packet
(CPU time of its whole process tree from /proc/*/task/*/schedstat, so the switch's supervisor and
workers are all counted). Subjects:
  c_forward  bench/c_forward (recvmmsg -> sendmmsg, no parsing): the physical baseline
  hepfast-1  `hepfast run`, 1 worker, one rule forwarding SIP to one destination
  hepfast-10 `hepfast run`, 1 worker, 10 rules (9 that do not match) and a capture-id rewrite
  hepfast-sip10 `hepfast run`, 1 worker, 10 rules on sip_* keys with globs, prefixes and a
             sip_header (9 that do not match the corpus, as an operator's would) and the SIP rule
  hepfast-2p `hepfast run`, 2 workers on the same core, switch.spread = "packet" (the reuseport
             program picks a worker per datagram; one sending socket reaches both)
  hepfast-file  as hepfast-1, and every packet also to a `file` destination: the worker copies
             it into its shared-memory ring, an egress process writes rotating .hepraw files
             (the `worker ns` and `egress ns` columns split the CPU by process)
  hepfast-pcap, hepfast-parquet  the same with a `pcap` / `parquet` destination instead
             (the `queue_full` column: copies the storage destination dropped over the run)
  hepfast-dedup  the hepfast-10 config with `dedup = true` on its listener (the shared dedup
             table, one XXH64 of the payload per packet; compare with hepfast-10 in the same run)
  hepfast-sip10-dedup  the hepfast-sip10 config with the same listener dedup
With a dedup subject among the subjects (and no --corpus), every subject is offered a generated
corpus of --unique distinct messages (the kamailio corpus with each copy's captured source
address changed), so that the loop replay makes never repeats a message within the dedup window
at the highest step (200,000 messages: 1 s at 200,000 pps, the window is 500 ms) and dedup
drops nothing: the subjects forward the same packets and only the cost of looking is measured.
With --rounds N the whole subject list runs N times in turn (an interleaved A/B: drift of a
shared machine hits every subject alike); each subject and step reports the round with the
median CPU ns per packet, and the per-round figures are kept (`rounds_cpu_ns_per_pkt`).
With --paired as well, every subject is up at once and each step measures the subjects back to
back, round after round (order rotating): the ratios are then medians of per-round ratios of
measurements seconds apart, against c_forward and of each dedup subject against its twin
without dedup (hepfast-dedup / hepfast-10, hepfast-sip10-dedup / hepfast-sip10).
Prints a table and a JSON line (also written under bench/results/) with the ratios of CPU ns per
packet against c_forward at the same offered rate, and each subject's max lossless rate.

usage: python3 bench/driver.py [--steps 20000,50000,...] [--step-seconds 3] [--corpus FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
CORPUS = REPO.parent / "shared" / "corpus" / "kamailio-hep3-udp.hepraw"
TICK = os.sysconf("SC_CLK_TCK")
PY = sys.executable


def save_result(bench: str, line: str) -> Path:
    """A bench's JSON line into bench/results/BENCH-<time>.json (gitignored)."""
    out = BENCH / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{bench}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(line + "\n")
    return path


def build_c(name: str) -> Path:
    exe = BENCH / name
    src = BENCH / f"{name}.c"
    if not exe.exists() or exe.stat().st_mtime < src.stat().st_mtime:
        subprocess.run(["cc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def tree_pids(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def cpu_ns(pid: int) -> int:
    """CPU time of a process and its live descendants, every thread, in ns. From
    /proc/PID/task/TID/schedstat (nanosecond resolution), falling back to utime + stime from
    /proc/PID/stat (clock ticks: 10 ms, too coarse for short steps) where schedstat is absent."""
    total = 0
    for p in tree_pids(pid):
        try:
            tasks = os.listdir(f"/proc/{p}/task")
            total += sum(int(open(f"/proc/{p}/task/{t}/schedstat").read().split()[0])
                         for t in tasks)
            continue
        except (OSError, IndexError, ValueError):
            pass
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) * 1_000_000_000 // TICK
        except (OSError, IndexError, ValueError):
            pass
    return total


def cpu_by_role(pid: int) -> dict[str, int]:
    """CPU ns of the switch's processes by role: supervisor, worker(s), egress process(es)."""
    out = {"supervisor": 0, "worker": 0, "egress": 0}
    for p in tree_pids(pid):
        try:
            cmd = open(f"/proc/{p}/cmdline", "rb").read()
            tasks = os.listdir(f"/proc/{p}/task")
            ns = sum(int(open(f"/proc/{p}/task/{t}/schedstat").read().split()[0]) for t in tasks)
        except (OSError, IndexError, ValueError):
            continue
        role = "worker" if b"dataplane.worker" in cmd else "egress" if b"egress.main" in cmd \
            else "supervisor"
        out[role] += ns
    return out


def hepfast(*args: str, core: int, **kw) -> subprocess.Popen:
    return subprocess.Popen(["taskset", "-c", str(core), PY, "-m", "hepfast", *args],
                            cwd=REPO, **kw)


def start_sink(port: int) -> subprocess.Popen:
    p = hepfast("sink", "--listen", f"127.0.0.1:{port}", "--quiet", "--stamped", "--timeout",
                "3600", core=1, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stderr.readline()                                      # "listening on ..."
    return p


def stop_sink(p: subprocess.Popen) -> dict:
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=30)
    return json.loads(out.strip().splitlines()[-1])


# Subjects with listener dedup (run on a corpus of distinct messages, see above), and the size
# of their table (--dedup-slots).
DEDUP_SUBJECTS = ("hepfast-dedup", "hepfast-sip10-dedup")
DEDUP_SLOTS = [1 << 20]
# Subjects with a storage destination besides the UDP target, and its transport.
STORES = {"hepfast-file": "file", "hepfast-pcap": "pcap", "hepfast-parquet": "parquet"}


# hepfast-sip10: nine realistic rules that never match the corpus (SIPp calls between 127.0.0.1
# ports, Kamailio log lines), each on SIP keys with globs; the tenth takes SIP and logs.
SIP10_MISSES = [
    ['match.sip_ruri_user = ["+4930*", "030*"]'],
    ['match.sip_ruri_domain = ["*.carrier.example", "sbc-?.example.net"]'],
    ['match.sip_from_user = ["anonymous", "*test*"]'],
    ['match.sip_user_agent = ["friendly-scanner*", "sipvicious*"]'],
    ['match.sip_header = { name = "X-Tenant", value = ["acme*"] }'],
    ['match.sip_cseq_method = ["REGISTER", "SUBSCRIBE"]', 'match.sip_status = "2xx"'],
    ['match.sip_call_id = ["*@10.99.*", "lab-*"]'],
    ['match.correlation_id_field = { separator = "@", field = 1, value = ["*.tenant.example"] }'],
    ['match.sip_method = ["OPTIONS", "NOTIFY", "PUBLISH"]', 'match.sip_to_user = "ivr-*"'],
]


def write_config(path: Path, listen: int, target: int, rules: int, workers: int = 1,
                 record: Path | None = None, store: str = "file", dedup: bool = False,
                 sip10: bool = False) -> None:
    lines = ["[switch]", f"workers = {workers}", "batch = 64", 'default = "drop"',
             'spread = "packet"', *([f"dedup_slots = {DEDUP_SLOTS[0]}"] if dedup else []), "",
             "[admin]", 'listen = "127.0.0.1:0"', "",
             "[[listeners]]", 'name = "agents"', f'listen = "127.0.0.1:{listen}"',
             *(["dedup = true", "dedup_window_ms = 500"] if dedup else []), "",
             "[destinations.sink]", f'targets = ["127.0.0.1:{target}"]', 'mode = "hash"', ""]
    fwd = '["sink"]'
    if record is not None:
        lines += ["[destinations.rec]", f'transport = "{store}"', f'path = "{record}"',
                  "rotate_bytes = 268435456"]
        lines += ["keep = 2", ""] if store != "parquet" else ["retention_bytes = 1073741824", ""]
        fwd = '["sink", "rec"]'
    for k, keys in enumerate(SIP10_MISSES if sip10 else []):
        lines += ["[[rules]]", f'name = "sipmiss{k}"', *keys, 'forward = ["sink"]', ""]
    for k in range(rules - 1):
        # Rules that never match the corpus (capture id 2001): they cost the evaluation only.
        lines += ["[[rules]]", f'name = "miss{k}"', f"match.capture_id = [{9000 + k}]",
                  'forward = ["sink"]', ""]
    lines += ["[[rules]]", 'name = "sip"', 'match.proto_type = ["sip", "log"]']
    if rules > 1:
        lines += ["set.capture_id = 3001"]
    lines += [f"forward = {fwd}", ""]
    path.write_text("\n".join(lines))


def unique_corpus(src: Path, dst: Path, n: int) -> Path:
    """n distinct messages from the corpus at src: copy i has its captured source address
    (IPv4 chunk 0x0003, or the low 4 bytes of IPv6 0x0005) set from i, sizes unchanged."""
    sys.path.insert(0, str(REPO))
    from hepfast.tools.capture import read_hepraw
    from hepfast.wire import codec
    from hepfast.wire.chunks import encode_packet

    base = [codec.decode(p) for p in read_hepraw(src)]
    with open(dst, "wb") as f:
        for i in range(n):
            p = base[i % len(base)]
            tag = (0x0A000000 + i).to_bytes(4, "big")
            chunks = [(v, t, tag if (v, t) == (0, 3) else b[:12] + tag if (v, t) == (0, 5)
                       else b) for v, t, b in p.chunks]
            data = encode_packet(chunks)
            f.write(len(data).to_bytes(4, "big") + data)
    return dst


def start_subject(name: str, listen: int, target: int, tmp: Path) -> subprocess.Popen | None:
    if name == "c_forward":
        exe = build_c("c_forward")
        return subprocess.Popen(["taskset", "-c", "0", str(exe), str(listen), str(target), "64"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    probe = subprocess.run([PY, "-c", "import hepfast.commands.run"], cwd=REPO,
                           capture_output=True, text=True)
    if probe.returncode != 0:
        why = (probe.stderr.strip().splitlines() or ["?"])[-1]
        print(f"# {name}: skipped: `hepfast run` is not available yet ({why})", file=sys.stderr)
        return None
    cfg = tmp / f"{name}.toml"
    write_config(cfg, listen, target, 10 if name in ("hepfast-10", "hepfast-dedup") else 1,
                 workers=2 if name == "hepfast-2p" else 1,
                 record=tmp / f"{name}-rec" if name in STORES else None,
                 store=STORES.get(name, "file"), dedup=name in DEDUP_SUBJECTS,
                 sip10=name in ("hepfast-sip10", "hepfast-sip10-dedup"))
    return hepfast("run", "-c", str(cfg), "--quiet", core=0, stdout=subprocess.PIPE,
                   stderr=subprocess.PIPE, text=True)


def offer(listen: int, rate: float, seconds: float, corpus: Path) -> dict:
    p = hepfast("replay", str(corpus), "--to", f"127.0.0.1:{listen}", "--rate", str(rate),
                "--count", str(int(rate * seconds)), "--stamp", "--quiet", core=1,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = p.communicate(timeout=seconds * 3 + 60)
    if p.returncode != 0:
        raise RuntimeError(f"hepfast replay failed: {err.strip()}")
    return json.loads(out.strip().splitlines()[-1])


class Subject:
    """One forwarder under test, started with its listen and target ports (see start())."""

    def __init__(self, name: str, listen: int, target: int, proc: subprocess.Popen):
        self.name, self.listen, self.target, self.proc = name, listen, target, proc
        self.rows: list[dict] = []


def start(name: str, corpus: Path, tmp: Path) -> Subject | None:
    """Start subject `name` and warm it up; None (with a message) when it cannot run."""
    listen, target = free_port(), free_port()
    proc = start_subject(name, listen, target, tmp)
    if proc is None:
        return None
    time.sleep(1.5)                                          # workers up, sockets bound
    if proc.poll() is not None:
        err = proc.stderr.read() if proc.stderr else ""
        print(f"# {name}: exited at start: {err.strip()[-500:]}", file=sys.stderr)
        return None
    sink = start_sink(target)
    try:
        offer(listen, 10000, 0.3, corpus)                   # warm-up: caches, page faults
        time.sleep(0.5)
    finally:
        stop_sink(sink)
    return Subject(name, listen, target, proc)


def measure(s: Subject, rate: float, seconds: float, corpus: Path) -> dict:
    """One step: `rate` pps for `seconds` into s, a fresh sink counting what it delivers."""
    sink = start_sink(s.target)
    try:
        c0, r0 = cpu_ns(s.proc.pid), cpu_by_role(s.proc.pid)
        sent = offer(s.listen, rate, seconds, corpus)
        time.sleep(0.3)                                      # drain
        c1, r1 = cpu_ns(s.proc.pid), cpu_by_role(s.proc.pid)
    finally:
        got = stop_sink(sink)
    recv = got["received"]
    name = s.name
    row = {
        "subject": name, "offered_pps": rate, "sent": sent["sent"],
        "sent_pps": sent["pps"], "received": recv,
        "delivered_pps": round(recv / max(sent["seconds"], 1e-9), 1),
        "loss": round(1 - recv / sent["sent"], 5) if sent["sent"] else None,
        "cpu_ns_per_pkt": round((c1 - c0) / recv, 1) if recv else None,
        "worker_ns_per_pkt": round((r1["worker"] - r0["worker"]) / recv, 1)
        if recv and name != "c_forward" else None,
        "egress_ns_per_pkt": round((r1["egress"] - r0["egress"]) / recv, 1)
        if recv and name in STORES else None,
        # send time stamped into each packet by replay --stamp, arrival at the sink
        "latency_us": got.get("latency_us"),
    }
    s.rows.append(row)
    print(f"# {name:<11} {rate:>9.0f} pps offered: {row}", file=sys.stderr)
    return row


def finish(s: Subject) -> list[dict]:
    """Stop s; its rows, with the run's duplicate / queue_full counts where they apply."""
    s.proc.send_signal(signal.SIGTERM)
    try:
        out, _ = s.proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        s.proc.kill()
        out, _ = s.proc.communicate()
    name, rows = s.name, s.rows
    if name in DEDUP_SUBJECTS and rows:
        try:
            final = json.loads((out or "").strip().splitlines()[-1])
            dups = final["dropped"].get("duplicate", 0)
        except (ValueError, IndexError, KeyError):
            dups = None
        for r in rows:
            r["duplicates_run"] = dups
        print(f"# {name}: duplicates dropped over the run: {dups} (0: every step offered "
              "distinct messages)", file=sys.stderr)
    if name in STORES and rows:
        try:
            final = json.loads((out or "").strip().splitlines()[-1])
            full = final["dropped_by_destination"].get("rec", {}).get("queue_full", 0)
        except (ValueError, IndexError, KeyError):
            full = None
        for r in rows:
            r["store_queue_full_run"] = full
        print(f"# {name}: queue_full over the run: {full}", file=sys.stderr)
    return rows


def run_subject(name: str, steps: list[float], seconds: float, corpus: Path,
                tmp: Path) -> list[dict] | None:
    s = start(name, corpus, tmp)
    if s is None:
        return None
    try:
        for rate in steps:
            measure(s, rate, seconds, corpus)
    finally:
        rows = finish(s)
    return rows


def run_paired(names: list[str], steps: list[float], seconds: float, corpus: Path, tmp: Path,
               rounds: int) -> dict[str, list[list[dict]]]:
    """--paired: every subject up at once; at each step, `rounds` rounds in which each subject
    is measured once, back to back (the order rotates by round): {name: [[row per step] per
    round]}, so that round k of two subjects are seconds apart."""
    subs = [s for s in (start(n, corpus, tmp) for n in names) if s is not None]
    runs: dict[str, list[list[dict]]] = {s.name: [[] for _ in range(rounds)] for s in subs}
    try:
        for rate in steps:
            for rnd in range(rounds):
                print(f"# {rate:.0f} pps, round {rnd + 1} of {rounds}", file=sys.stderr)
                k = rnd % len(subs)
                for s in subs[k:] + subs[:k]:
                    runs[s.name][rnd].append(measure(s, rate, seconds, corpus))
    finally:
        for s in subs:
            finish(s)
    return runs


# Subjects and the config they add one thing to: --paired reports their per-round ratio.
TWINS = {"hepfast-dedup": "hepfast-10", "hepfast-sip10-dedup": "hepfast-sip10"}


def paired_ratios(runs: dict[str, list[list[dict]]], name: str, ref: str) -> list[dict]:
    """Per step: name's CPU ns per packet over ref's within each round, and their median."""
    out = []
    if name not in runs or ref not in runs:
        return out
    for i, _ in enumerate(runs[name][0]):
        rs = sorted(a[i]["cpu_ns_per_pkt"] / b[i]["cpu_ns_per_pkt"]
                    for a, b in zip(runs[name], runs[ref], strict=True)
                    if a[i]["cpu_ns_per_pkt"] and b[i]["cpu_ns_per_pkt"])
        out.append({"offered_pps": runs[name][0][i]["offered_pps"],
                    "round_ratios": [round(r, 3) for r in rs],
                    "median": round(rs[len(rs) // 2], 3) if rs else None})
    return out


def median_rows(rounds: list[list[dict]]) -> list[dict]:
    """Per offered rate, the row of the round with the median CPU ns per packet (all its fields
    from that one measurement), with every round's figure in `rounds_cpu_ns_per_pkt`."""
    out = []
    for step_rows in zip(*rounds, strict=True):
        known = sorted((r for r in step_rows if r["cpu_ns_per_pkt"]),
                       key=lambda r: r["cpu_ns_per_pkt"])
        row = dict(known[len(known) // 2] if known else step_rows[0])
        row["rounds_cpu_ns_per_pkt"] = [r["cpu_ns_per_pkt"] for r in step_rows]
        out.append(row)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="20000,50000,100000,200000,300000,400000,500000",
                    help="offered rates, packets/s, comma separated")
    ap.add_argument("--step-seconds", type=float, default=3.0)
    ap.add_argument("--corpus", default=str(CORPUS), help=".hepraw/pcap to offer")
    ap.add_argument("--subjects", default="c_forward,hepfast-1,hepfast-10,hepfast-2p,hepfast-file,"
                                          "hepfast-pcap,hepfast-parquet")
    ap.add_argument("--lossless", type=float, default=0.001, help="loss counted as lossless")
    ap.add_argument("--unique", type=int, default=200_000,
                    help="with hepfast-dedup: distinct messages in the generated corpus")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the subject list this many times in turn; report each step's median")
    ap.add_argument("--paired", action="store_true",
                    help="all subjects up at once, measured back to back at each step, "
                         "--rounds times; ratios are medians of the per-round ratios")
    ap.add_argument("--dedup-slots", type=int, default=1 << 20,
                    help="switch.dedup_slots of the dedup subjects (default: the default)")
    args = ap.parse_args()
    DEDUP_SLOTS[0] = args.dedup_slots
    corpus_given = any(a == "--corpus" or a.startswith("--corpus=") for a in sys.argv[1:])
    if (os.cpu_count() or 1) < 2:
        print("driver.py needs 2 cores (forwarder on core 0, generator + sink on core 1)",
              file=sys.stderr)
        return 2
    corpus = Path(args.corpus)
    if not corpus.exists():
        print(f"corpus {corpus} not found: pass --corpus FILE", file=sys.stderr)
        return 2
    steps = [float(s) for s in args.steps.split(",") if s]
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if set(DEDUP_SUBJECTS) & set(args.subjects.split(",")) and not corpus_given:
            corpus = unique_corpus(corpus, Path(tmp) / "unique.hepraw", args.unique)
            print(f"# offering {args.unique} distinct messages ({corpus})", file=sys.stderr)
        runs: dict[str, list[list[dict]]] = {}
        if args.paired:
            runs = run_paired(args.subjects.split(","), steps, args.step_seconds, corpus,
                              Path(tmp), max(1, args.rounds))
        for rnd in range(0 if args.paired else max(1, args.rounds)):
            if args.rounds > 1:
                print(f"# round {rnd + 1} of {args.rounds}", file=sys.stderr)
            for name in args.subjects.split(","):
                rows = run_subject(name, steps, args.step_seconds, corpus, Path(tmp))
                if rows is not None:
                    runs.setdefault(name, []).append(rows)
        for name, rounds in runs.items():
            results[name] = median_rows(rounds) if len(rounds) > 1 else rounds[0]

    base = {r["offered_pps"]: r for r in results.get("c_forward", [])}
    print(f"{'subject':<12} {'offered':>9} {'delivered':>10} {'loss':>8} {'ns/pkt':>8} "
          f"{'vs C':>6} {'worker':>7} {'egress':>7} {'p50 us':>7} {'p99 us':>7} {'max us':>7}")
    summary: dict = {"steps": steps, "subjects": {}}
    for name, rows in results.items():
        lossless = [r["offered_pps"] for r in rows if r["loss"] is not None
                    and r["loss"] <= args.lossless]
        ratios = []
        pvc = {p["offered_pps"]: p["median"] for p in paired_ratios(runs, name, "c_forward")} \
            if args.paired else {}
        for r in rows:
            b = base.get(r["offered_pps"])
            ratio = None
            if b and b["cpu_ns_per_pkt"] and r["cpu_ns_per_pkt"]:
                # --paired: the median of the per-round ratios, else the ratio of the medians
                ratio = pvc.get(r["offered_pps"]) or round(
                    r["cpu_ns_per_pkt"] / b["cpu_ns_per_pkt"], 3)
                if r["loss"] <= args.lossless and b["loss"] <= args.lossless:
                    ratios.append(ratio)
            r["ratio_vs_c"] = ratio
            lat = r.get("latency_us") or {}
            print(f"{name:<12} {r['offered_pps']:>9.0f} {r['delivered_pps']:>10.0f} "
                  f"{r['loss']:>8.4f} {r['cpu_ns_per_pkt'] or 0:>8.0f} "
                  f"{ratio if ratio is not None else '-':>6} "
                  f"{r.get('worker_ns_per_pkt') or '-':>7} {r.get('egress_ns_per_pkt') or '-':>7} "
                  f"{lat.get('p50', '-'):>7} {lat.get('p99', '-'):>7} {lat.get('max', '-'):>7}")
        ratios.sort()
        summary["subjects"][name] = {
            "max_lossless_pps": max(lossless) if lossless else 0,
            "median_cpu_ratio_vs_c": ratios[len(ratios) // 2] if ratios else None,
            "rows": rows,
        }
    if args.paired:
        summary["paired"] = {}
        for name, ref in [(n, "c_forward") for n in runs if n != "c_forward"] + \
                list(TWINS.items()):
            pr = paired_ratios(runs, name, ref)
            if not pr:
                continue
            summary["paired"][f"{name}/{ref}"] = pr
            print(f"# paired {name} / {ref}: " + "; ".join(
                f"{p['offered_pps']:.0f} pps median {p['median']} of {p['round_ratios']}"
                for p in pr))
    line = json.dumps(summary)
    save_result("driver", line)
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
