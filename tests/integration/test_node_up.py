"""`node.up` on a new root qdisc (a first `bwbpf up`, or a restore after someone deleted
it) attaches the classifier as soon as the parents and the default slice's classes exist,
and makes the other slices' classes after it: counting starts at once instead of after
the tens of seconds the kernel takes to create 20,000 classes. Watched from inside, at
each batch of netlink requests (the progress hook the daemon uses for its watchdog)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.netns import DaemonEnv, sh

pytestmark = [pytest.mark.root, pytest.mark.integration]

SLICES = 600  # 1,205 classes: ~19 batches of 64 requests

# Runs in the topology's source namespace; prints what each progress call saw.
PROBE = """
import json, sys
from bwbpf import config, datapath, node
from bwbpf.shaper import Shaper

cfg = config.load(sys.argv[1])
seen = []

def progress():
    with Shaper(cfg.interface) as shaper:
        classes = len(shaper.classes())
    seen.append((datapath.attached(cfg.interface), classes))

node.up(cfg, progress=progress)
with Shaper(cfg.interface) as shaper:
    total = len(shaper.classes())
print(json.dumps({"seen": seen, "total": total}))
"""


@pytest.fixture
def env(tmp_path: Path) -> Iterator[DaemonEnv]:
    e = DaemonEnv(tmp_path, "bwnu")
    with e.made():
        yield e


def write_config(env: DaemonEnv, slices: int) -> None:
    text = f'[node]\ninterface = "{env.topo.veth_a}"\nstate_dir = "{env.state_dir}"\n'
    text += "".join(
        f'[[slice]]\nname = "s{i}"\nid = {i}\nmatch = {{ mark = [{i}] }}\n'
        for i in range(1, slices + 1)
    )
    env.config.write_text(text)


def up_watched(env: DaemonEnv) -> dict:
    done = sh(*env.topo.in_src(sys.executable, "-c", PROBE, str(env.config)), timeout=300)
    return json.loads(done.stdout)


def test_a_new_qdisc_counts_before_every_class_exists(env: DaemonEnv) -> None:
    write_config(env, SLICES)
    out = up_watched(env)
    total = 3 + 2 * (SLICES + 1)  # root, two parents; two classes for each slice and default
    assert out["total"] == total
    seen = [tuple(s) for s in out["seen"]]
    assert len(seen) >= 2 * SLICES // 64, seen  # called at every batch
    # Attached while most classes were still to come, and from then on.
    first = next(i for i, (attached, _) in enumerate(seen) if attached)
    assert seen[first][1] < total // 10, seen
    assert all(attached for attached, _ in seen[first:]), seen
    # Again on the same qdisc: nothing new, the classifier replaced in place.
    again = up_watched(env)
    assert again["total"] == total and all(attached for attached, _ in again["seen"])


# Runs in the topology's source namespace: up, then up again with the same file read anew
# (a reload that changes no match), keeping the program.
REUSED = """
import json, sys
from bwbpf import config, node

first = config.load(sys.argv[1])
report = node.up(first, keep=True)
second = config.load(sys.argv[1])
again = node.up(second, current=report.program, keep=True)
tables = again.program.tables.entries
mine = {id(v) for s in second.slices for v in (s.id, *s.match.marks)}
# Smaller ints are one object in every config.
big = [v for t in tables.values() for pair in t.items() for v in pair if v > 256]
print(json.dumps({
    "compiled": again.compiled,
    "same_program": again.program is report.program,
    "ints": len(big),
    "from_second": sum(id(v) in mine for v in big),
}))
again.program.close()
"""


def test_a_reused_program_holds_the_new_configs_tables(env: DaemonEnv) -> None:
    """A reload that changes no match keeps the loaded program; its tables must then be the
    new config's, or the old config's ids stay referenced (and its memory resident)."""
    write_config(env, 300)
    done = sh(*env.topo.in_src(sys.executable, "-c", REUSED, str(env.config)), timeout=300)
    out = json.loads(done.stdout)
    assert out["compiled"] is False and out["same_program"] is True
    assert out["ints"] == 2 * (300 - 256)  # the marks and ids 257..300 of the mark table
    assert out["from_second"] == out["ints"]
