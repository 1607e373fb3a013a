#!/bin/sh
# Install what `make fuzz` and `make asan` need, only what is missing; a no-op when all is present.
# Not used by `make test` (see docs/hardening.md).
#
#   sh scripts/ensure-fuzz-deps.sh          for make fuzz: clang, its compiler-rt (libFuzzer and the
#                                           sanitizer runtimes), atheris with asan_with_fuzzer.so
#   sh scripts/ensure-fuzz-deps.sh --asan   for make asan: gcc's AddressSanitizer runtime only
#
# Why atheris is built from source: the PyPI wheel installs without clang and fuzzes Python code,
# but it has no asan_with_fuzzer.so (the ASan runtime with libFuzzer linked in, which atheris
# generates at install time only when it finds clang's libFuzzer). Without that library an
# extension built with -fsanitize=fuzzer-no-link cannot load (its coverage callbacks are
# undefined) and ASan cannot be combined with atheris. So when the library is missing, atheris is
# reinstalled with `pip install --no-binary atheris` against Debian's clang (about 3 minutes,
# once). Debian 12 puts clang's compiler-rt in libclang-rt-N-dev, which `clang` does not pull in.
# apt-get update is run only when an install fails. HEPFAST_SKIP_APT=1 skips every apt-get step.
set -u

PYTHON="${PYTHON:-python3}"
status=0
SAY_PREFIX=ensure-fuzz-deps
# say, as_root, apt_install
. "$(dirname "$0")/deps-lib.sh"

pip_flags() {
    marker="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("stdlib"))' 2>/dev/null)/EXTERNALLY-MANAGED"
    in_venv="$("$PYTHON" -c 'import sys; print(int(sys.prefix != sys.base_prefix))' 2>/dev/null)"
    if [ -f "$marker" ] && [ "$in_venv" != "1" ]; then
        echo "--break-system-packages"
    fi
}

# rt_file NAME: the full path clang gives for a compiler-rt file, empty when it has none.
rt_file() {
    f="$(clang -print-file-name="$1" 2>/dev/null)"
    case "$f" in
        /*) [ -f "$f" ] && echo "$f" ;;
    esac
}

if [ "${1:-}" = "--asan" ]; then
    # gcc's libasan comes with gcc on Debian (libgcc-N-dev depends on libasanN).
    cc="${HEPFAST_ASAN_CC:-gcc}"
    lib="$("$cc" -print-file-name=libasan.so 2>/dev/null)"
    case "$lib" in
        /*) say "ASan runtime present: $lib" ;;
        *)
            ver="$(gcc -dumpversion 2>/dev/null | cut -d. -f1)"
            apt_install "gcc's ASan runtime" "libgcc-${ver:-12}-dev" || status=1
            ;;
    esac
    exit $status
fi

# --- clang and its compiler-rt ------------------------------------------------------------
if ! command -v clang >/dev/null 2>&1; then
    apt_install clang clang || status=1
fi
if command -v clang >/dev/null 2>&1; then
    if [ -z "$(rt_file libclang_rt.fuzzer_no_main-x86_64.a)" ]; then
        major="$(clang -dumpversion 2>/dev/null | cut -d. -f1)"
        apt_install "clang's compiler-rt (libFuzzer, sanitizers)" "libclang-rt-${major}-dev" || \
            apt_install "clang's compiler-rt (libFuzzer, sanitizers)" "libclang-common-${major}-dev"
    fi
    if [ -n "$(rt_file libclang_rt.fuzzer_no_main-x86_64.a)" ]; then
        say "clang and libFuzzer present: $(rt_file libclang_rt.fuzzer_no_main-x86_64.a)"
    else
        say "clang has no libFuzzer: make fuzz can only run with FUZZ_BUILD=plain"
        status=1
    fi
else
    say "no clang: make fuzz can only run with FUZZ_BUILD=plain"
    status=1
fi

# --- atheris, built against this clang --------------------------------------------------------
have_runtime() {
    "$PYTHON" -c 'import atheris, os, sys; sys.exit(not os.path.exists(os.path.join(atheris.path(), "asan_with_fuzzer.so")))' \
        >/dev/null 2>&1
}
if have_runtime; then
    say "atheris with asan_with_fuzzer.so present"
elif command -v clang >/dev/null 2>&1 && [ -n "$(rt_file libclang_rt.fuzzer_no_main-x86_64.a)" ]; then
    say "building atheris from source against $(command -v clang) (no asan_with_fuzzer.so yet)"
    # shellcheck disable=SC2046
    if CLANG_BIN="$(command -v clang)" CC=clang CXX=clang++ "$PYTHON" -m pip install -q \
            $(pip_flags) --force-reinstall --no-deps --no-binary atheris "atheris>=2.3"; then
        have_runtime && say "atheris built: $("$PYTHON" -c 'import atheris; print(atheris.path())')/asan_with_fuzzer.so"
    fi
    have_runtime || { say "atheris build did not produce asan_with_fuzzer.so"; status=1; }
else
    if ! "$PYTHON" -c 'import atheris' >/dev/null 2>&1; then
        say "no clang: installing the atheris wheel (Python coverage only, FUZZ_BUILD=plain)"
        # shellcheck disable=SC2046
        "$PYTHON" -m pip install -q $(pip_flags) atheris || status=1
    fi
    status=1
fi

exit $status
