"""Paths inside a not-yet-booted image root, resolved as the image will see them.

An image tree is full of absolute symlinks (``/lib/modules/R/build`` ->
``/usr/src/linux-headers-R``). Tested or written from the host with plain shell, such a
link is followed on the *host*: a check passes or fails by what the host has installed, and
a write lands in the host's files. Every lookup here re-roots absolute links at the image's
root and keeps ``..`` from climbing out of it, the way the kernel resolves paths under a
chroot. Standard library only: vm/build-image.sh runs it with the host's python3.

    python3 vm/imagefs.py path ROOT PATH        the host path of PATH in the image
    python3 vm/imagefs.py exists ROOT PATH      exit 0 if PATH exists in the image
    python3 vm/imagefs.py write ROOT PATH MODE  stdin to PATH in the image (octal MODE)
    python3 vm/imagefs.py kernel ROOT           the newest kernel release with its initrd
                                                and headers, or one line saying what is missing
"""

from __future__ import annotations

import os
import re
import stat
import sys

MAX_LINKS = 40  # as the kernel's MAXSYMLINKS: a link loop is an error, not a hang


class ImageError(Exception):
    """A path that cannot be resolved inside the image, or an image that is incomplete."""


def resolve(root: str, path: str, follow_last: bool = True) -> str:
    """The host path of ``path`` as seen from inside ``root``.

    Absolute symlink targets restart from ``root``; ``..`` at the image's ``/`` stays there.
    Components that do not exist are kept as they are (the result then does not exist).
    With ``follow_last`` False a final symlink is not followed (for writing over it).
    """
    root = os.path.realpath(root)
    pending = [c for c in path.split("/") if c not in ("", ".")]
    pending.reverse()  # a stack: the next component is pending[-1]
    done: list[str] = []  # resolved components below root, none a symlink
    links = 0
    while pending:
        comp = pending.pop()
        if comp == "..":
            if done:
                done.pop()
            continue
        host = os.path.join(root, *done, comp)
        last = not pending
        try:
            mode = os.lstat(host).st_mode
        except FileNotFoundError:
            done.append(comp)
            continue
        if not stat.S_ISLNK(mode) or (last and not follow_last):
            done.append(comp)
            continue
        links += 1
        if links > MAX_LINKS:
            raise ImageError(f"{path}: too many levels of symbolic links in the image")
        target = os.readlink(host)
        if target.startswith("/"):
            done = []
        parts = [c for c in target.split("/") if c not in ("", ".")]
        pending.extend(reversed(parts))
    return os.path.join(root, *done)


def exists(root: str, path: str) -> bool:
    """Whether ``path`` exists inside the image (a dangling link does not)."""
    return os.path.exists(resolve(root, path))


def write(root: str, path: str, data: bytes, mode: int) -> str:
    """Write ``data`` to ``path`` inside the image, replacing a file or symlink there; the
    parent directory must exist in the image. Returns the host path written."""
    target = resolve(root, path, follow_last=False)
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        raise ImageError(f"{path}: no directory {os.path.dirname(path)} in the image")
    if os.path.islink(target):
        os.unlink(target)  # replace the link itself, never what it points at
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(target, mode)
    return target


def _version_key(release: str) -> list[tuple[int, str]]:
    """Order kernel releases as ``sort -V`` does for Debian's names (6.1.0-9 < 6.1.0-10)."""
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"(\d+)", release) if p]


def kernel(root: str) -> str:
    """The newest kernel release in the image's /boot, checked for what vm-test boots with:
    its initramfs and the headers bcc compiles against, all as the image sees them."""
    boot = resolve(root, "/boot")
    try:
        names = os.listdir(boot)
    except OSError:
        names = []
    releases = [n[len("vmlinuz-") :] for n in names if n.startswith("vmlinuz-")]
    if not releases:
        raise ImageError("no kernel (/boot/vmlinuz-*) in the image")
    release = max(releases, key=_version_key)
    if not exists(root, f"/boot/initrd.img-{release}"):
        raise ImageError(f"no initramfs /boot/initrd.img-{release} in the image")
    build = f"/lib/modules/{release}/build"
    if not exists(root, f"{build}/include"):
        seen = resolve(root, build)
        why = "missing" if not os.path.lexists(seen) else "no include/ there"
        raise ImageError(
            f"no headers for {release} in the image ({build} as the image sees it: {why});"
            f" the image needs linux-headers-{release}"
        )
    return release


def main(argv: list[str]) -> int:
    try:
        match argv:
            case ["path", root, path]:
                print(resolve(root, path))
                return 0
            case ["exists", root, path]:
                return 0 if exists(root, path) else 1
            case ["write", root, path, mode]:
                write(root, path, sys.stdin.buffer.read(), int(mode, 8))
                return 0
            case ["kernel", root]:
                print(kernel(root))
                return 0
    except (ImageError, OSError, ValueError) as exc:
        print(f"vm-test: {exc}", file=sys.stderr)
        return 1
    print(__doc__.split("\n\n", 2)[2].rstrip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
