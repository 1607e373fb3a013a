#!/usr/bin/env python3
"""Run every fuzz target (fuzz/targets.py) for a bounded time, each in its own process.

Seeds are made at run time from ../shared/corpus/*.hepraw (nothing is copied into the
repository) into a temporary directory per target; without the corpus, fuzzing starts from the
hand-made shapes of each target's seed function and says so. A finding (a Python exception such
as a Disagreement between compiled and pure code, an ASan/UBSan report, a segfault, a timeout or
an out-of-memory) leaves the input in fuzz/artifacts/TARGET-crash-<sha1> (or -timeout-, -oom-)
and makes the run exit 1. Reproduce one with `python3 fuzz/run.py --repro FILE`.

Builds (--build):
  instrumented  (default) the extensions built by fuzz/sanitize.py with clang
                -fsanitize=address,undefined,fuzzer-no-link, run with atheris' asan_with_fuzzer.so
                preloaded: libFuzzer sees the coverage of the C code, ASan/UBSan check it
  plain         the checkout's own build: coverage of the Python twins only (atheris
                instruments them in both modes), no sanitizer; needs only `pip install atheris`
usage: python3 fuzz/run.py [--seconds 60] [--targets codec,sip,matcher] [--build plain]
       python3 fuzz/run.py --repro fuzz/artifacts/codec-crash-... [--build plain]
       python3 fuzz/run.py --list
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ARTIFACTS = Path(os.environ.get("FUZZ_ARTIFACTS", HERE / "artifacts"))
PROGRESS_EVERY = 5.0            # seconds between live progress lines
_STAT = re.compile(r"stat::(\w+):\s*(\d+)")
_COV = re.compile(r"cov: (\d+) ft: (\d+) corp: (\d+)")
_UNIT = re.compile(r"Test unit written to (\S+)")


# ---------------------------------------------------------------- child: one target, one process

def child(name: str, seconds: int, seed_dir: str, prefix: str, inputs: list[str]) -> None:
    import atheris

    # Python coverage for the pure twins and the harness; the compiled modules get theirs from
    # -fsanitize=fuzzer-no-link (instrumented build) or none (plain).
    with atheris.instrument_imports(include=["hepfast", "fuzz"]):
        from fuzz import targets
        t = targets.TARGETS[name]
        t.fn(b"")                      # loads the implementations (and rule tables) now
        if name == "matcher":
            targets._compiled_rule_sets()
    count = 0
    next_report = time.monotonic() + PROGRESS_EVERY

    def one(data: bytes) -> None:
        nonlocal count, next_report
        count += 1
        if not count & 255 and time.monotonic() >= next_report:
            next_report += PROGRESS_EVERY
            print(f"#progress {count}", file=sys.stderr, flush=True)
        t.fn(data)

    args = [sys.argv[0], f"-max_len={t.max_len}", "-timeout=20", "-rss_limit_mb=3072",
            "-print_final_stats=1", "-error_exitcode=77", f"-artifact_prefix={prefix}"]
    if inputs:
        args += inputs                 # run these inputs once each (reproduce)
    else:
        args += [f"-max_total_time={seconds}", seed_dir]
    atheris.Setup(args, one)
    atheris.Fuzz()


# ---------------------------------------------------------------- parent

class Run:
    """One target's child process, its log, and what it reported."""

    def __init__(self, name: str, cmd: list[str], cwd: Path, env: dict, log: Path):
        self.name, self.log_path = name, log
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, errors="replace")
        self.stats: dict[str, int] = {}
        self.progress = 0
        self.cov = (0, 0, 0)
        self.units: list[str] = []
        self.tail: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.write(line)
            self.tail = (self.tail + [line.rstrip("\n")])[-60:]
            if line.startswith("#progress "):
                self.progress = int(line.split()[1])
            elif (m := _COV.search(line)) is not None:
                self.cov = tuple(int(x) for x in m.groups())
                if line.startswith("#"):
                    self.progress = max(self.progress, int(line[1:].split()[0]))
            elif (m := _STAT.search(line)) is not None:
                self.stats[m.group(1)] = int(m.group(2))
            elif (m := _UNIT.search(line)) is not None:
                self.units.append(m.group(1))
        self.log.close()

    def wait(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
            self.tail.append(f"(killed: still running {timeout:.0f} s after its time was up)")
        self.reader.join(10)
        return rc


def _build(mode: str):
    """(cwd, env, python path of run.py) for the children."""
    if mode == "plain":
        return ROOT, dict(os.environ, PYTHONPATH=str(ROOT)), HERE / "run.py"
    from fuzz import sanitize

    tree = sanitize.build("fuzz")
    sanitize.check_loaded("fuzz")
    # Reports on stderr: they land in the target's log next to libFuzzer's own lines.
    return tree, sanitize.env("fuzz", log_files=False), tree / "fuzz" / "run.py"


def _write_seeds(t, corpus: list[bytes], seed_dir: Path) -> int:
    from fuzz.targets import seed_name

    n = 0
    for s in t.seeds(corpus):
        if len(s) <= t.max_len:
            (seed_dir / seed_name(s)).write_bytes(s)
            n += 1
    return n


def fuzz(names: list[str], seconds: int, mode: str) -> int:
    from fuzz.targets import CORPUS_DIR, TARGETS, corpus_packets

    try:
        import atheris  # noqa: F401
    except ImportError:
        print("fuzz: atheris is not installed: sh scripts/ensure-fuzz-deps.sh (or "
              "`pip install atheris` for --build plain)", flush=True)
        return 2
    corpus = corpus_packets()
    if corpus:
        print(f"fuzz: seeding from {len(corpus)} messages of {CORPUS_DIR}/*.hepraw")
    else:
        print(f"fuzz: no shared corpus at {CORPUS_DIR}: seeding from the targets' hand-made "
              "inputs only")
    cwd, env, script = _build(mode)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    results = []
    for name in names:
        t = TARGETS[name]
        with tempfile.TemporaryDirectory(prefix=f"hepfast-fuzz-{name}-") as seed_dir:
            nseeds = _write_seeds(t, corpus, Path(seed_dir))
            prefix = f"{ARTIFACTS}/{name}-"
            cmd = [sys.executable, str(script), "--child", name, "--seconds", str(seconds),
                   "--seed-dir", seed_dir, "--prefix", prefix]
            print(f"fuzz: {name}: {t.doc}\nfuzz: {name}: {nseeds} seeds, {seconds} s, "
                  f"{mode} build", flush=True)
            run = Run(name, cmd, cwd, env, ARTIFACTS / f"{name}.log")
            t0 = time.monotonic()
            shown = t0
            while run.proc.poll() is None and time.monotonic() - t0 < seconds + 120:
                time.sleep(0.2)
                el = time.monotonic() - t0
                if run.proc.poll() is None and time.monotonic() - shown >= PROGRESS_EVERY:
                    shown += PROGRESS_EVERY
                    print(f"  [{name}] {el:5.0f} s  {run.progress:>9} inputs  "
                          f"{run.progress / max(el, 1e-3):7.0f}/s  cov {run.cov[0]} "
                          f"ft {run.cov[1]} corpus {run.cov[2]}", flush=True)
            rc = run.wait(30)
            el = time.monotonic() - t0
        execs = run.stats.get("number_of_executed_units", run.progress)
        found = sorted(set(run.units))
        ok = rc == 0 and not found
        results.append({"target": name, "inputs": execs, "seconds": round(el, 1),
                        "exec_per_s": round(execs / max(el, 1e-3)), "cov": run.cov[0],
                        "ft": run.cov[1], "corpus": run.cov[2], "exit": rc, "findings": found,
                        "build": mode})
        if not ok:
            print(f"fuzz: {name}: FINDING (exit {rc}); last lines of {run.log_path}:",
                  flush=True)
            print("\n".join("    " + ln for ln in run.tail[-40:]), flush=True)
            for f in found:
                print(f"fuzz: {name}: reproducer kept: {f}\n      python3 fuzz/run.py --repro "
                      f"{f}{' --build plain' if mode == 'plain' else ''}", flush=True)
    print(f"\n{'target':<10} {'inputs':>10} {'s':>6} {'inputs/s':>9} {'cov':>6} {'ft':>6} "
          f"{'corpus':>7}  result")
    for r in results:
        verdict = (f"FINDING exit {r['exit']} {' '.join(r['findings'])}" if r["findings"] else
                   f"FAILED exit {r['exit']}, no input kept (see its log)" if r["exit"] else "ok")
        print(f"{r['target']:<10} {r['inputs']:>10} {r['seconds']:>6} {r['exec_per_s']:>9} "
              f"{r['cov']:>6} {r['ft']:>6} {r['corpus']:>7}  {verdict}")
    print(json.dumps({"fuzz": results}))
    return 0 if all(r["exit"] == 0 and not r["findings"] for r in results) else 1


def repro(path: str, name: str | None, mode: str) -> int:
    from fuzz.targets import TARGETS

    name = name or next((n for n in TARGETS if Path(path).name.startswith(n + "-")), None)
    if name is None:
        print(f"fuzz: cannot tell the target of {path}: add --target NAME", flush=True)
        return 2
    if mode == "plain":
        data = Path(path).read_bytes()
        print(f"fuzz: {name} on {path} ({len(data)} bytes): {data[:64]!r}...")
        TARGETS[name].fn(data)          # raises with the traceback when it still fails
        print("fuzz: no finding: the input passes now")
        return 0
    cwd, env, script = _build(mode)
    cmd = [sys.executable, str(script), "--child", name, "--prefix",
           f"{tempfile.gettempdir()}/hepfast-repro-", "--inputs", str(Path(path).resolve())]
    return subprocess.run(cmd, cwd=cwd, env=env).returncode


def main() -> int:
    from fuzz.targets import TARGETS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("FUZZ_SECONDS", 60)),
                    help="per target (default 60, or $FUZZ_SECONDS)")
    default = [n for n in TARGETS if not n.startswith("_")]     # _selftest: on request only
    ap.add_argument("--targets", default=",".join(default),
                    help=f"comma-separated, of: {', '.join(TARGETS)}")
    ap.add_argument("--build", choices=("instrumented", "plain"),
                    default=os.environ.get("FUZZ_BUILD", "instrumented"))
    ap.add_argument("--repro", metavar="FILE")
    ap.add_argument("--target")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--seed-dir", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", help=argparse.SUPPRESS)
    ap.add_argument("--inputs", nargs="*", default=[], help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child, a.seconds, a.seed_dir, a.prefix, a.inputs)
        return 0
    if a.list:
        for t in TARGETS.values():
            print(f"{t.name:<10} {t.doc}")
        return 0
    if a.repro:
        return repro(a.repro, a.target, a.build)
    names = [n for n in a.targets.split(",") if n]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        ap.error(f"unknown target(s) {unknown}; known: {', '.join(TARGETS)}")
    return fuzz(names, a.seconds, a.build)


if __name__ == "__main__":
    sys.exit(main())
