"""Whether the token store takes writes, as the daemon sees it, and when an outage becomes an alarm.

Every store failure the refresher meets (a claim, a mark, a settle, a release) and every write probe of
the daemon's monitor is reported to :class:`StoreHealth`; any success ends the outage. The alarm itself
cannot go through the store (its dedupe lives there), so that object remembers that it has alarmed, and
says so once when the store takes writes again. :class:`StoreWatch` is the daemon's side: it probes a
failing store so an outage is alarmed even when no sweep is due, answers readiness, and pings systemd's
watchdog only while the store answers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable

import structlog

from refresher.store.base import StoreError
from refresher.store.roles import Store
from refresher.systemd import Notifier

log = structlog.get_logger("refresher.daemon")

# How long a readiness or monitor probe of the store may take before the store counts as not answering.
STORE_PROBE_TIMEOUT = 5.0
STORE_PROBE_EVERY = 10.0  # at most; shorter when alerts.store_outage is short

# Told when an outage becomes an alarm ("alarm") or an alarmed outage ends ("resolved"): verdict, seconds
# the outage lasted, its last error.
OutageAlarm = Callable[[str, float, str | None], None]


class StoreHealth:
    """An outage's start, its last error, and whether it has been alarmed."""

    def __init__(self, alarm_after: float, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.alarm_after = alarm_after
        self._monotonic = monotonic
        self.failing_since: float | None = None
        self.last_error: str | None = None
        self.alarmed = False

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def outage_seconds(self) -> float:
        return 0.0 if self.failing_since is None else self._monotonic() - self.failing_since

    def report(self, error: BaseException | None) -> str | None:
        """Record a store failure (``error``) or success (None). Returns ``"alarm"`` when the outage has
        just lasted longer than ``alarm_after``, ``"resolved"`` when an alarmed outage just ended, else
        None."""
        if error is None:
            if self.failing_since is None:
                return None
            was_alarmed = self.alarmed
            self.failing_since, self.last_error, self.alarmed = None, None, False
            return "resolved" if was_alarmed else None
        if self.failing_since is None:
            self.failing_since = self._monotonic()
        # Only the error's type and message (store errors name no secret; the redactor runs anyway).
        self.last_error = f"{type(error).__name__}: {error}" if isinstance(error, StoreError) else type(error).__name__
        if not self.alarmed and self.outage_seconds() >= self.alarm_after:
            self.alarmed = True
            return "alarm"
        return None


class StoreWatch:
    """The daemon's view of its store: failures reported, probes while failing, readiness, watchdog."""

    def __init__(self, store: Store, notifier: Notifier, on_outage: OutageAlarm, alarm_after: dt.timedelta) -> None:
        self.store = store
        self.notifier = notifier
        self.health = StoreHealth(alarm_after.total_seconds())
        self._on_outage = on_outage
        self._monitor: asyncio.Task[None] | None = None

    def apply_settings(self, alarm_after: dt.timedelta) -> None:
        self.health.alarm_after = alarm_after.total_seconds()

    def report(self, error: BaseException | None) -> None:
        """A store failure (or success, None) seen anywhere: alarm once an outage lasts too long."""
        verdict = self.health.report(error)
        if verdict is not None:
            self._on_outage(verdict, self.health.outage_seconds(), self.health.last_error)

    async def probe_writes(self) -> BaseException | None:
        """Whether the store takes a write now (reported to the outage tracker); the error if not."""
        try:
            await asyncio.wait_for(self.store.ping(write=True), STORE_PROBE_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - any failure means writes do not go through
            self.report(exc)
            return exc
        self.report(None)
        return None

    async def readiness(self) -> str | None:
        """What keeps the store from serving, or None."""
        try:
            await asyncio.wait_for(self.store.ping(), STORE_PROBE_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - any failure means not ready
            return type(exc).__name__
        # Reachable is not enough: a store locked past its busy timeout, or read-only after a failover,
        # answers reads while every refresh fails to commit.
        error = await self.probe_writes()
        return None if error is None else f"refuses writes ({type(error).__name__})"

    def start(self) -> None:
        self._monitor = asyncio.create_task(self._probe_while_failing(), name="store-monitor")

    def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()

    async def _probe_while_failing(self) -> None:
        while True:
            every = min(STORE_PROBE_EVERY, max(self.health.alarm_after / 3, 0.2))
            await asyncio.sleep(every)
            if self.health.failing:
                await self.probe_writes()

    async def watchdog(self) -> None:
        """Ping systemd's watchdog only while the loop turns and the store answers: a wedged daemon gets
        restarted."""
        interval = self.notifier.watchdog_interval
        if not interval:
            return
        while True:
            try:
                await asyncio.wait_for(self.store.ping(), interval)
                self.notifier.watchdog()
            except Exception:  # noqa: BLE001
                log.warning("watchdog.store_unreachable")
            await asyncio.sleep(interval)
