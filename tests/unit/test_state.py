"""The state file: versioned JSON, atomic writes, unusable files moved aside."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from bwbpf.config import Period
from bwbpf.errors import Error
from bwbpf.ledger import Ledger
from bwbpf.periods import current_period
from bwbpf.state import STATE_VERSION, load_state, save_state, state_file

# 2024-01-02 03:04:05 UTC
NOW = 1704164645.0
STAMP = "20240102T030405Z"


def sample() -> Ledger:
    ledger = Ledger()
    period = Period("rolling", 1000)
    for now, reading in ((0.0, (0, 0)), (10.0, (4000, 4))):
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


def test_unwritable_location_is_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(Error, match="cannot write state file"):
        save_state(str(blocker / "ledger.json"), "eth0", Ledger(), now=NOW)


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
            _with().replace(b'"period_start": 0.0', b'"period_start": 1' + b"0" * 400),
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
