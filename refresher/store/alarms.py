"""Alarm dedupe state: one row per account and cause, shared by every replica."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import and_, case, delete, or_, select, tuple_, update
from sqlalchemy.engine import Row

from refresher.domain import as_utc
from refresher.store import hot
from refresher.store.base import Alarm
from refresher.store.codec import jsonable
from refresher.store.core import StoreCore
from refresher.store.schema import alarm_deliveries, alarms


def alarm_from_row(row: Row[Any]) -> Alarm:
    """An ``alarms`` row as the domain value (also read by the console's queries)."""
    return Alarm(
        app=row.app,
        account_key=row.account_key,
        cause=row.cause,
        opened_at=row.opened_at,
        last_sent_at=row.last_sent_at,
        resolved_at=row.resolved_at,
        details=dict(row.details or {}),
        delivered_at=row.delivered_at,
    )


class SqlAlarms(StoreCore):
    async def open_alarms(self, app: str | None = None, account_key: str | None = None) -> Sequence[Alarm]:
        # Read by the alert policy after every settled refresh: a statement built once, one hand-off (see
        # SqlDatabase._run_tx).
        if app is not None and account_key is not None:
            stmt, params = hot.OPEN_ALARMS_OF_ACCOUNT, {"app": app, "account_key": account_key}
            return await self._run_tx(lambda conn: [alarm_from_row(row) for row in conn.execute(stmt, params)])
        stmt = select(alarms).where(alarms.c.resolved_at.is_(None))
        if app is not None:
            stmt = stmt.where(alarms.c.app == app)
        if account_key is not None:
            stmt = stmt.where(alarms.c.account_key == account_key)
        stmt = stmt.order_by(alarms.c.opened_at, alarms.c.app, alarms.c.account_key)
        return await self._run_tx(lambda conn: [alarm_from_row(row) for row in conn.execute(stmt)])

    async def get_alarm(self, app: str, account_key: str, cause: str) -> Alarm | None:
        stmt = select(alarms).where(alarms.c.app == app, alarms.c.account_key == account_key, alarms.c.cause == cause)
        async with self._tx() as conn:
            row = (await conn.execute(stmt)).first()
            return None if row is None else alarm_from_row(row)

    async def put_alarm(self, alarm: Alarm) -> None:
        values = {
            "opened_at": as_utc(alarm.opened_at),
            "last_sent_at": as_utc(alarm.last_sent_at) if alarm.last_sent_at else None,
            "resolved_at": as_utc(alarm.resolved_at) if alarm.resolved_at else None,
            "details": jsonable(alarm.details),
            "delivered_at": as_utc(alarm.delivered_at) if alarm.delivered_at else None,
        }
        stmt = self._insert(alarms).values(app=alarm.app, account_key=alarm.account_key, cause=alarm.cause, **values)
        stmt = stmt.on_conflict_do_update(index_elements=["app", "account_key", "cause"], set_=values)
        async with self._tx(write=True) as conn:
            await conn.execute(stmt)

    async def note_alarm_sent(
        self,
        app: str,
        account_key: str,
        cause: str,
        now: dt.datetime,
        quiet_since: dt.datetime,
        details: Mapping[str, Any],
        undelivered_since: dt.datetime | None = None,
    ) -> bool:
        # One conditional upsert: with replicas, the row lock (PostgreSQL) or the write lock (SQLite) makes
        # exactly one of two concurrent callers see its row come back; a read-then-write would let both send.
        now = as_utc(now)
        values = {
            "opened_at": now,
            "last_sent_at": now,
            "resolved_at": None,
            "details": jsonable(dict(details)),
            "delivered_at": None,
        }
        may_send = [
            alarms.c.resolved_at.is_not(None),
            alarms.c.last_sent_at.is_(None),
            alarms.c.last_sent_at <= as_utc(quiet_since),
        ]
        if undelivered_since is not None:
            may_send.append(and_(alarms.c.delivered_at.is_(None), alarms.c.last_sent_at <= as_utc(undelivered_since)))
        stmt = self._insert(alarms).values(app=app, account_key=account_key, cause=cause, **values)
        stmt = stmt.on_conflict_do_update(
            index_elements=["app", "account_key", "cause"],
            set_={
                # A resolved alarm that fires again is a new alarm: it opens now.
                "opened_at": case(
                    (alarms.c.resolved_at.is_not(None), stmt.excluded.opened_at), else_=alarms.c.opened_at
                ),
                "last_sent_at": stmt.excluded.last_sent_at,
                "resolved_at": None,
                "details": stmt.excluded.details,
                "delivered_at": None,
            },
            where=or_(*may_send),
        ).returning(alarms.c.app)
        async with self._tx(write=True) as conn:
            return (await conn.execute(stmt)).first() is not None

    async def mark_alarm_delivered(self, app: str, account_key: str, cause: str, sent_at: dt.datetime) -> None:
        stmt = (
            update(alarms)
            .where(
                alarms.c.app == app,
                alarms.c.account_key == account_key,
                alarms.c.cause == cause,
                alarms.c.last_sent_at == as_utc(sent_at),
                alarms.c.delivered_at.is_(None),
            )
            .values(delivered_at=self.clock.now())
        )
        async with self._tx(write=True) as conn:
            await conn.execute(stmt)

    async def prune_resolved_alarms(self, older_than: dt.datetime, limit: int = 500) -> int:
        c = alarms.c
        oldest = select(c.app, c.account_key, c.cause).where(
            c.resolved_at.is_not(None), c.resolved_at < as_utc(older_than)
        )
        oldest = oldest.order_by(c.resolved_at).limit(limit)
        async with self._tx(write=True) as conn:
            keys = [tuple(row) for row in await conn.execute(oldest)]
            if not keys:
                return 0
            d = alarm_deliveries.c
            await conn.execute(delete(alarm_deliveries).where(tuple_(d.app, d.account_key, d.cause).in_(keys)))
            result = await conn.execute(delete(alarms).where(tuple_(c.app, c.account_key, c.cause).in_(keys)))
            return int(result.rowcount or 0)
