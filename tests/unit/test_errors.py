"""errors.one_line: the single way a message or an exception becomes a user's one line."""

from __future__ import annotations

import errno

import pytest

from bwbpf.errors import ConfigError, Error, one_line


@pytest.mark.parametrize(
    ("what", "shown"),
    [
        (Error("state file  /x\nunusable"), "state file /x unusable"),
        (ConfigError(["a: one", "b: two"]), "2 problems: a: one; b: two"),
        (
            OSError(errno.ENOSPC, "No space left on device", "/var/lib/bwbpf"),
            "No space left on device: /var/lib/bwbpf",
        ),
        (
            OSError(errno.EXDEV, "Invalid cross-device link", "/a", None, "/b"),
            "Invalid cross-device link: /a /b",
        ),
        (OSError(errno.EIO, "Input/output error"), "Input/output error"),
        (KeyError("slices"), "KeyError: 'slices'"),
        (RecursionError(), "RecursionError"),
        ("", "unexpected error"),
        ("line one\r\nline two\ttab", "line one line two tab"),
    ],
)
def test_one_line(what: BaseException | str, shown: str) -> None:
    assert one_line(what) == shown


def test_cut_at_the_limit() -> None:
    text = one_line("x" * 10_000, limit=200)
    assert len(text) == 200 and text.endswith("...")
    assert one_line("y" * 200, limit=200) == "y" * 200
