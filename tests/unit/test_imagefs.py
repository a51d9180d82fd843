"""vm/imagefs.py: the image builder's path checks, on fake image roots (no debootstrap).

The case that broke `make vm-test` on fresh machines: the image's
``/lib/modules/R/build`` is an absolute link to ``/usr/src/linux-headers-R``; tested from
the host it was followed into the host's /usr/src, so the image passed or failed by what
the host had installed.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

IMAGEFS = Path(__file__).resolve().parents[2] / "vm" / "imagefs.py"
_spec = importlib.util.spec_from_file_location("imagefs", IMAGEFS)
assert _spec is not None and _spec.loader is not None
imagefs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(imagefs)

# A release no host has: the test must not depend on what this machine installed.
RELEASE = "6.1.0-999-bwbpftest-amd64"


def fake_image(root: Path, release: str = RELEASE, headers: bool = True) -> Path:
    """A root with a kernel, its initramfs and Debian's absolute ``build`` link."""
    (root / "boot").mkdir(parents=True)
    (root / "boot" / f"vmlinuz-{release}").write_bytes(b"kernel")
    (root / "boot" / f"initrd.img-{release}").write_bytes(b"initrd")
    modules = root / "lib" / "modules" / release
    modules.mkdir(parents=True)
    os.symlink(f"/usr/src/linux-headers-{release}", modules / "build")
    if headers:
        (root / "usr" / "src" / f"linux-headers-{release}" / "include").mkdir(parents=True)
    return root


def test_headers_found_through_an_absolute_link_the_host_lacks(tmp_path: Path) -> None:
    root = fake_image(tmp_path / "img")
    assert not os.path.exists(f"/usr/src/linux-headers-{RELEASE}")
    assert imagefs.kernel(str(root)) == RELEASE


def test_headers_on_the_host_only_do_not_count(tmp_path: Path) -> None:
    # The image's link points at a path that exists on the host, not in the image.
    host_headers = tmp_path / "host" / "linux-headers"
    (host_headers / "include").mkdir(parents=True)
    root = fake_image(tmp_path / "img", headers=False)
    build = root / "lib" / "modules" / RELEASE / "build"
    build.unlink()
    os.symlink(str(host_headers), build)
    assert os.path.exists(build / "include")  # as the old check saw it
    with pytest.raises(imagefs.ImageError, match=f"no headers for {RELEASE}"):
        imagefs.kernel(str(root))


def test_missing_headers_name_the_package(tmp_path: Path) -> None:
    root = fake_image(tmp_path / "img", headers=False)
    with pytest.raises(imagefs.ImageError, match=f"linux-headers-{RELEASE}"):
        imagefs.kernel(str(root))


def test_missing_initramfs(tmp_path: Path) -> None:
    root = fake_image(tmp_path / "img")
    (root / "boot" / f"initrd.img-{RELEASE}").unlink()
    with pytest.raises(imagefs.ImageError, match="no initramfs"):
        imagefs.kernel(str(root))


def test_no_kernel(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    with pytest.raises(imagefs.ImageError, match="no kernel"):
        imagefs.kernel(str(tmp_path / "img"))


def test_newest_kernel_in_version_order(tmp_path: Path) -> None:
    root = fake_image(tmp_path / "img", release="6.1.0-9-amd64")
    (root / "boot" / "vmlinuz-6.1.0-10-amd64").write_bytes(b"k")
    with pytest.raises(imagefs.ImageError, match=r"6\.1\.0-10-amd64"):
        imagefs.kernel(str(root))  # the newest (10, not 9) is chosen, and it is incomplete


@pytest.mark.parametrize(
    ("link", "target", "expected"),
    [
        pytest.param("a", "/b", "b", id="absolute-rerooted"),
        pytest.param("d/a", "../b", "b", id="relative"),
        pytest.param("a", "/../../../b", "b", id="dotdot-clamped-at-root"),
        pytest.param("a", "/c/../b", "b", id="dotdot-inside"),
        pytest.param("d/a", "/d/e", "d/e", id="missing-target-kept"),
    ],
)
def test_resolve(tmp_path: Path, link: str, target: str, expected: str) -> None:
    root = tmp_path / "img"
    (root / "d").mkdir(parents=True)
    (root / "c").mkdir()
    os.symlink(target, root / link)
    assert imagefs.resolve(str(root), "/" + link) == str((root / expected).resolve(strict=False))


def test_dotdot_never_leaves_the_root(tmp_path: Path) -> None:
    root = tmp_path / "img"
    root.mkdir()
    assert imagefs.resolve(str(root), "/../../etc/passwd") == str(root / "etc" / "passwd")


def test_link_loop_is_an_error(tmp_path: Path) -> None:
    root = tmp_path / "img"
    root.mkdir()
    os.symlink("/b", root / "a")
    os.symlink("/a", root / "b")
    with pytest.raises(imagefs.ImageError, match="too many levels"):
        imagefs.resolve(str(root), "/a/x")


def test_write_through_absolute_links_stays_in_the_image(tmp_path: Path) -> None:
    host_file = tmp_path / "host-etc-hostname"
    host_file.write_text("host\n")
    root = tmp_path / "img"
    (root / "etc").mkdir(parents=True)
    (root / "real").mkdir()
    # The final component a link to a host path, and a parent directory an absolute link.
    os.symlink(str(host_file), root / "etc" / "hostname")
    os.symlink("/real", root / "conf")
    imagefs.write(str(root), "/etc/hostname", b"image\n", 0o644)
    imagefs.write(str(root), "/conf/pip.conf", b"[global]\n", 0o600)
    assert host_file.read_text() == "host\n"
    assert not (root / "etc" / "hostname").is_symlink()
    assert (root / "etc" / "hostname").read_text() == "image\n"
    assert (root / "real" / "pip.conf").read_text() == "[global]\n"
    assert (root / "real" / "pip.conf").stat().st_mode & 0o777 == 0o600


def test_write_needs_the_parent_in_the_image(tmp_path: Path) -> None:
    root = tmp_path / "img"
    root.mkdir()
    with pytest.raises(imagefs.ImageError, match="no directory /nope"):
        imagefs.write(str(root), "/nope/file", b"x", 0o644)


def run_cli(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(IMAGEFS), *args],
        input=stdin.decode(),
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_cli_as_the_build_script_calls_it(tmp_path: Path) -> None:
    root = fake_image(tmp_path / "img")
    ok = run_cli("kernel", str(root))
    assert (ok.returncode, ok.stdout.strip()) == (0, RELEASE)
    assert run_cli("exists", str(root), f"/lib/modules/{RELEASE}/build/include").returncode == 0
    assert run_cli("exists", str(root), "/nope").returncode == 1
    assert run_cli("write", str(root), "/boot/x", "640", stdin=b"y").returncode == 0
    assert (root / "boot" / "x").read_text() == "y"
    path = run_cli("path", str(root), f"/lib/modules/{RELEASE}/build")
    assert path.stdout.strip() == str(root / "usr" / "src" / f"linux-headers-{RELEASE}")


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    root = fake_image(tmp_path / "img", headers=False)
    bad = run_cli("kernel", str(root))
    assert bad.returncode == 1
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("vm-test: no headers")
    assert run_cli("write", str(root), "/boot/x", "rw").returncode == 1  # a mode not octal
    assert run_cli("frobnicate").returncode == 2


@pytest.mark.parametrize("script", ["build-image.sh", "run.sh", "guest-run.sh", "lib.sh"])
def test_vm_scripts_pass_shellcheck(script: str) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian package: shellcheck)")
    path = IMAGEFS.parent / script
    proc = subprocess.run(
        [shellcheck, "-x", "-s", "bash", "-S", "warning", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=IMAGEFS.parent,
    )
    assert proc.returncode == 0, proc.stdout
