"""Standard 5-field (or 6, seconds first) cron expressions → APScheduler 3 triggers.

APScheduler reads a crontab differently from cron in three places, so the two date fields are translated
here rather than handed over as written:

* weekdays: APScheduler numbers them from Monday = 0, cron from Sunday = 0 (and 7); its name ranges take
  no step (``mon-fri/2`` silently became ``mon-fri``) and ``*/2`` counts from Monday. The weekday field is
  expanded here to the set of days cron means and passed as a list of day names.
* months: a name range with a step (``jan-jun/2``) silently lost its step; names become numbers.
* day of month and weekday both restricted: cron fires when *either* matches, APScheduler when both do.
  Such an expression becomes two triggers joined by ``OrTrigger``. "Restricted" means not starting
  with ``*`` or ``?`` (``*/10`` restricts nothing in that sense), as Vixie cron and croniter read it.
"""

from __future__ import annotations

import re

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.combining import OrTrigger
from apscheduler.triggers.cron import CronTrigger

_CRON_FIELD = re.compile(r"^[\w*/,\-?#LW]+$")
_CRON_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]
_MONTHS = ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"]
_ITEM = re.compile(r"^(?P<range>\*|\?|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/(?P<step>\d+))?$")


def validate_cron(expr: str) -> None:
    """Refuse anything APScheduler would not read exactly as cron does (one line naming the problem)."""
    fields = expr.split()
    if len(fields) not in (5, 6) or not all(_CRON_FIELD.match(f) for f in fields):
        raise ValueError(
            f"{expr!r} is not a cron expression (5 fields: minute hour day month weekday, or 6 with seconds first)"
        )
    try:
        cron_trigger_from(expr, "UTC")
    except ValueError as exc:
        raise ValueError(f"{expr!r} is not a valid cron expression: {exc}") from None


def _weekday_number(text: str) -> int:
    if text in _CRON_DAYS:
        return _CRON_DAYS.index(text)
    if text.isdigit() and int(text) <= 7:
        return int(text) % 7  # 7 is Sunday too
    raise ValueError(f"weekday {text!r} is not 0-7 or sun-sat")


def cron_weekdays(field: str) -> set[int] | None:
    """The days (cron numbering, Sunday = 0) a weekday field means; ``None`` for every day (``*``, ``?``).

    Items are separated by commas; each is ``*``, a day, or a range ``a-b`` (numbers 0-7 or names), with
    an optional ``/step`` counted from the range's first day (``a/step`` runs to Saturday)."""
    text = field.lower()
    if text in ("*", "?"):
        return None
    days: set[int] = set()
    for item in text.split(","):
        match = _ITEM.match(item)
        if match is None:
            raise ValueError(f"weekday item {item!r} is not understood (use 0-7, sun-sat, ranges, /steps)")
        span, step_text = match.group("range"), match.group("step")
        step = int(step_text) if step_text is not None else 1
        if step < 1:
            raise ValueError(f"weekday step in {item!r} must be at least 1")
        if span in ("*", "?"):
            first, last = 0, 6
        elif "-" in span:
            start, end = span.split("-")
            first = _weekday_number(start)
            # 7 closes a range on Sunday (5-7 is fri-sun); as a start it is Sunday = 0.
            last = 7 if end == "7" else _weekday_number(end)
            if last < first:
                raise ValueError(f"weekday range {item!r} runs backwards")
        else:
            first = _weekday_number(span)
            last = 6 if step_text is not None else first
        days.update(day % 7 for day in range(first, last + 1, step))
    return days


def _month_numbers(field: str) -> str:
    def number(match: re.Match[str]) -> str:
        name = match.group(0).lower()
        if name not in _MONTHS:
            raise ValueError(f"month {match.group(0)!r} is not 1-12 or jan-dec")
        return str(_MONTHS.index(name) + 1)

    return re.sub(r"[A-Za-z]+", number, field)


def cron_trigger_from(expr: str, timezone: str) -> BaseTrigger:
    """The APScheduler trigger that fires when cron would fire for ``expr`` in ``timezone``."""
    fields = expr.split()
    second = "0"
    if len(fields) == 6:
        second, fields = fields[0], fields[1:]
    if len(fields) != 5:
        raise ValueError("expected 5 fields (minute hour day month weekday) or 6 with seconds first")
    minute, hour, day, month, weekday = fields
    days = cron_weekdays(weekday)
    if days is not None and not days:
        raise ValueError(f"weekday field {weekday!r} names no day")
    day_of_week = "*" if days is None else ",".join(_CRON_DAYS[d] for d in sorted(days))
    common = {"second": second, "minute": minute, "hour": hour, "month": _month_numbers(month)}
    if day.startswith(("*", "?")) or weekday.startswith(("*", "?")):
        day = "*" if day == "?" else day
        return CronTrigger(**common, day=day, day_of_week=day_of_week, timezone=timezone)
    # Both restricted (even a weekday range of all seven days): a day matching either fires.
    by_day = CronTrigger(**common, day=day, day_of_week="*", timezone=timezone)
    by_weekday = CronTrigger(**common, day="*", day_of_week=day_of_week, timezone=timezone)
    return OrTrigger([by_day, by_weekday])
