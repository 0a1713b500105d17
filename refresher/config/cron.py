"""Standard 5-field (or 6, seconds first) cron expressions → APScheduler triggers."""

from __future__ import annotations

import re
from typing import Any

_CRON_FIELD = re.compile(r"^[\w*/,\-?#LW]+$")


def validate_cron(expr: str) -> None:
    """Cheap structural check; APScheduler's CronTrigger does the full parse at schedule time."""
    fields = expr.split()
    if len(fields) not in (5, 6) or not all(_CRON_FIELD.match(f) for f in fields):
        raise ValueError(
            f"{expr!r} is not a cron expression (5 fields: minute hour day month weekday, or 6 with seconds first)"
        )
    try:
        from apscheduler.triggers.cron import CronTrigger

        cron_trigger_from(expr, "UTC", CronTrigger)
    except ValueError as exc:
        raise ValueError(f"{expr!r} is not a valid cron expression: {exc}") from None


def cron_trigger_from(expr: str, timezone: str, trigger_cls: Any) -> Any:
    """Build an APScheduler ``CronTrigger`` from 5 (or 6, seconds first) standard cron fields.

    APScheduler's ``from_crontab`` numbers weekdays from Monday=0, unlike cron: numeric weekdays are
    translated to names here so ``0``/``7`` mean Sunday as every operator expects.
    """
    fields = expr.split()
    second = "0"
    if len(fields) == 6:
        second, fields = fields[0], fields[1:]
    minute, hour, day, month, weekday = fields
    names = ["sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun"]

    def day_name(match: re.Match[str]) -> str:
        number = int(match.group(0))
        if number > 7:
            raise ValueError(f"weekday {number} is out of range 0-7")
        return names[number]

    weekday = re.sub(r"\d+", day_name, weekday)
    return trigger_cls(
        second=second, minute=minute, hour=hour, day=day, month=month, day_of_week=weekday, timezone=timezone
    )
