"""Configuration: defaults, overrides, and every problem named by file and key."""

from __future__ import annotations

import dataclasses
import os
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
    # Equal quotas are one object each (the daemon's memory at 10,000 slices).
    assert len({id(s.normal) for s in cfg.all_slices()}) == 1
    assert len({id(s.exempt) for s in cfg.all_slices()}) == 1


def test_equal_quotas_are_shared_and_others_are_not() -> None:
    cfg = config.parse(BASE + '[[slice]]\nname = "carol"\nid = 7\nmatch = { mark = 7 }\n')
    alice, bob, carol = cfg.slices
    assert bob.normal is carol.normal and bob.normal == cfg.default_slice.normal
    assert alice.normal is not bob.normal and bob.exempt is not carol.exempt
    assert carol.exempt is cfg.default_slice.exempt


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
    every = config.parse(BASE + '[metrics]\ntextfile = "/t.prom"\ntextfile_interval = "15s"\n')
    assert every.metrics is not None and every.metrics.textfile_interval_s == 15
    for bad, why in (
        ('"0s"', "must be at least 1s"),
        ('"2d"', "at most 86400s"),
        ("15", "metrics.textfile_interval"),
        ('"soon"', "metrics.textfile_interval"),
    ):
        found = problems(BASE + f"[metrics]\ntextfile_interval = {bad}\n")
        assert len(found) == 1 and why in found[0] and "metrics.textfile_interval" in found[0], (
            bad,
            found,
        )
    found = problems(BASE + '[metrics]\nlisten = "localhost"\ntextfile = "x.prom"\n')
    assert found == [
        "bw.toml: metrics.listen: must be HOST:PORT, not 'localhost'",
        "bw.toml: metrics.textfile: must be an absolute path, not 'x.prom'",
    ]


def test_trailing_newline_in_a_name_is_refused() -> None:
    assert problems(BASE.replace('name = "bob"', 'name = "bob\\n"'))[0].startswith(
        "bw.toml: slice[1].name:"
    )


# -- hostile values: each refused with one problem naming its key -----------------------------

# BASE again, with dotted keys instead of inline tables, so that any one key can be replaced.
DOTTED = {
    "node": [
        'interface = "lo"',
        'line_rate = "1gbit"',
        'node_cap = "100mbit"',
        'tick = "5s"',
        'state_dir = "/var/lib/bwbpf"',
        'bpffs = "/sys/fs/bpf"',
    ],
    "quota": ['policy = "smooth"', 'period = "1d"', 'at = "00:00"', 'timezone = "UTC"'],
    "defaults": ["share = 2", 'normal.limit = "5.4GB"', "normal.threshold = 0.8"],
    "exempt": ['prefixes = ["192.0.2.0/24"]', "files = []"],
    "notify": [
        'smtp = "localhost:25"',
        "starttls = false",
        'username = "u"',
        'password = "p"',
        'from = "bwbpf@example.org"',
        'operator = "ops@example.org"',
        'slice_address = "{slice}@example.org"',
    ],
    "metrics": ['listen = "127.0.0.1:9877"', 'textfile = "/var/lib/x.prom"'],
    "[slice]": [
        'name = "alice"',
        "id = 5",
        "share = 1",
        "match.mark = 5",
        'match.src = ["10.0.0.5/32"]',
        'normal.limit = "10GB"',
        'exempt.max_rate = "1gbit"',
    ],
}


def dotted(section: str | None = None, key: str | None = None, value: str | None = None) -> str:
    """DOTTED as TOML, with ``key`` (and any key below it) of ``section`` set to ``value``."""
    out = []
    for name, lines in DOTTED.items():
        if name == section:
            lines = [ln for ln in lines if ln.split(" = ")[0].split(".")[0 : key.count(".") + 1]
                     != key.split(".")]  # fmt: skip
            lines.append(f"{key} = {value}")
        out.append(f"[{name}]")
        out.extend(lines)
    return "\n".join(out) + "\n"


def test_dotted_is_valid() -> None:
    cfg = config.parse(dotted())
    assert cfg.slices[0].name == "alice" and cfg.notify is not None and cfg.metrics is not None


HOSTILE_TOML = {
    "true": "true",
    "nan": "nan",
    "inf": "-inf",
    "negative": "-1",
    "u64-overflow": "99999999999999999999",
    "nested-array": "[[1]]",
    "table": "{ a = 1 }",
    "datetime": "1979-05-27T07:32:00Z",
    "nul": '"\\u0000"',
    "huge-text": '"' + "9" * 5000 + '"',
}
HOSTILE_KEYS = [
    ("node", "interface", "node.interface"),
    ("node", "line_rate", "node.line_rate"),
    ("node", "node_cap", "node.node_cap"),
    ("node", "tick", "node.tick"),
    ("node", "state_dir", "node.state_dir"),
    ("node", "bpffs", "node.bpffs"),
    ("quota", "policy", "quota.policy"),
    ("quota", "period", "quota.period"),
    ("quota", "at", "quota.at"),
    ("quota", "timezone", "quota.timezone"),
    ("quota", "weekday", "quota.weekday"),
    ("quota", "day", "quota.day"),
    ("defaults", "share", "defaults.share"),
    ("defaults", "normal", "defaults.normal"),
    ("defaults", "normal.limit", "defaults.normal.limit"),
    ("defaults", "normal.threshold", "defaults.normal.threshold"),
    ("defaults", "normal.min_rate", "defaults.normal.min_rate"),
    ("defaults", "normal.max_rate", "defaults.normal.max_rate"),
    ("defaults", "normal.avg_rate", "defaults.normal.avg_rate"),
    ("exempt", "prefixes", "exempt.prefixes[0]"),
    ("exempt", "files", "exempt.files[0]"),
    ("notify", "smtp", "notify.smtp"),
    ("notify", "starttls", "notify.starttls"),
    ("notify", "username", "notify.username"),
    ("notify", "password", "notify.password"),
    ("notify", "from", "notify.from"),
    ("notify", "operator", "notify.operator"),
    ("notify", "slice_address", "notify.slice_address"),
    ("metrics", "listen", "metrics.listen"),
    ("metrics", "textfile", "metrics.textfile"),
    ("metrics", "textfile_interval", "metrics.textfile_interval"),
    ("[slice]", "name", "slice[0].name"),
    ("[slice]", "id", "slice[0].id"),
    ("[slice]", "share", "slice[0].share"),
    ("[slice]", "match", "slice[0].match"),
    ("[slice]", "match.mark", "slice[0].match.mark"),
    ("[slice]", "match.uid", "slice[0].match.uid"),
    ("[slice]", "match.cgroup", "slice[0].match.cgroup"),
    ("[slice]", "match.src", "slice[0].match.src"),
    ("[slice]", "normal", "slice[0].normal"),
    ("[slice]", "normal.limit", "slice[0].normal.limit"),
    ("[slice]", "exempt.max_rate", "slice[0].exempt.max_rate"),
]
# The few combinations that are valid after all.
VALID = {
    ("notify.starttls", "true"),
    ("defaults.normal.threshold", "true"),
    ("notify.username", "huge-text"),
    ("notify.password", "huge-text"),
}


@pytest.mark.parametrize(
    ("section", "key", "named", "value"),
    [
        pytest.param(section, key, named, value, id=f"{named}={name}")
        for section, key, named in HOSTILE_KEYS
        for name, value in HOSTILE_TOML.items()
        if (named, name) not in VALID
    ],
)
def test_every_wrong_value_names_its_key(section: str, key: str, named: str, value: str) -> None:
    found = problems(dotted(section, key, value))
    assert any(p.startswith((f"bw.toml: {named}: ", f"bw.toml: {named}.")) for p in found), found
    assert all(len(p) < 400 for p in found), found  # named, not echoed


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        pytest.param(
            ('line_rate = "1gbit"', 'line_rate = "0bit"'), "node.line_rate", id="line-0bit"
        ),
        pytest.param(('node_cap = "100mbit"', 'node_cap = "0bit"'), "node.node_cap", id="cap-0bit"),
        pytest.param(('node_cap = "100mbit"', 'node_cap = "7bit"'), "node.node_cap", id="cap-7bit"),
        pytest.param(('tick = "5s"', 'tick = "0s"'), "node.tick", id="tick-0s"),
        pytest.param(('tick = "5s"', 'tick = "500ms"'), "node.tick", id="tick-500ms"),
        pytest.param(('tick = "5s"', 'tick = "0.5s"'), "node.tick", id="tick-half-second"),
        pytest.param(('tick = "5s"', 'tick = "2d"'), "node.tick", id="tick-2d"),
        pytest.param(
            ('line_rate = "1gbit"', 'line_rate = "1e35bit"'), "node.line_rate", id="rate-1e35"
        ),
        pytest.param(
            ('line_rate = "1gbit"', 'line_rate = "99999999999999999999gbit"'),
            "node.line_rate",
            id="rate-20-digits",
        ),
        pytest.param(('line_rate = "1gbit"', "line_rate = 1e400"), "node.line_rate", id="rate-inf"),
        pytest.param(
            ('limit = "10GB"', 'limit = "9223372036854775808B"'),
            "slice[0].normal.limit",
            id="size-2-63",
        ),
        pytest.param(('limit = "10GB"', 'limit = "0B"'), "slice[0].normal.limit", id="size-0"),
        pytest.param(
            ('period = "1d"', 'period = "366d"\n[default_slice]\nnormal.avg_rate = "3tbit"'),
            "default_slice.normal.avg_rate",
            id="avg-rate-times-period-overflows",
        ),
        pytest.param(('period = "1d"', 'period = "0s"'), "quota.period", id="period-0s"),
        pytest.param(('period = "1d"', 'period = "400d"'), "quota.period", id="period-400d"),
        pytest.param(
            ('tick = "5s"', 'tick = "5s"\nstate_dir = "var/lib"'), "node.state_dir", id="state-rel"
        ),
        pytest.param(('tick = "5s"', 'tick = "5s"\nbpffs = "bpf"'), "node.bpffs", id="bpffs-rel"),
        pytest.param(
            ('interface = "lo"', 'interface = "../../victim"'), "node.interface", id="if-dotdot"
        ),
        pytest.param(('interface = "lo"', 'interface = "a/b"'), "node.interface", id="if-slash"),
        pytest.param(('interface = "lo"', 'interface = ".."'), "node.interface", id="if-dots"),
        pytest.param(
            ('interface = "lo"', 'interface = "eth0123456789012"'), "node.interface", id="if-16"
        ),
        pytest.param(('interface = "lo"', 'interface = "eth 0"'), "node.interface", id="if-space"),
        pytest.param(('name = "bob"', 'name = "a..b"'), "slice[1].name", id="name-double-dot"),
        pytest.param(('name = "bob"', 'name = ".a"'), "slice[1].name", id="name-leading-dot"),
        pytest.param(('name = "bob"', 'name = "a."'), "slice[1].name", id="name-trailing-dot"),
        pytest.param(('name = "bob"', 'name = "a-"'), "slice[1].name", id="name-trailing-dash"),
        pytest.param(('name = "bob"', 'name = "-a"'), "slice[1].name", id="name-leading-dash"),
        pytest.param(('name = "bob"', 'name = "a-.b"'), "slice[1].name", id="name-dash-dot"),
        pytest.param(('name = "bob"', f'name = "{"a" * 64}"'), "slice[1].name", id="name-64"),
        pytest.param(('name = "bob"', 'name = "bob@x"'), "slice[1].name", id="name-at"),
        pytest.param(
            ('cgroup = "/bob"', 'cgroup = "/bo\\u0000b"'), "slice[1].match.cgroup", id="cgroup-nul"
        ),
        pytest.param(
            ("[exempt]", "[exempt]\nfiles = [5]"), "exempt.files[0]", id="exempt-file-not-string"
        ),
        pytest.param(
            ("[[slice]]", '[notify]\nsmtp = "localhost:\u00b2"\n[[slice]]'),
            "notify.smtp",
            id="smtp-port-superscript",
        ),
        pytest.param(
            ("[[slice]]", '[metrics]\nlisten = "localhost:\u0661\u0662"\n[[slice]]'),
            "metrics.listen",
            id="listen-port-arabic-digits",
        ),
        pytest.param(
            ("[[slice]]", '[notify]\noperator = "a..b@example.org"\n[[slice]]'),
            "notify.operator",
            id="operator-double-dot",
        ),
        pytest.param(
            ("[[slice]]", '[notify]\nslice_address = "{slice}.@example.org"\n[[slice]]'),
            "notify.slice_address",
            id="slice-address-trailing-dot",
        ),
        pytest.param(
            ('normal = { limit = "5.4GB", threshold = 0.8 }', "normal = 5"),
            "defaults.normal",
            id="defaults-int",
        ),
        pytest.param(
            ("[[slice]]", '[notify]\nsmtp = "' + "h" * 300 + '"\n[[slice]]'),
            "notify.smtp",
            id="smtp-host-too-long",
        ),
    ],
)
def test_hostile_value_is_refused_naming_its_key(edit: tuple[str, str], expected: str) -> None:
    text = BASE.replace(*edit, 1)
    assert text != BASE
    found = problems(text)
    assert any(p.startswith(f"bw.toml: {expected}: ") for p in found), found


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("a.b", id="single-dot"),
        pytest.param("a_", id="trailing-underscore"),
        pytest.param("a-b.c_d", id="mixed"),
        pytest.param("a" * 63, id="63-chars"),
    ],
)
def test_safe_slice_names_are_accepted(name: str) -> None:
    cfg = config.parse(BASE.replace('name = "bob"', f'name = "{name}"'))
    assert cfg.slices[1].name == name


def test_slice_names_the_config_accepts_can_be_mailed() -> None:
    from bwbpf import notify

    text = BASE.replace('name = "bob"', 'name = "b.o_b-1"') + (
        '[notify]\noperator = "ops@example.org"\nslice_address = "{slice}@example.org"\n'
    )
    cfg = config.parse(text)
    assert cfg.notify is not None
    for s in cfg.slices:
        assert notify.recipients(cfg.notify, s.name)[0] == f"{s.name}@example.org"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("a = " + "[" * 100_000, id="deep-arrays"),
        pytest.param("a = " + "{b = " * 100_000, id="deep-tables"),
    ],
)
def test_deeply_nested_toml(text: str) -> None:
    assert problems(text, "x.toml") == ["x.toml: not valid TOML: nested too deeply"]


def test_toml_integer_too_long_to_convert() -> None:
    found = problems("a = " + "9" * 5000, "x.toml")
    assert len(found) == 1 and found[0].startswith("x.toml: not valid TOML: ")


def test_pin_dir_never_leaves_bpffs() -> None:
    cfg = config.parse(BASE)
    bad = dataclasses.replace(cfg, interface="../../victim")
    # Not a ConfigError: config.parse never builds such a config (the name is refused).
    with pytest.raises(ValueError, match=r"node\.interface"):
        _ = bad.pin_dir


def test_problems_are_capped() -> None:
    many = "\n".join(
        f'[[slice]]\nname = "s{i}"\nid = {i + 1}\nmatch = {{ mark = {i + 1} }}\nshare = 0'
        for i in range(500)
    )
    found = problems('[node]\ninterface = "lo"\n' + many)
    assert len(found) == config.MAX_PROBLEMS + 1
    assert found[-1] == "bw.toml: ... and 400 more problems"


# -- files the config names -----------------------------------------------------------------


def exempt_problems(tmp_path: Path, name: str) -> list[str]:
    (tmp_path / "bw.toml").write_text(
        BASE.replace("[exempt]", f'[exempt]\nfiles = ["{name}"]'), encoding="utf-8"
    )
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path / "bw.toml")
    return info.value.problems


def test_binary_exempt_file(tmp_path: Path) -> None:
    (tmp_path / "bin").write_bytes(b"\x7fELF\x02\x01\x01\xff\xfe\x00")
    assert exempt_problems(tmp_path, "bin") == [
        f"{tmp_path}/bw.toml: exempt.files[0]: {tmp_path}/bin: not UTF-8 text (at byte 7)"
    ]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda p: os.mkfifo(p), "is a FIFO, not a regular file", id="fifo"),
        pytest.param(lambda p: p.mkdir(), "is a directory, not a regular file", id="directory"),
        pytest.param(
            lambda p: p.symlink_to("/dev/zero"),
            "is a character device, not a regular file",
            id="device",
        ),
        pytest.param(
            lambda p: p.symlink_to(p.parent / "nowhere"),
            "cannot read: No such file or directory",
            id="dangling-link",
        ),
    ],
)
def test_exempt_file_that_is_not_a_regular_file(tmp_path: Path, make, message: str) -> None:
    make(tmp_path / "special")
    assert exempt_problems(tmp_path, "special") == [
        f"{tmp_path}/bw.toml: exempt.files[0]: {tmp_path}/special: {message}"
    ]


def test_huge_exempt_file_is_not_read(tmp_path: Path) -> None:
    with open(tmp_path / "huge", "wb") as f:
        f.truncate(config.MAX_FILE_BYTES + 1)  # sparse: costs no disk
    found = exempt_problems(tmp_path, "huge")
    assert found == [
        f"{tmp_path}/bw.toml: exempt.files[0]: {tmp_path}/huge: is {config.MAX_FILE_BYTES + 1}"
        f" bytes; at most {config.MAX_FILE_BYTES} are read"
    ]


def test_a_million_bad_prefixes_are_summed_up(tmp_path: Path) -> None:
    (tmp_path / "bad").write_text("".join(f"bad{i}\n" for i in range(1_000_000)))
    found = exempt_problems(tmp_path, "bad")
    assert len(found) == config.MAX_FILE_PROBLEMS + 1
    assert found[0].startswith(f"{tmp_path}/bw.toml: exempt.files[0] ({tmp_path}/bad:1): ")
    assert found[-1] == (
        f"{tmp_path}/bw.toml: exempt.files[0]: ... and"
        f" {1_000_000 - config.MAX_FILE_PROBLEMS} more problems in {tmp_path}/bad"
    )


def test_too_many_exempt_prefixes_in_a_file(tmp_path: Path) -> None:
    n = config.limits.MAX_PREFIXES + 10
    (tmp_path / "many").write_text("".join(f"10.{i >> 8}.{i & 255}.0/24\n" for i in range(n)))
    found = exempt_problems(tmp_path, "many")
    assert found == [f"{tmp_path}/bw.toml: exempt: {n + 1} IPv4 prefixes; at most 16384"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda p: os.mkfifo(p), "is a FIFO, not a regular file", id="fifo"),
        pytest.param(lambda p: p.mkdir(), "is a directory, not a regular file", id="directory"),
        pytest.param(
            lambda p: p.write_bytes(b"\xff\xfe[node]"), "not UTF-8 text (at byte 0)", id="binary"
        ),
    ],
)
def test_config_file_that_cannot_be_used(tmp_path: Path, make, message: str) -> None:
    make(tmp_path / "bw.toml")
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path / "bw.toml")
    assert info.value.problems == [f"{tmp_path}/bw.toml: {message}"]


# -- warnings: valid, but surprising ----------------------------------------------------------


def test_overlapping_source_prefixes_warn_which_slice_wins() -> None:
    text = BASE.replace("match = { mark = 5 }", 'match = { mark = 5, src = ["10.0.0.0/8"] }')
    cfg = config.parse(text, "bw.toml")
    assert [w for w in cfg.warnings if "match.src" in w] == [
        "bw.toml: slice[1].match.src: 10.0.0.5/32 (bob) is inside 10.0.0.0/8 of slice[0]"
        " (alice): the longer prefix wins, so traffic from 10.0.0.5/32 counts to bob"
    ]


def test_disjoint_source_prefixes_do_not_warn() -> None:
    text = BASE.replace("match = { mark = 5 }", 'match = { mark = 5, src = ["10.1.0.0/16"] }')
    assert not [w for w in config.parse(text).warnings if "match.src" in w]


def test_missing_cgroup_warns(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "present").mkdir()
    monkeypatch.setattr(config, "cgroup2_mount", lambda: str(tmp_path))
    text = BASE.replace('cgroup = "/bob"', 'cgroup = ["/present", "/absent"]')
    cfg = config.parse(text, "bw.toml")
    found = [w for w in cfg.warnings if "cgroup" in w]
    assert len(found) == 1, found
    assert found[0].startswith(
        f"bw.toml: slice[1].match.cgroup: /absent does not exist yet ({tmp_path}/absent):"
        " its traffic will go to the default slice"
    )


def test_cgroup_deeper_than_the_classifier_walks_is_refused() -> None:
    deep = "/" + "/".join(["x"] * (config.limits.MAX_CGROUP_DEPTH + 1))
    found = problems(BASE.replace('cgroup = "/bob"', f'cgroup = "{deep}"'))
    assert [p for p in found if "cgroup" in p] == [
        f"bw.toml: slice[1].match.cgroup: '{deep}' is 17 levels deep; the classifier walks"
        " at most 16"
    ]
