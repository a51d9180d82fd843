"""A benchmark's figure against its baseline, the summary table, and the machine it ran on."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Result:
    name: str
    value: float
    unit: str
    baseline_name: str
    baseline_value: float
    target: str | None = None
    met: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.value / self.baseline_value if self.baseline_value else float("inf")

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": round(self.value, 3),
            "unit": self.unit,
            "baseline_name": self.baseline_name,
            "baseline_value": round(self.baseline_value, 3),
            "ratio": round(self.ratio, 3),
            "target": self.target,
            "met": self.met,
            **self.extra,
        }


def summary(results: Sequence[Result]) -> str:
    """One line per result; every baseline is named once, below the table, so that the
    lines stay short enough to read."""
    width = max(len(r.name) for r in results)
    head = f"{'median':>11} {'min':>8} {'baseline':>11} {'ratio':>7}  target"
    lines = [f"{'benchmark':<{width}} {head}"]
    baselines: list[str] = []
    for r in results:
        if r.baseline_name not in baselines:
            baselines.append(r.baseline_name)
        unit = r.unit.split("/")[0]
        low = r.extra.get("min")
        low_text = f"{low:>8.1f}" if isinstance(low, int | float) else " " * 8
        target = "" if r.target is None else f"{r.target}: {'met' if r.met else 'MISSED'}"
        mark = f"[{baselines.index(r.baseline_name) + 1}]"
        lines.append(
            f"{r.name:<{width}} {r.value:>8.1f} {unit:<2} {low_text} "
            f"{r.baseline_value:>8.1f} {unit:<2} {r.ratio:>6.2f}x {mark:>5}  {target}"
        )
    lines.append("baselines:")
    lines += [f"  [{i}] {name}" for i, name in enumerate(baselines, 1)]
    return "\n".join(lines)


def machine(cpu: int | None) -> dict[str, Any]:
    """What the figures depend on besides the code: kernel, CPU, versions, the commit."""
    import pyroute2

    from bwbpf import bpfsys

    try:
        import bcc

        bcc_version = getattr(bcc, "__version__", "?")
    except ImportError:
        bcc_version = "not importable"
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "-C", str(Path(__file__).resolve().parent), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "uname": platform.uname()._asdict(),
        "cpus": os.cpu_count(),
        "possible_cpus": bpfsys.possible_cpus(),
        "cpu_model": model,
        "pinned_cpu": cpu,
        "python": platform.python_version(),
        "bcc": bcc_version,
        "pyroute2": getattr(pyroute2, "__version__", "?"),
        "commit": commit,
    }
