"""Where a daemon tick's time goes: cProfile's cumulative time per step of ``Daemon.tick``,
and the garbage collector's time, which cProfile does not see (it is charged to whatever
function ran when a collection started)."""

from __future__ import annotations

import ast
import cProfile
import functools
import gc
import pstats
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The functions whose direct callees are a tick's steps: the tick itself and the guard it
# runs most steps through. Matched by name in bwbpf/daemon.py, so a step added or renamed
# shows up without a change here.
STEP_CALLERS = ("tick", "_guard")
DAEMON_MODULE = "bwbpf/daemon.py"
TOP_FUNCTIONS = 12
# Calls other than bwbpf's below this share of the tick are summed on one line.
MIN_SHARE = 0.005
NAME_WIDTH = 48


@dataclass
class GcTime:
    """Collections and the seconds they took while ``measure`` was active."""

    seconds: float = 0.0
    collections: dict[int, int] = field(default_factory=lambda: {0: 0, 1: 0, 2: 0})
    _started: float | None = None

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started is not None:
            self.seconds += time.perf_counter() - self._started
            self.collections[int(info["generation"])] += 1
            self._started = None

    @contextmanager
    def measure(self) -> Iterator[GcTime]:
        gc.callbacks.append(self._callback)
        try:
            yield self
        finally:
            gc.callbacks.remove(self._callback)


@dataclass
class Step:
    name: str
    calls: int
    cumulative_s: float
    own: bool = False  # a function of bwbpf's, not a builtin or the standard library's


@dataclass
class TickProfile:
    tick_s: float  # wall time of the profiled tick (profiler overhead included)
    profiled_s: float  # cProfile's cumulative time of Daemon.tick
    steps: list[Step]
    gc: GcTime
    top_own: list[Step]  # functions by time spent in themselves, anywhere in the tick

    def as_json(self) -> dict[str, Any]:
        return {
            "tick_ms": round(self.tick_s * 1000, 2),
            "profiled_ms": round(self.profiled_s * 1000, 2),
            "steps": [
                {"name": s.name, "calls": s.calls, "cumulative_ms": round(s.cumulative_s * 1000, 2)}
                for s in self.steps
            ],
            "gc_ms": round(self.gc.seconds * 1000, 2),
            "gc_collections": self.gc.collections,
            "top_own_time": [
                {"name": s.name, "calls": s.calls, "own_ms": round(s.cumulative_s * 1000, 2)}
                for s in self.top_own
            ],
        }


@functools.cache
def _qualnames(filename: str) -> dict[int, str]:
    """``{first line: qualified name}`` of the functions in a file: cProfile names a function
    by its bare name, and a tick has several ``update``s and ``__init__``s."""
    try:
        tree = ast.parse(Path(filename).read_text())
    except (OSError, SyntaxError, ValueError):
        return {}
    out: dict[int, str] = {}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    # A code object's first line is its first decorator's.
                    out[min([child.lineno, *(d.lineno for d in child.decorator_list)])] = name
                walk(child, f"{name}.")

    walk(tree, "")
    return out


def _label(key: tuple[str, int, str]) -> str:
    filename, line, name = key
    if filename == "~":  # a builtin: cProfile gives no file
        return name
    qualified = _qualnames(filename).get(line, "")
    # The file may have been edited since it was imported: a name that does not end the
    # same way is another function's, and the bare name is kept.
    if qualified.rsplit(".", 1)[-1] == name:
        name = qualified
    elif name.startswith("<"):  # a comprehension or lambda: where it is says what it is
        name = f"{name} line {line}"
    module = filename.rsplit("/", 2)
    where = "/".join(module[-2:]) if len(module) > 1 else filename
    return name if where == DAEMON_MODULE else f"{where}:{name}"


def profile_tick(tick: Callable[[], object]) -> TickProfile:
    """Runs ``tick`` once under cProfile and the GC timer."""
    profiler = cProfile.Profile()
    timer = GcTime()
    with timer.measure():
        started = time.perf_counter()
        profiler.runcall(tick)
        elapsed = time.perf_counter() - started
    stats: dict[Any, Any] = pstats.Stats(profiler).stats
    callers = {key for key in stats if key[0].endswith(DAEMON_MODULE) and key[2] in STEP_CALLERS}
    tick_keys = [k for k in callers if k[2] == "tick"]
    profiled = max((stats[k][3] for k in tick_keys), default=elapsed)
    steps: list[Step] = []
    for key, (_, _, _, _, by_caller) in stats.items():
        if key in callers:
            continue
        via = [v for caller, v in by_caller.items() if caller in callers]
        if via:
            calls, cumulative = sum(v[0] for v in via), sum(v[3] for v in via)
            steps.append(Step(_label(key), calls, cumulative, "/bwbpf/" in key[0]))
    steps.sort(key=lambda s: s.cumulative_s, reverse=True)
    own = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:TOP_FUNCTIONS]
    top_own = [Step(_label(key), v[1], v[2]) for key, v in own]
    return TickProfile(elapsed, profiled, steps, timer, top_own)


def render(profile: TickProfile, title: str) -> str:
    """The steps by cumulative time, what is left of the tick, GC, and the functions that
    spent the most time in themselves."""
    total = profile.profiled_s or 1e-9
    w = NAME_WIDTH

    def row(name: str, calls: object, ms: float, share: str = "", note: str = "") -> str:
        return f"  {name[:w]:<{w}} {calls!s:>7} {ms:>9.1f} {share:>6}{note}".rstrip()

    lines = [
        title,
        f"  {'step (direct calls of Daemon.tick and _guard)':<{w}} {'calls':>7}"
        f" {'cum ms':>9} {'share':>6}",
    ]
    # bwbpf's own steps always get a line; builtins and the like only when they matter.
    shown = [s for s in profile.steps if s.own or s.cumulative_s >= MIN_SHARE * total]
    small = [s for s in profile.steps if s not in shown]
    for s in shown:
        lines.append(row(s.name, s.calls, s.cumulative_s * 1000, f"{s.cumulative_s / total:.0%}"))
    if small:
        small_s = sum(s.cumulative_s for s in small)
        lines.append(
            row(f"({len(small)} smaller calls)", "", small_s * 1000, f"{small_s / total:.0%}")
        )
    rest = profile.profiled_s - sum(s.cumulative_s for s in profile.steps)
    lines.append(row("(in Daemon.tick itself)", "", rest * 1000, f"{rest / total:.0%}"))
    lines.append(row("Daemon.tick, all of it, under cProfile", 1, profile.profiled_s * 1000))
    gens = ", ".join(f"gen{g} x{n}" for g, n in profile.gc.collections.items() if n)
    gc_share = f"{profile.gc.seconds / total:.0%}"
    lines.append(
        row(
            "garbage collection (gc.callbacks)",
            "",
            profile.gc.seconds * 1000,
            gc_share,
            f"  {gens or 'no collection'}",
        )
    )
    lines.append(f"  {'functions by own time':<{w}} {'calls':>7} {'own ms':>9}")
    for s in profile.top_own:
        lines.append(row(s.name, s.calls, s.cumulative_s * 1000))
    return "\n".join(lines)
