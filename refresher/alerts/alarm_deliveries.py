"""Per alarm and channel, how its latest message went, recorded in the store for the console.

:meth:`DeliveryRecorder.track` wraps one channel's send of one alarm message before it is handed to the
:class:`~refresher.alerts.dispatcher.Dispatcher`: after each attempt it writes the state (``sending``
while attempts are left, then ``delivered`` or ``failed``), the attempt count and a safe error. A job the
dispatcher drops unsent (queue full, shutting down) is written ``failed`` too.

The write follows the attempt, never precedes it: a slow or failing store must not hold up a message,
and an error writing the row is logged, never raised into the delivery. ``last_error`` is the text of
our own :class:`~refresher.alerts.dispatcher.DeliveryError` (built to name the channel, never its URL:
webhook and chat URLs carry their tokens in the path or query), redacted again; any other exception is
shown by its class name only, since httpx and others quote the URL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import structlog

from refresher.alerts.dispatcher import DeliveryError, Done
from refresher.alerts.events import AlarmMessage
from refresher.domain import Clock
from refresher.redaction import redact_text
from refresher.store.base import AlarmDelivery
from refresher.store.roles import DeliveryStore

log = structlog.get_logger("refresher.alerts")

Send = Callable[[], Awaitable[None]]

SENDING = "sending"
DELIVERED = "delivered"
FAILED = "failed"
DROPPED = "not sent: dropped from the delivery queue (full, or the daemon stopped)"


def safe_error(channel: str, exc: BaseException) -> str:
    """What a failed attempt may show on a page: our own delivery error's text, else the class name."""
    if isinstance(exc, DeliveryError):
        return redact_text(str(exc))
    return f"{channel}: {type(exc).__name__}"


@dataclass
class _Progress:
    attempts: int = 0
    error: str | None = None
    ended: bool = False  # delivered or failed was written (or is being written)


class DeliveryRecorder:
    """Writes each tracked send's outcome to a :class:`~refresher.store.roles.DeliveryStore`."""

    def __init__(self, store: DeliveryStore, clock: Clock) -> None:
        self.store = store
        self.clock = clock
        self._writes: set[asyncio.Task[None]] = set()  # rows of dropped jobs, written in the background

    def track(
        self, message: AlarmMessage, channel: str, attempts: int, send: Send, done: Done | None
    ) -> tuple[Send, Done]:
        """``send`` and ``done`` for the dispatcher that also record how this channel's delivery went."""
        alarm = (message.app, message.account_key, str(message.cause))
        progress = _Progress()

        async def tracked() -> None:
            progress.attempts += 1
            try:
                await send()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                progress.error = safe_error(channel, exc)
                last = progress.attempts >= attempts
                progress.ended = last
                await self._write(alarm, channel, FAILED if last else SENDING, progress)
                raise
            progress.ended = True
            await self._write(alarm, channel, DELIVERED, progress)

        def ended(delivered: bool) -> None:
            if done is not None:
                done(delivered)
            if not delivered and not progress.ended:  # dropped before its last attempt ran
                progress.ended = True
                progress.error = progress.error or DROPPED
                self._in_background(self._write(alarm, channel, FAILED, progress))

        return tracked, ended

    async def _write(self, alarm: tuple[str, str, str], channel: str, state: str, progress: _Progress) -> None:
        now = self.clock.now()
        row = AlarmDelivery(
            *alarm,
            channel=channel,
            state=state,
            attempts=progress.attempts,
            last_attempt_at=now,
            delivered_at=now if state == DELIVERED else None,
            last_error=None if state == DELIVERED else progress.error,
        )
        try:
            await self.store.record_delivery(row)
        except Exception:  # the message matters more than its bookkeeping
            log.exception("alert.delivery_state_unavailable", app=alarm[0], account=alarm[1], channel=channel)

    def _in_background(self, write: Coroutine[Any, Any, None]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(write)
        except RuntimeError:  # no loop (closing): the row keeps its last state
            write.close()
            return
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
