"""Logged-out console sessions (``console_logouts``, migration 0007), shared by every replica.

A row lives until the session's cookie would have expired anyway (its signature's timestamp plus
``server.console_session``); each logout deletes the rows past that, over the ``expires_at`` index, so
the table holds at most the logouts of one session lifetime.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import delete, select

from refresher.domain import as_utc
from refresher.store.core import StoreCore
from refresher.store.schema import console_logouts


class SqlLogouts(StoreCore):
    async def add_logout(self, sid: str, expires_at: dt.datetime, now: dt.datetime) -> None:
        expires_at = as_utc(expires_at)
        stmt = self._insert(console_logouts).values(sid=sid, expires_at=expires_at)
        stmt = stmt.on_conflict_do_update(index_elements=["sid"], set_={"expires_at": expires_at})
        async with self._tx(write=True) as conn:
            await conn.execute(delete(console_logouts).where(console_logouts.c.expires_at < as_utc(now)))
            await conn.execute(stmt)

    async def logged_out(self, sid: str) -> bool:
        stmt = select(console_logouts.c.sid).where(console_logouts.c.sid == sid)
        async with self._tx() as conn:
            return (await conn.execute(stmt)).first() is not None
