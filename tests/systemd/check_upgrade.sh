#!/bin/bash
# The Debian package's life under a running service: `apt install` of OLD does not start it
# (as shipped the config names a guessed device and speed); `apt install` of NEW over the
# running service restarts it on NEW's code and classifier (another MainPID, NEW's
# `bwbpf --version`, another program tag) while traffic goes on, and the pinned counters,
# the ledger and the edited config carry over: usage equals the bytes sent, before, during
# and after the upgrade. `apt remove` stops the service and leaves the shaping, the pins,
# the config and the state; `apt purge` removes /etc/bwbpf and /var/lib/bwbpf. Last, the
# README's removal of what is left on the device (tc, rm) is done and checked.
#
# Usage: check_upgrade.sh OLD.deb NEW.deb, NEW a later version whose classifier differs in
# its bytes (make vm-test builds it with VERSION_SUFFIX and DEB_BPF_DEFINES). Run as root
# where systemd is PID 1 and apt needs no network (every Depends installed); the package is
# purged at the end. It makes a veth pair bwsv<random> (tests/systemd/lib.sh), removed with
# everything on it at exit. Environment: TIMEOUT (seconds for any one state, default 180: an
# upgrade's restart compiles the classifier, slow in an emulated VM).
# Exit 0: every check passed. Exit 1: a line "check_upgrade: FAIL: ..." says which did not.
set -euo pipefail

UNIT=bwbpf.service
CONFIG=/etc/bwbpf/bwbpf.toml
BWBPF=/usr/bin/bwbpf
TIMEOUT=${TIMEOUT:-180}
PACKETS=100
CHECK=check_upgrade
# shellcheck source=tests/systemd/lib.sh
. "$(dirname "$0")/lib.sh"
pick_device
TENANT_SRC=$NET.10
PINS=/sys/fs/bpf/bwbpf/$DEV
STOP=$(mktemp -u /tmp/check-upgrade-stop.XXXXXX)
COUNT=$(mktemp /tmp/check-upgrade-count.XXXXXX)
sender_pid=

[ $# = 2 ] || { echo "usage: $0 OLD.deb NEW.deb" >&2; exit 2; }
OLD_DEB=$(realpath "$1")
NEW_DEB=$(realpath "$2")

cleanup() {
    set +e
    touch "$STOP"
    [ -n "$sender_pid" ] && wait "$sender_pid" 2>/dev/null
    rm -f "$STOP" "$COUNT"
    systemctl stop "$UNIT" 2>/dev/null
    # What the README says to do once the package is gone; here also after a failure.
    tc qdisc del dev "$DEV" root 2>/dev/null
    rm -rf "$PINS"
    ip link del "$DEV" 2>/dev/null
    rm -f /var/lib/bwbpf/*"$DEV"*
}

apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" </dev/null
}

installed_version() { dpkg-query -W -f='${Status} ${Version}' bwbpf 2>/dev/null; }

# The tag (a hash of the instructions) of the classifier attached to DEV.
prog_tag() { tc filter show dev "$DEV" | sed -n 's/.*bwbpf_egress.* tag \([0-9a-f]*\).*/\1/p'; }

counters_map_id() { bpftool map show pinned "$PINS/counters" | sed -n 's/^\([0-9]*\):.*/\1/p'; }

write_config() {
    cat >"$CONFIG" <<EOF
# written by tests/systemd/check_upgrade.sh
[node]
interface = "$DEV"
tick = "1s"
state_dir = "/var/lib/bwbpf"

# A budget out of reach: nothing is capped, so nothing waits in a queue or is dropped, and
# every datagram sent is a packet counted.
[[slice]]
name = "tenant"
id = 9
match = { src = ["$TENANT_SRC/32"] }
normal = { limit = "10GB" }
EOF
}

# -- preconditions ----------------------------------------------------------------------
[ "$(id -u)" = 0 ] || fail "run as root"
[ -d /run/systemd/system ] || fail "systemd is not PID 1 here"
for deb in "$OLD_DEB" "$NEW_DEB"; do [ -f "$deb" ] || fail "$deb is missing"; done
old_version=$(dpkg-deb -f "$OLD_DEB" Version)
new_version=$(dpkg-deb -f "$NEW_DEB" Version)
dpkg --compare-versions "$new_version" gt "$old_version" ||
    fail "$NEW_DEB ($new_version) is not later than $OLD_DEB ($old_version)"
for tool in tc bpftool python3; do command -v "$tool" >/dev/null || fail "$tool is missing"; done
trap cleanup EXIT

# -- 1. install OLD: nothing starts ------------------------------------------------------
say "apt-get install $(basename "$OLD_DEB")"
apt_install "$OLD_DEB" >/dev/null || fail "apt-get install $OLD_DEB failed"
[ "$(installed_version)" = "install ok installed $old_version" ] ||
    fail "after installing $old_version dpkg says: $(installed_version)"
[ "$("$BWBPF" --version)" = "bwbpf, version $old_version" ] ||
    fail "$BWBPF --version says '$("$BWBPF" --version)', want $old_version"
[ "$(prop ActiveState)" = inactive ] || fail "the install started $UNIT: $(prop ActiveState)"
[ "$(systemctl is-enabled "$UNIT" 2>/dev/null)" = disabled ] ||
    fail "the install enabled $UNIT: $(systemctl is-enabled "$UNIT" 2>&1)"
[ -d /var/lib/bwbpf ] || fail "the package did not make /var/lib/bwbpf"
grep -qx /etc/bwbpf/bwbpf.toml "/var/lib/dpkg/info/bwbpf.conffiles" ||
    fail "/etc/bwbpf/bwbpf.toml is not a conffile"
say "ok: $old_version installed, $UNIT disabled and not started, the config a conffile"

# -- 2. the service on OLD, accounting ------------------------------------------------------
make_device "${TENANT_SRC##*.}"
write_config
config_sum=$(sha256sum "$CONFIG")
"$BWBPF" check -c "$CONFIG" >/dev/null || fail "bwbpf check rejects the test config"
systemctl enable --now "$UNIT" >/dev/null 2>&1 || fail "systemctl enable --now $UNIT failed"
is_active || fail "not active after start: $(prop ActiveState)/$(prop SubState)"
old_pid=$(prop MainPID)
old_tag=$(prog_tag)
map_id=$(counters_map_id)
if [ -z "$old_tag" ] || [ -z "$map_id" ]; then fail "no classifier or counters on $DEV"; fi
send "$TENANT_SRC"
wait_for "the daemon to account the tenant's first $PACKETS packets" settled tenant
batch=$(stat_get tenant.bytes)
per_packet=$((batch / PACKETS))
[ $((per_packet * PACKETS)) = "$batch" ] || fail "$PACKETS packets were $batch bytes"
period=$(stat_get tenant.period_start)
say "ok: $old_version runs as pid $old_pid (program tag $old_tag); $PACKETS packets = $batch bytes"

# -- 3. upgrade to NEW while traffic goes on ----------------------------------------------
# One datagram every 50 ms from before the upgrade begins until after it ends: some leave
# while the old daemon stops and the new one compiles, when only the pinned counters see them.
python3 -c '
import os, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
sent = 0
while not os.path.exists(sys.argv[3]):
    s.sendto(b"x" * 100, (sys.argv[2], 9))
    sent += 1
    time.sleep(0.05)
print(sent)
' "$TENANT_SRC" "$DST" "$STOP" >"$COUNT" &
sender_pid=$!
say "apt-get install $(basename "$NEW_DEB") over the running service, traffic going on"
started=$SECONDS
apt_rc=0
apt_install "$NEW_DEB" >/dev/null || apt_rc=$?
upgrade_s=$((SECONDS - started))
touch "$STOP"
wait "$sender_pid" || fail "the sender failed"
sender_pid=
during=$(cat "$COUNT")
[ "$apt_rc" = 0 ] || fail "apt-get install $NEW_DEB failed ($apt_rc)"
[ "$(installed_version)" = "install ok installed $new_version" ] ||
    fail "after the upgrade dpkg says: $(installed_version)"
wait_for "the service to run NEW's daemon" restarted_from "$old_pid"
new_pid=$(prop MainPID)
[ "$("$BWBPF" --version)" = "bwbpf, version $new_version" ] ||
    fail "$BWBPF --version says '$("$BWBPF" --version)', want $new_version"
grep -q "^ExecStart=/usr/bin/bwbpf " "/lib/systemd/system/$UNIT" || fail "the unit does not run /usr/bin/bwbpf"
new_tag=$(prog_tag)
if [ -z "$new_tag" ] || [ "$new_tag" = "$old_tag" ]; then
    fail "the classifier after the upgrade has tag '$new_tag', before '$old_tag': not NEW's"
fi
[ "$(counters_map_id)" = "$map_id" ] || fail "the counters map changed: $map_id -> $(counters_map_id)"
[ "$(sha256sum "$CONFIG")" = "$config_sum" ] || fail "the upgrade changed the edited $CONFIG"
say "ok: upgraded in ${upgrade_s} s: $new_version runs as pid $new_pid (tag $new_tag)," \
    "the same counters map ($map_id), the config kept; $during packets sent meanwhile"

send "$TENANT_SRC"
total=$((PACKETS + during + PACKETS))
wait_for "the new daemon to account every packet" settled tenant
used=$(stat_get tenant.bytes)
[ "$used" = $((total * per_packet)) ] ||
    fail "usage after the upgrade is $used bytes; $total packets of $per_packet bytes were sent"
[ "$(stat_get tenant.period_start)" = "$period" ] ||
    fail "the tenant's period started anew: $(stat_get tenant.period_start), was $period"
say "ok: usage $used bytes = $total packets x $per_packet, in the same period: none lost, none doubled"

# -- 4. remove: the service stops, the shaping and the state stay ---------------------------
apt-get remove -y -q bwbpf >/dev/null </dev/null || fail "apt-get remove bwbpf failed"
[ "$(prop ActiveState)" = inactive ] || fail "the service runs on after removal: $(prop ActiveState)"
[ ! -e "$BWBPF" ] || fail "$BWBPF is still there after removal"
tc qdisc show dev "$DEV" | grep -q "^qdisc htb 1: root" || fail "removal took the HTB tree away"
[ -n "$(prog_tag)" ] || fail "removal detached the classifier"
[ -e "$PINS/counters" ] || fail "removal took the pinned counters away"
[ -f "$CONFIG" ] || fail "removal took $CONFIG away"
[ -f "/var/lib/bwbpf/ledger-$DEV.json" ] || fail "removal took the ledger away"
say "ok: apt-get remove stopped the service; shaping, pins, config and ledger are left"

# -- 5. purge: config and state go ---------------------------------------------------------
apt-get purge -y -q bwbpf >/dev/null </dev/null || fail "apt-get purge bwbpf failed"
[ ! -e /etc/bwbpf ] || fail "purge left /etc/bwbpf: $(ls -A /etc/bwbpf)"
[ ! -e /var/lib/bwbpf ] || fail "purge left /var/lib/bwbpf: $(ls -A /var/lib/bwbpf)"
case $(installed_version) in
"" | "unknown ok not-installed"*) ;;
*) fail "after purge dpkg says: $(installed_version)" ;;
esac
tc qdisc show dev "$DEV" | grep -q "^qdisc htb 1: root" || fail "purge took the HTB tree away"
say "ok: apt-get purge removed /etc/bwbpf and /var/lib/bwbpf; the device keeps its shaping"

# -- 6. what is left, removed by hand as the README says ---------------------------------
tc qdisc del dev "$DEV" root
rm -r "$PINS"
[ -z "$(tc filter show dev "$DEV")" ] || fail "a filter is left on $DEV"
if tc qdisc show dev "$DEV" | grep -q htb; then fail "an HTB qdisc is left on $DEV"; fi
say "ok: tc qdisc del and rm -r $PINS leave nothing of bwbpf on $DEV"
say "PASS"
