"""The classifier compiled in a loader process and used from its pins only: what it pins,
its maps' contents, pins swapped on a replace without a gap or a mix, fds that stay
flat, and a loader that fails, hangs or dies coming back as one line."""

from __future__ import annotations

import ctypes
import ipaddress
import os
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bwbpf import bpfsys, config, datapath, layout, limits, loader
from bwbpf.errors import Error
from bwbpf.matchkinds import Flag
from tests.bpf.test_classifier import ctx, eth, ipv4
from tests.conftest import unique
from tests.helpers import pinned_id

pytestmark = pytest.mark.root

MARKED = 21


def _config(bpffs: str, slices: str = "") -> config.Config:
    return config.parse(
        f'[node]\ninterface = "lo"\nbpffs = "{bpffs}"\n'
        '[exempt]\nprefixes = ["192.0.2.0/24"]\n'
        f'[[slice]]\nname = "marked"\nid = {MARKED}\nmatch = {{ mark = 77 }}\n{slices}'
    )


@pytest.fixture
def bpffs() -> Iterator[str]:
    path = f"/sys/fs/bpf/{unique('bwldtest')}"
    os.mkdir(path)
    try:
        yield path
    finally:
        datapath.remove_pins(f"{path}/bwbpf/lo")
        shutil.rmtree(path, ignore_errors=True)


def _generation(prog_id: int) -> set[str]:
    return {f"{name}@{prog_id}" for name in datapath.MATCH_MAPS}


def _lookup_u32(fd: int, key: ctypes._CData) -> int | None:
    value = ctypes.c_uint32()
    return value.value if bpfsys.map_lookup(fd, key, value) else None


def _settings(program: datapath.Program) -> tuple[int, int]:
    value = layout.Settings()
    assert bpfsys.map_lookup(program.maps["settings"], ctypes.c_uint32(0), value)
    return value.flags, value.cgroup_levels


def test_pins_what_the_caller_then_uses(bpffs: str) -> None:
    cfg = _config(bpffs)
    program = datapath.Program.load(cfg)
    try:
        # Before it is attached: only its own generation (and the shared counters).
        assert set(os.listdir(cfg.pin_dir)) == {
            "counters",
            "errors",
            f"prog@{program.id}",
            *_generation(program.id),
        }
        program.publish(cfg.pin_dir)
        assert set(os.listdir(cfg.pin_dir)) == {
            "counters",
            "errors",
            "prog",
            *_generation(program.id),
        }
        assert datapath.pinned_prog_id(cfg.pin_dir) == program.id
        # The maps hold the config, as the loader filled them.
        assert _settings(program) == (Flag.MARK | Flag.EXEMPT4, 0)
        small = program.maps["slice_by_small_mark"]
        assert _lookup_u32(small, ctypes.c_uint32(77)) == MARKED
        key = layout.Lpm4(prefixlen=24)
        key.addr[:] = list(ipaddress.IPv4Address("192.0.2.0").packed)
        assert _lookup_u32(program.maps["exempt4"], key) == 1
        # And the program classifies with them.
        result = bpfsys.prog_test_run(
            program.fd, eth(0x0800, ipv4("10.9.0.1", "192.0.2.5")), ctx(77)
        )
        assert result.retval == 0
        with datapath.Counters(cfg.pin_dir) as counters:
            exempt = counters.read([MARKED])[MARKED][limits.DCLASS_EXEMPT]
        assert exempt.packets == 1
    finally:
        program.close()


def test_set_cgroups_updates_the_pinned_maps(bpffs: str) -> None:
    cfg = _config(bpffs)
    program = datapath.Program.load(cfg)
    try:
        program.publish(cfg.pin_dir)
        table = program.maps["slice_by_cgroup"]
        program.set_cgroups({1001: 5, 1002: 6}, 1 << 2)
        assert _settings(program) == (Flag.MARK | Flag.EXEMPT4 | Flag.CGROUP, 4)
        assert _lookup_u32(table, ctypes.c_uint64(1001)) == 5
        program.set_cgroups({1002: 7}, 1 << 3)
        assert _lookup_u32(table, ctypes.c_uint64(1001)) is None
        assert _lookup_u32(table, ctypes.c_uint64(1002)) == 7
        program.set_cgroups({}, 0)
        assert _settings(program) == (Flag.MARK | Flag.EXEMPT4, 0)
        # The pin names the same map: anyone opening it sees what the program sees.
        pinned = bpfsys.obj_get(datapath.generation_pin(cfg.pin_dir, "settings", program.id))
        try:
            assert bpfsys.map_info(pinned).id == bpfsys.map_info(program.maps["settings"]).id
        finally:
            os.close(pinned)
    finally:
        program.close()


def test_replace_swaps_the_pins_without_a_gap_or_a_mix(bpffs: str) -> None:
    """While a second program replaces the first, a reader polling the pins always finds
    ``prog``, and the maps pinned for the id it names are that program's own."""
    cfg = _config(bpffs)
    first = datapath.Program.load(cfg)
    first.publish(cfg.pin_dir)
    counters_id = pinned_id(os.path.join(cfg.pin_dir, "counters"))
    other = _config(bpffs, '[[slice]]\nname = "b"\nid = 22\nmatch = { mark = 78 }\n')
    seen: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        prog = os.path.join(cfg.pin_dir, "prog")
        while not stop.is_set():
            try:
                fd = bpfsys.obj_get(prog)
            except OSError as exc:
                seen.append(f"prog: {exc.strerror}")
                continue
            try:
                prog_id, own = bpfsys.prog_info(fd).id, set(bpfsys.prog_map_ids(fd))
            finally:
                os.close(fd)
            path = datapath.generation_pin(cfg.pin_dir, "settings", prog_id)
            try:
                if pinned_id(path) not in own:
                    seen.append(f"{path} is not program {prog_id}'s")
            except FileNotFoundError:
                # Only once another program has taken its place.
                if datapath.pinned_prog_id(cfg.pin_dir) == prog_id:
                    seen.append(f"{path} missing while prog names {prog_id}")

    reader = threading.Thread(target=poll)
    reader.start()
    programs = [first]
    try:
        # Each load is a compile (tens of seconds under software emulation): two replacements
        # cover both directions between the two configs.
        for n in range(2):
            programs.append(datapath.Program.load(other if n % 2 == 0 else cfg))
            programs[-1].publish(cfg.pin_dir)
    finally:
        stop.set()
        reader.join()
        for p in programs:
            p.close()
    assert seen == []
    last = programs[-1].id
    assert set(os.listdir(cfg.pin_dir)) == {"counters", "errors", "prog", *_generation(last)}
    assert pinned_id(os.path.join(cfg.pin_dir, "counters")) == counters_id


def test_repin_restores_every_pin_it_holds(bpffs: str) -> None:
    cfg = _config(bpffs)
    program = datapath.Program.load(cfg)
    try:
        program.publish(cfg.pin_dir)
        before = {
            name: pinned_id(datapath.generation_pin(cfg.pin_dir, name, program.id))
            for name in datapath.MATCH_MAPS
        }
        assert program.repin(cfg.pin_dir) == []
        for entry in os.listdir(cfg.pin_dir):
            os.unlink(os.path.join(cfg.pin_dir, entry))
        restored = program.repin(cfg.pin_dir)
        assert {os.path.basename(p) for p in restored} == {"prog", *_generation(program.id)}
        after = {
            name: pinned_id(datapath.generation_pin(cfg.pin_dir, name, program.id))
            for name in datapath.MATCH_MAPS
        }
        assert after == before
        assert datapath.pinned_prog_id(cfg.pin_dir) == program.id
    finally:
        program.close()


def test_fds_stay_flat_over_loads(bpffs: str) -> None:
    cfg = _config(bpffs)
    programs = [datapath.Program.load(cfg)]
    programs[0].publish(cfg.pin_dir)
    fds = len(os.listdir("/proc/self/fd"))
    # A leak shows at the first replacement; three keep a one-off from passing for flat.
    for _ in range(3):
        programs.append(datapath.Program.load(cfg))
        programs[-1].publish(cfg.pin_dir)
        programs.pop(0).close()
    assert len(os.listdir("/proc/self/fd")) == fds
    programs[0].close()


def test_remove_pins_removes_every_generation(bpffs: str) -> None:
    cfg = _config(bpffs)
    program = datapath.Program.load(cfg)
    program.publish(cfg.pin_dir)
    # A load that never got attached (its caller killed) leaves its pins behind.
    orphan = loader.run(cfg.pin_dir, datapath.tables_for(cfg))
    program.close()
    assert f"prog@{orphan}" in os.listdir(cfg.pin_dir)
    datapath.remove_pins(cfg.pin_dir)
    assert not os.path.exists(cfg.pin_dir)


def test_discard_removes_an_unattached_program(bpffs: str) -> None:
    cfg = _config(bpffs)
    program = datapath.Program.load(cfg)
    program.discard(cfg.pin_dir)
    assert set(os.listdir(cfg.pin_dir)) == {"counters", "errors"}


def _one_line(exc: pytest.ExceptionInfo[Error]) -> str:
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text, text
    return text


def test_compile_error_is_one_line(bpffs: str) -> None:
    cfg = _config(bpffs)
    with pytest.raises(Error) as exc:
        loader.run(cfg.pin_dir, datapath.tables_for(cfg), ["-include", "/nonexistent/bwld.h"])
    text = _one_line(exc)
    assert "cannot load bpf/egress.c" in text and "/nonexistent/bwld.h" in text, text


def test_hanging_loader_is_killed(bpffs: str) -> None:
    cfg = _config(bpffs)
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(Error) as exc:
        loader.run(cfg.pin_dir, datapath.tables_for(cfg), timeout_s=1, argv=hang)
    assert "did not finish in 1 s" in _one_line(exc)


def test_killed_loader_is_one_line(bpffs: str) -> None:
    cfg = _config(bpffs)
    die = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    with pytest.raises(Error) as exc:
        loader.run(cfg.pin_dir, datapath.tables_for(cfg), argv=die)
    assert _one_line(exc) == "the classifier loader was killed by SIGKILL"


def test_loader_that_says_nothing_is_one_line(bpffs: str) -> None:
    cfg = _config(bpffs)
    crash = [sys.executable, "-c", "raise SystemExit(3)"]
    with pytest.raises(Error) as exc:
        loader.run(cfg.pin_dir, datapath.tables_for(cfg), argv=crash)
    assert _one_line(exc) == "the classifier loader exited with status 3"


def test_request_round_trips() -> None:
    cfg = config.parse(
        '[node]\ninterface = "lo"\n[exempt]\nprefixes = ["192.0.2.0/24", "2001:db8::/32"]\n'
        '[[slice]]\nname = "a"\nid = 3\nmatch = { mark = 70000, uid = 1000,'
        ' src = ["10.1.0.0/16", "fd00:1::/64"] }\n'
    )
    tables = datapath.match_tables(cfg)
    pin_dir, decoded, cflags = loader.decode(loader.encode("/x", tables, ["-DY"]))
    assert (pin_dir, decoded, cflags) == ("/x", tables, ["-DY"])


def test_the_loader_is_this_bwbpf() -> None:
    """Started from anywhere, the loader imports the same package as its caller."""
    env = loader._environment()
    root = str(Path(datapath.__file__).resolve().parent.parent)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == root
