# shellcheck shell=bash
# Shared by tests/systemd/check_service.sh and check_upgrade.sh (sourced, not run): waiting,
# the unit's properties, `bwbpf stat`'s numbers, a test device and traffic out of it.
# The sourcing script sets CHECK (its name in messages), UNIT, BWBPF, CONFIG, TIMEOUT and
# PACKETS, and calls pick_device and make_device before sending.

say() { echo "$CHECK: $*"; }

fail() {
    echo "$CHECK: FAIL: $*" >&2
    journalctl -u "$UNIT" -n 40 --no-pager >&2 || true
    exit 1
}

prop() { systemctl show -p "$1" --value "$UNIT"; }

# wait_for DESCRIPTION COMMAND...: poll COMMAND until it succeeds, or fail after TIMEOUT.
wait_for() {
    local what=$1 deadline=$((SECONDS + TIMEOUT))
    shift
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${TIMEOUT}s waiting for: $what"
        sleep 0.5
    done
}

# stat_get KEY: from `bwbpf stat --json`: daemon_pid, or SLICE.period_start, or
# SLICE.FIELD of the slice's normal class (bytes, counter_bytes); "missing" if absent.
stat_get() {
    "$BWBPF" stat --json -c "$CONFIG" | python3 -c '
import json, sys
doc, key = json.load(sys.stdin), sys.argv[1]
if key == "daemon_pid":
    print((doc.get("daemon") or {}).get("pid", 0))
    sys.exit()
name, field = key.split(".", 1)
for s in doc["slices"]:
    if s["name"] == name:
        print(s[field] if field == "period_start" else s["classes"]["normal"][field])
        break
else:
    print("missing")
' "$1"
}

# pick_device: names for a test device: DEV (bwsv<random>) and its peer ${DEV}p, the subnet
# NET (10.251.x) and DST, the address the traffic goes to. SUFFIX is the random part.
pick_device() {
    SUFFIX=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
    DEV=bwsv$SUFFIX
    NET=10.251.$((0x${SUFFIX:0:2} % 250 + 1))
    DST=$NET.2
}

# make_device HOST...: the veth pair, up, with NET.1 and NET.HOST for each HOST on DEV, and
# a fixed neighbour DST: no ARP, so the only IPv4 packets from those addresses are send's.
make_device() {
    local host
    ip link add "$DEV" type veth peer name "${DEV}p"
    ip link set "$DEV" up
    ip link set "${DEV}p" up
    for host in 1 "$@"; do ip addr add "$NET.$host/24" dev "$DEV"; done
    ip neigh replace "$DST" lladdr 02:00:00:00:00:02 dev "$DEV"
}

# send SRC [COUNT]: COUNT (default PACKETS) UDP datagrams of 100 bytes from SRC out of DEV.
send() {
    python3 -c '
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
for _ in range(int(sys.argv[3])):
    s.sendto(b"x" * 100, (sys.argv[2], 9))
' "$1" "$DST" "${2:-$PACKETS}"
}

is_active() { [ "$(prop ActiveState)" = active ] && [ "$(prop SubState)" = running ]; }

# A new daemon is up: a MainPID other than $1, active, and its status file written.
restarted_from() {
    local pid
    pid=$(prop MainPID)
    [ "$pid" != 0 ] && [ "$pid" != "$1" ] && is_active && [ "$(stat_get daemon_pid)" = "$pid" ]
}

# The daemon has accounted everything the kernel counted for SLICE.
settled() {
    local used counted
    used=$(stat_get "$1.bytes")
    counted=$(stat_get "$1.counter_bytes")
    [ "$used" != missing ] && [ "$used" -gt 0 ] && [ "$used" = "$counted" ]
}
