"""Maintenance windows: recurring local-time intervals with time zones and blackout dates.

A window is wall-clock time in its own zone ("Saturdays 22:00-04:00 Europe/Amsterdam"):
it may cross midnight, and on the nights the clocks change it is an hour longer or
shorter in real time, as the business that set it means. A blackout date cancels the
occurrence that *starts* on that local date. Local times that do not exist (the spring
gap) resolve the way ``zoneinfo`` resolves them: forward by the gap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from shared.config import DAY_NAMES, WindowConfig


@dataclass(frozen=True)
class Occurrence:
    start: datetime  # UTC
    end: datetime  # UTC

    def contains(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


class MaintenanceWindow:
    def __init__(self, config: WindowConfig) -> None:
        self.name = config.name
        self.zone = ZoneInfo(config.time_zone)
        self.days = {DAY_NAMES.index(d) for d in config.days}
        self.start = time.fromisoformat(config.start)
        self.end = time.fromisoformat(config.end)
        self.blackout = {date.fromisoformat(d) for d in config.blackout_dates}

    def _occurrence_starting(self, day: date) -> Occurrence | None:
        if day.weekday() not in self.days or day in self.blackout:
            return None
        start_local = datetime.combine(day, self.start, tzinfo=self.zone)
        end_day = day if self.end > self.start else day + timedelta(days=1)
        end_local = datetime.combine(end_day, self.end, tzinfo=self.zone)
        # Round-trip through UTC so a local time in the spring gap moves forward.
        return Occurrence(start_local.astimezone(UTC), end_local.astimezone(UTC))

    def occurrence_at(self, moment: datetime) -> Occurrence | None:
        """The occurrence that contains ``moment`` (UTC), if any."""
        local_day = moment.astimezone(self.zone).date()
        for offset in (-1, 0):
            occ = self._occurrence_starting(local_day + timedelta(days=offset))
            if occ and occ.contains(moment):
                return occ
        return None

    def contains(self, moment: datetime) -> bool:
        return self.occurrence_at(moment) is not None

    def next_occurrence(self, moment: datetime, *, horizon_days: int = 400) -> Occurrence | None:
        """The occurrence containing ``moment``, else the next one to start."""
        local_day = moment.astimezone(self.zone).date()
        for offset in range(-1, horizon_days):
            occ = self._occurrence_starting(local_day + timedelta(days=offset))
            if occ and occ.end > moment:
                return occ
        return None


def common_opening(
    windows: Sequence[MaintenanceWindow], moment: datetime, *, horizon_days: int = 400
) -> Occurrence | None:
    """The first time from ``moment`` (UTC) on when every window is open, until the first
    of them closes; None if that never happens within the horizon (windows on different
    days, or blacked out throughout). With no windows, open from ``moment`` for ever
    (``end`` is ``datetime.max``)."""
    limit = moment + timedelta(days=horizon_days)
    at = moment
    while at < limit:
        found = [w.next_occurrence(at, horizon_days=horizon_days) for w in windows]
        if any(o is None for o in found):
            return None
        occurrences = [o for o in found if o is not None]
        start = max([at, *(o.start for o in occurrences)])
        end = min((o.end for o in occurrences), default=datetime.max.replace(tzinfo=UTC))
        if start < end:
            return Occurrence(start, end)
        at = end  # one closes before another opens: look from there
    return None
