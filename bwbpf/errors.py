"""The one exception hierarchy the CLI turns into a one-line message and exit 1, and the
one way any message or exception becomes that line."""

from __future__ import annotations


class Error(Exception):
    """A runtime failure a user can act on; its message is one line."""


class ConfigError(Error):
    """The configuration is invalid; ``problems`` holds every one, each naming file and key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(
            problems[0]
            if len(problems) == 1
            else f"{len(problems)} problems: " + "; ".join(problems)
        )

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[str]]]:
        # Made again from its problems, not its message (heap.isolated pickles it).
        return (ConfigError, (self.problems,))


def one_line(what: BaseException | str, limit: int = 500) -> str:
    """A message folded onto one line (it may quote a file's contents or an exception's
    text) and cut at ``limit`` characters. An exception: a ``bwbpf.Error`` as it is, an
    ``OSError`` as its reason and files, anything else with its type, as it is unexpected."""
    if isinstance(what, str | Error):
        text = str(what)
    elif isinstance(what, OSError) and what.strerror:
        files = " ".join(str(f) for f in (what.filename, what.filename2) if f)
        text = f"{what.strerror}: {files}" if files else what.strerror
    else:
        text = f"{type(what).__name__}: {what}" if str(what) else type(what).__name__
    text = " ".join(text.split()) or "unexpected error"
    return text if len(text) <= limit else text[: limit - 3] + "..."
