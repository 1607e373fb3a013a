#!/bin/sh
# Install what building and testing hepfast needs, only what is missing; a no-op when all is present.
#
# - the `prometheus` server (Debian package), for the tests that start a real Prometheus:
#   installed only when `prometheus` is not on PATH.
# - the `postgresql` server (Debian package), for the postgres destination's tests: installed
#   only when no initdb is found.
# - `tshark` (Debian package), for the pcap destination's tests (they read its files with it):
#   installed only when missing, answering wireshark-common's setuid question (no) beforehand.
# - a C compiler, the Python headers and the OpenSSL headers (libssl-dev) for build_ext, and the
#   `openssl` command (the TLS tests make certificates with it), when missing.
# - the zlib headers (zlib1g-dev: the workers inflate and compress HEP payload chunk 0x0010 with
#   libz, ext/wire/inflate.pxd), when zlib.h is missing.
# - the Python packages of pyproject.toml (run + test + build), with `python3 -m pip`, only those
#   that do not import.
# apt-get: `apt-get update` is run only if an install fails (stale or empty package lists on a
# fresh image). Safe to run repeatedly; prints what it does. Meant for root on Debian 12 (uses
# `sudo -n` when not root). HEPFAST_SKIP_APT=1 skips every apt-get step.
set -u

PYTHON="${PYTHON:-python3}"
status=0

SAY_PREFIX=ensure-deps
# say, as_root, apt_install
. "$(dirname "$0")/deps-lib.sh"

# --- prometheus ---------------------------------------------------------------------------
if command -v prometheus >/dev/null 2>&1; then
    say "prometheus present: $(command -v prometheus)"
else
    apt_install prometheus prometheus
    if command -v prometheus >/dev/null 2>&1; then
        say "prometheus installed: $(command -v prometheus)"
    else
        say "no prometheus: the tests that start a real Prometheus will skip"
        status=1
    fi
fi

# --- postgresql ---------------------------------------------------------------------------
# The Debian server, for the tests of the postgres destination (each starts a throwaway cluster
# of its own with initdb under a temporary directory; the package's own cluster is not used).
if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then
    say "postgresql present"
else
    apt_install postgresql postgresql
    if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        say "postgresql installed"
    else
        say "no postgresql: the postgres destination tests will skip"
        status=1
    fi
fi

# --- kamailio and sipp (the live-agent interop tests: tests/test_kamailio.py) ---------------
for pair in kamailio:kamailio sipp:sip-tester; do
    cmd="${pair%%:*}"
    pkg="${pair#*:}"
    if command -v "$cmd" >/dev/null 2>&1; then
        say "$cmd present: $(command -v "$cmd")"
    elif apt_install "$cmd" "$pkg" && command -v "$cmd" >/dev/null 2>&1; then
        say "$cmd installed: $(command -v "$cmd")"
    else
        say "no $cmd: the Kamailio interop tests will skip"
        status=1
    fi
done

# --- tshark ---------------------------------------------------------------------------------
if command -v tshark >/dev/null 2>&1; then
    say "tshark present: $(command -v tshark)"
else
    if command -v debconf-set-selections >/dev/null 2>&1; then
        echo "wireshark-common wireshark-common/install-setuid boolean false" | \
            as_root debconf-set-selections
    fi
    apt_install tshark tshark
    if command -v tshark >/dev/null 2>&1; then
        say "tshark installed: $(command -v tshark)"
    else
        say "no tshark: the pcap destination tests that read files with it will skip"
        status=1
    fi
fi

# --- compiler and Python headers (python3 setup.py build_ext) -----------------------------
if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
    apt_install "C compiler" gcc libc6-dev || status=1
fi
# OpenSSL: the worker's TLS listeners link libssl/libcrypto (headers: libssl-dev); the TLS tests
# make their certificates with the openssl command.
if [ ! -f /usr/include/openssl/ssl.h ]; then
    apt_install "OpenSSL headers" libssl-dev || status=1
fi
if ! command -v openssl >/dev/null 2>&1; then
    apt_install "openssl command" openssl || say "no openssl command: the TLS tests will skip"
fi
header="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null)/Python.h"
if [ ! -f "$header" ]; then
    case "$("$PYTHON" -c 'import sys; print(sys.executable)' 2>/dev/null)" in
        /usr/bin/*) apt_install "Python headers" python3-dev || status=1 ;;
        *) say "no $header for $PYTHON: install its development headers"; status=1 ;;
    esac
fi

# --- zlib headers (compressed payloads: ext/wire/inflate.pxd links libz) --------------------
if echo '#include <zlib.h>' | cc -E - >/dev/null 2>&1; then
    say "zlib headers present"
else
    apt_install "zlib headers" zlib1g-dev || status=1
fi

# --- Python packages ----------------------------------------------------------------------
if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
    apt_install pip python3-pip || status=1
fi
# "import name:pip requirement"
missing=""
for pair in numpy:numpy msgspec:msgspec prometheus_client:prometheus-client pytest:pytest \
            pyarrow:pyarrow duckdb:duckdb \
            hypothesis:hypothesis Cython:Cython setuptools:setuptools wheel:wheel ruff:ruff \
            cython_lint:cython-lint psycopg:psycopg[binary]; do
    mod="${pair%%:*}"
    req="${pair#*:}"
    if [ "$mod" = "ruff" ] || [ "$mod" = "cython_lint" ]; then
        # command-line tools: what matters is that the command is on PATH.
        command -v "$(echo "$req" | tr _ -)" >/dev/null 2>&1 && continue
    elif "$PYTHON" -c "import $mod" >/dev/null 2>&1; then
        continue
    fi
    missing="$missing $req"
done

if [ -z "$missing" ]; then
    say "python packages present"
else
    flags=""
    # PEP 668: a distribution's own Python refuses pip unless told; a venv or pyenv Python does not.
    marker="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("stdlib"))' 2>/dev/null)/EXTERNALLY-MANAGED"
    in_venv="$("$PYTHON" -c 'import sys; print(int(sys.prefix != sys.base_prefix))' 2>/dev/null)"
    if [ -f "$marker" ] && [ "$in_venv" != "1" ]; then
        flags="--break-system-packages"
    fi
    say "installing python packages:$missing ($PYTHON -m pip install $flags)"
    # shellcheck disable=SC2086
    if ! "$PYTHON" -m pip install -q $flags $missing; then
        say "pip install failed for:$missing"
        status=1
    fi
fi

exit $status
