"""The quota policy: from a class's usage this period to the HTB ceiling it should have.

Pure: no clock, no I/O, no logging. The caller passes ``now`` and the period bounds
(``periods.current_period``) and applies the returned ceiling.

``smooth`` (NodeManager bwmon, 2008)
    Below the threshold the class may burst to ``max_rate``. From the threshold on, its
    ceiling is what is left of the limit spread over what is left of the period,
    ``(limit - used) × 8 / (period_end - now)`` bit/s, clamped to ``[min_rate, max_rate]``;
    past the limit it gets ``min_rate``. The ceiling is recomputed every tick, so a slice
    that slows down sees its ceiling rise again.

``average`` (pl_mom bwmon, 2004-2006)
    Once the class has sent ``avg_rate × period_length / 8`` bytes this period, its ceiling
    is ``avg_rate`` (kept within ``[min_rate, max_rate]``) until the period ends; before
    that it may burst to ``max_rate``. ``limit_bytes`` and ``threshold_bytes`` are not used.
"""

from __future__ import annotations

from typing import NamedTuple

from bwbpf.config import ClassQuota

POLICIES = ("smooth", "average")
# HTB cannot go below 1 byte/s (the kernel's rate tables are in bytes); config.py enforces
# the same floor on min_rate, this keeps a hand-built ClassQuota from producing 0.
MIN_CEIL_BPS = 8
# Seconds left in the period never count as less than this: at or after the period end
# (the ledger has not rolled over yet, or the clock jumped) the smooth formula would divide
# by zero or go negative.
MIN_REMAINING_S = 1.0


class Decision(NamedTuple):
    """The ceiling a class should have now, and why.

    ``capped`` is True when the quota holds the ceiling below ``max_rate``; a ceiling that
    equals ``max_rate`` is never capped, whatever the usage. ``moves`` is True when the
    ceiling changes with time alone (the smooth formula between threshold and limit): the
    decision must be taken again at the next tick even if the class sent nothing.
    """

    ceil_bps: int
    capped: bool
    reason: str
    moves: bool = False


def byte_limit(quota: ClassQuota, policy: str, period_start: float, period_end: float) -> int:
    """The bytes a class may send this period before the policy holds it back.

    For ``average`` it follows the period's real length, so a 25-hour DST day or a 31-day
    month allows proportionally more.
    """
    _check_policy(policy)
    if policy == "average":
        return quota.avg_rate_bps * round(period_end - period_start) // 8
    return quota.limit_bytes


def threshold_bytes(quota: ClassQuota, policy: str, period_start: float, period_end: float) -> int:
    """The bytes after which the policy starts to hold the class back: the threshold for
    ``smooth``; for ``average``, whose ceiling drops at the budget itself, the budget."""
    if policy == "average":
        return byte_limit(quota, policy, period_start, period_end)
    _check_policy(policy)
    return quota.threshold_bytes


def settled_bytes(quota: ClassQuota, policy: str, period_start: float, period_end: float) -> int:
    """The usage from which the class has used up what the period allows: from there on
    ``decide`` returns one and the same decision, whatever more the class sends and at any
    time, until the period (or the quota) changes. Usage only grows within a period, so
    such a decision need not be taken again while the class keeps sending
    (daemon.DecisionCache)."""
    if policy == "average":
        return byte_limit(quota, policy, period_start, period_end)
    _check_policy(policy)
    # decide() looks at the threshold first: past the limit counts only past both.
    return max(quota.limit_bytes, quota.threshold_bytes)


def decide(
    quota: ClassQuota,
    policy: str,
    used_bytes: int,
    period_start: float,
    period_end: float,
    now: float,
) -> Decision:
    """The ceiling for one class of one slice, given what it sent since ``period_start``."""
    _check_policy(policy)
    if used_bytes < 0:
        raise ValueError(f"used_bytes must not be negative, not {used_bytes}")
    if not period_end > period_start:
        raise ValueError(f"period_end {period_end} is not after period_start {period_start}")
    hi = max(quota.max_rate_bps, MIN_CEIL_BPS)
    lo = min(max(quota.min_rate_bps, MIN_CEIL_BPS), hi)
    if policy == "average":
        budget = byte_limit(quota, policy, period_start, period_end)
        if used_bytes < budget:
            return Decision(hi, False, f"{used_bytes} of {budget} bytes at the average rate")
        ceil = _clamp(quota.avg_rate_bps, lo, hi)
        return Decision(ceil, ceil < hi, f"average budget of {budget} bytes used up")
    if used_bytes < quota.threshold_bytes:
        return Decision(hi, False, f"{used_bytes} bytes, below the threshold")
    if used_bytes >= quota.limit_bytes:
        return Decision(lo, lo < hi, f"limit of {quota.limit_bytes} bytes passed")
    # A clock that went back before period_start counts as no time elapsed (the whole
    # period is left), never as negative elapsed time; see periods.py.
    elapsed_now = min(max(now, period_start), period_end)
    remaining_s = max(period_end - elapsed_now, MIN_REMAINING_S)
    left_bytes = quota.limit_bytes - used_bytes
    ceil = _clamp(int(left_bytes * 8 / remaining_s), lo, hi)
    return Decision(
        ceil,
        ceil < hi,
        f"threshold passed: {left_bytes} bytes left for {remaining_s:.0f} s",
        moves=True,
    )


def _clamp(value: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, value))


def _check_policy(policy: str) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; use one of {', '.join(POLICIES)}")
