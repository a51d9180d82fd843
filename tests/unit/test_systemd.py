"""deploy/systemd/bwbpf.service: systemd accepts it, it keeps its hardening, and the config
that `make install` puts beside it agrees with it. No root, no running systemd needed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bwbpf import config
from bwbpf.units import parse_duration

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "deploy" / "systemd" / "bwbpf.service"
INSTALLED_CONFIG = REPO / "deploy" / "bwbpf.toml"
CHECK_SERVICE = REPO / "tests" / "systemd" / "check_service.sh"
# The path the unit names and `make install` rewrites to $(PREFIX)/bin/bwbpf.
INSTALLED_BIN = "/usr/local/bin/bwbpf"


def directives(text: str) -> dict[str, dict[str, list[str]]]:
    """``{section: {key: [values in order]}}``; keys may repeat (ExecReload=)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


SERVICE = directives(UNIT.read_text())["Service"]


def one(key: str) -> str:
    values = SERVICE.get(key, [])
    assert len(values) == 1, f"{key}= should appear once in {UNIT.name}, found {values}"
    return values[0]


@pytest.fixture
def verifiable_unit(tmp_path: Path) -> Path:
    """A copy of the unit whose commands exist on this machine.

    `systemd-analyze verify` fails when ExecStart= names a missing executable, and
    /usr/local/bin/bwbpf exists only after `make install`; the venv's bwbpf (the same
    program) stands in for it. Everything else is the file as shipped.
    """
    bwbpf = Path(sys.executable).parent / "bwbpf"
    if not bwbpf.exists():
        pytest.skip(f"{bwbpf} is missing: run `make venv`")
    copy = tmp_path / "bwbpf.service"
    copy.write_text(UNIT.read_text().replace(INSTALLED_BIN, str(bwbpf)))
    return copy


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (Debian package: systemd)")
    return path


def test_systemd_analyze_verify(verifiable_unit: Path) -> None:
    proc = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", str(verifiable_unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 on an unknown or misspelt key and only warns: read the warnings too
    # (ignoring any about other units installed on this machine).
    ours = [line for line in proc.stderr.splitlines() if verifiable_unit.name in line]
    assert proc.returncode == 0, proc.stderr
    assert ours == []


def test_exposure_stays_low(verifiable_unit: Path) -> None:
    """`systemd-analyze security` scores the sandbox 0 (locked) .. 10 (none); 2.8 when
    written. Loosening it past 3.0 should be a decision, not an accident."""
    tool = systemd_analyze()
    proc = subprocess.run(
        [tool, "security", "--offline=true", "--threshold=30", str(verifiable_unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if "offline" in proc.stderr and "unrecognized" in proc.stderr:
        pytest.skip("systemd-analyze security --offline needs systemd 250 or later")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr


def test_service_type_reload_restart_watchdog() -> None:
    assert one("Type") == "notify"
    assert one("Restart") == "on-failure"
    assert "/bin/kill -HUP $MAINPID" in SERVICE["ExecReload"]
    assert parse_duration(one("WatchdogSec")) >= 30
    start = one("ExecStart")
    assert start.startswith(INSTALLED_BIN + " ")
    assert " run " in start
    assert start.endswith("--config /etc/bwbpf/bwbpf.toml")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        # Off on purpose: with it, systemd 252 keeps /sys/fs/bpf read-only (make vm-test).
        ("ProtectKernelTunables", "no"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("StateDirectory", "bwbpf"),
        ("ConfigurationDirectory", "bwbpf"),
    ],
    ids=lambda v: str(v),
)
def test_hardening(key: str, value: str) -> None:
    assert one(key) == value


def test_writable_paths_are_bpffs_and_the_textfile_directory() -> None:
    # With ProtectSystem=strict the state directory is writable through StateDirectory=;
    # [metrics] textfile lives in node_exporter's directory (upstream's or Debian's).
    assert one("ReadWritePaths").split() == [
        "/sys/fs/bpf",
        "-/var/lib/node_exporter/textfile_collector",
        "-/var/lib/prometheus/node-exporter",
    ]


def test_capabilities_are_the_measured_minimum() -> None:
    """CAP_NET_ADMIN for tc, CAP_SYS_ADMIN for bcc reopening pinned maps by id (see the
    comments in the unit for the measurements). Adding one should come with a reason."""
    assert set(one("CapabilityBoundingSet").split()) == {"CAP_NET_ADMIN", "CAP_SYS_ADMIN"}
    assert set(one("AmbientCapabilities").split()) <= {"CAP_NET_ADMIN", "CAP_SYS_ADMIN"}


def test_kernel_headers_stay_visible() -> None:
    # ProtectKernelModules= hides /lib/modules, where bcc finds the kernel headers.
    assert SERVICE.get("ProtectKernelModules", ["no"]) == ["no"]


def test_no_mount_syscalls() -> None:
    # CAP_SYS_ADMIN could otherwise remount what ProtectSystem= made read-only.
    deny = one("SystemCallFilter")
    assert deny.startswith("~")
    assert "@mount" in deny[1:].split()


def test_installed_config_fits_the_unit() -> None:
    """deploy/bwbpf.toml is valid, keeps its state where StateDirectory= allows writing,
    and ticks (so pets the watchdog) well within WatchdogSec."""
    cfg = config.load(INSTALLED_CONFIG, check_interface=False)
    assert cfg.state_dir == "/var/lib/" + one("StateDirectory")
    assert cfg.bpffs_dir == one("ReadWritePaths").split()[0]
    assert cfg.tick_s * 3 <= parse_duration(one("WatchdogSec"))
    # As installed it caps nobody: no slices, and the default slice's budgets (limit, and
    # avg_rate for the average policy) are out of any node's reach.
    assert list(cfg.slices) == []
    (default,) = cfg.all_slices()
    for dclass in (0, 1):
        quota = default.quota(dclass)
        assert quota.limit_bytes >= 10**15
        assert quota.avg_rate_bps >= quota.max_rate_bps


@pytest.mark.parametrize(
    "script",
    [CHECK_SERVICE, CHECK_SERVICE.with_name("check_upgrade.sh"), CHECK_SERVICE.with_name("lib.sh")],
    ids=lambda p: p.name,
)
def test_service_check_scripts_pass_shellcheck(script: Path) -> None:
    bash = shutil.which("bash")
    assert bash is not None
    subprocess.run([bash, "-n", str(script)], check=True, timeout=30)
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian package: shellcheck)")
    # -x from the repository: the checks source tests/systemd/lib.sh by that path.
    proc = subprocess.run(
        [shellcheck, "-x", str(script.relative_to(REPO))],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout
