"""Leases and settling: claim accounts, mark a refresh as started, then save tokens, count a failure or
release, each in one transaction that only the lease owner may run (else :class:`LeaseLost`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import Connection

from refresher.domain import AccountStatus, ErrorInfo, TokenSet, as_utc
from refresher.store import hot
from refresher.store.audit import SqlAudit
from refresher.store.base import Account, AccountNotFound, AuditEntry, LeaseLost
from refresher.store.codec import error_json, scrub
from refresher.store.history import SqlHistory
from refresher.store.prepared import Prepared
from refresher.store.schema import accounts
from refresher.store.writers import URGENT


class SqlLeases(SqlHistory, SqlAudit):
    async def claim_due(
        self, app: str, horizon: dt.timedelta, limit: int, owner: str, lease_ttl: dt.timedelta
    ) -> Sequence[Account]:
        if limit <= 0:
            return []
        now = self.clock.now()
        c = accounts.c
        retry_due = and_(c.next_attempt_at.is_not(None), c.next_attempt_at <= now)
        # Backing off after a failure: expiry alone claims it only if the token dies before the retry.
        expiring = and_(
            c.access_expires_at < now + horizon,
            or_(c.next_attempt_at.is_(None), c.access_expires_at <= c.next_attempt_at),
        )
        free = (
            c.app == app,
            c.status == str(AccountStatus.ACTIVE),
            or_(c.lease_expires_at.is_(None), c.lease_expires_at <= now),
        )
        # Two index range scans instead of one OR: with the OR, a claim that finds fewer than ``limit``
        # due rows read every row of the app (bench_claim: ~1.5 s per idle tick at 1,000,000 accounts).
        # Soonest expiry first (index app, status, access_expires_at), then retries whose time has come
        # (index app, status, next_attempt_at); an account in both is taken once.
        soonest = select(c.id).where(*free, expiring).order_by(c.access_expires_at, c.id).limit(limit)

        def claim(conn: Connection) -> list[Account]:
            ids = list(conn.execute(self._for_update(soonest, skip_locked=True)).scalars())
            if len(ids) < limit:
                retries = select(c.id).where(*free, retry_due).order_by(c.next_attempt_at, c.id)
                if ids:
                    retries = retries.where(c.id.not_in(ids))
                retries = retries.limit(limit - len(ids))
                ids.extend(conn.execute(self._for_update(retries, skip_locked=True)).scalars())
            if not ids:
                return []
            conn.execute(
                update(accounts).where(c.id.in_(ids)).values(lease_owner=owner, lease_expires_at=now + lease_ttl)
            )
            rows = conn.execute(select(accounts).where(c.id.in_(ids)).order_by(c.access_expires_at, c.id))
            return [self._codec.account(row) for row in rows]

        return await self._run_tx(claim, write=True)

    async def claim(self, app: str, key: str, owner: str, lease_ttl: dt.timedelta) -> Account | None:
        now = self.clock.now()
        async with self._tx(write=True) as conn:
            row = await self._row_by_key(conn, app, key, lock=True)
            held = row.lease_owner is not None and row.lease_expires_at is not None and row.lease_expires_at > now
            if held and row.lease_owner != owner:
                return None
            await conn.execute(
                update(accounts)
                .where(accounts.c.id == row.id)
                .values(lease_owner=owner, lease_expires_at=now + lease_ttl)
            )
            return await self._read(conn, row.id)

    # Settling writes are plain functions of a synchronous connection, run by ``_run_tx`` (one thread
    # hand-off on SQLite): no re-read of the row they wrote, the lease checked in the UPDATE itself where
    # the row is not needed, and statements built once (:mod:`refresher.store.hot`).

    async def mark_refresh_started(self, account_id: int, owner: str) -> None:
        now = self.clock.now()

        def mark(conn: Connection) -> None:
            self._update_leased(
                conn, hot.Run.MARK_STARTED, account_id, owner, refresh_started_at=now, last_attempt_at=now
            )

        # Not durable: the mark only tells a restarted daemon that a call may have gone out (a hint in its
        # messages); the outcome of the refresh is the same without it, so it does not wait for the disk.
        await self._run_tx(mark, write=True, durable=False)

    async def save_tokens(
        self, account_id: int, owner: str, tokens: TokenSet, audit: AuditEntry | None = None
    ) -> Account:
        now = self.clock.now()

        def save(conn: Connection) -> Account:
            row = self._leased_sync(conn, account_id, owner)
            if audit is not None:
                # In this transaction, not one of its own: one durable commit per refresh instead of two.
                self._insert_audit_sync(conn, audit, self._codec.row_secrets(row))
            self._push_history_sync(conn, row, now)
            values: dict[str, Any] = {
                **self._codec.token_values(row.app, row.key, tokens),
                "last_success_at": now,
                "last_attempt_at": row.last_attempt_at or now,
                "version": row.version + 1,
                "updated_at": now,
                # Kept as it is unless these tokens rotate the refresh token.
                "previous_refresh_token": row.previous_refresh_token,
                **self._codec.previous_refresh(row, tokens),
            }
            hot.Run.SAVE_TOKENS.run(conn, {"account_id": account_id, **values})
            self._prune_history_sync(conn, account_id, row.version)
            return self._after(row, {**hot.SAVED, **values})

        # Its own transaction, first in the writers' line; answered only after the commit, so the caller
        # may then log, notify and alarm. (Group commit was measured and not kept: in a sweep bound by
        # CPU, saves hardly ever overlap a commit, 1.1 per group at 1,000 accounts; benchmarks/RESULTS.md.)
        return await self._run_tx(save, write=True, priority=URGENT)

    async def record_failure(
        self,
        account_id: int,
        owner: str,
        error: ErrorInfo,
        next_attempt_at: dt.datetime | None,
        status: AccountStatus | None = None,
        audit: AuditEntry | None = None,
    ) -> Account:
        now = self.clock.now()

        def record(conn: Connection) -> Account:
            row = self._leased_sync(conn, account_id, owner)
            if audit is not None:
                self._insert_audit_sync(conn, audit, self._codec.row_secrets(row))
            values: dict[str, Any] = {
                "consecutive_failures": row.consecutive_failures + 1,
                "last_error": scrub(error_json(error), self._codec.row_secrets(row)),
                "last_attempt_at": now,
                "next_attempt_at": as_utc(next_attempt_at) if next_attempt_at else None,
                "status": str(status) if status is not None else row.status,
                "updated_at": now,
            }
            hot.Run.RECORD_FAILURE.run(conn, {"account_id": account_id, **values})
            return self._after(row, {**hot.RELEASED, **values})

        return await self._run_tx(record, write=True)

    async def release(self, account_id: int, owner: str) -> None:
        def release(conn: Connection) -> None:
            self._update_leased(conn, hot.Run.RELEASE, account_id, owner)

        await self._run_tx(release, write=True)

    def _update_leased(self, conn: Connection, stmt: Prepared, account_id: int, owner: str, **values: Any) -> None:
        """``stmt`` (one of :mod:`~refresher.store.hot`'s leased updates) with ``values``, if ``owner`` holds
        the lease: one statement, which takes the row lock itself."""
        if not stmt.run(conn, {"account_id": account_id, "owner": owner, **values}):
            self._leased_sync(conn, account_id, owner)  # raises and says why
            raise AssertionError("unreachable")  # pragma: no cover

    def _leased_sync(self, conn: Connection, account_id: int, owner: str) -> Any:
        """The account row, locked, if ``owner`` still holds its lease; else :class:`LeaseLost`.

        A lease past its expiry that nobody has taken over is still honoured: the platform may already
        have rotated the token, and storing the new one beats losing it.
        """
        stmt = hot.ACCOUNT_ROW_FOR_UPDATE if self.backend == "postgresql" else hot.ACCOUNT_ROW
        row = conn.execute(stmt, {"account_id": account_id}).first()
        _check_lease(row, account_id, owner)
        return row

    async def lease_holders(self) -> Sequence[str]:
        c = accounts.c
        async with self._tx() as conn:
            rows = await conn.execute(select(c.lease_owner).where(c.lease_owner.is_not(None)).distinct())
            return [str(owner) for owner in rows.scalars()]

    async def release_owner(self, owner: str) -> int:
        c = accounts.c
        async with self._tx(write=True) as conn:
            result = await conn.execute(
                update(accounts).where(c.lease_owner == owner).values(lease_owner=None, lease_expires_at=None)
            )
            return int(result.rowcount or 0)

    async def expired_while_leased(self, app: str, limit: int = 100) -> Sequence[Account]:
        c = accounts.c
        now = self.clock.now()
        query = (
            select(accounts)
            .where(
                c.app == app,
                c.status == str(AccountStatus.ACTIVE),
                c.lease_owner.is_not(None),
                c.access_expires_at <= now,
            )
            .order_by(c.access_expires_at, c.id)
            .limit(limit)
        )
        async with self._tx() as conn:
            return [self._codec.account(row) for row in await conn.execute(query)]


def _check_lease(row: Any, account_id: int, owner: str) -> None:
    if row is None:
        raise AccountNotFound(f"no account with id {account_id}")
    if row.lease_owner != owner:
        holder = "nobody" if row.lease_owner is None else "another worker"
        raise LeaseLost(f"lease on account {row.app}/{row.key} lost: it is held by {holder}")
