#!/bin/bash
# The guest side of `make vm-test`. The image's bwbpf-vm-test.service (vm/build-image.sh)
# runs it at boot from the read-only shared repository, under systemd as PID 1: copy the
# repository, install it editable into the image's venv, run the bpf and integration tiers;
# install the Debian package vm/run.sh built (in the shared result directory's debs/) and
# run the systemd checks and the package's upgrade against it; and leave the exit code and
# the log in the shared result directory for vm/run.sh. systemd powers the machine off when
# this returns.
set -u
SRC=/mnt/repo
OUT=/mnt/out
WORK=/srv/bwbpf
VENV=/opt/bwbpf-venv
export HOME=/root LANG=C.UTF-8 PYTHONUNBUFFERED=1

# Under TCG software emulation Python is ~15x slower (`import pyroute2` ~3.4 s, one `bwbpf
# stat` ~4 s): the tests wait for the daemon's ticks rather than for fixed times, and the
# ceiling test picks a rate the emulated link can carry, so the whole bpf and integration
# tiers run here as on the host.
step() { printf 'vm-guest [%4.0f s]: %s\n' "$(cut -d' ' -f1 /proc/uptime)" "$*"; }

tests() {
    local rc=0 accel pytest_args
    accel=$(cat "$OUT/accel" 2>/dev/null || echo tcg)
    pytest_args=$(cat "$OUT/pytest-args" 2>/dev/null || true)
    step "kernel $(uname -r) ($accel), $(systemctl --version | head -n1), $(nproc) CPUs," \
        "$(awk '/MemTotal/ {printf "%d MB", $2 / 1024}' /proc/meminfo)"

    step "copying the repository to $WORK"
    mkdir -p "$WORK"
    tar -C "$SRC" --exclude=./.venv --exclude=./.git --exclude=__pycache__ \
        --exclude=./.pytest_cache --exclude=./.ruff_cache --exclude='*.egg-info' \
        --exclude=./build -cf - . | tar -C "$WORK" -xf - || return 1
    cd "$WORK" || return 1
    # The Makefile's venv is the image's (made with --system-site-packages, test extras in).
    ln -sfn "$VENV" .venv
    step "installing bwbpf (editable) into $VENV, offline"
    .venv/bin/pip install -q --no-deps --no-build-isolation -e . || return 1
    touch .venv/.done
    step "make host (scripts/setup-host.sh on a stock kernel: all should be in place)"
    # The image has PACKAGES; HOST_PACKAGES (make deb's tools) are the host's alone.
    BWBPF_NO_HOST_PACKAGES=1 make host || return 1

    # Under TCG the whole of both tiers (~20 min once) left too little of CI's time for the
    # service checks. These tests are about bwbpf's own logic (fds of its process, log
    # volume at 1,000 slices, the ledger across a counter reset, the node page, whose
    # browser half needs a chromium the image has not), which the host tiers
    # cover on every run; the guest keeps every test of what the stock kernel and systemd
    # do. With ARGS given, it runs what ARGS says.
    if [ "$accel" = tcg ] && [ -z "$pytest_args" ]; then
        pytest_args="--deselect tests/bpf/test_loader.py::test_fds_stay_flat_over_loads
            --deselect tests/integration/test_tick_logging.py::test_capped_slices_on_the_ramp_log_once
            --deselect tests/integration/test_restart.py::test_recreated_counters_count_from_zero
            --ignore tests/integration/test_node_page.py"
    fi
    step "pytest tests/bpf tests/integration $pytest_args"
    # shellcheck disable=SC2086 # ARGS from `make vm-test ARGS=...`, split like the Makefile's
    .venv/bin/python -m pytest -p no:cacheprovider --durations=10 tests/bpf tests/integration \
        $pytest_args || rc=1

    # The Debian package as `apt install` puts it on a host (offline: its Depends are in the
    # image), then the service checks against it, then its upgrade, removal and purge.
    # Copied out of the 9p share to where apt's unprivileged downloader can read them too.
    local debs=/srv/bwbpf-debs deb release="" upgrade=""
    mkdir -p "$debs"
    cp "$OUT"/debs/*.deb "$debs/" || { step "no Debian packages in $OUT/debs"; return 1; }
    for deb in "$debs"/bwbpf_*_all.deb; do
        case $deb in
        *+vmupgrade_all.deb) upgrade=$deb ;;
        *) release=$deb ;;
        esac
    done
    [ -n "$release" ] && [ -n "$upgrade" ] || { step "no release and upgrade package in $debs"; return 1; }
    step "apt-get install $(basename "$release") (offline)"
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$release" </dev/null; then
        step "tests/systemd/check_service.sh against the package"
        BWBPF=/usr/bin/bwbpf ALERTS=/usr/share/bwbpf/prometheus/alerts.yml \
            ./tests/systemd/check_service.sh || rc=1
        step "tests/systemd/check_upgrade.sh $(basename "$release") $(basename "$upgrade")"
        ./tests/systemd/check_upgrade.sh "$release" "$upgrade" || rc=1
    else
        step "apt-get install of the package failed: the service checks not run"
        rc=1
    fi
    return $rc
}

tests 2>&1 | tee "$OUT/guest.log"
rc=${PIPESTATUS[0]}
step "result: exit code $rc" | tee -a "$OUT/guest.log"
echo "$rc" >"$OUT/rc"
sync
# One line vm/run.sh also finds on the serial console if the shared directory failed.
echo "BWBPF-VM-RESULT rc=$rc"
exit 0
