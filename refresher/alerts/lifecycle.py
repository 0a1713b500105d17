"""Lifecycle events of accounts for integrators: ``account.connected``, ``account.reauthorized``,
``account.needs_reauth``, ``account.disabled``, ``account.deleted`` …, as versioned JSON (docs/events.md).

Each event goes to every webhook channel of ``alerts.channels`` and to the app's hooks (``on_success``
and ``on_failure``, each URL once), signed like an alarm, through the delivery queue (retried
``alerts.delivery_attempts`` times, counted with the channel's or the hook's deliveries). Delivery is at
least once: a receiver deduplicates on ``idempotency_key`` (also sent as the ``Idempotency-Key``
header), which is the same for every delivery of one event. No event carries a token.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

import structlog

from refresher.alerts.channels import Channel, WebhookChannel, post_signed
from refresher.alerts.dispatcher import Dispatcher
from refresher.config import HookSettings, Settings
from refresher.domain import Clock
from refresher.store.base import Account

PAYLOAD_VERSION = 1
log = structlog.get_logger("refresher.alerts")


class EventStore(Protocol):
    async def get(self, app: str, key: str) -> Account | None: ...

    async def connection(self, app: str, key: str) -> tuple[dict[str, Any] | None, dict[str, str]]: ...


class EventType(enum.StrEnum):
    CONNECTED = "account.connected"
    REAUTHORIZED = "account.reauthorized"
    NEEDS_REAUTH = "account.needs_reauth"
    REFRESH_FAILED = "account.refresh_failed"
    RESOLVED = "account.resolved"
    DISABLED = "account.disabled"
    DELETED = "account.deleted"


def idempotency_key(kind: EventType, account: Account, marker: str) -> str:
    """Stable for one event (its account, type and what makes it this occurrence: a version, a time)."""
    text = "\x00".join((str(kind), account.app, account.key, marker))
    return "evt_" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def event_payload(
    kind: EventType,
    account: Account,
    at: str,
    *,
    marker: str,
    end_user: Mapping[str, Any] | None,
    tags: Mapping[str, str],
    **extra: Any,
) -> dict[str, Any]:
    identity = account.identity
    return {
        "version": PAYLOAD_VERSION,
        "type": str(kind),
        "idempotency_key": idempotency_key(kind, account, marker),
        "at": at,
        "app": account.app,
        "platform": account.platform,
        "account_key": account.key,
        "identity": {
            "key": identity.key,
            "kind": identity.kind,
            "platform_id": identity.platform_id,
            "name": identity.name,
            "region": identity.region,
        },
        "status": str(account.status),
        "end_user": dict(end_user) if end_user else None,
        "tags": dict(tags),
        **extra,
    }


class LifecycleEvents:
    """Queues lifecycle events to the webhook channels and the app's hooks (returns at once)."""

    def __init__(
        self,
        settings: Settings,
        channels: Sequence[Channel],
        *,
        dispatcher: Dispatcher,
        clock: Clock,
        store: EventStore | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.clock = clock
        self.store = store
        self.apply_settings(settings, channels)

    async def notify(self, kind: EventType, app: str, key: str, *, marker: str, **extra: Any) -> None:
        """Emit ``kind`` for the stored account ``app``/``key`` (its end user and tags read from the store).
        Never raises: an event that cannot be built is logged, the caller's work stands."""
        if self.store is None:
            return
        try:
            account = await self.store.get(app, key)
            if account is None:
                return
            end_user, tags = await self.store.connection(app, key)
        except Exception:
            log.exception("event.not_sent", app=app, account=key, type=str(kind))
            return
        self.emit(kind, account, marker=marker, end_user=end_user, tags=tags, **extra)

    def apply_settings(self, settings: Settings, channels: Sequence[Channel]) -> None:
        self.settings = settings
        self.webhooks = [c for c in channels if isinstance(c, WebhookChannel)]

    def emit(
        self,
        kind: EventType,
        account: Account,
        *,
        marker: str,
        end_user: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        payload = event_payload(
            kind,
            account,
            self.clock.now().isoformat(),
            marker=marker,
            end_user=end_user,
            tags=tags or {},
            **extra,
        )
        headers = {"Idempotency-Key": payload["idempotency_key"]}
        attempts = self.settings.alerts.delivery_attempts
        for channel in self.webhooks:

            async def to_channel(channel: WebhookChannel = channel) -> None:
                await channel.post(payload, headers)

            self.dispatcher.submit("event", channel.name, to_channel, attempts=attempts)
        app = self.settings.apps.get(account.app)
        hooks = [h for h in (app.on_success, app.on_failure) if h is not None] if app else []
        for hook in {h.url: h for h in hooks}.values():
            self.dispatcher.submit("hook", account.app, self._hook_send(account.app, hook, payload), attempts=attempts)
        return payload

    def _hook_send(self, app: str, hook: HookSettings, payload: dict[str, Any]) -> Callable[[], Awaitable[None]]:
        secret = hook.secret.get_secret_value() if hook.secret else None
        limit, clock, url = hook.timeout.total_seconds(), self.clock, hook.url
        headers = {"Idempotency-Key": payload["idempotency_key"]}

        async def send() -> None:
            await post_signed(
                f"hook {app}", url, payload, secret=secret, time_limit=limit, clock=clock, headers=headers
            )

        return send
