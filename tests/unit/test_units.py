"""Sizes, rates and durations as the config spells them."""

from __future__ import annotations

import pytest

from bwbpf.units import (
    UnitError,
    format_bytes,
    format_duration,
    format_rate,
    parse_duration,
    parse_rate,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "bps"),
    [
        pytest.param("8bit", 8, id="bit"),
        pytest.param("500kbit", 500_000, id="kbit"),
        pytest.param("1.5mbit", 1_500_000, id="decimal-mbit"),
        pytest.param("1Gbit", 10**9, id="case-insensitive"),
        pytest.param("40gbit", 40 * 10**9, id="above-34gbit"),
        pytest.param("1mbps", 8 * 10**6, id="mbps-is-bytes"),
        pytest.param("2KBPS", 16_000, id="kbps-upper"),
        pytest.param(" 100mbit ", 10**8, id="spaces"),
    ],
)
def test_rates(text: str, bps: int) -> None:
    assert parse_rate(text) == bps


@pytest.mark.parametrize(
    ("text", "n"),
    [
        pytest.param("5.4GB", 5_400_000_000, id="decimal-GB"),
        pytest.param("1KiB", 1024, id="KiB"),
        pytest.param("2MiB", 2 * 2**20, id="MiB"),
        pytest.param("16.4GB", 16_400_000_000, id="GB"),
        pytest.param("1TB", 10**12, id="TB"),
        pytest.param("10B", 10, id="bytes"),
    ],
)
def test_sizes(text: str, n: int) -> None:
    assert parse_size(text) == n


@pytest.mark.parametrize(("text", "s"), [("10s", 10), ("2m", 120), ("1.5h", 5400), ("1d", 86400)])
def test_durations(text: str, s: int) -> None:
    assert parse_duration(text) == s


@pytest.mark.parametrize(
    ("parse", "value", "fragment"),
    [
        pytest.param(parse_rate, "100", "no unit", id="rate-no-unit"),
        pytest.param(parse_rate, "100mb", "unknown rate unit 'mb'", id="rate-size-unit"),
        pytest.param(parse_rate, 100, "must be a string", id="rate-int"),
        pytest.param(parse_size, "lots", "is not a size", id="size-words"),
        pytest.param(parse_size, "-1GB", "is not a size", id="size-negative"),
        pytest.param(parse_duration, "1w", "unknown duration unit", id="duration-week"),
        pytest.param(parse_size, True, "must be a string", id="size-bool"),
    ],
)
def test_bad_values_name_the_value(parse, value: object, fragment: str) -> None:
    with pytest.raises(UnitError, match=fragment):
        parse(value)


def test_formatting() -> None:
    assert format_bytes(5_400_000_000) == "5.4 GB"
    assert format_bytes(999) == "999 B"
    assert format_rate(1_500_000) == "1.5Mbit"
    assert format_rate(8) == "8bit"
    assert format_duration(86400) == "1 day"
    assert format_duration(5400) == "1.5 hours"
    assert format_duration(30) == "30 seconds"
