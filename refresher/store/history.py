"""Token history: every replaced token set is kept (up to ``history_versions``) and can be restored."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.ext.asyncio import AsyncConnection

from refresher.domain import TokenSet
from refresher.store import hot
from refresher.store.base import Account, HistoryEntry, StoreError
from refresher.store.core import StoreCore
from refresher.store.schema import accounts, token_history


def _never() -> TokenSet:  # pragma: no cover - history rows always hold a full token set
    raise StoreError("store: a history row has no token set")


def _history_values(row: Any, now: dt.datetime) -> dict[str, Any] | None:
    """The parameters of :data:`hot.PUSH_HISTORY` copying the row's current token set to history under its
    version (None: the row holds no tokens)."""
    if row.access_token is None or row.refresh_token is None or row.access_expires_at is None:
        return None
    # Ciphertexts move as they are: history rows use the same (app, key, field) associated data.
    return {
        "account_id": row.id,
        "version": row.version,
        "access_token": row.access_token,
        "refresh_token": row.refresh_token,
        "access_expires_at": row.access_expires_at,
        "refresh_expires_at": row.refresh_expires_at,
        "scopes": row.scopes or [],
        "raw": row.raw or {},
        "replaced_at": now,
    }


class SqlHistory(StoreCore):
    async def _push_history(self, conn: AsyncConnection, row: Row[Any], now: dt.datetime) -> None:
        values = _history_values(row, now)
        if values is not None:
            await conn.execute(hot.PUSH_HISTORY, values)

    async def _prune_history(self, conn: AsyncConnection, account_id: int) -> None:
        await conn.execute(hot.PRUNE_HISTORY, {"account_id": account_id, "keep": self.history_versions})

    # The same on a synchronous connection (the refresh path's one-hop transactions, store/sync_tx.py).

    def _push_history_sync(self, conn: Connection, row: Any, now: dt.datetime) -> None:
        values = _history_values(row, now)
        if values is not None:
            hot.Run.PUSH_HISTORY.run(conn, values)

    def _prune_history_sync(self, conn: Connection, account_id: int, pushed_version: int) -> None:
        # History holds distinct versions up to the one just pushed: none to drop until there are more.
        if pushed_version > self.history_versions:
            hot.Run.PRUNE_HISTORY.run(conn, {"account_id": account_id, "keep": self.history_versions})

    async def history(self, app: str, key: str, limit: int = 20) -> Sequence[HistoryEntry]:
        stmt = (
            select(token_history)
            .join(accounts, accounts.c.id == token_history.c.account_id)
            .where(accounts.c.app == app, accounts.c.key == key)
            .order_by(token_history.c.version.desc())
            .limit(limit)
        )
        async with self._tx() as conn:
            return [
                HistoryEntry(
                    version=row.version,
                    tokens=self._codec.tokens(row, app, key) or _never(),
                    replaced_at=row.replaced_at,
                )
                for row in await conn.execute(stmt)
            ]

    async def restore(self, app: str, key: str, version: int) -> Account:
        now = self.clock.now()
        async with self._tx(write=True) as conn:
            row = await self._row_by_key(conn, app, key, lock=True)
            old = (
                await conn.execute(
                    select(token_history).where(
                        token_history.c.account_id == row.id, token_history.c.version == version
                    )
                )
            ).first()
            if old is None:
                raise StoreError(f"store: account {app}/{key} has no version {version} in its history")
            tokens = self._codec.tokens(old, app, key)
            assert tokens is not None
            await self._push_history(conn, row, now)
            values: dict[str, Any] = {
                **self._codec.token_values(app, key, tokens),
                "raw": old.raw or {},
                "version": row.version + 1,
                "refresh_started_at": None,
                "lease_owner": None,  # a worker busy with the replaced tokens must not save over these
                "lease_expires_at": None,
                "updated_at": now,
            }
            current_refresh = self._codec.decrypt(row.refresh_token, app, key, "refresh_token")
            if current_refresh is not None:
                values["previous_refresh_token"] = self._codec.encrypt(
                    current_refresh, app, key, "previous_refresh_token"
                )
            await conn.execute(update(accounts).where(accounts.c.id == row.id).values(**values))
            await self._prune_history(conn, row.id)
            return await self._read(conn, row.id)
