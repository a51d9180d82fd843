"""The one exception hierarchy the CLI turns into a one-line message and exit 1."""


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
