"""Per alarm and per channel: how the alarm's latest message went (``alarm_deliveries``, migration 0007).

One row per (app, account, cause, channel), replaced by each new message of the alarm, so the table is as
big as the alarms table times the channels. Written by :mod:`refresher.alerts.alarm_deliveries` after each
attempt, read by the console's alarms and account pages.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select, tuple_

from refresher.domain import as_utc
from refresher.store.base import AlarmDelivery
from refresher.store.core import StoreCore
from refresher.store.schema import alarm_deliveries

ERROR_LIMIT = 512  # the column's width


class SqlDeliveries(StoreCore):
    async def record_delivery(self, delivery: AlarmDelivery) -> None:
        values = {
            "state": delivery.state,
            "attempts": delivery.attempts,
            "last_attempt_at": as_utc(delivery.last_attempt_at),
            "delivered_at": as_utc(delivery.delivered_at) if delivery.delivered_at else None,
            "last_error": delivery.last_error[:ERROR_LIMIT] if delivery.last_error else None,
        }
        stmt = self._insert(alarm_deliveries).values(
            app=delivery.app,
            account_key=delivery.account_key,
            cause=delivery.cause,
            channel=delivery.channel,
            **values,
        )
        stmt = stmt.on_conflict_do_update(index_elements=["app", "account_key", "cause", "channel"], set_=values)
        async with self._tx(write=True) as conn:
            await conn.execute(stmt)

    async def alarm_deliveries(self, alarms: Sequence[tuple[str, str, str]]) -> Sequence[AlarmDelivery]:
        if not alarms:
            return []
        table = alarm_deliveries
        key = tuple_(table.c.app, table.c.account_key, table.c.cause)
        stmt = (
            select(table)
            .where(key.in_(list(dict.fromkeys(alarms))))
            .order_by(table.c.app, table.c.account_key, table.c.cause, table.c.channel)
        )
        async with self._tx() as conn:
            rows = await conn.execute(stmt)
            return [
                AlarmDelivery(
                    app=row.app,
                    account_key=row.account_key,
                    cause=row.cause,
                    channel=row.channel,
                    state=row.state,
                    attempts=row.attempts,
                    last_attempt_at=row.last_attempt_at,
                    delivered_at=row.delivered_at,
                    last_error=row.last_error,
                )
                for row in rows
            ]
