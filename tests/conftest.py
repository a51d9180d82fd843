"""Shared fixtures: privilege checks and unique names for everything a test creates."""

from __future__ import annotations

import os
import uuid

import pytest


def unique(prefix: str = "bwt") -> str:
    """A short unique name (interface names are at most 15 characters)."""
    return f"{prefix}{uuid.uuid4().hex[:6]}"


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (CAP_BPF, CAP_NET_ADMIN): run `make test` as root")
    if not os.path.ismount("/sys/fs/bpf"):
        pytest.skip("bpffs is not mounted at /sys/fs/bpf (make setup mounts it)")
