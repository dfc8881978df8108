#!/bin/bash
# SPDX-License-Identifier: MIT
#
# Build (or reuse) the Debian bookworm root file system the systemd tests boot with systemd-nspawn.
#
#   tests/systemd/build-rootfs.sh [PYPROJECT]      prints the path of a ready rootfs on stdout
#
# Two cached layers under $APPLIANCE_TEST_CACHE (default /var/cache/appliance-test), each keyed by a hash
# of what went into it, so CI reuses them across runs and rebuilds only what changed:
#   base-<h1>       mmdebstrap minbase + systemd, dbus, python3-venv           (h1: suite + package list)
#   rootfs-<h1>-<h2> base + /opt/appliance venv holding the package's runtime dependencies
#                                                                             (h2: dependency list from PYPROJECT)
# The appliance package itself is not in the cache: the harness installs the checkout's wheel into a
# per-session copy. The mirror is whatever the host's apt sources name; this script names none.
set -euo pipefail

SUITE=bookworm
PACKAGES="systemd systemd-sysv libnss-systemd dbus python3 python3-venv procps"
# Bump when the steps below change in a way the hashes cannot see.
FORMAT=1

here=$(cd "$(dirname "$0")" && pwd)
pyproject=${1:-$here/../../pyproject.toml}
cache=${APPLIANCE_TEST_CACHE:-/var/cache/appliance-test}
sources=${APPLIANCE_TEST_APT_SOURCES:-/etc/apt/sources.list.d/debian.sources}

log() { echo "build-rootfs: $*" >&2; }

[ "$(id -u)" = 0 ] || { log "must run as root (mmdebstrap, systemd-nspawn)"; exit 1; }
for tool in mmdebstrap systemd-nspawn python3; do
    command -v "$tool" >/dev/null || { log "missing $tool"; exit 1; }
done
[ -r "$sources" ] || { log "no apt sources file at $sources (set APPLIANCE_TEST_APT_SOURCES)"; exit 1; }

# Runtime dependencies exactly as pyproject.toml declares them, one per line.
deps=$(python3 - "$pyproject" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    print("\n".join(tomllib.load(f)["project"]["dependencies"]))
EOF
)

h1=$(printf '%s\n' "$FORMAT" "$SUITE" "$PACKAGES" | sha256sum | cut -c1-12)
h2=$(printf '%s\n' "$FORMAT" "$deps" | sha256sum | cut -c1-12)
base=$cache/base-$h1
rootfs=$cache/rootfs-$h1-$h2

mkdir -p "$cache"
# One builder at a time per cache; a second CI job waits and then reuses the result.
exec 9>"$cache/.lock"
flock 9

nspawn() {
    local root=$1; shift
    systemd-nspawn --quiet --pipe --register=no --keep-unit --directory="$root" "$@"
}

if [ ! -d "$base" ]; then
    log "building $base (mmdebstrap $SUITE: $PACKAGES)"
    start=$(date +%s)
    rm -rf "$base.tmp"
    mmdebstrap --variant=minbase --include="${PACKAGES// /,}" \
        --customize-hook='chroot "$1" systemctl mask console-getty.service getty.target systemd-networkd.service systemd-resolved.service systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer' \
        --customize-hook='rm -f "$1"/etc/machine-id; touch "$1"/etc/machine-id' \
        "$SUITE" "$base.tmp" "$sources" >&2
    mv "$base.tmp" "$base"
    log "base built in $(( $(date +%s) - start ))s"
fi

if [ ! -d "$rootfs" ]; then
    log "building $rootfs (venv with the runtime dependencies)"
    start=$(date +%s)
    wheels=$(mktemp -d)
    trap 'rm -rf "$wheels"' EXIT
    # The host's pip (its index configuration and cache) fetches; the rootfs needs no network of its own.
    rm -rf "$rootfs.tmp"
    cp -a --reflink=auto "$base" "$rootfs.tmp"
    nspawn "$rootfs.tmp" /usr/bin/python3 -m venv /opt/appliance >&2
    printf '%s\n' "$deps" > "$wheels/requirements.txt"
    # The host's pip resolves environment markers for the host's Python, which may differ from the rootfs's
    # (redis wants async-timeout below 3.11.3 only): whatever the rootfs's pip still misses is fetched by
    # the host and the install retried.
    want=$wheels/requirements.txt
    for round in 1 2 3 4 5; do
        python3 -m pip wheel --quiet --wheel-dir="$wheels" --requirement="$want" 2>&1 | grep -v '^WARNING: Location' >&2 || true
        if nspawn "$rootfs.tmp" --bind-ro="$wheels":/tmp/wheels \
            /opt/appliance/bin/pip install --quiet --no-index --find-links=/tmp/wheels \
            --requirement=/tmp/wheels/requirements.txt >"$wheels/pip.log" 2>&1; then
            break
        fi
        missing=$(sed -n 's/.*No matching distribution found for \([^;[:space:]]*\).*/\1/p' "$wheels/pip.log" | head -n1)
        if [ -z "$missing" ] || [ "$round" = 5 ]; then
            cat "$wheels/pip.log" >&2
            log "installing the dependencies into the rootfs failed"
            exit 1
        fi
        log "the rootfs's Python also needs $missing"
        want=$wheels/missing.txt
        printf '%s\n' "$missing" > "$want"
    done
    mv "$rootfs.tmp" "$rootfs"
    log "dependencies installed in $(( $(date +%s) - start ))s"
fi

echo "$rootfs"
