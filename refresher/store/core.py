"""What every part of the SQL store shares: the database, the row codec, the clock and account lookups.

Each concern (accounts, leases, history, audit, alarms, states, keys) is a class on top of
:class:`StoreCore` in its own module; :class:`refresher.store.sql.SqlStore` puts them together. Times
come from the injected :class:`~refresher.domain.Clock`, never from the database, so simulated time
drives leases in tests and soak runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from refresher.domain import Clock
from refresher.store.base import Account, AccountNotFound, StoreError
from refresher.store.codec import RowCodec
from refresher.store.engine import SqlDatabase
from refresher.store.schema import accounts


class StoreCore(SqlDatabase):
    def __init__(
        self,
        url: str,
        *,
        clock: Clock,
        encryption_keys: Sequence[str] = (),
        history_versions: int = 10,
        pool_size: int = 5,
        create: bool = True,
    ) -> None:
        if history_versions < 1:
            raise StoreError("store.history_versions: must be at least 1")
        super().__init__(url, pool_size=pool_size, create=create)
        self.clock = clock
        self.history_versions = history_versions
        self._codec = RowCodec(encryption_keys)

    @property
    def encrypted(self) -> bool:
        """Whether tokens are encrypted at rest (``store.encryption_keys`` is set)."""
        return self._codec.enabled

    async def open(self) -> None:
        await self.migrate()

    def _after(self, row: Any, values: Mapping[str, Any]) -> Account:
        """The account as ``values`` leave the row, without reading it again."""
        return self._codec.account(cast(Any, SimpleNamespace(**{**row._mapping, **values})))

    async def _read(self, conn: AsyncConnection, account_id: int) -> Account:
        row = (await conn.execute(select(accounts).where(accounts.c.id == account_id))).first()
        if row is None:
            raise AccountNotFound(f"no account with id {account_id}")
        return self._codec.account(row)

    async def _row_by_key(self, conn: AsyncConnection, app: str, key: str, *, lock: bool) -> Row[Any]:
        stmt = select(accounts).where(accounts.c.app == app, accounts.c.key == key)
        row = (await conn.execute(self._for_update(stmt) if lock else stmt)).first()
        if row is None:
            raise AccountNotFound(f"no account {key!r} in app {app!r}")
        return row
