"""The usage history under a real daemon: two days of real traffic (the daemon's wall clock
moved by libfaketime, so no day is waited for), a kill -9 before a write, a corrupt
database, a full disk. Whatever happens, `bwbpf history` shows per day and per quota
period what the ledger charged, which is what the receiver got."""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bwbpf import history
from tests.faults.common import SLICE, FaultEnv, faked_daemon, fill
from tests.helpers import stop_cleanly, wait_for

pytestmark = [pytest.mark.root, pytest.mark.faults]

PAYLOAD = 958  # 1,000 bytes on the wire


def history_doc(env: FaultEnv, *args: str) -> dict:
    out = env.topo.bwbpf("history", "-c", str(env.config), "--json", *args)
    return json.loads(out.stdout)


def normal_rows(doc: dict, name: str = SLICE) -> dict[str, int]:
    """{bucket or period start: normal bytes} of one slice."""
    for s in doc["slices"]:
        if s["name"] == name:
            return {r["start"]: r["normal_bytes"] for r in s["rows"]}
    return {}


def charged(env: FaultEnv) -> int | None:
    st = env.daemon_status()
    if st is None or SLICE not in st.slices:
        return None
    return int(st.slices[SLICE]["classes"]["normal"]["bytes"])


def wait_charged(env: FaultEnv, expected: int) -> None:
    wait_for(f"{SLICE} charged {expected}", lambda: charged(env) == expected, timeout=60)


def history_path(env: FaultEnv) -> Path:
    return env.state_dir / f"history-{env.topo.veth_a}.sqlite"


def test_two_days_with_a_kill_in_between_equal_the_ledger(env: FaultEnv, sleep_shim: Path) -> None:
    # Noon two days ago and noon yesterday (UTC): twelve hours from either midnight.
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    day1, day2 = today - timedelta(days=2), today - timedelta(days=1)
    offset = env.tmp / "faketime"
    offset.write_text(f"{int((day1 + timedelta(hours=12)).timestamp() - time.time()):+d}\n")
    # Daily periods at midnight UTC; the default write interval (5 minutes), which the
    # test never reaches: only a stop or a restart's catch-up writes.
    env.write_config(period="daily", tick="1s")

    d = faked_daemon(env, offset, sleep_shim)
    env.wait_counted(0)
    first = env.send(40, PAYLOAD)
    env.wait_counted(first)
    stop_cleanly(d)

    offset.write_text(f"{int((day2 + timedelta(hours=12)).timestamp() - time.time()):+d}\n")
    d = faked_daemon(env, offset, sleep_shim)
    wait_charged(env, 0)  # the new day's period, from zero
    second = env.send(25, PAYLOAD)
    env.wait_received(first + second)
    wait_charged(env, second)
    os.kill(d.pid, signal.SIGKILL)  # the ledger has day 2; the history does not yet
    d.wait(timeout=10)
    store = history.Store.open_readonly(str(history_path(env)), env.topo.veth_a)
    day2_start = int(day2.timestamp())
    assert not store.usage(history.DAY, day2_start, day2_start + 86400)
    store.close()

    d = faked_daemon(env, offset, sleep_shim)

    def caught_up() -> bool:
        store = history.Store.open_readonly(str(history_path(env)), env.topo.veth_a)
        try:
            rows = store.usage(history.DAY, day2_start, day2_start + 86400, [SLICE])
        finally:
            store.close()
        return [(r.dclass, r.bytes) for r in rows] == [(0, second)]

    # Written at start, before the first tick: what the ledger had and the history did not.
    wait_for("the catch-up", caught_up, timeout=60)
    assert "bytes the ledger had and the history did not" in env.daemon_log()
    third = env.send(15, PAYLOAD)
    env.wait_received(first + second + third)
    wait_charged(env, second + third)
    stop_cleanly(d)

    since, until = day1.date().isoformat(), today.date().isoformat()
    days = normal_rows(history_doc(env, "--days", "--since", since, "--until", until))
    assert days == {day1.isoformat(): first, day2.isoformat(): second + third}
    periods = normal_rows(history_doc(env, "--periods", "--since", since, "--until", until))
    assert periods == days
    assert env.received_wire() == first + second + third
    # The text table says the same, in its units.
    text = env.topo.bwbpf("history", "-c", str(env.config), "--since", since, "--until", until)
    assert day1.date().isoformat() in text.stdout and day2.date().isoformat() in text.stdout
    assert "Traceback" not in env.daemon_log()


def test_a_corrupt_history_is_set_aside_and_a_new_one_kept(env: FaultEnv) -> None:
    env.write_config(extra='[history]\nwrite_interval = "1s"')
    env.state_dir.mkdir(parents=True, exist_ok=True)
    junk = b"\x00bwbpf? no" * 500
    history_path(env).write_bytes(junk)
    d = env.start_daemon()
    st = env.wait_tick(d, 0)
    assert any("moved to" in p and "history" in p for p in st["problems"]), st["problems"]
    (aside,) = env.state_dir.glob(f"history-{env.topo.veth_a}.sqlite.corrupt-*")
    assert aside.read_bytes() == junk
    env.wait_counted(0)
    sent = env.send(20, PAYLOAD)
    env.wait_counted(sent)
    stop_cleanly(d)
    doc = history_doc(env, "--hours")
    assert sum(normal_rows(doc).values()) == sent


def test_a_full_disk_delays_the_history_and_loses_nothing(env: FaultEnv) -> None:
    small = env.tmp / "small"
    env.mount("-t", "tmpfs", "-o", "size=256k", "tmpfs", target=small)
    db = small / "history.sqlite"
    env.write_config(extra=f'[history]\nwrite_interval = "1s"\nfile = "{db}"')
    d = env.start_daemon()
    env.wait_counted(0)
    wait_for("the history database", db.exists)
    filler = fill(small)
    sent = 0
    for _ in range(6):  # enough writes to need more pages than are left
        sent += env.send(50, PAYLOAD)
        env.wait_counted(sent)
    wait_for(
        "the failed write",
        lambda: "disk is full; kept for the next write" in env.daemon_log(),
        timeout=30,
    )
    assert d.poll() is None
    filler.unlink()
    freed = time.time()
    env.wait_tick(d, freed + 1)
    st = env.wait_tick(d, freed + 2)
    assert not any("history" in p for p in st["problems"]), st["problems"]
    stop_cleanly(d)
    doc = history_doc(env, "--5min")
    assert sum(normal_rows(doc).values()) == sent
    assert "Traceback" not in env.daemon_log()


def test_a_counter_reset_and_a_removed_slice_keep_the_history_exact(env: FaultEnv) -> None:
    # Daily periods: no period boundary in the middle of the test but at midnight UTC.
    env.write_config(period="daily", extra='[history]\nwrite_interval = "1s"')
    d = env.start_daemon()
    env.wait_counted(0)
    first = env.send(30, PAYLOAD)
    env.wait_counted(first)
    stop_cleanly(d)
    # The counters made again from zero, with a reading far below the ledger's last one:
    # a restart of the counters, never a wrap that would charge 2^64 bytes.
    env.topo.bwbpf("down", "-c", str(env.config))
    assert not env.pin_dir.exists()
    started = time.time()
    d = env.start_daemon()
    env.wait_tick(d, started)  # its classifier attached again, on new counters
    second = env.send(10, PAYLOAD)
    env.wait_counted(first + second)  # the ledger: the period's usage goes on
    # A reload that removes the slice: what it sent stays in the history.
    other = SLICE_TEMPLATE_OTHER.format(src=env.topo.alt_src_ip)
    env.write_config(slices=other, period="daily", extra='[history]\nwrite_interval = "1s"')
    os.kill(d.pid, signal.SIGHUP)
    wait_for("the reload", lambda: "reloaded" in env.daemon_log(), timeout=60)
    env.wait_tick(d, time.time() + 1)
    stop_cleanly(d)
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    since = midnight.date().isoformat()
    days = normal_rows(history_doc(env, "--days", "--since", since))
    assert days == {midnight.isoformat(): first + second}
    assert normal_rows(history_doc(env, "--periods", "--since", since)) == days
    assert env.received_wire() == first + second
    assert "Traceback" not in env.daemon_log()


SLICE_TEMPLATE_OTHER = """
[[slice]]
name = "other"
id = 12
match = {{ src = ["{src}/32"] }}
"""
