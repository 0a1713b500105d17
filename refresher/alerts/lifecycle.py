"""Lifecycle events of accounts for integrators: ``account.connected``, ``account.reauthorized``,
``account.needs_reauth``, ``account.disabled``, ``account.deleted`` …, as versioned JSON (docs/events.md).

Each event is first stored in the outbox (``event_outbox``; in the same transaction as its cause where
the caller can, see :meth:`LifecycleEvents.build`), then sent by the deliverer
(:mod:`refresher.alerts.event_delivery`) to every webhook channel of ``alerts.channels`` and to the app's hooks,
signed like an alarm. Delivery is at least once, across crashes and restarts: a receiver deduplicates on
``idempotency_key`` (also sent as the ``Idempotency-Key`` header), which is the same for every delivery of
one event. No event carries a token.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import structlog

from refresher.domain import AccountStatus, Clock
from refresher.store.base import Account, OutboxEvent
from refresher.store.roles import EventOutbox

PAYLOAD_VERSION = 1
log = structlog.get_logger("refresher.alerts")


class EventStore(EventOutbox, Protocol):
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
    """Stores lifecycle events in the outbox and wakes the deliverer (returns once the event is stored)."""

    def __init__(
        self, *, clock: Clock, store: EventStore | None = None, wake: Callable[[], None] | None = None
    ) -> None:
        self.clock = clock
        self.store = store
        self.wake = wake or (lambda: None)  # the deliverer's: look at the outbox now

    async def notify(self, kind: EventType, app: str, key: str, *, marker: str, **extra: Any) -> None:
        """Emit ``kind`` for the stored account ``app``/``key`` (its end user and tags read from the store).
        Never raises: an event that cannot be built or stored is logged, the caller's work stands."""
        if self.store is None:
            return
        try:
            account = await self.store.get(app, key)
            if account is None:
                return
            end_user, tags = await self.store.connection(app, key)
        except Exception:
            log.exception("event.not_stored", app=app, account=key, type=str(kind))
            return
        await self.emit(kind, account, marker=marker, end_user=end_user, tags=tags, **extra)

    def build(
        self,
        kind: EventType,
        account: Account,
        *,
        marker: str,
        end_user: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> OutboxEvent:
        """The outbox row of an event, for a caller that stores it in the transaction of its cause
        (``set_status(..., event=)``, ``delete(..., event=)``) and then calls :attr:`wake`."""
        at = self.clock.now().isoformat()
        payload = event_payload(kind, account, at, marker=marker, end_user=end_user, tags=tags or {}, **extra)
        return OutboxEvent(
            idempotency_key=payload["idempotency_key"],
            kind=str(kind),
            app=account.app,
            account_key=account.key,
            payload=payload,
        )

    async def disabled_event(self, app: str, key: str) -> OutboxEvent | None:
        """``account.disabled`` for ``set_status(app, key, DISABLED, event=...)`` (the store keeps it only
        if the status changes); None for an unknown account."""
        return await self._event_of(EventType.DISABLED, app, key, AccountStatus.DISABLED)

    async def deleted_event(self, app: str, key: str) -> OutboxEvent | None:
        """``account.deleted`` with the account's last state, end user and tags, for ``delete(..., event=)``."""
        return await self._event_of(EventType.DELETED, app, key, None)

    async def _event_of(self, kind: EventType, app: str, key: str, status: AccountStatus | None) -> OutboxEvent | None:
        if self.store is None:
            return None
        account = await self.store.get(app, key)
        if account is None:
            return None
        end_user, tags = await self.store.connection(app, account.key)
        if status is not None:
            account = dataclasses.replace(account, status=status)
        marker = f"{kind.name.lower()}:{self.clock.now().isoformat()}"
        return self.build(kind, account, marker=marker, end_user=end_user, tags=tags)

    async def emit(
        self,
        kind: EventType,
        account: Account,
        *,
        marker: str,
        end_user: Mapping[str, Any] | None = None,
        tags: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Store the event in its own transaction (right after its cause committed) and wake the deliverer.
        An event whose idempotency key is stored already (a reminder of it) is not stored twice."""
        event = self.build(kind, account, marker=marker, end_user=end_user, tags=tags, **extra)
        if self.store is not None:
            try:
                await self.store.add_event(event)
            except Exception:
                log.exception("event.not_stored", app=account.app, account=account.key, type=str(kind))
                return event.payload
            self.wake()
        return event.payload
