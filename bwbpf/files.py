"""What kind of node a path names, for code that replaces or moves files it owns: a rename
over /dev/null, or a "corrupt" database moved aside that was a device, would damage the
system rather than bwbpf's own state."""

from __future__ import annotations

import os
import stat

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def kind(mode: int) -> str:
    """A node's kind in words ("a character device"), for one-line errors."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def foreign_node(path: str) -> str | None:
    """What is at ``path`` when it is neither absent, a regular file nor a symbolic link
    (which a rename replaces, leaving its target alone): bwbpf must not replace or move it.
    None when it may."""
    try:
        mode = os.lstat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
        return None
    return kind(mode)
