"""The CLI's contract: exit codes and one-line errors (no root needed for these)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from bwbpf import config
from bwbpf.cli import main


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_check_valid(tmp_path: Path) -> None:
    cfg = tmp_path / "ok.toml"
    cfg.write_text('[node]\ninterface = "lo"\n[[slice]]\nname = "a"\nid = 1\nmatch = {mark = 1}\n')
    code, out, _ = run("check", "--config", str(cfg))
    assert code == 0
    assert "ok: 1 slices on lo" in out


def test_check_lists_every_problem(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[node]\ninterface = "lo"\ntick = "x"\nline_rate = "fast"\n')
    code, _, err = run("check", "-c", str(cfg))
    assert code == 1
    assert err.splitlines() == [
        f"bwbpf: {cfg}: node.line_rate: 'fast' is not a rate, e.g. '100mbit'",
        f"bwbpf: {cfg}: node.tick: 'x' is not a duration, e.g. '10s'",
    ]
    assert "Traceback" not in err


def test_missing_file_is_one_line() -> None:
    code, _, err = run("check", "-c", "/nonexistent/bw.toml")
    assert code == 1
    assert err == "bwbpf: /nonexistent/bw.toml: cannot read: No such file or directory\n"


def test_usage_error_exits_2() -> None:
    code, _, _ = run("stat", "--no-such-flag")
    assert code == 2


def test_help_has_examples() -> None:
    code, out, _ = run("stat", "--help")
    assert code == 0 and "Examples:" in out and "--json 1 5" in out


# -- hostile input: one line per problem, exit 1, never a traceback ---------------------------

BWBPF = [sys.executable, "-m", "bwbpf.cli"]
GOOD = '[node]\ninterface = "lo"\n[[slice]]\nname = "a"\nid = 1\nmatch = {mark = 1}\n'


def assert_refused(code: int, err: str, *named: str) -> None:
    assert code == 1, err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines and all(line.startswith("bwbpf: ") for line in lines), err
    for key in named:
        assert any(f": {key}: " in line for line in lines), (key, err)


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        pytest.param(('"lo"', '"lo"\nline_rate = "0bit"'), "node.line_rate", id="line-rate-0"),
        pytest.param(('"lo"', '"lo"\nnode_cap = "0bit"'), "node.node_cap", id="node-cap-0"),
        pytest.param(('"lo"', '"lo"\ntick = "0s"'), "node.tick", id="tick-0"),
        pytest.param(('"lo"', '"lo"\ntick = "500ms"'), "node.tick", id="tick-500ms"),
        pytest.param(('"lo"', '"lo"\ntick = "0.5s"'), "node.tick", id="tick-half"),
        pytest.param(('"lo"', '"lo"\nline_rate = "1e35bit"'), "node.line_rate", id="rate-1e35"),
        pytest.param(
            ('"lo"', '"lo"\nline_rate = "99999999999999999999gbit"'),
            "node.line_rate",
            id="rate-20-digits",
        ),
        pytest.param(('"lo"', '"lo"\nnode_cap = nan'), "node.node_cap", id="rate-nan"),
        pytest.param(('"lo"', '"lo"\ntick = true'), "node.tick", id="tick-bool"),
        pytest.param(('"lo"', '"lo"\nstate_dir = "rel"'), "node.state_dir", id="state-dir-rel"),
        pytest.param(('"lo"', '"lo"\nbpffs = "rel"'), "node.bpffs", id="bpffs-rel"),
        pytest.param(('"lo"', '"../../victim"'), "node.interface", id="interface-dotdot"),
        pytest.param(('"lo"', '["lo"]'), "node.interface", id="interface-array"),
        pytest.param(('"lo"', '"abcdefghijklmnop"'), "node.interface", id="interface-16"),
        pytest.param(('name = "a"', 'name = "a..b"'), "slice[0].name", id="name-a..b"),
        pytest.param(('name = "a"', 'name = ".a"'), "slice[0].name", id="name-.a"),
        pytest.param(('name = "a"', 'name = "a."'), "slice[0].name", id="name-a."),
        pytest.param(('name = "a"', f'name = "{"a" * 64}"'), "slice[0].name", id="name-64"),
        pytest.param(("{mark = 1}", "{mark = 1.5}"), "slice[0].match.mark", id="mark-float"),
    ],
)
def test_check_refuses_hostile_values(tmp_path: Path, edit: tuple[str, str], key: str) -> None:
    cfg = tmp_path / "bw.toml"
    text = GOOD.replace(*edit, 1)
    assert text != GOOD
    cfg.write_text(text)
    code, _, err = run("check", "-c", str(cfg))
    assert_refused(code, err, key)


@pytest.mark.parametrize("command", ["check", "up", "down", "run", "stat"])
def test_every_command_validates_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    from bwbpf import daemon, node

    touched: list[str] = []
    monkeypatch.setattr(node, "up", lambda *a, **k: touched.append("up"))
    monkeypatch.setattr(node, "down", lambda *a, **k: touched.append("down") or [])
    monkeypatch.setattr(daemon, "Daemon", lambda *a, **k: touched.append("Daemon"))
    cfg = tmp_path / "bw.toml"
    cfg.write_text(GOOD.replace('"lo"', '"../../victim"'))
    code, out, err = run(command, "-c", str(cfg))
    assert_refused(code, err, "node.interface")
    assert len(err.splitlines()) == 1, err
    assert touched == [] and "removed" not in out


def test_down_refuses_an_interface_that_leaves_bpffs(tmp_path: Path) -> None:
    # bpffs/bwbpf/../../victim is tmp_path/victim: down must not get as far as removing it.
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "counters").write_text("precious")
    cfg = tmp_path / "bw.toml"
    cfg.write_text(GOOD.replace('"lo"', f'"../../victim"\nbpffs = "{tmp_path}/bpf"'))
    code, out, err = run("down", "-c", str(cfg))
    assert_refused(code, err, "node.interface")
    assert len(err.splitlines()) == 1 and out == ""
    assert (victim / "counters").read_text() == "precious"


def test_check_prints_warnings_and_exits_0(tmp_path: Path) -> None:
    cfg = tmp_path / "bw.toml"
    cfg.write_text(
        GOOD.replace("{mark = 1}", '{src = ["10.0.0.0/8"]}')
        + '[[slice]]\nname = "b"\nid = 2\nmatch = {src = ["10.1.0.0/16"]}\n'
    )
    code, out, err = run("check", "-c", str(cfg))
    assert code == 0, err
    assert "ok: 2 slices" in out
    assert err.splitlines() == [
        f"bwbpf: warning: {cfg}: slice[1].match.src: 10.1.0.0/16 (b) is inside 10.0.0.0/8 of"
        " slice[0] (a): the longer prefix wins, so traffic from 10.1.0.0/16 counts to b"
    ]


def test_binary_exempt_file(tmp_path: Path) -> None:
    (tmp_path / "bin").write_bytes(bytes(range(256)))
    cfg = tmp_path / "bw.toml"
    cfg.write_text(GOOD + '[exempt]\nfiles = ["bin"]\n')
    code, _, err = run("check", "-c", str(cfg))
    assert_refused(code, err, "exempt.files[0]")
    assert err == f"bwbpf: {cfg}: exempt.files[0]: {tmp_path}/bin: not UTF-8 text (at byte 128)\n"


def test_a_million_bad_prefixes_print_a_few_lines(tmp_path: Path) -> None:
    (tmp_path / "bad.txt").write_text("not-a-prefix\n" * 1_000_000)
    cfg = tmp_path / "bw.toml"
    cfg.write_text(GOOD + '[exempt]\nfiles = ["bad.txt"]\n')
    code, _, err = run("check", "-c", str(cfg))
    assert_refused(code, err, "exempt.files[0]")
    assert len(err.splitlines()) <= 10, err
    assert err.splitlines()[-1].endswith(f"... and 999995 more problems in {tmp_path}/bad.txt")


def test_deep_toml(tmp_path: Path) -> None:
    cfg = tmp_path / "bw.toml"
    cfg.write_text("a = " + "[" * 100_000)
    code, _, err = run("check", "-c", str(cfg))
    assert_refused(code, err)
    assert err == f"bwbpf: {cfg}: not valid TOML: nested too deeply\n"


def test_directory_as_config_is_exit_1(tmp_path: Path) -> None:
    code, _, err = run("check", "-c", str(tmp_path))
    assert_refused(code, err)
    assert err == f"bwbpf: {tmp_path}: is a directory, not a regular file\n"


def check_subprocess(path: Path) -> subprocess.CompletedProcess[str]:
    """``bwbpf check`` in its own process: a FIFO that blocked it would hang a CliRunner."""
    return subprocess.run(
        [*BWBPF, "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=20,  # a blocking open of a FIFO with no writer never returns
        stdin=subprocess.DEVNULL,
    )


def test_fifo_config_does_not_block(tmp_path: Path) -> None:
    fifo = tmp_path / "bw.toml"
    os.mkfifo(fifo)
    done = check_subprocess(fifo)
    assert_refused(done.returncode, done.stderr)
    assert done.stderr == f"bwbpf: {fifo}: is a FIFO, not a regular file\n"


def test_fifo_exempt_file_does_not_block(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    cfg = tmp_path / "bw.toml"
    cfg.write_text(GOOD + '[exempt]\nfiles = ["fifo", "/dev/zero"]\n')
    done = check_subprocess(cfg)
    assert_refused(done.returncode, done.stderr, "exempt.files[0]", "exempt.files[1]")
    assert "is a FIFO, not a regular file" in done.stderr
    assert "is a character device, not a regular file" in done.stderr


@pytest.mark.parametrize(
    ("exc", "line"),
    [
        pytest.param(
            OSError(errno.ENOSPC, "No space left on device", "/var/lib/bwbpf/ledger-lo.json"),
            "bwbpf: No space left on device: /var/lib/bwbpf/ledger-lo.json",
            id="ENOSPC",
        ),
        pytest.param(
            OSError(errno.EROFS, "Read-only file system", "/var/lib/bwbpf"),
            "bwbpf: Read-only file system: /var/lib/bwbpf",
            id="EROFS",
        ),
        pytest.param(
            PermissionError(errno.EACCES, "Permission denied", "/sys/fs/bpf/bwbpf"),
            "bwbpf: Permission denied: /sys/fs/bpf/bwbpf (run as root)",
            id="EACCES",
        ),
        pytest.param(
            UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
            "bwbpf: UnicodeDecodeError: 'utf-8' codec can't decode byte 0xff in position 0:"
            " invalid start byte (--debug shows where)",
            id="UnicodeDecodeError",
        ),
        pytest.param(RecursionError("deep"), "bwbpf: input nested too deeply", id="RecursionError"),
        pytest.param(
            ValueError("bad\nvalue"),
            "bwbpf: ValueError: bad value (--debug shows where)",
            id="ValueError",
        ),
    ],
)
def test_unexpected_exceptions_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException, line: str
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise exc

    monkeypatch.setattr(config, "load", boom)
    code, _, err = run("check", "-c", str(tmp_path / "bw.toml"))
    assert (code, err) == (1, line + "\n")
    # With --debug, the traceback.
    result = CliRunner().invoke(main, ["--debug", "check", "-c", str(tmp_path / "bw.toml")])
    assert result.exception is exc


def test_down_is_refused_while_a_daemon_holds_the_interface(tmp_path: Path) -> None:
    from bwbpf import lifecycle

    state_dir = tmp_path / "state"
    state_dir.mkdir()
    cfg = tmp_path / "ok.toml"
    cfg.write_text(
        f'[node]\ninterface = "bwtnone0"\nstate_dir = "{state_dir}"\n'
        '[[slice]]\nname = "a"\nid = 1\nmatch = {mark = 1}\n'
    )
    lock = lifecycle.lock_path(str(state_dir), "bwtnone0")
    assert lifecycle.lock_holder(lock) is None  # no lock file yet
    fd = lifecycle.take_lock(lock, "bwtnone0")
    try:
        assert lifecycle.lock_holder(lock) == os.getpid()
        code, _, err = run("down", "-c", str(cfg))
        assert code == 1
        assert err == (
            f"bwbpf: a bwbpf daemon (pid {os.getpid()}) is running on bwtnone0: stop it first"
            " (systemctl stop bwbpf, or kill -TERM it); nothing was removed\n"
        )
    finally:
        os.close(fd)
    assert lifecycle.lock_holder(lock) is None  # a lock file nobody holds is no daemon
    code, out, _ = run("down", "-c", str(cfg))
    assert (code, out) == (0, "bwtnone0: nothing of bwbpf's was installed\n")
