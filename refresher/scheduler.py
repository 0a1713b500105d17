"""APScheduler cron jobs per app: each tick runs a sweep. And the arithmetic that proves a schedule safe.

APScheduler 3 pitfalls (STYLE.md): ``misfire_grace_time`` defaults to 1 s (late runs silently dropped), so
it is set explicitly with ``coalesce`` and ``max_instances=1``: a suspended host catches up with one sweep,
not a stampede. ``shutdown(wait=True)`` cancels running async jobs, so the daemon pauses, drains its own
in-flight sweeps, then shuts the scheduler down.

Urgent retries: a failed refresh backs off (``next_attempt_at``) and is retried by the next tick after
that. Near expiry that can be one chance too few: a TikTok token (2 h) enters its 30-minute window a moment
after a tick, so the regular ticks give it two sweeps, and two failed sweeps in a row let it expire (the
full soak caught one in ~130,000 refreshes). So after each sweep the scheduler asks the store for the
earliest retry of an account whose token would expire by the tick after next, and sweeps the app at
that time too. Only such accounts: a failure with time to spare waits for the regular tick, so a short
platform outage does not turn into three failed sweeps (an alarm) within minutes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from refresher.config import AppSettings, Settings, cron_trigger_from
from refresher.platforms.base import Platform
from refresher.refresh_policy import AppPolicy

log = structlog.get_logger("refresher.scheduler")

Tick = Callable[[str], Awaitable[Any]]
# (app, expiring_before) -> the earliest next attempt of a failed account whose token expires before then
UrgentRetry = Callable[[str, dt.datetime], Awaitable[dt.datetime | None]]
# Never sooner than this after a sweep: an account the sweep could not take (leased by another replica)
# must not make the app sweep in a loop.
URGENT_RETRY_MIN_GAP = dt.timedelta(seconds=30)


async def urgent_retry_time(
    urgent_retry: UrgentRetry, app: str, trigger: BaseTrigger, now: dt.datetime, next_tick: dt.datetime
) -> dt.datetime | None:
    """When to sweep ``app`` before its ``next_tick``, or None: the earliest retry of an account whose
    token expires by the tick after ``next_tick`` (if that next tick failed too, it would be too late)."""
    after = trigger.get_next_fire_time(next_tick, next_tick + dt.timedelta(microseconds=1))
    if after is None:
        return None
    when = await urgent_retry(app, after)
    if when is None:
        return None
    when = max(when, now + URGENT_RETRY_MIN_GAP)
    return when if when < next_tick else None


def schedule_of(app: AppSettings, platform: type[Platform]) -> str:
    """The app's schedule as text: its interval, its cron, or the platform's default cron."""
    if app.interval is not None:
        return f"every {int(app.interval.total_seconds())}s"
    return app.schedule or platform.default_schedule


def build_trigger(app: AppSettings, platform: type[Platform], start: dt.datetime | None = None) -> BaseTrigger:
    """The app's trigger; ``start`` anchors an interval (simulated time starts where its clock does).
    A cron schedule is translated by :func:`refresher.config.cron_trigger_from` (cron's weekday numbers
    and either-day rule, which APScheduler's own ``from_crontab`` does not follow)."""
    if app.interval is not None:
        return IntervalTrigger(seconds=max(app.interval.total_seconds(), 0.1), timezone=app.timezone, start_date=start)
    return cron_trigger_from(app.schedule or platform.default_schedule, app.timezone)


def max_tick_gap(
    trigger: BaseTrigger, start: dt.datetime, horizon: dt.timedelta = dt.timedelta(days=35)
) -> dt.timedelta:
    """The longest time between two consecutive ticks over ``horizon`` (covers monthly cron patterns)."""
    if isinstance(trigger, IntervalTrigger):
        return trigger.interval  # type: ignore[no-any-return]
    previous: dt.datetime | None = None
    current: dt.datetime | None = trigger.get_next_fire_time(None, start)
    gap = dt.timedelta(0)
    end = start + horizon
    count = 0
    while current is not None and current <= end and count < 100_000:
        if previous is not None:
            gap = max(gap, current - previous)
        previous, current = current, trigger.get_next_fire_time(current, current + dt.timedelta(microseconds=1))
        count += 1
    if previous is None or count < 2:
        return horizon  # fires at most once in the horizon: treat as unsafe
    return gap


@dataclass(frozen=True)
class ScheduleMargin:
    """How much slack an app's schedule leaves before a token could expire unrefreshed."""

    app: str
    schedule: str
    refresh_before: dt.timedelta
    max_gap: dt.timedelta
    retry_budget: dt.timedelta
    lease_ttl: dt.timedelta = dt.timedelta(0)

    @property
    def margin(self) -> dt.timedelta:
        """Worst case: a token enters the window just after a tick, the next tick comes ``max_gap`` later
        and its refresh takes the whole retry budget."""
        return self.refresh_before - self.max_gap - self.retry_budget

    @property
    def crash_margin(self) -> dt.timedelta:
        """Worst case after a crash: the worker that claimed the account died holding its lease, and no
        successor recognised it (another host, a new container), so the account waits out the lease
        (``lease_ttl``) and up to one more ``max_gap`` before another worker's refresh can start."""
        return self.margin - self.lease_ttl - self.max_gap

    @property
    def safe(self) -> bool:
        return self.margin > dt.timedelta(0)

    @property
    def crash_safe(self) -> bool:
        return self.crash_margin > dt.timedelta(0)


def schedule_margins(
    settings: Settings, platforms: Mapping[str, type[Platform]], now: dt.datetime
) -> list[ScheduleMargin]:
    margins = []
    for name, app in settings.apps.items():
        cls = platforms.get(app.platform)
        if cls is None:
            continue
        policy = AppPolicy.resolve(app, cls, settings.store.lease_ttl)
        gap = max_tick_gap(build_trigger(app, cls), now)
        margins.append(
            ScheduleMargin(
                name, schedule_of(app, cls), policy.refresh_before, gap, policy.retry_budget, policy.lease_ttl
            )
        )
    return margins


class Scheduler:
    """One job per enabled app; each tick awaits ``tick(app)`` (a sweep plus its follow-ups)."""

    def __init__(self, tick: Tick, urgent_retry: UrgentRetry | None = None) -> None:
        self._tick = tick
        self._urgent_retry = urgent_retry
        self._locks: dict[str, asyncio.Lock] = {}  # a regular tick and an urgent retry of one app never overlap
        self._scheduler = AsyncIOScheduler(timezone="UTC")
        self._running: set[asyncio.Task[Any]] = set()
        self._apps: dict[str, str] = {}  # app -> schedule text, to reschedule only what changed

    @property
    def running(self) -> bool:
        return bool(self._scheduler.running) and not self._paused

    _paused = False

    def configure(self, settings: Settings, platforms: Mapping[str, type[Platform]]) -> None:
        """Add, change or remove jobs to match ``settings`` (start and SIGHUP reload)."""
        wanted = {name: app for name, app in settings.apps.items() if app.enabled and app.platform in platforms}
        for name in list(self._apps):
            if name not in wanted:
                self._scheduler.remove_job(name)
                if self._scheduler.get_job(f"{name}:retry") is not None:
                    self._scheduler.remove_job(f"{name}:retry")
                del self._apps[name]
        for name, app in wanted.items():
            cls = platforms[app.platform]
            text = f"{schedule_of(app, cls)}@{app.timezone}"
            if self._apps.get(name) == text:
                continue
            trigger = build_trigger(app, cls)
            gap = max_tick_gap(trigger, dt.datetime.now(dt.UTC), dt.timedelta(days=2))
            self._scheduler.add_job(
                self._run,
                trigger,
                args=[name],
                id=name,
                name=f"sweep {name}",
                replace_existing=True,
                coalesce=True,
                max_instances=1,
                # A late tick still runs if it is late by less than one interval; later than that, the
                # next tick is as good.
                misfire_grace_time=max(int(gap.total_seconds()), 1),
                next_run_time=dt.datetime.now(dt.UTC),  # sweep once at start: catch up after downtime
            )
            self._apps[name] = text

    async def _run(self, app: str) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        try:
            async with self._locks.setdefault(app, asyncio.Lock()):
                await self._tick(app)
            await self._plan_urgent_retry(app)
        except Exception:
            log.exception("sweep.crashed", app=app)
        finally:
            if task is not None:
                self._running.discard(task)

    async def _plan_urgent_retry(self, app: str) -> None:
        job = self._scheduler.get_job(app)
        if self._urgent_retry is None or job is None or job.next_run_time is None:
            return
        now = dt.datetime.now(dt.UTC)
        when = await urgent_retry_time(self._urgent_retry, app, job.trigger, now, job.next_run_time)
        if when is None:
            return
        log.info("sweep.urgent_retry_planned", app=app, at=when.isoformat())
        self._scheduler.add_job(
            self._run,
            DateTrigger(run_date=when),
            args=[app],
            id=f"{app}:retry",
            name=f"urgent retry {app}",
            replace_existing=True,
            misfire_grace_time=600,  # late is still sooner than the next regular tick
        )

    def next_fire_times(self, app: str) -> tuple[dt.datetime | None, dt.datetime | None]:
        """When ``app`` sweeps next: its regular tick and its planned urgent retry (``None`` where none)."""
        regular, retry = self._scheduler.get_job(app), self._scheduler.get_job(f"{app}:retry")
        return (
            regular.next_run_time if regular is not None else None,
            retry.next_run_time if retry is not None else None,
        )

    def start(self) -> None:
        self._scheduler.start()

    def pause(self) -> None:
        """Stop firing new ticks (shutdown step one)."""
        self._paused = True
        if self._scheduler.running:
            self._scheduler.pause()

    async def drain(self, grace: float) -> bool:
        """Wait for running sweeps to finish; ``False`` if they are still running after ``grace`` seconds."""
        if not self._running:
            return True
        _done, pending = await asyncio.wait(set(self._running), timeout=grace)
        return not pending

    def cancel_running(self) -> None:
        for task in list(self._running):
            task.cancel()

    def shutdown(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)


async def simulate(
    settings: Settings,
    platforms: Mapping[str, type[Platform]],
    clock: Any,
    until: dt.datetime,
    tick: Tick,
    urgent_retry: UrgentRetry | None = None,
) -> int:
    """Run every app's schedule in simulated time: jump ``clock`` (a FakeClock) from one fire time to the
    next and await ``tick(app)`` there, as the real scheduler would, until ``until``. Returns the number
    of ticks. The triggers are the very ones the daemon uses, and with ``urgent_retry`` the urgent retries
    are planned by the same rule as :class:`Scheduler`'s, so a soak run proves the real schedule.

    Apps due at the same instant sweep concurrently, as the real scheduler's per-app jobs do: one app's
    slow refresh (a client timeout) then overlaps the others' work instead of adding to it. The clock
    does not move until every one of them is done."""
    triggers = {
        name: build_trigger(app, platforms[app.platform], clock.now())
        for name, app in settings.apps.items()
        if app.enabled and app.platform in platforms
    }
    upcoming: dict[str, dt.datetime | None] = {
        name: trigger.get_next_fire_time(None, clock.now()) for name, trigger in triggers.items()
    }
    urgent: dict[str, dt.datetime] = {}
    ticks = 0

    async def fire(name: str, when: dt.datetime) -> None:
        await tick(name)
        # One sweep serves both a regular tick and an urgent retry due at the same instant.
        if urgent.get(name) == when:
            del urgent[name]
        if upcoming[name] == when:
            after = max(when, clock.now()) + dt.timedelta(microseconds=1)
            upcoming[name] = triggers[name].get_next_fire_time(when, after)
        next_tick = upcoming[name]
        if urgent_retry is not None and next_tick is not None:
            planned = await urgent_retry_time(urgent_retry, name, triggers[name], clock.now(), next_tick)
            if planned is not None:
                urgent[name] = planned

    while True:
        due = [(when, name) for name, when in upcoming.items() if when is not None and when <= until]
        due += [(when, name) for name, when in urgent.items() if when <= until]
        if not due:
            return ticks
        when = min(due)[0]
        if when > clock.now():
            clock.set(when)
        names = sorted({name for at, name in due if at == when})
        # Every sweep of the instant ends before anything is raised: a caller that stops on an error
        # (a deadline, a failed check) must not find a sweep still running behind it.
        outcomes = await asyncio.gather(*(fire(name, when) for name in names), return_exceptions=True)
        ticks += len(names)
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
