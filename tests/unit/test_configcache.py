"""stat's cache of validated configurations: used only while everything it was made from
is unchanged, and never a reason to fail."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest

from bwbpf import config, configcache
from bwbpf.errors import ConfigError

SLICES = 600  # above configcache.MIN_SLICES


def config_text(tmp: Path, slices: int = SLICES, limit: str = "10GB", exempt: bool = True) -> str:
    head = f'[node]\ninterface = "lo"\nstate_dir = "{tmp}/state"\nbpffs = "{tmp}/bpffs"\n' + (
        '[exempt]\nfiles = ["exempt.txt"]\n' if exempt else ""
    )
    return head + "".join(
        f'[[slice]]\nname = "s{i}"\nid = {i}\nmatch = {{ mark = {i} }}\n'
        f'normal = {{ limit = "{limit}" }}\n'
        for i in range(1, slices + 1)
    )


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "cache"
    monkeypatch.setenv("BWBPF_CACHE_DIR", str(directory))
    return directory


@pytest.fixture
def cfg_path(tmp_path: Path) -> str:
    (tmp_path / "exempt.txt").write_text("192.0.2.0/24\n")
    path = tmp_path / "bwbpf.toml"
    path.write_text(config_text(tmp_path))
    return str(path)


def entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.pickle")) if cache.exists() else []


def test_the_cached_config_is_the_parsed_one(
    cache: Path, cfg_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed = config.load(cfg_path)
    first = configcache.load(cfg_path)  # parses, and keeps it
    assert first == parsed
    [entry] = entries(cache)
    assert entry.stat().st_mode & 0o777 == 0o600  # the config may hold a password
    assert cache.stat().st_mode & 0o777 == 0o700
    monkeypatch.setattr(config, "parse", _no_parsing)
    assert configcache.load(cfg_path) == parsed  # from the cache now: nothing parsed
    assert [s.name for s in configcache.load(cfg_path, ["s9"]).slices] == ["s9"]


def _no_parsing(*args: object, **kwargs: object) -> config.Config:
    raise AssertionError("parsed, though the cache holds the file's config")


def test_only_the_named_slices(cache: Path, cfg_path: str) -> None:
    for _ in range(2):  # a miss, then a hit: both narrowed the same way
        cfg = configcache.load(cfg_path, ["s7", "s500", "nobody"])
        assert [s.name for s in cfg.slices] == ["s7", "s500"]
        assert cfg.default_slice == config.load(cfg_path).default_slice


def test_a_changed_file_is_parsed_again(cache: Path, cfg_path: str, tmp_path: Path) -> None:
    configcache.load(cfg_path)
    Path(cfg_path).write_text(config_text(tmp_path, limit="5GB"))
    assert configcache.load(cfg_path, ["s1"]).slices[0].normal.limit_bytes == 5 * 10**9
    # A changed exempt file too, though the config's own bytes are the same.
    (tmp_path / "exempt.txt").write_text("198.51.100.0/24\n")
    assert [str(n) for n in configcache.load(cfg_path).exempt_prefixes] == ["198.51.100.0/24"]
    # And an exempt file that became unusable is the config's problem, as without a cache.
    (tmp_path / "exempt.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=r"exempt\.files"):
        configcache.load(cfg_path)


def test_an_invalid_config_is_refused_and_not_kept(cache: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(config_text(tmp_path, limit="lots", exempt=False))
    with pytest.raises(ConfigError, match=r"slice\[0\]\.normal\.limit"):
        configcache.load(str(path))
    assert entries(cache) == []


def test_the_machine_is_checked_every_time(
    cache: Path, cfg_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    configcache.load(cfg_path)
    # The interface went away: as config.load says, though the file is cached.
    monkeypatch.setattr(config.socket, "if_nametoindex", _no_interface)
    with pytest.raises(ConfigError, match="no such network interface: 'lo'"):
        configcache.load(cfg_path)


def _no_interface(name: str) -> int:
    raise OSError(19, "No such device")


def test_small_configs_are_not_cached(cache: Path, tmp_path: Path) -> None:
    path = tmp_path / "small.toml"
    path.write_text(config_text(tmp_path, slices=3, exempt=False))
    assert len(configcache.load(str(path)).slices) == 3
    assert entries(cache) == []


def test_a_corrupt_or_foreign_entry_is_not_used(cache: Path, cfg_path: str) -> None:
    want = configcache.load(cfg_path)
    [entry] = entries(cache)
    entry.write_bytes(b"\x80\x05not a pickle")
    assert configcache.load(cfg_path) == want  # parsed again, and kept again
    assert pickle.loads(entry.read_bytes())["format"] == configcache.FORMAT

    # A file others may write could hold any pickle: it is never unpickled.
    planted = {"format": configcache.FORMAT, "config": "planted"}
    entry.write_bytes(pickle.dumps(planted))
    entry.chmod(0o666)
    assert configcache.load(cfg_path) == want
    entry.chmod(0o600)
    cache.chmod(0o777)
    entry.write_bytes(pickle.dumps(planted))
    assert configcache.load(cfg_path) == want
    assert pickle.loads(entry.read_bytes()) == planted  # nor written into such a directory

    # A symlink in its place is not followed.
    cache.chmod(0o700)
    entry.unlink()
    target = cache.parent / "elsewhere.pickle"
    target.write_bytes(pickle.dumps(planted))
    entry.symlink_to(target)
    assert configcache.load(cfg_path) == want


def test_a_cache_that_cannot_be_written_is_only_slower(
    tmp_path: Path, cfg_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("BWBPF_CACHE_DIR", str(blocker / "cache"))  # under a regular file
    assert configcache.load(cfg_path) == config.load(cfg_path)


def test_other_code_means_another_entry(
    cache: Path, cfg_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    want = configcache.load(cfg_path)
    [entry] = entries(cache)
    before = entry.stat().st_mtime_ns
    monkeypatch.setattr(configcache, "__version__", "0.0.0-other")
    os.utime(entry, ns=(before - 10**9, before - 10**9))
    assert configcache.load(cfg_path) == want
    assert entry.stat().st_mtime_ns != before - 10**9  # parsed and written again
