"""The state file: versioned JSON, atomic writes, unusable files moved aside."""

from __future__ import annotations

import json
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest

from bwbpf.config import Period
from bwbpf.errors import Error
from bwbpf.ledger import Ledger
from bwbpf.periods import current_period
from bwbpf.state import STATE_VERSION, load_state, save_state, state_file, write_atomic

# 2024-01-02 03:04:05 UTC
NOW = 1704164645.0
STAMP = "20240102T030405Z"
# The sample's slice started its 1000 s period 500 s before NOW.
START = NOW - 500


def sample() -> Ledger:
    ledger = Ledger()
    period = Period("rolling", 1000)
    for now, reading in ((START, (0, 0)), (START + 10, (4000, 4))):
        ledger.update(
            now,
            {"alice": {0: reading, 1: (0, 0)}},
            lambda _n, start, now=now: current_period(period, now, start),
        )
    ledger.set_ceiling("alice", 0, 8000, True)
    return ledger


def test_state_file_name() -> None:
    assert state_file("/var/lib/bwbpf", "eth0") == "/var/lib/bwbpf/ledger-eth0.json"


def test_missing_file_is_an_empty_ledger_and_no_problem(tmp_path: Path) -> None:
    ledger, problem = load_state(str(tmp_path / "ledger.json"), "eth0")
    assert (ledger, problem) == (Ledger(), None)
    assert list(tmp_path.iterdir()) == []


def test_round_trip(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.json")
    save_state(path, "eth0", sample(), now=NOW)
    ledger, problem = load_state(path, "eth0")
    assert problem is None
    assert ledger == sample()
    assert ledger.usage("alice", 0) == 4000


def test_document_layout(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    save_state(str(path), "eth0", sample(), now=NOW)
    document = json.loads(path.read_text())
    assert document == {
        "version": STATE_VERSION,
        "interface": "eth0",
        "saved_at": NOW,
        "ledger": sample().to_dict(),
    }
    assert STATE_VERSION == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_save_replaces_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    save_state(str(path), "eth0", Ledger(), now=NOW)
    save_state(str(path), "eth0", sample(), now=NOW + 10)
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]
    assert json.loads(path.read_text())["saved_at"] == NOW + 10


def test_save_creates_the_state_directory(tmp_path: Path) -> None:
    path = tmp_path / "var" / "lib" / "bwbpf" / "ledger-eth0.json"
    save_state(str(path), "eth0", sample(), now=NOW)
    assert load_state(str(path), "eth0") == (sample(), None)


def test_failed_save_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.json"
    save_state(str(path), "eth0", Ledger(), now=NOW)
    before = path.read_bytes()

    def fail(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(Error, match=r"^cannot write state file .*: No space left on device$"):
        save_state(str(path), "eth0", sample(), now=NOW)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]


def test_a_time_json_cannot_hold_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    save_state(str(path), "eth0", sample(), now=NOW)
    before = path.read_bytes()
    ledger = sample()
    record = ledger.get("alice")
    assert record is not None
    ledger._slices["alice"] = record._replace(read_at=float("nan"))
    with pytest.raises(Error, match=r"^cannot write state file .*: Out of range float values"):
        save_state(str(path), "eth0", ledger, now=NOW)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]


def _previous_snapshot_text(ledger: Ledger, journal: str) -> str:
    """A snapshot as bwbpf wrote it before its slices' JSON was made directly: json's
    encoder on each slice's dict, a slice a line."""

    def encode(value: object) -> str:
        return json.dumps(value, sort_keys=True, allow_nan=False, separators=(",", ":"))

    here = "\0slices\0"
    document = {
        "version": STATE_VERSION,
        "interface": "eth0",
        "saved_at": NOW,
        "ledger": {**ledger.top_dict(), "slices": here},
        "journal": journal,
    }
    before, after = encode(document).split(encode(here))
    lines = [encode({name: v})[1:-1] for name, v in ledger.slice_dicts()]
    return before + "{\n" + ",\n".join(lines) + "\n}" + after + "\n"


@pytest.mark.parametrize("slices", [0, 1, 700])
def test_snapshot_text_is_as_the_previous_version_wrote_it(tmp_path: Path, slices: int) -> None:
    """Byte for byte (several pieces of SNAPSHOT_CHUNK_SLICES, or none): a file written
    now reads as before, also by an older bwbpf."""
    alice = sample().to_dict()["slices"]["alice"]
    ledger = Ledger()
    ledger.apply({}, {f"s{i}": alice for i in range(slices)}, [])
    path = tmp_path / "ledger.json"
    save_state(str(path), "eth0", ledger, now=NOW, journal="j")
    assert path.read_text() == _previous_snapshot_text(ledger, "j")
    assert load_state(str(path), "eth0")[0] == ledger


def test_unwritable_location_is_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(Error, match="cannot write state file"):
        save_state(str(blocker / "ledger.json"), "eth0", Ledger(), now=NOW)


PERIOD_START = f'"period_start": {START}'.encode()


def _valid() -> dict[str, Any]:
    return {"version": 1, "interface": "eth0", "saved_at": NOW, "ledger": sample().to_dict()}


def _with(**changes: Any) -> bytes:
    document = _valid()
    document.update(changes)
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("content", "why"),
    [
        pytest.param(b"", "not valid JSON: Expecting value", id="empty"),
        pytest.param(b'{"version": 1, ', "not valid JSON", id="truncated"),
        pytest.param(b"\xff\xfe garbage", "not UTF-8 text", id="binary"),
        pytest.param(b"[" * 100_000 + b"]" * 100_000, "nested too deeply", id="deep-nesting"),
        pytest.param(b"[1, 2]", "not a state document: a JSON list", id="list"),
        pytest.param(b"(lp0\nI1\na.", "not valid JSON", id="a-pickle"),
        pytest.param(_with(version=2), "version 2, this bwbpf reads version 1", id="newer"),
        pytest.param(_with(version="1"), "version '1'", id="version-string"),
        pytest.param(_with(version=True), "version True", id="version-bool"),
        pytest.param(
            _with(interface="eth1"), "belongs to interface 'eth1', not 'eth0'", id="interface"
        ),
        pytest.param(_with(saved_at="now"), "saved_at: must be a number", id="saved-at"),
        pytest.param(_with(extra=1), "unknown key extra", id="unknown-key"),
        pytest.param(_with(ledger=[]), "ledger: must be an object, not list", id="ledger-list"),
        pytest.param(
            _with(ledger={"slices": {"alice": {}}}), "'alice': missing exempt", id="bad-slice"
        ),
        pytest.param(
            _with().replace(b'"used_bytes": 4000', b'"used_bytes": NaN'),
            "NaN is not a number",
            id="nan",
        ),
        pytest.param(
            _with().replace(b'"used_bytes": 4000', b'"used_bytes": -4000'),
            "normal.used_bytes: must be an integer >= 0, not -4000",
            id="negative-usage",
        ),
        pytest.param(
            _with().replace(PERIOD_START, b'"period_start": 1' + b"0" * 400),
            "period_start: must be a finite number",
            id="huge-number",
        ),
    ],
)
def test_unusable_file_is_moved_aside(tmp_path: Path, content: bytes, why: str) -> None:
    path = tmp_path / "ledger.json"
    path.write_bytes(content)
    ledger, problem = load_state(str(path), "eth0", now=NOW)
    assert ledger == Ledger()
    aside = tmp_path / f"ledger.json.corrupt-{STAMP}"
    assert problem is not None and "\n" not in problem
    assert problem.startswith(f"state file {path} unusable (")
    assert why in problem
    assert problem.endswith(f"); moved to {aside}, starting with an empty ledger")
    assert not path.exists()
    assert aside.read_bytes() == content


def test_valid_document_loads(tmp_path: Path) -> None:
    """The control for the table above: the unmodified document is fine."""
    path = tmp_path / "ledger.json"
    path.write_bytes(_with())
    assert load_state(str(path), "eth0", now=NOW) == (sample(), None)


def test_second_corrupt_file_in_the_same_second_gets_its_own_name(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_text("first")
    load_state(str(path), "eth0", now=NOW)
    path.write_text("second")
    _, problem = load_state(str(path), "eth0", now=NOW)
    second = tmp_path / f"ledger.json.corrupt-{STAMP}.2"
    assert problem is not None and f"moved to {second}," in problem
    assert (tmp_path / f"ledger.json.corrupt-{STAMP}").read_text() == "first"
    assert second.read_text() == "second"


def test_unreadable_path_is_reported_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.mkdir()
    ledger, problem = load_state(str(path), "eth0", now=NOW)
    assert ledger == Ledger()
    assert problem == (
        f"state file {path} unusable (cannot read: Is a directory); moved to "
        f"{path}.corrupt-{STAMP}, starting with an empty ledger"
    )


def test_move_aside_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ledger.json"
    path.write_text("{")

    def fail(src: str, dst: str) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(os, "rename", fail)
    ledger, problem = load_state(str(path), "eth0", now=NOW)
    assert ledger == Ledger()
    assert problem is not None
    assert problem.endswith(
        "could not be moved aside: Read-only file system; starting with an empty ledger"
    )
    assert path.read_text() == "{"


def test_file_and_directory_are_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The data is fsynced before the rename and the directory after it; otherwise a crash
    can leave an empty file or the old name."""
    path = tmp_path / "ledger.json"
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_state(str(path), "eth0", sample(), now=NOW)
    assert events == ["fsync-file", "rename", "fsync-dir"]


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        pytest.param(
            b'"used_bytes": 4000',
            b'"used_bytes": 1' + b"0" * 30,
            "normal.used_bytes: 1e+30 is more than 2**63-1",
            id="1e30-bytes",
        ),
        pytest.param(
            b'"used_bytes": 4000',
            b'"used_bytes": 1e30',
            "normal.used_bytes: must be an integer >= 0, not 1e+30",
            id="1e30-float",
        ),
        pytest.param(
            b'"used_packets": 4',
            b'"used_packets": 9223372036854775808',
            "normal.used_packets: 9.22e+18 is more than 2**63-1",
            id="2**63-packets",
        ),
        pytest.param(
            b'"last": [4000, 4]',
            b'"last": [18446744073709551615, 4]',
            "normal.last[0]",
            id="2**64-last",
        ),
        pytest.param(
            b'"ceil_bps": 8000',
            b'"ceil_bps": 9223372036854775808',
            "normal.ceil_bps",
            id="2**63-ceiling",
        ),
        pytest.param(
            f'"period_end": {START + 1000}'.encode(),
            b'"period_end": 3.15e+299',
            "period_end: 3.15e+299 is not between 2000-01-01 and 400 days from now",
            id="year-10**292",
        ),
        pytest.param(
            f'"period_start": {START}, "period_end": {START + 1000}'.encode(),
            f'"period_start": {NOW + 5000}, "period_end": {NOW + 6000}'.encode(),
            "period_end: 1704170645 is more than 3 periods of 1000 s after saved_at (1704164645)",
            id="periods-ahead",
        ),
        pytest.param(
            f'"period_end": {START + 1000}'.encode(),
            f'"period_end": {START - 1}'.encode(),
            "is not after period_start",
            id="end-before-start",
        ),
        pytest.param(
            b'"saved_at": 1704164645.0',
            b'"saved_at": 1e300',
            "saved_at: 1e+300 is not between 2000-01-01 and 400 days from now",
            id="saved-at-future",
        ),
        pytest.param(
            PERIOD_START,
            b'"period_start": 1.0',
            "period_start: 1 is not between 2000-01-01 and 400 days from now",
            id="before-2000",
        ),
        pytest.param(
            f'"read_at": {START + 10}'.encode(),
            f'"read_at": {NOW + 401 * 86400}'.encode(),
            f"read_at: {NOW + 401 * 86400:.10g} is not between 2000-01-01 and 400 days from now",
            id="read-at-future",
        ),
    ],
)
def test_absurd_values_are_set_aside(tmp_path: Path, old: bytes, new: bytes, why: str) -> None:
    """Bounded like config values: a state file claiming 1e30 bytes used, or a period
    ending in the year 10**292, would cap a slice for the rest of its period."""
    content = _with()
    assert old in content, old
    path = tmp_path / "ledger.json"
    path.write_bytes(content.replace(old, new))
    ledger, problem = load_state(str(path), "eth0", now=NOW)
    assert ledger == Ledger()
    assert problem is not None and "\n" not in problem and len(problem) < 400
    assert why in problem
    assert (tmp_path / f"ledger.json.corrupt-{STAMP}").exists()
    assert not path.exists()


def test_largest_counts_and_times_in_bounds_load(tmp_path: Path) -> None:
    content = _with().replace(b'"used_bytes": 4000', f'"used_bytes": {2**63 - 1}'.encode())
    content = content.replace(
        f'"period_end": {START + 1000}'.encode(), f'"period_end": {NOW + 3 * 1000}'.encode()
    )
    path = tmp_path / "ledger.json"
    path.write_bytes(content)
    ledger, problem = load_state(str(path), "eth0", now=NOW)
    assert problem is None
    assert ledger.usage("alice", 0) == 2**63 - 1


def test_symlinked_state_file_is_not_followed(tmp_path: Path) -> None:
    """A symbolic link at the state path is set aside, not read: its target stays."""
    elsewhere = tmp_path / "elsewhere.json"
    save_state(str(elsewhere), "eth0", sample(), now=NOW)
    before = elsewhere.read_bytes()
    path = tmp_path / "ledger.json"
    path.symlink_to(elsewhere)
    ledger, problem = load_state(str(path), "eth0", now=NOW)
    assert ledger == Ledger()
    assert problem is not None and "a symbolic link, not followed" in problem
    aside = tmp_path / f"ledger.json.corrupt-{STAMP}"
    assert aside.is_symlink() and not path.exists()
    assert elsewhere.read_bytes() == before


def test_fifo_at_the_state_path_does_not_block(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    os.mkfifo(path)
    result: list[Any] = []
    worker = threading.Thread(
        target=lambda: result.append(load_state(str(path), "eth0", now=NOW)), daemon=True
    )
    worker.start()
    worker.join(5)
    assert result, "load_state blocked on a FIFO"
    ledger, problem = result[0]
    assert ledger == Ledger() and problem is not None and "not a regular file" in problem


def test_save_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "ledger.json"
    path.symlink_to(victim)
    save_state(str(path), "eth0", sample(), now=NOW)
    assert victim.read_text() == "precious\n"
    assert not path.is_symlink()
    assert load_state(str(path), "eth0", now=NOW) == (sample(), None)


def test_write_atomic_replaces_no_device_fifo_or_directory(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "dir").mkdir()
    for node in (fifo, tmp_path / "dir"):
        with pytest.raises(OSError, match=r"is there, and bwbpf replaces only files"):
            write_atomic(str(node), b"x")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and (tmp_path / "dir").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "fifo"]  # no temporary left


def test_temporary_file_is_never_an_existing_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """O_EXCL | O_NOFOLLOW: a symbolic link planted at the temporary name is not written
    through; another name is taken."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    # tempfile.mkstemp's name generator, made to offer the planted name first.
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: iter(["planted", "fresh"]))
    planted = tmp_path / ".ledger.json.planted.tmp"
    planted.symlink_to(victim)
    write_atomic(str(tmp_path / "ledger.json"), b"new\n")
    assert victim.read_text() == "precious\n"
    assert planted.is_symlink()
    assert (tmp_path / "ledger.json").read_bytes() == b"new\n"
    assert not (tmp_path / ".ledger.json.fresh.tmp").exists()


def test_a_clock_set_back_keeps_the_saved_period(tmp_path: Path) -> None:
    """Bounds relative to when the file was saved, not only to now: a node back with its
    clock 40 days behind keeps its period and usage (the 400-day bound still holds)."""
    path = str(tmp_path / "ledger.json")
    save_state(path, "eth0", sample(), now=NOW)
    assert load_state(path, "eth0", now=NOW - 40 * 86400) == (sample(), None)
