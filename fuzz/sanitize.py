#!/usr/bin/env python3
"""Sanitized builds of the extensions, kept out of the checkout: `make asan`, and the build
`make fuzz` fuzzes.

A sanitized .so cannot replace the checkout's own build (other processes and engineers import
it, and it only loads with its runtime preloaded), so each flavour gets a copy of the source
tree under build/sanitize/FLAVOUR/hepfast/ that is built in place there:
  asan  gcc (or $HEPFAST_ASAN_CC) -fsanitize=address,undefined; runs under LD_PRELOAD=libasan.so
  fuzz  clang -fsanitize=address,undefined,fuzzer-no-link (libFuzzer coverage of the C code);
        runs under LD_PRELOAD=asan_with_fuzzer.so, the ASan runtime with libFuzzer linked in
        that atheris builds when installed from source (scripts/ensure-fuzz-deps.sh)
The copy is refreshed file by file (unchanged files are not touched, so a rebuild only compiles
what changed); build/sanitize/FLAVOUR/shared links to ../shared so that the copied
tests find the corpus where they look for it.

usage: python3 fuzz/sanitize.py asan [PYTEST ARGS...]   build, then run the tests under ASan+UBSan
       python3 fuzz/sanitize.py build FLAVOUR             only build
       python3 fuzz/sanitize.py env FLAVOUR               print the environment a run needs
Sanitizer reports of every process (the tests, `hepfast run` and its workers) go to
build/sanitize/FLAVOUR/logs/; any report fails the run.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "sanitize"
# The copy holds what git sees in the checkout (tracked files and new ones that are not ignored:
# the same tree `make test` tests), less build products.
SKIP_SUFFIXES = (".so", ".c", ".html", ".o", ".pyc")
SKIP_DIRS = ("__pycache__", "generated", "artifacts", "results", "build")


def tree(flavour: str) -> Path:
    return BUILD / flavour / "hepfast"


def logs(flavour: str) -> Path:
    return BUILD / flavour / "logs"


def _sources():
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, check=True).stdout
    for name in out.decode().split("\0"):
        rel = Path(name)
        if name and not name.endswith(SKIP_SUFFIXES) and not set(rel.parts) & set(SKIP_DIRS) \
                and (ROOT / rel).is_file():
            yield rel


def sync(flavour: str) -> Path:
    """Bring the copy in line with the checkout; returns its root."""
    dst = tree(flavour)
    wanted = set()
    for rel in _sources():
        wanted.add(rel)
        src, out = ROOT / rel, dst / rel
        data = src.read_bytes()
        if out.exists() and out.read_bytes() == data:
            continue
        # A changed file gets a fresh time stamp (not the source's): what depends on it, the
        # cythonized .c and the .so, is then older and rebuilt even if the source went back in
        # time (a revert).
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
        shutil.copymode(src, out)
    for p in list(dst.rglob("*")):           # files deleted from the checkout go here too
        rel = p.relative_to(dst)
        if p.is_file() and not p.name.endswith(SKIP_SUFFIXES) and rel not in wanted and \
                not set(rel.parts) & set(SKIP_DIRS):
            p.unlink()
    shared = ROOT.parent / "shared"
    link = BUILD / flavour / "shared"
    if shared.is_dir() and not link.exists():
        link.symlink_to(shared)
    return dst


def _cc(flavour: str) -> str:
    return os.environ.get("HEPFAST_ASAN_CC", "gcc") if flavour == "asan" else "clang"


def _print_file_name(cc: str, name: str) -> str:
    out = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True, text=True)
    path = out.stdout.strip()
    return path if os.path.isabs(path) and os.path.exists(path) else ""


def asan_runtime(flavour: str) -> str:
    """The shared library to LD_PRELOAD, or raise SystemExit saying what is missing."""
    if flavour == "fuzz":
        try:
            import atheris
        except ImportError:
            raise SystemExit("fuzz: atheris is not installed (sh scripts/ensure-fuzz-deps.sh)") \
                from None
        lib = os.path.join(atheris.path(), "asan_with_fuzzer.so")
        if not os.path.exists(lib):
            raise SystemExit(f"fuzz: {lib} is missing: atheris was installed from a wheel, which "
                             "has no sanitizer+libFuzzer runtime; sh scripts/ensure-fuzz-deps.sh "
                             "rebuilds it from source with clang")
        return lib
    cc = _cc(flavour)
    name = "libasan.so" if "gcc" in os.path.basename(cc) else "libclang_rt.asan-x86_64.so"
    lib = _print_file_name(cc, name)
    if not lib:
        raise SystemExit(f"asan: {cc} has no {name} (Debian: apt-get install libasan8, or "
                         "libclang-rt-14-dev for clang)")
    return lib


def env(flavour: str, log_files: bool = True) -> dict[str, str]:
    """The environment a process of this flavour runs in (inherited by its children). With
    log_files, sanitizer reports go to files under logs(flavour) (one per process, so that a
    worker's report is not lost in a pipe); else to stderr."""
    log_dir = logs(flavour)
    log_dir.mkdir(parents=True, exist_ok=True)
    asan_log = [f"log_path={log_dir}/asan"] if log_files else []
    ubsan_log = [f"log_path={log_dir}/ubsan"] if log_files else []
    e = dict(os.environ)
    e.update({
        "PYTHONPATH": str(tree(flavour)),
        "LD_PRELOAD": asan_runtime(flavour),
        # Python leaks by design at exit; reports go to files so that a worker's are kept too.
        "ASAN_OPTIONS": ":".join(["detect_leaks=0", "allocator_may_return_null=1",
                                  "handle_abort=1"] + asan_log
                                 + ([e["ASAN_OPTIONS"]] if e.get("ASAN_OPTIONS") else [])),
        "UBSAN_OPTIONS": ":".join(["print_stacktrace=1", "halt_on_error=1"] + ubsan_log),
        # Python's own allocator carves objects out of arenas ASan does not see into: with
        # malloc, a read past the end of a bytes object (a received datagram) is caught.
        "PYTHONMALLOC": "malloc",
        "HEPFAST_SANITIZED": flavour,
    })
    return e


def build(flavour: str) -> Path:
    """Copy and build; returns the copy's root."""
    dst = sync(flavour)
    cc = _cc(flavour)
    if not shutil.which(cc):
        raise SystemExit(f"{flavour}: compiler {cc} not found (sh scripts/ensure-fuzz-deps.sh)")
    e = dict(os.environ, CC=cc, LDSHARED=f"{cc} -shared", HEPFAST_SANITIZE="address,undefined")
    if flavour == "fuzz":
        e["HEPFAST_FUZZ"] = "1"
    print(f"sanitize: building the {flavour} flavour in {dst} ({cc}, "
          f"-fsanitize=address,undefined{',fuzzer-no-link' if flavour == 'fuzz' else ''})",
          flush=True)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=dst,
                       env=e, capture_output=True, text=True)
    if r.returncode != 0:
        sys.stderr.write(r.stdout[-5000:] + r.stderr[-5000:])
        raise SystemExit(f"sanitize: {flavour} build failed")
    print(f"sanitize: built in {time.monotonic() - t0:.0f} s", flush=True)
    return dst


def reports(flavour: str) -> list[Path]:
    return sorted(p for p in logs(flavour).glob("*san.*") if p.stat().st_size)


def clear_reports(flavour: str) -> None:
    for p in logs(flavour).glob("*san.*"):
        p.unlink()


def check_loaded(flavour: str) -> None:
    """Fail unless the copy's extensions import and really are instrumented."""
    probe = ("import hepfast.wire._codec as c, hepfast.plan._matcher as m, "
             "hepfast.dataplane._worker as w; print(c.__file__)")
    r = subprocess.run([sys.executable, "-c", probe], cwd=tree(flavour), env=env(flavour),
                       capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.startswith(str(tree(flavour))):
        raise SystemExit(f"sanitize: the {flavour} build does not load:\n{r.stdout}{r.stderr}")
    nm = subprocess.run(["nm", "-D", "--undefined-only", r.stdout.strip()], capture_output=True,
                        text=True).stdout
    if "__asan_report" not in nm:
        raise SystemExit(f"sanitize: {r.stdout.strip()} is not built with ASan")


def run_tests(args: list[str]) -> int:
    flavour = "asan"
    dst = build(flavour)
    check_loaded(flavour)
    clear_reports(flavour)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(args or ["tests"])]
    print(f"asan: {' '.join(cmd)} (in {dst}, LD_PRELOAD={env(flavour)['LD_PRELOAD']})",
          flush=True)
    rc = subprocess.run(cmd, cwd=dst, env=env(flavour)).returncode
    found = reports(flavour)
    for p in found:
        print(f"\n===== sanitizer report {p} =====\n{p.read_text()[-6000:]}", file=sys.stderr)
    if found:
        print(f"asan: {len(found)} sanitizer report(s) in {logs(flavour)}", file=sys.stderr)
        return 1
    print(f"asan: pytest exit {rc}, no sanitizer report", flush=True)
    return rc


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "asan":
        return run_tests(rest[1:] if rest[:1] == ["--"] else rest)
    if cmd == "build" and rest:
        build(rest[0])
        check_loaded(rest[0])
        return 0
    if cmd == "env" and rest:
        for k in ("PYTHONPATH", "LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS"):
            print(f"{k}={env(rest[0])[k]}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
