"""The Debian package (debian/, `make deb`) agrees with the rest of the repository: one
version, the build tools that setup-host.sh installs, Depends the vm-test image can satisfy
offline, the files it installs, a manual page that names every command, and where the
installed code finds its BPF sources and what it says without kernel headers. No root, no
Debian tools needed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bwbpf import __version__, datapath
from bwbpf.cli import main

REPO = Path(__file__).resolve().parents[2]
DEBIAN = REPO / "debian"


def shell_list(name: str) -> set[str]:
    """A NAME="a b c" line of scripts/setup-host.sh, as a set."""
    text = (REPO / "scripts" / "setup-host.sh").read_text()
    match = re.search(rf'^{name}="([^"]*)"$', text, re.M)
    assert match, f"no {name}= line in scripts/setup-host.sh"
    return set(match.group(1).split())


def control_field(field: str, paragraph: int) -> list[str]:
    """The package names of a relationship field of debian/control's paragraph (0: source),
    without versions, alternatives split, substitution variables left out."""
    paragraphs = (DEBIAN / "control").read_text().split("\n\n")
    lines = [ln for ln in paragraphs[paragraph].splitlines() if not ln.startswith("#")]
    text = "\n".join(lines)
    match = re.search(rf"^{field}:(.*(?:\n[ \t].*)*)", text, re.M)
    assert match, f"no {field} in paragraph {paragraph} of debian/control"
    names = []
    for part in re.split(r"[,|]", match.group(1)):
        name = re.sub(r"\(.*?\)|\[.*?\]", "", part).strip()
        if name and not name.startswith("${"):
            names.append(name)
    return names


def test_changelog_is_at_the_version() -> None:
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    match = re.match(r"bwbpf \(([^)]+)\) ", first)
    assert match, first
    assert match.group(1) == __version__


def test_build_tools_are_host_packages() -> None:
    host = shell_list("HOST_PACKAGES")
    needed = {
        "debhelper" if n == "debhelper-compat" else n for n in control_field("Build-Depends", 0)
    }
    assert needed | {"lintian", "dpkg-dev"} <= host
    # The image gets PACKAGES (vm/lib.sh); the build tools stay on the host.
    assert not host & shell_list("PACKAGES")


def test_depends_are_in_the_vm_image() -> None:
    """The guest installs the package with no network: every Depends and Recommends (the
    amd64 headers) must already be in the image."""
    image = shell_list("PACKAGES") | {
        line.split("#")[0].strip()
        for line in (REPO / "vm" / "packages.txt").read_text().splitlines()
        if line.split("#")[0].strip()
    }
    depends = control_field("Depends", 1)
    assert {"python3-bpfcc", "python3-click", "iproute2"} <= set(depends)
    assert set(depends) <= image
    assert "linux-headers-amd64" in control_field("Recommends", 1)
    assert "linux-headers-amd64" in image


def test_installed_files_exist() -> None:
    for line in (DEBIAN / "bwbpf.install").read_text().splitlines():
        source, dest = line.split()
        assert list(REPO.glob(source)), f"debian/bwbpf.install: nothing matches {source}"
        assert not dest.startswith("/")
    for name in ("bwbpf.docs", "bwbpf.manpages"):
        for line in (DEBIAN / name).read_text().split():
            assert (REPO / line).is_file(), f"debian/{name}: {line} is missing"


def test_unit_path_rewrite_matches_the_unit() -> None:
    """debian/rules rewrites the path `make install`'s sed rewrites too; the unit must name it."""
    rules = (DEBIAN / "rules").read_text()
    assert "s|/usr/local/bin/bwbpf|/usr/bin/bwbpf|g" in rules
    unit = (REPO / "deploy" / "systemd" / "bwbpf.service").read_text()
    assert "ExecStart=/usr/local/bin/bwbpf " in unit
    assert "dh_installsystemd --no-enable" in rules


def test_purge_removes_config_and_state() -> None:
    postrm = (DEBIAN / "bwbpf.postrm").read_text()
    assert re.search(r'if \[ "\$1" = purge \]; then\n\s+rm -rf /etc/bwbpf /var/lib/bwbpf', postrm)
    assert "#DEBHELPER#" in postrm


def test_manual_page_names_every_command() -> None:
    page = (REPO / "deploy" / "bwbpf.8").read_text()
    for command in main.commands:
        assert f"\n.B {command}\n" in page, f"bwbpf(8) does not describe '{command}'"


def test_debian_bpf_sources_come_first(tmp_path: Path) -> None:
    package = tmp_path / "usr" / "lib" / "python3" / "dist-packages" / "bwbpf"
    package.mkdir(parents=True)
    shipped = tmp_path / "usr" / "share" / "bwbpf" / "bpf"
    shipped.mkdir(parents=True)
    (shipped / "egress.c").write_text("")
    assert datapath.install_prefix(package) == tmp_path / "usr"
    dirs = datapath.bpf_source_dirs(package)
    assert dirs[:2] == [package.parent / "bpf", shipped]
    assert dirs[2:] == list(datapath.SHARED_BPF_DIRS)
    assert datapath.bpf_source_dir(package) == shipped


def test_source_tree_and_venv_lookups(tmp_path: Path) -> None:
    venv = tmp_path / "opt" / "bwbpf" / "lib" / "python3.11" / "site-packages" / "bwbpf"
    assert (
        datapath.bpf_source_dirs(venv)[1] == tmp_path / "opt" / "bwbpf" / "share" / "bwbpf" / "bpf"
    )
    # This checkout: bpf/ beside the package.
    assert datapath.bpf_source_dir() == REPO / "bpf"


def test_missing_bpf_sources_name_every_place(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(datapath, "SHARED_BPF_DIRS", (tmp_path / "nowhere",))
    with pytest.raises(datapath.Error, match=r"looked in .*nowhere"):
        datapath.bpf_source_dir(tmp_path / "src" / "bwbpf")


def test_headers_found_or_named(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(datapath, "KHEADERS", str(tmp_path / "kheaders.tar.xz"))
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(tmp_path))
    problem = datapath.kernel_headers_problem("6.1.0-28-amd64")
    assert problem == (
        f"no kernel headers for bcc in {tmp_path}: apt-get install linux-headers-6.1.0-28-amd64"
        " (or linux-headers-amd64, which follows the newest kernel: then boot that kernel)"
    )
    (tmp_path / "include").mkdir()
    assert datapath.kernel_headers_problem("6.1.0-28-amd64") is None


def test_headers_of_a_kernel_module_archive(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BCC_KERNEL_SOURCE", str(tmp_path))
    kheaders = tmp_path / "kheaders.tar.xz"
    kheaders.write_bytes(b"")
    monkeypatch.setattr(datapath, "KHEADERS", str(kheaders))
    assert datapath.kernel_headers_problem("6.18.0-custom") is None


@pytest.mark.parametrize(
    ("release", "metapackage"),
    [
        ("6.1.0-28-amd64", "amd64"),
        ("6.1.0-28-cloud-amd64", "cloud-amd64"),
        ("6.1.0-9-arm64", "arm64"),
    ],
)
def test_headers_advice_for_debian_kernels(release: str, metapackage: str) -> None:
    advice = datapath.headers_advice(release)
    assert advice.startswith(f"apt-get install linux-headers-{release} ")
    assert f"linux-headers-{metapackage}," in advice


def test_headers_advice_for_other_kernels() -> None:
    assert datapath.headers_advice("6.18.44-fc-v1147") == (
        "apt-get install linux-headers-6.18.44-fc-v1147, or your kernel's development package"
    )


def test_build_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian package: shellcheck)")
    proc = subprocess.run(
        [shellcheck, "-x", "scripts/build-deb.sh"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout
