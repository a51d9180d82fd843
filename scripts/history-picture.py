#!/usr/bin/env python3
"""The README's history pictures, from a simulated month of traffic.

Five slices send for November 2026, every 5 minutes, with a day-and-night rhythm, quieter
weekends, night-time backups and bulk transfers to the exempt network. A slice past its
threshold is held back as the daemon would hold it (bwbpf.policy.decide's ceilings). The
counters feed a real ledger (bwbpf.ledger.Ledger, as the daemon's tick does) and a real
recorder (bwbpf.recorder.Recorder) writes the history database, in a temporary directory.
Then ``bwbpf history --png`` draws the pictures; the commands are printed as they run.

    .venv/bin/python scripts/history-picture.py              # docs/history-*.png
    .venv/bin/python scripts/history-picture.py --keep /tmp/h   # keep config and database

The data are simulated; the seed is fixed, so a run makes the same pictures.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime

from bwbpf import config, daemon, periods, policy
from bwbpf.ledger import Ledger
from bwbpf.recorder import Recorder

START = datetime(2026, 11, 1, tzinfo=UTC).timestamp()
# Ends in the afternoon of the 30th: the last bar is a day still going, as on a real node.
END = datetime(2026, 11, 30, 16, 0, tzinfo=UTC).timestamp()
TICK = 300.0
GB = 10**9

CONFIG = """\
[node]
interface = "lo"
line_rate = "1gbit"
node_cap = "100mbit"
tick = "10s"
state_dir = "{state_dir}"

[quota]
period = "daily"

[defaults]
normal = {{ limit = "5GB", threshold = 0.8, max_rate = "100mbit", min_rate = "64kbit" }}
exempt = {{ limit = "20GB", threshold = 0.8, max_rate = "1gbit", min_rate = "64kbit" }}

[history]
write_interval = "5m"

[[slice]]
name = "alice"
id = 5
match = {{ mark = 5 }}

[[slice]]
name = "bob"
id = 6
match = {{ mark = 6 }}

[[slice]]
name = "carol"
id = 7
match = {{ mark = 7 }}

[[slice]]
name = "lab"
id = 8
match = {{ mark = 8 }}
exempt = {{ limit = "40GB" }}

[[slice]]
name = "mirror"
id = 9
match = {{ mark = 9 }}
"""

# Each slice's normal bytes per day on an average weekday, the exempt bytes per day, and
# when in the day it is busiest (hour, UTC).
PROFILES = {
    "alice": (4.6 * GB, 0.6 * GB, 14),
    "bob": (0.9 * GB, 0.1 * GB, 20),
    "carol": (1.8 * GB, 3.0 * GB, 2),
    "lab": (0.7 * GB, 14.0 * GB, 11),
    "mirror": (2.4 * GB, 0.0, 9),
}


def simulate(cfg: config.Config) -> None:
    rng = random.Random(2026)
    ledger = Ledger()
    rec = Recorder(cfg, START)
    rec.catch_up(ledger, START)
    counters = {s.id: [[0, 0], [0, 0]] for s in cfg.all_slices()}
    by_name = {s.name: s for s in cfg.all_slices()}
    # A busy or quiet day for each slice, and the odd day of a big transfer.
    moods = {(n, d): rng.lognormvariate(0, 0.35) for n in PROFILES for d in range(31)}
    bursts = {(n, d) for n in ("alice", "lab", "carol") for d in range(31) if rng.random() < 0.15}
    t = START
    while t < END:
        t += TICK
        day = int((t - START) // 86400)
        hour = (t % 86400) / 3600
        weekend = datetime.fromtimestamp(t, UTC).weekday() >= 5
        for name, (normal, exempt, peak) in PROFILES.items():
            # A day-and-night curve: most traffic within a few hours of the peak.
            shape = 0.25 + math.exp(-(((hour - peak + 12) % 24 - 12) ** 2) / 18)
            share = shape / 6.6 * TICK / 3600  # about 1 over the day
            mood = moods[(name, day)] * (0.45 if weekend else 1.0)
            burst = 2.2 if (name, day) in bursts else 1.0
            s = by_name[name]
            record = ledger.get(name)
            for dclass, per_day in ((0, normal), (1, exempt)):
                want = per_day * share * mood * burst * rng.uniform(0.6, 1.4)
                if record is not None:
                    # The ceiling the daemon would set: past the threshold the smooth
                    # policy spreads what is left over the rest of the day.
                    ceil = policy.decide(
                        s.quota(dclass),
                        cfg.policy,
                        record.classes[dclass].used_bytes,
                        record.period_start,
                        record.period_end,
                        t,
                    ).ceil_bps
                    want = min(want, ceil * TICK / 8)
                n = int(want)
                counters[s.id][dclass][0] += n
                counters[s.id][dclass][1] += n // 1200
        raw = {sid: tuple((c[0], c[1]) for c in pair) for sid, pair in counters.items()}
        ledger.update(
            t,
            daemon.readings(cfg, raw),  # type: ignore[arg-type]
            lambda _n, start, now=t: periods.current_period(cfg.period, now, start),
        )
        rec.observe(ledger, ledger.changed, t)
    rec.close(t)


def bwbpf(*args: str) -> None:
    cmd = [sys.executable, "-m", "bwbpf.cli", *args]
    print("$ bwbpf " + " ".join(shlex.quote(a) for a in args), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs", help="where the pictures go (docs)")
    parser.add_argument("--keep", metavar="DIR", help="make config and database in DIR")
    args = parser.parse_args()
    work = args.keep or tempfile.mkdtemp(prefix="bwbpf-history-")
    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, "bwbpf.toml")
    with open(path, "w") as f:
        f.write(CONFIG.format(state_dir=os.path.join(work, "state")))
    cfg = config.load(path)
    simulate(cfg)
    month = ("--since", "2026-11-01", "--until", "2026-12-01")
    bwbpf("history", "-c", path, "alice", *month, "--png", f"{args.out}/history-days.png")
    bwbpf("history", "-c", path, *month, "--png", f"{args.out}/history-slices.png")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
