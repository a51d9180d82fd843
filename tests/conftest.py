"""Shared fixtures: privilege checks and unique names for everything a test creates."""

from __future__ import annotations

import os
import uuid

import pytest


def unique(prefix: str = "bwt") -> str:
    """A short unique name (interface names are at most 15 characters)."""
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def missing_privilege() -> str | None:
    """Why a test marked ``root`` cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (CAP_BPF, CAP_NET_ADMIN): run `make test` as root"
    if not os.path.ismount("/sys/fs/bpf"):
        return "bpffs is not mounted at /sys/fs/bpf (make setup mounts it)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before any fixture of the test runs: the fixtures of root tests make namespaces,
    # cgroups and programs.
    if item.get_closest_marker("root") is not None and (why := missing_privilege()):
        pytest.skip(why)
