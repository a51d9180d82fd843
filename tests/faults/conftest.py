"""The fault tier's fixture: one FaultEnv a test (tests/faults/common.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.common import FaultEnv


@pytest.fixture
def env(tmp_path: Path) -> Iterator[FaultEnv]:
    """A FaultEnv with its namespaces made and its receiver bound, and everything removed
    afterwards."""
    if shutil.which("nsenter") is None:
        pytest.skip("nsenter is not installed (Debian package util-linux)")
    e = FaultEnv(tmp_path)
    try:
        e.setup()
        yield e
    finally:
        e.cleanup()
