# Shared by scripts/ensure-deps.sh and scripts/ensure-fuzz-deps.sh (sourced; POSIX sh).
# The caller sets SAY_PREFIX before sourcing. HEPFAST_SKIP_APT=1 skips every apt-get step.

say() { echo "${SAY_PREFIX:-deps}: $*"; }

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

# apt_install WHAT PACKAGE...: install, and on failure refresh the package lists and retry once.
apt_install() {
    what="$1"
    shift
    if [ "${HEPFAST_SKIP_APT:-0}" = "1" ]; then
        say "$what missing; HEPFAST_SKIP_APT=1, not installing: $*"
        return 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        say "$what missing and no apt-get here: install $* by other means"
        return 1
    fi
    say "installing $what: apt-get install -y --no-install-recommends $*"
    if DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "$@"
    then
        return 0
    fi
    say "install failed; refreshing package lists: apt-get update"
    as_root apt-get update -q && \
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "$@"
}
