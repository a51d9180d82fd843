"""The daemon's state on disk: a snapshot and a journal of what changed at each tick."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path

import pytest

from bwbpf import state
from bwbpf.config import Period
from bwbpf.errors import Error
from bwbpf.ledger import Ledger
from bwbpf.periods import current_period

NOW = 1704164645.0  # 2024-01-02 03:04:05 UTC
PERIOD = Period("rolling", 3600)
SLICES = 200


def tick(ledger: Ledger, now: float, counters: dict[str, int]) -> None:
    ledger.update(
        now,
        {name: {0: (b, b // 100), 1: (0, 0)} for name, b in counters.items()},
        lambda _n, start: current_period(PERIOD, now, start),
    )


@pytest.fixture
def path(tmp_path: Path) -> str:
    return state.state_file(str(tmp_path), "eth0")


def run(path: str, ticks: int, busy: int) -> tuple[Ledger, state.StateFile]:
    """``ticks`` ticks of SLICES slices, ``busy`` of them sending at each."""
    ledger, saved = Ledger(), state.StateFile(path, "eth0")
    counters = {f"s{i}": 0 for i in range(SLICES)}
    for t in range(ticks):
        for i in range(busy):
            counters[f"s{(t * busy + i) % SLICES}"] += 1000 + t
        tick(ledger, NOW + t, counters)
        saved.save(ledger, NOW + t)
    return ledger, saved


def test_snapshot_and_journal_load_as_the_ledger(path: str) -> None:
    ledger, _ = run(path, 30, 3)
    assert os.path.exists(state.journal_file(path))
    loaded, problem = state.load_state(path, "eth0", now=NOW + 30)
    assert problem is None
    assert loaded == ledger and loaded.read_at == ledger.read_at
    assert state.read_state(path, "eth0") == ledger


def test_a_tick_writes_what_changed_not_everything(path: str) -> None:
    ledger, saved = run(path, 2, 3)
    snapshot = os.path.getsize(path)
    before = state.written_bytes()
    counters = {f"s{i}": 0 for i in range(SLICES)}
    counters.update({"s0": 5000, "s1": 7000})
    tick(ledger, NOW + 3, counters)
    saved.save(ledger, NOW + 3)
    line = state.written_bytes() - before
    assert 0 < line < snapshot / 20, (line, snapshot)
    before = state.written_bytes()
    tick(ledger, NOW + 4, counters)  # nobody sent: only the ledger's own fields
    saved.save(ledger, NOW + 4)
    assert 0 < state.written_bytes() - before < 300
    last = json.loads(Path(state.journal_file(path)).read_text().splitlines()[-1])
    assert last["slices"] == {} and last["gone"] == [] and last["ledger"]["read_at"] == NOW + 4


def test_an_idle_ticks_read_at_survives_a_restart(path: str) -> None:
    ledger, saved = run(path, 3, 3)
    counters = {f"s{i}": 0 for i in range(SLICES)}
    tick(ledger, NOW + 49, counters)
    saved.save(ledger, NOW + 49)
    tick(ledger, NOW + 50, counters)  # idle: no slice changed
    assert ledger.changed == set()
    ledger.uncounted_bytes += 4242
    saved.save(ledger, NOW + 50)
    loaded, problem = state.load_state(path, "eth0", now=NOW + 50)
    assert problem is None
    assert (loaded.read_at, loaded.uncounted_bytes) == (ledger.read_at, ledger.uncounted_bytes)


def test_the_journal_is_folded_into_a_new_snapshot_once_it_outgrows_it(path: str) -> None:
    run(path, 400, 5)
    journal = state.journal_file(path)
    size = os.path.getsize(journal) if os.path.exists(journal) else 0
    assert size <= max(os.path.getsize(path), 1 << 16) + 10_000


def test_a_line_cut_short_by_a_crash_is_ignored(path: str) -> None:
    ledger, _ = run(path, 10, 3)
    expected = Ledger.from_dict(ledger.to_dict())
    journal = state.journal_file(path)
    with open(journal, "ab") as f:
        f.write(b'{"journal": "half a li')
    loaded, problem = state.load_state(path, "eth0", now=NOW + 10)
    assert problem is None and loaded == expected


def test_a_bad_line_keeps_what_came_before_and_sets_the_journal_aside(path: str) -> None:
    run(path, 5, 3)
    journal = state.journal_file(path)
    lines = Path(journal).read_bytes().splitlines(keepends=True)
    keep = Path(journal).read_bytes()[: sum(len(x) for x in lines[:2])]
    Path(journal).write_bytes(keep)
    upto_two, _ = state.load_state(path, "eth0", now=NOW + 5)
    name = json.loads(lines[0])["journal"]
    bad = json.dumps({"journal": name, "saved_at": "noon"}).encode() + b"\n"
    Path(journal).write_bytes(keep + bad + b"".join(lines[2:]))
    loaded, problem = state.load_state(path, "eth0", now=NOW + 5)
    assert problem is not None and "line 3" in problem and "moved to" in problem, problem
    assert "using the state without the entries from line 3 on" in problem
    assert loaded == upto_two
    assert not os.path.exists(journal)
    assert any(".journal.corrupt-" in n for n in os.listdir(os.path.dirname(path)))


def test_absurd_values_in_a_journal_line_are_refused(path: str) -> None:
    run(path, 3, 3)
    journal = state.journal_file(path)
    entry = json.loads(Path(journal).read_text().splitlines()[-1])
    name = next(iter(entry["slices"]))
    entry["slices"][name]["normal"]["used_bytes"] = 10**30
    with open(journal, "a") as f:
        f.write(json.dumps(entry) + "\n")
    _, problem = state.load_state(path, "eth0", now=NOW + 3)
    assert problem is not None and "used_bytes" in problem and "2**63-1" in problem, problem


def test_an_older_snapshots_entries_are_never_applied(path: str) -> None:
    ledger, saved = run(path, 5, 3)
    journal = state.journal_file(path)
    old = Path(journal).read_bytes()
    saved.save(ledger, NOW + 6, whole=True)  # a new snapshot, a new journal name
    assert not os.path.exists(journal)
    # A crash between the snapshot and removing the journal leaves the old entries.
    Path(journal).write_bytes(old)
    loaded, problem = state.load_state(path, "eth0", now=NOW + 6)
    assert problem is None and loaded == ledger


def test_a_failed_append_is_saved_again_next_time(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, saved = run(path, 3, 3)
    counters = {f"s{i}": 0 for i in range(SLICES)}
    counters["s9"] = 99_000
    tick(ledger, NOW + 4, counters)
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(state.os, "write", full)
    with pytest.raises(Error, match=r"cannot write state journal .*: No space left on device"):
        saved.save(ledger, NOW + 4)
    monkeypatch.setattr(state.os, "write", real_write)
    saved.save(ledger, NOW + 5)  # the whole ledger again, with s9's change
    loaded, problem = state.load_state(path, "eth0", now=NOW + 5)
    assert problem is None and loaded == ledger
    assert loaded.usage("s9", 0) == ledger.usage("s9", 0) > 0


def test_a_symlink_at_the_journal_is_not_followed(path: str, tmp_path: Path) -> None:
    ledger, saved = run(path, 2, 3)
    victim = tmp_path / "victim"
    victim.write_text("keep me\n")
    journal = state.journal_file(path)
    if os.path.exists(journal):
        os.unlink(journal)
    os.symlink(victim, journal)
    counters = {f"s{i}": 0 for i in range(SLICES)}
    counters["s1"] = 12_345
    tick(ledger, NOW + 3, counters)
    with pytest.raises(Error, match="cannot write state journal"):
        saved.save(ledger, NOW + 3)
    assert victim.read_text() == "keep me\n"
    # Reading sets the link aside instead of following it.
    _, problem = state.load_state(path, "eth0", now=NOW + 3)
    assert problem is not None and "symbolic link" in problem
    assert victim.read_text() == "keep me\n"


def test_readers_never_move_anything(path: str) -> None:
    run(path, 3, 3)
    journal = state.journal_file(path)
    with open(journal, "ab") as f:
        f.write(b"garbage\n")
    before = sorted(os.listdir(os.path.dirname(path)))
    assert state.read_state(path, "eth0") is not None
    assert sorted(os.listdir(os.path.dirname(path))) == before


def test_the_raw_view_for_stat_is_the_ledger_unchecked(path: str) -> None:
    ledger, _ = run(path, 30, 3)
    saved = state.read_raw(path, "eth0")
    assert saved is not None
    assert saved == (ledger.to_dict()["slices"], ledger.read_at)
    assert state.read_raw(path, "wlan0") is None  # another interface's file
    with open(state.journal_file(path), "ab") as f:
        f.write(b"not json\n")
    assert state.read_raw(path, "eth0") == saved  # a bad line ends the journal there
    Path(path).write_bytes(b"\x00binary")
    assert state.read_raw(path, "eth0") is None


def test_a_few_slices_are_read_without_the_others(path: str) -> None:
    ledger, _ = run(path, 30, 3)
    whole = ledger.to_dict()["slices"]
    # One JSON document, a slice a line: "name":{...} starts each slice's line.
    text = Path(path).read_text()
    assert set(json.loads(text)["ledger"]["slices"]) == set(whole)
    lines = text.split("\n")
    assert len(lines) == SLICES + 3  # head, the slices, tail, and the final newline's ""
    assert all(line.startswith('"s') for line in lines[1 : SLICES + 1])
    for names in (["s7"], ["s0", "s199"], ["s5", "nobody"]):
        saved = state.read_raw(path, "eth0", names)
        assert saved is not None
        want = {n: whole[n] for n in names if n in whole}
        assert saved == (want, ledger.read_at), names  # the journal applied to each
    assert state.read_raw(path, "wlan0", ["s7"]) is None


def test_a_slice_named_like_a_field_is_found_by_its_line(tmp_path: Path) -> None:
    # "normal", "live" and "last" are also keys inside every slice's entry.
    path = state.state_file(str(tmp_path), "eth0")
    ledger = Ledger()
    ledger.update(
        NOW,
        {n: {0: (i * 1000, i), 1: (0, 0)} for i, n in enumerate(["normal", "live", "last"], 1)},
        lambda _n, start: current_period(PERIOD, NOW, start),
    )
    state.StateFile(path, "eth0").save(ledger, NOW)
    for name in ("normal", "live", "last"):
        saved = state.read_raw(path, "eth0", [name])
        assert saved is not None
        assert saved[0] == {name: ledger.to_dict()["slices"][name]}


def test_a_snapshot_on_one_line_is_read_whole(path: str) -> None:
    # A file from before slices had lines of their own: found by parsing all of it.
    ledger, _ = run(path, 1, 3)
    document = json.loads(Path(path).read_text())
    Path(path).write_text(json.dumps(document, separators=(",", ":")) + "\n")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(state.journal_file(path))
    saved = state.read_raw(path, "eth0", ["s1"])
    assert saved is not None and saved[0] == {"s1": ledger.to_dict()["slices"]["s1"]}
