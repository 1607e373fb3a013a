#!/bin/sh
# Install what the test suite needs, only what is missing; a no-op when everything is present.
#
# - the `prometheus` server (Debian package), for tests/test_prometheus.py: installed with apt-get
#   only when `prometheus` is not on PATH; `apt-get update` is tried only if the install fails
#   (stale or empty package lists on a fresh image).
# - the Python packages of pyproject.toml (run + test), with `python3 -m pip`, only those that do
#   not import.
# Safe to run repeatedly; prints each thing it does. Meant for root on Debian 12 (uses sudo when
# not root and sudo exists). Set HEPFAST_SKIP_APT=1 to skip the apt part.
set -u

PYTHON="${PYTHON:-python3}"
status=0

say() { echo "ensure-deps: $*"; }

as_root() {
    if [ "$(id -u)" = "0" ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        say "not root and no sudo: cannot run '$*'"
        return 1
    fi
}

# --- prometheus ---------------------------------------------------------------------------
if command -v prometheus >/dev/null 2>&1; then
    say "prometheus present: $(command -v prometheus)"
elif [ "${HEPFAST_SKIP_APT:-0}" = "1" ]; then
    say "prometheus missing; HEPFAST_SKIP_APT=1, not installing (tests/test_prometheus.py will skip)"
elif ! command -v apt-get >/dev/null 2>&1; then
    say "prometheus missing and no apt-get here: install Prometheus 2.x and put 'prometheus' on PATH"
else
    export DEBIAN_FRONTEND=noninteractive
    say "installing prometheus: apt-get install -y --no-install-recommends prometheus"
    if ! as_root apt-get install -y -q --no-install-recommends prometheus; then
        say "install failed; refreshing package lists: apt-get update"
        as_root apt-get update -q && \
            as_root apt-get install -y -q --no-install-recommends prometheus
    fi
    if command -v prometheus >/dev/null 2>&1; then
        say "prometheus installed: $(command -v prometheus)"
    else
        say "could not install prometheus (tests/test_prometheus.py will skip)"
        status=1
    fi
fi

# --- Python packages ----------------------------------------------------------------------
# "import name:pip requirement"
missing=""
for pair in numpy:numpy msgspec:msgspec prometheus_client:prometheus-client pytest:pytest \
            hypothesis:hypothesis Cython:Cython ruff:ruff; do
    mod="${pair%%:*}"
    req="${pair#*:}"
    if [ "$mod" = "ruff" ]; then
        # ruff is a binary; its Python package only locates it.
        command -v ruff >/dev/null 2>&1 && continue
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
    if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then
        say "pip missing for $PYTHON: apt-get install -y python3-pip"
        as_root apt-get install -y -q --no-install-recommends python3-pip || \
            { as_root apt-get update -q && as_root apt-get install -y -q python3-pip; }
    fi
    say "installing python packages:$missing"
    # shellcheck disable=SC2086
    if ! "$PYTHON" -m pip install -q $flags $missing; then
        say "pip install failed for:$missing"
        status=1
    fi
fi

exit $status
