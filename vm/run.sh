#!/bin/bash
# `make vm-test`: the bpf and integration tiers and the systemd checks on a stock Debian 12
# kernel. Builds the image once (vm/build-image.sh, cached) and the Debian packages (make
# deb), boots the image with qemu (KVM when a probe boot shows it works here, else TCG
# software emulation), shares this repository read-only over 9p and the packages in the
# result directory, streams the serial console, and exits with the guest's result.
# Needs root. Environment: BWBPF_VM_ACCEL=auto|kvm|tcg, BWBPF_VM_TIMEOUT (s from boot to result, default 1800),
# BWBPF_VM_MEM (MB, 3072), BWBPF_VM_CPUS (2), BWBPF_VM_CACHE (/var/cache/bwbpf-vm);
# ARGS is passed to pytest in the guest, as by the Makefile's other test targets.
set -euo pipefail
# shellcheck source=vm/lib.sh
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] || die "make vm-test needs root (mmdebstrap, chroot; qemu reads the image)"
accel=${BWBPF_VM_ACCEL:-auto}
timeout_s=${BWBPF_VM_TIMEOUT:-1800}
mem_mb=${BWBPF_VM_MEM:-3072}
cpus=${BWBPF_VM_CPUS:-2}
started=$(date +%s)

ensure_host_tools qemu-system-x86_64:qemu-system-x86
bash "$VM_DIR/build-image.sh"
image=$(image_dir)
image_s=$(($(date +%s) - started))

work=$(mktemp -d /tmp/bwbpf-vm.XXXXXX)
qemu_pid=""
cleanup() {
    if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
        kill "$qemu_pid" 2>/dev/null || true
        wait "$qemu_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The guest installs the Debian package (as `make deb` builds it, lintian included) and
# upgrades it in place to a later version whose classifier differs in its bytes (a define
# the bpf tier also compiles with): tests/systemd/check_upgrade.sh. Built here, where
# Debian's build tools are; the guest has none, and no network.
t=$(date +%s)
say "building the Debian packages for the guest: the release and an upgrade"
make -s -C "$REPO" deb DEB_DIR="$work/debs" || die "make deb failed"
make -s -C "$REPO" deb DEB_DIR="$work/debs" VERSION_SUFFIX=+vmupgrade \
    DEB_BPF_DEFINES=BWBPF_CB_CLASSID LINTIAN=no || die "make deb VERSION_SUFFIX=+vmupgrade failed"
deb_s=$(($(date +%s) - t))
say "  $(cd "$work/debs" && echo *.deb) in $deb_s s"

# KVM only if a stock kernel really boots on it here: some hosts' /dev/kvm fails a stock
# kernel (qemu aborts on an MSR, or the guest hangs silently). The probe boots the image's
# kernel without a root disk and waits for its panic; the answer is kept per host kernel.
kvm_works() {
    [ -c /dev/kvm ] && [ -w /dev/kvm ] || return 1
    local memo
    memo="$VM_CACHE/kvm-probe.$(uname -r)"
    if [ ! -f "$memo" ]; then
        say "probing KVM: a 20 s boot of the stock kernel with -enable-kvm"
        timeout 20 qemu-system-x86_64 -accel kvm -cpu host -m 256 -smp 2 -display none \
            -monitor none -serial "file:$work/probe.log" -no-reboot -nic none \
            -kernel "$image/vmlinuz" -append "console=ttyS0 panic=-1 root=/dev/bwbpf-none" \
            >"$work/probe.err" 2>&1 || true
        if grep -q "Kernel panic" "$work/probe.log" 2>/dev/null; then
            echo yes >"$memo"
        else
            echo no >"$memo"
            say "  KVM cannot run a stock kernel here: $(tail -n1 "$work/probe.err" 2>/dev/null)"
        fi
    fi
    [ "$(cat "$memo")" = yes ]
}

boot() {
    local accel=$1 out=$work/$1 cpu_opts
    mkdir -p "$out/share/debs"
    cp "$work/debs/"*.deb "$out/share/debs/"
    echo "$accel" >"$out/share/accel"
    printf '%s\n' "${ARGS:-}" >"$out/share/pytest-args"
    if [ "$accel" = kvm ]; then
        cpu_opts=(-accel kvm -cpu host)
    else
        cpu_opts=(-accel "tcg,thread=multi" -cpu max)
    fi
    say "booting Debian's kernel $(sed -n 's/^kernel //p' "$image/manifest.txt") under $accel" \
        "($cpus vCPUs, $mem_mb MB, timeout $timeout_s s); serial console follows"
    local t=$SECONDS deadline=$((SECONDS + timeout_s)) result_at="" tail_pid
    : >"$out/serial.log"
    qemu-system-x86_64 -name bwbpf-vm-test \
        -machine q35 "${cpu_opts[@]}" -smp "$cpus" -m "$mem_mb" \
        -display none -monitor none -serial "file:$out/serial.log" -no-reboot -nic none \
        -device virtio-rng-pci \
        -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
        -append "root=/dev/vda rw console=ttyS0 panic=-1 loglevel=4 systemd.show_status=error mitigations=off" \
        -drive "file=$image/rootfs.raw,if=virtio,format=raw,snapshot=on" \
        -virtfs "local,path=$REPO,mount_tag=repo,security_model=none,readonly=on" \
        -virtfs "local,path=$out/share,mount_tag=out,security_model=none" \
        >"$out/qemu.log" 2>&1 &
    qemu_pid=$!
    tail -n +1 -F --pid="$qemu_pid" "$out/serial.log" 2>/dev/null &
    tail_pid=$!
    # The guest powers itself off after writing its result; stop it if it does not, or if
    # it takes longer than the timeout.
    local stop_at=""
    while kill -0 "$qemu_pid" 2>/dev/null; do
        if [ -n "$stop_at" ]; then
            [ $((SECONDS - stop_at)) -lt 10 ] || kill -KILL "$qemu_pid" 2>/dev/null || true
        elif [ -f "$out/share/rc" ]; then
            result_at=${result_at:-$SECONDS}
            if [ $((SECONDS - result_at)) -gt 30 ]; then
                say "the guest has not powered off 30 s after its result: stopping it"
                kill "$qemu_pid" 2>/dev/null || true
                stop_at=$SECONDS
            fi
        elif [ "$SECONDS" -gt "$deadline" ]; then
            say "timed out after $timeout_s s: stopping the guest"
            kill "$qemu_pid" 2>/dev/null || true
            stop_at=$SECONDS
        fi
        sleep 1
    done
    local qrc=0
    wait "$qemu_pid" || qrc=$?
    qemu_pid=""
    wait "$tail_pid" 2>/dev/null || true
    boot_s=$((SECONDS - t))
    cp "$out/serial.log" "$VM_CACHE/last-serial.log" 2>/dev/null || true
    [ "$qrc" = 0 ] || [ -f "$out/share/rc" ] || say "qemu exited with $qrc: $(tail -n3 "$out/qemu.log")"
    if [ -f "$out/share/rc" ]; then
        result=$(cat "$out/share/rc")
    else
        result=$(sed -n 's/.*BWBPF-VM-RESULT rc=\([0-9]*\).*/\1/p' "$out/serial.log" | tail -n1)
    fi
    [ -n "$result" ]
}

result=""
boot_s=0
case $accel in
auto) if kvm_works; then accel=kvm; else accel=tcg; fi ;;
kvm | tcg) ;;
*) die "BWBPF_VM_ACCEL=$accel: auto, kvm or tcg" ;;
esac
if ! boot "$accel" && [ "$accel" = kvm ]; then
    say "no result under KVM: once more under TCG"
    accel=tcg
    boot tcg || true
fi

total_s=$(($(date +%s) - started))
say "image ${image_s} s, packages ${deb_s} s, boot to result ${boot_s} s ($accel), total ${total_s} s;" \
    "serial log kept in $VM_CACHE/last-serial.log"
case $result in
0) say "PASS: the bpf and integration tiers and the systemd checks on Debian's kernel" ;;
"") die "FAIL: the guest left no result (see the serial log above)" ;;
*) die "FAIL: exit code $result in the guest" ;;
esac
