"""When to alarm, when to repeat, when to say "resolved".

Dedupe state lives in the store (one :class:`~refresher.store.base.Alarm` per app, account and cause), so
it survives a restart and is shared by replicas. Sending goes through the :class:`Dispatcher`: ``observe``
touches the store but never waits for a channel.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import time
from collections.abc import Awaitable, Callable, Sequence

import structlog

from refresher.alerts.alarm_deliveries import DeliveryRecorder
from refresher.alerts.channels import Channel
from refresher.alerts.dispatcher import Dispatcher
from refresher.alerts.events import AlarmCause, AlarmMessage
from refresher.alerts.lifecycle import EventType, LifecycleEvents
from refresher.config import AlertSettings
from refresher.domain import AccountStatus, Clock
from refresher.redaction import redact_text
from refresher.refresh_events import RefreshEvent
from refresher.store.base import Account, Alarm
from refresher.store.roles import AlertStore

log = structlog.get_logger("refresher.alerts")

# The causes by their old names (AlarmCause members: equal to their strings).
FAILURES = AlarmCause.FAILURES
REAUTH_REQUIRED = AlarmCause.REAUTH_REQUIRED
CONFIG_ERROR = AlarmCause.CONFIG_ERROR
REFRESH_EXPIRING = AlarmCause.REFRESH_EXPIRING
EXPIRED_WHILE_LEASED = AlarmCause.EXPIRED_WHILE_LEASED  # a worker held the account while its access token died
STORE_UNAVAILABLE = AlarmCause.STORE_UNAVAILABLE  # the store refused writes for longer than alerts.store_outage
# A successful refresh proves these wrong; an expiring refresh token is only fixed by re-authorization.
_RESOLVED_BY_SUCCESS = (FAILURES, REAUTH_REQUIRED, CONFIG_ERROR, EXPIRED_WHILE_LEASED)

ReauthLink = Callable[[str, str], "str | None"]

# An alarm message that no channel confirmed (the process died before sending it, or every channel
# failed all its attempts) is sent again on the next look at the alarm after this long, instead of at the
# next daily reminder. Longer than a dispatcher's full retry run, so a message still being retried is not
# doubled.
REDELIVER_AFTER = dt.timedelta(minutes=10)


@dataclasses.dataclass
class _Delivery:
    queued: float  # time.monotonic() when queued
    channels_left: int  # channels whose delivery has not ended


WaitingKeys = Callable[[], Awaitable[Sequence[str]]]  # the keys of an app's accounts in needs_reauth


class AlertPolicy:
    """Turns refresh events into alarms, reminders and all-clears, deduplicated through the store."""

    def __init__(
        self,
        settings: AlertSettings,
        store: AlertStore,
        channels: Sequence[Channel],
        clock: Clock,
        *,
        reauth_link: ReauthLink,
        dispatcher: Dispatcher,
    ) -> None:
        self.settings = settings
        self.store = store
        self.channels = list(channels)
        self.clock = clock
        self.reauth_link = reauth_link
        self.dispatcher = dispatcher
        # Lifecycle events (account.needs_reauth, account.refresh_failed, account.resolved) follow the
        # alarms: set by the daemon; None sends none.
        self.lifecycle: LifecycleEvents | None = None
        # Per alarm and channel, how each message went (the console's alarms page): set by the daemon.
        self.deliveries: DeliveryRecorder | None = None
        # Alarm messages this process queued whose delivery has not ended yet: not "undelivered" while a
        # channel may still be retrying them, whatever a simulated clock says.
        self._in_flight: dict[tuple[str, str, str], _Delivery] = {}

    def apply_settings(self, settings: AlertSettings, channels: Sequence[Channel]) -> None:
        """A config reload: new thresholds and channels for every later message."""
        self.settings = settings
        self.channels = list(channels)

    # -- events ---------------------------------------------------------------------------------------

    async def observe(self, event: RefreshEvent) -> None:
        """Alarm on a failure that needs a human; resolve open alarms on success."""
        if event.outcome == "success":
            await self._resolve(event)
            return
        if event.outcome != "failure":
            return
        cause = self.cause_of(event)
        if cause is not None:
            await self._raise(event.app, event.account_key, cause, self._message("alarm", cause, event))

    def cause_of(self, event: RefreshEvent) -> str | None:
        """Which alarm a failed refresh calls for, if any yet."""
        error_class = event.error.error_class if event.error else None
        if error_class == REAUTH_REQUIRED or event.status == AccountStatus.NEEDS_REAUTH:
            return REAUTH_REQUIRED  # only the seller can fix it: at once
        if error_class == CONFIG_ERROR:
            return CONFIG_ERROR  # only the operator can fix it: at once
        if event.consecutive_failures >= self.settings.after_failures:
            return FAILURES
        return None

    async def check_expiring(self, accounts: Sequence[Account]) -> None:
        """Warn (again every ``repeat_every``) of refresh tokens expiring within ``reauth_warning``."""
        now = self.clock.now()
        horizon = now + self.settings.reauth_warning
        for account in accounts:
            tokens = account.tokens
            if tokens is None or tokens.refresh_expires_at is None or tokens.refresh_expires_at > horizon:
                continue
            message = self._account_message("reauth_soon", REFRESH_EXPIRING, account, now)
            await self._raise(account.app, account.key, REFRESH_EXPIRING, message)

    async def check_expired_while_leased(self, accounts: Sequence[Account]) -> None:
        """Alarm (again every ``repeat_every``) for active accounts whose access token expired while a lease
        held them: no refresh could run, and nothing else would say so."""
        now = self.clock.now()
        for account in accounts:
            message = self._account_message("alarm", EXPIRED_WHILE_LEASED, account, now)
            await self._raise(account.app, account.key, EXPIRED_WHILE_LEASED, message)

    def store_outage(self, kind: str, seconds: float, error: str | None) -> None:
        """Say that the store has refused writes for ``seconds`` (``kind="alarm"``) or takes them again
        (``"resolved"``). Not deduplicated through the store, which is what is failing: the caller sends
        each once per outage."""
        now = self.clock.now()
        detail = f"the token store has refused writes for {seconds:.0f} s" if kind == "alarm" else None
        message = AlarmMessage(
            kind=kind,
            cause=STORE_UNAVAILABLE,
            app="*",
            platform="refresher",
            account_key="store",
            account_name="token store",
            at=now,
            error_class="store",
            error_message=redact_text(f"{detail}: {error}" if detail and error else detail or "") or None,
        )
        log.warning("alert", kind=kind, cause=STORE_UNAVAILABLE, app="*", account="store", seconds=round(seconds))
        self._send(message, track=False)  # no alarm row to record it against

    async def remind(self, app: str, needs_reauth: int = 0, waiting: WaitingKeys | None = None) -> None:
        """Follow up open alarms that no refresh event will ever revisit (run after each sweep).

        An account in ``needs_reauth`` is no longer refreshed, so ``observe`` never sees it again: this
        repeats its alarm every ``repeat_every``, and says "resolved" as soon as a re-authorization made
        it active again (without waiting for its next refresh, which may be hours away). Alarms of
        deleted or disabled accounts are closed quietly: nobody is left to act on them.

        With ``needs_reauth`` (how many of the app's accounts are in that state) above the open
        re-authorization alarms, ``waiting`` lists their keys and each without an open alarm gets one: its
        alarm was lost between recording the failure and raising it (a crash in that instant), and no
        later event would raise it. Listed only then: the usual sweep reads nothing more.
        """
        try:
            alarms = await self.store.open_alarms(app)
        except Exception:  # reminders wait for the next sweep
            log.exception("alert.state_unavailable", app=app)
            return
        for alarm in alarms:
            try:
                await self._follow_up(app, alarm)
            except Exception:  # one broken row must not stop the others' reminders
                log.exception("alert.state_unavailable", app=app, account=alarm.account_key)
        alarmed = {alarm.account_key for alarm in alarms if alarm.cause == REAUTH_REQUIRED}
        if waiting is None or needs_reauth <= len(alarmed):
            return
        for key in await waiting():
            if key not in alarmed:
                try:
                    await self._raise_missing(app, key)
                except Exception:
                    log.exception("alert.state_unavailable", app=app, account=key)

    async def _raise_missing(self, app: str, key: str) -> None:
        account = await self.store.get(app, key)
        if account is None or account.status != AccountStatus.NEEDS_REAUTH:
            return  # re-authorized or deleted since the listing
        log.warning("alert.missing_alarm", app=app, account=key, cause=REAUTH_REQUIRED)
        message = self._account_message("alarm", REAUTH_REQUIRED, account, self.clock.now())
        await self._raise(app, key, REAUTH_REQUIRED, message)

    async def _follow_up(self, app: str, alarm: Alarm) -> None:
        account = await self.store.get(app, alarm.account_key)
        now = self.clock.now()
        if account is None or account.status == AccountStatus.DISABLED:
            await self.store.put_alarm(dataclasses.replace(alarm, resolved_at=now))
            return
        if alarm.cause != REAUTH_REQUIRED:
            return  # the account is still refreshed: observe() repeats or resolves these
        if account.status == AccountStatus.ACTIVE:
            await self.store.put_alarm(dataclasses.replace(alarm, resolved_at=now))
            log.info("alert", kind="resolved", cause=alarm.cause, app=app, account=alarm.account_key)
            self._send(self._account_message("resolved", REAUTH_REQUIRED, account, now))
            await self._event_resolved(alarm)
            return
        message = self._account_message("alarm", REAUTH_REQUIRED, account, now)
        await self._raise(app, account.key, REAUTH_REQUIRED, message)

    # -- internals ------------------------------------------------------------------------------------

    def _account_message(self, kind: str, cause: str, account: Account, now: dt.datetime) -> AlarmMessage:
        """A message from the account's stored state; only an alarm quotes the last error."""
        error = account.last_error if kind == "alarm" else None
        tokens = account.tokens
        return AlarmMessage(
            kind=kind,
            cause=cause,
            app=account.app,
            platform=account.platform,
            account_key=account.key,
            account_name=account.identity.name,
            at=now,
            error_class=error.error_class if error else None,
            error_code=error.code if error else None,
            error_message=redact_text(error.message) if error else None,
            request_id=error.request_id if error else None,
            consecutive_failures=account.consecutive_failures,
            access_expires_at=tokens.access_expires_at if tokens else None,
            refresh_expires_at=tokens.refresh_expires_at if tokens else None,
            reauth_url=self._link(account.app, account.key) if kind != "resolved" else None,
        )

    def _link(self, app: str, key: str) -> str | None:
        try:
            return self.reauth_link(app, key)
        except Exception:
            log.exception("alert.reauth_link_failed", app=app, account=key)
            return None

    def _message(self, kind: str, cause: str, event: RefreshEvent) -> AlarmMessage:
        error = event.error
        needs_link = kind != "resolved"  # every alarm carries the link that fixes the account if it must
        return AlarmMessage(
            kind=kind,
            cause=cause,
            app=event.app,
            platform=event.platform,
            account_key=event.account_key,
            account_name=event.account_name,
            at=event.at,
            error_class=error.error_class if error else None,
            error_code=error.code if error else None,
            # Error messages are built to be safe; redact anyway, an alarm leaves the process.
            error_message=redact_text(error.message) if error else None,
            request_id=error.request_id if error else None,
            consecutive_failures=event.consecutive_failures,
            access_expires_at=event.access_expires_at,
            refresh_expires_at=event.refresh_expires_at,
            reauth_url=self._link(event.app, event.account_key) if needs_link else None,
        )

    async def _raise(self, app: str, key: str, cause: str, message: AlarmMessage) -> None:
        now = self.clock.now()
        details = {
            "kind": message.kind,
            "error_class": message.error_class,
            "error_code": message.error_code,
            "request_id": message.request_id,
            "consecutive_failures": message.consecutive_failures,
        }
        try:
            # Persist first: a crash after this delays one message (it is undelivered, so sent again after
            # REDELIVER_AFTER), never causes a storm of repeats. The store decides atomically, so of
            # several replicas seeing the same failure only one sends.
            quiet_since = now - self.settings.repeat_every
            delivery = self._in_flight.get((app, key, cause))
            # (The age check only guards against a delivery whose end was never reported.)
            retrying = delivery is not None and time.monotonic() - delivery.queued < REDELIVER_AFTER.total_seconds()
            undelivered_since = None if retrying else now - REDELIVER_AFTER
            if not await self.store.note_alarm_sent(app, key, cause, now, quiet_since, details, undelivered_since):
                return  # already told; the next reminder is due at last_sent_at + repeat_every
            await self._event_for_alarm(app, key, cause, message)
            confirm: tuple[str, str, str, dt.datetime] | None = (app, key, cause, now)
        except Exception:
            log.exception("alert.state_unavailable", app=app, account=key, cause=cause)
            confirm = None
        log.warning(
            "alert",
            kind=message.kind,
            cause=cause,
            app=app,
            account=key,
            error_class=message.error_class,
            error_code=message.error_code,
            request_id=message.request_id,
            consecutive_failures=message.consecutive_failures,
        )
        self._send(message, confirm)

    async def _resolve(self, event: RefreshEvent) -> None:
        try:
            open_alarms = await self.store.open_alarms(event.app, event.account_key)
        except Exception:
            log.exception("alert.state_unavailable", app=event.app, account=event.account_key)
            return
        if not open_alarms:
            return
        now = self.clock.now()
        horizon = now + self.settings.reauth_warning
        for alarm in open_alarms:
            if alarm.cause == REFRESH_EXPIRING:
                # Resolved only once the refresh token reaches past the warning window (a re-authorization).
                if event.refresh_expires_at is not None and event.refresh_expires_at <= horizon:
                    continue
            elif alarm.cause not in _RESOLVED_BY_SUCCESS:
                continue
            try:
                await self.store.put_alarm(dataclasses.replace(alarm, resolved_at=now))
            except Exception:
                log.exception("alert.state_unavailable", app=event.app, account=event.account_key)
                continue
            log.info("alert", kind="resolved", cause=alarm.cause, app=event.app, account=event.account_key)
            self._send(self._message("resolved", alarm.cause, event))
            await self._event_resolved(alarm)

    async def _event_for_alarm(self, app: str, key: str, cause: str, message: AlarmMessage) -> None:
        if self.lifecycle is None or cause not in (REAUTH_REQUIRED, FAILURES):
            return
        kind = EventType.NEEDS_REAUTH if cause == REAUTH_REQUIRED else EventType.REFRESH_FAILED
        extra = {
            "reauth_url": message.reauth_url,
            "consecutive_failures": message.consecutive_failures,
            "error": None
            if message.error_class is None
            else {"class": message.error_class, "code": message.error_code, "message": message.error_message},
        }
        # One event per alarm and its repeats: a repeat carries the same idempotency key (the alarm's
        # cause and the failure streak it belongs to).
        await self.lifecycle.notify(kind, app, key, marker=f"{cause}:{message.consecutive_failures}", **extra)

    async def _event_resolved(self, alarm: Alarm) -> None:
        if self.lifecycle is not None and alarm.cause in (REAUTH_REQUIRED, FAILURES):
            marker = f"{alarm.cause}:{alarm.opened_at.isoformat()}"
            key = alarm.account_key
            await self.lifecycle.notify(EventType.RESOLVED, alarm.app, key, marker=marker, cause=alarm.cause)

    def _send(
        self, message: AlarmMessage, confirm: tuple[str, str, str, dt.datetime] | None = None, *, track: bool = True
    ) -> None:
        """Queue ``message`` for every channel; with ``confirm`` (the alarm and the stamp of this message),
        the first channel that takes it marks the alarm delivered; with ``track``, each channel's outcome
        is recorded per alarm (``self.deliveries``)."""
        delivery = None
        if confirm is not None and self.channels:
            delivery = self._in_flight[confirm[:3]] = _Delivery(time.monotonic(), len(self.channels))
        for channel in self.channels:
            send: Callable[[], Awaitable[None]] = functools.partial(channel.send, message)
            done: Callable[[bool], None] | None = None
            if confirm is not None and delivery is not None:
                send = functools.partial(self._send_and_confirm, send, confirm)
                done = functools.partial(self._delivery_ended, confirm[:3], delivery)
            if track and self.deliveries is not None:
                attempts = self.settings.delivery_attempts
                send, done = self.deliveries.track(message, channel.name, attempts, send, done)
            # One account's messages reach a channel in the order they were raised: an alarm, then its
            # resolution, even when both wait in the queue at once.
            order = (channel.name, message.app, message.account_key)
            self.dispatcher.submit("alert", channel.name, send, self.settings.delivery_attempts, done, order=order)

    def _delivery_ended(self, key: tuple[str, str, str], delivery: _Delivery, delivered: bool) -> None:
        delivery.channels_left -= 1
        if (delivered or delivery.channels_left <= 0) and self._in_flight.get(key) is delivery:
            del self._in_flight[key]

    async def _send_and_confirm(
        self, send: Callable[[], Awaitable[None]], confirm: tuple[str, str, str, dt.datetime]
    ) -> None:
        await send()
        try:
            await self.store.mark_alarm_delivered(*confirm)
        except Exception:  # delivered all the same; at worst the message is sent once more later
            log.exception("alert.state_unavailable", app=confirm[0], account=confirm[1], cause=confirm[2])
