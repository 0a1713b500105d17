"""Delivery of the lifecycle-event outbox (:mod:`refresher.store.outbox`) to the webhook channels and hooks.

Each daemon (every replica) runs one :class:`EventDeliverer`. It leases due rows, sends each to every
receiver, and settles the row: delivered when every receiver took it, else retried with exponential
backoff until ``alerts.delivery_attempts`` attempts ran out (then it is given up and its ``last_error``
kept). A receiver that took an event is not sent it again by this process; after a crash the successor
sends the whole event again (at least once: receivers deduplicate on ``idempotency_key``, the same for
every delivery and sent as the ``Idempotency-Key`` header).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from refresher.alerts.channels import Channel, WebhookChannel, post_signed
from refresher.alerts.dispatcher import DeliveryError
from refresher.config import Settings
from refresher.domain import Clock
from refresher.metrics import Metrics
from refresher.store.base import OutboxEvent
from refresher.store.roles import EventOutbox

log = structlog.get_logger("refresher.alerts")

# A lease covers one pass: the events of a batch are sent at once, each POST within its receiver's timeout
# (10 s by default), so a minute is ample. After a kill -9 mid-pass a replica takes the rows over then.
EVENT_LEASE = dt.timedelta(seconds=60)
BATCH = 20
POLL_EVERY = 2.0  # seconds between looks at the outbox when nobody woke the deliverer (other replicas' rows)
INITIAL_DELAY = 1.0
MAX_DELAY = 300.0

Send = Callable[[dict[str, Any], dict[str, str]], Awaitable[None]]


class _Receiver:
    def __init__(self, name: str, kind: str, label: str, send: Send) -> None:
        self.name = name  # unique among the receivers of one event: "webhook:<channel>" or "hook:<url>"
        self.kind = kind  # "event" (a channel) or "hook", as the metrics count them
        self.label = label  # the channel's name or the app's, never a URL
        self.send = send

    @property
    def what(self) -> str:
        return f"{'hook' if self.kind == 'hook' else 'webhook'} {self.label}"


def backoff(attempts: int, initial: float = INITIAL_DELAY, maximum: float = MAX_DELAY) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: doubling, with jitter, capped."""
    base = min(maximum, initial * 2.0 ** max(0, attempts - 1))
    return base + random.uniform(0, min(initial, base))


class EventDeliverer:
    """Sends the outbox's events, leased so replicas do not send one at once."""

    def __init__(
        self,
        store: EventOutbox,
        settings: Settings,
        channels: Sequence[Channel],
        *,
        clock: Clock,
        owner: str,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.owner = owner
        self.metrics = metrics
        self.apply_settings(settings, channels)
        self._wake = asyncio.Event()
        self._pass = asyncio.Lock()  # one pass at a time in this process (the loop's or a drain's)
        self._task: asyncio.Task[None] | None = None
        self._taken: dict[int, set[str]] = {}  # event id -> receivers that took it (this process only)

    def apply_settings(self, settings: Settings, channels: Sequence[Channel]) -> None:
        self.settings = settings
        self.webhooks = [c for c in channels if isinstance(c, WebhookChannel)]

    def wake(self) -> None:
        """An event was just stored: look now rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="event-delivery")

    async def aclose(self, grace: float = 5.0) -> None:
        """Finish the pass in flight within ``grace`` seconds; what is left stays in the outbox."""
        if self._task is None:
            return
        try:
            async with asyncio.timeout(grace):
                async with self._pass:
                    self._task.cancel()
        except TimeoutError:
            self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = None

    async def drain(self, within: float = 10.0) -> bool:
        """Deliver until no event is due now (retries scheduled later wait); False on timeout."""
        try:
            async with asyncio.timeout(within):
                while await self.deliver_due():
                    pass
        except TimeoutError:
            return False
        return True

    async def deliver_due(self) -> int:
        """One pass: lease due events, send them, settle them; returns how many.

        Accounts are served at once, but one account's events one after the other, in the order they were
        stored (a receiver sees ``account.disabled`` before ``account.deleted``). A retried event may still
        arrive after a later one of its account: receivers order by the payload's ``at``."""
        async with self._pass:
            events = await self.store.claim_events(self.owner, EVENT_LEASE, BATCH)
            by_account: dict[tuple[str, str], list[OutboxEvent]] = {}
            for event in sorted(events, key=lambda e: e.id or 0):
                by_account.setdefault((event.app, event.account_key), []).append(event)

            async def in_order(chain: list[OutboxEvent]) -> None:
                for event in chain:
                    await self._deliver(event)

            await asyncio.gather(*(in_order(chain) for chain in by_account.values()))
            return len(events)

    async def _loop(self) -> None:
        failing = False
        while True:
            try:
                await self.deliver_due()
                if failing:
                    log.info("event.outbox_available")
                failing = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the store is down: the rows wait, the loop goes on
                if not failing:  # said once per outage, not every poll (the store outage alarm says the rest)
                    log.warning("event.outbox_unavailable", error_class=type(exc).__name__, error=str(exc)[:200])
                failing = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_EVERY)
            self._wake.clear()

    def receivers(self, app: str) -> list[_Receiver]:
        """Every webhook channel, and the app's hooks (each URL once), as configured now."""
        found = [_Receiver(f"webhook:{c.name}", "event", c.name, c.post) for c in self.webhooks]
        config = self.settings.apps.get(app)
        hooks = [h for h in (config.on_success, config.on_failure) if h is not None] if config else []
        for hook in {h.url: h for h in hooks}.values():
            secret = hook.secret.get_secret_value() if hook.secret else None
            limit, url = hook.timeout.total_seconds(), hook.url

            async def send(
                payload: dict[str, Any],
                headers: dict[str, str],
                url: str = url,
                secret: Any = secret,
                limit: float = limit,
            ) -> None:
                await post_signed(
                    f"hook {app}", url, payload, secret=secret, time_limit=limit, clock=self.clock, headers=headers
                )

            found.append(_Receiver(f"hook:{hook.url}", "hook", app, send))
        return found

    async def _deliver(self, event: OutboxEvent) -> None:
        assert event.id is not None
        taken = self._taken.setdefault(event.id, set())
        headers = {"Idempotency-Key": event.idempotency_key}
        pending = [r for r in self.receivers(event.app) if r.name not in taken]
        results = await asyncio.gather(*(r.send(event.payload, headers) for r in pending), return_exceptions=True)
        errors = []
        for receiver, result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                # Only our own errors carry a message known to be safe (it names the receiver, never its
                # URL); httpx's quote URLs, so of those only the class.
                safe = isinstance(result, DeliveryError)
                errors.append(str(result) if safe else f"{receiver.what}: {type(result).__name__}")
            else:
                taken.add(receiver.name)
                self._count(receiver, "success")
        attempts = event.attempts + 1
        if not errors:
            await self._settle(event)
            return
        error = "; ".join(errors)
        log.warning(
            "event.attempt_failed",
            type=event.kind,
            app=event.app,
            account=event.account_key,
            attempt=attempts,
            of=self.settings.alerts.delivery_attempts,
            error=error,
        )
        if attempts >= self.settings.alerts.delivery_attempts:
            log.error(
                "event.failed",
                type=event.kind,
                app=event.app,
                account=event.account_key,
                attempts=attempts,
                error=error,
            )
            for receiver in pending:
                if receiver.name not in taken:
                    self._count(receiver, "failure")
            await self._settle(event, error=error)
            return
        delay = backoff(attempts)
        await self._settle(event, error=error, retry_at=self.clock.now() + dt.timedelta(seconds=delay))
        asyncio.get_running_loop().call_later(delay, self.wake)

    async def _settle(
        self, event: OutboxEvent, *, error: str | None = None, retry_at: dt.datetime | None = None
    ) -> None:
        assert event.id is not None
        try:
            settled = await self.store.settle_event(event.id, self.owner, error=error, retry_at=retry_at)
        except Exception:  # the lease expires and the row is sent again: at least once
            log.warning("event.settle_failed", type=event.kind, app=event.app, account=event.account_key, exc_info=True)
            return
        if retry_at is None:
            self._taken.pop(event.id, None)
        if settled and error is None:
            log.info(
                "event.delivered",
                type=event.kind,
                app=event.app,
                account=event.account_key,
                attempts=event.attempts + 1,
            )

    def _count(self, receiver: _Receiver, outcome: str) -> None:
        if self.metrics is None:
            return
        if receiver.kind == "hook":
            self.metrics.hook_sent(receiver.label, outcome)
        else:
            self.metrics.alert_sent(receiver.label, outcome)
