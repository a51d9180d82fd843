"""A real ``bwbpf -v run -c CONFIG`` process in a network namespace, watched from outside:
its log, the status file it writes at the end of every tick, and its pid for /proc. Every
process started here is stopped by its pid on the way out."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.topology import Namespaces

# The command the tests also run: the console script next to this interpreter.
BWBPF = str(Path(sys.executable).parent / "bwbpf")
POLL_S = 0.01
LOG_TAIL_LINES = 30
# The status file's keys are sorted, so last_tick is near its start: only the head is read,
# however much else the file holds.
LAST_TICK = re.compile(rb'"last_tick":\s*([-+0-9.eE]+)')


class DaemonFailed(RuntimeError):
    """The daemon exited, or did not do in time what the benchmark waits for; the message
    ends with its log's tail."""


def exited(returncode: int) -> str:
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited {returncode}"


@dataclass(frozen=True)
class TickSeen:
    at: float  # time.monotonic() when this process saw the status file change
    last_tick: float  # the tick's time, as the daemon wrote it


@dataclass
class Processes:
    """Processes started for a benchmark; ``stop_all`` ends each one still running, by
    pid: TERM, then KILL if it does not exit."""

    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, cmd: Sequence[str], log: Path | None = None) -> subprocess.Popen[bytes]:
        if log is None:
            proc = subprocess.Popen(list(cmd), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            with log.open("ab") as out:
                proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT)
        self.started.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], timeout: float = 60) -> int:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        return proc.returncode

    def stop_all(self) -> None:
        for proc in reversed(self.started):
            self.stop(proc)


class DaemonProcess:
    """``bwbpf -v run -c config`` in ``ns``'s source namespace, logging to ``log``."""

    def __init__(
        self, ns: Namespaces, processes: Processes, config: Path, status: Path, log: Path
    ) -> None:
        self.ns = ns
        self.processes = processes
        self.config = config
        self.status = status
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self._stamp: tuple[int, int] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self._stamp = self._status_stamp()
        self.proc = self.processes.start(
            self.ns.in_src(BWBPF, "-v", "run", "-c", str(self.config)), log=self.log
        )

    def stop(self) -> int:
        assert self.proc is not None
        rc = Processes.stop(self.proc)
        if rc != 0:
            raise DaemonFailed(f"bwbpf run {exited(rc)} on SIGTERM, not 0{self.log_tail()}")
        return rc

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError as exc:
            return f"\n(no log: {exc})"
        return "\n--- the daemon's log ends:\n" + "\n".join(text)

    def check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise DaemonFailed(f"bwbpf run {exited(self.proc.returncode)}{self.log_tail()}")

    def _status_stamp(self) -> tuple[int, int] | None:
        # The file is replaced (renamed over) at every tick: a new inode or mtime is a tick.
        try:
            st = os.stat(self.status)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    def last_tick(self) -> float:
        with open(self.status, "rb") as f:
            head = f.read(4096)
        found = LAST_TICK.search(head)
        if found:
            return float(found.group(1))
        return float(self.status_doc()["last_tick"])

    def status_doc(self) -> dict[str, Any]:
        with open(self.status) as f:
            doc: dict[str, Any] = json.load(f)
        return doc

    def poll(self) -> TickSeen | None:
        """The tick the status file shows, if it changed since the last poll."""
        self.check_alive()
        stamp = self._status_stamp()
        if stamp is None or stamp == self._stamp:
            return None
        self._stamp = stamp
        try:
            return TickSeen(time.monotonic(), self.last_tick())
        except (OSError, ValueError, KeyError):
            return None  # replaced again while being read: the next poll sees it

    def wait_ticks(self, n: int, timeout_s: float, what: str = "") -> list[TickSeen]:
        """The next ``n`` ticks, as this process sees them; fails after ``timeout_s``."""
        seen: list[TickSeen] = []
        deadline = time.monotonic() + timeout_s
        while len(seen) < n:
            tick = self.poll()
            if tick is not None:
                seen.append(tick)
                continue
            if time.monotonic() > deadline:
                raise DaemonFailed(
                    f"{len(seen)} of {n} ticks{' ' + what if what else ''} in {timeout_s:.0f} s"
                    f"{self.log_tail()}"
                )
            time.sleep(POLL_S)
        return seen

    def wait_until(self, done: Callable[[], bool], timeout_s: float, what: str) -> int:
        """Ticks until ``done()`` (asked after each tick seen) holds; how many it took."""
        deadline = time.monotonic() + timeout_s
        ticks = 0
        while not done():
            if time.monotonic() > deadline:
                raise DaemonFailed(
                    f"not {what} after {timeout_s:.0f} s ({ticks} ticks){self.log_tail()}"
                )
            ticks += len(self.wait_ticks(1, max(60.0, deadline - time.monotonic()), what))
        return ticks

    def log_offset(self) -> int:
        return self.log.stat().st_size

    def log_since(self, offset: int) -> str:
        with open(self.log, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
