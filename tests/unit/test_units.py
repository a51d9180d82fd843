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


@pytest.mark.parametrize(
    ("parse", "value", "fragment"),
    [
        pytest.param(
            parse_rate, "99999999999999999999gbit", "above the largest rate", id="rate-huge"
        ),
        pytest.param(parse_rate, "100.000001tbit", "above the largest rate", id="rate-just-above"),
        pytest.param(parse_rate, "1e35bit", "is not a rate", id="rate-exponent"),
        pytest.param(parse_rate, "inf", "is not a rate", id="rate-inf"),
        pytest.param(parse_rate, "nan bit", "is not a rate", id="rate-nan"),
        pytest.param(parse_rate, float("inf"), "must be a string", id="rate-float-inf"),
        pytest.param(parse_rate, float("nan"), "must be a string", id="rate-float-nan"),
        pytest.param(parse_rate, "-8bit", "is not a rate", id="rate-negative"),
        pytest.param(parse_rate, ["8bit"], "must be a string", id="rate-array"),
        pytest.param(parse_rate, "9" * 100 + "bit", "too long", id="rate-long-text"),
        pytest.param(parse_size, "9223372036854775808B", "above the largest size", id="size-2-63"),
        pytest.param(parse_size, "1e400GB", "is not a size", id="size-1e400"),
        pytest.param(parse_size, 10**30, "must be a string", id="size-int"),
        pytest.param(parse_duration, "0.5s", "not a whole number of seconds", id="duration-half"),
        pytest.param(parse_duration, "500ms", "unknown duration unit 'ms'", id="duration-ms"),
        pytest.param(parse_duration, "367d", "above the largest duration", id="duration-367d"),
        pytest.param(parse_duration, "1e9d", "is not a duration", id="duration-exponent"),
    ],
)
def test_hostile_values_are_refused(parse, value: object, fragment: str) -> None:
    with pytest.raises(UnitError, match=fragment) as info:
        parse(value)
    assert len(str(info.value)) < 200  # the value is named, not echoed at length


@pytest.mark.parametrize(
    ("parse", "text", "value"),
    [
        pytest.param(parse_rate, "100tbit", 10**14, id="largest-rate"),
        pytest.param(parse_size, "9223372036854775807B", 2**63 - 1, id="largest-size"),
        pytest.param(parse_duration, "366d", 366 * 86400, id="largest-duration"),
        pytest.param(parse_duration, "0.5m", 30, id="half-minute-is-whole-seconds"),
    ],
)
def test_the_largest_values_are_accepted(parse, text: str, value: int) -> None:
    assert parse(text) == value
