"""The ``bwbpf`` command: a thin layer that turns bwbpf.Error into one line and exit 1."""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, TypeVar

import click

from bwbpf import __version__, config
from bwbpf.errors import ConfigError, Error, one_line
from bwbpf.model import Config

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_CONFIG = "/etc/bwbpf/bwbpf.toml"
TAKE_OVER_HELP = (
    "Replace a classifier another bwbpf configuration installed on the interface (another"
    " state_dir or bpffs); its daemon then stops shaping and says so."
)


def _debug() -> bool:
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("debug"))


def _fail(message: str) -> None:
    """One line on stderr, exit 1. The message is folded onto one line: it may quote a
    file's contents or an exception's text."""
    click.echo(f"bwbpf: {one_line(message)}", err=True)
    sys.exit(1)


def _os_error(exc: OSError) -> str:
    return one_line(exc) + (" (run as root)" if isinstance(exc, PermissionError) else "")


def _friendly(func: F) -> F:
    """bwbpf.Error, or any other exception from bad input or a failing system (OSError such
    as ENOSPC, EROFS or EACCES, UnicodeDecodeError, RecursionError, ValueError), → one line
    ``bwbpf: ...`` on stderr and exit 1; a traceback only with --debug. Usage errors (click's
    own exceptions) pass through and exit 2."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:  # an expected outcome: listed even with --debug
            for problem in exc.problems:
                click.echo(f"bwbpf: {problem}", err=True)
            sys.exit(1)
        except Error as exc:
            if _debug():
                raise
            _fail(str(exc))
        except OSError as exc:
            if _debug():
                raise
            _fail(_os_error(exc))
        except RecursionError:
            if _debug():
                raise
            _fail("input nested too deeply")
        except (click.ClickException, click.Abort, click.exceptions.Exit):
            raise
        except (UnicodeError, ValueError, TypeError, KeyError, IndexError) as exc:
            if _debug():
                raise
            _fail(f"{type(exc).__name__}: {exc} (--debug shows where)")

    return wrapper  # type: ignore[return-value]


config_option = click.option(
    "--config",
    "-c",
    "config_path",
    default=DEFAULT_CONFIG,
    show_default=True,
    # Not dir_okay=False: config.load refuses a directory (or FIFO, or device) itself, as
    # one "bwbpf: FILE: ..." line and exit 1, like every other unusable config file.
    type=click.Path(),
    help="The TOML configuration file.",
)


def _load(path: str) -> config.Config:
    return _warned(config.load(path))


def _warned(cfg: config.Config) -> config.Config:
    for warning in cfg.warnings:
        logging.getLogger("bwbpf").warning("%s", warning)
    return cfg


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.version_option(__version__, prog_name="bwbpf")
def main(debug: bool, verbose: int) -> None:
    """Per-slice egress accounting and daily byte quotas with eBPF and HTB.

    \b
    Examples:
      bwbpf check -c /etc/bwbpf/bwbpf.toml     validate a configuration
      bwbpf up -c bwbpf.toml                   install the classifier and HTB tree
      bwbpf stat -c bwbpf.toml                 where every slice stands
      bwbpf stat -c bwbpf.toml --json alice 5  alice's usage as JSON every 5 s
      bwbpf run -c bwbpf.toml                  the quota daemon
      bwbpf down -c bwbpf.toml                 remove everything bwbpf installed
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="bwbpf: %(levelname)s: %(message)s", stream=sys.stderr)


@main.command()
@config_option
@_friendly
def check(config_path: str) -> None:
    """Validate a configuration: exit 0 if valid, else 1 with every problem on stderr.

    \b
    Example:
      bwbpf check -c /etc/bwbpf/bwbpf.toml
    """
    cfg = config.load(config_path)
    for warning in cfg.warnings:
        click.echo(f"bwbpf: warning: {warning}", err=True)
    click.echo(
        f"{config_path}: ok: {len(cfg.slices)} slices on {cfg.interface},"
        f" {len(cfg.exempt_prefixes)} exempt prefixes"
    )


@main.command()
@config_option
@click.option("--take-over", is_flag=True, help=TAKE_OVER_HELP)
@_friendly
def up(config_path: str, take_over: bool) -> None:
    """Install or refresh the classifier and the HTB tree (idempotent).

    Counters are pinned in bpffs and survive this command exiting and running again. An
    interface whose classifier another bwbpf installed (another state_dir or bpffs) is
    refused, since both would account the same traffic, unless --take-over.

    \b
    Examples:
      bwbpf up -c /etc/bwbpf/bwbpf.toml
      bwbpf up -c new.toml --take-over     replace another configuration's classifier
    """
    from bwbpf import datapath, lifecycle, node

    cfg = _load(config_path)
    holder = lifecycle.lock_holder(lifecycle.lock_path(cfg.state_dir, cfg.interface))
    if holder is not None and datapath.counters_layout_changes(cfg.pin_dir):
        # The running daemon reads the pinned map with its own layout, and would pin it
        # back; its restart (of this version) moves the map aside and accounts it.
        raise Error(
            f"a bwbpf daemon (pid {holder or '?'}) is running on {cfg.interface} with counters"
            " of another layout: restart it (systemctl restart bwbpf), which replaces them"
            " and accounts what they counted; nothing was changed"
        )
    report = node.up(cfg, take_over=take_over)
    click.echo(
        f"{cfg.interface}: classifier attached; {len(cfg.slices) + 1} slices;"
        f" {report.class_changes} class changes, {len(report.classes_removed)} removed"
    )
    for path in datapath.retired_pins(cfg.pin_dir):
        click.echo(
            f"{cfg.interface}: counters of another bwbpf layout wait in {path}; the daemon"
            " adds what they counted to the usage when it starts (`bwbpf down` would lose it)"
        )


@main.command()
@config_option
@_friendly
def down(config_path: str) -> None:
    """Remove everything bwbpf installed on the interface (qdisc, classes, filter, pins).

    Refused while a daemon runs on the interface: it would put the tree back with empty
    maps, and the period's counts would be lost. Stop the daemon first.

    \b
    Example:
      systemctl stop bwbpf && bwbpf down -c /etc/bwbpf/bwbpf.toml
    """
    from bwbpf import lifecycle, node

    cfg = config.load(config_path, check_interface=False)
    holder = lifecycle.lock_holder(lifecycle.lock_path(cfg.state_dir, cfg.interface))
    if holder is not None:
        raise Error(
            f"a bwbpf daemon (pid {holder or '?'}) is running on {cfg.interface}: stop it"
            " first (systemctl stop bwbpf, or kill -TERM it); nothing was removed"
        )
    removed = node.down(cfg)
    if not removed:
        click.echo(f"{cfg.interface}: nothing of bwbpf's was installed")
    for line in removed:
        click.echo(f"removed {line}")


@main.command()
@config_option
@click.option("--once", is_flag=True, help="Run one tick, then exit.")
@click.option(
    "--dry-run", is_flag=True, help="Account and decide, but change no HTB class and send no mail."
)
@click.option("--take-over", is_flag=True, help=TAKE_OVER_HELP)
@_friendly
def run(config_path: str, once: bool, dry_run: bool, take_over: bool) -> None:
    """The quota daemon: every tick, counters → usage → ceilings → HTB, state, mail, status.

    Only one daemon runs per interface. SIGHUP reloads the configuration (an invalid one is
    reported and the old one kept); SIGTERM and SIGINT save the state and exit 0, leaving
    the shaping in place.

    \b
    Examples:
      bwbpf run -c /etc/bwbpf/bwbpf.toml            run until SIGTERM
      bwbpf run -c bwbpf.toml --once -v             one tick, saying what it did
      bwbpf run -c bwbpf.toml --dry-run             account and decide only
    """
    from bwbpf.daemon import Daemon

    # Warnings (min rates clamped) are logged by the daemon, at start and on reload.
    Daemon(config.load(config_path), dry_run=dry_run, take_over=take_over).run(once=once)


@main.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON document per report.")
@click.argument("args", nargs=-1)
@_friendly
def stat(config_path: str, as_json: bool, args: tuple[str, ...]) -> None:
    """Usage per slice and destination class: [SLICE ...] [INTERVAL [COUNT]].

    Trailing numbers are the interval in seconds and the number of reports, as in bcc's
    tools; names before them select slices. A listing of every slice is the running
    daemon's answer (from its last tick and the live counters) when it runs this config;
    otherwise, and for named slices, it is read from the state files and the kernel.

    \b
    Examples:
      bwbpf stat -c bwbpf.toml              one report of every slice
      bwbpf stat -c bwbpf.toml alice bob    only these slices
      bwbpf stat -c bwbpf.toml 2            every 2 s until Ctrl-C
      bwbpf stat -c bwbpf.toml --json 1 5   five JSON documents, 1 s apart
    """
    from bwbpf import configcache, statsocket

    names, interval, count = _split_stat_args(args)
    # From the cache of validated configs: at 10,000 slices parsing alone takes ~0.4 s.
    # Every slice is asked of a running daemon (which answers from its last tick); without
    # one, or for some slices, the report is made here from the files and the kernel.
    cfg = _warned(configcache.load(config_path, names or ()))
    unknown = [n for n in names if n not in {s.name for s in cfg.all_slices()}]
    if unknown:
        raise click.UsageError(f"no such slice: {', '.join(unknown)}")
    full: Config | None = None
    n = 0
    while True:
        answer = None if names else statsocket.ask(cfg)
        if answer is not None and as_json:
            click.echo(answer)
        else:
            # Imported only when needed: a daemon's answer needs none of it.
            from bwbpf import report

            if answer is not None:
                doc = json.loads(answer)
            else:
                if full is None:
                    full = cfg if names else configcache.load(config_path)
                    # The config (40,000 objects at 10,000 slices) is never garbage: no
                    # collection need walk it while the report is built (~50 ms).
                    gc.freeze()
                doc = report.build(full, names)
            click.echo(json.dumps(doc, sort_keys=True) if as_json else report.render(doc))
        n += 1
        if interval is None or (count is not None and n >= count):
            break
        time.sleep(interval)


@main.command()
@config_option
@click.option("--5min", "res", flag_value="5min", help="5-minute rows (last 2 hours).")
@click.option("--hours", "res", flag_value="hours", help="Hourly rows (last 24 hours).")
@click.option("--days", "res", flag_value="days", default=True, help="Daily rows (last 30 days).")
@click.option("--months", "res", flag_value="months", help="Monthly rows (last 12 months).")
@click.option("--years", "res", flag_value="years", help="Yearly rows (all).")
@click.option(
    "--periods", "res", flag_value="periods", help="Quota periods' totals (last 30 days)."
)
@click.option("--since", metavar="T", help="From T: 2026-12-01, '2026-12-01 13:00' or 7d (ago).")
@click.option("--until", metavar="T", help="Up to T (not included); default now.")
@click.option(
    "--top", type=click.IntRange(1, 100_000), metavar="N", help="The N slices that sent most."
)
@click.option("--json", "as_json", is_flag=True, help="The history document as JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV: a line per slice and row.")
@click.option("--png", metavar="FILE", help="Draw a chart to FILE (PNG) instead of the table.")
@click.option("--svg", metavar="FILE", help="Draw a chart to FILE (SVG) instead of the table.")
@click.argument("slices", nargs=-1)
@_friendly
def history(
    config_path: str,
    res: str,
    since: str | None,
    until: str | None,
    top: int | None,
    as_json: bool,
    as_csv: bool,
    png: str | None,
    svg: str | None,
    slices: tuple[str, ...],
) -> None:
    """Usage history per slice: [SLICE ...], normal, exempt, total and packets.

    Read from the history database the daemon writes ([history] in the config; every
    write_interval and when a 5-minute row is complete, so the last minutes may not be in
    it yet: `bwbpf stat` has them). Days, months and years begin at midnight in [history]
    timezone. A slice no longer configured keeps its history.

    \b
    Examples:
      bwbpf history -c bwbpf.toml                   every slice, the last 30 days
      bwbpf history -c bwbpf.toml alice --hours     alice's last 24 hours
      bwbpf history -c bwbpf.toml --top 10 --since 7d     who sent most this week
      bwbpf history -c bwbpf.toml --months --csv    monthly rows for a billing script
      bwbpf history -c bwbpf.toml --periods --json  each quota period's totals
      bwbpf history -c bwbpf.toml alice --png alice.png   alice's 30 days, her limits
      bwbpf history -c bwbpf.toml --top 5 --hours --svg top.svg   the top 5 by hour
      bwbpf history -c bwbpf.toml --png /dev/stdout | display    straight to a viewer

    With --png or --svg (both may be given) the chart is written instead of the table:
    one slice's bars split normal and exempt, with its quota period's limit and threshold
    where the bars can be compared with them; several slices stacked (the 10 that sent
    most, then the others). An empty range makes a chart saying "no traffic recorded".
    Needs matplotlib (apt-get install python3-matplotlib).
    """
    from zoneinfo import ZoneInfo

    from bwbpf import historyview
    from bwbpf.history import Store

    if as_json and as_csv:
        raise click.UsageError("--json and --csv exclude each other")
    charts = [(fmt, path) for fmt, path in (("png", png), ("svg", svg)) if path is not None]
    if charts and (as_json or as_csv):
        raise click.UsageError("--png and --svg exclude --json and --csv")
    if png is not None and svg is not None and os.path.realpath(png) == os.path.realpath(svg):
        raise click.UsageError("--png and --svg name the same file")
    if charts:
        from bwbpf import historychart

        # Before the history is read: a missing matplotlib or a bad path costs nothing.
        for fmt, path in charts:
            with _option_errors(f"--{fmt}"):
                historychart.require()
                historychart.check_target(path)
    # Without the interface check: the history of an interface since removed stays readable.
    cfg = _warned(config.load(config_path, check_interface=False))
    if not cfg.history.enabled:
        raise Error(f"{cfg.path}: history is off ([history] enabled = false)")
    now = time.time()
    tz = ZoneInfo(cfg.history.timezone)
    t0 = historyview.parse_time(since, tz, now, "--since") if since else None
    t1 = historyview.parse_time(until, tz, now, "--until") if until else None
    store = Store.open_readonly(cfg.history_path, cfg.interface)
    try:
        doc = historyview.document(
            store, cfg, res, now=now, since=t0, until=t1, names=slices, top=top
        )
    finally:
        store.close()
    missing = sorted(set(slices) - {s["name"] for s in doc["slices"]})
    if missing and not as_json and not as_csv:
        click.echo(f"bwbpf: no history in this range for: {', '.join(missing)}", err=True)
    if charts:
        for fmt, path in charts:
            with _option_errors(f"--{fmt}"):
                historychart.render(doc, path, fmt)
            click.echo(f"wrote {path}", err=True)  # stdout may be the picture itself
    elif as_json:
        click.echo(json.dumps(doc, sort_keys=True))
    elif as_csv:
        click.echo(historyview.render_csv(doc), nl=False)
    else:
        click.echo(historyview.render_text(doc))


@contextmanager
def _option_errors(option: str) -> Iterator[None]:
    """An Error of a chart names its option first: ``--png out.png: is a directory``."""
    try:
        yield
    except Error as exc:
        raise Error(f"{option} {exc}") from None


def _split_stat_args(args: tuple[str, ...]) -> tuple[list[str], float | None, int | None]:
    numbers: list[str] = []
    rest = list(args)
    while rest and _is_number(rest[-1]) and len(numbers) < 2:
        numbers.insert(0, rest.pop())
    if any(_is_number(a) for a in rest):
        raise click.UsageError("INTERVAL and COUNT come after the slice names")
    interval = float(numbers[0]) if numbers else None
    count = int(numbers[1]) if len(numbers) > 1 else None
    if interval is not None and interval <= 0:
        raise click.UsageError("INTERVAL must be above 0")
    if len(numbers) > 1 and (not numbers[1].isdigit() or int(numbers[1]) < 1):
        raise click.UsageError("COUNT must be a whole number above 0")
    return rest, interval, count


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


if __name__ == "__main__":  # pragma: no cover
    main()
