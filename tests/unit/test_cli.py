"""The CLI's contract: exit codes and one-line errors (no root needed for these)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

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
