"""An hour of a real ``bwbpf run`` at 10,000 slices with history on: resident memory, open
fds and ticks a minute, sampled while 1 % of the slices send and a SIGHUP (3 slices' limits
changed back and forth) comes every ~70 s, so that an hour holds 50 reloads and more.

Not in the default set (it takes ``--minutes``, default 60, plus the start):

    .venv/bin/python bench/run.py --only soak --minutes 60    (as root)

Baselines from the same run: the daemon's RSS ~10 s after its first reload (what the later
reloads and ticks must not grow), a bare Python's, its fds after the first reload, the
ticks a minute the configured tick gives, and the ledger's state file beside the history
database. A line a minute on stdout shows the samples so far, so that a run cut short still
says something.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import procfs
from bench.daemon import (
    RELOAD_TIMEOUT_S,
    RELOADED_QUOTA,
    RELOADED_SLICES,
    RSS_MAX_MB,
    SENDING_SHARE,
    START_TIMEOUT_S,
    TICK,
    TICK_S,
    WARMUP_TICKS,
    Setup,
    bare_python_rss,
    sender_report,
    setup,
    write_atomic,
)
from bench.daemonproc import POLL_S, DaemonFailed, DaemonProcess
from bench.results import Result

# Every name the soak's namespaces and veth pair get starts with it: they outlive most
# other runs on the machine and must be told apart from those.
NS_PREFIX = "bwsq"
RELOAD_EVERY_S = 70.0
SAMPLE_EVERY_S = 10.0
# The baseline "after the first reload" is the first sample this long after it.
SETTLE_S = 10.0


def say(text: str) -> None:
    print(f"bench: soak: {text}", flush=True)


@dataclass
class Sample:
    at_s: float  # since the first tick at full size
    rss_mb: float
    fds: int
    ticks: int  # seen so far
    reloads: int  # done so far


@dataclass
class Soak:
    samples: list[Sample] = field(default_factory=list)
    ticks: int = 0
    reloads: int = 0
    reload_ms: list[float] = field(default_factory=list)

    def sample(self, d: DaemonProcess, at_s: float) -> Sample:
        one = Sample(
            at_s,
            procfs.rss_mb(d.pid),
            len(os.listdir(f"/proc/{d.pid}/fd")),
            self.ticks,
            self.reloads,
        )
        self.samples.append(one)
        return one

    def minutes(self) -> list[dict[str, Any]]:
        """Per whole minute: RSS min and max, fds at its end, ticks seen in it."""
        rows: list[dict[str, Any]] = []
        ticks_before = 0
        for minute in range(int(self.samples[-1].at_s // 60) + 1):
            inside = [s for s in self.samples if minute * 60 <= s.at_s < (minute + 1) * 60]
            if not inside:
                continue
            rows.append(
                {
                    "minute": minute,
                    "rss_min_mb": round(min(s.rss_mb for s in inside), 1),
                    "rss_max_mb": round(max(s.rss_mb for s in inside), 1),
                    "fds": inside[-1].fds,
                    "ticks": inside[-1].ticks - ticks_before,
                    "reloads": inside[-1].reloads,
                }
            )
            ticks_before = inside[-1].ticks
        return rows


def smaps_rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup in kB: where the resident memory is (anonymous or file)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key] = int(parts[0])
    return out


def bench_soak(slices: int, minutes: float, results: list[Result]) -> None:
    """The soak's figures, appended to ``results`` at its end; the namespaces, the daemon
    and the sender are removed on the way out, also after a failure."""
    with setup(slices, NS_PREFIX) as s:
        bare_mb = bare_python_rss()
        results += _soak(s, minutes, bare_mb)


def _soak(s: Setup, minutes: float, bare_mb: float) -> list[Result]:
    say(f"starting at {s.slices:,} slices, history on with its defaults")
    cfg = s.config("bwbpf.toml", s.slices, tick=TICK)
    plain = s.config_text(s.slices, tick=TICK)
    changed = s.config_text(
        s.slices, tick=TICK, quotas=dict.fromkeys(RELOADED_SLICES, RELOADED_QUOTA)
    )
    d = s.daemon(cfg, "daemon.log")
    d.start()
    d.wait_ticks(1, START_TIMEOUT_S, f"at {s.slices:,} slices")
    sender = s.sender(max(1, round(s.slices * SENDING_SHARE)), "sender.log")
    d.wait_ticks(WARMUP_TICKS, 60 + 20 * WARMUP_TICKS, "warming up")
    soak = Soak()
    started = time.monotonic()
    start = soak.sample(d, 0.0)
    say(f"{minutes:g} minutes, RSS {start.rss_mb:.1f} MB, {start.fds} fds at the start")
    after_first: Sample | None = None
    first_done: float | None = None
    offset = d.log_offset()
    next_reload = started + RELOAD_EVERY_S
    next_sample = started + SAMPLE_EVERY_S
    next_line = started + 60
    sent_at: float | None = None
    end = started + minutes * 60
    while (now := time.monotonic()) < end or sent_at is not None:
        if d.poll() is not None:
            soak.ticks += 1
        if sent_at is None and now >= next_reload:
            write_atomic(cfg, changed if soak.reloads % 2 == 0 else plain)
            os.kill(d.pid, signal.SIGHUP)
            sent_at = now
        if sent_at is not None:
            log = d.log_since(offset)
            if log.count("reloaded ") > soak.reloads:
                soak.reloads += 1
                soak.reload_ms.append((now - sent_at) * 1000)
                # The next one ~70 s after this one was asked for, however long it took.
                next_reload = sent_at + RELOAD_EVERY_S
                sent_at = None
                if first_done is None:
                    first_done = now
            elif any("reload:" in line for line in log.splitlines()):
                raise DaemonFailed(f"reload {soak.reloads + 1} failed{d.log_tail()}")
            elif now - sent_at > RELOAD_TIMEOUT_S:
                raise DaemonFailed(f"reload {soak.reloads + 1} not done{d.log_tail()}")
        if now >= next_sample:
            one = soak.sample(d, now - started)
            next_sample += SAMPLE_EVERY_S
            # Not at "reloaded" itself: the reload's tail (freeing the old config, the
            # next ticks) settles over the next seconds.
            if after_first is None and first_done is not None and now - first_done >= SETTLE_S:
                after_first = one
        if now >= next_line:
            last = soak.samples[-1]
            say(
                f"minute {round(last.at_s / 60)}: RSS {last.rss_mb:.1f} MB"
                f" (max {max(x.rss_mb for x in soak.samples):.1f}), {last.fds} fds,"
                f" {last.ticks} ticks, {last.reloads} reloads"
            )
            next_line += 60
        time.sleep(POLL_S)
    seconds = time.monotonic() - started
    last = soak.sample(d, seconds)
    memory = smaps_rollup(d.pid)
    db = s.state_dir / f"history-{s.ns.dev}.sqlite"
    db_bytes = sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    ledger_bytes = (s.state_dir / f"ledger-{s.ns.dev}.json").stat().st_size
    sent = sender_report(sender, s.tmp / "sender.log")
    d.stop()

    if after_first is None:
        raise RuntimeError(f"no reload in {minutes:g} minutes: nothing to compare with")
    rss_max = max(x.rss_mb for x in soak.samples)
    rows = soak.minutes()
    full = [r["ticks"] for r in rows[:-1]] or [last.ticks]  # the last minute may be short
    common = {
        "minutes": round(seconds / 60, 1),
        "reloads": soak.reloads,
        "ticks": last.ticks,
    }
    label = f"{s.slices:,} slices, history on, {seconds / 60:.0f} min, {soak.reloads} SIGHUPs"
    return [
        Result(
            f"daemon RSS (VmRSS) at the start of the soak, {s.slices:,} slices, history on",
            start.rss_mb,
            "MB",
            "a bare python3 sleeping",
            bare_mb,
        ),
        Result(
            f"daemon RSS (VmRSS) at the end, {label}",
            last.rss_mb,
            "MB",
            "the same daemon after the first reload",
            after_first.rss_mb,
            target=f"value <= {RSS_MAX_MB:g} MB",
            met=last.rss_mb <= RSS_MAX_MB,
            extra={**common, "smaps_rollup_kb": memory, "per_minute": rows},
        ),
        Result(
            f"daemon RSS (VmRSS), largest sample, {label}",
            rss_max,
            "MB",
            "the same daemon after the first reload",
            after_first.rss_mb,
            target=f"value <= {RSS_MAX_MB:g} MB",
            met=rss_max <= RSS_MAX_MB,
            extra={**common, "samples": len(soak.samples), "sample_every_s": SAMPLE_EVERY_S},
        ),
        Result(
            f"daemon open fds at the end, {label}",
            last.fds,
            "fds",
            "the same daemon after the first reload",
            after_first.fds,
            target="flat: ratio <= 1",
            met=last.fds <= after_first.fds,
            extra={"fds_max": max(x.fds for x in soak.samples)},
        ),
        Result(
            f"ticks a minute (status file), least of the whole minutes, {label}",
            min(full),
            "ticks",
            "the configured tick",
            60 / TICK_S,
            extra={"median_per_minute": sorted(full)[len(full) // 2], "sender": sent},
        ),
        Result(
            f"history database (and its WAL) at the end, {label}",
            db_bytes / 1e6,
            "MB",
            "the ledger's state file",
            ledger_bytes / 1e6,
            extra={"reload_ms_max": round(max(soak.reload_ms)), **common},
        ),
    ]
