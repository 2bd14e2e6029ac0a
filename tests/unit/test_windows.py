"""Maintenance window arithmetic: time zones, DST, windows across midnight, blackout dates."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shared.config import WindowConfig
from shared.rollout.windows import MaintenanceWindow


def window(**kw: object) -> MaintenanceWindow:
    base = {"name": "w", "start": "22:00", "end": "04:00", "timeZone": "Europe/Amsterdam", "days": ["sat"]}
    base.update(kw)
    return MaintenanceWindow(WindowConfig.model_validate(base))


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("spec", "moment", "inside"),
    [
        # Saturday 22:00-04:00 Amsterdam (UTC+1 in winter): Sat 21:00Z - Sun 03:00Z.
        ({}, "2026-11-28T20:59:59", False),
        ({}, "2026-11-28T21:00:00", True),
        ({}, "2026-11-29T02:59:59", True),  # after midnight, still Saturday's window
        ({}, "2026-11-29T03:00:00", False),
        ({}, "2026-11-27T22:00:00", False),  # Friday night is not a window day
        # Summer time (UTC+2): Sat 20:00Z - Sun 02:00Z.
        ({}, "2026-07-04T20:00:00", True),
        ({}, "2026-07-04T19:59:00", False),
        # Same-day window in UTC.
        ({"start": "09:00", "end": "17:00", "timeZone": "UTC", "days": ["mon"]}, "2026-11-30T16:59:00", True),
        (
            {"start": "09:00", "end": "17:00", "timeZone": "UTC", "days": ["mon"]},
            "2026-11-30T17:00:00",
            False,
        ),
        # A blackout date cancels the occurrence starting that local day, after-midnight part included.
        ({"blackoutDates": ["2026-11-28"]}, "2026-11-28T22:00:00", False),
        ({"blackoutDates": ["2026-11-28"]}, "2026-11-29T01:00:00", False),
        ({"blackoutDates": ["2026-11-29"]}, "2026-11-29T01:00:00", True),
        # A zone east of UTC whose local Monday starts on Sunday in UTC.
        (
            {"start": "01:00", "end": "03:00", "timeZone": "Asia/Tokyo", "days": ["mon"]},
            "2026-11-29T16:30:00",
            True,
        ),
        (
            {"start": "01:00", "end": "03:00", "timeZone": "Asia/Tokyo", "days": ["mon"]},
            "2026-11-30T16:30:00",
            False,
        ),
    ],
)
def test_window_contains(spec: dict, moment: str, inside: bool) -> None:
    assert window(**spec).contains(utc(moment)) is inside


def test_a_window_over_the_autumn_dst_change_lasts_one_hour_longer() -> None:
    # 2026-10-25 03:00 CEST -> 02:00 CET: Saturday 24th 22:00 to Sunday 04:00 local is 7 real hours.
    occ = window().occurrence_at(utc("2026-10-25T00:00:00"))
    assert occ is not None
    assert (occ.end - occ.start).total_seconds() == 7 * 3600
    assert occ.start == utc("2026-10-24T20:00:00") and occ.end == utc("2026-10-25T03:00:00")


def test_a_window_over_the_spring_dst_change_lasts_one_hour_less() -> None:
    occ = window().occurrence_at(utc("2026-03-29T00:00:00"))  # clocks go forward at 02:00 CET
    assert occ is not None
    assert (occ.end - occ.start).total_seconds() == 5 * 3600


def test_a_window_starting_in_the_spring_gap_starts_at_the_end_of_the_gap() -> None:
    occ = window(start="02:30", end="05:00", days=["sun"]).occurrence_at(utc("2026-03-29T01:45:00"))
    assert occ is not None
    assert occ.start == utc("2026-03-29T01:30:00")  # 02:30 does not exist; it resolves to 03:30 CEST


def test_next_occurrence_skips_blackouts_and_returns_the_current_one() -> None:
    w = window(blackoutDates=["2026-11-28"])
    nxt = w.next_occurrence(utc("2026-11-26T12:00:00"))
    assert nxt is not None and nxt.start == utc("2026-12-05T21:00:00")
    current = window().next_occurrence(utc("2026-11-28T23:00:00"))
    assert current is not None and current.start == utc("2026-11-28T21:00:00")


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("timeZone", "Mars/Olympus", "IANA time zone"),
        ("start", "25:00", "String should match"),
        ("blackoutDates", ["2026-13-01"], "is not a date"),
        ("days", ["funday"], "Input should be"),
    ],
)
def test_invalid_windows_name_the_field(field: str, value: object, needle: str) -> None:
    from shared.config import parse_config

    cfg = {
        "clusters": [
            {
                "name": "c",
                "kubeconfig": {"setting": "K"},
                "pools": [
                    {
                        "name": "p",
                        "window": "w",
                        "scaleSetId": "/subscriptions/s/resourceGroups/r/providers/"
                        "Microsoft.Compute/virtualMachineScaleSets/v",
                    }
                ],
            }
        ],
        "windows": [{"name": "w", "start": "22:00", "end": "04:00", field: value}],
    }
    from shared.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        parse_config(cfg)
    assert f"windows[0].{field}" in str(err.value) and needle in str(err.value)
