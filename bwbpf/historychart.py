"""Pictures of the history document (bwbpf/historyview.py): ``bwbpf history --png/--svg``.

What is drawn:

* **One slice**: a bar per bucket (or per quota period at ``--periods``), normal at the
  bottom and exempt stacked on it. Lines of the slice's *current* quota period (the
  document's ``period``: its configured limit and threshold per class) are added where
  they mean something:

  - the bars are quota periods (``--periods``, or buckets that are exactly the quota
    period, as days are for a ``daily`` period at midnight in the history's time zone):
    the normal limit and threshold as horizontal lines across the chart (the normal part
    of a bar starts at zero), and the exempt ones as a mark over each bar at that bar's
    normal usage plus the exempt limit or threshold (the exempt part starts on top of the
    normal part). The limits are today's, drawn over every bar.
  - the bars are shorter than the quota period (hours of a daily period): the current
    period's usage so far, cumulative per class, against its limit and threshold, on a
    second axis at the right. The line starts at what the period held before the chart's
    first bar, so it ends at the period's usage.
  - the bars are longer than the quota period (months of a daily period), or do not line
    up with it (days of a rolling period that began at 13:07): no lines; a note under
    the chart says why.

  A class whose bars (or usage this period) stay below half its threshold gets no lines
  but a legend line with its limit and how much of it was reached: a limit far above the
  usage would squash the bars into the bottom of the chart.

* **Several slices** (or ``--top N``): a bar per bucket stacked by slice (normal plus
  exempt), the slices that sent most at the bottom; at most MAX_SLICES of them, the rest as
  "others". No limit lines: each slice has its own, and the stack is a sum.

* **Nothing in the range**: the axes and title with "no traffic recorded".

Every bucket of the range has its place, those without traffic too (the document lists
only rows with traffic). matplotlib is imported only here, and only when a picture is
drawn: the daemon and ``stat`` never load it.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import stat
from collections.abc import Sequence
from datetime import datetime
from itertools import islice
from typing import Any, Literal
from zoneinfo import ZoneInfo

from bwbpf import files, history
from bwbpf.errors import Error
from bwbpf.historyview import PERIODS, resolution
from bwbpf.units import format_bytes, format_duration

Format = Literal["png", "svg"]
FORMATS: tuple[Format, ...] = ("png", "svg")
# 1000 x 500 pixels: wide enough for 30 daily bars with their dates, small for a web page.
WIDTH_IN, HEIGHT_IN, DPI = 10.0, 5.0, 100
WIDTH_PX, HEIGHT_PX = int(WIDTH_IN * DPI), int(HEIGHT_IN * DPI)
NORMAL_COLOUR = "#2f6db5"
EXEMPT_COLOUR = "#f0a032"
# Slices in a stack: matplotlib's tab10 without its grey, which is the "others" colour.
SLICE_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#393b79",
)
OTHERS_COLOUR = "#9a9a9a"
MAX_SLICES = len(SLICE_COLOURS)
# More bars than this are thinner than a pixel at WIDTH_PX: a coarser resolution says more.
MAX_BARS = 1000
# Tick labels along the x axis, at most: more overlap at WIDTH_PX.
_MAX_LABELS = 12
_NAME_CHARS = 16  # a longer slice name is cut in the legend
# The length of a 5-minute and an hour bar, for labels of days.
_BAR_S = {history.FIVE_MIN: 300, history.HOUR: 3600}
_UNITS = (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3))
_WHAT = {
    "5min": "5-minute",
    "hours": "hourly",
    "days": "daily",
    "months": "monthly",
    "years": "yearly",
    PERIODS: "quota period",
}
# Labels under the bars: the short one, and the long one where the day (month, year)
# changes and under the first bar.
_TICKS = {
    history.FIVE_MIN: ("%H:%M", "%H:%M\n%b %d"),
    history.HOUR: ("%H:00", "%H:00\n%b %d"),
    history.DAY: ("%b %d", "%b %d\n%Y"),
    history.MONTH: ("%b", "%b\n%Y"),
    history.YEAR: ("%Y", "%Y"),
}


class MatplotlibMissing(Error):
    """matplotlib cannot be imported; the message says which package brings it."""


def require() -> None:
    """Error (one line) unless matplotlib can be imported."""
    _matplotlib()


def check_target(path: str) -> None:
    """Error (one line, naming ``path``) when a picture cannot be written there; checked
    before the history is read, so that a typo costs nothing."""
    kind = _special(path)
    if kind == "stream":
        return  # written into as it is (a pipe, /dev/stdout), never replaced
    if kind is not None:
        raise Error(f"{path}: is {kind}, not a file a picture can be written to")
    target = os.path.realpath(path)
    if os.path.isdir(target):
        raise Error(f"{path}: is a directory")
    # The directory as the user wrote it, unless the file is a link to elsewhere.
    shown = os.path.dirname(target if os.path.islink(path) else os.path.abspath(path))
    directory = os.path.dirname(target)
    if not os.path.isdir(directory):
        raise Error(f"{path}: no such directory: {shown}")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise Error(f"{path}: directory {shown} is not writable")


def render(doc: dict[str, Any], path: str, fmt: Format) -> None:
    """Draw ``doc`` (historyview.document's) and write it to ``path`` as ``fmt`` ("png" or
    "svg"). The file is replaced in one rename: a reader (a web server) never sees half a
    picture. Error (one line, naming ``path``) when it cannot be written; MatplotlibMissing
    without matplotlib."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: not one of {', '.join(FORMATS)}")
    require()
    check_target(path)
    try:
        data = draw(doc, fmt)
    except MatplotlibMissing:
        raise
    except Error as exc:
        raise Error(f"{path}: {exc}") from None
    _write(path, data)


def draw(doc: dict[str, Any], fmt: Format) -> bytes:
    """The picture of ``doc`` as PNG or SVG bytes. The same document gives the same bytes."""
    mpl = _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rc = {
        # Text stays text in the SVG (searchable, smaller), and ids do not come from a
        # random salt: the same document gives the same file.
        "svg.fonttype": "none",
        "svg.hashsalt": "bwbpf",
        "font.family": "DejaVu Sans",
        "font.size": 9,
        "text.parse_math": False,  # a "$" in a name is a dollar, not mathematics
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.titlesize": 11,
    }
    with mpl.rc_context(rc):
        fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
        FigureCanvasAgg(fig)  # no pyplot: no backend to choose, no global figure list
        _Chart(doc, fig).draw()
        buf = io.BytesIO()
        # No dates or versions in the file, for the same reason.
        metadata = {"Date": None, "Creator": "bwbpf"} if fmt == "svg" else {"Software": "bwbpf"}
        fig.savefig(buf, format=fmt, dpi=DPI, metadata=metadata)
    return buf.getvalue()


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise MatplotlibMissing("needs matplotlib: apt-get install python3-matplotlib") from None
    return matplotlib


def _special(path: str) -> str | None:
    """None for a regular file or none at all; "stream" for a character device or a FIFO
    (written into, as ``> /dev/stdout`` would); else what it is, ``files.kind`` (refused: a
    rename over a socket or a block device would replace the node itself)."""
    try:
        # Followed as the kernel would (/dev/stdout is a link to /proc/self/fd/1, whose
        # "target" a pipe's realpath cannot name).
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None  # a directory is check_target's to refuse
    if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
        return "stream"
    return files.kind(mode)


def _write(path: str, data: bytes) -> None:
    if _special(path) == "stream":
        # A device or a pipe: a rename would put a regular file in place of the node.
        try:
            with open(path, "wb") as f:
                f.write(data)
        except OSError as exc:
            raise Error(f"{path}: cannot write: {exc.strerror or exc}") from None
        return
    target = os.path.realpath(path)  # a symlink's target is replaced, not the link
    tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise Error(f"{path}: cannot write: {exc.strerror or exc}") from None


# -- the chart ------------------------------------------------------------------------------


class _Chart:
    def __init__(self, doc: dict[str, Any], fig: Any) -> None:
        self.doc = doc
        self.fig = fig
        self.tz = ZoneInfo(doc["timezone"])
        self.res = resolution(doc["resolution"])
        self.slices: list[dict[str, Any]] = doc["slices"]
        self.slots = self._slots()
        if len(self.slots) > MAX_BARS:
            raise Error(
                f"more than {MAX_BARS} {doc['resolution']} bars for one picture: choose a"
                " coarser resolution or a shorter range"
            )
        self.index = {key: i for i, key in enumerate(self.slots)}
        self.note = ""
        self.ax: Any = None
        self.right: Any = None  # the axis of the cumulative lines, when there is one

    def _slots(self) -> list[tuple[float, float]]:
        """Each bar's (start, end): every bucket of the range, or each distinct period."""
        if self.res == PERIODS:
            keys = {(r["start_epoch"], r["end_epoch"]) for s in self.slices for r in s["rows"]}
            return sorted(keys)
        assert isinstance(self.res, int)
        since = int(self.doc["since_epoch"])
        until = math.ceil(self.doc["until_epoch"])
        if since == 0 and self.slices:
            # --years without --since asks for everything: start at the first traffic.
            since = min(int(r["start_epoch"]) for s in self.slices for r in s["rows"])
        # One more than may be drawn: enough to refuse --5min --since 1970 quickly.
        starts = list(islice(history.iter_starts(self.res, since, until, self.tz), MAX_BARS + 1))
        return [(s, history.next_start(self.res, s, self.tz)) for s in starts]

    def _key(self, row: dict[str, Any]) -> tuple[float, float]:
        if self.res == PERIODS:
            return (row["start_epoch"], row["end_epoch"])
        return (row["start_epoch"], history.next_start(self.res, row["start_epoch"], self.tz))

    def _series(self, s: dict[str, Any], field: str) -> list[int]:
        out = [0] * len(self.slots)
        for r in s["rows"]:
            i = self.index.get(self._key(r))
            if i is not None:
                out[i] += r[field]
        return out

    # -- drawing ----------------------------------------------------------------------------

    def draw(self) -> None:
        fig = self.fig
        ax = fig.add_axes((0.075, 0.17, 0.70, 0.68))
        self.ax = ax
        handles: list[Any] = []
        if not self.slices:
            tops = [0]
            ax.text(
                0.5,
                0.5,
                "no traffic recorded",
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize=14,
                color="#666666",
            )
        elif len(self.slices) == 1:
            tops = self._one_slice(handles)
        else:
            tops = self._stacked_slices(handles)
        top = max([*tops, 1])
        ax.set_ylim(0, top * 1.08)
        self._bytes_axis(ax)
        if not self.slices:
            ax.set_yticks([])
        ax.set_ylabel("bytes" + (" (normal + exempt)" if len(self.slices) > 1 else ""))
        self._x_axis(ax)
        ax.grid(axis="y", color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
        if self.right is not None:
            # Room for the right axis's labels before the legend.
            for axes in (ax, self.right):
                axes.set_position((0.075, 0.17, 0.635, 0.68))
        self._titles()
        if handles:
            # In figure coordinates: right of the axes, and of the right axis's labels.
            fig.legend(
                handles=handles,
                loc="upper left",
                bbox_to_anchor=(0.80, 0.85),
                frameon=False,
                fontsize=8.5,
                borderaxespad=0.0,
            )
        if self.note:
            fig.text(0.075, 0.025, self.note, fontsize=8, color="#555555", ha="left")

    def _one_slice(self, handles: list[Any]) -> list[int]:
        ax = self.ax
        s = self.slices[0]
        normal = self._series(s, "normal_bytes")
        exempt = self._series(s, "exempt_bytes")
        x = range(len(self.slots))
        handles.append(
            ax.bar(
                x,
                normal,
                0.8,
                color=NORMAL_COLOUR,
                label=f"normal  {format_bytes(s['total']['normal_bytes'])}",
            )
        )
        handles.append(
            ax.bar(
                x,
                exempt,
                0.8,
                bottom=normal,
                color=EXEMPT_COLOUR,
                label=f"exempt  {format_bytes(s['total']['exempt_bytes'])}",
            )
        )
        tops = [n + e for n, e in zip(normal, exempt, strict=True)]
        period = s["period"]
        if period is None:
            return tops
        kind = self._compare(period)
        if kind == "same":
            tops += self._period_lines(period, normal, exempt, handles)
        elif kind == "shorter":
            self._cumulative(period, s, handles)
        return tops

    def _compare(self, period: dict[str, Any]) -> str:
        """How a bar compares with the current quota period: "same" (a bar is one), "shorter"
        (a bar is part of one), "longer" (or not lined up with one: hours of a rolling
        period from 13:07, months of a daily period); "outside" when it is not in the
        chart."""
        start, end = period["start_epoch"], period["end_epoch"]
        length = format_duration(round(end - start))
        if self.res == PERIODS:
            return "same"
        assert isinstance(self.res, int)
        first, last = self.slots[0][0], self.slots[-1][1]
        if end <= first or start >= last:
            self.note = (
                f"Quota limits not drawn: the current quota period ({self._span(start, end)})"
                " is outside this range."
            )
            return "outside"
        bucket = history.bucket_starts(start, self.tz)[self.res]
        bucket_end = history.next_start(self.res, bucket, self.tz)
        if bucket == int(start) and bucket_end == int(end):
            return "same"
        if bucket_end - bucket < end - start:
            return "shorter"
        at = datetime.fromtimestamp(start, self.tz).strftime("%Y-%m-%d %H:%M")
        self.note = (
            f"Quota limits not drawn: {_WHAT[self.doc['resolution']]} bars do not line up with"
            f" quota periods ({length}, the current one from {at})."
        )
        return "longer"

    def _period_lines(
        self,
        period: dict[str, Any],
        normal: Sequence[int],
        exempt: Sequence[int],
        handles: list[Any],
    ) -> list[int]:
        """Each class's limit and threshold, if some bar comes near them; a legend line
        saying how near otherwise."""
        n = len(self.slots)
        tops: list[int] = []
        drawn = []
        for dname, used, colour in (
            ("normal", normal, NORMAL_COLOUR),
            ("exempt", exempt, EXEMPT_COLOUR),
        ):
            q = period[dname]
            if self._far(dname, q, max(used, default=0), handles):
                continue
            drawn.append(dname)
            for value, style, what in (
                (q["limit_bytes"], "--", "limit"),
                (q["threshold_bytes"], ":", "threshold"),
            ):
                label = f"{dname} {what}  {format_bytes(value)}"
                if dname == "normal":
                    # The normal part of a bar starts at zero: one line across.
                    handles.append(
                        self.ax.axhline(
                            value, color=colour, linestyle=style, linewidth=1.4, label=label
                        )
                    )
                    tops.append(value)
                    continue
                # The exempt part starts on top of the normal part: a mark over each bar.
                ys = [normal[i] + value for i in range(n)]
                handles.append(
                    self.ax.hlines(
                        ys,
                        [i - 0.4 for i in range(n)],
                        [i + 0.4 for i in range(n)],
                        colors=colour,
                        linestyles=style,
                        linewidth=1.6,
                        label=label,
                    )
                )
                tops += ys
        span = self._span(period["start_epoch"], period["end_epoch"])
        if not drawn:
            self.note = f"The current quota period's limits ({span}) are far above these bars."
        else:
            self.note = (
                f"Lines: the current quota period's limits and thresholds ({span}), over"
                " every bar" + ("; exempt ones over its normal part." if "exempt" in drawn else ".")
            )
        return tops

    def _cumulative(self, period: dict[str, Any], s: dict[str, Any], handles: list[Any]) -> None:
        from matplotlib import patheffects

        start, end = period["start_epoch"], period["end_epoch"]
        inside = [i for i, (b0, b1) in enumerate(self.slots) if b1 > start and b0 < end]
        if not inside:
            return
        right = self.ax.twinx()
        self.right = right
        right.spines["right"].set_visible(True)
        # Over bars of the same colour a line needs an edge to be seen.
        edge = [patheffects.withStroke(linewidth=4.5, foreground="white")]
        tops: list[int] = []
        drawn = False
        x0, x1 = inside[0] - 0.5, inside[-1] + 0.5
        for dname, colour in (("normal", NORMAL_COLOUR), ("exempt", EXEMPT_COLOUR)):
            series = self._series(s, f"{dname}_bytes")
            # What the period held before the chart's first bar of it: the line ends at
            # the period's usage.
            total = max(0, period[dname]["bytes"] - sum(series[i] for i in inside))
            xs, ys = [x0], [total]
            for i in inside:
                total += series[i]
                xs.append(i + 0.5)
                ys.append(total)
            (line,) = right.plot(
                xs,
                ys,
                color=colour,
                linewidth=2.2,
                path_effects=edge,
                label=f"{dname} this period",
            )
            handles.append(line)
            tops += ys
            q = period[dname]
            if self._far(dname, q, max(ys), handles):
                continue
            drawn = True
            for value, style, what in (
                (q["limit_bytes"], "--", "limit"),
                (q["threshold_bytes"], ":", "threshold"),
            ):
                handles.append(
                    right.hlines(
                        value,
                        x0,
                        x1,
                        colors=colour,
                        linestyles=style,
                        linewidth=1.5,
                        path_effects=edge,
                        label=f"{dname} {what}  {format_bytes(value)}",
                    )
                )
                tops.append(value)
        right.set_ylim(0, max([*tops, 1]) * 1.08)
        self._bytes_axis(right)
        right.set_ylabel("used this quota period (lines)")
        span = self._span(start, end)
        against = " against its limits and thresholds" if drawn else "; its limits are far above"
        self.note = (
            f"Lines (right axis): the current quota period ({span}), its usage so far{against}."
        )

    def _far(self, dname: str, q: dict[str, Any], peak: int, handles: list[Any]) -> bool:
        """True, with a legend line saying so, when ``peak`` stays below half the class's
        threshold: its lines are not drawn, so that a far limit does not squash the rest."""
        from matplotlib.lines import Line2D

        if peak * 2 >= q["threshold_bytes"]:
            return False
        share = 100 * peak / q["limit_bytes"] if q["limit_bytes"] else 0
        text = f"{dname} limit  {format_bytes(q['limit_bytes'])}\n(not drawn: {share:.0f}% reached)"
        handles.append(Line2D([], [], linestyle="none", label=text))
        return True

    def _stacked_slices(self, handles: list[Any]) -> list[int]:
        ax = self.ax
        ranked = sorted(self.slices, key=lambda s: (-s["total"]["total_bytes"], s["name"]))
        shown, rest = ranked[:MAX_SLICES], ranked[MAX_SLICES:]
        x = range(len(self.slots))
        bottom = [0] * len(self.slots)
        layers: list[tuple[str, list[int], str, int]] = [
            (
                s["name"],
                self._series(s, "total_bytes"),
                SLICE_COLOURS[i],
                s["total"]["total_bytes"],
            )
            for i, s in enumerate(shown)
        ]
        if rest:
            others = [0] * len(self.slots)
            for s in rest:
                for i, v in enumerate(self._series(s, "total_bytes")):
                    others[i] += v
            total = sum(s["total"]["total_bytes"] for s in rest)
            what = "other" if len(rest) == 1 else "others"
            layers.append((f"{len(rest)} {what}", others, OTHERS_COLOUR, total))
        for name, values, colour, total in layers:
            label = name if len(name) <= _NAME_CHARS else name[: _NAME_CHARS - 1] + "…"
            handles.append(
                ax.bar(
                    x,
                    values,
                    0.8,
                    bottom=bottom,
                    color=colour,
                    label=f"{label}  {format_bytes(total)}",
                )
            )
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        # The legend reads top down like the stack.
        handles.reverse()
        return bottom

    # -- axes and titles ------------------------------------------------------------------

    def _bytes_axis(self, ax: Any) -> None:
        from matplotlib.ticker import FuncFormatter, MaxNLocator

        ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
        top = ax.get_ylim()[1]
        unit, scale = next(((u, s) for u, s in _UNITS if top >= s), ("B", 1))

        def label(value: float, _pos: int) -> str:
            if value == 0:
                return "0"
            text = f"{value / scale:.2f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"

        ax.yaxis.set_major_formatter(FuncFormatter(label))

    def _x_axis(self, ax: Any) -> None:
        n = len(self.slots)
        pad = max(0, 5 - n) / 2  # a bar or two stay bar-wide, in the middle
        ax.set_xlim(-0.6 - pad, n - 0.4 + pad)
        if not n:
            ax.set_xticks([])
            return
        times = [datetime.fromtimestamp(start, self.tz) for start, _ in self.slots]
        step = next((k for k in self._steps() if math.ceil(n / k) <= _MAX_LABELS), None)
        if step is None:
            step = math.ceil(n / _MAX_LABELS)
        ticks = [i for i in range(n) if _place(times[i], self.res, i) % step == 0]
        labels = []
        previous = None
        daily = step * _BAR_S.get(self.res, 0) >= 86400  # labels a day or more apart
        for i in ticks:
            t = times[i]
            short, long = ("%b %d", "%b %d\n%Y") if daily else self._formats(t)
            whole = (t.year,) if daily else _whole(t, self.res)
            labels.append(t.strftime(long if whole != previous else short))
            previous = whole
        ax.set_xticks(ticks)
        ax.set_xticklabels(labels)
        if n <= 200:  # a small tick under every bar, to count them by
            ax.set_xticks(range(n), minor=True)
        ax.tick_params(axis="x", which="major", length=4)
        ax.tick_params(axis="x", which="minor", length=2)

    def _steps(self) -> tuple[int, ...]:
        """Bars between two labels, in the units people count in: half-hours, six hours,
        three days, quarters, decades."""
        if self.res == history.FIVE_MIN:
            return (1, 2, 3, 6, 12, 24, 36, 72, 144, 288)
        if self.res == history.HOUR:
            return (1, 2, 3, 6, 12, 24, 48, 168)
        if self.res == history.DAY:
            return (1, 2, 3, 7, 14, 28)
        if self.res == history.MONTH:
            return (1, 2, 3, 6, 12, 24)
        return (1, 2, 5, 10, 20, 50, 100)

    def _formats(self, t: datetime) -> tuple[str, str]:
        if self.res == PERIODS:
            fmt = "%b %d" if (t.hour, t.minute) == (0, 0) else "%b %d %H:%M"
            return fmt, fmt + "\n%Y"
        assert isinstance(self.res, int)
        return _TICKS[self.res]

    def _titles(self) -> None:
        doc = self.doc
        parts = [doc["interface"]]
        if len(self.slices) == 1:
            parts.append(self.slices[0]["name"])
        elif doc["top"] is not None:
            parts.append(f"top {len(self.slices)} slices")
        elif self.slices:
            parts.append(f"{len(self.slices)} slices")
        parts.append(f"{_WHAT[doc['resolution']]} usage")
        self.fig.text(0.075, 0.94, " · ".join(parts), fontsize=13, fontweight="bold", ha="left")
        since = _shown_time(doc["since"])
        if doc["since_epoch"] == 0 and self.slots:
            # --years without --since: from the first year with traffic, not from 1970.
            since = datetime.fromtimestamp(self.slots[0][0], self.tz).strftime("%Y-%m-%d %H:%M")
        until = _shown_time(doc["until"])
        self.fig.text(
            0.075,
            0.895,
            f"{since} to {until} ({doc['timezone']})",
            fontsize=9.5,
            color="#444444",
            ha="left",
        )

    def _span(self, start: float, end: float) -> str:
        a = datetime.fromtimestamp(start, self.tz).strftime("%Y-%m-%d %H:%M")
        b = datetime.fromtimestamp(end, self.tz).strftime("%Y-%m-%d %H:%M")
        return f"{a} to {b}"


def _place(t: datetime, res: int | str, i: int) -> int:
    """A bar's number in a count from a Monday (0001-01-01 was one), so that labels fall
    on round times: every third hour at 0, 3, 6..., every 7 days on Mondays."""
    day = t.toordinal() - 1
    if res == history.FIVE_MIN:
        return day * 288 + (t.hour * 60 + t.minute) // 5
    if res == history.HOUR:
        return day * 24 + t.hour
    if res == history.DAY:
        return day
    if res == history.MONTH:
        return t.year * 12 + t.month - 1
    if res == history.YEAR:
        return t.year
    return i


def _whole(t: datetime, res: int | str) -> tuple[int, ...]:
    """What the long label adds: the day of a time of day, else the year."""
    if res in (history.FIVE_MIN, history.HOUR):
        return (t.year, t.month, t.day)
    return (t.year,)


def _shown_time(iso: str) -> str:
    """``2026-12-01T13:05:00+01:00`` → ``2026-12-01 13:05``."""
    return iso[:16].replace("T", " ")
