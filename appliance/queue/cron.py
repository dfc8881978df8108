"""Five-field cron expressions (minute hour day-of-month month day-of-week), evaluated in UTC.

    Cron.parse("*/15 9-17 * * mon-fri").next_after(now_ms)   # the first tick strictly after now_ms

The fields take `*`, numbers, ranges `a-b`, steps `*/n` or `a-b/n`, lists `a,b,c`, and English names for months
(jan..dec) and weekdays (sun..sat; 0 and 7 are both Sunday). As in Vixie cron, when both day fields are
restricted a day matches if either does. Only the server's clock (UTC) is used, so a fleet spread over time
zones agrees on every tick; there are no seconds and no `@reboot`-style macros except the common aliases below.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
MONTHS = {name.lower(): i for i, name in enumerate(calendar.month_abbr) if name}
WEEKDAYS = {"sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6}
#: (name, lowest, highest, names) of each field in order.
FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, MONTHS),
    ("day of week", 0, 7, WEEKDAYS),
)
#: A valid expression has a tick within this many days (Feb 29 needs up to 8 years); beyond it: never.
SEARCH_DAYS = 366 * 8 + 2


class CronError(ValueError):
    """An expression that does not parse; the message names the field and what is wrong."""


def _value(text: str, field: str, low: int, high: int, names: dict[str, int]) -> int:
    number = names.get(text.lower()) if names else None
    if number is None:
        if not text.isdigit():
            raise CronError(f"{field}: {text!r} is not a number{' or a name' if names else ''}")
        number = int(text)
    if not low <= number <= high:
        raise CronError(f"{field}: {number} is outside {low}-{high}")
    return number


def _field(text: str, field: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{field}: step {step_text!r} must be a positive number")
            step = int(step_text)
        if base == "*":
            start, stop = low, high
        elif "-" in base:
            first, _, last = base.partition("-")
            start, stop = _value(first, field, low, high, names), _value(last, field, low, high, names)
            if start > stop:
                raise CronError(f"{field}: range {base!r} runs backwards")
        else:
            start = _value(base, field, low, high, names)
            stop = high if step_text else start
        values.update(range(start, stop + 1, step))
    return frozenset(values)


@dataclass(frozen=True)
class Cron:
    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    #: Both day fields restricted: a day matches if either does (Vixie cron).
    either_day: bool

    @classmethod
    def parse(cls, expression: str) -> Cron:
        text = ALIASES.get(expression.strip().lower(), expression.strip())
        parts = text.split()
        if len(parts) != 5:
            raise CronError(
                f"cron {expression!r}: expected 5 fields (minute hour day-of-month month day-of-week), "
                f"got {len(parts)}"
            )
        minutes, hours, days, months, weekdays = (
            _field(part, *spec) for part, spec in zip(parts, FIELDS, strict=True)
        )
        weekdays = frozenset(d % 7 for d in weekdays)  # 7 is Sunday too
        cron = cls(expression, minutes, hours, days, months, weekdays, parts[2] != "*" and parts[4] != "*")
        if cron.next_after(0) is None:
            raise CronError(f"cron {expression!r} never fires (no such day)")
        return cron

    def _day_matches(self, day: datetime) -> bool:
        if day.month not in self.months:
            return False
        by_date = day.day in self.days
        by_weekday = (day.weekday() + 1) % 7 in self.weekdays  # Python: Monday 0; cron: Sunday 0
        return (by_date or by_weekday) if self.either_day else (by_date and by_weekday)

    def next_after(self, after_ms: int) -> int | None:
        """The first tick strictly after `after_ms` (epoch ms, UTC), or None if it never fires."""
        start = datetime.fromtimestamp(after_ms // 60_000 * 60, tz=UTC) + timedelta(minutes=1)
        first_day = start.replace(hour=0, minute=0)
        for offset in range(SEARCH_DAYS):
            day = first_day + timedelta(days=offset)
            if self._day_matches(day):
                for hour in sorted(self.hours):
                    for minute in sorted(self.minutes):
                        tick = day.replace(hour=hour, minute=minute)
                        if tick >= start:
                            return int(tick.timestamp()) * 1000
        return None
