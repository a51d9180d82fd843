"""A validated configuration kept on disk, so that `bwbpf stat` does not parse it again.

At 10,000 slices reading and validating the TOML takes ~0.4 s (tomllib alone ~0.2 s), more
than the whole of what `stat` should cost; unpickling the validated slices takes ~40 ms,
and one slice of them well under a millisecond. So `stat` keeps, per config file, the
Config that file last gave, with each slice pickled on its own: `stat alice` unpickles
alice only.

An entry is used only when everything the Config was made from is unchanged: the file's
bytes, the exempt files' bytes (by SHA-256), bwbpf's own code (version, size and mtime of
its modules). What depends on the machine (the interface, cgroups that exist) is checked
again each time (config.check_environment). Small configs (under MIN_SLICES slices) parse
faster than this, and are not cached.

Entries live in CACHE_DIR (tmpfs: gone at boot), one per config path, readable by their
owner only (the config may hold an SMTP password). Unpickling runs code, so an entry is read
only from a directory and file that belong to this user and nobody else can write; anything
wrong with the cache (missing, corrupt, foreign, a full disk) means parsing as without it,
never an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import pickle
import stat
from collections.abc import Collection
from pathlib import Path
from typing import Any

from bwbpf import __version__, config
from bwbpf.model import Config

log = logging.getLogger(__name__)

CACHE_DIR = "/run/bwbpf/config-cache"
MIN_SLICES = 500
FORMAT = 1


def cache_dir() -> str:
    return os.environ.get("BWBPF_CACHE_DIR", CACHE_DIR)


def load(path: str, only: Collection[str] | None = None) -> Config:
    """``config.load(path)``, from the cache when it holds this file's Config. With
    ``only``, the Config holds only the slices of those names that exist (and the default
    slice): what a command about those slices needs."""
    text = config.read_config(path)
    digest = config.text_digest(text)
    entry_path = os.path.join(cache_dir(), _sha256(os.path.abspath(path).encode()) + ".pickle")
    entry = _read_entry(entry_path)
    if entry is not None and _fresh(entry, path, digest):
        return config.check_environment(_config_of(entry, only))
    cfg = config.parse(text, path, environment=False)
    if len(cfg.slices) >= MIN_SLICES:
        _write_entry(entry_path, _entry(cfg, path, digest))
    cfg = config.check_environment(cfg)
    if only is None:
        return cfg
    wanted = set(only)
    return dataclasses.replace(cfg, slices=tuple(s for s in cfg.slices if s.name in wanted))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _code() -> list[Any]:
    """What identifies this bwbpf: its version and the size and mtime of every module (a
    Config pickled by other code may not be one this code can use)."""
    here = Path(__file__).parent
    out: list[Any] = [__version__]
    for module in sorted(here.glob("*.py")):
        st = module.stat()
        out.append((module.name, st.st_size, st.st_mtime_ns))
    return out


def _source_digest(path: str) -> str | None:
    try:
        return _sha256(config.read_text_file(path).encode())
    except config.FileProblem:
        return None


def _entry(cfg: Config, path: str, digest: str) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "code": _code(),
        "path": path,
        "sha256": digest,
        "sources": [(source, _source_digest(source)) for source in cfg.sources],
        "config": dataclasses.replace(cfg, slices=()),
        "names": [s.name for s in cfg.slices],
        "slices": [pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL) for s in cfg.slices],
    }


def _fresh(entry: dict[str, Any], path: str, digest: str) -> bool:
    try:
        return (
            entry["format"] == FORMAT
            and entry["path"] == path
            and entry["sha256"] == digest
            and entry["code"] == _code()
            and all(_source_digest(source) == want for source, want in entry["sources"])
            and isinstance(entry["config"], Config)
            and len(entry["names"]) == len(entry["slices"])
        )
    except (KeyError, TypeError, ValueError):
        return False


def _config_of(entry: dict[str, Any], only: Collection[str] | None) -> Config:
    blobs = entry["slices"]
    if only is not None:
        wanted = set(only)
        blobs = [b for name, b in zip(entry["names"], blobs, strict=True) if name in wanted]
    return dataclasses.replace(entry["config"], slices=tuple(pickle.loads(b) for b in blobs))


def _private(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _read_entry(entry_path: str) -> dict[str, Any] | None:
    try:
        if not _private(os.stat(os.path.dirname(entry_path))):
            log.debug("%s: not this user's alone; the cache is not used", entry_path)
            return None
        fd = os.open(entry_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not (stat.S_ISREG(st.st_mode) and _private(st)):
                log.debug("%s: not this user's alone; the cache is not used", entry_path)
                return None
            entry = pickle.load(f)
    except Exception as exc:  # a corrupt entry is only a slower stat
        log.debug("%s: unreadable (%s); parsing the config", entry_path, exc)
        return None
    return entry if isinstance(entry, dict) else None


def _write_entry(entry_path: str, entry: dict[str, Any]) -> None:
    directory = os.path.dirname(entry_path)
    tmp = f"{entry_path}.{os.getpid()}.tmp"
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if not _private(os.stat(directory)):
            return
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as f:
            pickle.dump(entry, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, entry_path)
    except OSError as exc:
        log.debug("%s: not written (%s)", entry_path, exc.strerror or exc)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
