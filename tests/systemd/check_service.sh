#!/bin/bash
# bwbpf.service under a real systemd: it starts and reports READY and STATUS, `systemctl
# reload` applies a changed config (and refuses a broken one), a daemon killed with SIGKILL
# is restarted and loses no usage, a hung daemon (SIGSTOP) is killed by the watchdog and
# restarted, its metrics are served and written to node_exporter's textfile directory, a
# Prometheus with the installed alert rules raises BwbpfSliceCapped for its capped slice,
# and `systemctl stop` ends it cleanly.
#
# Run as root where systemd is PID 1 and bwbpf is installed: from the Debian package (the
# VM test's way: BWBPF=/usr/bin/bwbpf ALERTS=/usr/share/bwbpf/prometheus/alerts.yml) or by
# `make install` (the defaults below). It makes a veth pair bwsv<random> (tests/systemd/lib.sh)
# and sends UDP out of it; it replaces
# /etc/bwbpf/bwbpf.toml for the duration and puts the original back, removes its device,
# shaping, state files, drop-in, metrics textfile and Prometheus (its own, on a random
# loopback port), and leaves the service stopped as before.
# Exit 0: every check passed. Exit 1: a line "check_service: FAIL: ..." says which did not.
#
# Environment: BWBPF (default /usr/local/bin/bwbpf), TIMEOUT (seconds to wait for any one
# state, default 120: bcc compiles slowly in an emulated VM), WATCHDOG_TEST_SEC (the short
# WatchdogSec for the hung-daemon check, default 10), ALERTS (the installed alert rules,
# default /usr/local/share/bwbpf/prometheus/alerts.yml).
set -euo pipefail

UNIT=bwbpf.service
CONFIG=/etc/bwbpf/bwbpf.toml
BACKUP=$CONFIG.check-service-backup
BWBPF=${BWBPF:-/usr/local/bin/bwbpf}
TIMEOUT=${TIMEOUT:-120}
WATCHDOG_TEST_SEC=${WATCHDOG_TEST_SEC:-10}
DROPIN_DIR=/run/systemd/system/$UNIT.d
DROPIN=$DROPIN_DIR/50-check-service-watchdog.conf
CHECK=check_service
# shellcheck source=tests/systemd/lib.sh
. "$(dirname "$0")/lib.sh"
pick_device
TENANT_SRC=$NET.10
ADDED_SRC=$NET.11
PACKETS=100
ALERTS=${ALERTS:-/usr/local/share/bwbpf/prometheus/alerts.yml}
METRICS_PORT=$((20000 + 0x${SUFFIX:2:4} % 20000))
PROM_PORT=$((METRICS_PORT + 1))
TEXTFILE_DIR=/var/lib/node_exporter/textfile_collector
TEXTFILE=$TEXTFILE_DIR/bwbpf-$DEV.prom
PROM_DIR=$(mktemp -d /tmp/check-service-prometheus.XXXXXX)
had_config=no
was_enabled=no
made_textfile_dir=no
prom_pid=

cleanup() {
    set +e
    if [ -n "$prom_pid" ]; then
        kill "$prom_pid" 2>/dev/null
        wait "$prom_pid" 2>/dev/null
    fi
    rm -rf "$PROM_DIR"
    systemctl stop "$UNIT" 2>/dev/null
    rm -f "$TEXTFILE"
    [ "$made_textfile_dir" = yes ] && rmdir "$TEXTFILE_DIR" /var/lib/node_exporter 2>/dev/null
    if [ -e "$DROPIN" ]; then
        rm -f "$DROPIN"
        rmdir "$DROPIN_DIR" 2>/dev/null
        systemctl daemon-reload
    fi
    [ -e "$CONFIG" ] && "$BWBPF" down -c "$CONFIG" >/dev/null 2>&1
    ip link del "$DEV" 2>/dev/null
    rm -f /var/lib/bwbpf/*"$DEV"*
    if [ "$had_config" = yes ]; then mv -f "$BACKUP" "$CONFIG"; else rm -f "$CONFIG"; fi
    [ "$was_enabled" = yes ] || systemctl disable "$UNIT" 2>/dev/null
    systemctl reset-failed "$UNIT" 2>/dev/null
}

write_config() {
    cat >"$CONFIG" <<EOF
# written by tests/systemd/check_service.sh
[node]
interface = "$DEV"
tick = "1s"
state_dir = "/var/lib/bwbpf"

[metrics]
listen = "127.0.0.1:$METRICS_PORT"
textfile = "$TEXTFILE"
textfile_interval = "1s"

# Capped by the first $PACKETS packets (14,200 bytes, past the 10 kB threshold).
[[slice]]
name = "tenant"
id = 8
match = { src = ["$TENANT_SRC/32"] }
normal = { limit = "20kB", threshold = 0.5 }
EOF
}

# metric NAME: the tenant's normal-class sample of NAME from stdin (exposition text), as a
# number ("1" and "1.0" alike print 1).
metric() {
    awk -v m="$1" '$1 ~ "^"m"[{]" && /slice="tenant"/ && /dclass="normal"/ {print $2 + 0}'
}

scraped() { curl -fsS "http://127.0.0.1:$METRICS_PORT/metrics"; }

# Prometheus (ours) lists BwbpfSliceCapped for the tenant as firing.
alert_firing() {
    local answer
    # Until Prometheus listens, curl fails and there is nothing to read.
    answer=$(curl -fsS "http://127.0.0.1:$PROM_PORT/api/v1/alerts" 2>/dev/null) || return 1
    printf '%s' "$answer" | python3 -c '
import json, sys
alerts = json.load(sys.stdin)["data"]["alerts"]
sys.exit(not any(
    a["labels"]["alertname"] == "BwbpfSliceCapped" and a["labels"].get("slice") == "tenant"
    and a["state"] == "firing" for a in alerts))
'
}

# -- preconditions ----------------------------------------------------------------------
[ "$(id -u)" = 0 ] || fail "run as root"
[ -d /run/systemd/system ] || fail "systemd is not PID 1 here"
[ -x "$BWBPF" ] || fail "$BWBPF is missing: install bwbpf (apt install ./bwbpf_*.deb, or make install)"
systemctl cat "$UNIT" >/dev/null 2>&1 || fail "$UNIT is not installed: install bwbpf"
command -v python3 >/dev/null || fail "python3 is missing"
for tool in curl prometheus promtool; do
    command -v "$tool" >/dev/null || fail "$tool is missing (Debian: apt-get install $tool)"
done
[ -f "$ALERTS" ] || fail "$ALERTS is missing: install bwbpf, or set ALERTS"

trap cleanup EXIT
if [ -e "$CONFIG" ]; then
    had_config=yes
    cp -p "$CONFIG" "$BACKUP"
fi
if systemctl is-enabled -q "$UNIT" 2>/dev/null; then was_enabled=yes; fi
# node_exporter's textfile directory must exist when the service starts (ReadWritePaths=-).
if [ ! -d "$TEXTFILE_DIR" ]; then
    mkdir -p "$TEXTFILE_DIR"
    made_textfile_dir=yes
fi

make_device "${TENANT_SRC##*.}" "${ADDED_SRC##*.}"
write_config
"$BWBPF" check -c "$CONFIG" >/dev/null || fail "bwbpf check rejects the test config"

# -- 1. start: READY, STATUS, privileges --------------------------------------------------
say "starting $UNIT on $DEV"
systemctl reset-failed "$UNIT" 2>/dev/null || true
systemctl enable "$UNIT" >/dev/null 2>&1
systemctl restart "$UNIT" || fail "systemctl restart $UNIT failed"
is_active || fail "not active after start: $(prop ActiveState)/$(prop SubState)"
status=$(prop StatusText)
case $status in
    *" slices, "*" capped"*) ;;
    *) fail "unexpected StatusText after READY: '$status'" ;;
esac
pid=$(prop MainPID)
cap_eff=$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status")
# Only CAP_NET_ADMIN (bit 12) and CAP_SYS_ADMIN (bit 21).
[ $((0x$cap_eff & ~0x201000)) = 0 ] || fail "daemon has capabilities beyond the unit's: $cap_eff"
grep -q '^NoNewPrivs:[[:space:]]*1' "/proc/$pid/status" || fail "NoNewPrivileges not in force"
say "ok: active, StatusText '$status', CapEff $cap_eff, pid $pid"

# -- 2. accounting ------------------------------------------------------------------------
send "$TENANT_SRC"
wait_for "the daemon to account the tenant's first $PACKETS packets" settled tenant
batch=$(stat_get tenant.bytes)
say "ok: $PACKETS packets accounted as $batch bytes"

# -- 3. reload: a new slice is applied; a broken config is refused ------------------------
cat >>"$CONFIG" <<EOF

[[slice]]
name = "added"
id = 42
match = { src = ["$ADDED_SRC/32"] }
EOF
systemctl reload "$UNIT" || fail "systemctl reload failed"
added_known() {
    [ -n "$(tc class show dev "$DEV" classid 1:402a)" ] &&
        [ "$(stat_get added.period_start)" != None ] &&
        [ "$(stat_get added.period_start)" != missing ]
}
wait_for "the reloaded config's slice 'added' (HTB class 1:402a, a period in the ledger)" added_known
[ "$(prop MainPID)" = "$pid" ] || fail "reload restarted the daemon instead of reloading it"
say "ok: reload applied slice 'added' without a restart"

good=$(cat "$CONFIG")
echo 'tick = "never"' >>"$CONFIG"
refused=yes
systemctl reload "$UNIT" 2>/dev/null && refused=no
printf '%s\n' "$good" >"$CONFIG"
[ "$refused" = yes ] || fail "systemctl reload accepted a broken config"
if ! is_active || [ "$(prop MainPID)" != "$pid" ]; then
    fail "a refused reload disturbed the daemon"
fi
say "ok: a broken config is refused by reload; the daemon runs on"

# -- 4. SIGKILL: restarted, nothing lost --------------------------------------------------
restarts=$(prop NRestarts)
kill -KILL "$pid"
# Sent while no daemon runs: only the pinned counters see these.
send "$TENANT_SRC"
wait_for "systemd to restart the killed daemon" restarted_from "$pid"
wait_for "the restarted daemon to account the packets" settled tenant
used=$(stat_get tenant.bytes)
[ "$used" = $((2 * batch)) ] || fail "usage after kill -9 is $used bytes, want $((2 * batch))"
[ "$(prop NRestarts)" = $((restarts + 1)) ] || fail "NRestarts did not go up by one"
pid=$(prop MainPID)
say "ok: SIGKILL: restarted as pid $pid, usage $used bytes = 2 x $batch, none lost"

# -- 5. watchdog: a hung daemon is killed and restarted -----------------------------------
mkdir -p "$DROPIN_DIR"
printf '[Service]\nWatchdogSec=%ss\n' "$WATCHDOG_TEST_SEC" >"$DROPIN"
systemctl daemon-reload
systemctl restart "$UNIT" || fail "restart with WatchdogSec=${WATCHDOG_TEST_SEC}s failed"
[ "$(prop WatchdogUSec)" = "${WATCHDOG_TEST_SEC}s" ] ||
    fail "the drop-in's WatchdogSec is not in force: $(prop WatchdogUSec)"
pid=$(prop MainPID)
since=$(date +%s)
kill -STOP "$pid"
say "stopped pid $pid; waiting for the ${WATCHDOG_TEST_SEC}s watchdog"
saw_watchdog=no
watchdog_restart() {
    [ "$(prop Result)" = watchdog ] && saw_watchdog=yes
    restarted_from "$pid"
}
wait_for "the watchdog to restart the hung daemon" watchdog_restart
if [ "$saw_watchdog" = no ] &&
    ! journalctl -u "$UNIT" --since "@$since" --no-pager | grep -q "result 'watchdog'"; then
    fail "the daemon was restarted, but not by the watchdog"
fi
waited=$(($(date +%s) - since))
wait_for "the daemon after the watchdog restart to account the packets" settled tenant
[ "$(stat_get tenant.bytes)" = $((2 * batch)) ] || fail "usage changed across the watchdog restart"
say "ok: watchdog killed the hung daemon after ~${waited}s and systemd restarted it"
rm -f "$DROPIN"
rmdir "$DROPIN_DIR" 2>/dev/null || true
systemctl daemon-reload

# -- 6. metrics and an alert: the operator's Prometheus -----------------------------------
tenant_capped() { [ "$(scraped | metric bwbpf_slice_capped)" = 1 ]; }
wait_for "the endpoint to show the tenant capped" tenant_capped
served=$(scraped | metric bwbpf_slice_bytes_total)
[ "$served" = "$(stat_get tenant.counter_bytes)" ] ||
    fail "served bwbpf_slice_bytes_total $served, stat says $(stat_get tenant.counter_bytes)"
[ -f "$TEXTFILE" ] || fail "no textfile $TEXTFILE (not writable in the sandbox?)"
written=$(metric bwbpf_slice_capped <"$TEXTFILE")
[ "$written" = 1 ] || fail "textfile $TEXTFILE says bwbpf_slice_capped '$written'"
say "ok: metrics on 127.0.0.1:$METRICS_PORT ($served bytes, capped) and in $TEXTFILE"

# The installed rules with BwbpfSliceCapped's "for: 1m" cut to 5 s: when a rule fires after
# its "for" is Prometheus's business, and `promtool test rules` checks it as shipped.
python3 -c '
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
for group in doc["groups"]:
    for rule in group["rules"]:
        if rule.get("alert") == "BwbpfSliceCapped":
            rule["for"] = "5s"
yaml.safe_dump(doc, open(sys.argv[2], "w"))
' "$ALERTS" "$PROM_DIR/alerts.yml" || fail "cannot read $ALERTS (python3-yaml?)"
cat >"$PROM_DIR/prometheus.yml" <<EOF
# Intervals shortened, so that the wait is short.
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - $PROM_DIR/alerts.yml
scrape_configs:
  - job_name: bwbpf
    static_configs:
      - targets: ["127.0.0.1:$METRICS_PORT"]
EOF
promtool check config "$PROM_DIR/prometheus.yml" >/dev/null || fail "promtool check config"
prometheus --config.file="$PROM_DIR/prometheus.yml" --storage.tsdb.path="$PROM_DIR/tsdb" \
    --web.listen-address="127.0.0.1:$PROM_PORT" >"$PROM_DIR/log" 2>&1 &
prom_pid=$!
since=$SECONDS
wait_for "Prometheus to fire BwbpfSliceCapped for the tenant" alert_firing
say "ok: Prometheus with the rules of $ALERTS fired BwbpfSliceCapped after $((SECONDS - since)) s"
kill "$prom_pid"
wait "$prom_pid" 2>/dev/null || true
prom_pid=

# -- 7. stop: SIGTERM saves the state and exits 0 -----------------------------------------
systemctl stop "$UNIT"
[ "$(prop Result)" = success ] || fail "stop: Result=$(prop Result), want success"
[ "$(prop ExecMainStatus)" = 0 ] || fail "stop: exit status $(prop ExecMainStatus), want 0"
say "ok: stopped cleanly (exit 0)"
say "PASS"
