#!/bin/bash
# Build the vm-test image once and cache it: Debian 12 as a real host runs it (main, updates
# and security suites, from this host's apt configuration), made by mmdebstrap, with the
# distribution's own kernel and the headers of that same kernel, bcc, the test tools and a
# venv with the Python test dependencies (the guest has no network). Cached under
# $BWBPF_VM_CACHE/<key>/ (default /var/cache/bwbpf-vm), <key> a hash of the sources, the
# kernel version they offer, the package lists and these scripts (vm/lib.sh): a second run
# only says it is cached. Needs root. Paths in the image tree are resolved as the image sees
# them (vm/imagefs.py), never through the host's filesystem.
#
# The result: rootfs.raw (ext4, made with mkfs.ext4 -d: no loop device, no mount), vmlinuz
# and initrd.img taken from it, and manifest.txt. vm/run.sh boots it.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

[ "$(id -u)" = 0 ] || die "building the image needs root (debootstrap, chroot)"
dir=$(image_dir)
[ -f "$dir/done" ] && { say "image cached in $dir"; exit 0; }

ensure_host_tools mmdebstrap:mmdebstrap mkfs.ext4:e2fsprogs unshare:util-linux

mkdir -p "$VM_CACHE"
exec 9>"$VM_CACHE/.lock"
flock 9 # one build at a time; another one may have built it meanwhile
[ -f "$dir/done" ] && { say "image cached in $dir"; exit 0; }

build=$(mktemp -d "$VM_CACHE/build.XXXXXX")
root=$build/root
cleanup() {
    # Every mount below is made in a private mount namespace (unshare) and dies with it; this
    # is only the last line of defence before removing the tree.
    local m
    for m in $(awk -v b="$build/" 'index($2, b) == 1 {print $2}' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    rm -rf "$build"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

sources=$(image_sources)
if [ -z "$sources" ] && [ -z "${BWBPF_VM_SOURCES:-}" ]; then
    say "no Debian $VM_SUITE suites in this host's apt lists: apt-get update"
    apt-get update -q >/dev/null || true
    sources=$(image_sources)
fi
[ -n "$sources" ] || die "no Debian $VM_SUITE source in this host's apt configuration" \
    "(/etc/apt/sources.list*) to build the image from; or set BWBPF_VM_SOURCES to a file of deb lines"
# The key was computed from these sources; another process may have changed them meanwhile.
[ "$dir" = "$(image_dir)" ] || die "the host's apt sources changed during the build: run it again"

started=$(date +%s)
pkgs=$(image_packages | paste -sd, -)
say "building the image $(basename "$dir") in $build (one-time; cached afterwards)"
say "step 1/5: mmdebstrap $VM_SUITE from:"
printf '%s\n' "$sources" | sed 's/^/vm-test:   /'
say "  with: ${pkgs//,/ }"
for attempt in 1 2; do # a second try: a mirror's hiccup should not fail CI
    rm -rf "$root"
    # apt resolves every package across all the suites at once: the newest kernel and the
    # headers of that same kernel, whichever suite carries them. No Recommends (as debootstrap).
    printf '%s\n' "$sources" | unshare --mount --propagation private \
        mmdebstrap --variant=minbase --include="$pkgs" --components=main \
        "$VM_SUITE" "$root" - >"$build/mmdebstrap.log" 2>&1 && break
    tail -n 30 "$build/mmdebstrap.log" 2>/dev/null || true
    [ "$attempt" = 1 ] || die "mmdebstrap failed twice"
    say "  mmdebstrap failed; once more"
done
say "  mmdebstrap done in $(($(date +%s) - started)) s"

# Run a command in the new root with /proc, /sys and /dev, in a private mount namespace so
# that nothing stays mounted whatever happens.
in_root() {
    unshare --mount --propagation private sh -ec '
        r=$1; shift
        mount -t proc proc "$r/proc"; mount -t sysfs sys "$r/sys"; mount --rbind /dev "$r/dev"
        exec chroot "$r" "$@"' sh "$root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        LANG=C.UTF-8 "$@"
}

t=$(date +%s)
say "step 2/5: Python wheels from the package registry for an offline venv in the image"
chroot "$root" mkdir -p /opt/bwbpf-wheels
wheels=$(imagefs path "$root" /opt/bwbpf-wheels)
pip_requirements >"$wheels/requirements.txt"
# Downloaded by the host's pip (its registry configuration), for the guest's CPython 3.11.
"$(host_pip_python)" -m pip download -q --disable-pip-version-check --dest "$wheels" --only-binary=:all: \
    --python-version 3.11 --implementation cp --abi cp311 \
    --platform manylinux_2_36_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_12_x86_64 --platform manylinux2010_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
    -r "$wheels/requirements.txt" 2>&1 | grep -v "^WARNING: Location" || true
ls "$wheels"/*.whl >/dev/null 2>&1 || die "no wheels downloaded"
say "step 3/5: venv /opt/bwbpf-venv (--system-site-packages: Debian's bcc) from $(ls "$wheels"/*.whl | wc -l) wheels"
in_root python3 -m venv --system-site-packages /opt/bwbpf-venv
in_root /opt/bwbpf-venv/bin/pip install -q --disable-pip-version-check --no-index \
    --find-links /opt/bwbpf-wheels -r /opt/bwbpf-wheels/requirements.txt
in_root /opt/bwbpf-venv/bin/python -c 'import bcc, pyroute2, pytest' ||
    die "the image's venv cannot import bcc, pyroute2 and pytest"
say "  wheels and venv done in $(($(date +%s) - t)) s"

say "step 4/5: configuring the guest (fstab, the runner unit, units that only cost boot time)"
# Every file goes in through imagefs and every link through chroot, so that a path is the
# image's own even where it crosses an absolute symlink (which, followed from the host,
# would write into the host's files).
put() { imagefs write "$root" "$1" "${2:-644}"; }
echo bwbpf-vm | put /etc/hostname
printf '127.0.0.1 localhost\n127.0.1.1 bwbpf-vm\n::1 localhost\n' | put /etc/hosts
# The disk is opened with snapshot=on: no fsck, nothing written back.
printf '/dev/vda / ext4 rw,noatime 0 0\n' | put /etc/fstab
in_root passwd -dq root
# pip in the guest (the editable install of the checkout) installs from the wheels, offline.
printf '[global]\nno-index = true\nfind-links = /opt/bwbpf-wheels\ndisable-pip-version-check = true\n' |
    put /etc/pip.conf
# The runner: mount the shared repository (9p) and the result directory, then run the
# repository's vm/guest-run.sh, which is read at every boot and so not part of the image.
chroot "$root" mkdir -p /usr/local/sbin /etc/systemd/system/multi-user.target.wants
put /usr/local/sbin/bwbpf-vm-boot 755 <<'EOF'
#!/bin/sh
# Started at boot by bwbpf-vm-test.service (made by vm/build-image.sh).
set -e
modprobe -a 9pnet_virtio 9p
mkdir -p /mnt/repo /mnt/out
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144,ro repo /mnt/repo
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out /mnt/out
exec /bin/bash /mnt/repo/vm/guest-run.sh
EOF
put /etc/systemd/system/bwbpf-vm-test.service <<'EOF'
[Unit]
Description=bwbpf vm-test: the repository's tests on this kernel, then power off
After=local-fs.target systemd-udevd.service systemd-modules-load.service dbus.service
Wants=dbus.service
# [Unit] options (in [Service] SuccessAction= is ignored): power off once it has run.
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/bwbpf-vm-boot
StandardOutput=tty
StandardError=tty
TTYPath=/dev/ttyS0
TimeoutStartSec=infinity

[Install]
WantedBy=multi-user.target
EOF
chroot "$root" ln -sfn /etc/systemd/system/bwbpf-vm-test.service \
    /etc/systemd/system/multi-user.target.wants/bwbpf-vm-test.service
# No network in the guest, no login: these would only compete for two emulated CPUs.
for unit in prometheus.service apt-daily.timer apt-daily-upgrade.timer man-db.timer \
    e2scrub_all.timer e2scrub_reap.service fstrim.timer systemd-timesyncd.service \
    serial-getty@ttyS0.service getty@tty1.service systemd-networkd-wait-online.service; do
    chroot "$root" ln -sfn /dev/null "/etc/systemd/system/$unit"
done
# The kernel to boot, with its initramfs and the headers bcc needs, as the image sees them.
release=$(imagefs kernel "$root") || die "the image is not usable; nothing was cached"
headers=$(chroot "$root" dpkg-query -W -f='${Version}' "linux-headers-$release" 2>/dev/null || echo "?")
say "  kernel $release, headers linux-headers-$release $headers"
archives=$(imagefs path "$root" /var/cache/apt/archives)
lists=$(imagefs path "$root" /var/lib/apt/lists)
rm -rf "${archives:?}"/*.deb "${lists:?}"/*

say "step 5/5: ext4 image from the tree (mkfs.ext4 -d)"
size_mb=$(($(du -sm "$root" | cut -f1) * 13 / 10 + 1024))
mkdir -p "$build/out"
cp "$(imagefs path "$root" "/boot/vmlinuz-$release")" "$build/out/vmlinuz"
cp "$(imagefs path "$root" "/boot/initrd.img-$release")" "$build/out/initrd.img"
mkfs.ext4 -q -F -L bwbpf-vm -d "$root" "$build/out/rootfs.raw" "${size_mb}M" >/dev/null
{
    echo "built $(date -u +%FT%TZ) from:"; printf '%s\n' "$sources" | sed 's/^/  /'
    echo "kernel $release (headers $headers)"
    echo "packages:"; image_packages | sed 's/^/  /'
    echo "wheels:"; (cd "$wheels" && ls *.whl | sed 's/^/  /')
} >"$build/out/manifest.txt"
touch "$build/out/done"
rm -rf "$dir"
mv "$build/out" "$dir"
# Keep the two newest images (another branch may use another key); remove the rest.
# (The cache's names are hex keys and build.XXXXXX: no spaces or newlines to split on.)
find "$VM_CACHE" -mindepth 1 -maxdepth 1 -type d ! -name 'build.*' -printf '%T@ %p\n' |
    sort -rn | tail -n +3 | cut -d' ' -f2- | xargs -r rm -rf
say "image built in $(($(date +%s) - started)) s: $dir (kernel $release, $(du -sh "$dir" | cut -f1))"
