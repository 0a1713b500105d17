"""Accounts: grants stored or updated in place, lookups, listings and counts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from refresher.domain import AccountStatus, Grant, Identity, TokenSet, as_utc
from refresher.store.base import Account, OutboxEvent, StoreError
from refresher.store.codec import jsonable, scrub
from refresher.store.connections import connection_filters
from refresher.store.history import SqlHistory
from refresher.store.outbox import SqlOutbox
from refresher.store.schema import accounts, token_history
from refresher.store.writers import URGENT


class SqlAccounts(SqlHistory, SqlOutbox):
    async def upsert_grant(self, app: str, platform: str, grant: Grant) -> Account:
        return await self._upsert(app, platform, grant.identity, grant.tokens, AccountStatus.ACTIVE)

    async def update_identity(self, app: str, key: str, identity: Identity) -> Account | None:
        # Only the identity columns: a lease, a token or a status another worker holds is not touched.
        values: dict[str, Any] = {
            "kind": identity.kind,
            "platform_id": identity.platform_id,
            "name": identity.name,
            "region": identity.region,
            "extra": jsonable(dict(identity.extra)),
        }
        c = accounts.c
        by_key = self._for_update(select(accounts).where(c.app == app, c.key == key))

        def update_identity(conn: Connection) -> Account | None:
            row = conn.execute(by_key).first()
            if row is None:
                return None
            conn.execute(update(accounts).where(c.id == row.id).values(**values))
            return self._after(row, values)

        # Right after a refresh (Shopee once a day, TikTok Shop whenever a seller's shops changed): one
        # thread hand-off like the refresh's own transactions, not a statement at a time through the
        # async driver (~40 hand-offs to aiosqlite's thread on SQLite).
        return await self._run_tx(update_identity, write=True)

    async def import_account(
        self, app: str, platform: str, identity: Identity, tokens: TokenSet, status: AccountStatus
    ) -> Account:
        return await self._upsert(app, platform, identity, tokens, status)

    async def _upsert(
        self, app: str, platform: str, identity: Identity, tokens: TokenSet, status: AccountStatus
    ) -> Account:
        # Two replicas inserting the same new account race on the unique (app, key): the loser retries
        # and then finds the row to update.
        for attempt in range(2):
            try:
                return await self._upsert_once(app, platform, identity, tokens, status)
            except StoreError as exc:
                if attempt == 0 and isinstance(exc.__cause__, IntegrityError):
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _upsert_once(
        self, app: str, platform: str, identity: Identity, tokens: TokenSet, status: AccountStatus
    ) -> Account:
        now = self.clock.now()
        key = identity.key
        secrets = frozenset({tokens.access_token, tokens.refresh_token})
        values: dict[str, Any] = {
            "platform": platform,
            "kind": identity.kind,
            "platform_id": identity.platform_id,
            "name": identity.name,
            "region": identity.region,
            "extra": scrub(jsonable(dict(identity.extra)), secrets),
            "status": str(status),
            **self._codec.token_values(app, key, tokens),
            "consecutive_failures": 0,
            "last_error": None,
            "next_attempt_at": None,
            "refresh_started_at": None,
            # A new grant supersedes whatever a worker is doing with the old one: its save must fail.
            "lease_owner": None,
            "lease_expires_at": None,
            "updated_at": now,
        }
        async with self._tx(write=True, priority=URGENT) as conn:  # tokens just issued: commit first
            stmt = self._for_update(select(accounts).where(accounts.c.app == app, accounts.c.key == key))
            row = (await conn.execute(stmt)).first()
            if row is None:
                account_id = (
                    await conn.execute(
                        insert(accounts)
                        .values(app=app, key=key, version=1, created_at=now, **values)
                        .returning(accounts.c.id)
                    )
                ).scalar_one()
            else:
                account_id = row.id
                await self._push_history(conn, row, now)
                values.update(self._codec.previous_refresh(row, tokens))
                await conn.execute(
                    update(accounts).where(accounts.c.id == row.id).values(version=row.version + 1, **values)
                )
                await self._prune_history(conn, row.id)
            return await self._read(conn, account_id)

    async def get(self, app: str, key: str) -> Account | None:
        async with self._tx() as conn:
            row = (await conn.execute(select(accounts).where(accounts.c.app == app, accounts.c.key == key))).first()
            return None if row is None else self._codec.account(row)

    def _filters(self, app: str | None, status: AccountStatus | None) -> list[Any]:
        filters = []
        if app is not None:
            filters.append(accounts.c.app == app)
        if status is not None:
            filters.append(accounts.c.status == str(status))
        return filters

    async def list(
        self,
        app: str | None = None,
        status: AccountStatus | None = None,
        limit: int = 100,
        offset: int = 0,
        *,
        secrets: bool = True,
        end_user_id: str | None = None,
        tag: tuple[str, str] | None = None,
    ) -> Sequence[Account]:
        stmt = (
            select(accounts)
            .where(*self._filters(app, status), *connection_filters(self.backend, end_user_id, tag))
            .order_by(accounts.c.app, accounts.c.key)
            .limit(limit)
            .offset(offset)
        )
        async with self._tx() as conn:
            return [self._codec.account(row, secrets=secrets) for row in await conn.execute(stmt)]

    async def count(self, app: str | None = None, status: AccountStatus | None = None) -> int:
        async with self._tx() as conn:
            stmt = select(func.count()).select_from(accounts).where(*self._filters(app, status))
            return int((await conn.execute(stmt)).scalar_one())

    async def count_by_status(self, app: str) -> dict[AccountStatus, int]:
        """Accounts of ``app`` per status, every status present (zero included), in one grouped query."""
        stmt = select(accounts.c.status, func.count()).where(accounts.c.app == app).group_by(accounts.c.status)
        counts = dict.fromkeys(AccountStatus, 0)
        async with self._tx() as conn:
            for status, number in await conn.execute(stmt):
                counts[AccountStatus(status)] = int(number)
        return counts

    async def set_status(
        self, app: str, key: str, status: AccountStatus, *, event: OutboxEvent | None = None
    ) -> Account:
        async with self._tx(write=True) as conn:
            row = await self._row_by_key(conn, app, key, lock=True)
            await conn.execute(
                update(accounts).where(accounts.c.id == row.id).values(status=str(status), updated_at=self.clock.now())
            )
            if event is not None and row.status != str(status):  # the event of a change, in its transaction
                await self._insert_event(conn, event)
            return await self._read(conn, row.id)

    async def delete(self, app: str, key: str, *, event: OutboxEvent | None = None) -> bool:
        async with self._tx(write=True) as conn:
            ids = select(accounts.c.id).where(accounts.c.app == app, accounts.c.key == key)
            # Explicit rather than relying on ON DELETE CASCADE, which SQLite enforces only per connection.
            await conn.execute(delete(token_history).where(token_history.c.account_id.in_(ids.scalar_subquery())))
            result = await conn.execute(delete(accounts).where(accounts.c.app == app, accounts.c.key == key))
            if result.rowcount and event is not None:
                await self._insert_event(conn, event)
            return bool(result.rowcount)

    async def accounts_refresh_expiring(self, app: str, before: dt.datetime, limit: int = 1000) -> Sequence[Account]:
        """Active accounts of ``app`` whose refresh token expires before ``before`` (re-authorize soon)."""
        stmt = (
            select(accounts)
            .where(
                accounts.c.app == app,
                accounts.c.status == str(AccountStatus.ACTIVE),
                accounts.c.refresh_expires_at.is_not(None),
                accounts.c.refresh_expires_at < as_utc(before),
            )
            .order_by(accounts.c.refresh_expires_at, accounts.c.id)
            .limit(limit)
        )
        async with self._tx() as conn:
            return [self._codec.account(row) for row in await conn.execute(stmt)]

    async def earliest_expiry(self, app: str) -> dt.datetime | None:
        stmt = select(func.min(accounts.c.access_expires_at)).where(
            accounts.c.app == app, accounts.c.status == str(AccountStatus.ACTIVE)
        )
        async with self._tx() as conn:
            value = (await conn.execute(stmt)).scalar_one_or_none()
        return as_utc(value) if value is not None else None

    async def earliest_urgent_retry(self, app: str, expiring_before: dt.datetime) -> dt.datetime | None:
        c = accounts.c
        # A range scan of the index (app, status, next_attempt_at): only accounts backing off have one.
        stmt = select(func.min(c.next_attempt_at)).where(
            c.app == app,
            c.status == str(AccountStatus.ACTIVE),
            c.next_attempt_at.is_not(None),
            c.access_expires_at <= as_utc(expiring_before),
        )
        async with self._tx() as conn:
            value = (await conn.execute(stmt)).scalar_one_or_none()
        return as_utc(value) if value is not None else None
