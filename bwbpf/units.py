"""Sizes, rates and durations as written in the config, parsed to integers and formatted back.

Rates follow tc's spelling (tc-rate(8) in iproute2's ``tc/tc_util.c``): ``bit, kbit, mbit,
gbit, tbit`` are bits per second and ``bps, kbps, mbps, gbps, tbps`` are *bytes* per second,
decimal prefixes, case-insensitive. Internally every rate is an int in bit/s, every size an
int in bytes and every duration an int in seconds.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_NUMBER = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$")

SIZE_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}

RATE_UNITS = {
    "bit": 1,
    "kbit": 10**3,
    "mbit": 10**6,
    "gbit": 10**9,
    "tbit": 10**12,
    "bps": 8,
    "kbps": 8 * 10**3,
    "mbps": 8 * 10**6,
    "gbps": 8 * 10**9,
    "tbps": 8 * 10**12,
}

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

# The largest values anything in bwbpf accepts. HTB holds a rate as a u64 of bytes/s
# (TCA_HTB_RATE64/CEIL64, see htbmsg.py), so anything up to 8 * (2**64 - 1) bit/s would
# encode; 100 Tbit/s is far above any link and keeps every product of a rate and a period
# well inside 64 bits. Sizes are compared with 64-bit kernel counters and kept in a JSON
# state file: below 2**63 they stay exact signed 64-bit integers everywhere. Durations: a
# year (366 days) is the longest quota period.
MAX_RATE_BPS = 100 * 10**12
MAX_SIZE_BYTES = 2**63 - 1
MAX_DURATION_S = 366 * 86400
# A value is a number and a unit; anything longer than this is a mistake (or an attack on
# the parser), not a value.
MAX_TEXT = 64


class UnitError(ValueError):
    """A value that is not a number followed by one of the allowed units."""


def shown(value: object) -> str:
    """``repr(value)``, cut short: a message names a value, it does not echo a megabyte."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print (sys.get_int_max_str_digits)
        return f"<a {type(value).__name__} too long to show>"
    return text if len(text) <= MAX_TEXT else text[: MAX_TEXT - 3] + "..."


def _parse(
    text: object, units: dict[str, int], kind: str, example: str, maximum: int, largest: str
) -> int:
    if isinstance(text, bool) or not isinstance(text, str):
        raise UnitError(f"{kind} must be a string with a unit, e.g. {example!r}, not {shown(text)}")
    if len(text) > MAX_TEXT:
        raise UnitError(f"{shown(text)} is too long for a {kind} (at most {MAX_TEXT} characters)")
    m = _NUMBER.match(text)
    if not m:
        raise UnitError(f"{text!r} is not a {kind}, e.g. {example!r}")
    number, unit = m.group(1), m.group(2).lower()
    if not unit:
        raise UnitError(f"{text!r} has no unit; a {kind} looks like {example!r}")
    if unit not in units:
        allowed = ", ".join(units)
        raise UnitError(f"{text!r}: unknown {kind} unit {m.group(2)!r} (use one of {allowed})")
    try:
        value = Decimal(number) * units[unit]
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise UnitError(f"{text!r} is not a {kind}") from exc
    if not value.is_finite() or value > maximum:
        raise UnitError(f"{text!r} is above the largest {kind}, {largest}")
    if kind == "duration" and value != value.to_integral_value():
        raise UnitError(f"{text!r} is not a whole number of seconds")
    # Round half up to whole units: the kernel and the ledger deal in integers.
    return int(value.to_integral_value(rounding="ROUND_HALF_UP"))


def parse_size(text: object) -> int:
    """``"5.4GB"`` → 5400000000 bytes."""
    return _parse(text, SIZE_UNITS, "size", "5.4GB", MAX_SIZE_BYTES, f"{MAX_SIZE_BYTES}B")


def parse_rate(text: object) -> int:
    """``"1.5mbit"`` → 1500000 bit/s; ``"1mbps"`` → 8000000 bit/s."""
    return _parse(text, RATE_UNITS, "rate", "100mbit", MAX_RATE_BPS, "100tbit")


def parse_duration(text: object) -> int:
    """``"10s"`` → 10, ``"1d"`` → 86400 seconds."""
    return _parse(text, DURATION_UNITS, "duration", "10s", MAX_DURATION_S, "366d")


def format_bytes(n: int) -> str:
    """Decimal units with one decimal, as the reference's messages had them: ``5.4 GB``."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def format_rate(bps: int) -> str:
    """Bits per second the way tc prints them: ``100Mbit``, ``1.5Mbit``, ``8bit``."""
    for unit, scale in (("Tbit", 10**12), ("Gbit", 10**9), ("Mbit", 10**6), ("Kbit", 10**3)):
        if abs(bps) >= scale:
            text = f"{bps / scale:.3f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
    return f"{bps}bit"


def format_duration(seconds: int) -> str:
    """``86400`` → ``1 day``; ``90`` → ``1.5 minutes``."""
    for name, scale in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= scale:
            value = seconds / scale
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text} {name}" + ("" if text == "1" else "s")
    return f"{seconds} seconds"
