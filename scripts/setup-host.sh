#!/bin/sh
# Install what bwbpf needs from Debian and make bcc find kernel headers. Idempotent: a
# second run changes nothing and says so. Run as root (make setup does).
set -eu

# prometheus: promtool checks the metrics and alert rules, and a real Prometheus raises them
# in a test (python3-yaml reads the shipped scrape config there); shellcheck and vagrant check
# tests/systemd/check_service.sh and vagrant/Vagrantfile (`vagrant validate`); faketime moves
# the daemon's wall clock alone in the clock-jump fault tests; strace holds one syscall of
# the daemon (a delay injected at it) in the upgrade test of a kill mid-migration.
PACKAGES="python3-bpfcc python3-yaml python3-venv bpftool iproute2 iperf3 kmod prometheus shellcheck vagrant faketime strace"
# For the host only, not the VM image: vm/lib.sh copies the PACKAGES line above alone into
# the image, and the offline guest's `make host` cannot fetch these, so failing to install
# them is a warning (the tests that need them skip, naming what is missing). matplotlib
# draws `bwbpf history --png/--svg` (its tests are unit tests); chromium renders the node
# page headless in its browser test; the rest build the Debian package (`make deb`:
# debian/control's Build-Depends and lintian; no fakeroot, it builds with
# Rules-Requires-Root: no). The vm-test guest, which has no network, sets
# BWBPF_NO_HOST_PACKAGES=1.
HOST_PACKAGES="python3-matplotlib chromium dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools lintian"
[ "${BWBPF_NO_HOST_PACKAGES:-}" = 1 ] && HOST_PACKAGES=""

# missing PACKAGE...: those of the packages not installed.
missing() {
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || printf ' %s' "$p"
    done
}

# install PACKAGE...: apt-get install, after an update of the package lists if it fails.
install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "$@" >/dev/null 2>&1 || {
        apt-get update -q >/dev/null &&
            apt-get install -y -q "$@" >/dev/null
    }
}

# shellcheck disable=SC2086 # the lists are words, split on purpose
need=$(missing $PACKAGES)
if [ -n "$need" ]; then
    echo "setup: installing Debian packages:$need"
    # shellcheck disable=SC2086
    install $need
fi
# shellcheck disable=SC2086
want=$(missing $HOST_PACKAGES)
if [ -n "$want" ]; then
    echo "setup: installing Debian packages for the host:$want"
    # shellcheck disable=SC2086
    install $want || echo "setup: warning: could not install$want; the tests that need them skip"
fi

# bcc compiles against /lib/modules/$(uname -r)/build. Prefer the running kernel's own
# headers; without them, tc programs need only UAPI structs, so Debian's generic headers
# work when linked where bcc looks (measured on kernel 6.18 with 6.1 headers;
# docs/conventions.md, rule 5).
release=$(uname -r)
build=/lib/modules/$release/build
if [ ! -e "$build/include" ]; then
    export DEBIAN_FRONTEND=noninteractive
    if apt-get install -y -q "linux-headers-$release" >/dev/null 2>&1; then
        echo "setup: installed linux-headers-$release"
    else
        dpkg-query -W -f='${Status}' linux-headers-amd64 2>/dev/null | grep -q "ok installed" ||
            apt-get install -y -q linux-headers-amd64 >/dev/null
        generic=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -n1)
        common=${generic%-amd64}-common
        mkdir -p "/lib/modules/$release"
        ln -sfn "$generic" "$build"
        ln -sfn "$common" "/lib/modules/$release/source"
        echo "setup: no headers for kernel $release; linked generic $(basename "$generic") as $build (tc programs use only UAPI structs)"
    fi
fi

# The BPF filesystem is where bwbpf pins its maps; a new machine may not have it mounted.
if ! mountpoint -q /sys/fs/bpf; then
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf
    echo "setup: mounted bpffs at /sys/fs/bpf"
fi
