"""Configuration: defaults, overrides, and every problem named by file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bwbpf import config
from bwbpf.errors import ConfigError

BASE = """
[node]
interface = "lo"
line_rate = "1gbit"
node_cap = "100mbit"
tick = "5s"
[quota]
policy = "smooth"
period = "1d"
[defaults]
share = 2
normal = { limit = "5.4GB", threshold = 0.8 }
[exempt]
prefixes = ["192.0.2.0/24", "2001:db8::/32"]
[[slice]]
name = "alice"
id = 5
match = { mark = 5 }
normal = { limit = "10GB", max_rate = "20mbit" }
[[slice]]
name = "bob"
id = 6
match = { uid = 1001, src = ["10.0.0.5/32", "2001:db8::5/128"], cgroup = "/bob" }
exempt = { threshold = "1GB" }
"""


def problems(text: str, path: str = "bw.toml") -> list[str]:
    with pytest.raises(ConfigError) as info:
        config.parse(text, path)
    return info.value.problems


def test_defaults_and_overrides() -> None:
    cfg = config.parse(BASE)
    alice, bob = cfg.slices
    assert cfg.tick_s == 5 and cfg.node_cap_bps == 10**8
    assert alice.share == 2
    assert (alice.normal.limit_bytes, alice.normal.threshold_bytes) == (10**10, 8 * 10**9)
    assert alice.normal.max_rate_bps == 20 * 10**6
    assert bob.normal.max_rate_bps == 10**8  # the node cap when not set
    assert bob.exempt.threshold_bytes == 10**9
    assert bob.exempt.limit_bytes == 16_400_000_000
    assert bob.match.uids == (1001,) and len(bob.match.src) == 2
    assert cfg.default_slice.id == 0 and cfg.default_slice.name == "default"
    assert cfg.pin_dir == "/sys/fs/bpf/bwbpf/lo"


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        pytest.param(
            ("[quota]", "[quota]\ncolour = 1"),
            "bw.toml: quota.colour: unknown key",
            id="unknown-key",
        ),
        pytest.param(
            ('limit = "10GB"', 'limit = "10 parsecs"'),
            "bw.toml: slice[0].normal.limit: '10 parsecs': unknown size unit 'parsecs'",
            id="bad-unit",
        ),
        pytest.param(
            ("id = 6", "id = 5"), "bw.toml: slice[1].id: duplicate slice id 5", id="duplicate-id"
        ),
        pytest.param(
            ('name = "bob"', 'name = "alice"'),
            "bw.toml: slice[1].name: duplicate slice name 'alice'",
            id="duplicate-name",
        ),
        pytest.param(
            ("uid = 1001", "mark = 5"),
            "bw.toml: slice[1].match.mark: 5 already matches",
            id="duplicate-match",
        ),
        pytest.param(
            ('"192.0.2.0/24"', '"192.0.2.1/24"'),
            "bw.toml: exempt.prefixes[0]: invalid prefix '192.0.2.1/24'",
            id="host-bits-set",
        ),
        pytest.param(
            ('"2001:db8::/32"]', '"2001:db8::/32", "192.0.2.0/24"]'),
            "bw.toml: exempt.prefixes[2]: duplicate prefix 192.0.2.0/24",
            id="duplicate-prefix",
        ),
        pytest.param(
            ('max_rate = "20mbit"', 'max_rate = "20mbit", min_rate = "30mbit"'),
            "bw.toml: slice[0].normal.min_rate: 30000000 bit/s is above max_rate",
            id="min-above-max",
        ),
        pytest.param(
            ('interface = "lo"', 'interface = "nosuchif0"'),
            "bw.toml: node.interface: no such network interface: 'nosuchif0'",
            id="interface-missing",
        ),
        pytest.param(
            ("threshold = 0.8", "threshold = 1.5"),
            "bw.toml: defaults.normal.threshold: a fraction must be in (0, 1]",
            id="threshold-fraction",
        ),
        pytest.param(
            ("uid = 1001", "uid = 65534"), "bw.toml: slice[1].match.uid: 65534", id="overflow-uid"
        ),
        pytest.param(
            ('name = "bob"', 'name = "bob\\r\\nBcc: x@y"'),
            "bw.toml: slice[1].name:",
            id="header-injection-name",
        ),
        pytest.param(
            ('policy = "smooth"', 'policy = "greedy"'),
            "bw.toml: quota.policy: must be 'smooth' or 'average'",
            id="policy",
        ),
        pytest.param(
            ('cgroup = "/bob"', 'cgroup = "bob"'),
            "bw.toml: slice[1].match.cgroup: must be an absolute path",
            id="cgroup-relative",
        ),
    ],
)
def test_each_problem_named_by_file_and_key(edit: tuple[str, str], expected: str) -> None:
    text = BASE.replace(*edit, 1)
    assert text != BASE
    found = problems(text)
    assert any(p.startswith(expected) for p in found), found


def test_a_bad_default_is_reported_once() -> None:
    found = problems(BASE.replace("threshold = 0.8", "threshold = 1.5"))
    assert found == ["bw.toml: defaults.normal.threshold: a fraction must be in (0, 1], not 1.5"]


def test_every_problem_at_once() -> None:
    text = BASE.replace('tick = "5s"', 'tick = "soon"').replace("id = 6", "id = 5")
    found = problems(text)
    assert len(found) == 2
    assert found[0].startswith("bw.toml: node.tick:")
    assert found[1].startswith("bw.toml: slice[1].id:")


def test_too_many_slices() -> None:
    many = "\n".join(
        f'[[slice]]\nname = "s{i}"\nid = {i + 1}\nmatch = {{ mark = {i + 1} }}'
        for i in range(config.limits.MAX_SLICES + 1)
    )
    found = problems('[node]\ninterface = "lo"\n' + many)
    assert any("slices; at most" in p for p in found)


def test_ten_thousand_slices_load() -> None:
    many = "\n".join(
        f'[[slice]]\nname = "s{i}"\nid = {i + 1}\nmatch = {{ mark = {i + 1} }}'
        for i in range(10_000)
    )
    cfg = config.parse('[node]\ninterface = "lo"\n' + many)
    assert len(cfg.slices) == 10_000


def test_exempt_files(tmp_path: Path) -> None:
    (tmp_path / "i2.txt").write_text(
        "# research network\n198.51.100.0/24\n\n2001:db8:1::/48 # v6\n"
    )
    (tmp_path / "bw.toml").write_text(BASE.replace("[exempt]", '[exempt]\nfiles = ["i2.txt"]'))
    cfg = config.load(tmp_path / "bw.toml")
    assert [str(p) for p in cfg.exempt_prefixes] == [
        "192.0.2.0/24",
        "2001:db8::/32",
        "198.51.100.0/24",
        "2001:db8:1::/48",
    ]


def test_bad_line_in_exempt_file(tmp_path: Path) -> None:
    (tmp_path / "i2.txt").write_text("198.51.100.0/24\nnot-a-prefix\n")
    (tmp_path / "bw.toml").write_text(BASE.replace("[exempt]", '[exempt]\nfiles = ["i2.txt"]'))
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path / "bw.toml")
    assert info.value.problems == [
        f"{tmp_path}/bw.toml: exempt.files[0] ({tmp_path}/i2.txt:2): invalid prefix"
        " 'not-a-prefix': 'not-a-prefix' does not appear to be an IPv4 or IPv6 network"
    ]


def test_min_rate_clamped_to_a_quarter_of_the_node_cap() -> None:
    cfg = config.parse(BASE.replace('max_rate = "20mbit"', 'min_rate = "40mbit"'))
    assert cfg.slices[0].normal.min_rate_bps == 25 * 10**6
    assert any("clamped to 25%" in w for w in cfg.warnings)


def test_not_toml() -> None:
    assert problems("[node", "x.toml")[0].startswith("x.toml: not valid TOML")


def test_calendar_period() -> None:
    cfg = config.parse(
        BASE.replace(
            'period = "1d"', 'period = "monthly"\nday = 15\nat = "06:30"\ntimezone = "Europe/Paris"'
        )
    )
    assert cfg.period == config.Period("monthly", 0, 390, 0, 15, "Europe/Paris")


def test_metrics_section() -> None:
    cfg = config.parse(BASE + '[metrics]\ntextfile = "/var/lib/node_exporter/bwbpf.prom"\n')
    assert cfg.metrics == config.Metrics("127.0.0.1", 9877, "/var/lib/node_exporter/bwbpf.prom")
    assert config.parse(BASE).metrics is None
    off = config.parse(BASE + '[metrics]\nlisten = ""\n')
    assert off.metrics == config.Metrics(None, 0, None)
    found = problems(BASE + '[metrics]\nlisten = "localhost"\ntextfile = "x.prom"\n')
    assert found == [
        "bw.toml: metrics.listen: must be HOST:PORT, not 'localhost'",
        "bw.toml: metrics.textfile: must be an absolute path, not 'x.prom'",
    ]


def test_trailing_newline_in_a_name_is_refused() -> None:
    assert problems(BASE.replace('name = "bob"', 'name = "bob\\n"'))[0].startswith(
        "bw.toml: slice[1].name:"
    )
