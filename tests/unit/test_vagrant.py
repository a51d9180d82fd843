"""vagrant/Vagrantfile: Vagrant accepts it, and it provisions the way the README says."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VAGRANT_DIR = REPO / "vagrant"
VAGRANTFILE = VAGRANT_DIR / "Vagrantfile"


def test_vagrant_validate(tmp_path: Path) -> None:
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.skip(
            "vagrant is not installed (Debian: apt-get install --no-install-recommends"
            " vagrant; ~19 MB to download, ~100 MB with its Ruby)"
        )
    env = {
        **os.environ,
        # Nothing written to ~/.vagrant.d or vagrant/.vagrant; no network check.
        "VAGRANT_HOME": str(tmp_path / "home"),
        "VAGRANT_DOTFILE_PATH": str(tmp_path / "dot"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",
        "VAGRANT_NO_COLOR": "1",
    }
    # --ignore-provider: the provider is the developer's choice, and none (VirtualBox,
    # vagrant-libvirt) need be installed where the tests run; the rest is validated.
    proc = subprocess.run(
        [vagrant, "validate", "--ignore-provider"],
        cwd=VAGRANT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout


def test_box_sync_and_provisioning() -> None:
    text = VAGRANTFILE.read_text()
    assert re.search(r'config\.vm\.box = ENV\.fetch\("BWBPF_BOX", "debian/bookworm64"\)', text)
    # The repository root, not vagrant/, is what the guest sees.
    assert re.search(r'config\.vm\.synced_folder "\.\.", "/bwbpf"', text)
    # Shell provisioners run as root, which make setup and make test need.
    assert "make -C /bwbpf setup" in text
    assert "make -C /bwbpf test" in text
    assert "privileged: false" not in text
