"""Cron schedules fire when cron would: the translation to APScheduler is compared, fire time by fire
time, with croniter (an independent implementation) over many expressions, including the weekday steps
APScheduler's own reading gets wrong (``1-5/2`` became mon-fri, ``*/2`` was refused)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest
from croniter import croniter
from hypothesis import given, settings
from hypothesis import strategies as st

from refresher.config import ConfigFileError, cron_trigger_from, parse_config

START = dt.datetime(2026, 1, 1, 0, 0, 30, tzinfo=dt.UTC)

EXPRESSIONS = [
    "0 0 * * 1-5/2",  # mon, wed, fri
    "0 0 * * */2",  # sun, tue, thu, sat
    "0 0 * * */3",
    "0 0 * * 0",
    "0 0 * * 7",
    "0 0 * * 5-7",
    "0 0 * * 0-6/3",
    "0 0 * * 1/2",
    "0 0 * * sun",
    "0 0 * * MON,Wed",
    "0 0 * * mon-fri",
    "0 0 * * mon-fri/2",
    "0 0 * * sat,sun",
    "0 0 * * 6,0",
    "0 0 * * 1-7",
    "0 0 * * 0,3-4,6",
    "30 2 * * 1-5",
    "0 9-17/2 * * mon-fri",
    "0 0 1,15 * 1",  # either the 1st/15th or a Monday
    "0 0 13 * fri",
    "0 0 1-10/3 * 2-4",
    "0 0 1 * 0-6",
    "0 0 ? * 1",
    "0 0 * jan-jun/2 *",
    "0 12 * feb,aug sat",
    "0 0 29 2 *",
    "*/15 * * * *",
    "5/15 * * * *",
    "0 */6 * * *",
    "0 0 */2 * *",
    "17 3 * * *",
    "0 4,16 * * *",
    "0 0 28-31 * *",
]


def ours(expr: str, count: int) -> list[dt.datetime]:
    trigger = cron_trigger_from(expr, "UTC")
    fires: list[dt.datetime] = []
    previous, now = None, START
    for _ in range(count):
        nxt = trigger.get_next_fire_time(previous, now)
        assert nxt is not None
        fires.append(nxt)
        previous, now = nxt, nxt + dt.timedelta(microseconds=1)
    return fires


def croniters(expr: str, count: int) -> list[dt.datetime]:
    it = croniter(expr, START)
    return [it.get_next(dt.datetime) for _ in range(count)]


@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_fire_times_match_croniter(expr: str) -> None:
    assert ours(expr, 120) == croniters(expr, 120)


def test_weekday_steps_by_hand() -> None:
    """Hand-computed: 2026-01-05 is a Monday."""
    days = [t.strftime("%a") for t in ours("0 0 * * 1-5/2", 6)]
    assert days == ["Fri", "Mon", "Wed", "Fri", "Mon", "Wed"]
    days = [t.strftime("%a") for t in ours("0 0 * * */2", 4)]
    assert days == ["Sat", "Sun", "Tue", "Thu"]


_weekday_item = st.one_of(
    st.sampled_from(["*", "sun", "mon", "tue", "wed", "thu", "fri", "sat"]),
    st.integers(0, 7).map(str),
    # (croniter reads a one-day range such as 0-0 as every day, so ranges here span two days or more)
    st.tuples(st.integers(0, 6), st.integers(0, 7)).filter(lambda r: r[0] < r[1]).map(lambda r: f"{r[0]}-{r[1]}"),
).flatmap(lambda item: st.sampled_from(["", "/2", "/3", "/5"]).map(lambda step: item + step))


@settings(max_examples=60, deadline=None)
@given(
    items=st.lists(_weekday_item, min_size=1, max_size=3),
    day=st.sampled_from(["*", "1", "15", "1-7", "*/10", "13,28"]),
)
def test_generated_weekday_fields_match_croniter(items: list[str], day: str) -> None:
    items = [item for item in items if not (item.isalpha() and "/" in item)]
    weekday = ",".join(items) or "*"

    def starred_step(field: str) -> bool:
        return field.startswith("*") and field != "*"

    if (starred_step(day) and weekday != "*") or (starred_step(weekday) and day != "*"):
        return  # */10 beside a field other than *: croniter and Vixie cron differ (tested below)
    if any(item.startswith("*") for item in items[1:]) and not weekday.startswith("*") and day != "*":
        return  # sun,* beside a restricted day: Vixie cron reads the field's first character (tested below)
    expr = f"0 6 {day} * {weekday}"
    if "/" in expr.split()[4] and any(i.split("/")[0].isalpha() and i[0] != "*" for i in items):
        return  # croniter refuses a step after a single day name
    assert ours(expr, 40) == croniters(expr, 40), expr


@pytest.mark.parametrize(
    ("expr", "matches"),
    [
        # Vixie cron: a field starting with * does not count as restricted, so both fields must match.
        ("0 0 */10 * 1", lambda d: (d.day - 1) % 10 == 0 and d.isoweekday() == 1),
        ("0 0 1 * */2", lambda d: d.day == 1 and d.isoweekday() % 7 in (0, 2, 4, 6)),
        ("0 0 */10 * */2", lambda d: (d.day - 1) % 10 == 0 and d.isoweekday() % 7 in (0, 2, 4, 6)),
        # Both restricted: either field.
        ("0 0 13 * 5", lambda d: d.day == 13 or d.isoweekday() == 5),
        # Restricted is decided by the field's first character: "sun,*" is, and means every day (croniter
        # reads it as *, so the 1st only; hypothesis found the difference).
        ("0 0 1 * sun,*", lambda d: True),
        ("0 0 1 * *,sun", lambda d: d.day == 1),
    ],
)
def test_the_either_day_rule_as_vixie_cron_reads_it(expr: str, matches: Callable[[dt.date], bool]) -> None:
    """Expected days computed by walking the calendar (datetime's own weekday numbering)."""
    day, expected = START.date(), list[dt.datetime]()
    while len(expected) < 12:
        day += dt.timedelta(days=1)
        if matches(day):
            expected.append(dt.datetime.combine(day, dt.time(), dt.UTC))
    assert ours(expr, 12) == expected


def app_with(schedule: str) -> str:
    return f'apps:\n  shop:\n    platform: shopee\n    schedule: "{schedule}"\n'


@pytest.mark.parametrize(
    ("schedule", "fragment"),
    [("0 0 * * 8", "weekday"), ("0 0 * * 5-2", "backwards"), ("0 0 * * 1-5/0", "step"), ("0 0 * foo *", "month")],
)
def test_unreadable_weekday_or_month_is_one_clear_problem(schedule: str, fragment: str) -> None:
    with pytest.raises(ConfigFileError) as caught:
        parse_config(app_with(schedule), file="x.yaml")
    assert len(caught.value.problems) == 1
    problem = caught.value.problems[0]
    assert problem.path == "apps.shop.schedule" and problem.line == 4
    assert fragment in problem.message


def test_six_fields_take_seconds_first() -> None:
    fires = ours("30 0 0 * * 1-5/2", 2)
    assert [(t.second, t.strftime("%a")) for t in fires] == [(30, "Fri"), (30, "Mon")]
