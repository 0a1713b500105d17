"""The lifecycle-event outbox (migration 0007): an event is a row from the moment its cause is stored
until its receivers took it, so a crash between the two sends it later instead of losing it.

A replica delivering rows leases them (``lease_owner`` / ``lease_expires_at``) like it leases accounts:
two replicas do not send one row at once, and the lease of a replica that died expires and is taken over.
Delivery is still at least once (a replica may die after sending and before settling); receivers
deduplicate on ``idempotency_key``, which is also the row's unique key.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from refresher.domain import as_utc
from refresher.store.base import OutboxEvent
from refresher.store.codec import jsonable
from refresher.store.core import StoreCore
from refresher.store.schema import event_outbox

ERROR_LIMIT = 512  # the last_error column


def outbox_values(event: OutboxEvent, now: dt.datetime) -> dict[str, Any]:
    return {
        "idempotency_key": event.idempotency_key,
        "kind": event.kind,
        "app": event.app,
        "account_key": event.account_key,
        "payload": jsonable(event.payload),
        "created_at": now,
        "attempts": 0,
        "next_attempt_at": now,
    }


def event_from_row(row: Any) -> OutboxEvent:
    return OutboxEvent(
        id=row.id,
        idempotency_key=row.idempotency_key,
        kind=row.kind,
        app=row.app,
        account_key=row.account_key,
        payload=dict(row.payload),
        created_at=row.created_at,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        delivered_at=row.delivered_at,
        last_error=row.last_error,
    )


class SqlOutbox(StoreCore):
    async def _insert_event(self, conn: AsyncConnection, event: OutboxEvent) -> bool:
        """Add ``event`` inside the caller's transaction (so it commits with its cause, or not at all)."""
        stmt = self._insert(event_outbox).values(**outbox_values(event, self.clock.now()))
        stmt = stmt.on_conflict_do_nothing(index_elements=["idempotency_key"]).returning(event_outbox.c.id)
        return (await conn.execute(stmt)).first() is not None

    async def add_event(self, event: OutboxEvent) -> bool:
        async with self._tx(write=True) as conn:
            return await self._insert_event(conn, event)

    async def claim_events(self, owner: str, lease_ttl: dt.timedelta, limit: int = 50) -> Sequence[OutboxEvent]:
        now = self.clock.now()
        c = event_outbox.c
        due = select(c.id).where(
            c.delivered_at.is_(None),
            c.next_attempt_at <= now,
            or_(c.lease_expires_at.is_(None), c.lease_expires_at <= now),
        )
        due = due.order_by(c.next_attempt_at, c.id).limit(limit)
        # A plain read first: the deliverer looks every few seconds, and on SQLite a write transaction
        # takes the database's write lock, which refreshes wait for. Nothing due, nothing locked.
        async with self._tx() as conn:
            if not (await conn.execute(due)).first():
                return []
        async with self._tx(write=True) as conn:
            ids = list((await conn.execute(self._for_update(due, skip_locked=True))).scalars())
            if not ids:
                return []
            await conn.execute(
                update(event_outbox).where(c.id.in_(ids)).values(lease_owner=owner, lease_expires_at=now + lease_ttl)
            )
            rows = await conn.execute(select(event_outbox).where(c.id.in_(ids)).order_by(c.next_attempt_at, c.id))
            return [event_from_row(row) for row in rows]

    async def settle_event(
        self, event_id: int, owner: str, *, error: str | None = None, retry_at: dt.datetime | None = None
    ) -> bool:
        now = self.clock.now()
        c = event_outbox.c
        values: dict[str, Any] = {
            "attempts": c.attempts + 1,
            "lease_owner": None,
            "lease_expires_at": None,
            "last_error": error[:ERROR_LIMIT] if error else None,
        }
        if error is not None and retry_at is not None:
            values["next_attempt_at"] = as_utc(retry_at)
        else:
            values["delivered_at"] = now  # delivered, or given up
        stmt = update(event_outbox).where(c.id == event_id, c.lease_owner == owner, c.delivered_at.is_(None))
        async with self._tx(write=True) as conn:
            return bool((await conn.execute(stmt.values(**values))).rowcount)

    async def prune_events(self, older_than: dt.datetime, limit: int = 500) -> int:
        c = event_outbox.c
        oldest = select(c.id).where(c.delivered_at.is_not(None), c.delivered_at < as_utc(older_than))
        oldest = oldest.order_by(c.delivered_at, c.id).limit(limit)
        async with self._tx(write=True) as conn:
            result = await conn.execute(delete(event_outbox).where(c.id.in_(oldest.scalar_subquery())))
            return int(result.rowcount or 0)

    async def events(self, app: str | None = None, limit: int = 100) -> Sequence[OutboxEvent]:
        """The newest events, delivered or not (for tests and operators' inspection)."""
        stmt = select(event_outbox).order_by(event_outbox.c.id.desc()).limit(limit)
        if app is not None:
            stmt = stmt.where(event_outbox.c.app == app)
        async with self._tx() as conn:
            return [event_from_row(row) for row in await conn.execute(stmt)]
