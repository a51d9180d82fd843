"""``bwbpf history --png/--svg``: the pictures of the history document, read back.

A real history database in tmp_path, documents from historyview.document, pictures from
historychart; the PNG is decoded and its pixels counted, the SVG (text kept as text) read.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from bwbpf import config, historychart, historyview
from bwbpf.cli import main
from bwbpf.errors import Error
from bwbpf.history import Added, PeriodRow, Store

try:
    import matplotlib  # noqa: F401

    HAVE_MATPLOTLIB = True
except ImportError:
    HAVE_MATPLOTLIB = False

needs_matplotlib = pytest.mark.skipif(
    not HAVE_MATPLOTLIB, reason="apt-get install python3-matplotlib"
)

UTC = ZoneInfo("UTC")
T0 = 1796083200.0  # 2026-12-01T00:00:00Z, a Tuesday
DAY_S = 86400
MB = 10**6

CONFIG = """
[node]
interface = "lo"
state_dir = "{state_dir}"

[quota]
period = "daily"

[defaults]
normal = {{ limit = "10MB", threshold = 0.8, max_rate = "1mbit", min_rate = "8bit" }}
exempt = {{ limit = "20MB", threshold = 0.5, max_rate = "1gbit", min_rate = "8bit" }}
"""


def make_config(tmp_path: Path, names: Sequence[str] = ("alice", "bob")) -> config.Config:
    text = CONFIG.format(state_dir=tmp_path / "state")
    for i, name in enumerate(names):
        text += f'\n[[slice]]\nname = "{name}"\nid = {i + 5}\nmatch = {{ mark = {i + 5} }}\n'
    path = tmp_path / "bwbpf.toml"
    path.write_text(text)
    return config.load(path, check_interface=False)


def fill(
    cfg: config.Config,
    days: dict[str, Sequence[tuple[int, int]]],
    hours: dict[str, Sequence[tuple[int, int]]] | None = None,
) -> None:
    """``days``: each slice's (normal, exempt) bytes per day from T0, a period row for
    each; ``hours``: (normal, exempt) per hour from T0 (the first day's traffic instead)."""
    store, _ = Store.open(cfg.history_path, cfg.interface)
    added, periods = [], []
    for name, per_day in days.items():
        for d, pair in enumerate(per_day):
            start = T0 + d * DAY_S
            spread = hours.get(name) if hours and d == 0 else None
            for dclass, nbytes in enumerate(pair):
                if spread is None and nbytes:
                    added.append(Added(name, dclass, start + 60, nbytes, 1 + nbytes // 1000))
                periods.append(PeriodRow(name, dclass, start, start + DAY_S, nbytes, 1))
            for h, hour_pair in enumerate(spread or ()):
                for dclass, nbytes in enumerate(hour_pair):
                    if nbytes:
                        added.append(Added(name, dclass, start + h * 3600 + 60, nbytes, 1))
    store.write(added, periods, UTC, cfg.history.keep())
    store.close()


def doc_of(cfg: config.Config, res: str = "days", **kw: object) -> dict:
    store = Store.open_readonly(cfg.history_path, cfg.interface)
    try:
        kw.setdefault("now", T0 + 2 * DAY_S)
        kw.setdefault("since", T0)
        return historyview.document(store, cfg, res, **kw)  # type: ignore[arg-type]
    finally:
        store.close()


def svg_text(doc: dict) -> str:
    return historychart.draw(doc, "svg").decode()


def rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def pixels(path: Path) -> object:
    """The PNG as an array of 8-bit RGB values (height, width, 3)."""
    import matplotlib.image
    import numpy as np

    image = matplotlib.image.imread(str(path))
    return np.rint(image[:, :, :3] * 255).astype(int)


def mask(image: object, colour: str) -> object:
    import numpy as np

    return np.all(np.abs(image - np.array(rgb(colour))) <= 2, axis=2)  # type: ignore[operator]


def bars(column_counts: Sequence[int]) -> list[int]:
    """The tallest column of each run of columns that hold the colour."""
    runs: list[int] = []
    inside = False
    for count in column_counts:
        if count and not inside:
            runs.append(0)
        inside = bool(count)
        if count:
            runs[-1] = max(runs[-1], int(count))
    return runs


# -- the pictures ----------------------------------------------------------------------------


@needs_matplotlib
def test_png_is_the_picture_of_one_slice(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    # Below half the thresholds: no limit line crosses the bars that are measured.
    fill(cfg, {"alice": [(3 * MB, 1_500_000), (1_500_000, 0)]})
    out = tmp_path / "alice.png"
    historychart.render(doc_of(cfg, names=["alice"]), str(out), "png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = pixels(out)
    assert image.shape == (historychart.HEIGHT_PX, historychart.WIDTH_PX, 3)  # type: ignore[attr-defined]
    white = mask(image, "#ffffff").mean()  # type: ignore[attr-defined]
    assert white < 0.95, "blank"
    # The bars are inside the axes; the legend's patches are right of them.
    axes_right = int(0.775 * historychart.WIDTH_PX)
    normal_mask = mask(image, historychart.NORMAL_COLOUR)[:, :axes_right]  # type: ignore[index]
    exempt_mask = mask(image, historychart.EXEMPT_COLOUR)[:, :axes_right]  # type: ignore[index]
    normal_bars, exempt_bars = bars(normal_mask.sum(axis=0)), bars(exempt_mask.sum(axis=0))
    assert len(normal_bars) == 2 and len(exempt_bars) == 1, (normal_bars, exempt_bars)
    # Heights follow the bytes: 3 MB and 1.5 MB of normal, 1.5 MB of exempt.
    assert normal_bars[0] == pytest.approx(2 * normal_bars[1], rel=0.03)
    assert exempt_bars[0] == pytest.approx(normal_bars[1], rel=0.03)
    assert normal_bars[0] > 150  # a chart, not a sliver
    # Stacked: in the first bar's middle column the exempt part ends where normal begins.
    column = int(exempt_mask.any(axis=0).nonzero()[0].mean())
    exempt_rows = exempt_mask[:, column].nonzero()[0]
    normal_rows = normal_mask[:, column].nonzero()[0]
    assert abs(int(normal_rows.min()) - int(exempt_rows.max())) <= 2


@needs_matplotlib
def test_svg_names_the_slice_title_and_limit_lines(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    fill(cfg, {"alice": [(7 * MB, 1 * MB), (9 * MB, 0)]})
    svg = svg_text(doc_of(cfg, names=["alice"]))
    assert "lo · alice · daily usage" in svg
    assert "2026-12-01 00:00 to 2026-12-03 00:00 (UTC)" in svg
    # Today's period is a day, as the bars are: its lines across them.
    assert "normal limit  10.0 MB" in svg and "normal threshold  8.0 MB" in svg
    # The exempt part stays far below its limit: not drawn, and said so.
    assert "exempt limit  20.0 MB" in svg and "(not drawn: 5% reached)" in svg
    assert "exempt threshold" not in svg
    assert "Lines: the current quota period's limits" in svg and "exempt ones" not in svg
    assert "normal  16.0 MB" in svg and "exempt  1.0 MB" in svg


@needs_matplotlib
def test_exempt_lines_sit_on_the_normal_part(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    fill(cfg, {"alice": [(2 * MB, 12 * MB)]})
    doc = doc_of(cfg, names=["alice"], now=T0 + DAY_S)
    svg = svg_text(doc)
    assert "exempt limit  20.0 MB" in svg and "exempt threshold  10.0 MB" in svg
    assert "normal limit  10.0 MB" in svg and "(not drawn: 20% reached)" in svg
    assert "normal threshold" not in svg
    assert "every bar; exempt ones over its normal part." in svg


@needs_matplotlib
def test_hours_show_the_period_so_far_against_its_limit(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    hourly = [(MB, 0)] * 9  # 9 MB by 09:00: past the 8 MB threshold
    fill(cfg, {"alice": [(9 * MB, 0)]}, hours={"alice": hourly})
    doc = doc_of(cfg, "hours", names=["alice"], now=T0 + 12 * 3600, since=T0)
    svg = svg_text(doc)
    assert "lo · alice · hourly usage" in svg
    assert "normal this period" in svg and "used this quota period (lines)" in svg
    assert "normal limit  10.0 MB" in svg and "normal threshold  8.0 MB" in svg
    assert "Lines (right axis)" in svg


@needs_matplotlib
def test_months_hold_many_periods_and_draw_no_limit(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    fill(cfg, {"alice": [(9 * MB, 0)]})
    svg = svg_text(doc_of(cfg, "months", names=["alice"], since=T0 - 200 * DAY_S))
    assert "limit  10.0 MB" not in svg
    assert "monthly bars do not line up with quota periods (1 day, the current one from" in svg


@needs_matplotlib
def test_top_n_stacks_the_largest_slices_and_sums_the_others(tmp_path: Path) -> None:
    names = [f"s{i:02d}" for i in range(13)]
    cfg = make_config(tmp_path, names)
    # s00 sends least, s12 most.
    fill(cfg, {name: [((i + 1) * MB, 0)] for i, name in enumerate(names)})
    doc = doc_of(cfg, top=12, now=T0 + DAY_S)
    assert [t["name"] for t in doc["top"]] == names[::-1][:12]
    svg = svg_text(doc)
    assert "lo · top 12 slices · daily usage" in svg
    shown = [n for n in names if f">{n}  " in svg]
    # The ten that sent most, and the next two as "2 others" (3 MB): s00 is not in the top.
    assert shown == names[3:], shown
    assert "2 others  5.0 MB" in svg
    # Without --top, every slice: the three smallest are the others.
    svg = svg_text(doc_of(cfg, now=T0 + DAY_S))
    assert "lo · 13 slices · daily usage" in svg and "3 others  6.0 MB" in svg


@needs_matplotlib
def test_an_empty_range_says_so(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    fill(cfg, {"alice": [(MB, 0)]})
    doc = doc_of(cfg, names=["nobody"])
    assert doc["slices"] == []
    svg = svg_text(doc)
    assert "no traffic recorded" in svg and "lo · daily usage" in svg
    out = tmp_path / "empty.png"
    historychart.render(doc, str(out), "png")
    assert pixels(out).shape[:2] == (historychart.HEIGHT_PX, historychart.WIDTH_PX)  # type: ignore[attr-defined]


@needs_matplotlib
def test_the_same_document_makes_the_same_files(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    fill(cfg, {"alice": [(7 * MB, MB)], "bob": [(2 * MB, 0)]})
    doc = doc_of(cfg)
    for fmt in historychart.FORMATS:
        assert historychart.draw(doc, fmt) == historychart.draw(doc, fmt), fmt
    svg = svg_text(doc)
    assert "<dc:date>" not in svg and "Matplotlib v" not in svg


@needs_matplotlib
def test_too_many_bars_is_one_error(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    fill(cfg, {"alice": [(MB, 0)]})
    doc = doc_of(cfg, "5min", since=T0, now=T0 + 5 * DAY_S)
    with pytest.raises(
        Error, match=r"out.png: more than 1000 5min bars for one picture: choose a coarser"
    ):
        historychart.render(doc, str(tmp_path / "out.png"), "png")
    assert not (tmp_path / "out.png").exists()


@needs_matplotlib
def test_a_picture_is_replaced_whole(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    fill(cfg, {"alice": [(MB, 0)]})
    doc = doc_of(cfg)
    real = tmp_path / "real.svg"
    real.write_text("old")
    link = tmp_path / "link.svg"
    link.symlink_to(real)
    historychart.render(doc, str(link), "svg")
    assert link.is_symlink() and real.read_text().startswith("<?xml")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_unwritable_targets_are_one_error(tmp_path: Path) -> None:
    (tmp_path / "pics").mkdir()
    (tmp_path / "a-file").write_text("")
    with pytest.raises(Error, match=r"pics: is a directory$"):
        historychart.check_target(str(tmp_path / "pics"))
    with pytest.raises(Error, match=r"x.png: no such directory: .*/missing$"):
        historychart.check_target(str(tmp_path / "missing" / "x.png"))
    with pytest.raises(Error, match=r"x.png: no such directory: .*/a-file$"):
        historychart.check_target(str(tmp_path / "a-file" / "x.png"))
    # Not writable even for root: procfs.
    with pytest.raises(Error, match=r"^/proc/self/x.png: directory /proc/self is not writable$"):
        historychart.check_target("/proc/self/x.png")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in a directory of mode 0500")
def test_a_directory_without_write_permission_is_one_error(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(Error, match=r"directory .*/ro is not writable"):
        historychart.check_target(str(ro / "x.png"))


@needs_matplotlib
def test_a_failed_write_names_the_file(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    fill(cfg, {"alice": [(MB, 0)]})
    # sysfs refuses new files, even to root (EACCES; EROFS where it is mounted read-only).
    target = "/sys/bwbpf-history-test.png"
    with pytest.raises(Error, match=r"^/sys/bwbpf-history-test.png: cannot write: "):
        historychart.render(doc_of(cfg), target, "png")


@needs_matplotlib
def test_a_device_is_written_into_never_replaced(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    fill(cfg, {"alice": [(MB, 0)]})
    with pytest.raises(Error, match=r"^/dev/full: cannot write: No space left on device$"):
        historychart.render(doc_of(cfg), "/dev/full", "png")
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)  # still the device
    link = tmp_path / "to-null.svg"
    link.symlink_to("/dev/null")
    historychart.render(doc_of(cfg), str(link), "svg")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode) and link.is_symlink()


@needs_matplotlib
def test_a_fifo_gets_the_picture(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    fill(cfg, {"alice": [(MB, 0)]})
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    historychart.render(doc_of(cfg), str(fifo), "png")
    reader.join(timeout=30)
    assert got and got[0].startswith(b"\x89PNG")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_a_socket_is_refused_before_anything_is_drawn(tmp_path: Path) -> None:
    path = tmp_path / "sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        with pytest.raises(Error, match=r"sock: is a socket, not a file a picture can be"):
            historychart.check_target(str(path))
    assert stat.S_ISSOCK(os.stat(path).st_mode)


def test_matplotlib_is_imported_only_to_draw() -> None:
    code = (
        "import sys\n"
        "import bwbpf.cli, bwbpf.daemon, bwbpf.report, bwbpf.historyview, bwbpf.historychart\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'matplotlib'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- the command -------------------------------------------------------------------------------


def history(cfg: config.Config, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        main, ["history", "-c", cfg.path, "--since", "2026-12-01", "--until", "2026-12-03", *args]
    )
    return result.exit_code, result.stdout, result.stderr


@needs_matplotlib
def test_cli_writes_png_and_svg_instead_of_the_table(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    fill(cfg, {"alice": [(7 * MB, MB), (9 * MB, 0)], "bob": [(2 * MB, 0)]})
    png, svg = tmp_path / "h.png", tmp_path / "h.svg"
    code, out, err = history(cfg, "alice", "--png", str(png), "--svg", str(svg))
    # On stderr: stdout may be the picture (--png /dev/stdout).
    assert (code, out) == (0, "")
    assert err == f"wrote {png}\nwrote {svg}\n"
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "lo · alice · daily usage" in svg.read_text()
    code, _, err = history(cfg, "--top", "1", "--svg", str(svg))
    assert code == 0 and err == f"wrote {svg}\n"
    text = svg.read_text()
    assert "lo · alice · daily usage" in text and ">bob" not in text


@needs_matplotlib
def test_cli_an_empty_range_writes_a_chart_that_says_so(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    fill(cfg, {"alice": [(MB, 0)]})
    svg = tmp_path / "h.svg"
    code, out, err = history(cfg, "bob", "--svg", str(svg))
    assert code == 0 and out == ""
    assert err == f"bwbpf: no history in this range for: bob\nwrote {svg}\n"
    assert "no traffic recorded" in svg.read_text()


@needs_matplotlib
def test_cli_png_to_stdout_is_the_picture_alone(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    fill(cfg, {"alice": [(MB, 0)]})
    cmd = [sys.executable, "-m", "bwbpf.cli", "history", "-c", cfg.path, "--png", "/dev/stdout"]
    done = subprocess.run(cmd, capture_output=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"\x89PNG") and done.stdout.endswith(b"IEND\xaeB`\x82")
    assert done.stderr == b"wrote /dev/stdout\n"


@pytest.mark.parametrize("option", ["--png", "--svg"])
def test_cli_bad_targets_are_one_line_naming_option_and_file(tmp_path: Path, option: str) -> None:
    # No history database yet: the target is checked before the history is read.
    cfg = make_config(tmp_path)
    cases = {
        str(tmp_path): "is a directory",
        str(tmp_path / "missing" / "h.out"): f"no such directory: {tmp_path}/missing",
        "/proc/self/h.out": "directory /proc/self is not writable",
    }
    for target, why in cases.items():
        code, out, err = history(cfg, option, target)
        assert code == 1 and out == "", (target, err)
        assert err == f"bwbpf: {option} {target}: {why}\n"


@needs_matplotlib
@pytest.mark.parametrize("option", ["--png", "--svg"])
def test_cli_a_failed_write_is_one_line(tmp_path: Path, option: str) -> None:
    cfg = make_config(tmp_path)
    fill(cfg, {"alice": [(MB, 0)]})
    code, out, err = history(cfg, option, "/sys/bwbpf-history-test.out")
    assert code == 1 and out == ""
    assert err.startswith(f"bwbpf: {option} /sys/bwbpf-history-test.out: cannot write: ")
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_without_matplotlib_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = make_config(tmp_path)  # no history database: matplotlib is asked for first
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib: ImportError
    code, out, err = history(cfg, "--png", str(tmp_path / "h.png"))
    assert (code, out) == (1, "")
    assert err == "bwbpf: --png needs matplotlib: apt-get install python3-matplotlib\n"
    assert not (tmp_path / "h.png").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--png", "a.png", "--json"), "--png and --svg exclude --json and --csv"),
        (("--svg", "a.svg", "--csv"), "--png and --svg exclude --json and --csv"),
        (("--png", "same", "--svg", "same"), "--png and --svg name the same file"),
    ],
)
def test_cli_chart_usage_errors(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    cfg = make_config(tmp_path)
    code, _, err = history(cfg, *args)
    assert code == 2 and message in err


def test_cli_help_has_chart_examples() -> None:
    result = CliRunner().invoke(main, ["history", "--help"])
    assert result.exit_code == 0
    assert "--png alice.png" in result.stdout and "--svg top.svg" in result.stdout
    assert "no traffic recorded" in result.stdout
