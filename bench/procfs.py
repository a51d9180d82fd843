"""What the kernel says a process used: CPU time, bytes written, resident memory."""

from __future__ import annotations

import os
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Usage:
    cpu_s: float  # utime + stime, all threads and the children waited for
    wchar: int  # bytes passed to write(2) and the like, whatever their destination
    write_bytes: int  # bytes this process caused to be sent to storage
    # The main thread's time runnable but waiting for a CPU: a tick that takes longer than
    # its CPU time either waited here (other work on the machine) or blocked (disk, netlink).
    runqueue_s: float

    def __sub__(self, other: Usage) -> Usage:
        return Usage(
            self.cpu_s - other.cpu_s,
            self.wchar - other.wchar,
            self.write_bytes - other.write_bytes,
            self.runqueue_s - other.runqueue_s,
        )


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    fields = text.rsplit(")", 1)[1].split()
    # Fields 14 to 17 of proc(5): its own user and system time, and its waited-for
    # children's (the daemon's forked children compare HTB classes and read a reload's
    # file for it; /proc/PID/io counts them too).
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime + cutime + cstime) / CLOCK_TICKS


def io(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/io") as f:
        return {k: int(v) for k, v in (line.split(":") for line in f if ":" in line)}


def runqueue_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[1]) / 1e9  # on CPU, waiting, timeslices (in ns)


def usage(pid: int) -> Usage:
    counts = io(pid)
    return Usage(cpu_seconds(pid), counts["wchar"], counts["write_bytes"], runqueue_seconds(pid))


def rss_mb(pid: int) -> float:
    """VmRSS in MB (10^6 bytes)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError(f"no VmRSS for pid {pid} (a zombie?)")
