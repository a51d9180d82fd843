"""The usage history: buckets, the SQLite store, the recorder that follows the ledger, and
the document ``bwbpf history`` shows. Real SQLite files in tmp_path; the ledger is real."""

from __future__ import annotations

import json
import math
import os
import random
import sqlite3
import stat
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from bwbpf import config, daemon, history, historyview, periods
from bwbpf.cli import main
from bwbpf.errors import ConfigError, Error
from bwbpf.history import DAY, FIVE_MIN, HOUR, MONTH, YEAR, Store
from bwbpf.ledger import Ledger
from bwbpf.recorder import Recorder

UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
# 2026-12-01T00:00:00Z
T0 = 1796083200.0

CONFIG = """
[node]
interface = "lo"
node_cap = "100mbit"
tick = "1s"
state_dir = "{state_dir}"

[quota]
period = "daily"

[defaults]
normal = {{ limit = "10MB", threshold = 0.8, max_rate = "1mbit", min_rate = "8bit" }}
exempt = {{ limit = "20MB", threshold = 0.5, max_rate = "1gbit", min_rate = "8bit" }}

{history}

[[slice]]
name = "alice"
id = 5
match = {{ mark = 5 }}

[[slice]]
name = "bob"
id = 6
match = {{ mark = 6 }}
"""


def make_config(tmp_path: Path, history_section: str = "", extra: str = "") -> config.Config:
    path = tmp_path / "bwbpf.toml"
    text = CONFIG.format(state_dir=tmp_path / "state", history=history_section) + extra
    path.write_text(text)
    return config.load(path, check_interface=False)


@pytest.fixture
def cfg(tmp_path: Path) -> config.Config:
    return make_config(tmp_path, '[history]\nwrite_interval = "1m"')


class Traffic:
    """A ledger fed with growing counters, as the daemon's tick feeds it."""

    def __init__(self, cfg: config.Config) -> None:
        self.cfg = cfg
        self.ledger = Ledger()
        self.counters: dict[int, list[list[int]]] = {
            s.id: [[0, 0], [0, 0]] for s in cfg.all_slices()
        }

    def send(self, sid: int, dclass: int, nbytes: int) -> None:
        self.counters[sid][dclass][0] += nbytes
        self.counters[sid][dclass][1] += max(1, nbytes // 1000)

    def tick(self, now: float) -> None:
        raw = {
            sid: tuple((c[0], c[1]) for c in pair)  # type: ignore[misc]
            for sid, pair in self.counters.items()
        }
        self.ledger.update(
            now,
            daemon.readings(self.cfg, raw),  # type: ignore[arg-type]
            lambda _n, start: periods.current_period(self.cfg.period, now, start),
        )


def period_totals(store: Store) -> dict[tuple[str, int, float], int]:
    return {(p.name, p.dclass, p.start): p.bytes for p in store.periods(0, 2**40)}


def day_totals(store: Store) -> dict[tuple[str, int, int], int]:
    out: dict[tuple[str, int, int], int] = {}
    for u in store.usage(DAY, 0, 2**40):
        out[(u.name, u.dclass, u.start)] = out.get((u.name, u.dclass, u.start), 0) + u.bytes
    return out


# -- buckets -------------------------------------------------------------------------------


def test_bucket_starts_in_utc() -> None:
    t = datetime(2026, 12, 3, 17, 42, 11, tzinfo=UTC).timestamp()
    five, hour, day, month, year = history.bucket_starts(t, UTC)
    assert datetime.fromtimestamp(five, UTC) == datetime(2026, 12, 3, 17, 40, tzinfo=UTC)
    assert datetime.fromtimestamp(hour, UTC) == datetime(2026, 12, 3, 17, tzinfo=UTC)
    assert datetime.fromtimestamp(day, UTC) == datetime(2026, 12, 3, tzinfo=UTC)
    assert datetime.fromtimestamp(month, UTC) == datetime(2026, 12, 1, tzinfo=UTC)
    assert datetime.fromtimestamp(year, UTC) == datetime(2026, 1, 1, tzinfo=UTC)


def test_days_follow_local_midnight_across_dst() -> None:
    # 2026-03-29 in Berlin has 23 hours, 2026-10-25 has 25.
    spring = history.bucket_starts(datetime(2026, 3, 29, 12, tzinfo=BERLIN).timestamp(), BERLIN)
    assert history.next_start(DAY, spring[DAY], BERLIN) - spring[DAY] == 23 * 3600
    autumn = history.bucket_starts(datetime(2026, 10, 25, 12, tzinfo=BERLIN).timestamp(), BERLIN)
    assert history.next_start(DAY, autumn[DAY], BERLIN) - autumn[DAY] == 25 * 3600
    # Local hours during the repeated hour are distinct buckets.
    first = datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN, fold=0).timestamp()
    second = datetime(2026, 10, 25, 2, 30, tzinfo=BERLIN, fold=1).timestamp()
    assert second - first == 3600
    assert history.bucket_starts(first, BERLIN)[HOUR] != history.bucket_starts(second, BERLIN)[HOUR]


def test_next_start_walks_months_and_years() -> None:
    dec = history.bucket_starts(datetime(2026, 12, 15, tzinfo=UTC).timestamp(), UTC)
    assert datetime.fromtimestamp(history.next_start(MONTH, dec[MONTH], UTC), UTC) == datetime(
        2027, 1, 1, tzinfo=UTC
    )
    assert datetime.fromtimestamp(history.next_start(YEAR, dec[YEAR], UTC), UTC) == datetime(
        2027, 1, 1, tzinfo=UTC
    )
    assert len(list(history.iter_starts(FIVE_MIN, int(T0), int(T0) + 3600, UTC))) == 12


def test_keep_after_is_the_oldest_bucket_kept() -> None:
    now = datetime(2026, 12, 3, 17, 42, tzinfo=UTC).timestamp()
    # 48 hours of 5-minute rows: the oldest kept starts 48 h minus one row before this one.
    first = history.keep_after(FIVE_MIN, 48, now, UTC)
    assert first is not None
    assert history.bucket_starts(now, UTC)[FIVE_MIN] - first == 48 * 3600 - 300
    month = history.keep_after(MONTH, 25, now, UTC)
    assert month is not None
    assert datetime.fromtimestamp(month, UTC) == datetime(2024, 12, 1, tzinfo=UTC)
    assert history.keep_after(YEAR, -1, now, UTC) is None


# -- the store -----------------------------------------------------------------------------


def test_store_adds_to_every_resolution_and_reopens(tmp_path: Path) -> None:
    path = str(tmp_path / "h.sqlite")
    store, problem = Store.open(path, "eth0")
    assert problem is None
    keep = (48, 4, 62, 25, -1)
    at = T0 + 3600 + 60
    store.write([history.Added("alice", 0, at, 1000, 2)], [], UTC, keep)
    store.write([history.Added("alice", 0, at + 10, 500, 1)], [], UTC, keep)
    store.close()
    store = Store.open_readonly(path, "eth0")
    for res in range(5):
        rows = store.usage(res, 0, 2**40)
        assert [(r.name, r.bytes, r.packets) for r in rows] == [("alice", 1500, 3)]
        assert rows[0].start == history.bucket_starts(at, UTC)[res]
    store.close()


class _SqlSeen:
    """A connection that remembers the text of each statement it was asked to run."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.texts: set[str] = set()

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        self.texts.add(sql)
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_new_slice_ids_are_looked_up_by_one_statement_whatever_their_number(
    tmp_path: Path,
) -> None:
    # sqlite3 caches a prepared statement per text: one per number of new names grew it.
    store, _ = Store.open(str(tmp_path / "h.sqlite"), "eth0")
    seen = _SqlSeen(store._conn)
    store._conn = seen  # type: ignore[assignment]
    keep = (48, 4, 62, 25, -1)
    names = [f"s{i}" for i in range(1, 509)]
    first = 0
    for n in (1, 2, 5, 500):
        batch = names[first : first + n]
        first += n
        store.write([history.Added(x, 0, T0, 7, 1) for x in batch], [], UTC, keep)
    assert len([t for t in seen.texts if t.startswith("SELECT name, id")]) == 1
    assert sorted(u.name for u in store.usage(DAY, 0, 2**40)) == sorted(names)


def test_a_write_that_fails_writes_nothing_and_the_next_one_is_whole(tmp_path: Path) -> None:
    store, _ = Store.open(str(tmp_path / "h.sqlite"), "eth0")
    keep = (48, 4, 62, 25, -1)
    bad = history.PeriodRow("carol", 0, math.nan, T0, 1, 1)  # NOT NULL refuses NaN
    with pytest.raises(history.WriteError, match="cannot write: NOT NULL constraint failed"):
        store.write([history.Added("carol", 0, T0, 10, 1)], [bad], UTC, keep)
    assert store.names() == [] and store.usage(DAY, 0, 2**40) == []
    store.write(
        [history.Added("dave", 0, T0, 5, 1), history.Added("carol", 0, T0, 10, 1)], [], UTC, keep
    )
    assert [(u.name, u.bytes) for u in store.usage(DAY, 0, 2**40)] == [("carol", 10), ("dave", 5)]


def test_a_resolution_kept_for_zero_units_gets_no_rows(tmp_path: Path) -> None:
    store, _ = Store.open(str(tmp_path / "h.sqlite"), "eth0")
    store.write([history.Added("alice", 0, T0, 1000, 2)], [], UTC, (0, 4, 62, 25, 0))
    assert store.usage(FIVE_MIN, 0, 2**40) == []
    assert store.usage(YEAR, 0, 2**40) == []
    assert len(store.usage(DAY, 0, 2**40)) == 1


def test_prune_deletes_rows_past_their_retention(tmp_path: Path) -> None:
    store, _ = Store.open(str(tmp_path / "h.sqlite"), "eth0")
    keep = (1, 1, 2, 25, -1)
    old = history.Added("alice", 0, T0, 1000, 2)
    new = history.Added("alice", 0, T0 + 3 * 86400, 10, 1)
    store.write([old, new], [history.PeriodRow("alice", 0, T0, T0 + 86400, 1000, 2)], UTC, keep)
    store.prune(T0 + 3 * 86400 + 60, UTC, keep)
    assert [r.bytes for r in store.usage(FIVE_MIN, 0, 2**40)] == [10]
    assert [r.bytes for r in store.usage(DAY, 0, 2**40)] == [10]
    assert [r.bytes for r in store.usage(YEAR, 0, 2**40)] == [1010]
    # Periods go with the months: this one is kept.
    assert len(store.periods(0, 2**40)) == 1


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\x00\xff" * 3000, "file is not a database"),
        (b"SQLite format 3\x00" + b"\x13" * 4000, "file is not a database"),
    ],
)
def test_a_corrupt_file_is_moved_aside(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "h.sqlite"
    path.write_bytes(content)
    store, problem = Store.open(str(path), "eth0", now=T0)
    assert problem is not None and why in problem and "moved to" in problem
    aside = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name]
    assert len(aside) == 1 and aside[0].read_bytes() == content
    store.write([history.Added("alice", 0, T0, 1, 1)], [], UTC, (1, 1, 1, 1, 1))
    store.close()


def test_a_foreign_database_is_moved_aside_not_changed(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.execute("INSERT INTO invoices VALUES (42)")
    conn.commit()
    conn.close()
    _, problem = Store.open(str(path), "eth0", now=T0)
    assert problem is not None and "not a bwbpf history database" in problem
    (aside,) = [p for p in tmp_path.iterdir() if ".corrupt-" in p.name and "-wal" not in p.name]
    assert sqlite3.connect(aside).execute("SELECT id FROM invoices").fetchall() == [(42,)]


def test_another_interfaces_history_is_moved_aside(tmp_path: Path) -> None:
    path = str(tmp_path / "h.sqlite")
    Store.open(path, "eth1")[0].close()
    _, problem = Store.open(path, "eth0")
    assert problem is not None and "interface eth1, not eth0" in problem


def test_a_directory_in_the_way_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    path.mkdir()
    with pytest.raises(Error, match=r"h\.sqlite: is a directory, not a database bwbpf can own$"):
        Store.open(str(path), "eth0")
    assert path.is_dir()  # not moved: bwbpf did not make it


def test_reading_a_missing_or_foreign_file_is_one_error(tmp_path: Path) -> None:
    with pytest.raises(Error, match="no such file"):
        Store.open_readonly(str(tmp_path / "none.sqlite"), "eth0")
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"\x01" * 5000)
    with pytest.raises(Error, match=r"history .*junk.sqlite: file is not a database"):
        Store.open_readonly(str(junk), "eth0")
    # Reading never moves anything aside.
    assert junk.exists()


# -- the recorder --------------------------------------------------------------------------


def run_days(
    cfg: config.Config, traffic: Traffic, rec: Recorder, t: float, days: float, seed: int
) -> float:
    """Random traffic every 10 minutes for ``days``; returns the time reached."""
    rng = random.Random(seed)
    end = t + days * 86400
    while t < end:
        t += 600
        for s in cfg.all_slices():
            for d in (0, 1):
                if rng.random() < 0.4:
                    traffic.send(s.id, d, rng.randrange(1, 5_000_000))
        traffic.tick(t)
        rec.observe(traffic.ledger, traffic.ledger.changed, t)
    return t


def ledger_periods(ledger_log: dict, traffic: Traffic) -> None:
    for name, r in traffic.ledger.records().items():
        for d, c in enumerate(r.classes):
            ledger_log[(name, d, r.period_start)] = c.used_bytes


def test_history_equals_the_ledger_for_every_period_and_day(cfg: config.Config) -> None:
    traffic = Traffic(cfg)
    rec = Recorder(cfg, T0)
    rec.catch_up(traffic.ledger, T0)
    seen: dict = {}
    t = T0
    rng = random.Random(1)
    for _ in range(3 * 144):  # three days of 10-minute ticks
        t += 600
        for s in cfg.all_slices():
            for d in (0, 1):
                if rng.random() < 0.4:
                    traffic.send(s.id, d, rng.randrange(1, 5_000_000))
        traffic.tick(t)
        rec.observe(traffic.ledger, traffic.ledger.changed, t)
        ledger_periods(seen, traffic)
    rec.close(t)
    store = Store.open_readonly(cfg.history_path, "lo")
    held = period_totals(store)
    assert {k: v for k, v in held.items() if v} == {k: v for k, v in seen.items() if v}
    # The period is daily at midnight UTC: each day's rows are that period's usage.
    days = day_totals(store)
    assert {(n, d, int(s)): b for (n, d, s), b in seen.items() if b} == days
    assert len({s for (_, _, s) in days}) == 3


def test_a_crash_before_a_write_loses_nothing_and_doubles_nothing(cfg: config.Config) -> None:
    traffic = Traffic(cfg)
    rec = Recorder(cfg, T0)
    rec.catch_up(traffic.ledger, T0)
    t = run_days(cfg, traffic, rec, T0, 0.5, seed=2)
    rec.write(t)
    t = run_days(cfg, traffic, rec, t, 0.05, seed=3)
    t += 10
    traffic.send(5, 1, 12345)
    traffic.tick(t)
    rec.observe(traffic.ledger, traffic.ledger.changed, t)  # observed, not written ...
    assert rec._touched_list
    # ... then kill -9.
    rec.store.close()  # type: ignore[union-attr]
    # The next daemon loads the ledger the state file kept and catches up, twice over.
    for _ in range(2):
        again = Recorder(cfg, t + 5)
        again.catch_up(traffic.ledger, t + 5)
        again.close(t + 5)
    store = Store.open_readonly(cfg.history_path, "lo")
    expected: dict = {}
    ledger_periods(expected, traffic)
    assert {k: v for k, v in period_totals(store).items() if v} == {
        k: v for k, v in expected.items() if v
    }
    assert sum(u.bytes for u in store.usage(YEAR, 0, 2**40)) == sum(expected.values())


def test_a_crash_over_midnight_puts_the_lost_bytes_in_the_old_day(cfg: config.Config) -> None:
    traffic = Traffic(cfg)
    rec = Recorder(cfg, T0)
    rec.catch_up(traffic.ledger, T0)
    traffic.tick(T0 + 86000)
    rec.observe(traffic.ledger, traffic.ledger.changed, T0 + 86000)
    rec.write(T0 + 86000)
    traffic.send(5, 0, 7777)
    traffic.tick(T0 + 86390)  # alice's 7777 bytes are in the ledger (state saved) ...
    rec.store.close()  # type: ignore[union-attr]  # ... and the daemon dies before writing
    again = Recorder(cfg, T0 + 90000)
    again.catch_up(traffic.ledger, T0 + 90000)  # restarted the next day
    traffic.tick(T0 + 90000)
    again.observe(traffic.ledger, traffic.ledger.changed, T0 + 90000)
    again.close(T0 + 90000)
    days = day_totals(Store.open_readonly(cfg.history_path, "lo"))
    assert days == {("alice", 0, int(T0)): 7777}


def test_a_ledger_that_lost_its_state_adds_nothing_already_held(cfg: config.Config) -> None:
    traffic = Traffic(cfg)
    rec = Recorder(cfg, T0)
    rec.catch_up(traffic.ledger, T0)
    traffic.tick(T0 + 10)
    traffic.send(5, 0, 5000)
    traffic.tick(T0 + 20)
    rec.observe(traffic.ledger, traffic.ledger.changed, T0 + 20)
    rec.close(T0 + 20)
    # A new ledger (the state file was set aside) starts from zero in the same period.
    fresh = Traffic(cfg)
    fresh.counters = traffic.counters
    again = Recorder(cfg, T0 + 30)
    again.catch_up(fresh.ledger, T0 + 30)
    fresh.tick(T0 + 30)  # the first reading charges nothing
    fresh.send(5, 0, 300)
    fresh.tick(T0 + 40)
    again.observe(fresh.ledger, fresh.ledger.changed, T0 + 40)
    again.close(T0 + 40)
    store = Store.open_readonly(cfg.history_path, "lo")
    assert sum(u.bytes for u in store.usage(DAY, 0, 2**40)) == 5300
    # The period row follows the ledger.
    assert period_totals(store)[("alice", 0, T0)] == 300


def test_a_failed_write_is_kept_and_written_later(
    cfg: config.Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    traffic = Traffic(cfg)
    rec = Recorder(cfg, T0)
    rec.catch_up(traffic.ledger, T0)
    real = Store.write
    calls = {"n": 0}

    def full(self: Store, *args: object) -> None:
        calls["n"] += 1
        raise history.WriteError(f"history {self.path}: cannot write: database or disk is full")

    monkeypatch.setattr(Store, "write", full)
    t = T0
    total = 0
    for _ in range(20):  # 10-minute ticks: every one a new bucket, every write failing
        t += 600
        traffic.send(5, 0, 1000)
        total += 1000
        traffic.tick(t)
        try:
            rec.observe(traffic.ledger, traffic.ledger.changed, t)
        except Error as exc:
            assert "disk is full; kept for the next write" in str(exc)
    assert calls["n"] >= 20
    monkeypatch.setattr(Store, "write", real)
    rec.close(t)
    store = Store.open_readonly(cfg.history_path, "lo")
    five = store.usage(FIVE_MIN, 0, 2**40)
    # Each tick's bytes in its own 5-minute row, though written an hour later.
    assert sum(u.bytes for u in five) == total - 1000  # the first tick set the baseline
    assert len(five) == 19


def test_a_database_broken_under_the_daemon_is_replaced(
    cfg: config.Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    traffic = Traffic(cfg)
    rec = Recorder(cfg, T0)
    rec.catch_up(traffic.ledger, T0)
    traffic.tick(T0 + 10)
    traffic.send(5, 0, 4000)
    traffic.tick(T0 + 20)
    rec.observe(traffic.ledger, traffic.ledger.changed, T0 + 20)
    rec.write(T0 + 20)
    real = Store.write

    def broken(self: Store, *args: object) -> None:
        # The disk returned garbage: what SQLite then says is SQLITE_CORRUPT.
        with open(self.path, "r+b") as f:
            f.write(b"\xff" * 8192)
        monkeypatch.setattr(Store, "write", real)
        raise history.WriteError(f"history {self.path}: malformed", corrupt=True)

    monkeypatch.setattr(Store, "write", broken)
    traffic.send(5, 0, 1000)
    traffic.tick(T0 + 30)
    rec.observe(traffic.ledger, traffic.ledger.changed, T0 + 30)
    rec.close(T0 + 30)
    assert rec.problem is not None and "moved to" in rec.problem
    store = Store.open_readonly(cfg.history_path, "lo")
    # The new database has the ledger's period and what waited.
    assert period_totals(store)[("alice", 0, T0)] == 5000
    assert sum(u.bytes for u in store.usage(DAY, 0, 2**40)) == 1000


def test_a_reload_follows_new_and_removed_slices(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    traffic = Traffic(cfg)
    rec = Recorder(cfg, T0)
    rec.catch_up(traffic.ledger, T0)
    traffic.tick(T0 + 10)
    traffic.send(5, 0, 100)
    traffic.send(6, 0, 200)
    traffic.tick(T0 + 20)
    rec.observe(traffic.ledger, traffic.ledger.changed, T0 + 20)
    new = make_config(tmp_path, extra='[[slice]]\nname = "carol"\nid = 7\nmatch = { mark = 7 }\n')
    new = config.load(tmp_path / "bwbpf.toml", check_interface=False)
    rec.adopt(new, traffic.ledger, T0 + 25)
    traffic.cfg = new
    traffic.counters[7] = [[0, 0], [0, 0]]
    traffic.tick(T0 + 30)
    traffic.send(7, 1, 300)
    traffic.send(5, 0, 1)
    traffic.tick(T0 + 40)
    rec.observe(traffic.ledger, traffic.ledger.changed, T0 + 40)
    rec.close(T0 + 40)
    store = Store.open_readonly(cfg.history_path, "lo")
    assert day_totals(store) == {
        ("alice", 0, int(T0)): 101,
        ("bob", 0, int(T0)): 200,
        ("carol", 1, int(T0)): 300,
    }


# -- the document and its renderings -------------------------------------------------------


def filled_store(cfg: config.Config) -> None:
    store, _ = Store.open(cfg.history_path, "lo")
    keep = cfg.history.keep()
    store.write(
        [
            history.Added("alice", 0, T0 + 100, 3_000_000, 3000),
            history.Added("alice", 1, T0 + 100, 1_000_000, 1000),
            history.Added("alice", 0, T0 + 86400 + 100, 500, 5),
            history.Added("bob", 0, T0 + 200, 9_000_000, 9000),
            history.Added("gone", 0, T0 + 200, 7, 1),
        ],
        [
            history.PeriodRow("alice", 0, T0, T0 + 86400, 3_000_000, 3000),
            history.PeriodRow("alice", 1, T0, T0 + 86400, 1_000_000, 1000),
            history.PeriodRow("alice", 0, T0 + 86400, T0 + 2 * 86400, 500, 5),
            history.PeriodRow("bob", 0, T0, T0 + 86400, 9_000_000, 9000),
        ],
        UTC,
        keep,
    )
    store.close()


def test_document_rows_totals_and_current_period(cfg: config.Config) -> None:
    filled_store(cfg)
    store = Store.open_readonly(cfg.history_path, "lo")
    doc = historyview.document(store, cfg, "days", now=T0 + 2 * 86400 - 1)
    assert [s["name"] for s in doc["slices"]] == ["alice", "bob", "gone"]
    alice = doc["slices"][0]
    assert [r["start"] for r in alice["rows"]] == [
        "2026-12-01T00:00:00+00:00",
        "2026-12-02T00:00:00+00:00",
    ]
    assert alice["rows"][0]["total_bytes"] == 4_000_000
    assert alice["total"] == {
        "normal_bytes": 3_000_500,
        "exempt_bytes": 1_000_000,
        "total_bytes": 4_000_500,
        "normal_packets": 3005,
        "exempt_packets": 1000,
        "packets": 4005,
    }
    period = alice["period"]
    assert period["start_epoch"] == T0 + 86400
    assert period["normal"] == {
        "bytes": 500,
        "limit_bytes": 10_000_000,
        "threshold_bytes": 8_000_000,
    }
    assert doc["slices"][2]["period"] is None  # no longer configured
    json.dumps(doc)  # plain data


def test_top_ranks_by_total_bytes(cfg: config.Config) -> None:
    filled_store(cfg)
    store = Store.open_readonly(cfg.history_path, "lo")
    doc = historyview.document(store, cfg, "days", now=T0 + 2 * 86400, top=2)
    assert [(t["rank"], t["name"]) for t in doc["top"]] == [(1, "bob"), (2, "alice")]
    text = historyview.render_text(doc)
    assert "bob" in text and "gone" not in text


def test_top_is_ranked_by_the_database_as_the_document_ranks(cfg: config.Config) -> None:
    filled_store(cfg)
    store = Store.open_readonly(cfg.history_path, "lo")
    for res in ("hours", "days", "periods"):
        everyone = historyview.document(store, cfg, res, now=T0 + 2 * 86400)
        ranked = sorted(everyone["slices"], key=lambda s: (-s["total"]["total_bytes"], s["name"]))
        for n in (1, 2, 5):
            doc = historyview.document(store, cfg, res, now=T0 + 2 * 86400, top=n)
            assert doc["slices"] == ranked[:n], (res, n)
    # Nobody sent anything in the range: no slice, not every slice.
    doc = historyview.document(store, cfg, "hours", now=T0 + 9 * 86400, since=T0 + 8 * 86400, top=3)
    assert doc["slices"] == [] and doc["top"] == []


def test_node_totals_cover_every_bucket_of_the_range(cfg: config.Config) -> None:
    filled_store(cfg)
    store = Store.open_readonly(cfg.history_path, "lo")
    now = T0 + 86400 + 3600 + 5
    doc = historyview.document(store, cfg, "hours", now=now, names=None, node=True)
    assert doc["slices"] == [] and doc["top"] is None
    rows = doc["node"]["rows"]
    # The default range: the 24 hours up to the current one, each a row, traffic or not.
    assert len(rows) == 24
    assert [r["start_epoch"] for r in rows] == [T0 + 2 * 3600 + 3600 * i for i in range(24)]
    assert all(b["start_epoch"] == a["end_epoch"] for a, b in pairwise(rows))
    assert [(r["start_epoch"], r["total_bytes"]) for r in rows if r["total_bytes"]] == [
        (T0 + 86400, 500)
    ]
    doc = historyview.document(store, cfg, "days", now=now, node=True)
    node = doc["node"]
    # Summed over every slice the history holds, the one no longer configured too.
    assert [r["total_bytes"] for r in node["rows"]][-2:] == [13_000_007, 500]
    assert node["total"] == {
        "normal_bytes": 12_000_507,
        "exempt_bytes": 1_000_000,
        "total_bytes": 13_000_507,
        "normal_packets": 12_006,
        "exempt_packets": 1000,
        "packets": 13_006,
    }
    assert node["total"]["total_bytes"] == sum(s["total"]["total_bytes"] for s in doc["slices"])
    # One slice asked for, and the node's totals beside it.
    doc = historyview.document(store, cfg, "days", now=now, names=["bob"], node=True)
    assert [s["name"] for s in doc["slices"]] == ["bob"] and doc["node"] == node
    # Quota periods are each slice's own: no node rows.
    assert historyview.document(store, cfg, "periods", now=now, node=True)["node"] is None
    # Without node, the document is as `bwbpf history --json` prints it.
    assert "node" not in historyview.document(store, cfg, "days", now=now)


def test_node_rows_are_bounded(cfg: config.Config) -> None:
    filled_store(cfg)
    store = Store.open_readonly(cfg.history_path, "lo")
    with pytest.raises(Error, match=r"^since .* more than 10,000"):
        historyview.document(store, cfg, "5min", now=T0, since=T0 - 40 * 86400, node=True)
    # Years since 1970 are few.
    doc = historyview.document(store, cfg, "years", now=T0, node=True)
    assert doc["node"]["rows"][-1]["total_bytes"] == 13_000_507


def test_since_until_and_names_select(cfg: config.Config) -> None:
    filled_store(cfg)
    store = Store.open_readonly(cfg.history_path, "lo")
    doc = historyview.document(
        store, cfg, "hours", now=T0 + 3 * 86400, since=T0, until=T0 + 3600, names=["alice"]
    )
    assert [s["name"] for s in doc["slices"]] == ["alice"]
    assert [r["total_bytes"] for r in doc["slices"][0]["rows"]] == [4_000_000]
    with pytest.raises(Error, match=r"--since .* must be before --until"):
        historyview.document(store, cfg, "days", now=T0, since=T0 + 10, until=T0)


def test_periods_resolution_lists_quota_periods(cfg: config.Config) -> None:
    filled_store(cfg)
    store = Store.open_readonly(cfg.history_path, "lo")
    doc = historyview.document(store, cfg, "periods", now=T0 + 2 * 86400)
    rows = doc["slices"][0]["rows"]
    assert [(r["start_epoch"], r["end_epoch"], r["total_bytes"]) for r in rows] == [
        (T0, T0 + 86400, 4_000_000),
        (T0 + 86400, T0 + 2 * 86400, 500),
    ]
    assert "2026-12-01 00:00 - 2026-12-02 00:00" in historyview.render_text(doc)


def test_text_and_csv_renderings(cfg: config.Config) -> None:
    filled_store(cfg)
    store = Store.open_readonly(cfg.history_path, "lo")
    doc = historyview.document(store, cfg, "days", now=T0 + 2 * 86400)
    text = historyview.render_text(doc)
    assert "2026-12-01" in text and "4.0 MB" in text and "total" in text
    lines = historyview.render_csv(doc).splitlines()
    assert lines[0] == ",".join(historyview.CSV_FIELDS)
    assert lines[1].startswith("alice,2026-12-01T00:00:00+00:00,")
    assert len(lines) == 1 + 4
    empty = historyview.document(store, cfg, "days", now=T0 + 2 * 86400, names=["nobody"])
    assert "no traffic recorded" in historyview.render_text(empty)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01", T0),
        ("2026-12-01 01:00", T0 + 3600),
        ("2026-12-01T01:00+01:00", T0),
        ("7d", T0 + 30 * 86400 - 7 * 86400),
        ("90m", T0 + 30 * 86400 - 5400),
    ],
)
def test_parse_time(text: str, expected: float) -> None:
    assert historyview.parse_time(text, UTC, T0 + 30 * 86400, "--since") == expected


@pytest.mark.parametrize("text", ["yesterday", "", "7x", "-3d", "2026-13-01"])
def test_parse_time_refuses_with_the_option_and_value(text: str) -> None:
    with pytest.raises(Error, match=r"--since .*not a time"):
        historyview.parse_time(text, UTC, T0, "--since")


# -- the [history] section -------------------------------------------------------------------


def test_history_defaults(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    assert cfg.history.enabled and cfg.history.keep() == (48, 4, 62, 25, -1)
    assert cfg.history.write_interval_s == 300
    assert cfg.history_path == os.path.join(cfg.state_dir, "history-lo.sqlite")
    berlin = make_config(tmp_path, extra="")
    assert berlin.history.timezone == "UTC"


def test_history_timezone_follows_the_quota(tmp_path: Path) -> None:
    path = tmp_path / "bwbpf.toml"
    text = CONFIG.format(state_dir=tmp_path / "s", history="").replace(
        'period = "daily"', 'period = "daily"\ntimezone = "Europe/Berlin"'
    )
    path.write_text(text)
    assert config.load(path, check_interface=False).history.timezone == "Europe/Berlin"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("enabled = 1", "history.enabled: must be true or false, not 1"),
        ('write_interval = "0s"', "history.write_interval: must be at least 1s and at most 5m"),
        ('write_interval = "1h"', "history.write_interval: must be at least 1s and at most 5m"),
        ("daily_days = -2", "history.daily_days: -2 is outside -1..36500"),
        ('daily_days = "62"', "history.daily_days: must be an integer"),
        ("yearly_years = 1e3", "history.yearly_years: must be an integer"),
        ('timezone = "Mars/Olympus"', "history.timezone: unknown time zone"),
        ('file = "history.db"', "history.file: must be an absolute path"),
        ("colour = true", "history.colour: unknown key"),
    ],
)
def test_bad_history_settings_name_the_key(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        make_config(tmp_path, f"[history]\n{section}")
    assert any(message in p for p in exc.value.problems), exc.value.problems


def test_history_file_may_not_be_the_state_file(tmp_path: Path) -> None:
    state = tmp_path / "state" / "ledger-lo.json"
    with pytest.raises(ConfigError, match=r"history\.file: must not be the state file"):
        make_config(tmp_path, f'[history]\nfile = "{state}"')


@pytest.mark.parametrize("section", ["history", "metrics"])
def test_a_device_fifo_or_directory_is_no_file_to_write(tmp_path: Path, section: str) -> None:
    key = {"history": "file", "metrics": "textfile"}[section]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    nodes = (("/dev/null", "a character device"), (fifo, "a FIFO"), (tmp_path, "a directory"))
    for node, kind in nodes:
        with pytest.raises(ConfigError, match=rf"{section}\.{key}: {node} is {kind}, not a file"):
            make_config(tmp_path, f'[{section}]\n{key} = "{node}"')
    link = tmp_path / "link"
    link.symlink_to("/dev/null")  # a link is replaced, never written through: allowed
    make_config(tmp_path, f'[{section}]\n{key} = "{link}"')
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_a_node_that_is_no_database_is_refused_not_moved(tmp_path: Path) -> None:
    fifo = tmp_path / "history.sqlite"
    os.mkfifo(fifo)
    with pytest.raises(Error, match=r"history .*history\.sqlite: is a FIFO, not a database"):
        Store.open(str(fifo), "lo", 0.0)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["history.sqlite"]


# -- the command ---------------------------------------------------------------------------


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_history_command_prints_json_csv_and_text(cfg: config.Config) -> None:
    filled_store(cfg)
    common = ("history", "-c", cfg.path, "--since", "2026-12-01", "--until", "2026-12-03")
    result = cli(*common, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert [s["name"] for s in doc["slices"]] == ["alice", "bob", "gone"]
    result = cli(*common, "--csv", "bob")
    assert result.output.splitlines()[1].startswith("bob,2026-12-01T00:00:00+00:00,")
    result = cli(*common, "--top", "1")
    assert result.exit_code == 0 and " 1 bob" in result.output


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("--since", "soon"), 1, "bwbpf: --since 'soon': not a time"),
        (("--until", "2026-02-30"), 1, "bwbpf: --until '2026-02-30': not a time"),
        (("--since", "1d", "--until", "2d"), 1, "must be before --until"),
        (("--json", "--csv"), 2, "--json and --csv exclude each other"),
        (("--top", "0"), 2, "Invalid value for '--top'"),
        (("--top", "-5"), 2, "Invalid value for '--top'"),
        (("--hours", "--days", "--weeks"), 2, "No such option"),
    ],
)
def test_history_command_refuses_bad_options_in_one_line(
    cfg: config.Config, args: tuple[str, ...], code: int, message: str
) -> None:
    filled_store(cfg)
    result = cli("history", "-c", cfg.path, *args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_history_command_without_a_database_or_with_history_off(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    result = cli("history", "-c", cfg.path)
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"bwbpf: history {cfg.history_path}: no such file (the daemon writes it)"
    )
    off = make_config(tmp_path, "[history]\nenabled = false")
    result = cli("history", "-c", off.path)
    assert result.exit_code == 1 and "history is off ([history] enabled = false)" in result.output


def test_history_command_on_a_foreign_file_changes_nothing(cfg: config.Config) -> None:
    os.makedirs(cfg.state_dir, exist_ok=True)
    with open(cfg.history_path, "wb") as f:
        f.write(b"\x7fELF" + b"\x00" * 4000)
    result = cli("history", "-c", cfg.path)
    assert result.exit_code == 1
    assert "file is not a database" in result.output and "Traceback" not in result.output
    assert Path(cfg.history_path).read_bytes()[:4] == b"\x7fELF"


def test_history_command_names_slices_without_history(cfg: config.Config) -> None:
    filled_store(cfg)
    result = cli("history", "-c", cfg.path, "--since", "2026-12-01", "alice", "bob", "nobody")
    assert result.exit_code == 0
    assert "no history in this range for: nobody" in result.output


def test_history_of_an_interface_since_removed_is_readable(tmp_path: Path) -> None:
    path = tmp_path / "bwbpf.toml"
    path.write_text(
        CONFIG.format(state_dir=tmp_path / "state", history="").replace('"lo"', '"gone0"')
    )
    cfg = config.load(path, check_interface=False)
    store, _ = Store.open(cfg.history_path, "gone0")
    store.write([history.Added("alice", 0, T0, 1234, 2)], [], UTC, cfg.history.keep())
    store.close()
    result = cli("history", "-c", str(path), "--since", "2026-12-01", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["slices"][0]["total"]["total_bytes"] == 1234
