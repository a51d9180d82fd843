"""What a busy node writes to its journal: 1,000 slices on the smooth policy's ramp, whose
ceilings move at every tick, log that they were capped once, not once a tick each."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import unique
from tests.helpers import read_json, wait_for
from tests.integration.netns import Topology, sh
from tests.integration.test_daemon import with_slices

pytestmark = [pytest.mark.root, pytest.mark.integration]

SLICES = 1000
TICKS = 10
# 6 × 1042 wire bytes = 6,252: past the 5 kB threshold, short of the 20 kB limit, so each
# slice's ceiling is (limit - used) spread over the rest of its 5-minute period: it rises
# a little at every tick.
DATAGRAMS, SIZE = 6, 1000

# One socket, its mark changed before each send: 6,000 datagrams in well under a second.
SENDER = """
import socket, sys
dst, slices, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    for mark in range(1, slices + 1):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        for _ in range(count):
            s.sendto(b"x" * size, (dst, 9))
"""


def config_text(topo: Topology, state_dir: Path) -> str:
    head = f"""
[node]
interface = "{topo.veth_a}"
line_rate = "10gbit"
node_cap = "10gbit"
tick = "1s"
state_dir = "{state_dir}"
[quota]
period = "5m"
[defaults]
normal = {{ limit = "20kB", threshold = 0.25, max_rate = "100mbit", min_rate = "8bit" }}
"""
    return head + "".join(
        f'[[slice]]\nname = "s{i}"\nid = {i}\nmatch = {{ mark = {i} }}\n'
        for i in range(1, SLICES + 1)
    )


@pytest.fixture
def topo() -> Iterator[Topology]:
    t = Topology(
        src_ns=unique("bwlgS"),
        dst_ns=unique("bwlgD"),
        veth_a=unique("bwlgA"),
        veth_b=unique("bwlgB"),
    )
    try:
        t.setup()
        yield t
    finally:
        t.teardown()


def test_capped_slices_on_the_ramp_log_once(topo: Topology, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    cfg = tmp_path / "bwbpf.toml"
    cfg.write_text(config_text(topo, state_dir))
    log = tmp_path / "daemon.log"
    daemon = topo.run_daemon(cfg, log=log)
    status_path = state_dir / f"{topo.veth_a}.status.json"
    try:
        wait_for("the first tick", lambda: read_json(status_path), timeout=120)
        sh(
            *topo.in_src(
                sys.executable, "-c", SENDER, topo.dst_ip, str(SLICES), str(DATAGRAMS), str(SIZE)
            ),
            timeout=120,
        )

        def all_capped() -> dict | None:
            assert daemon.poll() is None, log.read_text()[-2000:]
            doc = read_json(status_path)
            doc = doc and with_slices(doc, cfg)
            tenants = [s for n, s in (doc or {}).get("slices", {}).items() if n != "default"]
            if tenants and all(s["classes"]["normal"]["capped"] for s in tenants):
                return doc
            return None

        first = wait_for("every slice capped", all_capped, timeout=60)
        assert len(first["slices"]) == SLICES + 1  # and the default slice, never capped
        capped_lines = len(re.findall(r"INFO: slice s\d+ normal: capped", log.read_text()))
        assert capped_lines == SLICES, capped_lines
        info_before = log.read_text().count("INFO:")
        wait_for(
            f"{TICKS} more ticks",
            lambda: (d := read_json(status_path)) and d["last_tick"] >= first["last_tick"] + TICKS,
            timeout=120,
        )
        last = read_json(status_path)
        assert last is not None
        last = with_slices(last, cfg)
        # The ceilings did move along the ramp meanwhile (else this test proves nothing)...
        moved = sum(
            last["slices"][n]["classes"]["normal"]["ceil_bps"]
            != first["slices"][n]["classes"]["normal"]["ceil_bps"]
            for n in first["slices"]
            if n != "default"
        )
        assert moved >= SLICES * 0.9, moved
        # ...and none of those moves reached the journal at INFO: no line a slice a tick.
        text = log.read_text()
        new_info = text.count("INFO:") - info_before
        assert new_info <= TICKS, text[-3000:]
    finally:
        topo.teardown()
    assert daemon.returncode == 0, log.read_text()[-2000:]
