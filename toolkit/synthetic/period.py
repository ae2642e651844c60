"""The time span a data set covers, and Mixpanel's time formats."""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass

_EPOCH = dt.datetime(1970, 1, 1)


@dataclass(frozen=True)
class Period:
    """Calendar months from a start day, UTC, in epoch milliseconds; ``end_ms`` is exclusive."""

    start_ms: int
    end_ms: int
    time_divisor: int  # event `time` = ms // time_divisor: 1000 for seconds (the export's unit), 1 for ms

    @classmethod
    def of(cls, start: dt.date, months: int, time_in_ms: bool) -> Period:
        return cls(epoch_ms(start), epoch_ms(add_months(start, months)), 1 if time_in_ms else 1000)

    @property
    def span_ms(self) -> int:
        return self.end_ms - self.start_ms

    def until(self, first_ms: int, draw: float) -> int:
        """When a user's activity ends: at least three days after ``first_ms``, at most the period's end."""
        return min(self.end_ms, first_ms + 3 * 86400_000 + int(draw * self.span_ms))


def epoch_ms(day: dt.date) -> int:
    return calendar.timegm(day.timetuple()) * 1000


def add_months(day: dt.date, months: int) -> dt.date:
    y, m = divmod(day.month - 1 + months, 12)
    year, month = day.year + y, m + 1
    return dt.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def iso(ms: int) -> str:
    """Mixpanel's profile date format, UTC, no zone: '2026-09-03T10:05:30'."""
    return (_EPOCH + dt.timedelta(seconds=ms // 1000)).isoformat()


def parse_ms(when: str) -> int:
    """'2026-09-03T10:05:30' (UTC) -> epoch milliseconds."""
    return calendar.timegm(dt.datetime.fromisoformat(when).timetuple()) * 1000
