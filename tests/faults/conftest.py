"""The fault tier's fixture: one FaultEnv a test (tests/faults/common.py)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.common import LIBFAKETIME, SLEEP_SHIM, FaultEnv
from tests.integration.netns import sh


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


@pytest.fixture(scope="module")
def sleep_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not os.path.exists(LIBFAKETIME):
        pytest.skip(f"libfaketime is not installed ({LIBFAKETIME}; Debian package faketime)")
    if shutil.which("cc") is None:
        pytest.skip("no C compiler for the sleep shim libfaketime needs (Debian package gcc)")
    work = tmp_path_factory.mktemp("sleep-shim")
    (work / "shim.c").write_text(SLEEP_SHIM)
    lib = work / "shim.so"
    sh("cc", "-shared", "-fPIC", "-O2", "-o", str(lib), str(work / "shim.c"), "-ldl")
    return lib
